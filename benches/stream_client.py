#!/usr/bin/env python3
"""Streaming latency client for benches/load.sh (Python stdlib only).

Sends N sequential streaming chat requests over one keep-alive connection
and times every SSE event as it arrives:

* ttfb     request sent -> first content event received (client clock)
* gap      time between two consecutive content events (client clock)
* transit  mock send time -> client receive time, per content event after
           the first. The mock upstream (benches/mock_upstream.rs) stamps each
           chunk with its CLOCK_MONOTONIC time ("system_fingerprint":"t<ns>");
           this client reads the same clock, so transit is the time a chunk
           spent between the mock and the client, free of the mock's timer
           jitter. A proxy's added per-chunk delay is its transit minus the
           direct transit.

Prints one JSON object with percentiles in microseconds.
"""

import argparse
import json
import re
import socket
import sys
import time

STAMP = re.compile(rb'"system_fingerprint":"t(\d+)"')


def now_ns():
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC)


def pct(values, p):
    if not values:
        return None
    s = sorted(values)
    k = max(0, min(len(s) - 1, int(round(p / 100.0 * len(s) + 0.5)) - 1))
    return s[k]


class Conn:
    def __init__(self, host, port, timeout):
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = bytearray()
        self.t_last = 0

    def recv(self):
        """Reads once; returns (and keeps) the time the bytes arrived."""
        data = self.sock.recv(65536)
        t = now_ns()
        if not data:
            raise ConnectionError("connection closed by peer")
        self.buf += data
        self.t_last = t
        return t

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


def one_request(conn, request, t_events):
    """Sends one request; appends (recv_ns, event_bytes) to t_events.
    Returns (status, t_sent, keep_alive)."""
    t_sent = now_ns()
    conn.sock.sendall(request)
    # Head.
    while b"\r\n\r\n" not in conn.buf:
        conn.recv()
    end = conn.buf.index(b"\r\n\r\n")
    head = bytes(conn.buf[:end]).decode("latin-1")
    del conn.buf[: end + 4]
    lines = head.split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        k, _, v = line.partition(":")
        headers[k.strip().lower()] = v.strip()
    keep = headers.get("connection", "").lower() != "close"
    chunked = "chunked" in headers.get("transfer-encoding", "").lower()
    length = int(headers["content-length"]) if "content-length" in headers else None

    payload = bytearray()
    # Bytes already buffered arrived with the last read (e.g. with the head).
    t_last = conn.t_last

    def take_events(t):
        while True:
            i = payload.find(b"\n\n")
            if i < 0:
                return
            ev = bytes(payload[:i])
            del payload[: i + 2]
            t_events.append((t, ev))

    if chunked:
        while True:
            # Chunk size line.
            while b"\r\n" not in conn.buf:
                t_last = conn.recv()
            i = conn.buf.index(b"\r\n")
            size = int(bytes(conn.buf[:i]).split(b";")[0], 16)
            del conn.buf[: i + 2]
            if size == 0:
                while b"\r\n" not in conn.buf:
                    conn.recv()
                i = conn.buf.index(b"\r\n")
                del conn.buf[: i + 2]
                break
            while len(conn.buf) < size + 2:
                t_last = conn.recv()
            payload += conn.buf[:size]
            del conn.buf[: size + 2]
            take_events(t_last)
    elif length is not None:
        while len(conn.buf) < length:
            t_last = conn.recv()
        payload += conn.buf[:length]
        del conn.buf[:length]
        take_events(t_last)
    else:
        keep = False
        try:
            while True:
                t_last = conn.recv()
                payload += conn.buf
                conn.buf.clear()
                take_events(t_last)
        except ConnectionError:
            pass
    payload += b"\n\n"
    take_events(t_last)
    return status, t_sent, keep


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--path", default="/v1/chat/completions")
    ap.add_argument("--body", required=True, help="file with the JSON body")
    ap.add_argument("--auth", default="")
    ap.add_argument("--headers", default="", help='"Name: value|Name: value"')
    ap.add_argument("-n", type=int, default=100)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--timeout", type=float, default=10.0)
    a = ap.parse_args()

    body = open(a.body, "rb").read()
    hdrs = [
        "POST %s HTTP/1.1" % a.path,
        "Host: %s:%d" % (a.host, a.port),
        "Content-Type: application/json",
        "Accept: text/event-stream",
        "Content-Length: %d" % len(body),
    ]
    if a.auth:
        hdrs.append("Authorization: %s" % a.auth)
    for pair in filter(None, a.headers.split("|")):
        hdrs.append(pair.strip())
    request = ("\r\n".join(hdrs) + "\r\n\r\n").encode() + body

    ttfb, gaps, transit, first_transit = [], [], [], []
    errors, chunks_seen, stamped = 0, [], 0
    conn = None
    for i in range(a.warmup + a.n):
        if conn is None:
            conn = Conn(a.host, a.port, a.timeout)
        events = []
        try:
            status, t_sent, keep = one_request(conn, request, events)
        except (OSError, ConnectionError, ValueError) as e:
            errors += 1
            print("stream_client: request failed: %s" % e, file=sys.stderr)
            conn.close()
            conn = None
            continue
        if not keep:
            conn.close()
            conn = None
        if status != 200:
            errors += 1
            continue
        content = [(t, ev) for t, ev in events if b'"delta":{' in ev and b'"content"' in ev]
        if i < a.warmup:
            continue
        chunks_seen.append(len(content))
        if not content:
            errors += 1
            continue
        ttfb.append(content[0][0] - t_sent)
        for (t0, _), (t1, _) in zip(content, content[1:]):
            gaps.append(t1 - t0)
        for k, (t, ev) in enumerate(content):
            m = STAMP.search(ev)
            if not m:
                continue
            stamped += 1
            d = t - int(m.group(1))
            (first_transit if k == 0 else transit).append(d)
    if conn is not None:
        conn.close()

    us = lambda v: None if v is None else round(v / 1000.0, 1)
    out = {
        "streams": len(chunks_seen),
        "errors": errors,
        "chunks_min": min(chunks_seen) if chunks_seen else 0,
        "chunks_max": max(chunks_seen) if chunks_seen else 0,
        "stamped": stamped,
        "ttfb_p50_us": us(pct(ttfb, 50)),
        "ttfb_p99_us": us(pct(ttfb, 99)),
        "gap_p50_us": us(pct(gaps, 50)),
        "gap_p99_us": us(pct(gaps, 99)),
        "transit_p50_us": us(pct(transit, 50)),
        "transit_p99_us": us(pct(transit, 99)),
        "first_transit_p50_us": us(pct(first_transit, 50)),
    }
    print(json.dumps(out))
    return 0 if chunks_seen and errors == 0 else 1


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Concurrency client for benches/load.sh (Python stdlib only, asyncio).

Two modes, one target each run; prints one JSON object.

``--mode streams -n 5000``
    Opens N connections and sends one streaming chat request on each. The
    body asks the mock upstream (benches/mock_upstream.rs) for a *held*
    stream (``"bench_hold_ms"``): one content chunk at once, then silence.
    Once every stream has delivered its first chunk (all N open at once, end
    to end), the client samples the proxy's VmRSS (summed over its process
    tree) a few times, then asks the mock to end the holds
    (``POST /bench/release`` to ``--release-port``) and reads every stream to
    its end. A stream is OK when it answered 200, delivered two content
    chunks and ``data: [DONE]``, and ended cleanly.

``--mode conns -n 10000``
    Opens N connections and keeps all of them open. Once all are connected,
    sends one (non-streaming) chat request on each at the same moment and
    reads every answer; VmRSS is sampled while all N connections are still
    open. A connection is OK when it answered 200 with a ``chat.completion``.

Connects are paced (``--connect-concurrency`` in flight), so the listen
backlog (net.core.somaxconn) never overflows; the figures are about holding
the connections, not about a SYN flood.

Output keys: mode, n, ok, errors, opened (connections that reached the
"all open" point: first chunk received, or connected), rss_before_kb (just
before the phase), rss_kb (max VmRSS while all were open), rss_after_kb,
open_s (time to open them all), total_s, error_kinds.
"""

import argparse
import asyncio
import json
import os
import resource
import sys
import time

RSS_SAMPLES = 5
RSS_INTERVAL = 0.1


def proc_tree(root):
    """root and all its descendants."""
    kids = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                line = f.read()
        except OSError:
            continue
        rest = line[line.rindex(b")") + 2:].split()
        kids.setdefault(int(rest[1]), []).append(int(name))
    out, queue = [], [root]
    while queue:
        p = queue.pop(0)
        out.append(p)
        queue.extend(kids.get(p, []))
    return out


def rss_kb(pid):
    if not pid:
        return None
    total = 0
    for p in proc_tree(pid):
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
                        break
        except OSError:
            pass
    return total


class Conn(asyncio.Protocol):
    """One client connection; parses one HTTP/1.1 response."""

    def __init__(self, mode):
        self.mode = mode
        self.transport = None
        self.buf = bytearray()
        self.status = None
        self.head_done = False
        self.length = None
        self.chunked = False
        self.body_start = 0
        self.first = asyncio.get_running_loop().create_future()  # first chunk / connected
        self.done = asyncio.get_running_loop().create_future()  # response complete
        self.error = None

    # asyncio callbacks
    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        self.buf += data
        try:
            self._parse()
        except (ValueError, IndexError) as e:
            self._fail(f"bad response: {e}")

    def eof_received(self):
        if not self.done.done():
            self._fail("closed by peer" if self.head_done else "closed before response")
        return False

    def connection_lost(self, exc):
        if not self.done.done():
            self._fail(f"connection lost: {exc}" if exc else "closed by peer")

    # helpers
    def _fail(self, why):
        self.error = why
        for fut in (self.first, self.done):
            if not fut.done():
                fut.set_result(False)

    def _parse(self):
        if self.done.done():
            return
        if not self.head_done:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            lines = bytes(self.buf[:end]).decode("latin-1").split("\r\n")
            self.status = int(lines[0].split()[1])
            for line in lines[1:]:
                k, _, v = line.partition(":")
                k, v = k.strip().lower(), v.strip().lower()
                if k == "content-length":
                    self.length = int(v)
                elif k == "transfer-encoding" and "chunked" in v:
                    self.chunked = True
            self.head_done = True
            self.body_start = end + 4
            if self.status != 200:
                self._fail(f"status {self.status}")
                return
        start = self.body_start
        if self.mode == "streams" and not self.first.done():
            if self.buf.find(b'"content":"tok', start) >= 0:
                self.first.set_result(True)
        blen = len(self.buf) - start
        complete = False
        if self.length is not None:
            complete = blen >= self.length
        elif self.chunked:
            complete = self.buf.endswith(b"0\r\n\r\n") and (
                blen == 5 or self.buf.endswith(b"\r\n0\r\n\r\n")
            )
        if not complete:
            return
        data = bytes(self.buf[start:])
        if self.mode == "streams":
            ok = data.count(b'"content":"tok') >= 2 and b"data: [DONE]" in data
            why = "stream incomplete"
        else:
            ok = b"chat.completion" in data
            why = "not a chat.completion"
        if not ok:
            self._fail(why)
            return
        if not self.first.done():
            self.first.set_result(True)
        self.done.set_result(True)


def build_request(host, port, path, body, auth, headers):
    hdrs = [
        f"POST {path} HTTP/1.1",
        f"Host: {host}:{port}",
        "Content-Type: application/json",
        f"Content-Length: {len(body)}",
    ]
    if auth:
        hdrs.append(f"Authorization: {auth}")
    for pair in filter(None, headers.split("|")):
        hdrs.append(pair.strip())
    return ("\r\n".join(hdrs) + "\r\n\r\n").encode() + body


async def release(host, port):
    """POST /bench/release to the mock upstream; True on 200."""
    try:
        r, w = await asyncio.wait_for(asyncio.open_connection(host, port), 10)
        w.write(
            f"POST /bench/release HTTP/1.1\r\nHost: {host}:{port}\r\n"
            "Content-Length: 0\r\nConnection: close\r\n\r\n".encode()
        )
        await w.drain()
        data = await asyncio.wait_for(r.read(), 10)
        w.close()
        return data.startswith(b"HTTP/1.1 200")
    except (OSError, asyncio.TimeoutError):
        return False


async def run(a):
    loop = asyncio.get_running_loop()
    body = open(a.body, "rb").read()
    if a.mode == "streams":
        body = body.rstrip()
        if not body.endswith(b"}"):
            raise SystemExit("concurrency: --body must be a JSON object")
        body = body[:-1] + b',"bench_hold_ms":%d}' % int(a.hold * 1000)
    request = build_request(a.host, a.port, a.path, body, a.auth, a.headers)

    sem = asyncio.Semaphore(a.connect_concurrency)
    conns = []
    errors = {}

    def count(why):
        key = why.split(":")[0]
        errors[key] = errors.get(key, 0) + 1

    async def open_one():
        async with sem:
            try:
                _, proto = await asyncio.wait_for(
                    loop.create_connection(lambda: Conn(a.mode), a.host, a.port), a.timeout
                )
            except (OSError, asyncio.TimeoutError) as e:
                count(f"connect: {type(e).__name__}")
                return None
            conns.append(proto)
            if a.mode == "streams":
                proto.transport.write(request)
                # Pace on the stream being open end to end, not only connected.
                try:
                    await asyncio.wait_for(asyncio.shield(proto.first), a.timeout)
                except asyncio.TimeoutError:
                    pass
            return proto

    rss_before = rss_kb(a.pid)
    t0 = time.monotonic()
    await asyncio.gather(*(open_one() for _ in range(a.n)))
    if a.mode == "streams":
        # Every stream has its first chunk (or failed, or timed out).
        opened = sum(1 for c in conns if c.first.done() and c.first.result() and not c.done.done())
    else:
        opened = sum(1 for c in conns if c.error is None)
    t_open = time.monotonic() - t0

    samples = []
    if a.mode == "streams":
        for _ in range(RSS_SAMPLES):
            samples.append(rss_kb(a.pid))
            await asyncio.sleep(RSS_INTERVAL)
        if a.release_port and not await release(a.host, a.release_port):
            count("release failed")
    else:
        for c in conns:
            if c.error is None:
                c.transport.write(request)
        # Sample while the answers are being served and all N are open.
        waiter = asyncio.gather(*(asyncio.wait_for(asyncio.shield(c.done), a.timeout) for c in conns),
                                return_exceptions=True)
        while not waiter.done():
            samples.append(rss_kb(a.pid))
            await asyncio.wait([waiter], timeout=RSS_INTERVAL)
        for _ in range(RSS_SAMPLES):
            samples.append(rss_kb(a.pid))
            await asyncio.sleep(RSS_INTERVAL)

    results = await asyncio.gather(
        *(asyncio.wait_for(asyncio.shield(c.done), a.timeout + a.hold) for c in conns),
        return_exceptions=True,
    )
    ok = 0
    for c, r in zip(conns, results):
        if r is True:
            ok += 1
        elif c.error:
            count(c.error)
        else:
            count("timeout")
    total_s = time.monotonic() - t0
    for c in conns:
        c.transport.close()
    await asyncio.sleep(0.5)
    samples = [s for s in samples if s is not None]
    return {
        "mode": a.mode,
        "n": a.n,
        "ok": ok,
        "errors": a.n - ok,
        "opened": opened,
        "rss_before_kb": rss_before,
        "rss_kb": max(samples) if samples else None,
        "rss_after_kb": rss_kb(a.pid),
        "open_s": round(t_open, 2),
        "total_s": round(total_s, 2),
        "error_kinds": errors,
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--mode", choices=("streams", "conns"), required=True)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--path", default="/v1/chat/completions")
    ap.add_argument("--body", required=True, help="file with the JSON body (streams: a streaming one)")
    ap.add_argument("--auth", default="")
    ap.add_argument("--headers", default="", help='"Name: value|Name: value"')
    ap.add_argument("-n", type=int, required=True, help="connections")
    ap.add_argument("--pid", type=int, default=0, help="proxy PID whose VmRSS is sampled")
    ap.add_argument("--release-port", type=int, default=0,
                    help="mock upstream port: POST /bench/release there once all streams are open")
    ap.add_argument("--hold", type=float, default=60.0,
                    help="streams: seconds the mock holds a stream at most (if never released)")
    ap.add_argument("--connect-concurrency", type=int, default=256)
    ap.add_argument("--timeout", type=float, default=60.0)
    ap.add_argument("--label", default="", help="name used in the summary line on stderr")
    a = ap.parse_args()

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < a.n + 64:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, a.n + 1024), hard))
        except (ValueError, OSError):
            pass
    out = asyncio.run(run(a))
    rss = "—" if out["rss_kb"] is None else "%.1f MiB" % (out["rss_kb"] / 1024.0)
    print("[concurrency] %s %s: %d/%d OK, %d open at once, RSS %s, %.1f s%s" % (
        a.label or a.port, a.mode, out["ok"], a.n, out["opened"], rss, out["total_s"],
        " errors: %s" % out["error_kinds"] if out["error_kinds"] else ""), file=sys.stderr)
    print(json.dumps(out))
    return 0 if out["errors"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())

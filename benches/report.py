#!/usr/bin/env python3
"""Turns benches/load.sh's raw results into one markdown table plus the
pass/fail lines of targets T1-T6. Input: lines "target<TAB>cell<TAB>data",
where data is "k=v k=v ..." (wrk cells) or a JSON object (stream cell, and
the conc_streams / conc_conns cells of benches/concurrency.py)."""

import argparse
import json
import sys

BASE = ["direct", "nginx", "floor", "tollgate"]
LABEL = {
    "direct": "direct",
    "nginx": "nginx",
    "floor": "Pingora floor",
    "tollgate": "**Tollgate**",
    "litellm": "LiteLLM",
    "portkey": "Portkey",
}


def parse(path):
    res = {}
    order = []
    for line in open(path, encoding="utf-8"):
        line = line.rstrip("\n")
        if not line:
            continue
        target, cell, data = line.split("\t", 2)
        if target not in order:
            order.append(target)
        if data.startswith("{"):
            vals = json.loads(data)
        else:
            vals = {}
            for kv in data.split():
                k, _, v = kv.partition("=")
                try:
                    vals[k] = float(v)
                except ValueError:
                    vals[k] = v
        res.setdefault(target, {})[cell] = vals
    return res, order


def t6(mib, get, conc, n_str, n_conn, measured):
    """T6: RSS idle ≤ 20 MiB; ≤ 200 MiB with 5,000 open streams; 10,000
    connections without errors. Returns (id, what, ok, detail)."""
    what = "RSS idle ≤ 20 MiB, ≤ 200 MiB with 5,000 open streams, 10,000 connections without errors"
    idle = mib(get("tollgate", "idle", "rss_kb"))
    parts = ["idle " + ("—" if idle is None else f"{idle:.1f} MiB")]
    oks = [None if idle is None else idle <= 20]
    if not measured:
        parts.append("streams and connections not measured (--no-concurrency)")
        return ("T6", what, None, "; ".join(parts))

    def vs(key, mode):
        out = []
        for b, name in (("floor", "floor"), ("nginx", "nginx")):
            x, y = conc("tollgate", mode, key), conc(b, mode, key)
            if x is not None and y:
                out.append(f"{name} {y / 1024:.1f} MiB, {x / y:.2f}×")
        return f" ({'; '.join(out)})" if out else ""

    rss, opened, ok = (conc("tollgate", "streams", k) for k in ("rss_kb", "opened", "ok"))
    if rss is None or ok is None:
        parts.append(f"{n_str:,} streams: no result")
        oks.append(None)
    else:
        parts.append(f"{n_str:,} streams: {rss / 1024:.1f} MiB{vs('rss_kb', 'streams')}, "
                     f"{int(opened or 0):,} open at once, {int(ok):,} completed OK")
        oks.append(rss / 1024 <= 200 and opened == n_str and ok == n_str and n_str >= 5000)
    rss, ok, err = (conc("tollgate", "conns", k) for k in ("rss_kb", "ok", "errors"))
    if ok is None:
        parts.append(f"{n_conn:,} connections: no result")
        oks.append(None)
    else:
        parts.append(f"{n_conn:,} connections: {int(ok):,} served OK, {int(err or 0):,} errors"
                     + ("" if rss is None else f", {rss / 1024:.1f} MiB{vs('rss_kb', 'conns')}"))
        oks.append(ok == n_conn and not err and n_conn >= 10000)
    if n_str < 5000 or n_conn < 10000:
        parts.append("run below the target's sizes (file limit): not a verdict")
        return ("T6", what, None, "; ".join(parts))
    ok6 = False if False in oks else (None if None in oks else True)
    return ("T6", what, ok6, "; ".join(parts))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("results")
    ap.add_argument("--meta", action="append", default=[])
    a = ap.parse_args()
    meta = dict(m.split("=", 1) for m in a.meta)
    res, order = parse(a.results)
    tck = float(meta.get("clk_tck", 100))
    targets = [t for t in BASE if t in order] + [t for t in order if t not in BASE]

    def get(t, cell, key):
        v = res.get(t, {}).get(cell, {}).get(key)
        return v if isinstance(v, (int, float)) else None

    def rps(t, cell):
        r, d = get(t, cell, "requests"), get(t, cell, "duration_us")
        if r is None or not d or get(t, cell, "failed"):
            return None
        return r / (d / 1e6)

    def cpu(t, cell):
        if t == "direct":
            return None
        r, ticks = get(t, cell, "requests"), get(t, cell, "cpu_ticks")
        if not r or ticks is None:
            return None
        return ticks / tck * 1e6 / r

    def errors(t):
        n = 0
        for cell, v in res.get(t, {}).items():
            if cell == "warmup":
                continue
            if cell == "stream":
                n += max(0, v.get("errors", 0) or 0)
                continue
            if cell.startswith("conc_"):
                e = v.get("errors", 0) or 0
                # -1: the client itself failed; count the run as one error.
                n += 1 if e < 0 else e
                continue
            for k in ("err_connect", "err_read", "err_write", "err_status", "err_timeout"):
                n += int(v.get(k, 0) or 0)
            n += int(v.get("failed", 0) or 0)
        return n

    def mib(kb):
        return None if kb is None else kb / 1024.0

    def stream(t, key):
        v = res.get(t, {}).get("stream", {}).get(key)
        return v if isinstance(v, (int, float)) else None

    def added(t, key):
        a, d = stream(t, key), stream("direct", key)
        return None if a is None or d is None else a - d

    def conc(t, mode, key):
        v = res.get(t, {}).get("conc_" + mode, {}).get(key)
        return v if isinstance(v, (int, float)) else None

    def per_conn_kib(t, mode):
        a, b, n = conc(t, mode, "rss_kb"), conc(t, mode, "rss_before_kb"), conc(t, mode, "opened")
        return None if a is None or b is None or not n else (a - b) / n

    n_str = int(meta.get("conc_streams", 5000))
    n_conn = int(meta.get("conc_conns", 10000))
    small = meta.get("small_bytes", "1.3k")
    half = meta.get("half", "?")
    dur = meta.get("duration", "?")
    # (label, function(target) -> value, unit, higher_is_better, ratios?)
    rows = [
        (f"Throughput, {small} B body, 32 conns ({dur}s)", lambda t: rps(t, "small_c32"), "req/s", True),
        (f"Throughput, 100 KiB body, 32 conns ({half}s)", lambda t: rps(t, "b100k_c32"), "req/s", True),
        (f"Throughput, 8 MiB body, 2 conns ({half}s)", lambda t: rps(t, "b8m_c2"), "req/s", True),
        ("Latency p50, 1 conn", lambda t: get(t, "small_c1", "p50_us"), "µs", False),
        ("Latency p99, 1 conn", lambda t: get(t, "small_c1", "p99_us"), "µs", False),
        ("Latency p50, 32 conns", lambda t: get(t, "small_c32", "p50_us"), "µs", False),
        ("Latency p99, 32 conns", lambda t: get(t, "small_c32", "p99_us"), "µs", False),
        (f"CPU per request, {small} B, 32 conns", lambda t: cpu(t, "small_c32"), "µs", False),
        ("CPU per request, 100 KiB, 32 conns", lambda t: cpu(t, "b100k_c32"), "µs", False),
        ("CPU per request, 8 MiB, 2 conns", lambda t: cpu(t, "b8m_c2"), "µs", False),
        ("RSS idle", lambda t: mib(get(t, "idle", "rss_kb")), "MiB", False),
        ("RSS under load (32 conns)", lambda t: mib(get(t, "small_c32", "rss_kb")), "MiB", False),
        ("RSS peak (VmHWM, after 8 MiB bodies)", lambda t: mib(get(t, "end", "hwm_kb")), "MiB", False),
        ("Stream TTFB p50", lambda t: stream(t, "ttfb_p50_us"), "µs", False),
        ("Stream TTFB p99", lambda t: stream(t, "ttfb_p99_us"), "µs", False),
        ("Stream added TTFB p50 (vs direct)", lambda t: added(t, "ttfb_p50_us"), "µs", None),
        ("Stream inter-chunk gap p50", lambda t: stream(t, "gap_p50_us"), "µs", False),
        ("Stream inter-chunk gap p99", lambda t: stream(t, "gap_p99_us"), "µs", False),
        ("Stream added inter-chunk gap p99 (vs direct)", lambda t: added(t, "gap_p99_us"), "µs", None),
        ("Stream chunk transit p50 (mock → client)", lambda t: stream(t, "transit_p50_us"), "µs", False),
        ("Stream chunk transit p99 (mock → client)", lambda t: stream(t, "transit_p99_us"), "µs", False),
        ("Stream added chunk delay p99 (transit vs direct)", lambda t: added(t, "transit_p99_us"), "µs", None),
        (f"RSS with {n_str:,} open streams", lambda t: mib(conc(t, "streams", "rss_kb")), "MiB", False),
        # Growth over the RSS just before the phase, which already holds what
        # the earlier cells left behind; the stream phase runs first.
        ("RSS added per open stream", lambda t: per_conn_kib(t, "streams"), "KiB", False),
        (f"Streams open at once (of {n_str:,})", lambda t: conc(t, "streams", "opened"), "", None),
        (f"Streams completed OK (of {n_str:,})", lambda t: conc(t, "streams", "ok"), "", None),
        (f"RSS with {n_conn:,} open connections", lambda t: mib(conc(t, "conns", "rss_kb")), "MiB", False),
        (f"Connections served OK (of {n_conn:,} open at once)", lambda t: conc(t, "conns", "ok"), "", None),
        ("Errors (socket + non-2xx, all cells)", lambda t: errors(t), "", None),
    ]

    def fmt(v, unit):
        if v is None:
            return "—"
        if unit == "req/s":
            return f"{v:,.0f}"
        if unit == "MiB":
            return f"{v:.1f}"
        if unit == "":
            return f"{int(v)}"
        if abs(v) >= 100:
            return f"{v:,.0f}"
        return f"{v:.1f}"

    def ratio(a, b, unit):
        if a is None or b is None or unit in ("",) or b == 0:
            return "—"
        return f"{a / b:.2f}×"

    out = []
    w = out.append
    w(
        f"Machine: {meta.get('nproc', '?')} CPUs ({meta.get('cpu', '?')}), kernel {meta.get('kernel', '?')}; "
        f"{meta.get('threads', '?')} thread(s) per proxy, mock upstream {meta.get('mock_threads', '?')} thread(s); "
        f"wrk -t1; {dur}s cells ({half}s for large bodies); {meta.get('streams', '?')} streams of 20 chunks 5 ms apart; "
        f"nginx {meta.get('nginx', '?')}."
        + (f" Concurrency: {n_str:,} held streams, then {n_conn:,} connections, per target "
           f"(file limit {meta.get('nofile', '?')})." if "conc_streams" in meta else "")
    )
    w("")
    head = ["metric"] + [LABEL.get(t, t) for t in targets] + ["TG ÷ direct", "TG ÷ floor", "TG ÷ nginx"]
    w("| " + " | ".join(head) + " |")
    w("|" + "|".join(["---"] + ["---:"] * (len(head) - 1)) + "|")
    for label, fn, unit, _better in rows:
        vals = {t: fn(t) for t in targets}
        cells = [f"{label}" + (f" ({unit})" if unit else "")]
        cells += [fmt(vals[t], unit) for t in targets]
        if _better is None:
            cells += ["—", "—", "—"]
        else:
            tg = vals.get("tollgate")
            cells += [ratio(tg, vals.get(b), unit) for b in ("direct", "floor", "nginx")]
        w("| " + " | ".join(cells) + " |")
    w("")

    # Targets.
    def verdict(ok):
        return "n/a" if ok is None else ("PASS" if ok else "FAIL")

    def both(a, b):
        return None if a is None or b is None else (a, b)

    lines = []
    p = both(cpu("tollgate", "small_c32"), cpu("floor", "small_c32"))
    lines.append(
        ("T1", "CPU/request at 32 conns ≤ 1.3× floor",
         None if p is None else p[0] <= 1.3 * p[1],
         "—" if p is None else f"{p[0]:.1f} µs vs {p[1]:.1f} µs = {p[0] / p[1]:.2f}×"))
    p = both(rps("tollgate", "small_c32"), rps("floor", "small_c32"))
    lines.append(
        ("T2", "throughput at 32 conns ≥ 0.8× floor",
         None if p is None else p[0] >= 0.8 * p[1],
         "—" if p is None else f"{p[0]:,.0f} vs {p[1]:,.0f} req/s = {p[0] / p[1]:.2f}×"))
    a50, n50 = get("tollgate", "small_c1", "p50_us"), get("nginx", "small_c1", "p50_us")
    a99, n99 = get("tollgate", "small_c1", "p99_us"), get("nginx", "small_c1", "p99_us")
    ok3 = None if None in (a50, n50, a99, n99) else (a50 <= n50 + 25 and a99 <= n99 + 100)
    lines.append(
        ("T3", "1-conn p50 ≤ nginx + 25 µs and p99 ≤ nginx + 100 µs", ok3,
         "—" if ok3 is None else
         f"p50 {a50:.0f} vs {n50:.0f} µs ({a50 - n50:+.0f} µs, {a50 / n50:.2f}×); "
         f"p99 {a99:.0f} vs {n99:.0f} µs ({a99 - n99:+.0f} µs, {a99 / n99:.2f}×)"))
    t_ttfb, t_chunk = added("tollgate", "ttfb_p50_us"), added("tollgate", "transit_p99_us")
    f_ttfb, f_chunk = added("floor", "ttfb_p50_us"), added("floor", "transit_p99_us")
    ok4 = None if None in (t_ttfb, t_chunk) else (t_ttfb <= 100 and t_chunk <= 50)
    lines.append(
        ("T4", "streams: added TTFB p50 ≤ 100 µs and added inter-chunk p99 ≤ 50 µs", ok4,
         "—" if ok4 is None else
         f"added TTFB p50 {t_ttfb:+.0f} µs, added chunk delay p99 {t_chunk:+.0f} µs "
         f"(floor: {f_ttfb:+.0f} / {f_chunk:+.0f} µs)" if f_ttfb is not None and f_chunk is not None
         else f"added TTFB p50 {t_ttfb:+.0f} µs, added chunk delay p99 {t_chunk:+.0f} µs"))
    p = both(cpu("tollgate", "b8m_c2"), cpu("floor", "b8m_c2"))
    lines.append(
        ("T5", "8 MiB body CPU/request ≤ 2× floor",
         None if p is None else p[0] <= 2 * p[1],
         "—" if p is None else f"{p[0]:,.0f} µs vs {p[1]:,.0f} µs = {p[0] / p[1]:.2f}×"))
    lines.append(t6(mib, get, conc, n_str, n_conn, "conc_streams" in meta))
    for tid, what, ok, detail in lines:
        w(f"- **{tid} {verdict(ok)}** — {what}: {detail}")
    errs = {t: errors(t) for t in targets}
    bad = {t: n for t, n in errs.items() if n}
    if bad:
        w("")
        w("WARNING: errors during the run: " + ", ".join(f"{t}: {n}" for t, n in bad.items()))
    if "access_log_lines" in meta:
        w("")
        w(f"Tollgate access-log lines written during the run: {meta['access_log_lines']}.")
    print("\n".join(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())

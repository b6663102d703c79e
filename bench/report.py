#!/usr/bin/env python3
"""Turns bench/out/*.jsonl (written by bench/run and bench/callgrind.sh) into
bench/RESULTS.md and bench/*.svg.

    bench/report.py [--out-dir bench/out] [--bench-dir bench] [--matrix FILE] [--scale FILE]

The newest matrix, scale and callgrind files are used unless named. Every figure is the
MEDIAN over the repetitions of a case that finished without a failed check; runs that failed
are counted and shown. A hand-written section between `<!-- notes -->` and `<!-- /notes -->`
in an existing RESULTS.md is kept. Standard library only; the SVGs are written by hand.
"""

import argparse
import glob
import html
import json
import math
import os
import re
import statistics
import sys

SERVERS = ["herald", "herald-redis", "herald-threads", "floor", "axum", "node", "python"]
PEERS = ["axum", "node", "python"]
HERALDS = ["herald", "herald-redis", "herald-threads"]
# herald-threads (Herald embedded with --threads N) against herald (one thread): the most
# server CPU per delivery the threads may add.
THREADS_MAX_RATIO = 1.1
# The floor (bench/peers/floor) is not a peer: it is the least any server can do, the
# yardstick for server CPU per delivery, and is left out of the "best peer" comparisons.
FLOOR = "floor"
FLOOR_MAX_RATIO = 1.5
COLORS = {"herald": "#d62728", "herald-redis": "#ff7f0e", "herald-threads": "#8c564b", "axum": "#1f77b4",
          "node": "#2ca02c", "python": "#9467bd", "floor": "#7f7f7f"}


# ---------------------------------------------------------------- loading
def load(path):
    recs = []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line:
                try:
                    recs.append(json.loads(line))
                except ValueError:
                    pass
    return recs


def newest(out_dir, kind):
    """The newest bench/out/*-KIND.jsonl that holds results (a run still going has none yet)."""
    for f in sorted(glob.glob(os.path.join(out_dir, f"*-{kind}.jsonl")), reverse=True):
        if any(r.get("kind") == "run" for r in load(f)):
            return f
    return None


def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def cpu_per_delivery_us(r):
    """Server CPU in the publish phase per delivery, µs (older results: computed)."""
    v = r.get("server_cpu_per_delivery_us")
    if v is None and r.get("server_cpu_publish_s") is not None and r.get("deliveries"):
        v = r["server_cpu_publish_s"] / r["deliveries"] * 1e6
    return v


def lat(r, key, q):
    l = (r or {}).get(key)
    return l.get(q) if l else None


class Cell:
    """All runs of one (server, clients, case, publish)."""

    def __init__(self, runs):
        self.runs = runs
        self.with_result = [r for r in runs if r.get("result")]
        self.ok = [r for r in runs if r.get("status") == "ok" and r.get("result")]
        self.skipped = [r for r in runs if r.get("status") == "skipped"]
        self.failed = [r for r in runs if r.get("status") not in ("ok", "skipped")]
        # medians over good runs; if none was good, over whatever has a result (flagged)
        self.use = self.ok or self.with_result
        self.degraded = not self.ok and bool(self.with_result)

    def m(self, f):
        return med([f(r["result"]) for r in self.use])

    def fresh_m(self, f):
        fr = [r for r in self.with_result if r.get("fresh")]
        return med([f(r["result"]) for r in fr])

    def lost(self):
        return sum((r["result"].get("lost") or 0) for r in self.with_result
                   if r["result"].get("mode") == "fanout")

    def status(self):
        n = len(self.runs) - len(self.skipped)
        if not n:
            reason = self.skipped[0].get("reason", "skipped") if self.skipped else "not run"
            return f"skipped ({reason})"
        s = f"{len(self.ok)}/{n} ok"
        if self.failed:
            kinds = sorted({r.get("status") for r in self.failed})
            s += " (" + ", ".join(kinds) + ")"
        return s


def cells(recs):
    out = {}
    for r in recs:
        if r.get("kind") != "run":
            continue
        key = (r["server"], r["clients"], r["case"], r["publish"])
        out.setdefault(key, []).append(r)
    return {k: Cell(v) for k, v in out.items()}


# ---------------------------------------------------------------- formatting
def fnum(x, nd=0):
    if x is None:
        return "–"
    if nd == 0:
        return f"{x:,.0f}"
    return f"{x:,.{nd}f}"


def fms(us):
    if us is None:
        return "–"
    ms = us / 1000
    if ms >= 100:
        return f"{ms:,.0f}"
    if ms >= 10:
        return f"{ms:.1f}"
    return f"{ms:.2f}"


def fpct(x):
    return "–" if x is None else f"{100 * x:.0f}%"


def table(head, rows):
    out = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    for r in rows:
        out.append("| " + " | ".join(str(c) for c in r) + " |")
    return "\n".join(out)


# ---------------------------------------------------------------- SVG (by hand)
def svg_chart(path, title, ylabel, series, logy=True, xlabel="clients"):
    """series: {name: [(x, y), ...]}; log y axis by default."""
    W, H, L, R, T, B = 720, 420, 80, 150, 40, 50
    pts = [(x, y) for s in series.values() for x, y in s if y is not None and y > 0]
    if not pts:
        return False
    xs = sorted({x for x, _ in pts})
    xmin, xmax = min(xs), max(xs)
    if xmin == xmax:
        xmin, xmax = xmin * 0.5, xmax * 1.5
    ys = [y for _, y in pts]
    if logy:
        lo = 10 ** math.floor(math.log10(min(ys)))
        hi = 10 ** math.ceil(math.log10(max(ys)))
        if lo == hi:
            hi = lo * 10
        fy = lambda y: T + (H - T - B) * (1 - (math.log10(y) - math.log10(lo)) / (math.log10(hi) - math.log10(lo)))
        ticks = []
        d = lo
        while d <= hi * 1.0001:
            for m in (1, 2, 5):
                if lo <= d * m <= hi * 1.0001:
                    ticks.append(d * m)
            d *= 10
    else:
        lo, hi = 0, max(ys) * 1.1
        fy = lambda y: T + (H - T - B) * (1 - (y - lo) / (hi - lo))
        step = 10 ** math.floor(math.log10(hi / 5))
        ticks = [i * step for i in range(0, int(hi / step) + 1)]
    fx = lambda x: L + (W - L - R) * (x - xmin) / (xmax - xmin)

    def lbl(v):
        if v >= 1e6:
            return f"{v / 1e6:g}M"
        if v >= 1e3:
            return f"{v / 1e3:g}k"
        return f"{v:g}"

    o = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" '
         f'font-family="sans-serif" font-size="12">',
         f'<rect width="{W}" height="{H}" fill="white"/>',
         f'<text x="{W / 2}" y="22" text-anchor="middle" font-size="15">{html.escape(title)}</text>']
    for t in ticks:
        y = fy(t)
        o.append(f'<line x1="{L}" y1="{y:.1f}" x2="{W - R}" y2="{y:.1f}" stroke="#ddd"/>')
        o.append(f'<text x="{L - 6}" y="{y + 4:.1f}" text-anchor="end">{lbl(t)}</text>')
    for x in xs:
        o.append(f'<line x1="{fx(x):.1f}" y1="{T}" x2="{fx(x):.1f}" y2="{H - B}" stroke="#eee"/>')
        o.append(f'<text x="{fx(x):.1f}" y="{H - B + 16}" text-anchor="middle">{lbl(x)}</text>')
    o.append(f'<rect x="{L}" y="{T}" width="{W - L - R}" height="{H - T - B}" fill="none" stroke="#444"/>')
    o.append(f'<text x="{(L + W - R) / 2}" y="{H - 12}" text-anchor="middle">{html.escape(xlabel)}</text>')
    o.append(f'<text x="16" y="{(T + H - B) / 2}" text-anchor="middle" '
             f'transform="rotate(-90 16 {(T + H - B) / 2})">{html.escape(ylabel)}</text>')
    ly = T + 10
    for name, s in series.items():
        s = [(x, y) for x, y in s if y is not None and y > 0]
        if not s:
            continue
        c = COLORS.get(name, "#333")
        d = " ".join(f"{'M' if i == 0 else 'L'}{fx(x):.1f},{fy(y):.1f}" for i, (x, y) in enumerate(s))
        o.append(f'<path d="{d}" fill="none" stroke="{c}" stroke-width="2"/>')
        for x, y in s:
            o.append(f'<circle cx="{fx(x):.1f}" cy="{fy(y):.1f}" r="3.5" fill="{c}"/>')
        o.append(f'<line x1="{W - R + 12}" y1="{ly}" x2="{W - R + 32}" y2="{ly}" stroke="{c}" stroke-width="2"/>')
        o.append(f'<text x="{W - R + 38}" y="{ly + 4}">{html.escape(name)}</text>')
        ly += 18
    o.append("</svg>")
    with open(path, "w") as f:
        f.write("\n".join(o) + "\n")
    return True


# ---------------------------------------------------------------- report
def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    here = os.path.dirname(os.path.abspath(__file__))
    ap.add_argument("--out-dir", default=os.path.join(here, "out"))
    ap.add_argument("--bench-dir", default=here)
    ap.add_argument("--matrix")
    ap.add_argument("--scale")
    ap.add_argument("--callgrind")
    a = ap.parse_args()

    mfile = a.matrix or newest(a.out_dir, "matrix")
    sfile = a.scale or newest(a.out_dir, "scale")
    cfiles = [a.callgrind] if a.callgrind else sorted(glob.glob(os.path.join(a.out_dir, "*-callgrind.jsonl")))
    if not mfile:
        sys.exit(f"report.py: no *-matrix.jsonl in {a.out_dir}")
    recs = load(mfile)
    meta = next((r for r in recs if r.get("kind") == "meta"), {})
    end = next((r for r in recs if r.get("kind") == "end"), {})
    C = cells(recs)
    counts = sorted({k[1] for k in C if k[2] in ("paced", "burst")})
    md = []
    w = md.append

    w("# Herald benchmark results\n")
    w("Generated by `bench/report.py` from `bench/out/` (raw JSON lines, git-ignored). "
      "Every figure is the **median** over the repetitions of a case; runs with a failed check "
      "(lost/duplicated events, publish errors, timeout) are excluded from the median and counted "
      "in the *runs* column.\n")

    # ---- run facts
    w("## The run\n")
    w(f"- Matrix command: `{meta.get('command', '?')}` (raw: `bench/out/{os.path.basename(mfile)}`)")
    if sfile:
        sm = next((r for r in load(sfile) if r.get("kind") == "meta"), {})
        w(f"- Scale command: `{sm.get('command', '?')}` (raw: `bench/out/{os.path.basename(sfile)}`)")
    if cfiles:
        w(f"- Callgrind: `bench/callgrind.sh` (raw: " + ", ".join(f"`bench/out/{os.path.basename(c)}`" for c in cfiles) + ")")
    w(f"- Date: {meta.get('date', '?')}" + (f" to {end.get('date')}" if end.get("date") else ""))
    w(f"- Machine: `nproc` = {meta.get('nproc')}, memory {meta.get('mem_total')}, kernel "
      f"{meta.get('kernel')}, CPU {meta.get('cpu_model')}; open-file hard limit {meta.get('nofile_hard')}; "
      f"load average at start {' '.join(meta.get('loadavg_start', []))}"
      + (f", at end {' '.join(end.get('loadavg_end', []))}" if end.get("loadavg_end") else ""))
    w(f"- Herald: commit `{meta.get('herald_commit')}`, `git status --short src | wc -l` = "
      f"{meta.get('herald_dirty_src_files')} (binary copied to a private path before the run, sha256 "
      f"`{meta.get('herald_sha256_16')}…`), one thread. {meta.get('redis_version', '')}; Node "
      f"{meta.get('node_version', '')}; {meta.get('rustc', '')}.")
    w("- Noise: the machine has 2 cores and is shared with other agents (load average above); the "
      "server, its Redis, the generator and whatever else runs share both cores, nothing is pinned. "
      "Compare servers within this run only; expect ±20% between repetitions.")
    w("- Cases: **paced** = 100 events at 20/s, HTTP publisher with 1 request in flight (order checked); "
      "**burst** = 200 events, 4 publishes in flight; **http** = `POST /events` to the server, "
      "**redis** = `PUBLISH events` straight into the server's Redis (pipelined, 4 in flight for burst). "
      "Herald embedded (`herald`) has no Redis, so it has HTTP rows only. Every client checks every "
      "event (loss, duplicates, order). Latency = generator send time to receipt; *sched p99* = "
      "scheduled send time to receipt (paced), which includes any publisher backlog. "
      "RSS/conn = (server RSS after all clients connected and idled 1 s − RSS before) / clients, "
      "on a freshly started server (first case after start). Server CPU = server process CPU time / "
      "wall time during the publish phase (1.0 = one core; Redis's CPU is not included). Gen CPU = "
      "generator CPU (all its processes) / wall in the same phase. A run in which the generator was "
      "saturated (a process busy or waiting for a CPU over 90% of the phase, or over 90% of its cores "
      "in use: `herald-bench`'s `generator_saturated`) has status *saturated* and, like a failed "
      "run, is left out of the medians: its figures are the generator's limit.\n")

    # ---- targets
    def cell(s, n, case, pub):
        return C.get((s, n, case, pub))

    def val(s, n, case, pub, f, fresh=False):
        c = cell(s, n, case, pub)
        if not c or not c.with_result:
            return None
        return c.fresh_m(f) if fresh else c.m(f)

    def best_peer(n, case, pub, f, higher=True):
        vals = [(val(p, n, case, pub, f), p) for p in PEERS]
        vals = [(v, p) for v, p in vals if v is not None and v > 0]
        if not vals:
            return None, None
        return (max(vals) if higher else min(vals))

    dps = lambda r: r.get("deliveries_per_sec")
    p99 = lambda r: lat(r, "latency_us", "p99")
    p50 = lambda r: lat(r, "latency_us", "p50")
    sp99 = lambda r: lat(r, "sched_latency_us", "p99")
    rssc = lambda r: r.get("server_rss_per_connection_bytes")
    rps = lambda r: r.get("requests_per_sec")
    N = 10000 if 10000 in counts else (max(counts) if counts else None)

    targets = []  # (target, who, herald fig, peer fig, ratio text, verdict)

    def verdict(ok):
        return "**met**" if ok else "**MISSED**" if ok is not None else "n/a"

    if N:
        for h in HERALDS:
            v = val(h, N, "paced", "http", rssc, fresh=True)
            peers_rss = ", ".join(f"{p} {fnum(val(p, N, 'paced', 'http', rssc, fresh=True))}" for p in PEERS
                                  if val(p, N, 'paced', 'http', rssc, fresh=True) is not None)
            targets.append((f"Idle memory ≤ 400 B/WebSocket at {N:,}", h, f"{fnum(v)} B",
                            peers_rss or "–", "–", verdict(None if v is None else v <= 400)))
        for h, pub in (("herald", "http"), ("herald-redis", "http"), ("herald-redis", "redis")):
            v = val(h, N, "burst", pub, dps)
            pv, pp = best_peer(N, "burst", pub, dps, higher=True)
            r = v / pv if v and pv else None
            targets.append((f"Burst fan-out ≥ 1.5× best peer ({N:,} clients, 200 events, publish {pub})", h,
                            f"{fnum(v)} deliv/s", f"{pp} {fnum(pv)}", f"{r:.2f}×" if r else "–",
                            verdict(None if r is None else r >= 1.5)))
        for h, pub in (("herald", "http"), ("herald-redis", "http"), ("herald-redis", "redis")):
            v = val(h, N, "paced", pub, p99)
            sv = val(h, N, "paced", pub, sp99)
            pv, pp = best_peer(N, "paced", pub, p99, higher=False)
            r = v / pv if v and pv else None
            backlog_ok = (sv is not None and v is not None and sv <= max(1.2 * v, v + 5000))
            targets.append((f"Paced p99 ≤ 0.5× best peer ({N:,} clients, 20/s, publish {pub})", h,
                            f"p99 {fms(v)} ms", f"{pp} {fms(pv)} ms", f"{r:.2f}×" if r else "–",
                            verdict(None if r is None else r <= 0.5)))
            targets.append((f"Paced: no backlog (sched p99 ≤ max(1.2× p99, p99 + 5 ms)), publish {pub}", h,
                            f"sched p99 {fms(sv)} ms vs p99 {fms(v)} ms", "–", "–",
                            verdict(None if sv is None else backlog_ok)))
        def connect_times(server):
            """Connect seconds of every run of `server` at N clients, over all fan-out cases."""
            cells = [cell(server, N, case, pub) for case in ("paced", "burst") for pub in ("http", "redis")]
            return [r["result"]["connect_seconds"] for c in cells if c for r in c.use]

        for h in HERALDS:
            v = med(connect_times(h))
            peer_c = []
            for p in PEERS:
                ys = connect_times(p)
                if ys:
                    peer_c.append(f"{p} {med(ys):.2f} s")
            targets.append((f"Connect {N:,} clients < 0.5 s (median over all its runs)", h,
                            f"{v:.3f} s" if v is not None else "–", ", ".join(peer_c) or "–", "–",
                            verdict(None if v is None else v < 0.5)))
    for subs in sorted({k[1] for k in C if k[2] == "throughput"}):
        for h in HERALDS:
            v = val(h, subs, "throughput", "http", rps)
            pv, pp = best_peer(subs, "throughput", "http", rps, higher=True)
            r = v / pv if v and pv else None
            targets.append((f"Publish throughput ≥ 2× best peer (64 conns, {subs:,} subscribers)", h,
                            f"{fnum(v)} req/s", f"{pp} {fnum(pv)}", f"{r:.2f}×" if r else "–",
                            verdict(None if r is None else r >= 2)))

    floor_rows, floor_targets = floor_section(C, counts, N)
    targets += floor_targets

    scale_rows, scale_targets = scale_section(sfile)
    targets += scale_targets
    cg_lines, cg_target = callgrind_section(cfiles)
    targets += cg_target

    w("## Targets\n")
    w("Ratios are Herald ÷ the best reference server (axum, node, python) in the same run.\n")
    w(table(["Target", "Herald", "Herald figure", "Best peer (or peers)", "Ratio", "Verdict"], targets))
    w("")

    # ---- per-case tables
    w("## Fan-out, per case and client count\n")
    for case, pub in (("paced", "http"), ("paced", "redis"), ("burst", "http"), ("burst", "redis")):
        desc = {"paced": "paced: 100 events at 20/s", "burst": "burst: 200 events, 4 in flight"}[case]
        w(f"### {desc}, publish over {pub.upper() if pub == 'http' else 'Redis'}\n")
        for n in counts:
            rows = []
            for s in SERVERS:
                c = cell(s, n, case, pub)
                if not c:
                    continue
                if not c.with_result:
                    rows.append([s, c.status()] + ["–"] * 9)
                    continue
                flag = " ⚠" if c.degraded else ""
                rows.append([
                    s + flag, c.status(),
                    fnum(c.m(dps)), fms(c.m(p50)), fms(c.m(p99)),
                    fms(c.m(sp99)) if case == "paced" else "–",
                    f"{c.m(lambda r: r['connect_seconds']):.3f}",
                    fnum(c.fresh_m(rssc)) if c.fresh_m(rssc) is not None else "–",
                    fpct(c.m(lambda r: r.get("server_cpu_publish_util"))),
                    fpct(c.m(lambda r: r.get("gen_cpu_publish_util"))),
                    fnum(c.lost()),
                ])
            if rows:
                w(f"**{n:,} clients**\n")
                w(table(["Server", "Runs", "Deliveries/s", "p50 ms", "p99 ms", "Sched p99 ms", "Connect s",
                         "RSS/conn B", "Server CPU", "Gen CPU", "Lost (all runs)"], rows))
                w("")
    w("⚠ = no run of this case passed every check with an unsaturated generator; the figures are "
      "medians over the failed or saturated runs.\n")

    if floor_rows:
        w("## Server CPU per delivery against the floor\n")
        w("The floor (`bench/peers/floor`) completes the handshake, then writes one pre-built frame "
          "to every socket per event, one write each, nothing else: the least any server can do on "
          "this machine. Server CPU per delivery = server CPU time in the publish phase / deliveries "
          "(µs, median over the good runs); *× floor* = that ÷ the floor's in the same case.\n")
        w("\n".join(floor_rows))
        w("")

    # ---- throughput
    tps = sorted({k[1] for k in C if k[2] == "throughput"})
    if tps:
        w("## Publish throughput (POST /events, 64 keep-alive connections, 1 request in flight each)\n")
        for subs in tps:
            rows = []
            for s in SERVERS:
                c = cell(s, subs, "throughput", "http")
                if not c:
                    continue
                if not c.with_result:
                    rows.append([s, c.status()] + ["–"] * 6)
                    continue
                rows.append([
                    s + (" ⚠" if c.degraded else ""), c.status(), fnum(c.m(rps)),
                    fms(c.m(lambda r: lat(r, "latency_us", "p50"))),
                    fms(c.m(lambda r: lat(r, "latency_us", "p99"))),
                    fnum(c.m(lambda r: r.get("deliveries_per_sec"))) if subs else "–",
                    fpct(c.m(lambda r: r.get("server_cpu_publish_util"))),
                    fpct(c.m(lambda r: r.get("gen_cpu_util"))),
                ])
            w(f"**{subs:,} subscribers**\n")
            w(table(["Server", "Runs", "Requests/s", "p50 ms", "p99 ms", "Deliveries/s", "Server CPU",
                     "Gen CPU"], rows))
            w("")

    # ---- scale, callgrind
    w("## Scale\n")
    w("\n".join(scale_rows) if scale_rows else "No `bench/run --scale` results yet.\n")
    w("")
    w("## Instructions per delivery (callgrind)\n")
    w("\n".join(cg_lines) if cg_lines else "No `bench/callgrind.sh` results yet.\n")
    w("")

    # ---- plots
    plots = []

    def series(case, pub, f, fresh=False):
        out = {}
        for s in SERVERS:
            pts = []
            for n in counts:
                c = cell(s, n, case, pub)
                if c and c.use:
                    pts.append((n, c.fresh_m(f) if fresh else c.m(f)))
            if pts:
                out[s] = pts
        return out

    for fname, title, ylabel, case, pub, f, fresh in (
        ("deliveries.svg", "Burst fan-out (200 events, HTTP publish): deliveries/s", "deliveries/s (log)",
         "burst", "http", dps, False),
        ("deliveries-redis.svg", "Burst fan-out (200 events, publish into Redis): deliveries/s",
         "deliveries/s (log)", "burst", "redis", dps, False),
        ("p99.svg", "Paced fan-out (20 events/s, HTTP publish): p99 latency", "p99 latency, ms (log)",
         "paced", "http", lambda r: (p99(r) or 0) / 1000, False),
        ("p99-sched.svg", "Paced fan-out (20 events/s, HTTP publish): p99 from the scheduled send time",
         "p99 from schedule, ms (log)", "paced", "http", lambda r: (sp99(r) or 0) / 1000, False),
        ("p99-redis.svg", "Paced fan-out (20 events/s, publish into Redis): p99 latency",
         "p99 latency, ms (log)", "paced", "redis", lambda r: (p99(r) or 0) / 1000, False),
        ("memory.svg", "Server RSS per idle WebSocket (fresh server)", "bytes per connection (log)",
         "paced", "http", rssc, True),
    ):
        if svg_chart(os.path.join(a.bench_dir, fname), title, ylabel, series(case, pub, f, fresh)):
            plots.append((fname, title))
    if plots:
        w("## Plots\n")
        for fname, title in plots:
            w(f"![{title}]({fname})\n")

    # ---- peers' tuning and the tutorial bug
    w("## The reference servers: tuning, and the tutorial's bug\n")
    w("From `bench/peers/README.md` (verbatim):\n")
    try:
        readme = open(os.path.join(a.bench_dir, "peers", "README.md")).read()
        body = readme.split("\n", 1)[1] if readme.startswith("#") else readme
        body = re.sub(r"^## ", "### ", body, flags=re.M)
        w(body.strip() + "\n")
    except OSError:
        w("(bench/peers/README.md not found)\n")

    # ---- hand-written notes, kept across regenerations
    res_path = os.path.join(a.bench_dir, "RESULTS.md")
    notes = ""
    if os.path.exists(res_path):
        m = re.search(r"<!-- notes -->.*?<!-- /notes -->", open(res_path).read(), re.S)
        if m:
            notes = m.group(0)
    if not notes:
        notes = "<!-- notes -->\n## Notes\n\n(hand-written analysis goes here; kept by report.py)\n<!-- /notes -->"
    # notes go right after the targets table
    text = "\n".join(md)
    text = text.replace("## Fan-out, per case and client count", notes + "\n\n## Fan-out, per case and client count", 1)
    with open(res_path, "w") as f:
        f.write(text.rstrip() + "\n")
    print(f"wrote {res_path} and {', '.join(p for p, _ in plots)}")


def floor_section(C, counts, N):
    """Server CPU per delivery of every server, as a multiple of the floor's (HTTP publish)."""
    rows, targets = [], []
    if not any(k[0] == FLOOR for k in C):
        return rows, targets
    for case in ("paced", "burst"):
        t = []
        for n in counts:
            fc = C.get((FLOOR, n, case, "http"))
            fv = fc.m(cpu_per_delivery_us) if fc and fc.use else None
            for srv in SERVERS:
                c = C.get((srv, n, case, "http"))
                if not c or not c.use:
                    continue
                v = c.m(cpu_per_delivery_us)
                ratio = v / fv if v and fv else None
                t.append([f"{n:,}", srv + (" ⚠" if c.degraded else ""), c.status(), fnum(v, 2),
                          f"{ratio:.2f}×" if ratio else "–"])
                if srv in HERALDS and ratio is not None:
                    print(f"report.py: {srv} {case} {n:,} clients: server CPU per delivery "
                          f"{v:.2f} µs = {ratio:.2f}× the floor's {fv:.2f} µs")
        if t:
            rows.append(f"**{case}, publish over HTTP**\n")
            rows.append(table(["Clients", "Server", "Runs", "Server CPU µs/delivery", "× floor"], t))
            rows.append("")
    if N:
        for case in ("paced", "burst"):
            one = C.get(("herald", N, case, "http"))
            many = C.get(("herald-threads", N, case, "http"))
            if one and one.use and many and many.use:
                v1, vn = one.m(cpu_per_delivery_us), many.m(cpu_per_delivery_us)
                r = vn / v1 if v1 and vn else None
                targets.append((f"Server CPU per delivery, --threads N ≤ {THREADS_MAX_RATIO}× --threads 1 "
                                f"({N:,} clients, {case})", "herald-threads", f"{fnum(vn, 2)} µs",
                                f"herald (1 thread) {fnum(v1, 2)} µs", f"{r:.2f}×" if r else "–",
                                "**met**" if r is not None and r <= THREADS_MAX_RATIO else
                                "**MISSED**" if r is not None else "n/a"))
        for case in ("paced", "burst"):
            fc = C.get((FLOOR, N, case, "http"))
            fv = fc.m(cpu_per_delivery_us) if fc and fc.use else None
            for h in HERALDS:
                c = C.get((h, N, case, "http"))
                v = c.m(cpu_per_delivery_us) if c and c.use else None
                r = v / fv if v and fv else None
                targets.append((f"Server CPU per delivery ≤ {FLOOR_MAX_RATIO}× the floor's ({N:,} clients, "
                                f"{case}, publish http)", h, f"{fnum(v, 2)} µs", f"floor {fnum(fv, 2)} µs",
                                f"{r:.2f}×" if r else "–",
                                "**met**" if r is not None and r <= FLOOR_MAX_RATIO else
                                "**MISSED**" if r is not None else "n/a"))
    return rows, targets


def scale_section(sfile):
    if not sfile:
        return [], []
    recs = load(sfile)
    rows, targets = [], []
    one = [r for r in recs if r.get("kind") == "run" and r["case"].startswith("scale1-")]
    if one:
        t = []
        for r in one:
            x = r.get("result") or {}
            t.append([r["case"].replace("scale1-", ""), r["status"], fnum(x.get("clients")),
                      fnum(x.get("connected")), fnum(x.get("workers")), fnum(x.get("deliveries")),
                      fnum(x.get("expected_deliveries")), fnum(x.get("lost")),
                      fnum(x.get("deliveries_per_sec")), fms(lat(x, "latency_us", "p99")),
                      fms(lat(x, "sched_latency_us", "p99")),
                      f"{x['connect_seconds']:.2f}" if x.get("connect_seconds") is not None else "–",
                      fnum(x.get("server_rss_per_connection_bytes")) if r.get("fresh") else "–"])
        rows.append("### One Herald process (embedded broker)\n")
        rows.append(table(["Case", "Status", "Clients", "Connected", "Gen workers", "Deliveries", "Expected",
                           "Lost", "Deliveries/s", "p99 ms", "Sched p99 ms", "Connect s", "RSS/conn B"], t))
        rows.append("")
        allok = all(r["status"] == "ok" and (r.get("result") or {}).get("lost") == 0 for r in one)
        n = max((r.get("result") or {}).get("connected", 0) for r in one)
        targets.append((f"{one[0]['clients']:,} clients on one Herald, zero loss", "herald",
                        f"{n:,} connected, " + ", ".join(f"{r['case'][7:]}: {r['status']}" for r in one),
                        "–", "–", "**met**" if allok else "**MISSED**"))
    multi = [r for r in recs if r.get("kind") == "run" and r["case"] == "scale-multi"]
    if multi:
        t, tot_conn, tot_exp, tot_del, tot_lost, tot_foreign = [], 0, 0, 0, 0, 0
        for r in sorted(multi, key=lambda r: r.get("instance", 0)):
            x = r.get("result") or {}
            tot_conn += x.get("connected", 0)
            tot_exp += x.get("expected_deliveries", 0)
            tot_del += x.get("deliveries", 0)
            tot_lost += x.get("lost", 0)
            tot_foreign += x.get("foreign_frames", 0)
            t.append([r.get("instance"), r["status"], fnum(x.get("clients")), fnum(x.get("connected")),
                      fnum(x.get("deliveries")), fnum(x.get("expected_deliveries")), fnum(x.get("lost")),
                      fnum(x.get("foreign_frames")), fms(lat(x, "latency_us", "p99")),
                      fms(lat(x, "sched_latency_us", "p99")),
                      f"{x['connect_seconds']:.1f}" if x.get("connect_seconds") is not None else "–",
                      fnum(x.get("server_rss_per_connection_bytes"))])
        k = multi[0].get("instances", len(multi))
        rows.append(f"### {k} Herald processes on one Redis, {tot_conn:,} clients in all\n")
        rows.append("Each Herald has its own generator instance (its own source-IP range, 2 worker "
                    "processes) that publishes its own events (own event type) over HTTP to its own Herald, "
                    "which PUBLISHes into the shared Redis; every Herald relays every event to its "
                    "clients. *Deliveries/expected/lost* count an instance's own events at its own "
                    "clients (checked for loss, duplicates, order); *foreign* counts the other instances' "
                    "events that its clients also received (not checked per event; it depends on how "
                    "the publish phases overlapped: an instance exits, closing its clients, as soon as its own events are "
                    "all in, so the foreign count is short by whole multiples of its client count when "
                    "it finished before another instance's last event).\n")
        rows.append(table(["Instance", "Status", "Clients", "Connected", "Deliveries", "Expected", "Lost",
                           "Foreign frames", "p99 ms", "Sched p99 ms", "Connect s", "RSS/conn B"], t))
        rows.append("")
        allok = all(r["status"] == "ok" for r in multi) and tot_lost == 0
        targets.append((f"{tot_conn:,} clients across {k} Herald processes on one Redis, zero loss",
                        "herald-redis", f"{tot_del:,}/{tot_exp:,} own-event deliveries, lost {tot_lost:,}",
                        "–", "–", "**met**" if allok and tot_conn >= 100000 else
                        ("**met for 99,500** (100,000 does not fit: see Scale)" if allok else "**MISSED**")))
    return rows, targets


def callgrind_section(cfiles):
    recs = [r for c in cfiles for r in load(c) if r.get("kind") == "callgrind"]
    if not recs:
        return [], []
    lines = ["`bench/callgrind.sh` runs Herald under `valgrind --tool=callgrind`, connects the clients, "
             "dumps the counters (`callgrind_control --dump`, which also zeroes them), publishes, and dumps again "
             "once every client has closed. Then N more clients connect and close with no events; "
             "their close cost is subtracted from the publish phase. Ir = instructions executed by "
             "the Herald process in user space (valgrind does not see the kernel, where most of the "
             "time goes: see the notes).\n"]
    rows = []
    for r in recs:
        rows.append([r.get("date", "–"), r.get("mode"), fnum(r.get("clients")), fnum(r.get("events")),
                     r.get("in_flight", "–"), fnum(r.get("deliveries")),
                     fnum(r.get("ir_connect_per_client")), fnum(r.get("ir_close_per_client")),
                     fnum(r.get("ir_publish")), f"**{fnum(r.get('ir_per_delivery'))}**",
                     r.get("commit", "")[:10]])
    lines.append(table(["Date", "Mode", "Clients", "Events", "In flight", "Deliveries", "Ir/connect",
                        "Ir/close", "Ir publish (net of closes)", "Ir/delivery", "Commit"], rows))
    lines.append("\nIr/delivery depends on batching: when several events reach Herald in one reactor "
                 "turn, each client gets them in one `writev`, and the per-write cost is shared. Here "
                 "one HTTP publish is in flight and events come one at a time, so most deliveries are "
                 "a write of their own: this is close to the worst case per delivery.\n")
    # The newest record of each mode speaks for the current code; the table above keeps history.
    newest = {}
    for r in recs:
        newest[r.get("mode")] = r
    for r in newest.values():
        if r.get("top"):
            lines.append(f"Top functions by self Ir, publish phase ({r.get('mode')}, {fnum(r.get('clients'))} × "
                         f"{fnum(r.get('events'))}; inlined code is charged to its caller, e.g. "
                         f"`Reactor::flush` to `Reactor::run`):\n")
            lines.append("```\n" + r["top"].rstrip() + "\n```\n")
    tg = [("Instructions per delivery (callgrind), recorded", "herald",
           ", ".join(f"{r.get('mode')}: {fnum(r.get('ir_per_delivery'))} Ir/delivery (commit {r.get('commit', '')[:7]})"
                     for r in newest.values()),
           "–", "–", "**met** (recorded)")]
    return lines, tg


if __name__ == "__main__":
    main()

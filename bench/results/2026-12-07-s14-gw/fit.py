#!/usr/bin/env python3
"""Callgrind figures of the gateway, branch s14-gw against its base (main at
39074f84), from callgrind.jsonl (bench/proxy_callgrind.sh -p gateway [-s]).

Per mode: the paired ratio branch/base of Ir per request per repetition,
and, because a run's Ir holds a fixed part (the 50 connections' TLS
handshakes in rr, handshakes in flight at the dump in conn, start-up
timers) that a run with fewer requests spreads over fewer requests, the
least-squares fit Ir = fixed + marginal x requests per build: the marginal
Ir per request is the figure to compare."""
import json
import statistics
import sys
from collections import defaultdict

path = sys.argv[1] if len(sys.argv) > 1 else "callgrind.jsonl"
rows = [json.loads(line) for line in open(path)]
runs = defaultdict(list)
paired = defaultdict(dict)
for r in rows:
    res = r["result"]
    if not res or not res["requests"]:
        continue
    runs[(r["mode"], r["build"])].append((res["requests"], res["ir"]))
    paired[(r["mode"], r["rep"])][r["build"]] = res["ir"] / res["requests"]


def fit(points):
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx
    return slope, my - slope * mx


print("| mode | runs base/branch | Ir/request, median of paired ratios branch/base | marginal Ir/request base | branch | ratio | fixed Ir base | branch |")
print("|---|---|---|---|---|---|---|---|")
for mode in ["http-rr", "tls-rr", "tls-conn"]:
    ratios = [p["branch"] / p["base"] for (m, _), p in sorted(paired.items()) if m == mode and len(p) == 2]
    base, branch = runs[(mode, "base")], runs[(mode, "branch")]
    (sb, ib), (sn, in_) = fit(base), fit(branch)
    print(f"| {mode} | {len(base)}/{len(branch)} | {statistics.median(ratios):.3f} ({', '.join(f'{r:.3f}' for r in ratios)}) "
          f"| {sb:,.0f} | {sn:,.0f} | {sn / sb:.3f} | {ib / 1e6:,.0f}M | {in_ / 1e6:,.0f}M |")

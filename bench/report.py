#!/usr/bin/env python3
"""Turns one bench/run.sh result directory into figures against the targets.

usage: report.py RESULT_DIR

Reads tcp-loopback.jsonl (shared harness), dns*.jsonl (bench/dns.sh),
scale.jsonl (bench/scale.sh, optional) and binary.json; writes
RESULT_DIR/results.json (medians and paired ratios), RESULT_DIR/report.md (a
table of each target with its measured ratio) and RESULT_DIR/chart.png (when
matplotlib is available). Ratios are paired per repetition (both sides
measured in the same round) and then the median is taken.
"""
import json
import os
import statistics as st
import sys
from collections import defaultdict


def lines(path):
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(l) for l in f if l.strip()]


def paired_ratios(rows, key, a, b, test=None, field=lambda r: r["value"]):
    """field(a)/field(b) for each repetition (and test) that measured both, in rep order."""
    by = defaultdict(dict)
    for r in rows:
        if test and r.get("test") != test:
            continue
        by[r["rep"]][r[key]] = r
    return [
        field(reps[a]) / field(reps[b])
        for _, reps in sorted(by.items())
        if a in reps and b in reps and field(reps[a]) is not None and field(reps[b])
    ]


def paired_ratio(rows, key, a, b, test=None):
    """Median over repetitions of value(a)/value(b) for the same rep (and test)."""
    ratios = paired_ratios(rows, key, a, b, test)
    return st.median(ratios) if ratios else None


def median_of(rows, key, who, test=None, field=lambda r: r["value"]):
    xs = [field(r) for r in rows if r[key] == who and (test is None or r.get("test") == test)]
    xs = [x for x in xs if x is not None]
    return st.median(xs) if xs else None


def main(d):
    tcp = lines(f"{d}/tcp-loopback.jsonl")
    dns = lines(f"{d}/dns.jsonl")
    dns_big = lines(f"{d}/dns-100k.jsonl")
    scale = lines(f"{d}/scale.jsonl")
    binary = json.load(open(f"{d}/binary.json")) if os.path.exists(f"{d}/binary.json") else {}

    p99 = lambda r: r["client"].get("p99_us")
    results = {"tcp": {}, "dns": {}, "scale": scale, "binary": binary}
    for test in ["tput1", "rr", "conn"]:
        results["tcp"][test] = {
            p: median_of(tcp, "proxy", p, test) for p in sorted({r["proxy"] for r in tcp if r["test"] == test})
        }
    results["tcp"]["rr_p99_us"] = {p: median_of(tcp, "proxy", p, "rr", p99) for p in {r["proxy"] for r in tcp}}
    for s in sorted({r["server"] for r in dns}):
        results["dns"][s] = median_of(dns, "server", s)

    targets = []

    def target(name, value, goal, fmt="{:.2f}x"):
        ok = None if value is None else value >= goal
        shown = "-" if value is None else fmt.format(value)
        targets.append((name, shown, fmt.format(goal), {True: "met", False: "MISSED", None: "not measured"}[ok]))

    target("bulk 1 stream vs direct", paired_ratio(tcp, "proxy", "edgemesh", "direct", "tput1"), 0.8)
    target("bulk 1 stream vs haproxy", paired_ratio(tcp, "proxy", "edgemesh", "haproxy", "tput1"), 1.3)
    target("keep-alive req/s vs haproxy", paired_ratio(tcp, "proxy", "edgemesh", "haproxy", "rr"), 1.1)
    rr_p99 = results["tcp"]["rr_p99_us"]
    if rr_p99.get("edgemesh") and rr_p99.get("haproxy"):
        target("keep-alive p99: haproxy / edgemesh", rr_p99["haproxy"] / rr_p99["edgemesh"], 1.0)
    target("new connections/s vs haproxy", paired_ratio(tcp, "proxy", "edgemesh", "haproxy", "conn"), 1.1)
    target("DNS q/s vs dnsmasq", paired_ratio(dns, "server", "edgemesh", "dnsmasq"), 1.2)
    target("DNS q/s vs unbound 2 threads", paired_ratio(dns, "server", "edgemesh", "unbound-2t"), 1.0)
    if dns_big and dns:
        big = median_of(dns_big, "server", "edgemesh")
        small = results["dns"].get("edgemesh")
        if big and small:
            target("DNS q/s at 100k services vs 1k", big / small, 0.9)
    if binary.get("stripped_bytes"):
        mib = binary["stripped_bytes"] / 2**20
        targets.append(("release binary (stripped)", f"{mib:.1f} MiB", "<= 20 MiB", "met" if mib <= 20 else "MISSED"))
    for row in scale:
        goal = {1000: 12, 10000: 40}.get(row.get("services"))
        if goal and row.get("rss_mib") is not None:
            targets.append((f"idle RSS, {row['services']:,} services", f"{row['rss_mib']:.1f} MiB", f"<= {goal} MiB",
                            "met" if row["rss_mib"] <= goal else "MISSED"))

    results["targets"] = [dict(zip(["target", "measured", "goal", "status"], t)) for t in targets]
    json.dump(results, open(f"{d}/results.json", "w"), indent=2)
    with open(f"{d}/report.md", "w") as out:
        out.write("| target | measured | goal | status |\n|---|---|---|---|\n")
        for t in targets:
            out.write("| " + " | ".join(t) + " |\n")
    print(open(f"{d}/report.md").read())

    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib missing: no chart (pip install matplotlib)", file=sys.stderr)
        return
    panels = [(f"TCP {t}", results["tcp"].get(t, {})) for t in ["tput1", "rr", "conn"]] + [("DNS q/s", results["dns"])]
    panels = [(title, data) for title, data in panels if data]
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.5))
    for ax, (title, data) in zip(axes if len(panels) > 1 else [axes], panels):
        names = list(data)
        ax.bar(names, [data[n] or 0 for n in names], color=["#d62728" if n == "edgemesh" else "#7f7f7f" for n in names])
        ax.set_title(title)
        ax.tick_params(axis="x", rotation=45)
    fig.suptitle("edgemesh vs peers (medians, same run, 2-core machine)")
    fig.tight_layout()
    fig.savefig(f"{d}/chart.png", dpi=90)


if __name__ == "__main__":
    main(sys.argv[1])

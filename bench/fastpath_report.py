#!/usr/bin/env python3
"""Tables and a chart from one bench/fastpath.sh results directory.

usage: fastpath_report.py DIR

Reads DIR/results.jsonl (and DIR/env.txt); writes DIR/table.md and, when
matplotlib is available, DIR/chart.png. Every figure of a mode is its ratio to
`direct` measured in the same repetition (paired), then the median over the
repetitions, with the range; the goal of issue #15 is that the kernel fast
path reaches at least 0.95x direct in each test.
"""
import os
import statistics as st
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from report import lines, median_of, paired_ratios  # noqa: E402

GOAL = 0.95
TESTS = {
    "tput1": "bulk, 1 stream (iperf3)",
    "tput8": "bulk, 8 streams (iperf3)",
    "rr": "keep-alive req/s (wrk, 50 conns)",
    "conn": "new connections/s (wrk, Connection: close)",
}
MODES = ["ebpf", "userspace", "haproxy"]


def p99(r):
    return r["client"].get("p99_us")


def span(xs):
    return f"**{st.median(xs):.2f}x** ({min(xs):.2f}-{max(xs):.2f})" if xs else "-"


def main(d):
    rows = lines(f"{d}/results.jsonl")
    tests = [t for t in TESTS if any(r["test"] == t for r in rows)]
    modes = [m for m in MODES if any(r["mode"] == m for r in rows)]
    out = ["# Kernel fast path against a direct connection (issue #15)", ""]
    out.append("| test | mode | median | vs direct, paired (median, min-max) | p99 ms | p99 vs direct | server CPU s/run | goal |")
    out.append("|---|---|---:|---:|---:|---:|---:|---|")
    ratios = {}
    for t in tests:
        unit = next(r["unit"] for r in rows if r["test"] == t)
        for m in ["direct"] + modes:
            v = median_of(rows, "mode", m, t)
            if v is None:
                continue
            lat = median_of(rows, "mode", m, t, p99) if t in ("rr", "conn") else None
            cpu = median_of(rows, "mode", m, t, lambda r: r.get("server_cpu_s"))
            if m == "direct":
                ratio, lat_ratio, goal = "1 (baseline)", "1", ""
            else:
                xs = ratios[(t, m)] = paired_ratios(rows, "mode", m, "direct", t)
                ratio = span(xs)
                lat_ratio = span(paired_ratios(rows, "mode", m, "direct", t, p99)) if lat else "-"
                goal = ""
                if m == "ebpf" and xs:
                    goal = f">= {GOAL}x: " + ("met" if st.median(xs) >= GOAL else "MISSED")
            shown = f"{v:,.2f} {unit}" if unit == "Gbit/s" else f"{v:,.0f} {unit}"
            out.append(
                f"| {TESTS[t]} | {m} | {shown} | {ratio} | {'-' if lat is None else f'{lat / 1000:.2f}'} | "
                f"{lat_ratio} | {'-' if cpu is None else f'{cpu:.2f}'} | {goal} |"
            )
    reps = sorted({r["rep"] for r in rows})
    busy = sum(1 for r in rows if not r["quiet"])
    out += [
        "",
        f"{len(reps)} repetitions; in each, every test ran every mode once, the order rotating by one "
        "position per repetition; ratios are paired within a repetition. Server CPU: the agent's or "
        "haproxy's cgroup during the measurement (the kernel's work on the client's and backend's "
        "sockets is not in it).",
        f"Quiet check: {len(rows) - busy} of {len(rows)} measurements quiet"
        + (
            f"; **{busy} did not pass** the shared harness's check (no cargo/rustc, < 15 % CPU busy) "
            "or saw a compile start during the run."
            if busy
            else "."
        ),
    ]
    if os.path.exists(f"{d}/env.txt"):
        out += ["", "```", open(f"{d}/env.txt").read().strip(), "```"]
    with open(f"{d}/table.md", "w") as f:
        f.write("\n".join(out) + "\n")
    print("\n".join(out))
    chart(d, tests, modes, ratios)


def chart(d, tests, modes, ratios):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib missing: no chart (pip install matplotlib)", file=sys.stderr)
        return
    colours = {"ebpf": "#d62728", "userspace": "#1f77b4", "haproxy": "#7f7f7f"}
    width = 0.8 / max(len(modes), 1)
    fig, ax = plt.subplots(figsize=(2.6 * len(tests) + 3, 3.8))
    for i, m in enumerate(modes):
        xs = [ratios.get((t, m)) or [0] for t in tests]
        meds = [st.median(x) for x in xs]
        err = [[md - min(x) for md, x in zip(meds, xs)], [max(x) - md for md, x in zip(meds, xs)]]
        pos = [j + (i - (len(modes) - 1) / 2) * width for j in range(len(tests))]
        ax.bar(pos, meds, width, yerr=err, capsize=3, label=m, color=colours.get(m))
    top = max([max(x) for x in ratios.values() if x] + [1.0])
    ax.set_ylim(0, top * 1.1)
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.axhline(GOAL, color="#d62728", linewidth=0.8, linestyle="--", label=f"goal {GOAL}x (ebpf)")
    ax.set_xticks(range(len(tests)))
    ax.set_xticklabels([TESTS[t].split(" (")[0] for t in tests])
    ax.set_ylabel("ratio to direct (paired median, min-max)")
    ax.set_title("Local service traffic: kernel fast path, userspace proxy, haproxy vs direct")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    fig.savefig(f"{d}/chart.png", dpi=90)


if __name__ == "__main__":
    main(sys.argv[1])

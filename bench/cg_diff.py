#!/usr/bin/env python3
"""Per-function instructions per request of two callgrind runs and their
difference (A - B), biggest first: where a build or a mode (the gateway vs
the agent's HTTP path) spends its extra instructions.

usage: bench/cg_diff.py A.cg.out REQUESTS_A B.cg.out REQUESTS_B

The files are the dumps bench/proxy_callgrind.sh leaves with CG_KEEP=1
(cg.out.1 in its work directory); the request counts are its JSON lines'.
Self cost (exclusive), as callgrind_annotate --inclusive=no reports it.
"""
import re
import subprocess
import sys


def load(path, requests):
    out = subprocess.run(["callgrind_annotate", "--inclusive=no", "--threshold=100", path],
                         capture_output=True, text=True, check=True).stdout
    cost = {}
    for line in out.splitlines():
        m = re.match(r"\s*([\d,]+) \([\s\d.]+%\)\s+(.*)", line)
        if not m or "PROGRAM TOTALS" in line:
            continue
        name = re.sub(r"\[.*\]$", "", m.group(2)).strip()
        if name.startswith((".", "/", "?")):
            name = re.sub(r"^.*?:(?=[^/]*$)", "", name)
        cost[name] = cost.get(name, 0) + int(m.group(1).replace(",", "")) / requests
    return cost


def main():
    if len(sys.argv) != 5:
        sys.exit(__doc__)
    a, b = load(sys.argv[1], int(sys.argv[2])), load(sys.argv[3], int(sys.argv[4]))
    rows = sorted(set(a) | set(b), key=lambda k: -(a.get(k, 0) - b.get(k, 0)))
    print("Ir/request: A, B, A - B, function")
    for k in rows[:45] + ["..."] + rows[-15:]:
        if k == "...":
            print(k)
            continue
        print("%8.1f %8.1f %+8.1f %s" % (a.get(k, 0), b.get(k, 0), a.get(k, 0) - b.get(k, 0), k[:150]))


if __name__ == "__main__":
    main()

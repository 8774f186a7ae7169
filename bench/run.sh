#!/usr/bin/env bash
# The end-to-end performance comparison: the agent against the peers and the
# kernel, all in one run so that ratios compare like with like.
#
# usage: bench/run.sh [-r REPS] [-d SECS] [-q]
#   -r  repetitions (default 3)    -d  seconds per measurement (default 10)
#   -q  quick: skip DNS at 100k services and the scale runs
# Results: $BENCH_RESULTS (default ./bench-results)/<stamp>/ with the raw JSON
# lines, results.json, report.md (each target with its ratio) and chart.png.
# Needs root (the harness puts each server in its own cgroup) and the peers
# from ../shared/bench/install_peers.sh (installed here when missing).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
SHARED=${SHARED_BENCH:-$ROOT/../shared/bench}
REPS=3 DUR=10 QUICK=0
while getopts r:d:q o; do case $o in
  r) REPS=$OPTARG ;; d) DUR=$OPTARG ;; q) QUICK=1 ;; *) sed -n '2,11p' "$0" >&2; exit 2 ;;
esac; done
R=${BENCH_RESULTS:-$PWD/bench-results}/$(date +%Y%m%dT%H%M%S); mkdir -p "$R"
echo "results -> $R"

(cd "$ROOT" && cargo build --release -p edgemesh)
BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release/edgemesh
export EDGEMESH_BIN=$BIN
jq -n --argjson b "$(stat -c %s "$BIN")" '{stripped_bytes: $b}' > "$R/binary.json"
"$SHARED/install_peers.sh" "$R/versions.txt" >/dev/null
python3 -c 'import matplotlib' 2>/dev/null || pip install -q matplotlib || echo "no matplotlib: no chart" >&2
{ echo "kernel $(uname -r), $(nproc) cpus, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2)"; uptime; } > "$R/machine.txt"

"$SHARED/tcp_bench.sh" -r "$REPS" -d "$DUR" -o "$R/tcp-loopback.jsonl" direct haproxy nginx-stream \
  "edgemesh=$ROOT/bench/agent_proxy.sh {listen_ip} {listen_port} {upstream_ip} {upstream_port} {workdir}"
"$ROOT/bench/dns.sh" -r "$REPS" -d "$DUR" -o "$R/dns.jsonl"
if (( ! QUICK )); then
  "$ROOT/bench/dns.sh" -r 1 -d "$DUR" -n 100000 -o "$R/dns-100k.jsonl"
  if [[ -x $ROOT/bench/scale.sh ]]; then "$ROOT/bench/scale.sh" | grep '^{' > "$R/scale.jsonl" || true; fi
fi
python3 "$ROOT/bench/report.py" "$R"

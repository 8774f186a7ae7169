#!/usr/bin/env bash
# The tunnel's fault scenarios (issue #13), one run each, as the end-to-end
# tests make them: namespaces as nodes, nftables NAT routers (stealth and
# reset-answering), relays; black holes by nftables drop rules, link
# down/up, kill -9; curl, a UDP echo and iperf3 through each fault. Every
# test prints `FAULT scenario=... transport=... failed=N/M recovery_s=X`
# lines; this script keeps the raw output of each test file and writes a
# markdown table of the FAULT lines.
#
# usage: bench/faults.sh [OUT_DIR]    (as root; default bench/results/faults-<stamp>)
# TRANSPORTS="tcp quic" (default) runs the agent built without and with the
# `quic` feature (QUIC listen addresses only in the second run).
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-bench/results/faults-$(date -u +%Y%m%dT%H%M%SZ)}
mkdir -p "$out"
files=(tunnel_faults_e2e tunnel_churn_e2e tunnel_punch_e2e)
for transport in ${TRANSPORTS:-tcp quic}; do
  features=()
  [ "$transport" = quic ] && features=(--features quic)
  for f in "${files[@]}"; do
    [ -f "crates/edgemesh/tests/$f.rs" ] || continue
    # The churn scenarios (UPnP, restarts, uplink) run on TCP only.
    [ "$transport" = quic ] && [ "$f" = tunnel_churn_e2e ] && continue
    echo "== $f ($transport)" >&2
    cargo test -p edgemesh "${features[@]}" --locked --test "$f" -- --nocapture --test-threads 1 \
      >"$out/$f-$transport.txt" 2>&1 || echo "   FAILED: see $out/$f-$transport.txt" >&2
  done
done
{
  echo "| scenario | transport | failed requests | recovery (s) | file |"
  echo "|---|---|---:|---:|---|"
  for f in "$out"/*.txt; do
    grep -o 'FAULT .*' "$f" | while read -r line; do
      field() { sed -n "s/.* $1=\([^ ]*\).*/\1/p" <<<"$line"; }
      echo "| $(field scenario) | $(field transport) | $(field failed) | $(field recovery_s) | $(basename "$f") |"
    done
  done
} >"$out/table.md"
cat "$out/table.md"

#!/usr/bin/env bash
# Stands in for the edgemesh binary in a benchmark (e.g. OURS= of
# shared/bench/edgemesh_go_compare.sh) and runs each `edgemesh agent` under
# callgrind, for bench/link_order.sh's ORDER_PROFILES; other subcommands run
# as they are. Dump a running agent's profile with `callgrind_control -d`
# (benchmarks may kill agents before callgrind writes one at exit).
#
# Environment: EDGEMESH_BIN (an unstripped release binary, as link_order.sh
# needs), CALLGRIND_DIR (where profiles go: cg-PID.out[.N]; default /tmp).
set -euo pipefail
BIN=${EDGEMESH_BIN:?set EDGEMESH_BIN to an unstripped release binary}
if [[ ${1:-} == agent ]]; then
  exec valgrind --tool=callgrind --demangle=no --callgrind-out-file="${CALLGRIND_DIR:-/tmp}/cg-%p.out" "$BIN" "$@"
fi
exec "$BIN" "$@"

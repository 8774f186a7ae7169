# Sourced by the bench scripts: run_env RESULTS.jsonl LINE... prints the run's
# environment for its env.txt: date, host, binary ($BIN), git commit (of $ROOT),
# the given lines, the load at the end, and how many measurements of
# RESULTS.jsonl (field `quiet`) did not pass the quiet check (QUIET_MAX_WAIT).
run_env() {
  local res=$1; shift
  echo "date: $(date -u +%FT%TZ)"; echo "host: $(nproc) CPUs, $(uname -r)"
  echo "agent: $BIN ($("$BIN" --version 2>/dev/null || echo '?'))"
  echo "git: $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?')"
  printf '%s\n' "$@"
  [[ -z ${BENCH_SMOKE:-} ]] || echo "BENCH_SMOKE: no quiet checks (a smoke test: the numbers mean nothing)"
  echo "load at end: $(cut -d' ' -f1-3 /proc/loadavg)"
  echo "runs that did not pass the quiet check (waited ${QUIET_MAX_WAIT}s) or saw a compile: \
$(jq -s '[.[] | select(.quiet == false)] | length' "$res") of $(jq -s length "$res")"
}

#!/usr/bin/env bash
# Memory and loading time of the agent at scale.
#
# usage: bench/scale.sh [-n "1000 10000 100000"] [-e ENDPOINTS] [-k PER_FILE]
#
# For each N: writes N services (one EndpointSlice of ENDPOINTS endpoints
# each, PER_FILE services per file) with bench/gen_manifests.py, starts the
# release agent on them, and measures
#   ready_s          start -> first 200 from /readyz (wall clock)
#   cpu_ready_s      agent CPU (user + system) spent until ready
#   rss_mib          VmRSS once idle (IDLE_SECS after ready), and its
#                    anon_mib / file_mib parts (RssAnon: heap, stacks;
#                    RssFile: the binary's pages)
#   hwm_mib          VmHWM (peak RSS) so far
#   update_s         a new service file written -> its name resolves in DNS
#   rss_update_mib   VmRSS once idle after that update
#   listeners, bind_failures   from the agent's own counters (per-service
#                    listeners; at 100k they exceed the open-files limit)
#   log_lines        lines the agent logged at warn (a flood shows up here)
# and prints one JSON line per N, then a table. Processes and temp dirs are
# cleaned up on any exit.
#
# Environment: EDGEMESH_BIN (default: target/release/edgemesh, built when
# missing), SCALE_DNS_PORT (25353), SCALE_ADMIN_PORT (25020), IDLE_SECS (3),
# SCALE_VIP_CIDR (127.64.0.0/10; give concurrent runs disjoint ranges),
# READY_TIMEOUT (120), EDGEMESH_ENV (extra environment for the agent, e.g.
# "MALLOC_ARENA_MAX=1").
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
SIZES="1000 10000 100000" ENDPOINTS=2 PER_FILE=1000
while getopts n:e:k: o; do case $o in
  n) SIZES=$OPTARG ;; e) ENDPOINTS=$OPTARG ;; k) PER_FILE=$OPTARG ;;
  *) sed -n '2,25p' "$0" >&2; exit 2 ;;
esac; done
DNS_PORT=${SCALE_DNS_PORT:-25353} ADMIN_PORT=${SCALE_ADMIN_PORT:-25020}
IDLE_SECS=${IDLE_SECS:-3} READY_TIMEOUT=${READY_TIMEOUT:-120}
BIN=${EDGEMESH_BIN:-}
if [[ -z $BIN ]]; then
  BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release/edgemesh
  [[ -x $BIN ]] || (cd "$ROOT" && cargo build --release -p edgemesh >&2)
fi
for t in curl dig python3; do command -v $t >/dev/null || { echo "scale.sh: needs $t" >&2; exit 1; }; done

WORK=$(mktemp -d -t edgemesh-scale.XXXXXX)
AGENT_PID=
cleanup() {
  if [[ -n $AGENT_PID ]] && kill -0 "$AGENT_PID" 2>/dev/null; then
    kill "$AGENT_PID" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$AGENT_PID" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$AGENT_PID" 2>/dev/null || true
    wait "$AGENT_PID" 2>/dev/null || true
  fi
  AGENT_PID=
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.3f", b - a }'; }
elapsed_over() { awk -v a="$1" -v b="$(now)" -v l="$2" 'BEGIN { exit !(b - a > l) }'; }
stop_agent() { kill "$AGENT_PID" 2>/dev/null || true; wait "$AGENT_PID" 2>/dev/null || true; AGENT_PID=; }
status_kib() { awk -v k="$2:" '$1 == k { print $2 }' "/proc/$1/status"; }
cpu_secs() { # utime + stime of a process, in seconds
  awk -v hz="$(getconf CLK_TCK)" '{ sub(/^.*\) /, ""); print ($12 + $13) / hz }' "/proc/$1/stat"
}
admin() { curl -sf --max-time 5 "http://127.0.0.1:$ADMIN_PORT$1"; }
resolves() { [[ -n $(dig +time=1 +tries=1 +short -p "$DNS_PORT" @127.0.0.1 "$1" 2>/dev/null) ]]; }

RESULTS=()
for N in $SIZES; do
  M=$WORK/m$N
  python3 "$ROOT/bench/gen_manifests.py" "$M" "$N" --endpoints "$ENDPOINTS" --per-file "$PER_FILE"
  LOG=$WORK/agent-$N.log
  T0=$(now)
  env ${EDGEMESH_ENV:-} "$BIN" agent --manifest-dir "$M" --vip-cidr "${SCALE_VIP_CIDR:-127.64.0.0/10}" \
    --dns-listen "127.0.0.1:$DNS_PORT" --admin-listen "127.0.0.1:$ADMIN_PORT" \
    --dns-upstream 127.0.0.1:9 --state-dir "$WORK/state-$N" --log-level warn 2>"$LOG" &
  AGENT_PID=$!
  until admin /readyz >/dev/null 2>&1; do
    kill -0 "$AGENT_PID" 2>/dev/null || { echo "scale.sh: agent exited at N=$N:" >&2; tail -5 "$LOG" >&2; exit 1; }
    if elapsed_over "$T0" "$READY_TIMEOUT"; then echo "scale.sh: not ready after ${READY_TIMEOUT}s at N=$N" >&2; exit 1; fi
    sleep 0.02
  done
  READY=$(since "$T0")
  CPU_READY=$(cpu_secs "$AGENT_PID")
  sleep "$IDLE_SECS"
  RSS=$(status_kib "$AGENT_PID" VmRSS) ANON=$(status_kib "$AGENT_PID" RssAnon) FILE=$(status_kib "$AGENT_PID" RssFile)
  last=$(printf 'svc-%06d' $((N - 1)))
  resolves "$last.bench.svc.cluster.local" || { echo "scale.sh: $last does not resolve at N=$N" >&2; exit 1; }

  # One update: a new service in a new file, timed until DNS answers for it.
  T1=$(now)
  printf 'apiVersion: v1\nkind: Service\nmetadata:\n  name: scale-update\n  namespace: bench\nspec:\n  ports:\n  - name: http\n    port: 80\n' >"$M/zz-update.yaml"
  until resolves scale-update.bench.svc.cluster.local; do
    if elapsed_over "$T1" 30; then echo "scale.sh: update not seen after 30s at N=$N" >&2; exit 1; fi
    sleep 0.02
  done
  UPDATE=$(since "$T1")
  sleep "$IDLE_SECS"
  RSS_UPD=$(status_kib "$AGENT_PID" VmRSS)
  HWM=$(status_kib "$AGENT_PID" VmHWM)
  THREADS=$(status_kib "$AGENT_PID" Threads)
  COUNTS=$(admin /services | python3 -c 'import json,sys; d=json.load(sys.stdin); print(d["count"])')
  LINES=$(wc -l <"$LOG")
  stop_agent
  LINE=$(python3 - "$N" "$READY" "$CPU_READY" "$RSS" "$ANON" "$FILE" "$HWM" "$UPDATE" "$RSS_UPD" "$THREADS" "$COUNTS" "$LINES" "$(head -c 300 "$LOG" | tr '\n' ' ')" <<'EOF'
import json, sys
n, ready, cpu, rss, anon, file, hwm, upd, rss_upd, threads, count, lines, first = sys.argv[1:]
print(json.dumps({
    "services": int(n), "ready_s": round(float(ready), 3), "cpu_ready_s": round(float(cpu), 2),
    "rss_mib": round(int(rss) / 1024, 1), "anon_mib": round(int(anon) / 1024, 1), "file_mib": round(int(file) / 1024, 1),
    "hwm_mib": round(int(hwm) / 1024, 1),
    "update_s": round(float(upd), 3), "rss_update_mib": round(int(rss_upd) / 1024, 1),
    "threads": int(threads), "served": int(count), "log_lines": int(lines), "first_log": first[:300],
}))
EOF
)
  echo "$LINE"
  RESULTS+=("$LINE")
  rm -rf "$M"
done

printf '%s\n' "${RESULTS[@]}" >"$WORK/results.jsonl"
python3 - "$WORK/results.jsonl" <<'EOF'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
head = ("services", "ready s", "cpu s", "idle RSS", "anon", "file", "peak RSS", "update s", "RSS upd", "log lines")
print("%9s %8s %6s %9s %9s %9s %9s %9s %9s %9s" % head)
for r in rows:
    print("%9d %8.2f %6.2f %5.1f MiB %5.1f MiB %5.1f MiB %5.1f MiB %9.2f %5.1f MiB %9d" % (r["services"], r["ready_s"],
          r["cpu_ready_s"], r["rss_mib"], r["anon_mib"], r["file_mib"], r["hwm_mib"], r["update_s"], r["rss_update_mib"],
          r["log_lines"]))
EOF

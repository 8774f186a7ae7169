#!/usr/bin/env bash
# Does a Prometheus scrape disturb the data path? Keep-alive request latency
# through the agent's proxy, without and with a scrape loop on /metrics.
#
# usage: bench/scrape.sh [-r REPS] [-d SECS] [-c CONNS] [-o DIR]
#   -r  repetitions (default 5)      -d  seconds per wrk run (default 15)
#   -c  wrk connections (default 50) -o  results directory
#       (default bench/results/<date>-s7/scrape)
#
# In a network namespace of its own (em-scrape-<pid>, lo only): nginx (one
# worker, a 100-byte file, keep-alive) on 127.0.0.1:8081, the release agent
# (bench/agent_proxy.sh: one service, VIP 127.99.0.10:8080 -> nginx; admin
# endpoint 127.0.0.1:15020) in cgroups of its own (../shared/bench/lib.sh),
# and `wrk -t2 -cCONNS -dSECS --latency` through the VIP. Each repetition
# runs three modes, alternating their order between repetitions (ABC, CBA):
#   none  no scrape;
#   1s    `curl /metrics` every 1 s (a Prometheus scrape interval, tightened);
#   0.1s  every 0.1 s (to see the trend).
# Reported: per mode the median p50/p99 latency and requests/s, and the
# median over repetitions of the paired ratios p99(mode)/p99(none) and
# req/s(mode)/req/s(none); the agent's CPU seconds per run and the scrapes
# made. Raw wrk output, results.jsonl, env.txt and table.md go to DIR.
#
# Before each run the harness's quiet check (no cargo/rustc, < 15 % CPU
# busy) waits up to QUIET_MAX_WAIT seconds (default 120 here); a run that
# started on a busy machine or saw a compile is marked quiet=false and the
# table says how many were. EDGEMESH_BIN overrides the binary (default:
# the release build, built once when missing). Needs root, nginx, wrk, curl.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd); ROOT=$(cd "$HERE/.." && pwd)
QUIET_MAX_WAIT=${QUIET_MAX_WAIT:-120} QUIET_POLL=${QUIET_POLL:-20}
SHARED=${SHARED_BENCH:-$ROOT/../shared/bench}; . "$SHARED/lib.sh"; . "$HERE/run_env.sh"
REPS=5 DUR=15 CONNS=50 OUT=""
while getopts r:d:c:o: o; do case $o in
  r) REPS=$OPTARG ;; d) DUR=$OPTARG ;; c) CONNS=$OPTARG ;; o) OUT=$OPTARG ;;
  *) sed -n '2,28p' "$0" >&2; exit 2 ;;
esac; done
OUT=${OUT:-$ROOT/bench/results/$(date -u +%Y-%m-%d)-s7/scrape}
BIN=${EDGEMESH_BIN:-${CARGO_TARGET_DIR:-$ROOT/target}/release/edgemesh}
[[ -x $BIN ]] || (cd "$ROOT" && cargo build --release -p edgemesh >&2)
for t in nginx wrk curl jq; do command -v $t >/dev/null || [[ -x /usr/sbin/$t ]] || { echo "scrape.sh: needs $t" >&2; exit 1; }; done
[[ $(id -u) == 0 ]] || { echo "scrape.sh: run as root (a network namespace, cgroups)" >&2; exit 1; }

NS=em-scrape-$$ VIP=127.99.0.10 ADMIN=127.0.0.1:15020
W=$(mktemp -d /tmp/edgemesh-scrape.XXXXXX); chmod 755 "$W"
AGENT_CG="" AGENT_PID="" NGINX_PID="" LOOP_PID=""
cleanup() {
  watch_stop
  [[ -z $LOOP_PID ]] || { kill "$LOOP_PID" 2>/dev/null || true; wait "$LOOP_PID" 2>/dev/null || true; }
  svc_stop "$AGENT_CG" "$AGENT_PID"
  [[ -z $NGINX_PID ]] || { kill "$NGINX_PID" 2>/dev/null || true; wait "$NGINX_PID" 2>/dev/null || true; }
  ip netns del "$NS" 2>/dev/null || true
  rm -rf "$W"
}
trap cleanup EXIT; trap 'exit 130' INT TERM
mkdir -p "$OUT"

ip netns add "$NS"; ip -n "$NS" link set lo up
mkdir -p "$W/www" && head -c 100 /dev/zero | tr '\0' x > "$W/www/f" && chmod 644 "$W/www/f"
cat > "$W/nginx.conf" <<EOF
worker_processes 1; daemon off; master_process off; pid $W/nginx.pid; error_log $W/nginx.err;
events { worker_connections 4096; }
http { access_log off; server { listen 127.0.0.1:8081; root $W/www; keepalive_requests 1000000; } }
EOF
# (`ip netns exec` execs nginx: this is nginx's pid.)
ip netns exec "$NS" nginx -c "$W/nginx.conf" & NGINX_PID=$!
wait_listen "$NS" tcp 127.0.0.1 8081
export EDGEMESH_BIN=$BIN EDGEMESH_ADMIN=$ADMIN
svc_start agent "$NS" "$W/agent.log" \
  "$HERE/agent_proxy.sh $VIP 8080 127.0.0.1 8081 $W/agent"
AGENT_CG=$SVC_CG AGENT_PID=$SVC_PID
for _ in $(seq 200); do in_ns "$NS" curl -sf -o /dev/null "http://$ADMIN/readyz" && break; sleep 0.05; done
in_ns "$NS" curl -sf -o /dev/null "http://$VIP:8080/f" || { echo "scrape.sh: the proxy does not answer" >&2; cat "$W/agent.log" >&2; exit 1; }
METRICS_BYTES=$(in_ns "$NS" curl -sf "http://$ADMIN/metrics" | wc -c)
METRICS_SERIES=$(in_ns "$NS" curl -sf "http://$ADMIN/metrics" | grep -vc '^#')

# scrape_loop INTERVAL FILE: curl /metrics every INTERVAL s, one line per scrape to FILE.
scrape_loop() {
  while :; do
    in_ns "$NS" curl -sf -o /dev/null -w '%{http_code} %{time_total}\n' "http://$ADMIN/metrics" >> "$2" || echo "fail" >> "$2"
    sleep "$1"
  done
}
RES=$OUT/results.jsonl; : > "$RES"
QUIET_FAILED=0
run() { # REP MODE
  local rep=$1 mode=$2 quiet=true cpu0 cpu1 raw="$OUT/rep$1-$2.wrk.txt" scrapes="$OUT/rep$1-$2.scrapes.txt"
  wait_quiet || { quiet=false; QUIET_FAILED=$((QUIET_FAILED + 1)); }
  : > "$scrapes"
  [[ $mode == none ]] || { scrape_loop "${mode%s}" "$scrapes" & LOOP_PID=$!; }
  watch_start; cpu0=$(svc_cpu_ns "$AGENT_CG")
  in_ns "$NS" wrk -t2 -c"$CONNS" -d"${DUR}s" --latency -s "$SHARED/wrk_report.lua" "http://$VIP:8080/f" > "$raw"
  cpu1=$(svc_cpu_ns "$AGENT_CG"); watch_stop
  [[ $WATCH_SEEN == 0 ]] || quiet=false
  [[ -z $LOOP_PID ]] || { kill "$LOOP_PID"; wait "$LOOP_PID" 2>/dev/null || true; LOOP_PID=""; }
  grep '^{' "$raw" | jq -c --argjson rep "$rep" --arg mode "$mode" --argjson quiet "$quiet" \
    --argjson cpu "$(( (cpu1 - cpu0) / 1000000 ))" --argjson scrapes "$(grep -c '^200' "$scrapes" || true)" \
    --argjson failed "$(grep -vc '^200' "$scrapes" || true)" \
    '{rep: $rep, mode: $mode, quiet: $quiet, agent_cpu_ms: $cpu, scrapes: $scrapes, scrape_failures: $failed} + .' \
    | tee -a "$RES"
}

log "warm-up ${DUR}s"; in_ns "$NS" wrk -t2 -c"$CONNS" -d"${DUR}s" "http://$VIP:8080/f" > "$OUT/warmup.wrk.txt"
for rep in $(seq "$REPS"); do
  if (( rep % 2 )); then order="none 1s 0.1s"; else order="0.1s 1s none"; fi
  for mode in $order; do log "rep $rep: $mode"; run "$rep" "$mode"; done
done

run_env "$RES" \
  "wrk: -t2 -c$CONNS -d${DUR}s --latency; nginx 1 worker, 100-byte file; reps: $REPS" \
  "/metrics: $METRICS_BYTES bytes, $METRICS_SERIES series" > "$OUT/env.txt"

python3 - "$RES" "$OUT/env.txt" > "$OUT/table.md" <<'PY'
import json, statistics as st, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
env = open(sys.argv[2]).read().strip().splitlines()
by = {(r["rep"], r["mode"]): r for r in rows}
reps = sorted({r["rep"] for r in rows})
modes = ["none", "1s", "0.1s"]
def med(mode, key):
    return st.median(r[key] for r in rows if r["mode"] == mode)
def ratios(mode, key):
    return [by[(p, mode)][key] / by[(p, "none")][key] for p in reps if (p, mode) in by and (p, "none") in by]
print("# Scrape vs data path: keep-alive latency through the proxy\n")
print("| scrape loop | p50 us | p99 us | req/s | p99 ratio (median, min-max) | req/s ratio (median, min-max) | agent CPU ms/run | scrapes/run |")
print("|---|---:|---:|---:|---:|---:|---:|---:|")
for m in modes:
    if m == "none":
        p99r = rr = "1 (reference)"
    else:
        a, b = ratios(m, "p99_us"), ratios(m, "req_s")
        p99r = f"{st.median(a):.3f} ({min(a):.3f}-{max(a):.3f})"
        rr = f"{st.median(b):.3f} ({min(b):.3f}-{max(b):.3f})"
    print(f"| {m} | {med(m,'p50_us'):.0f} | {med(m,'p99_us'):.0f} | {med(m,'req_s'):,.0f} | {p99r} | {rr} | "
          f"{med(m,'agent_cpu_ms'):.0f} | {med(m,'scrapes'):.0f} |")
print("\nMedians over repetitions; ratios are paired within each repetition (mode / none), "
      "the modes' order alternating between repetitions.")
print("Failed scrapes: %d." % sum(r["scrape_failures"] for r in rows))
busy = sum(1 for r in rows if not r["quiet"])
if busy:
    print(f"\n**Busy machine:** {busy} of {len(rows)} runs did not pass the shared harness's quiet check "
          "(no cargo/rustc running, < 15 % CPU busy) or saw a compile start during the run: "
          "the figures carry that noise (see the min-max of the ratios).")
print("\n```\n" + "\n".join(env) + "\n```")
PY
cat "$OUT/table.md"

#!/usr/bin/env bash
# DNS queries per second for service names: the edgemesh agent against dnsmasq
# and unbound (1 and 2 threads) serving the same 1,000 names, with dnsperf on
# 127.0.0.1. Reuses the shared harness helpers (quiet-machine wait, cgroups).
#
# usage: bench/dns.sh [-r REPS] [-d SECS] [-n TOTAL_SERVICES] [-o OUT.jsonl]
#   -n  services the agent holds (default 1000; the queries always ask for the
#       first 1000, so -n 100000 measures lookups at scale)
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd); ROOT=$(cd "$HERE/.." && pwd)
SHARED=${SHARED_BENCH:-$ROOT/../shared/bench}; . "$SHARED/lib.sh"
REPS=3 DUR=20 TOTAL=1000 OUT=""
while getopts r:d:n:o: o; do case $o in
  r) REPS=$OPTARG ;; d) DUR=$OPTARG ;; n) TOTAL=$OPTARG ;; o) OUT=$OPTARG ;; *) sed -n '2,9p' "$0" >&2; exit 2 ;;
esac; done
BIN=${EDGEMESH_BIN:-${CARGO_TARGET_DIR:-$ROOT/target}/release/edgemesh}
ADDR=127.0.0.1 PORT=15353 N=1000 DNSPERF_ARGS=${DNSPERF_ARGS:-"-c 4 -T 1 -q 100"}
OUT=${OUT:-${BENCH_RESULTS:-$PWD/bench-results}/dns-services-$(date +%Y%m%dT%H%M%S).jsonl}
mkdir -p "$(dirname "$OUT")"
WORK=$(mktemp -d /tmp/edgemesh-dns-bench.XXXXXX); chmod 755 "$WORK"
CUR_CG="" CUR_PID=""
cleanup() { watch_stop; svc_stop "$CUR_CG" "$CUR_PID"; rm -rf "$WORK"; }
trap cleanup EXIT; trap 'exit 130' INT TERM

# The same names for every server (peers answer 127.1.x.y, the agent its VIPs).
python3 "$HERE/gen_manifests.py" "$WORK/manifests" "$TOTAL" --endpoints 1 >/dev/null
: > "$WORK/dnsmasq.conf"; : > "$WORK/unbound-records.conf"; : > "$WORK/names"
for ((i = 0; i < N; i++)); do
  printf -v name 'svc-%06d.bench.svc.cluster.local' "$i"
  ip="127.1.$(( (i + 1) / 256 )).$(( (i + 1) % 256 ))"
  echo "host-record=$name,$ip" >> "$WORK/dnsmasq.conf"
  echo "local-data: \"$name. 5 IN A $ip\"" >> "$WORK/unbound-records.conf"
  echo "$name A" >> "$WORK/names"
done
shuf --random-source=<(yes) "$WORK/names" > "$WORK/queries.txt"

server_cmd() {
  case $1 in
  edgemesh) echo "$BIN agent --node-name bench --manifest-dir $WORK/manifests --vip-cidr 127.64.0.0/10 \
--dns-listen $ADDR:$PORT --admin-listen 127.0.0.1:0 --dns-upstream 127.0.0.1:9 --log-level error \
--state-dir $WORK/state" ;;
  dnsmasq) echo "dnsmasq -k --port=$PORT --listen-address=$ADDR --bind-interfaces --no-resolv --no-hosts \
--no-poll --local=/cluster.local/ --log-facility=- --conf-file=$WORK/dnsmasq.conf --pid-file=" ;;
  unbound|unbound-2t)
    local th=1; [[ $1 == unbound-2t ]] && th=2
    printf '%s\n' "server:" "  interface: $ADDR" "  port: $PORT" "  do-ip6: no" "  do-daemonize: no" \
      '  username: ""' '  chroot: ""' "  directory: \"$WORK\"" '  pidfile: ""' "  use-syslog: no" "  verbosity: 0" \
      "  num-threads: $th" "  so-reuseport: yes" '  module-config: "iterator"' '  local-zone: "." refuse' \
      '  local-zone: "cluster.local." static' "  include: \"$WORK/unbound-records.conf\"" \
      "remote-control:" "  control-enable: no" > "$WORK/unbound-$th.conf"
    echo "unbound -d -c $WORK/unbound-$th.conf" ;;
  esac
}

ready() {  # answers the first and the last name it holds within 120 s (the agent may load 100k services first)
  local i held=$N last; [[ $1 == edgemesh ]] && held=$TOTAL
  printf -v last 'svc-%06d' $((held - 1))
  for ((i = 0; i < 600; i++)); do
    [[ -n $(dig +short +time=1 +tries=1 @$ADDR -p $PORT svc-000042.bench.svc.cluster.local A 2>/dev/null) ]] &&
      [[ -n $(dig +short +time=1 +tries=1 @$ADDR -p $PORT $last.bench.svc.cluster.local A 2>/dev/null) ]] && return 0
    sleep 0.2
  done
  return 1
}

for ((rep = 1; rep <= REPS; rep++)); do
  for server in edgemesh dnsmasq unbound unbound-2t; do
    wait_quiet || exit 1
    svc_start "$server" "" "$WORK/$server.log" "$(server_cmd $server)"; CUR_CG=$SVC_CG CUR_PID=$SVC_PID
    ready "$server" || { log "$server does not answer"; cat "$WORK/$server.log" >&2; exit 1; }
    cpu0=$(svc_cpu_ns "$CUR_CG")
    # shellcheck disable=SC2086
    res=$(dnsperf -s $ADDR -p $PORT -d "$WORK/queries.txt" -l "$DUR" $DNSPERF_ARGS 2>&1 | awk '
      /Queries completed:/ {done=$3} /Queries lost:/ {lost=$3} /Queries per second:/ {qps=$4}
      /Average Latency/ {avg=$4} /Response codes:/ {sub(/.*Response codes: */, ""); rc=$0}
      END {printf "{\"completed\":%d,\"lost\":%d,\"qps\":%s,\"avg_latency_ms\":%.4f,\"rcodes\":\"%s\"}", done, lost, qps+0, avg*1000, rc}')
    cpu1=$(svc_cpu_ns "$CUR_CG"); mem=$(svc_mem_json "$CUR_CG")
    svc_stop "$CUR_CG" "$CUR_PID"; CUR_CG=""
    jq -nc --argjson rep "$rep" --arg server "$server" --argjson client "$res" --argjson total "$TOTAL" \
      --argjson cpu "$(awk -v a="$cpu0" -v b="$cpu1" 'BEGIN{printf "%.3f", (b-a)/1e9}')" --argjson mem "$mem" \
      '{suite:"dns-services", rep:$rep, server:$server, services:$total, value:$client.qps, unit:"qps",
        client:$client, server_cpu_s:$cpu, server_mem:$mem}' | tee -a "$OUT"
    sleep 1
  done
done
python3 - "$OUT" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
servers = list(dict.fromkeys(r["server"] for r in rows))
med = {s: statistics.median(r["value"] for r in rows if r["server"] == s) for s in servers}
print("\n| server | q/s (median) | edgemesh / server |\n|---|---|---|")
for s in servers:
    print(f"| {s} | {med[s]:,.0f} | {med['edgemesh'] / med[s]:.2f}x |")
PY

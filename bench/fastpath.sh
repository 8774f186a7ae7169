#!/usr/bin/env bash
# The kernel fast path (issue #15) against a direct connection, the agent's
# userspace proxy and haproxy, interleaved in one run.
#
# usage: bench/fastpath.sh [-r REPS] [-d SECS] [-t TESTS] [-m MODES] [-o DIR]
#   -r  repetitions (default 5)          -d  seconds per measurement (default 10)
#   -t  tests, from tput1,tput8,rr,conn (default tput1,rr,conn)
#   -m  modes, from direct,ebpf,userspace,haproxy (default all four)
#   -o  results directory (default bench/results/<date>-s8/fastpath)
#
# One edge node: three network namespaces with only their own links, a pod
# network on a bridge in the node's namespace, as a CNI bridge makes it:
#   client pod em-fp-PID-c  eth0 10.244.0.2 ─┐
#   node       em-fp-PID-n  cni0 10.244.0.1 (bridge; the agent, haproxy)
#   backend    em-fp-PID-b  eth0 10.244.0.3 ─┘ nginx :8080 (1 worker, 100-byte
#                                                file), iperf3 -s :5201
# Service bench/bench, clusterIP 10.96.0.10, ports tcp-web 80 -> 8080 and
# tcp-iperf 5201 -> 5201, one ready endpoint (the backend pod) on this node.
# The client (iperf3, wrk) runs in a cgroup v2 child made for the run
# (em-fp-PID under the cgroup2 mount) in every mode, and connects to:
#   direct     the backend pod's address itself (the baseline);
#   ebpf       the service address, with the agent in intercept.mode ebpf
#              attached at the client's cgroup (the kernel rewrites the
#              connect: no proxy in the path);
#   userspace  the service address, with the agent in intercept.mode nftables
#              (redirected to its transparent proxy in the node);
#   haproxy    haproxy 10.244.0.1:PORT in the node, with the shared harness's
#              configuration (mode tcp, defaults).
# Servers under test start before each measurement and stop after it, in
# cgroups of their own (../shared/bench/lib.sh: CPU seconds per run). Before
# each measurement one HTTP GET through the mode's address must return the
# file, and the client's socket must be connected where the mode says
# (ebpf: the backend pod itself, as `ss` shows it); after an ebpf run no
# program may stay attached to the client's cgroup (keepOnExit: false).
#
# Tests, as in ../shared/bench/tcp_bench.sh: tput1/tput8 `iperf3 -t SECS`
# with 1/8 streams (received Gbit/s); rr `wrk -t2 -c50` keep-alive GETs of
# the 100-byte file (req/s, p50/p99); conn the same with `Connection:
# close` (a new TCP connection per request). Within each repetition every
# test runs each mode once, the modes' order rotating by one position per
# repetition, so ratios to direct are paired within a repetition.
#
# Before each measurement the harness's quiet check (no cargo/rustc, < 15 %
# CPU busy) waits up to QUIET_MAX_WAIT seconds (default 120); a measurement
# started on a busy machine or that saw a compile is marked quiet=false.
# Writes DIR/results.jsonl, raw client output (DIR/raw/), env.txt, and with
# bench/fastpath_report.py table.md and chart.png. EDGEMESH_BIN overrides the
# binary (default: the release build). Needs root, iperf3, wrk, nginx,
# haproxy, bpftool, jq, curl.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd); ROOT=$(cd "$HERE/.." && pwd)
QUIET_MAX_WAIT=${QUIET_MAX_WAIT:-120} QUIET_POLL=${QUIET_POLL:-20}
SHARED=${SHARED_BENCH:-$ROOT/../shared/bench}; . "$SHARED/lib.sh"; . "$HERE/run_env.sh"
REPS=5 DUR=10 TESTS=tput1,rr,conn MODES=direct,ebpf,userspace,haproxy OUT=""
while getopts r:d:t:m:o: o; do case $o in
  r) REPS=$OPTARG ;; d) DUR=$OPTARG ;; t) TESTS=$OPTARG ;; m) MODES=$OPTARG ;; o) OUT=$OPTARG ;;
  *) sed -n '2,9p' "$0" >&2; exit 2 ;;
esac; done
OUT=${OUT:-$ROOT/bench/results/$(date -u +%Y-%m-%d)-s8/fastpath}
BIN=${EDGEMESH_BIN:-${CARGO_TARGET_DIR:-$ROOT/target}/release/edgemesh}
[[ $(id -u) == 0 ]] || { echo "fastpath.sh: run as root (namespaces, cgroups, BPF)" >&2; exit 1; }
for t in iperf3 wrk nginx haproxy bpftool jq curl; do
  command -v $t >/dev/null || [[ -x /usr/sbin/$t ]] || { echo "fastpath.sh: needs $t" >&2; exit 1; }
done
[[ -x $BIN ]] || { echo "fastpath.sh: no binary at $BIN (cargo build --release -p edgemesh)" >&2; exit 1; }
CG2_ROOT=$(awk '$3 == "cgroup2" { print $2; exit }' /proc/mounts)
[[ -n $CG2_ROOT ]] || { echo "fastpath.sh: no cgroup v2 mount in /proc/mounts" >&2; exit 1; }

NS_C=em-fp-$$-c NS_N=em-fp-$$-n NS_B=em-fp-$$-b
CLIENT_IP=10.244.0.2 NODE_IP=10.244.0.1 BACK_IP=10.244.0.3 SVC_IP=10.96.0.10
WEB_PORT=80 WEB_TARGET=8080 IPERF_PORT=5201 ADMIN=127.0.0.1:15020
CG2=$CG2_ROOT/em-fp-$$ PIN=/sys/fs/bpf/em-fp-$$
W=$(mktemp -d /tmp/edgemesh-fastpath.XXXXXX); chmod 755 "$W"   # nginx's worker is not root
CUR_CG="" CUR_PID="" BACK=()
cleanup() {
  set +e   # undo all of it, whatever fails
  watch_stop; server_stop
  local i; for ((i = 0; i < ${#BACK[@]}; i += 2)); do svc_stop "${BACK[i]}" "${BACK[i+1]}"; done
  rm -rf "$PIN"
  for ns in "$NS_C" "$NS_N" "$NS_B"; do ip netns del "$ns" 2>/dev/null || true; done
  rmdir "$CG2" 2>/dev/null || true
  [[ -n ${KEEP:-} ]] && log "kept $W" || rm -rf "$W"
}
trap cleanup EXIT; trap 'exit 130' INT TERM
mkdir -p "$OUT/raw" "$CG2"

# ---- the node and its two pods -------------------------------------------------------
for ns in "$NS_C" "$NS_N" "$NS_B"; do ip netns add "$ns"; ip -n "$ns" link set lo up; done
ip netns exec "$NS_N" sysctl -qw net.ipv4.ip_forward=1
# New connections at 10-17k/s for 10 s to one backend address leave 100k+ sockets in TIME_WAIT,
# more than the default ephemeral range (28k ports): later measurements then crawled at about
# 1,100 conn/s (connect() searching a full port range), whichever mode ran, which made the
# paired ratios noise (2026-12-07, 0.23x-9.8x). The client pod, as many real clients, may
# reuse a TIME_WAIT port (timestamps make it safe) and has the whole range: every mode alike.
ip netns exec "$NS_C" sysctl -qw net.ipv4.ip_local_port_range="1024 65535" net.ipv4.tcp_tw_reuse=1
ip -n "$NS_N" link add cni0 type bridge
ip -n "$NS_N" addr add $NODE_IP/24 dev cni0
ip -n "$NS_N" link set cni0 up
for pod in "c $NS_C $CLIENT_IP" "b $NS_B $BACK_IP"; do
  read -r tag ns ip <<<"$pod"
  ip -n "$NS_N" link add "veth-$tag" type veth peer name eth0 netns "$ns"
  ip -n "$NS_N" link set "veth-$tag" master cni0 up
  ip -n "$ns" addr add "$ip/24" dev eth0
  ip -n "$ns" link set eth0 up
  ip -n "$ns" route add default via $NODE_IP
done

mkdir -p "$W/www" "$W/tmp" && printf '%0100d' 0 > "$W/www/100b" && chmod 644 "$W/www/100b"
cat > "$W/nginx.conf" <<EOF
worker_processes 1; daemon off; pid $W/nginx.pid; error_log $W/nginx.err warn;
events { worker_connections 4096; }
http { access_log off; default_type application/octet-stream; keepalive_requests 10000000; keepalive_timeout 120s;
  client_body_temp_path $W/tmp; proxy_temp_path $W/tmp; fastcgi_temp_path $W/tmp; uwsgi_temp_path $W/tmp; scgi_temp_path $W/tmp;
  server { listen $BACK_IP:$WEB_TARGET backlog=4096; root $W/www; } }
EOF
svc_start backend-http "$NS_B" "$W/nginx.log" "nginx -p $W -e $W/nginx.err -c $W/nginx.conf"; BACK+=("$SVC_CG" "$SVC_PID")
svc_start backend-iperf "$NS_B" "$W/iperf3.log" "iperf3 -s -B $BACK_IP -p $IPERF_PORT"; BACK+=("$SVC_CG" "$SVC_PID")
wait_listen "$NS_B" tcp $BACK_IP $WEB_TARGET && wait_listen "$NS_B" tcp $BACK_IP $IPERF_PORT

mkdir -p "$W/manifests"
cat > "$W/manifests/bench.yaml" <<EOF
apiVersion: v1
kind: Service
metadata: {name: bench, namespace: bench}
spec:
  clusterIP: $SVC_IP
  ports: [{name: tcp-web, port: $WEB_PORT, targetPort: $WEB_TARGET}, {name: tcp-iperf, port: $IPERF_PORT, targetPort: $IPERF_PORT}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: bench-1, namespace: bench, labels: {kubernetes.io/service-name: bench}}
addressType: IPv4
ports: [{name: tcp-web, port: $WEB_TARGET}, {name: tcp-iperf, port: $IPERF_PORT}]
endpoints: [{addresses: [$BACK_IP], nodeName: node-a, conditions: {ready: true}}]
EOF
# agent_config MODE: the agent's configuration file for intercept mode MODE.
agent_config() {
  local f=$W/agent-$1.yaml
  cat > "$f" <<EOF
nodeName: node-a
logLevel: ${AGENT_LOG_LEVEL:-warn}
drainTimeout: 1s
vipCidr: 9.251.0.0/16
stateDir: $W/state-$1
manifests: {dir: $W/manifests}
dns: {listen: "127.0.0.1:0", upstreams: ["127.0.0.1:9"]}
admin: {listen: "$ADMIN"}
EOF
  case $1 in
  nftables) echo "intercept: {mode: nftables}" >> "$f" ;;
  ebpf) echo "intercept: {mode: ebpf, cgroupPath: $CG2, bpfPinPath: $PIN, keepOnExit: false}" >> "$f" ;;
  esac
  echo "$f"
}
# haproxy_config PORT UPSTREAM: the shared harness's haproxy configuration.
haproxy_config() {
  local f=$W/haproxy-$1.cfg
  printf '%s\n' global '    maxconn 8192' defaults '    mode tcp' '    timeout connect 5s' \
    '    timeout client 60s' '    timeout server 60s' 'listen l4' "    bind $NODE_IP:$1" "    server backend $2" > "$f"
  echo "$f"
}

# in_client CMD...: run CMD as the client: in the client's cgroup v2 child and its namespace.
in_client() {
  bash -c 'echo $$ > "$1/cgroup.procs"; shift; exec ip netns exec "$@"' _ "$CG2" "$NS_C" "$@"
}
# path_check IP PORT PEER [get]: a connection from the client to IP:PORT must be
# connected to PEER (what `ss` shows: the kernel's view); with `get`, a GET of the
# file through it must return the file.
path_check() {
  in_client bash -c 'exec 3<>/dev/tcp/$0/$1 || exit 1
    ss -Htn state established | awk -v p="$2" '"'"'$4 == p { f = 1 } END { exit !f }'"'"' \
      || { echo "connected to: $(ss -Htn state established)"; exit 1; }
    [[ -z $3 ]] && exit 0
    printf "GET /100b HTTP/1.0\r\nHost: b\r\n\r\n" >&3; cat <&3 | tail -c 100 | grep -qx "0\{100\}"' "$@"
}
# server_stop: SIGTERM to the server under test, up to 10 s for it to exit (the agent
# undoes its interception then), and only then lib.sh's svc_stop (which follows
# its TERM with a KILL at once).
server_stop() {
  [[ -n $CUR_PID ]] || return 0
  kill -TERM "$CUR_PID" 2>/dev/null || true
  local i; for ((i = 0; i < 100; i++)); do [[ -n $(cat "$CG_MEM/$CUR_CG/cgroup.procs") ]] || break; sleep 0.1; done
  svc_stop "$CUR_CG" "$CUR_PID"; CUR_CG="" CUR_PID=""
}
attached() { bpftool cgroup show "$CG2" 2>/dev/null | grep -c . || true; }

# ---- one measurement: appends its JSON line to results.jsonl -------------------------
SEQ=0
measure() { # REP TEST MODE POSITION
  local rep=$1 test=$2 mode=$3 pos=$4 quiet=true ip port peer get=get cmd="" cpu0=0 cpu1=0 cpu=null res value unit
  local tport=$WEB_TARGET sport=$WEB_PORT raw=$OUT/raw/rep$1-$2-$3
  SEQ=$((SEQ + 1)); [[ $test == tput* ]] && tport=$IPERF_PORT sport=$IPERF_PORT get=""
  case $mode in
  direct) ip=$BACK_IP port=$tport peer=$BACK_IP:$tport ;;
  ebpf) cmd="$BIN agent --config $(agent_config ebpf)" ip=$SVC_IP port=$sport peer=$BACK_IP:$tport ;;
  userspace) cmd="$BIN agent --config $(agent_config nftables)" ip=$SVC_IP port=$sport peer=$SVC_IP:$sport ;;
  haproxy) cmd="haproxy -db -f $(haproxy_config "$sport" "$BACK_IP:$tport")" ip=$NODE_IP port=$sport peer=$NODE_IP:$sport ;;
  *) log "unknown mode $mode"; return 1 ;;
  esac
  wait_quiet || quiet=false
  [[ -z ${BENCH_SMOKE:-} ]] || quiet=false   # no check was made
  CUR_CG="" CUR_PID=""
  if [[ -n $cmd ]]; then
    # nsenter rather than `ip netns exec`, which remounts /sys: the agent needs the
    # host's cgroup v2 mount (intercept.cgroupPath) and bpffs under it.
    svc_start "$mode" "" "$W/server-$SEQ.log" "nsenter --net=/run/netns/$NS_N $cmd"; CUR_CG=$SVC_CG CUR_PID=$SVC_PID
  fi
  local ok=0 i
  for ((i = 0; i < 100; i++)); do  # up to 10 s for the server to be ready and the path to be right
    if [[ $mode == haproxy || $mode == direct ]] || ip netns exec "$NS_N" curl -sf -o /dev/null "http://$ADMIN/readyz"; then
      path_check "$ip" "$port" "$peer" $get >> "$W/path-$SEQ.log" 2>&1 && { ok=1; break; }
    fi
    sleep 0.1
  done
  if (( ! ok )); then
    log "$mode: a connection to $ip:$port did not reach the backend as $peer"
    tail -3 "$W/path-$SEQ.log" >&2 2>/dev/null; [[ -z $cmd ]] || tail -20 "$W/server-$SEQ.log" >&2; return 1
  fi
  watch_start; [[ -z $CUR_CG ]] || cpu0=$(svc_cpu_ns "$CUR_CG")
  case $test in
  tput1|tput8)
    local par=1; [[ $test == tput8 ]] && par=8
    in_client iperf3 -c "$ip" -p "$port" -t "$DUR" -P $par -J --connect-timeout 3000 > "$raw.iperf3.json" || true
    res=$(jq -c '{gbps: ((.end.sum_received.bits_per_second // 0) / 1e9), sender_gbps: ((.end.sum_sent.bits_per_second // 0) / 1e9),
                  retransmits: .end.sum_sent.retransmits, error: .error}' "$raw.iperf3.json" 2>/dev/null || echo '{"gbps":0,"error":"iperf3 output unparsable"}')
    value=$(jq .gbps <<<"$res"); unit=Gbit/s ;;
  rr|conn)
    local hdr=(); [[ $test == conn ]] && hdr=(-H 'Connection: close')
    in_client wrk -t2 -c50 -d"${DUR}s" "${hdr[@]}" -s "$SHARED/wrk_report.lua" "http://$ip:$port/100b" > "$raw.wrk.txt" || true
    res=$(grep '^{' "$raw.wrk.txt" || echo '{"req_s":0,"error":"wrk failed"}')
    value=$(jq .req_s <<<"$res"); unit=req/s; [[ $test == conn ]] && unit=conn/s ;;
  *) log "unknown test $test"; return 1 ;;
  esac
  [[ -z $CUR_CG ]] || { cpu1=$(svc_cpu_ns "$CUR_CG"); cpu=$(awk -v a="$cpu0" -v b="$cpu1" 'BEGIN{printf "%.3f", (b-a)/1e9}'); }
  watch_stop; (( ! WATCH_SEEN )) || quiet=false
  server_stop
  if [[ $mode == ebpf ]] && (( $(attached) )); then
    log "ebpf: programs still attached to $CG2 after the agent stopped (keepOnExit: false):"
    bpftool cgroup show "$CG2" >&2; tail -20 "$W/server-$SEQ.log" >&2; return 1
  fi
  if ! awk -v v="$value" 'BEGIN { exit !(v > 0) }'; then
    log "$mode $test: no result ($res)"; [[ -z $cmd ]] || tail -20 "$W/server-$SEQ.log" >&2; return 1
  fi
  jq -nc --argjson rep "$rep" --arg mode "$mode" --arg test "$test" --argjson pos "$pos" --argjson value "$value" \
    --arg unit "$unit" --argjson client "$res" --argjson cpu "$cpu" --argjson quiet "$quiet" --argjson dur "$DUR" \
    --arg target "$ip:$port" --arg peer "$peer" --arg load "$(cut -d' ' -f1-3 /proc/loadavg)" \
    '{suite:"fastpath", ts:(now|todate), rep:$rep, mode:$mode, test:$test, position:$pos, value:$value, unit:$unit,
      duration_s:$dur, target:$target, connected_to:$peer, client:$client, server_cpu_s:$cpu, quiet:$quiet, loadavg:$load}' \
    | tee -a "$OUT/results.jsonl"
}

# ---- main ----------------------------------------------------------------------------
IFS=, read -ra TLIST <<<"$TESTS"; IFS=, read -ra MLIST <<<"$MODES"
: > "$OUT/results.jsonl"
log "reps=$REPS dur=${DUR}s tests=$TESTS modes=$MODES -> $OUT"
for ((rep = 1; rep <= REPS; rep++)); do
  n=${#MLIST[@]}; order=()
  for ((i = 0; i < n; i++)); do order+=("${MLIST[(i + rep - 1) % n]}"); done
  for test in "${TLIST[@]}"; do
    for ((i = 0; i < n; i++)); do
      log "rep $rep $test: ${order[i]}"
      measure "$rep" "$test" "${order[i]}" $((i + 1)) || exit 1
      sleep 2   # let TIME_WAIT / softirq work settle between runs, as the harness does
    done
  done
done

run_env "$OUT/results.jsonl" \
  "tests: $TESTS, ${DUR}s each; wrk -t2 -c50; nginx 1 worker, 100-byte file; reps: $REPS; modes: $MODES" \
  "peers: $(haproxy -v | head -1 | cut -d' ' -f1-3), $(iperf3 --version | head -1 | cut -d' ' -f1-2), $(wrk -v 2>&1 | head -1 | cut -d' ' -f1-2)" \
  > "$OUT/env.txt"
python3 "$HERE/fastpath_report.py" "$OUT"

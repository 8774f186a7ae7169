#!/usr/bin/env bash
# The cross-node tunnel against the direct path: two network namespaces
# (nodes A and B) joined by one veth pair, an agent in each, an iperf3 server
# and an nginx (100-byte file) in B; clients in A reach them directly (B's
# address) and through the tunnel (a service VIP in A whose endpoint is on
# node-b). Transports: TCP (TLS or Noise, + yamux, no PSK), and QUIC with
# TUNNEL_TRANSPORTS="tcp quic" for builds with the `quic` feature (one at a time).
#
# usage: bench/tunnel.sh [-r REPS] [-d SECS] [-o OUT.jsonl] [-b LABEL=BINARY]...
# Tests: tput1 (one iperf3 stream), rr (wrk keep-alive), conn (wrk with 'Connection: close': a
# new connection per request). Prints one JSON line per measurement and a summary with ratios to direct
# (paired within each repetition). Each -b adds a build to compare in the
# same run (alternating within each repetition); without -b, EDGEMESH_BIN or
# the release build. Besides throughput, the agents' CPU time (both agents,
# user + system) per GB moved through the tunnel: steadier than Gbit/s on a
# busy machine. TUNNEL_PERF=DIR records a cpu-clock profile with DWARF call
# graphs of both agents during each tunnel iperf3 run (DIR/LABEL-TRANSPORT-
# REP.perf). TUNNEL_COUNT=1 counts, during each tunnel request/response run, both agents'
# system calls by kind and their context switches (perf tracepoints, cheap unlike strace) and
# reports them per request. TUNNEL_STUNNEL=1 adds the path `stunnel` (issue #20's peer): an
# stunnel pair, TLS 1.3 with AES-128-GCM, client in A (127.98.0.1:5201 and :8080) and server
# in B, the same shape as ours (two userspace hops, one cipher); its two processes' CPU per GB
# is reported as the agents' is. TUNNEL_PSK=1 runs every agent with a private-network key
# (--psk-file, a fresh random swarm.key; TCP only: with a PSK the agent refuses QUIC), as
# EdgeMesh runs by default; the tunnel paths are then labelled tunnel-tcp+psk.
# TUNNEL_EDGEMESH=1 then adds issue #20's EdgeMesh rows: shared/bench/edgemesh_go_compare.sh
# (phase B, cross-node: direct, EdgeMesh v1.17 with its PSK, ours, ours with a PSK, alternating
# within each of the same -r repetitions of -d seconds; its header documents every step) with
# the first build as OURS. It needs EM_GIT (a bare git dir of kubeedge/edgemesh, e.g. a fetched
# mirror), golang-go and jq; it builds EdgeMesh once into $EMGO_WORK (default
# /var/tmp/emgo: WORK of that script) and writes its results.csv and table.md to
# OUT-edgemesh/ (OUT without .jsonl; with no -o, under $EMGO_WORK). BENCH_SMOKE=1 passes -s
# (no quiet waits). Every build's run also reports both agents' memory (test "rss": VmRSS,
# RssAnon and RssFile in MiB of node a and node b), idle (2 s after the tunnel is up) and after
# its three tests. Needs root, iperf3, wrk, nginx (stunnel4 and openssl for TUNNEL_STUNNEL,
# perf for TUNNEL_PERF/COUNT).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
SHARED=${SHARED_BENCH:-$ROOT/../shared/bench}
source "$SHARED/lib.sh"
REPS=3 DUR=5 OUT=/dev/null BUILDS=()
while getopts r:d:o:b: o; do case $o in
  r) REPS=$OPTARG ;; d) DUR=$OPTARG ;; o) OUT=$OPTARG ;; b) BUILDS+=("$OPTARG") ;;
  *) sed -n '2,37p' "$0" >&2; exit 2 ;;
esac; done
if [[ ${#BUILDS[@]} -eq 0 ]]; then
  BUILDS=("=${EDGEMESH_BIN:-${CARGO_TARGET_DIR:-$ROOT/target}/release/edgemesh}")
fi
if [[ -n ${TUNNEL_EDGEMESH:-} ]]; then
  [[ -n ${EM_GIT:-} && -d $EM_GIT ]] || { echo "TUNNEL_EDGEMESH needs EM_GIT, a bare git dir of kubeedge/edgemesh" >&2; exit 2; }
fi
for b in "${BUILDS[@]}"; do
  [[ -x ${b#*=} ]] || { echo "no release binary at ${b#*=} (cargo build --release -p edgemesh)" >&2; exit 1; }
done
BIN=${BUILDS[0]#*=}
PERF_DIR=${TUNNEL_PERF:-}

A=em-bt-a-$$ B=em-bt-b-$$ W=$(mktemp -d)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  # The iperf3 server daemonizes (-D): not a child to wait for, and a
  # deleted namespace does not end it.
  [[ -f $W/iperf3.pid ]] && kill "$(cat "$W/iperf3.pid")" 2>/dev/null || true
  wait 2>/dev/null || true
  ip netns del "$A" 2>/dev/null || true
  ip netns del "$B" 2>/dev/null || true
  rm -rf "$W"
}
trap cleanup EXIT
trap "exit 130" INT TERM  # so that the EXIT trap runs on a signal too

for ns in $A $B; do ip netns add "$ns"; ip -n "$ns" link set lo up; done
ip link add bta netns "$A" type veth peer name btb netns "$B"
ip -n "$A" addr add 10.99.0.1/24 dev bta
ip -n "$B" addr add 10.99.0.2/24 dev btb
ip -n "$A" link set bta up
ip -n "$B" link set btb up

# Backends in B.
ip netns exec "$B" iperf3 -s -D -B 10.99.0.2 -p 5201 --logfile "$W/iperf3.log" --pidfile "$W/iperf3.pid"
mkdir -p "$W/www" && head -c 100 /dev/zero | tr '\0' x > "$W/www/f"
chmod 755 "$W" "$W/www" && chmod 644 "$W/www/f"  # nginx's workers are not root
cat > "$W/nginx.conf" <<EOF
worker_processes 1; daemon off; pid $W/nginx.pid; error_log $W/nginx.err;
events { worker_connections 4096; }
http { access_log off; server { listen 10.99.0.2:8080; root $W/www; keepalive_requests 1000000; } }
EOF
ip netns exec "$B" nginx -c "$W/nginx.conf" & PIDS+=($!)

PA=$("$BIN" id --state-dir "$W/a") PB=$("$BIN" id --state-dir "$W/b")
manifests() { # $1: dir
  mkdir -p "$1"
  cat > "$1/bench.yaml" <<EOF
apiVersion: v1
kind: Node
metadata: {name: node-a, annotations: {edgemesh.io/peer-id: $PA}}
---
apiVersion: v1
kind: Node
metadata: {name: node-b, annotations: {edgemesh.io/peer-id: $PB}}
---
apiVersion: v1
kind: Service
metadata: {name: bench, namespace: bench}
spec:
  clusterIP: 127.99.0.10
  ports: [{name: iperf, port: 5201}, {name: http, port: 8080}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: bench-1, namespace: bench, labels: {kubernetes.io/service-name: bench}}
addressType: IPv4
ports: [{name: iperf, port: 5201}, {name: http, port: 8080}]
endpoints: [{addresses: [10.99.0.2], nodeName: node-b}]
EOF
}
manifests "$W/a/m"; manifests "$W/b/m"
PSK_ARGS=() PSK_LABEL=""
if [[ -n ${TUNNEL_PSK:-} ]]; then
  [[ ${TUNNEL_TRANSPORTS:-tcp} == tcp ]] || { echo "TUNNEL_PSK is TCP only (TUNNEL_TRANSPORTS=tcp)" >&2; exit 2; }
  (umask 077; printf '/key/swarm/psk/1.0.0/\n/base16/\n%s\n' "$(od -An -tx1 -N32 /dev/urandom | tr -d ' \n')" \
    > "$W/swarm.key")
  PSK_ARGS=(--psk-file "$W/swarm.key") PSK_LABEL=+psk
fi

AGENTS=()
start_agents() { # $1: tcp|quic, $2: binary
  local la lb bin=$2
  if [[ $1 == quic ]]; then la=/ip4/10.99.0.1/udp/20006/quic-v1 lb=/ip4/10.99.0.2/udp/20006/quic-v1
  else la=/ip4/10.99.0.1/tcp/20006 lb=/ip4/10.99.0.2/tcp/20006; fi
  local common=(--dns-listen 127.0.0.1:0 --admin-listen 127.0.0.1:15020 --dns-upstream 127.0.0.1:9
    --vip-cidr 127.99.0.0/24 --no-mdns --log-level warn "${PSK_ARGS[@]}")
  ip netns exec "$B" "$bin" agent --node-name node-b --manifest-dir "$W/b/m" --state-dir "$W/b" \
    --tunnel-listen "$lb" "${common[@]}" 2>>"$W/b.log" & AGENTS+=($!)
  ip netns exec "$A" "$bin" agent --node-name node-a --manifest-dir "$W/a/m" --state-dir "$W/a" \
    --tunnel-listen "$la" --bootstrap "$lb/p2p/$PB" "${common[@]}" 2>>"$W/a.log" & AGENTS+=($!)
  for _ in $(seq 100); do
    if ip netns exec "$A" curl -sf -o /dev/null http://127.99.0.10:8080/f; then return 0; fi
    sleep 0.1
  done
  echo "the tunnel did not come up; logs:" >&2; cat "$W/a.log" "$W/b.log" >&2; exit 1
}
stop_agents() {
  for p in "${AGENTS[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
  AGENTS=()
}

iperf() { # $1: target ip -> iperf3 JSON
  ip netns exec "$A" iperf3 -c "$1" -p 5201 -t "$DUR" -J
}
gbit() { jq '.end.sum_received.bits_per_second / 1e9'; }
wrk_rr() { # $1: target ip -> wrk JSON line
  ip netns exec "$A" wrk -t2 -c50 -d"${DUR}s" -s "$SHARED/wrk_report.lua" "http://$1:8080/f" | grep '^{'
}
wrk_conn() { # $1: target ip -> wrk JSON line; a new connection per request
  ip netns exec "$A" wrk -t2 -c50 -d"${DUR}s" -H 'Connection: close' -s "$SHARED/wrk_report.lua" \
    "http://$1:8080/f" | grep '^{'
}
agents_mem() { # $1: idle|after -> {node_a: {rss, anon, file}, node_b: ...} in MiB (AGENTS: b, a)
  local node p=(b a) i f=()
  for i in 0 1; do
    f+=(--argjson "${p[$i]}" "$(awk '/^(VmRSS|RssAnon|RssFile):/ {sub(":", "", $1); printf "%s\"%s\":%.1f",
      (n++ ? "," : "{"), $1, $2/1024} END {print "}"}' "/proc/${AGENTS[$i]}/status")")
  done
  jq -nc --arg w "$1" "${f[@]}" '{when:$w, node_a:$a, node_b:$b}'
}
agents_cpu_s() { # user + system seconds of both agents so far
  local p t=0 f
  for p in "${AGENTS[@]}"; do read -ra f < "/proc/$p/stat"; t=$((t + f[13] + f[14])); done
  echo "$t / $(getconf CLK_TCK)" | bc -l
}
COUNT_EVENTS=raw_syscalls:sys_enter,sched:sched_switch,syscalls:sys_enter_sendmsg,syscalls:sys_enter_writev,\
syscalls:sys_enter_sendto,syscalls:sys_enter_write,syscalls:sys_enter_recvfrom,syscalls:sys_enter_read,\
syscalls:sys_enter_readv,syscalls:sys_enter_recvmsg,syscalls:sys_enter_epoll_wait,syscalls:sys_enter_futex
# The stunnel pair (TUNNEL_STUNNEL=1): a self-signed key for the server; both ends with
# TCP_NODELAY, as the tunnel sets it.
start_stunnel() {
  [[ -f $W/st.pem ]] || openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=bench \
    -keyout "$W/st.pem" -out "$W/st.pem" 2>/dev/null
  local common="foreground = yes
pid =
debug = 3
sslVersion = TLSv1.3
ciphersuites = TLS_AES_128_GCM_SHA256
socket = l:TCP_NODELAY=1
socket = r:TCP_NODELAY=1"
  printf '%s\ncert = %s\n[iperf]\naccept = 10.99.0.2:7201\nconnect = 10.99.0.2:5201\n[http]\naccept = 10.99.0.2:7080\nconnect = 10.99.0.2:8080\n' \
    "$common" "$W/st.pem" > "$W/st-b.conf"
  printf '%s\nclient = yes\n[iperf]\naccept = 127.98.0.1:5201\nconnect = 10.99.0.2:7201\n[http]\naccept = 127.98.0.1:8080\nconnect = 10.99.0.2:7080\n' \
    "$common" > "$W/st-a.conf"
  ip netns exec "$B" stunnel4 "$W/st-b.conf" 2>>"$W/st-b.log" & AGENTS+=($!)
  ip netns exec "$A" stunnel4 "$W/st-a.conf" 2>>"$W/st-a.log" & AGENTS+=($!)
  for _ in $(seq 100); do
    if ip netns exec "$A" curl -sf -o /dev/null http://127.98.0.1:8080/f; then return 0; fi
    sleep 0.1
  done
  echo "stunnel did not come up; logs:" >&2; cat "$W/st-a.log" "$W/st-b.log" >&2; exit 1
}

RES=$W/results.jsonl
emit() { echo "$1" | tee -a "$RES"; }

for rep in $(seq "$REPS"); do
  for transport in ${TUNNEL_TRANSPORTS:-tcp}; do
    wait_quiet
    emit "$(jq -nc --arg t direct --argjson r "$rep" --argjson g "$(iperf 10.99.0.2 | gbit)" '{rep:$r,path:$t,test:"tput1",gbit_s:$g}')"
    if [[ -n ${TUNNEL_STUNNEL:-} && $transport == tcp ]]; then
      start_stunnel
      cpu0=$(agents_cpu_s)
      j=$(iperf 127.98.0.1)
      cpu=$(echo "$(agents_cpu_s) - $cpu0" | bc -l)
      emit "$(jq -c --arg t stunnel --argjson r "$rep" --argjson cpu "$cpu" \
        '{rep:$r,path:$t,test:"tput1",gbit_s:(.end.sum_received.bits_per_second / 1e9),
          agents_cpu_s_per_gb:($cpu / (.end.sum_received.bytes / 1e9))}' <<<"$j")"
      emit "$(wrk_rr 127.98.0.1 | jq -c --arg t stunnel --argjson r "$rep" '{rep:$r,path:$t,test:"rr"} + .')"
      emit "$(wrk_conn 127.98.0.1 | jq -c --arg t stunnel --argjson r "$rep" '{rep:$r,path:$t,test:"conn"} + .')"
      stop_agents
    fi
    for build in "${BUILDS[@]}"; do
      label=${build%%=*}
      path="tunnel-$transport$PSK_LABEL${label:+@$label}"
      start_agents "$transport" "${build#*=}"
      sleep 2
      emit "$(agents_mem idle | jq -c --arg t "$path" --argjson r "$rep" '{rep:$r,path:$t,test:"rss"} + .')"
      perf_pid=""
      if [[ -n $PERF_DIR ]]; then
        mkdir -p "$PERF_DIR"
        perf record -q -e cpu-clock -F 499 --call-graph dwarf,16384 -p "$(IFS=,; echo "${AGENTS[*]}")" \
          -o "$PERF_DIR/${label:-agent}-$transport-$rep.perf" -- sleep "$DUR" 2>>"$W/perf.log" & perf_pid=$!
      fi
      cpu0=$(agents_cpu_s)
      j=$(iperf 127.99.0.10)
      cpu=$(echo "$(agents_cpu_s) - $cpu0" | bc -l)
      [[ -z $perf_pid ]] || wait "$perf_pid" || true
      emit "$(jq -c --arg t "$path" --argjson r "$rep" --argjson cpu "$cpu" \
        '{rep:$r,path:$t,test:"tput1",gbit_s:(.end.sum_received.bits_per_second / 1e9),
          agents_cpu_s_per_gb:($cpu / (.end.sum_received.bytes / 1e9))}' <<<"$j")"
      count_pid=""
      if [[ -n ${TUNNEL_COUNT:-} ]]; then
        perf stat -x, -o "$W/count" -e "$COUNT_EVENTS" -p "$(IFS=,; echo "${AGENTS[*]}")" -- sleep "$DUR" \
          2>>"$W/perf.log" & count_pid=$!
      fi
      rr=$(wrk_rr 127.99.0.10)
      if [[ -n $count_pid ]]; then
        wait "$count_pid" || true
        # Per request: each event's count over wrk's requests (perf and wrk both run DUR seconds).
        rr=$(jq -c --slurpfile c <(awk -F, '/^[0-9]/ {printf "{\"%s\":%s}\n", $3, $1}' "$W/count" | jq -s add) \
          '. + {per_request: ($c[0] | with_entries(.value = (.value / $ARGS.named.n)))}' --argjson n \
          "$(jq .requests <<<"$rr")" <<<"$rr")
      fi
      emit "$(jq -c --arg t "$path" --argjson r "$rep" '{rep:$r,path:$t,test:"rr"} + .' <<<"$rr")"
      emit "$(wrk_conn 127.99.0.10 | jq -c --arg t "$path" --argjson r "$rep" '{rep:$r,path:$t,test:"conn"} + .')"
      emit "$(agents_mem after | jq -c --arg t "$path" --argjson r "$rep" '{rep:$r,path:$t,test:"rss"} + .')"
      [[ -z ${TUNNEL_HOLD:-} ]] || { echo "agents ${AGENTS[*]} (b a) kept for ${TUNNEL_HOLD}s" >&2; sleep "$TUNNEL_HOLD"; }
      stop_agents
    done
    emit "$(wrk_rr 10.99.0.2 | jq -c --arg t direct --argjson r "$rep" '{rep:$r,path:$t,test:"rr"} + .')"
    emit "$(wrk_conn 10.99.0.2 | jq -c --arg t direct --argjson r "$rep" '{rep:$r,path:$t,test:"conn"} + .')"
  done
done

[[ $OUT == /dev/null ]] || cp "$RES" "$OUT"
python3 - "$RES" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
def med(path, test, key):
    v = [r[key] for r in rows if r["path"] == path and r["test"] == test and key in r]
    return statistics.median(v) if v else float("nan")
print("\n| path | Gbit/s (1 stream) | x direct | agents CPU s/GB | req/s keep-alive | x direct | p50 us | p99 us | new conn/s | x direct |")
print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
dg, dr, dc = med("direct", "tput1", "gbit_s"), med("direct", "rr", "req_s"), med("direct", "conn", "req_s")
for p in dict.fromkeys(r["path"] for r in rows):
    g, r = med(p, "tput1", "gbit_s"), med(p, "rr", "req_s")
    c = med(p, "tput1", "agents_cpu_s_per_gb")
    cpu = "-" if c != c else f"{c:.2f}"
    n = med(p, "conn", "req_s")
    print(f"| {p} | {g:.2f} | {g/dg:.2f} | {cpu} | {r:,.0f} | {r/dr:.2f} | {med(p,'rr','p50_us'):.0f} | {med(p,'rr','p99_us'):.0f} | {n:,.0f} | {n/dc:.2f} |")
mem = [r for r in rows if r["test"] == "rss"]
if mem:
    print("\n| path | when | node a VmRSS MiB | RssAnon | RssFile | node b VmRSS MiB | RssAnon | RssFile |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for p in dict.fromkeys(r["path"] for r in mem):
        for w in ("idle", "after"):
            m = [r for r in mem if r["path"] == p and r["when"] == w]
            cell = lambda n, k: f"{statistics.median(r[n][k] for r in m):.1f}"
            print(f"| {p} | {w} | " + " | ".join(cell(n, k) for n in ("node_a", "node_b") for k in ("VmRSS", "RssAnon", "RssFile")) + " |")
PY

if [[ -n ${TUNNEL_EDGEMESH:-} ]]; then
  em_args=(-r "$REPS" -d "$DUR" -p B)
  [[ $OUT == /dev/null ]] || em_args+=(-o "${OUT%.jsonl}-edgemesh")
  [[ -z ${BENCH_SMOKE:-} ]] || em_args+=(-s)
  EM_GIT=$EM_GIT WORK=${EMGO_WORK:-/var/tmp/emgo} OURS=$BIN "$SHARED/edgemesh_go_compare.sh" "${em_args[@]}"
fi

#!/usr/bin/env bash
# Regenerates crates/edgemesh/link/symbol-order.txt: the functions an agent
# runs, which release builds place first in .text (see crates/edgemesh/build.rs).
#
# usage: bench/link_order.sh
#
# Runs an unstripped release build under callgrind through what a node agent
# does: start-up on 1,000 services (bench/gen_manifests.py), DNS answers
# (A, AAAA, a name that does not exist, a forward to a dead upstream), twenty
# HTTP requests proxied to a local backend, a manifest change, and the admin
# endpoints. A second agent under callgrind (node b, on loopback too) is its
# tunnel peer with a private-network key (--psk-file, as EdgeMesh deployments
# run): node a carries HTTP requests (curl and wrk, keep-alive and a
# connection each) and iperf3 bulk in both directions to a service whose
# endpoint is on node b.
# Then it stops both and lists every function of the binary that ran in
# either, most expensive first. Rerun it after a toolchain or dependency update: the
# file names functions by their mangled names, which those change (stale
# names are skipped by the linker; bench/scale.sh's RSS at 1,000 services
# shows when the file has gone stale).
#
# ORDER_PROFILES adds callgrind profiles of other runs of the same binary
# (`valgrind --tool=callgrind --demangle=no`; `callgrind_control -d` dumps a
# running agent's): agents of a benchmark have run code this run does not
# (shared/bench/edgemesh_go_compare.sh's, with EdgeMesh on the same LAN: 9.5
# instead of 7 MiB of code resident without them), e.g. with OURS set to
# bench/callgrind_agent.sh.
#
# Environment: EDGEMESH_BIN (an unstripped release binary of the same code,
# toolchain and profile; default: build one with EDGEMESH_KEEP_SYMBOLS=1), ORDER_DNS_PORT (27353),
# ORDER_ADMIN_PORT (27020), ORDER_HTTP_PORT (27080), ORDER_TUNNEL_PORT (27007; node b
# uses the ports above + 1), ORDER_IPERF_PORT (27201). Needs valgrind, dig, curl, iperf3,
# wrk, python3.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT=$ROOT/crates/edgemesh/link/symbol-order.txt
DNS_PORT=${ORDER_DNS_PORT:-27353} ADMIN_PORT=${ORDER_ADMIN_PORT:-27020} HTTP_PORT=${ORDER_HTTP_PORT:-27080}
TUNNEL_PORT=${ORDER_TUNNEL_PORT:-27007} IPERF_PORT=${ORDER_IPERF_PORT:-27201}
for t in valgrind curl dig iperf3 wrk python3 nm; do command -v $t >/dev/null || { echo "link_order.sh: needs $t" >&2; exit 1; }; done
BIN=${EDGEMESH_BIN:-}
if [[ -z $BIN ]]; then
  (cd "$ROOT" && EDGEMESH_KEEP_SYMBOLS=1 cargo build --release -p edgemesh >&2)
  BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release/edgemesh
fi
nm "$BIN" >/dev/null 2>&1 && [[ $(nm "$BIN" | wc -l) -gt 1000 ]] || { echo "link_order.sh: $BIN has no symbols (build with EDGEMESH_KEEP_SYMBOLS=1)" >&2; exit 1; }

# As root, the run goes into a network namespace of its own with a veth pair, where the
# tunnel listens on every address and mDNS is on, as on a node (their code is a node's too:
# without it in the file, an agent had 11 instead of 7 MiB of code resident); in the host's
# namespace mDNS would announce the agents on its LAN, so there they run without it.
if [[ $(id -u) == 0 && -z ${ORDER_NETNS:-} ]] && command -v ip >/dev/null; then
  NS=edgemesh-order-$$
  ip netns add "$NS"
  trap 'ip netns del "$NS" 2>/dev/null || true' EXIT
  ip -n "$NS" link set lo up
  ip -n "$NS" link add order0 type veth peer name order1
  ip -n "$NS" addr add 10.251.0.1/24 dev order0
  ip -n "$NS" link set order0 up
  ip -n "$NS" link set order1 up
  EDGEMESH_BIN=$BIN ORDER_NETNS=$NS ip netns exec "$NS" "$0" "$@"
  exit
fi
DISCOVERY=(--no-mdns) TUNNEL_IP=127.0.0.1
[[ -z ${ORDER_NETNS:-} ]] || DISCOVERY=() TUNNEL_IP=0.0.0.0

WORK=$(mktemp -d -t edgemesh-order.XXXXXX)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT
M=$WORK/manifests
python3 "$ROOT/bench/gen_manifests.py" "$M" 1000 --endpoints 2 --per-file 1000 >/dev/null
cat >"$M/web.yaml" <<YAML
apiVersion: v1
kind: Service
metadata: {name: web, namespace: bench}
spec:
  ports: [{name: http, port: 80, targetPort: $HTTP_PORT}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-x
  namespace: bench
  labels: {kubernetes.io/service-name: web}
addressType: IPv4
ports: [{name: http, port: $HTTP_PORT}]
endpoints: [{addresses: [127.0.0.1]}]
YAML
# The tunnel: node b's agent has the endpoint of service "far" (web server and iperf3 server).
PA=$("$BIN" id --state-dir "$WORK/state") PB=$("$BIN" id --state-dir "$WORK/state-b")
cat >"$M/far.yaml" <<YAML
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
metadata: {name: far, namespace: bench}
spec:
  ports: [{name: http, port: 80, targetPort: $HTTP_PORT}, {name: iperf, port: 5201, targetPort: $IPERF_PORT}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: far-x
  namespace: bench
  labels: {kubernetes.io/service-name: far}
addressType: IPv4
ports: [{name: http, port: $HTTP_PORT}, {name: iperf, port: $IPERF_PORT}]
endpoints: [{addresses: [127.0.0.1], nodeName: node-b}]
YAML
MB=$WORK/manifests-b
mkdir -p "$MB" && cp "$M/far.yaml" "$MB/"
(umask 077; printf '/key/swarm/psk/1.0.0/\n/base16/\n%s\n' "$(od -An -tx1 -N32 /dev/urandom | tr -d ' \n')" >"$WORK/swarm.key")
mkdir -p "$WORK/www" && echo hello >"$WORK/www/index.html"
python3 -m http.server "$HTTP_PORT" --bind 127.0.0.1 --directory "$WORK/www" >/dev/null 2>&1 &
PIDS+=($!)
iperf3 -s -B 127.0.0.1 -p "$IPERF_PORT" >/dev/null 2>&1 &
PIDS+=($!)

agent() { # $1: profile name; the rest: arguments
  local name=$1; shift
  valgrind --tool=callgrind --demangle=no --callgrind-out-file="$WORK/callgrind-$name.out" "$BIN" agent \
    --dns-upstream 127.0.0.1:9 --log-level warn "${DISCOVERY[@]}" --psk-file "$WORK/swarm.key" "$@" \
    2>"$WORK/agent-$name.log" &
}
agent b --node-name node-b --manifest-dir "$MB" --vip-cidr 127.64.0.0/16 --state-dir "$WORK/state-b" \
  --dns-listen "127.0.0.1:$((DNS_PORT + 1))" --admin-listen "127.0.0.1:$((ADMIN_PORT + 1))" \
  --tunnel-listen "/ip4/$TUNNEL_IP/tcp/$((TUNNEL_PORT + 1))"
AGENT_B=$!
PIDS+=($AGENT_B)
agent a --node-name node-a --manifest-dir "$M" --vip-cidr 127.192.0.0/10 --state-dir "$WORK/state" \
  --dns-listen "127.0.0.1:$DNS_PORT" --admin-listen "127.0.0.1:$ADMIN_PORT" \
  --tunnel-listen "/ip4/$TUNNEL_IP/tcp/$TUNNEL_PORT" --bootstrap "/ip4/127.0.0.1/tcp/$((TUNNEL_PORT + 1))/p2p/$PB"
AGENT=$!
PIDS+=($AGENT)
for _ in $(seq 600); do curl -sf --max-time 5 "http://127.0.0.1:$ADMIN_PORT/readyz" >/dev/null && break; kill -0 $AGENT || { cat "$WORK/agent-a.log" >&2; exit 1; }; sleep 1; done
q() { dig +short +time=5 +tries=1 -p "$DNS_PORT" @127.0.0.1 "$@" || true; }
VIP=$(q web.bench.svc.cluster.local | head -1)
[[ -n $VIP ]] || { echo "link_order.sh: web.bench did not resolve" >&2; exit 1; }
for i in 1 2 3 4 5; do q svc-00000$i.bench.svc.cluster.local >/dev/null; q AAAA svc-00000$i.bench >/dev/null; q nothere$i.bench.svc.cluster.local >/dev/null; done
q example.org >/dev/null
for _ in $(seq 20); do curl -sf --max-time 10 -o /dev/null "http://$VIP/" || { echo "link_order.sh: request through $VIP failed" >&2; exit 1; }; done
printf 'apiVersion: v1\nkind: Service\nmetadata:\n  name: update\n  namespace: bench\nspec:\n  ports:\n  - port: 80\n' >"$M/zz-update.yaml"
for _ in $(seq 60); do [[ -n $(q update.bench.svc.cluster.local) ]] && break; sleep 1; done
curl -sf --max-time 10 "http://127.0.0.1:$ADMIN_PORT/services" >/dev/null
for p in healthz nodes config; do curl -sf --max-time 10 "http://127.0.0.1:$ADMIN_PORT/$p" >/dev/null; done
# Through the tunnel: the first request waits for the connection to node b.
FAR=$(q far.bench.svc.cluster.local | head -1)
[[ -n $FAR ]] || { echo "link_order.sh: far.bench did not resolve" >&2; exit 1; }
for _ in $(seq 120); do curl -sf --max-time 10 -o /dev/null "http://$FAR/" && break; sleep 1; done
curl -sf --max-time 10 -o /dev/null "http://$FAR/" || { echo "link_order.sh: no request through the tunnel" >&2; cat "$WORK/agent-a.log" "$WORK/agent-b.log" >&2; exit 1; }
urls=(); for _ in $(seq 50); do urls+=("http://$FAR/"); done
curl -sf --max-time 60 "${urls[@]}" >/dev/null  # keep-alive: one connection
for _ in $(seq 20); do curl -sf --max-time 10 -o /dev/null "http://$FAR/"; done
# Many connections at once, as a benchmark's load (wrk: keep-alive, then a connection each).
wrk -t1 -c8 -d3s "http://$FAR/" >/dev/null
wrk -t1 -c8 -d3s -H 'Connection: close' "http://$FAR/" >/dev/null
iperf3 -c "$FAR" -p 5201 -n 16M >/dev/null
iperf3 -c "$FAR" -p 5201 -n 16M -R >/dev/null
sleep 3
kill -TERM $AGENT $AGENT_B; wait $AGENT || true; wait $AGENT_B || true

# shellcheck disable=SC2086 # ORDER_PROFILES is a list of files
python3 - "$BIN" "$OUT" "$WORK"/callgrind-*.out ${ORDER_PROFILES:-} <<'PY'
import collections, re, subprocess, sys
binary, out, *profiles = sys.argv[1:]
cost = collections.Counter()
for profile in profiles:
    name_of = {}
    obj = fn = None
    in_call = False
    for line in open(profile, errors="replace"):
        m = re.match(r"^(c?ob|c?fn|c?f[lie])=\((\d+)\)(?: (.*))?$", line.rstrip("\n"))
        if m:
            kind, ident, name = m.groups()
            key = ("ob" if kind.endswith("ob") else "fn" if kind.endswith("fn") else "fl", ident)
            if name is not None:
                name_of[key] = name
            if kind == "ob":
                obj = name_of.get(key)
            elif kind == "fn":
                fn, in_call = name_of.get(key), False
        elif line.startswith("calls="):
            in_call = True
        elif line[:1].isdigit() or line[:1] in "+-*":
            if in_call:
                in_call = False  # the cost line after calls= is the callee's inclusive cost
            elif obj and obj.endswith(binary.rsplit("/", 1)[-1]) and fn:
                cost[re.sub(r"'\d+$", "", fn)] += int(line.split()[1])
sizes = {}
for l in subprocess.run(["nm", "-S", "--defined-only", binary], capture_output=True, text=True).stdout.splitlines():
    p = l.split()
    if len(p) == 4 and p[2] in "tTwW":
        sizes[p[3]] = int(p[1], 16)
ran = [n for n, _ in cost.most_common() if n in sizes]
with open(out, "w") as f:
    f.write("# Functions a node agent runs, most expensive first: generated by bench/link_order.sh.\n")
    f.write("# Release builds lay these out first in .text (crates/edgemesh/build.rs).\n")
    f.writelines(n + "\n" for n in ran)
print(f"link_order.sh: {len(ran)} functions, {sum(sizes[n] for n in ran) / 2**20:.2f} MiB of "
      f"{sum(sizes.values()) / 2**20:.2f} MiB of code -> {out}")
PY

#!/usr/bin/env bash
# coexist_edgemesh.sh -- KubeEdge EdgeMesh v1.17 (Go) and our agent side by side on the same two nodes,
# each with its default ports, as during a switch from EdgeMesh (issue #21; README "Coming from EdgeMesh").
#
#   Topology: network namespaces cx{a,b} = nodes a and b on a bridge (cxbr), 10.78.0.1/.2; the backend
#   (nginx, 10.244.2.5:80 on b's lo) is reachable from a only through a tunnel. Each node runs:
#   - EdgeMesh: EdgeMesh v1.17's default agent config (crates/edgemesh/tests/fixtures/, the
#     edgemesh-agent-cfg ConfigMap: edgeProxy + edgeTunnel on; edgeDNS on, as EdgeMode turns it on),
#     with only the PSK path moved off /etc, against the fake metaServer (shared/bench/fake-kube-api.py,
#     service default/web, clusterIP 10.96.0.10): its DNS on 169.254.96.16:53 (device edgemesh0), its
#     tunnel on 20006 with mDNS (0.0.0.0:5353) to find its peer, iptables rules for the cluster IP.
#   - ours, phase 1: defaults but the node's directories and `--tunnel`: DNS 127.0.0.1:15053, admin
#     127.0.0.1:15020, tunnel 20007 with mDNS, VIPs in 127.251.0.0/16 (the same service from manifests).
#   - ours, phase 2: node mode as shipped (--intercept nftables, device edge0) with the DNS address of a
#     switch (--dns-listen 169.254.96.17:53, EdgeMesh keeps 169.254.96.16 meanwhile); then the switch
#     itself on node a: EdgeMesh stopped (SIGTERM), ours restarted on 169.254.96.16:53; then the roll
#     back: ours stopped, EdgeMesh started again.
#   Phase 0 is a control: ours with the DNS address of before (127.0.0.1:5353) on both nodes breaks
#   EdgeMesh's mDNS, so it never finds its peer (as reported in issue #21): the checks can fail.
#   Checks (from node a): each agent's DNS answers and each proxies the service across nodes; EdgeMesh
#   finds its peer (no "failed to find any peer"); neither fails to bind; EdgeMesh's rules go with it.
#   Prints PASS/FAIL per check; exit status 1 if any failed. Logs and `ss` listings go to OUT.
#
# usage: bench/coexist_edgemesh.sh [-o OUTDIR]
# Needs root, nginx, dig, curl, iptables, nft, python3, and the EdgeMesh binary: EMBIN (default
# /var/tmp/emgo/edgemesh-agent), built offline from EdgeMesh's vendor/ by
#   EM_GIT=<bare git dir of github.com/kubeedge/edgemesh> WORK=/var/tmp/emgo shared/bench/edgemesh_go_compare.sh -b
# (apt-get install golang-go iptables; about 3 min on 2 cores). CI cannot build it (no GitHub there):
# this script is run by hand and its output committed under bench/results/.
# Our agent: OURS (default: $CARGO_TARGET_DIR/debug/edgemesh, else target/debug/edgemesh).
set -uo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
EMBIN=${EMBIN:-/var/tmp/emgo/edgemesh-agent}
OURS=${OURS:-${CARGO_TARGET_DIR:-$ROOT/target}/debug/edgemesh}
FAKEAPI=${FAKEAPI:-${SHARED_BENCH:-$ROOT/../shared/bench}/fake-kube-api.py}
FIXTURE=$ROOT/crates/edgemesh/tests/fixtures/edgemesh-v1.17.0-agent-configmap.yaml
OUT=""
while getopts o: o; do case $o in o) OUT=$OPTARG ;; *) sed -n '2,30p' "$0" >&2; exit 2 ;; esac; done
log() { printf '[%(%H:%M:%S)T] %s\n' -1 "$*" | tee -a "$OUT/run.log" >&2; }
die() { log "FATAL: $*"; exit 1; }
[ "$(id -u)" = 0 ] || { echo "needs root" >&2; exit 1; }
for f in "$EMBIN" "$OURS"; do [ -x "$f" ] || { echo "missing executable $f" >&2; exit 1; }; done
[ -f "$FAKEAPI" ] || { echo "missing $FAKEAPI" >&2; exit 1; }
OUT=${OUT:-$(mktemp -d /tmp/coexist.XXXX)}
mkdir -p "$OUT"; : > "$OUT/run.log"
W=$(mktemp -d /tmp/coexist-w.XXXX); chmod 755 "$W"
P=cx$$; NA=${P}a; NB=${P}b; NBR=${P}br
PIDS=(); declare -A APID
FAILS=0
pass() { log "PASS: $*"; }
fail() { log "FAIL: $*"; FAILS=$((FAILS + 1)); }
check() { local what=$1; shift; if "$@" >>"$OUT/checks.log" 2>&1; then pass "$what"; else fail "$what"; fi; }

cleanup() {
  local p n
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done
  sleep 1
  for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null; done
  for n in $NA $NB $NBR; do
    ip netns pids $n 2>/dev/null | xargs -r kill -9 2>/dev/null   # only processes of this script live there
    ip netns del $n 2>/dev/null
  done
  rm -rf "$W"
}
trap cleanup EXIT; trap 'exit 130' INT TERM

# ---------------------------------------------------------------- topology
ip netns add $NBR; ip -n $NBR link add br0 type bridge; ip -n $NBR link set br0 up; ip -n $NBR link set lo up
i=1; for n in $NA $NB; do
  ip netns add $n; ip -n $n link set lo up
  ip link add v$n type veth peer name p$n; ip link set v$n netns $n; ip link set p$n netns $NBR
  ip -n $NBR link set p$n master br0; ip -n $NBR link set p$n up
  ip -n $n link set v$n name eth0; ip -n $n addr add 10.78.0.$i/24 dev eth0; ip -n $n link set eth0 up
  ip -n $n route add 10.96.0.0/12 dev eth0   # a node routes the service range somewhere (DNAT starts from a route)
  i=$((i + 1))
done
ip -n $NB addr add 10.244.2.5/32 dev lo
mkdir -p "$W/www"; echo "served by node b" > "$W/www/index.html"; chmod -R a+rX "$W/www"
cat > "$W/nginx.conf" <<EOF
worker_processes 1; daemon off; pid $W/nginx.pid; error_log $W/nginx.err warn;
events {}
http { access_log off; client_body_temp_path $W; proxy_temp_path $W; fastcgi_temp_path $W; uwsgi_temp_path $W; scgi_temp_path $W;
  server { listen 10.244.2.5:80; root $W/www; } }
EOF
ip netns exec $NB nginx -c "$W/nginx.conf" >"$W/nginx.out" 2>&1 & PIDS+=($!)
# The fake metaServer lists no Namespace; EdgeMesh's DNS (CoreDNS's kubernetes plugin) answers NXDOMAIN for
# names in a namespace it does not know, so this copy lists "default".
sed 's|("NamespaceList", "v1", \[\])|("NamespaceList", "v1", [{"kind": "Namespace", "apiVersion": "v1", "metadata": {"name": "default", "uid": "44444444-4444-4444-4444-444444444444", "resourceVersion": RV}}])|' \
  "$FAKEAPI" > "$W/fake-kube-api.py"
grep -q '"name": "default", "uid": "4444' "$W/fake-kube-api.py" || die "could not add the default Namespace to $FAKEAPI"
for n in $NA $NB; do
  ip netns exec $n python3 "$W/fake-kube-api.py" --port 10550 --backend-ip 10.244.2.5 --node b --cluster-ip 10.96.0.10 \
    --log "$W/fakeapi-$n.log" >/dev/null 2>&1 & PIDS+=($!)
done
ip netns exec $NA curl -s -m 1 -o /dev/null http://10.244.2.5/ && die "the backend is reachable from a without a tunnel"

# ---------------------------------------------------------------- EdgeMesh: its default config
head -c 32 /dev/urandom | base64 > "$W/em-psk"; chmod 600 "$W/em-psk"
# The bare config inside the fixture ConfigMap (data["edgemesh-agent.yaml"]), then the PSK path.
python3 - "$FIXTURE" "$W/em-config.yaml" "$W/em-psk" <<'PY'
import sys, re
text = open(sys.argv[1]).read()
docs = text.split("\n---\n")
cfg = next(d for d in docs if "edgemesh-agent.yaml: |" in d)
body = cfg.split("edgemesh-agent.yaml: |\n", 1)[1]
lines = [l[4:] if l.startswith("    ") else l for l in body.splitlines()]
out = "\n".join(lines).rstrip() + "\n"
out = out.replace("  edgeTunnel:\n    enable: true\n", "  edgeTunnel:\n    enable: true\n    psk:\n      enable: true\n      path: %s\n" % sys.argv[3])
open(sys.argv[2], "w").write(out)
PY
cp "$W/em-config.yaml" "$OUT/edgemesh-config.yaml"
start_em() {   # node
  local n=$1 d=$W/em-$1; mkdir -p "$d"
  ip netns exec $P$n env -u KUBERNETES_PORT NODE_NAME=$n NAMESPACE=kubeedge \
    bash -c "cd '$d' && exec '$EMBIN' --config-file '$W/em-config.yaml'" >>"$d/agent.log" 2>&1 & PIDS+=($!); APID[em:$n]=$!
}
stop() {   # key
  local p=${APID[$1]:-}; [ -n "$p" ] || return 0
  kill "$p" 2>/dev/null; for _ in $(seq 40); do kill -0 "$p" 2>/dev/null || break; sleep 0.25; done
  kill -9 "$p" 2>/dev/null; unset "APID[$1]"
}

# ---------------------------------------------------------------- ours
M=$W/manifests; mkdir -p "$M"
for n in a b; do
  printf -- "---\napiVersion: v1\nkind: Node\nmetadata: {name: $n, annotations: {edgemesh.io/peer-id: \"%s\"}}\n" \
    "$("$OURS" id --key-file "$W/key-$n" | tail -1)" >> "$M/nodes.yaml"
done
cat > "$M/web.yaml" <<EOF
apiVersion: v1
kind: Service
metadata: {name: web, namespace: default}
spec:
  clusterIP: 10.96.0.10
  ports: [{name: http, port: 80, targetPort: 80}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-1, namespace: default, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
ports: [{name: http, port: 80}]
endpoints: [{addresses: ["10.244.2.5"], conditions: {ready: true}, nodeName: b}]
EOF
start_ours() {   # node extra-args...
  local n=$1; shift
  ip netns exec $P$n "$OURS" agent --node-name $n --manifest-dir "$M" --state-dir "$W/state-$n" --key-file "$W/key-$n" \
    --tunnel --dns-upstream 127.0.0.1:9 "$@" >>"$W/ours-$n.log" 2>&1 & PIDS+=($!); APID[ours:$n]=$!
}
ready() {   # node : our /readyz answers 200 within 30 s
  local i; for i in $(seq 60); do
    ip netns exec $P$1 curl -sf -m 1 -o /dev/null http://127.0.0.1:15020/readyz && return 0; sleep 0.5; done; return 1
}
eventually() {   # seconds command... : retried every 0.5 s
  local t=$1 i; shift; for i in $(seq $((t * 2))); do "$@" && return 0; sleep 0.5; done; "$@"
}
dig_a() {   # server port name expected
  local got; got=$(ip netns exec $NA dig +time=1 +tries=1 +short -p "$2" @"$1" "$3" 2>&1)
  echo "dig @$1 -p $2 $3 -> $got"; grep -qx "$4" <<<"$got"
}
get() {   # url : the backend's page through it
  local got; got=$(ip netns exec $NA curl -s -m 3 "$1" 2>&1); echo "curl $1 -> $got"; [ "$got" = "served by node b" ]
}
our_vip() {
  ip netns exec $NA dig +short +time=1 +tries=1 -p 15053 @127.0.0.1 web.default.svc.cluster.local | head -1
}
listeners() {   # label
  for n in a b; do echo "== $1 node $n"; ip netns exec $P$n ss -lntup; done >> "$OUT/listeners.txt"
}
no_bind_errors() {   # file...
  ! grep -iE "address already in use|failed to find any peer|bind: " "$@"
}
em_found_peer() { grep -qiE "discovery.*(found|new) peer|New stream|\[MDNS\] Discovery found peer" "$W/em-a/agent.log"; }

# ---------------------------------------------------------------- phase 0: the old default, as a control
# Before issue #21 our DNS defaulted to 127.0.0.1:5353, the mDNS port: with it, EdgeMesh could not bind
# 0.0.0.0:5353 and never found its peer. This phase shows the script detects that breakage.
log "phase 0 (control): ours with the old DNS default 127.0.0.1:5353 on a and b, then EdgeMesh on both"
for n in a b; do start_ours $n --dns-listen 127.0.0.1:5353; done
check "ours ready on a and b (DNS on 127.0.0.1:5353)" eval 'ready a && ready b'
for n in a b; do start_em $n; done
em_cannot_bind() { grep -E "5353: bind: address already in use" "$W/em-a/agent.log" "$W/em-b/agent.log"; }
em_no_peer() { grep -E "failed to find any peer in table" "$W/em-a/agent.log"; }
check "control: EdgeMesh cannot bind mDNS (0.0.0.0:5353) beside a DNS server on 127.0.0.1:5353" eventually 20 em_cannot_bind
check "control: so EdgeMesh finds no peer (failed to find any peer in table)" eventually 20 \
  eval 'ip netns exec $NA curl -s -m 2 -o /dev/null http://10.96.0.10/; em_no_peer'
check "control: and cannot proxy the cluster IP across nodes (10 tries)" eval '! eventually 5 get http://10.96.0.10/'
for n in a b; do cp "$W/em-$n/agent.log" "$OUT/edgemesh-$n-control.log" 2>/dev/null; done
for k in ours:a ours:b em:a em:b; do stop $k; done
rm -rf "$W/em-a" "$W/em-b"; : > "$W/ours-a.log"; : > "$W/ours-b.log"

# ---------------------------------------------------------------- phase 1: both with their defaults
log "phase 1: EdgeMesh (default config) and ours (defaults + --tunnel) on both nodes"
for n in a b; do start_em $n; done
sleep 2   # EdgeMesh creates edgemesh0 and binds first, as an agent already installed would have
for n in a b; do start_ours $n; done
check "ours ready on a and b" eval 'ready a && ready b'
check "EdgeMesh DNS (169.254.96.16:53) answers the cluster IP" eventually 30 dig_a 169.254.96.16 53 web.default.svc.cluster.local 10.96.0.10
check "EdgeMesh proxies the cluster IP across nodes (peer found over mDNS + tunnel 20006)" eventually 60 get http://10.96.0.10/
VIP=$(eventually 10 our_vip)
check "our DNS (127.0.0.1:15053) answers the service's VIP ($VIP)" eventually 10 dig_a 127.0.0.1 15053 web.default.svc.cluster.local "127\.251\..*"
check "ours proxies the VIP across nodes (tunnel 20007, mDNS)" eventually 30 get "http://$VIP/"
listeners "phase 1"
check "EdgeMesh holds 20006 and 169.254.96.16:53, ours 20007, 127.0.0.1:15053 and 15020; both 5353" \
  eval "ip netns exec $NA ss -lntup | tee -a '$OUT/checks.log' | awk '{print \$5, \$7}' > '$W/ss-a'; \
    grep -q ':20006 .*edgemesh-agent' '$W/ss-a' && grep -q ':20007 .*edgemesh\"' '$W/ss-a' && \
    grep -q '169.254.96.16:53 .*edgemesh-agent' '$W/ss-a' && grep -q '127.0.0.1:15053 .*edgemesh\"' '$W/ss-a' && \
    grep -q '127.0.0.1:15020 .*edgemesh\"' '$W/ss-a' && grep -q ':5353 .*edgemesh-agent' '$W/ss-a' && grep -q ':5353 .*edgemesh\"' '$W/ss-a'"
check "devices: edgemesh0 (EdgeMesh) with 169.254.96.16, no edge0 from ours (mode none)" \
  eval "ip -n $NA -br addr show edgemesh0 | grep -q 169.254.96.16 && ! ip -n $NA link show edge0"
check "no bind failure or lost peer in either agent's log" no_bind_errors "$W/em-a/agent.log" "$W/em-b/agent.log" "$W/ours-a.log" "$W/ours-b.log"

# ---------------------------------------------------------------- phase 2: ours in node mode, the switch
log "phase 2: ours in node mode (edge0, nftables) beside EdgeMesh, DNS on the switch address 169.254.96.17:53"
for n in a b; do stop ours:$n; done
for n in a b; do start_ours $n --intercept nftables --dns-listen 169.254.96.17:53; done
check "ours ready in node mode on a and b" eval 'ready a && ready b'
check "our DNS (169.254.96.17:53) answers the cluster IP" eventually 10 dig_a 169.254.96.17 53 web.default.svc.cluster.local 10.96.0.10
check "EdgeMesh DNS still answers" dig_a 169.254.96.16 53 web.default.svc.cluster.local 10.96.0.10
ours_opened() {   # our agent's proxied connections on a so far
  ip netns exec $NA curl -s -m 2 http://127.0.0.1:15020/metrics |
    awk '/^edgemesh_tcp_connections_opened_total/ {n += $NF} END {print n + 0}'
}
before=$(ours_opened)
check "the cluster IP is served (whichever agent's rule comes first)" eventually 20 get http://10.96.0.10/
for _ in 1 2 3 4; do get http://10.96.0.10/ >/dev/null 2>&1; done
log "info: of 5 connections to the cluster IP, our agent carried $(( $(ours_opened) - before )) (the rest: EdgeMesh's rule came first)"
check "devices: edge0 holds 169.254.96.17, edgemesh0 169.254.96.16" \
  eval "ip -n $NA -br addr show edge0 | grep -q 169.254.96.17 && ip -n $NA -br addr show edgemesh0 | grep -q 169.254.96.16"
ip netns exec $NA nft list ruleset > "$OUT/ruleset-both-a.txt" 2>&1
listeners "phase 2, both"
log "switch on node a: stop EdgeMesh, move our DNS to 169.254.96.16:53"
stop em:a
check "EdgeMesh removed its iptables rules for the cluster IP on exit" \
  eval "! ip netns exec $NA iptables-save -t nat | grep -q 10.96.0.10"
check "the cluster IP is served by ours alone" eventually 20 get http://10.96.0.10/
stop ours:a; start_ours a --intercept nftables
check "ours ready on 169.254.96.16:53" ready a
check "our DNS answers on 169.254.96.16:53 (clusterDNS unchanged)" eventually 10 dig_a 169.254.96.16 53 web.default.svc.cluster.local 10.96.0.10
check "the cluster IP is served after the switch" eventually 20 get http://10.96.0.10/
listeners "phase 2, after the switch on a"
log "roll back on node a: stop ours, start EdgeMesh again"
stop ours:a
check "ours removed its table and device on exit" eval "! ip netns exec $NA nft list table inet edgemesh && ! ip -n $NA link show edge0"
start_em a
check "EdgeMesh DNS answers again" eventually 30 dig_a 169.254.96.16 53 web.default.svc.cluster.local 10.96.0.10
check "EdgeMesh proxies the cluster IP again" eventually 60 get http://10.96.0.10/

# ---------------------------------------------------------------- logs
for n in a b; do cp "$W/em-$n/agent.log" "$OUT/edgemesh-$n.log" 2>/dev/null; cp "$W/ours-$n.log" "$OUT/ours-$n.log" 2>/dev/null; done
cp "$W/fakeapi-$NA.log" "$OUT/fakeapi-a.log" 2>/dev/null
{ echo "EdgeMesh: $EMBIN ($(git --git-dir=/work/.mirror/kubeedge+edgemesh/repo rev-parse --short v1.17.0 2>/dev/null || echo v1.17.0))"
  echo "ours: $("$OURS" --version) ($OURS)"; echo "kernel $(uname -r)"; } > "$OUT/meta.txt"
log "done: $FAILS failed check(s); output in $OUT"
((FAILS == 0))

#!/usr/bin/env bash
# Userspace instructions per proxied request or connection, under callgrind:
# a load-independent measure of the agent's own CPU cost (kernel time is not
# counted), for comparing two builds on a busy machine.
#
# usage: bench/proxy_callgrind.sh [-t rr|conn|h2] [-d SECS] [-p agent|gateway|nginx] [-- AGENT ARGS...]
#   -t rr    keep-alive requests (wrk -t2 -c50), the default
#   -t conn  a new connection per request (Connection: close)
#   -t h2    HTTP/2 prior knowledge, 10 connections x 10 streams (h2load)
#   -d SECS  wrk duration (default 8)
#   -p nginx the peer instead of the agent: nginx as an HTTP reverse proxy
#            (upstream keep-alive, one worker, no master process, so that
#            valgrind sees the worker), on the same address: its
#            instructions per request beside the agent's
#   -p gateway `edgemesh gateway` instead of the agent: a Gateway with an
#            HTTP listener on the same address and ROUTES (default 20)
#            HTTPRoutes by hostname (as bench/gateway.sh), the first,
#            shop.example, to the service; every mode's requests carry
#            `Host: shop.example`
#   -s       (with -p gateway) HTTPS: the listener terminates TLS (a
#            self-signed certificate for shop.example from
#            gateway.certificates); wrk connects to https://shop.example
#            (SNI and Host), the name given the listener's address in an
#            /etc/hosts of wrk's own mount namespace (unshare -m); with
#            -t conn every request is a full handshake (wrk does not resume)
#   extra arguments go to `edgemesh agent` (e.g. --proxy-workers 1)
#
# Starts a local nginx (keep-alive, 100-byte file) and the agent under
# valgrind with one service in front of it, zeroes the counters once the
# agent serves, runs wrk, dumps the counters and prints one JSON line:
# instructions (Ir) of all the agent's threads divided by wrk's requests.
# Environment: EDGEMESH_BIN (default: target/release/edgemesh), CG_VIP
# (127.129.0.20), CG_PORT (26180), CG_BACKEND_PORT (26181).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
TEST=rr DUR=8 PROXY=agent TLS=
while getopts t:d:p:s o; do case $o in
  t) TEST=$OPTARG ;; d) DUR=$OPTARG ;; p) PROXY=$OPTARG ;; s) TLS=1 ;; *) sed -n '2,33p' "$0" >&2; exit 2 ;;
esac; done
[[ -z $TLS || ( $PROXY == gateway && $TEST != h2 ) ]] || { echo "proxy_callgrind.sh: -s is for -p gateway, rr or conn" >&2; exit 2; }
shift $((OPTIND - 1))
[[ ${1:-} == -- ]] && shift
VIP=${CG_VIP:-127.129.0.20} PORT=${CG_PORT:-26180} BPORT=${CG_BACKEND_PORT:-26181}
BIN=${EDGEMESH_BIN:-${CARGO_TARGET_DIR:-$ROOT/target}/release/edgemesh}
[[ -x $BIN ]] || { echo "proxy_callgrind.sh: no release binary at $BIN" >&2; exit 1; }
for t in nginx wrk valgrind callgrind_control; do
  command -v $t >/dev/null || { echo "proxy_callgrind.sh: needs $t" >&2; exit 1; }
done

W=$(mktemp -d -t edgemesh-cg.XXXXXX)
chmod 755 "$W"
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  [[ -n ${CG_KEEP:-} ]] || rm -rf "$W"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

mkdir -p "$W/www" "$W/tmp" "$W/manifests"
head -c 100 /dev/zero | tr '\0' x >"$W/www/f"
cat >"$W/nginx.conf" <<EOF
worker_processes 1;
daemon off;
pid $W/nginx.pid;
error_log $W/nginx-error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 10000000;
  client_body_temp_path $W/tmp; proxy_temp_path $W/tmp; fastcgi_temp_path $W/tmp;
  uwsgi_temp_path $W/tmp; scgi_temp_path $W/tmp;
  server { listen 127.0.0.1:$BPORT backlog=4096; root $W/www; }
}
EOF
nginx -p "$W" -e "$W/nginx-error.log" -c "$W/nginx.conf" &
PIDS+=($!)
cat >"$W/manifests/cg.yaml" <<YAML
apiVersion: v1
kind: Service
metadata: {name: cg, namespace: bench}
spec:
  clusterIP: $VIP
  ports: [{name: http, port: $PORT, targetPort: $BPORT}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: cg-1, namespace: bench, labels: {kubernetes.io/service-name: cg}}
addressType: IPv4
ports: [{name: http, port: $BPORT}]
endpoints: [{addresses: [127.0.0.1], nodeName: bench}]
YAML
if [[ $PROXY == gateway ]]; then
  listener="{name: web, port: $PORT, protocol: HTTP}"
  if [[ -n $TLS ]]; then
    openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=shop.example -addext subjectAltName=DNS:shop.example \
      -keyout "$W/shop.key" -out "$W/shop.crt" 2>/dev/null
    printf 'gateway:\n  certificates:\n  - {namespace: bench, name: shop-tls, certFile: %s, keyFile: %s}\n' \
      "$W/shop.crt" "$W/shop.key" >"$W/config.yaml"
    listener="{name: web, port: $PORT, protocol: HTTPS, hostname: shop.example, tls: {certificateRefs: [{name: shop-tls}]}}"
    printf '127.0.0.1 localhost\n%s shop.example\n' "$VIP" >"$W/hosts"
    set -- -c "$W/config.yaml" "$@"
  fi
  {
    printf -- '---\napiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {name: site, namespace: bench}\n'
    printf 'spec:\n  gatewayClassName: edgemesh\n  listeners:\n  - %s\n' "$listener"
    for i in $(seq 1 "${ROUTES:-20}"); do
      host=shop$i.example; [[ $i != 1 ]] || host=shop.example
      printf -- '---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: r%s, namespace: bench}\n' "$i"
      printf 'spec:\n  parentRefs: [{name: site}]\n  hostnames: [%s]\n  rules: [{backendRefs: [{name: cg, port: %s}]}]\n' "$host" "$PORT"
    done
  } >>"$W/manifests/cg.yaml"
  # (The Service's cluster IP moves off the listener's address.)
  sed -i "s/clusterIP: $VIP/clusterIP: ${VIP%.*}.21/" "$W/manifests/cg.yaml"
fi
if [[ $PROXY == nginx ]]; then
  h2=; [[ $TEST == h2 ]] && h2=" http2"
  cat >"$W/proxy.conf" <<EOF
worker_processes 1;
daemon off;
master_process off;
pid $W/proxy.pid;
error_log $W/proxy-error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 10000000;
  client_body_temp_path $W/tmp; proxy_temp_path $W/tmp; fastcgi_temp_path $W/tmp;
  uwsgi_temp_path $W/tmp; scgi_temp_path $W/tmp;
  upstream backend { server 127.0.0.1:$BPORT; keepalive 64; }
  server {
    listen $VIP:$PORT backlog=4096$h2;
    location / { proxy_pass http://backend; proxy_http_version 1.1; proxy_set_header Connection ""; }
  }
}
EOF
  valgrind --tool=callgrind --callgrind-out-file="$W/cg.out" --dump-instr=no \
    nginx -p "$W" -e "$W/proxy-error.log" -c "$W/proxy.conf" >"$W/agent.log" 2>&1 &
else
  cmd=agent; [[ $PROXY == gateway ]] && cmd=(gateway --gateway-listen "$VIP")
valgrind --tool=callgrind --callgrind-out-file="$W/cg.out" --dump-instr=no \
  "$BIN" "${cmd[@]}" --node-name bench --manifest-dir "$W/manifests" --vip-cidr "$VIP/24" \
  --dns-listen 127.0.0.1:0 --admin-listen 127.0.0.1:0 --dns-upstream 127.0.0.1:9 --log-level warn \
  --state-dir "$W/state" "$@" >"$W/agent.log" 2>&1 &
fi
AGENT=$!
PIDS+=($AGENT)
# (nginx's listener speaks HTTP/2 only when the test does.)
probe=(curl -sf -o /dev/null -H 'Host: shop.example')
[[ $TEST == h2 ]] && probe+=(--http2-prior-knowledge)
url=http://$VIP:$PORT/f
if [[ -n $TLS ]]; then
  probe+=(--cacert "$W/shop.crt" --resolve "shop.example:$PORT:$VIP")
  url=https://shop.example:$PORT/f
fi
for _ in $(seq 600); do
  "${probe[@]}" "$url" && break
  sleep 0.1
done
"${probe[@]}" "$url" || { cat "$W/agent.log" >&2; exit 1; }
callgrind_control -z "$AGENT" >/dev/null 2>&1
hdr=(-H 'Host: shop.example')
[[ $TEST == conn ]] && hdr+=(-H 'Connection: close')
if [[ $TEST == h2 ]]; then
  out=$(h2load -c10 -m10 -t2 -D"$DUR" "http://$VIP:$PORT/f")
  requests=$(awk '/^requests:/ {print $8}' <<<"$out")
else
  if [[ -n $TLS ]]; then
    # (shop.example resolves to the listener in wrk's own /etc/hosts only.)
    out=$(unshare -m sh -c 'mount --bind "$1" /etc/hosts && shift && exec "$@"' sh "$W/hosts" \
      wrk -t2 -c50 -d"${DUR}s" "${hdr[@]}" "$url")
  else
    out=$(wrk -t2 -c50 -d"${DUR}s" "${hdr[@]}" "$url")
  fi
  requests=$(awk '/requests in/ {print $1}' <<<"$out")
fi
callgrind_control -d "$AGENT" >/dev/null 2>&1
sleep 1
# The dump after the zeroing covers exactly the wrk run: the file of part 1
# (the rest, to exit, goes to the file without a suffix).
ir=$(awk '/^summary:/ {print $2}' "$W/cg.out.1")
python3 -c "import json,sys; r=int(sys.argv[3]); print(json.dumps({'proxy':sys.argv[1],'test':sys.argv[2],'tls':sys.argv[5]=='1','requests':r,'ir':int(sys.argv[4]),'ir_per_request':round(int(sys.argv[4])/max(r,1)),'args':sys.argv[6:]}))" \
  "$PROXY" "$TEST" "$requests" "$ir" "${TLS:-0}" "$@"

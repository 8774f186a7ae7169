#!/usr/bin/env bash
# The edge gateway (issue #17) against nginx as a reverse proxy with the same
# routes: requests/s and p99 over HTTP and over HTTPS (TLS terminated by the
# proxy), keep-alive GETs of a 100-byte file, in one run.
#
# usage: bench/gateway.sh [-r REPS] [-d SECS] [-c CONNS] [-o DIR] [-H] [-2]
#   -r  repetitions (default 3)      -d  seconds per run (default 10)
#   -c  client connections (default 50; h2load: CONNS/5 connections x 10 streams)
#   -o  results directory (default bench/results/<date>-s13/gateway)
#   -H  also a new TLS handshake per request (`Connection: close`; full
#       handshakes: wrk does not resume): modes hs-nginx, hs-gateway
#   -2  also HTTP/2 by ALPN over TLS (`h2load -cCONNS/5 -m10 -t2`): modes
#       h2-nginx, h2-gateway
#
# In a network namespace of its own (em-gw-<pid>, lo only; /etc/netns/<ns>/hosts
# names shop.example 127.0.0.1 so that wrk sends that Host and SNI):
#   backend  nginx, 1 worker, a 100-byte file, 127.0.0.1:8081;
#   nginx    the peer, `worker_processes 2` (the agent runs 2 workers here),
#            upstream keep-alive (64 idle connections): server_name
#            shop.example on :8082 (HTTP) and :8442 (HTTPS, TLS 1.3; h2 by
#            ALPN; no session cache or tickets), plus ROUTES-1 other server
#            names it never matches;
#   gateway  the release agent with --gateway: a Gateway with an HTTP
#            listener :8090 and an HTTPS one :8443 (the same certificate, from
#            gateway.certificates), HTTPRoute shop.example -> Service `web`
#            (port http: per request) -> the backend, plus ROUTES-1 other
#            hostnames (ROUTES, default 20).
# Modes (alternating order between repetitions): h1-direct, h1-nginx,
# h1-gateway, tls-nginx, tls-gateway (and those of -H and -2);
# `wrk -t2 -cCONNS -dSECS --latency`.
# Reported (table.md): per mode the median req/s, p50, p99 and CPU ms of the
# proxy's cgroup; the median of paired ratios gateway/nginx per repetition,
# and what TLS costs each (HTTPS / its own cleartext).
# The shared harness's quiet check (../shared/bench/lib.sh) runs before each
# run; runs without a quiet machine are counted in the table.
# EDGEMESH_BIN overrides the binary (default: the release build). Needs root,
# nginx, wrk, openssl, curl, jq (and h2load for -2).
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd); ROOT=$(cd "$HERE/.." && pwd)
QUIET_MAX_WAIT=${QUIET_MAX_WAIT:-60} QUIET_POLL=${QUIET_POLL:-20}
SHARED=${SHARED_BENCH:-$ROOT/../shared/bench}; . "$SHARED/lib.sh"
REPS=3 DUR=10 CONNS=50 OUT="" ROUTES=${ROUTES:-20} HANDSHAKES="" H2=""
while getopts r:d:c:o:H2 o; do case $o in
  r) REPS=$OPTARG ;; d) DUR=$OPTARG ;; c) CONNS=$OPTARG ;; o) OUT=$OPTARG ;;
  H) HANDSHAKES=1 ;; 2) H2=1 ;;
  *) sed -n '2,37p' "$0" >&2; exit 2 ;;
esac; done
OUT=${OUT:-$ROOT/bench/results/$(date -u +%Y-%m-%d)-s13/gateway}
H2_CONNS=$(( CONNS / 5 > 0 ? CONNS / 5 : 1 ))
BIN=${EDGEMESH_BIN:-${CARGO_TARGET_DIR:-$ROOT/target}/release/edgemesh}
[[ -x $BIN ]] || { echo "gateway.sh: no agent binary at $BIN (cargo build --release -p edgemesh, or EDGEMESH_BIN)" >&2; exit 1; }
for t in nginx wrk openssl curl jq ${H2:+h2load}; do
  command -v $t >/dev/null || [[ -x /usr/sbin/$t ]] || { echo "gateway.sh: needs $t" >&2; exit 1; }
done
[[ $(id -u) == 0 ]] || { echo "gateway.sh: run as root (a network namespace, cgroups)" >&2; exit 1; }

NS=em-gw-$$ ADMIN=127.0.0.1:15020
W=$(mktemp -d /tmp/edgemesh-gw.XXXXXX); chmod 755 "$W"
AGENT_CG="" AGENT_PID="" PROXY_CG="" PROXY_PID="" BACKEND_PID=""
cleanup() {
  set +e
  watch_stop
  svc_stop "$AGENT_CG" "$AGENT_PID"
  svc_stop "$PROXY_CG" "$PROXY_PID"
  [[ -z $BACKEND_PID ]] || { kill "$BACKEND_PID" 2>/dev/null; wait "$BACKEND_PID" 2>/dev/null; }
  ip netns del "$NS" 2>/dev/null
  rm -rf "/etc/netns/$NS" "$W"
}
trap cleanup EXIT; trap 'exit 130' INT TERM
mkdir -p "$OUT"

ip netns add "$NS"; ip -n "$NS" link set lo up
mkdir -p "/etc/netns/$NS"; printf '127.0.0.1 localhost shop.example\n' > "/etc/netns/$NS/hosts"
mkdir -p "$W/www" "$W/proxy" "$W/agent/manifests" "$W/tls"
head -c 100 /dev/zero | tr '\0' x > "$W/www/f" && chmod 644 "$W/www/f"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 -subj /CN=shop.example \
  -addext subjectAltName=DNS:shop.example -keyout "$W/tls/key.pem" -out "$W/tls/cert.pem" 2>/dev/null

cat > "$W/backend.conf" <<EOF
worker_processes 1; daemon off; master_process off; pid $W/backend.pid; error_log $W/backend.err;
events { worker_connections 4096; }
http { access_log off; keepalive_requests 1000000;
  server { listen 127.0.0.1:8081; root $W/www; } }
EOF
decoys=""; for i in $(seq 2 "$ROUTES"); do decoys+="  server { listen 127.0.0.1:8082; listen 127.0.0.1:8442 ssl http2; server_name shop$i.example; return 404; }
"; done
cat > "$W/proxy/nginx.conf" <<EOF
worker_processes 2; daemon off; pid $W/proxy/nginx.pid; error_log $W/proxy/error.log;
events { worker_connections 4096; }
http { access_log off; keepalive_requests 1000000;
  ssl_certificate $W/tls/cert.pem; ssl_certificate_key $W/tls/key.pem; ssl_protocols TLSv1.3;
  ssl_session_cache off; ssl_session_tickets off;
  upstream backend { server 127.0.0.1:8081; keepalive 64; keepalive_requests 1000000; }
  server { listen 127.0.0.1:8082; listen 127.0.0.1:8442 ssl http2; server_name shop.example;
    location / { proxy_pass http://backend; proxy_http_version 1.1; proxy_set_header Connection ""; } }
$decoys}
EOF
{
  printf 'apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: bench}\nspec:\n'
  printf '  ports: [{name: http, port: 80, targetPort: 8081}]\n---\n'
  printf 'apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: web-1\n  namespace: bench\n'
  printf '  labels: {kubernetes.io/service-name: web}\naddressType: IPv4\nports: [{name: http, port: 8081}]\n'
  printf 'endpoints: [{addresses: [127.0.0.1], nodeName: bench}]\n---\n'
  printf 'apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {name: site, namespace: bench}\n'
  printf 'spec:\n  gatewayClassName: edgemesh\n  listeners:\n  - {name: web, port: 8090, protocol: HTTP}\n'
  printf '  - name: tls\n    port: 8443\n    protocol: HTTPS\n    tls: {certificateRefs: [{name: shop-tls}]}\n'
  for i in $(seq 1 "$ROUTES"); do
    host=shop$i.example; [[ $i != 1 ]] || host=shop.example
    printf -- '---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: r%s, namespace: bench}\n' "$i"
    printf 'spec:\n  parentRefs: [{name: site}]\n  hostnames: [%s]\n  rules: [{backendRefs: [{name: web, port: 80}]}]\n' "$host"
  done
} > "$W/agent/manifests/bench.yaml"
cat > "$W/agent/config.yaml" <<EOF
gateway:
  certificates:
  - {namespace: bench, name: shop-tls, certFile: $W/tls/cert.pem, keyFile: $W/tls/key.pem}
EOF

ip netns exec "$NS" nginx -c "$W/backend.conf" & BACKEND_PID=$!
wait_listen "$NS" tcp 127.0.0.1 8081
svc_start nginx "$NS" "$W/proxy.log" "nginx -p $W/proxy -c $W/proxy/nginx.conf"
PROXY_CG=$SVC_CG PROXY_PID=$SVC_PID
wait_listen "$NS" tcp 127.0.0.1 8442
svc_start agent "$NS" "$W/agent.log" \
  "$BIN gateway -c $W/agent/config.yaml --node-name bench --manifest-dir $W/agent/manifests --state-dir $W/agent/state \
   --gateway-listen 127.0.0.1 --vip-cidr 127.99.0.0/24 --dns-listen 127.0.0.1:0 --admin-listen $ADMIN \
   --dns-upstream 127.0.0.1:9 --log-level warn"
AGENT_CG=$SVC_CG AGENT_PID=$SVC_PID
for _ in $(seq 200); do in_ns "$NS" curl -sf -o /dev/null "http://$ADMIN/readyz" && break; sleep 0.05; done

url_of() {
  case $1 in
    h1-direct) echo "http://127.0.0.1:8081/f" ;; h1-nginx) echo "http://shop.example:8082/f" ;;
    h1-gateway) echo "http://shop.example:8090/f" ;;
    tls-nginx|hs-nginx|h2-nginx) echo "https://shop.example:8442/f" ;;
    tls-gateway|hs-gateway|h2-gateway) echo "https://shop.example:8443/f" ;;
  esac
}
MODES="h1-direct h1-nginx h1-gateway tls-nginx tls-gateway${HANDSHAKES:+ hs-nginx hs-gateway}${H2:+ h2-nginx h2-gateway}"
for mode in $MODES; do
  for _ in $(seq 100); do in_ns "$NS" curl -skf -o /dev/null "$(url_of "$mode")" && continue 2; sleep 0.1; done
  echo "gateway.sh: $mode ($(url_of "$mode")) does not answer" >&2; cat "$W/agent.log" >&2; exit 1
done
# The HTTPS listener really serves the configured certificate (and h2 by ALPN).
in_ns "$NS" curl -sf --cacert "$W/tls/cert.pem" -o /dev/null "$(url_of tls-gateway)" \
  || { echo "gateway.sh: the gateway's HTTPS listener does not present the certificate" >&2; exit 1; }
if [[ -n $H2 ]]; then
  for mode in h2-nginx h2-gateway; do
    [[ $(in_ns "$NS" curl -sk --http2 -o /dev/null -w '%{http_version}' "$(url_of $mode)") == 2 ]] \
      || { echo "gateway.sh: $mode does not speak h2 by ALPN" >&2; exit 1; }
  done
fi

# h2load_json RAW LOG: its req/s and errors from the summary, p50/p99 from the per-request log.
h2load_json() {
  python3 - "$1" "$2" <<'PY'
import json, re, sys
text = open(sys.argv[1]).read()
durs = sorted(int(l.split("\t")[2]) for l in open(sys.argv[2]) if l.count("\t") >= 2)
m = re.search(r"finished in ([\d.]+)(m?s), ([\d.]+) req/s", text)
req = re.search(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, (\d+) errored", text)
pct = lambda p: durs[min(len(durs) - 1, int(len(durs) * p))] if durs else 0
print(json.dumps({"requests": int(req.group(4)) if req else 0, "req_s": float(m.group(3)) if m else 0.0,
                  "p50_us": pct(0.50), "p99_us": pct(0.99), "failed": int(req.group(5)) + int(req.group(6)) if req else -1}))
PY
}

RES=$OUT/results.jsonl; : > "$RES"
run() { # REP MODE
  local rep=$1 mode=$2 quiet=true c0 c1 raw="$OUT/rep$1-$2.txt" cg=$PROXY_CG url json
  [[ $mode != *-gateway ]] || cg=$AGENT_CG
  url=$(url_of "$mode")
  wait_quiet || quiet=false
  watch_start; c0=$(svc_cpu_ns "$cg")
  case $mode in
    hs-*) in_ns "$NS" wrk -t2 -c"$CONNS" -d"${DUR}s" --latency -H "Connection: close" -s "$SHARED/wrk_report.lua" "$url" > "$raw" ;;
    h2-*) in_ns "$NS" h2load -c"$H2_CONNS" -m10 -t2 -D"$DUR" --log-file="$W/h2.log" "$url" > "$raw" ;;
    *) in_ns "$NS" wrk -t2 -c"$CONNS" -d"${DUR}s" --latency -s "$SHARED/wrk_report.lua" "$url" > "$raw" ;;
  esac
  if [[ $mode == h2-* ]]; then json=$(h2load_json "$raw" "$W/h2.log"); rm -f "$W/h2.log"; else json=$(grep '^{' "$raw"); fi
  c1=$(svc_cpu_ns "$cg"); watch_stop
  [[ $WATCH_SEEN == 0 ]] || quiet=false
  jq -c --argjson rep "$rep" --arg mode "$mode" --argjson quiet "$quiet" --argjson cpu "$(( (c1 - c0) / 1000000 ))" \
    '{rep: $rep, mode: $mode, quiet: $quiet, proxy_cpu_ms: $cpu} + .' <<< "$json" | tee -a "$RES"
}

log "warm-up"; for m in h1-nginx h1-gateway tls-nginx tls-gateway; do in_ns "$NS" wrk -t2 -c"$CONNS" -d3s "$(url_of $m)" > /dev/null; done
for rep in $(seq "$REPS"); do
  if (( rep % 2 )); then order=$MODES; else order=$(tr ' ' '\n' <<< "$MODES" | tac | tr '\n' ' '); fi
  for mode in $order; do log "rep $rep: $mode"; run "$rep" "$mode"; done
done

{
  echo "date: $(date -u +%FT%TZ)"; echo "host: $(nproc) CPUs, $(uname -r)"
  echo "agent: $BIN ($("$BIN" --version 2>/dev/null || echo '?')); git: $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?')"
  echo "nginx: $(nginx -v 2>&1 | cut -d/ -f2); wrk -t2 -c$CONNS -d${DUR}s --latency (hs-*: -H 'Connection: close'); h2load -c$H2_CONNS -m10 -t2 -D$DUR; reps: $REPS; routes: $ROUTES"
  echo "TLS: nginx TLS 1.3 ($(openssl version | cut -d' ' -f1-2)); gateway rustls (ring), TLS 1.2 and 1.3 offered; both ECDSA P-256"
  [[ -z ${BENCH_SMOKE:-} ]] || echo "BENCH_SMOKE: no quiet checks (a smoke test: the numbers mean nothing)"
  echo "load at end: $(cut -d' ' -f1-3 /proc/loadavg)"
  echo "runs that did not pass the quiet check (waited up to ${QUIET_MAX_WAIT}s) or saw a compile: \
$(jq -s '[.[] | select(.quiet == false)] | length' "$RES") of $(jq -s length "$RES")"
} > "$OUT/env.txt"

python3 - "$RES" "$OUT/env.txt" > "$OUT/table.md" <<'PY'
import json, statistics as st, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
env = open(sys.argv[2]).read().strip().splitlines()
by = {(r["rep"], r["mode"]): r for r in rows}
reps = sorted({r["rep"] for r in rows})
modes = [m for m in ["h1-direct", "h1-nginx", "h1-gateway", "tls-nginx", "tls-gateway", "hs-nginx", "hs-gateway",
                     "h2-nginx", "h2-gateway"] if any(r["mode"] == m for r in rows)]
med = lambda mode, key: st.median(r[key] for r in rows if r["mode"] == mode)
def ratio(a, b, key):
    v = [by[(p, a)][key] / by[(p, b)][key] for p in reps if (p, a) in by and (p, b) in by and by[(p, b)][key]]
    return f"{st.median(v):.2f}x ({min(v):.2f}-{max(v):.2f})" if v else "-"
busy = sum(1 for r in rows if not r["quiet"])
print("# Edge gateway vs nginx (reverse proxy, same routes), 100-byte keep-alive GETs\n")
print("| pair | req/s | p99 | caveats |")
print("|---|---:|---:|---|")
caveat = f"{busy} of {len(rows)} runs not quiet" if busy else "quiet"
pairs = [("h1-gateway", "h1-nginx"), ("tls-gateway", "tls-nginx"), ("hs-gateway", "hs-nginx"), ("h2-gateway", "h2-nginx"),
         ("h1-gateway", "h1-direct"), ("tls-gateway", "h1-gateway"), ("tls-nginx", "h1-nginx")]
for a, b in pairs:
    if a in modes and b in modes:
        print(f"| {a} / {b} | {ratio(a, b, 'req_s')} | {ratio(a, b, 'p99_us')} | {caveat} |")
print("\n| mode | req/s | p50 us | p99 us | proxy CPU ms/run |")
print("|---|---:|---:|---:|---:|")
for m in modes:
    print(f"| {m} | {med(m,'req_s'):,.0f} | {med(m,'p50_us'):.0f} | {med(m,'p99_us'):.0f} | {med(m,'proxy_cpu_ms'):.0f} |")
failed = sum(r.get("failed", 0) + r.get("err_status", 0) + r.get("err_connect", 0) for r in rows)
print(f"\nFailed requests (all runs): {failed}.")
print("\n```\n" + "\n".join(env) + "\n```")
PY
cat "$OUT/table.md"

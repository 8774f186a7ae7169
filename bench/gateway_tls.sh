#!/usr/bin/env bash
# The edge gateway's TLS termination (issue #17): requests/s and p99 through
# an HTTPS listener of the gateway against nginx terminating TLS as a
# reverse proxy to the same backend, paired per repetition.
#
# usage: bench/gateway_tls.sh [-r REPS] [-d SECS] [-c CONNS] [-o DIR]
#   -r  repetitions (default 3)      -d  seconds per run (default 10)
#   -c  client connections (default 50; h2load: CONNS/5 connections x 10 streams)
#   -o  results directory (default bench/results/<date>-s12-gwtls/gateway_tls)
#
# In a network namespace of its own (em-gwtls-<pid>, lo only):
#   backend  nginx, 1 worker, a 100-byte file: 127.0.0.1:8081 (HTTP/1.1);
#   nginx    the peer: TLS (1.2/1.3, the same ECDSA P-256 certificate) and
#            HTTP/1.1 + h2 (ALPN) on 127.0.0.1:8443, reverse proxy to the
#            backend with keep-alive (64 idle), `worker_processes 2`;
#   gateway  the gateway alone (crates/gateway/examples/gateway_serve.rs,
#            release, 2 runtime threads): an HTTPS listener on
#            127.0.0.1:9443 with the same certificate, one HTTPRoute to the
#            backend's Service.
# Modes, each repetition running all in an order that alternates (forward,
# then reversed):
#   h1-direct h1-nginx h1-gateway   `wrk -t2 -cCONNS -dSECS --latency`, keep-alive GETs
#                                   (h1-direct: cleartext to the backend, for scale)
#   hs-nginx hs-gateway             the same with `Connection: close`: a new
#                                   TLS handshake (full, wrk does not resume) per request
#   h2-nginx h2-gateway             `h2load -cCONNS/5 -m10 -t2 -DSECS`, h2 by ALPN
# Reported (table.md): per mode the median req/s, p50, p99 and CPU ms of
# the proxy's cgroup; paired ratios gateway/nginx (median over repetitions,
# min-max). Raw output, results.jsonl, env.txt, table.md go to DIR.
# GATEWAY_BIN overrides the binary (default: the release example).
# Needs root, nginx, wrk, h2load, openssl, curl, jq.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd); ROOT=$(cd "$HERE/.." && pwd)
QUIET_MAX_WAIT=${QUIET_MAX_WAIT:-60} QUIET_POLL=${QUIET_POLL:-20}
SHARED=${SHARED_BENCH:-$ROOT/../shared/bench}; . "$SHARED/lib.sh"
REPS=3 DUR=10 CONNS=50 OUT=""
while getopts r:d:c:o: o; do case $o in
  r) REPS=$OPTARG ;; d) DUR=$OPTARG ;; c) CONNS=$OPTARG ;; o) OUT=$OPTARG ;;
  *) sed -n '2,30p' "$0" >&2; exit 2 ;;
esac; done
OUT=${OUT:-$ROOT/bench/results/$(date -u +%Y-%m-%d)-s12-gwtls/gateway_tls}
BIN=${GATEWAY_BIN:-${CARGO_TARGET_DIR:-$ROOT/target}/release/examples/gateway_serve}
[[ -x $BIN ]] || { echo "gateway_tls.sh: no gateway at $BIN (cargo build --release -p edgemesh-gateway --example gateway_serve)" >&2; exit 1; }
for t in nginx wrk h2load curl jq openssl; do
  command -v $t >/dev/null || [[ -x /usr/sbin/$t ]] || { echo "gateway_tls.sh: needs $t" >&2; exit 1; }
done
[[ $(id -u) == 0 ]] || { echo "gateway_tls.sh: run as root (a network namespace, cgroups)" >&2; exit 1; }
H2_CONNS=$(( CONNS / 5 > 0 ? CONNS / 5 : 1 ))

NS=em-gwtls-$$
W=$(mktemp -d /tmp/edgemesh-gwtls.XXXXXX); chmod 755 "$W"
GW_CG="" GW_PID="" PROXY_CG="" PROXY_PID="" BACKEND_PID=""
cleanup() {
  set +e
  watch_stop
  svc_stop "$GW_CG" "$GW_PID"
  svc_stop "$PROXY_CG" "$PROXY_PID"
  [[ -z $BACKEND_PID ]] || { kill "$BACKEND_PID" 2>/dev/null || true; wait "$BACKEND_PID" 2>/dev/null || true; }
  ip netns del "$NS" 2>/dev/null || true
  rm -rf "$W"
}
trap cleanup EXIT; trap 'exit 130' INT TERM
mkdir -p "$OUT"

ip netns add "$NS"; ip -n "$NS" link set lo up
mkdir -p "$W/www" "$W/proxy" && head -c 100 /dev/zero | tr '\0' x > "$W/www/f" && chmod 644 "$W/www/f"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj /CN=bench.example.com \
  -addext subjectAltName=DNS:bench.example.com -keyout "$W/key.pem" -out "$W/cert.pem" 2>/dev/null
chmod 644 "$W/key.pem"
cat > "$W/backend.conf" <<EOF
worker_processes 1; daemon off; master_process off; pid $W/backend.pid; error_log $W/backend.err;
events { worker_connections 4096; }
http { access_log off; keepalive_requests 1000000;
  server { listen 127.0.0.1:8081; root $W/www; } }
EOF
cat > "$W/proxy/nginx.conf" <<EOF
worker_processes 2; daemon off; pid $W/proxy/nginx.pid; error_log $W/proxy/error.log;
events { worker_connections 4096; }
http { access_log off; keepalive_requests 1000000;
  upstream backend { server 127.0.0.1:8081; keepalive 64; keepalive_requests 1000000; }
  server { listen 127.0.0.1:8443 ssl http2; ssl_certificate $W/cert.pem; ssl_certificate_key $W/key.pem;
    ssl_protocols TLSv1.2 TLSv1.3; ssl_session_cache off; ssl_session_tickets off;
    location / { proxy_pass http://backend; proxy_http_version 1.1; proxy_set_header Connection ""; } } }
EOF
cat > "$W/objects.yaml" <<EOF
kind: Gateway
metadata: {name: edge, namespace: bench}
spec:
  gatewayClassName: edgemesh
  listeners: [{name: https, port: 9443, protocol: HTTPS, tls: {certificateRefs: [{name: bench-tls}]}}]
---
kind: HTTPRoute
metadata: {name: web, namespace: bench}
spec:
  parentRefs: [{name: edge}]
  rules: [{backendRefs: [{name: web, port: 80}]}]
EOF

ip netns exec "$NS" nginx -c "$W/backend.conf" & BACKEND_PID=$!
wait_listen "$NS" tcp 127.0.0.1 8081
svc_start nginx "$NS" "$W/proxy.log" "nginx -p $W/proxy -c $W/proxy/nginx.conf"
PROXY_CG=$SVC_CG PROXY_PID=$SVC_PID
wait_listen "$NS" tcp 127.0.0.1 8443
svc_start gateway "$NS" "$W/gateway.log" \
  "$BIN --objects $W/objects.yaml --listen 127.0.0.1 --cert bench/bench-tls=$W/cert.pem,$W/key.pem \
   --service bench/web:80=127.0.0.1:8081"
GW_CG=$SVC_CG GW_PID=$SVC_PID
wait_listen "$NS" tcp 127.0.0.1 9443 || { cat "$W/gateway.log" >&2; exit 1; }
for url in "https://bench.example.com:8443/f" "https://bench.example.com:9443/f"; do
  for v in --http1.1 --http2; do
    in_ns "$NS" curl -sf $v --cacert "$W/cert.pem" -o /dev/null \
      --resolve "bench.example.com:8443:127.0.0.1" --resolve "bench.example.com:9443:127.0.0.1" "$url" \
      || { echo "gateway_tls.sh: $url ($v) does not answer" >&2; cat "$W/gateway.log" >&2; exit 1; }
  done
done

url_of() {
  case $1 in
    h1-direct) echo "http://127.0.0.1:8081/f" ;;
    h1-nginx|hs-nginx|h2-nginx) echo "https://127.0.0.1:8443/f" ;;
    h1-gateway|hs-gateway|h2-gateway) echo "https://127.0.0.1:9443/f" ;;
  esac
}
cg_of() { case $1 in *-gateway) echo "$GW_CG" ;; *) echo "$PROXY_CG" ;; esac; }

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
  local rep=$1 mode=$2 quiet=true c0 c1 raw="$OUT/rep$1-$2.txt" url json cg
  url=$(url_of "$mode"); cg=$(cg_of "$mode")
  wait_quiet || quiet=false
  watch_start; c0=$(svc_cpu_ns "$cg")
  case $mode in
    h1-*) in_ns "$NS" wrk -t2 -c"$CONNS" -d"${DUR}s" --latency -s "$SHARED/wrk_report.lua" "$url" > "$raw" ;;
    hs-*) in_ns "$NS" wrk -t2 -c"$CONNS" -d"${DUR}s" --latency -H "Connection: close" -s "$SHARED/wrk_report.lua" "$url" > "$raw" ;;
    h2-*) in_ns "$NS" h2load -c"$H2_CONNS" -m10 -t2 -D"$DUR" --log-file="$W/h2.log" "$url" > "$raw" ;;
  esac
  if [[ $mode == h2-* ]]; then json=$(h2load_json "$raw" "$W/h2.log"); rm -f "$W/h2.log"; else json=$(grep '^{' "$raw"); fi
  c1=$(svc_cpu_ns "$cg"); watch_stop
  [[ $WATCH_SEEN == 0 ]] || quiet=false
  jq -c --argjson rep "$rep" --arg mode "$mode" --argjson quiet "$quiet" --argjson cpu "$(( (c1 - c0) / 1000000 ))" \
    '{rep: $rep, mode: $mode, quiet: $quiet, proxy_cpu_ms: $cpu} + .' <<< "$json" | tee -a "$RES"
}

MODES="h1-direct h1-nginx h1-gateway hs-nginx hs-gateway h2-nginx h2-gateway"
log "warm-up"; for m in h1-nginx h1-gateway; do in_ns "$NS" wrk -t2 -c"$CONNS" -d3s "$(url_of $m)" > /dev/null; done
for rep in $(seq "$REPS"); do
  if (( rep % 2 )); then order=$MODES; else order=$(tr ' ' '\n' <<< "$MODES" | tac | tr '\n' ' '); fi
  for mode in $order; do log "rep $rep: $mode"; run "$rep" "$mode"; done
done

{
  echo "date: $(date -u +%FT%TZ)"; echo "host: $(nproc) CPUs, $(uname -r)"
  echo "gateway: $BIN"; echo "git: $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?')"
  echo "nginx: $(nginx -v 2>&1 | cut -d/ -f2) (OpenSSL $(openssl version | cut -d' ' -f2)); certificate: ECDSA P-256, self-signed"
  echo "wrk -t2 -c$CONNS -d${DUR}s --latency (hs-*: -H 'Connection: close'); h2load -c$H2_CONNS -m10 -t2 -D$DUR; reps: $REPS"
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
modes = [m for m in ["h1-direct", "h1-nginx", "h1-gateway", "hs-nginx", "hs-gateway", "h2-nginx", "h2-gateway"]
         if any(r["mode"] == m for r in rows)]
def med(mode, key):
    return st.median(r[key] for r in rows if r["mode"] == mode)
def ratio(a, b, key):
    v = [by[(p, a)][key] / by[(p, b)][key] for p in reps if (p, a) in by and (p, b) in by and by[(p, b)][key]]
    return f"{st.median(v):.2f}x ({min(v):.2f}-{max(v):.2f})" if v else "-"
print("# Gateway HTTPS listener vs nginx terminating TLS, 100-byte GETs\n")
print("| mode | req/s | p50 us | p99 us | proxy CPU ms/run |")
print("|---|---:|---:|---:|---:|")
for m in modes:
    print(f"| {m} | {med(m,'req_s'):,.0f} | {med(m,'p50_us'):.0f} | {med(m,'p99_us'):.0f} | {med(m,'proxy_cpu_ms'):.0f} |")
print("\nPaired ratios gateway / nginx (median over repetitions, min-max):\n")
print("| pair | req/s | p99 | CPU per run |")
print("|---|---:|---:|---:|")
for a, b in [("h1-gateway", "h1-nginx"), ("hs-gateway", "hs-nginx"), ("h2-gateway", "h2-nginx")]:
    print(f"| {a} / {b} | {ratio(a, b, 'req_s')} | {ratio(a, b, 'p99_us')} | {ratio(a, b, 'proxy_cpu_ms')} |")
failed = sum(r.get("failed", 0) + r.get("err_status", 0) + r.get("err_connect", 0) for r in rows)
print(f"\nFailed requests (all runs): {failed}.")
busy = sum(1 for r in rows if not r["quiet"])
if busy:
    print(f"\n**Busy machine:** {busy} of {len(rows)} runs did not pass the shared harness's quiet check "
          "(no cargo/rustc running, < 15 % CPU busy) or saw a compile start during the run: "
          "the figures carry that noise (see the min-max of the ratios).")
print("\n```\n" + "\n".join(env) + "\n```")
PY
cat "$OUT/table.md"

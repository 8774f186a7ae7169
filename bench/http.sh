#!/usr/bin/env bash
# HTTP-aware proxying (issue #16): requests/s and p99 latency through the
# agent's HTTP path, against the backend directly and against nginx as an
# HTTP reverse proxy (keep-alive upstream), with the agent's L4 path rerun
# in the same run so that a regression there shows.
#
# usage: bench/http.sh [-r REPS] [-d SECS] [-c CONNS] [-o DIR]
#   -r  repetitions (default 3)      -d  seconds per run (default 10)
#   -c  client connections (default 50; h2load: CONNS/5 connections x 10 streams)
#   -o  results directory (default bench/results/<date>-s8/http)
#
# In a network namespace of its own (em-http-<pid>, lo only):
#   backend  nginx, 1 worker, a 100-byte file: 127.0.0.1:8081 (HTTP/1.1),
#            127.0.0.1:8084 (HTTP/2 cleartext, prior knowledge);
#   nginx    the peer: HTTP reverse proxy, `worker_processes 2` (the agent
#            runs 2 proxy workers here), upstream keep-alive (64 idle
#            connections), on 127.0.0.1:8082 (HTTP/1.1) and :8083 (h2c);
#   agent    the release agent, two services on the same backend:
#            `http` (port name http: per request) VIP 127.99.0.10:80 and
#            `l4` (port name tcp: per connection) VIP 127.99.0.11:80;
#   before   with BEFORE_BIN set: that binary (e.g. main before the HTTP
#            path) as a second agent, admin 127.0.0.1:15021, with `l4` on
#            VIP 127.99.1.11:80 (mode h1-l4-before: the ratio h1-l4 /
#            h1-l4-before shows an L4 regression directly) and, with
#            BEFORE_HTTP=1, `http` on VIP 127.99.1.10:80 (modes
#            h1-agent-before, h2-agent-before: the ratio h1-agent /
#            h1-agent-before shows what a change to the HTTP path did).
# Modes, each repetition running all of them in an order that alternates
# between repetitions (forward, then reversed):
#   h1-direct h1-nginx h1-agent h1-l4   `wrk -t2 -cCONNS -dSECS --latency`, keep-alive GETs
#   h2-direct h2-nginx h2-agent         `h2load -cCONNS/5 -m10 -t2 -DSECS`, HTTP/2 prior knowledge
# Reported (table.md): per mode the median req/s, p50 and p99, and the
# median over repetitions of paired ratios (agent/nginx, agent/direct,
# l4/direct) with their min-max; CPU ms of the agent's and nginx's cgroups
# per run; the busiest worker's share of the two busiest threads' CPU (0.50:
# even, 1.00: all on one; the agent's 2 proxy workers, nginx's 2 worker
# processes). h2load's p99 comes from its per-request log (--log-file).
#
# Before each run the shared harness's quiet check (../shared/bench/lib.sh:
# no cargo/rustc, < 15 % CPU busy) waits up to QUIET_MAX_WAIT seconds
# (default 60 here); a run that did not get a quiet machine or saw a compile
# is marked quiet=false and the table says how many. Raw wrk/h2load output,
# results.jsonl, env.txt and table.md go to DIR. EDGEMESH_BIN overrides the
# binary (default: the release build); AGENT_ARGS and BEFORE_ARGS are added
# to the two agents' command lines (e.g. BEFORE_BIN set to the same binary
# and AGENT_ARGS='--proxy-workers 1': one worker against two, paired). Needs root, nginx, wrk, h2load
# (Debian nghttp2-client), curl, jq.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd); ROOT=$(cd "$HERE/.." && pwd)
QUIET_MAX_WAIT=${QUIET_MAX_WAIT:-60} QUIET_POLL=${QUIET_POLL:-20}
SHARED=${SHARED_BENCH:-$ROOT/../shared/bench}; . "$SHARED/lib.sh"
REPS=3 DUR=10 CONNS=50 OUT=""
while getopts r:d:c:o: o; do case $o in
  r) REPS=$OPTARG ;; d) DUR=$OPTARG ;; c) CONNS=$OPTARG ;; o) OUT=$OPTARG ;;
  *) sed -n '2,40p' "$0" >&2; exit 2 ;;
esac; done
OUT=${OUT:-$ROOT/bench/results/$(date -u +%Y-%m-%d)-s8/http}
BIN=${EDGEMESH_BIN:-${CARGO_TARGET_DIR:-$ROOT/target}/release/edgemesh}
[[ -x $BIN ]] || { echo "http.sh: no agent binary at $BIN (cargo build --release -p edgemesh, or EDGEMESH_BIN)" >&2; exit 1; }
for t in nginx wrk h2load curl jq; do
  command -v $t >/dev/null || [[ -x /usr/sbin/$t ]] || { echo "http.sh: needs $t (h2load: apt-get install nghttp2-client)" >&2; exit 1; }
done
[[ $(id -u) == 0 ]] || { echo "http.sh: run as root (a network namespace, cgroups)" >&2; exit 1; }
H2_CONNS=$(( CONNS / 5 > 0 ? CONNS / 5 : 1 ))

NS=em-http-$$ VIP_HTTP=127.99.0.10 VIP_L4=127.99.0.11 ADMIN=127.0.0.1:15020
W=$(mktemp -d /tmp/edgemesh-http.XXXXXX); chmod 755 "$W"
AGENT_CG="" AGENT_PID="" PROXY_CG="" PROXY_PID="" BACKEND_PID="" BEFORE_CG="" BEFORE_PID=""
BEFORE_BIN=${BEFORE_BIN:-} VIP_BEFORE=127.99.1.11 VIP_HTTP_BEFORE=127.99.1.10 BEFORE_HTTP=${BEFORE_HTTP:-}
cleanup() {
  # Best effort: a part that was never started (no BEFORE_BIN) must not make
  # a finished run exit 1 under set -e.
  set +e
  watch_stop
  svc_stop "$AGENT_CG" "$AGENT_PID"
  svc_stop "$BEFORE_CG" "$BEFORE_PID"
  svc_stop "$PROXY_CG" "$PROXY_PID"
  [[ -z $BACKEND_PID ]] || { kill "$BACKEND_PID" 2>/dev/null || true; wait "$BACKEND_PID" 2>/dev/null || true; }
  ip netns del "$NS" 2>/dev/null || true
  rm -rf "$W"
}
trap cleanup EXIT; trap 'exit 130' INT TERM
mkdir -p "$OUT"

ip netns add "$NS"; ip -n "$NS" link set lo up
mkdir -p "$W/www" "$W/proxy" && head -c 100 /dev/zero | tr '\0' x > "$W/www/f" && chmod 644 "$W/www/f"
cat > "$W/backend.conf" <<EOF
worker_processes 1; daemon off; master_process off; pid $W/backend.pid; error_log $W/backend.err;
events { worker_connections 4096; }
http { access_log off; keepalive_requests 1000000;
  server { listen 127.0.0.1:8081; listen 127.0.0.1:8084 http2; root $W/www; } }
EOF
cat > "$W/proxy/nginx.conf" <<EOF
worker_processes 2; daemon off; pid $W/proxy/nginx.pid; error_log $W/proxy/error.log;
events { worker_connections 4096; }
http { access_log off; keepalive_requests 1000000;
  upstream backend { server 127.0.0.1:8081; keepalive 64; keepalive_requests 1000000; }
  server { listen 127.0.0.1:8082; listen 127.0.0.1:8083 http2;
    location / { proxy_pass http://backend; proxy_http_version 1.1; proxy_set_header Connection ""; } } }
EOF
mkdir -p "$W/agent/manifests"
svc() { # NAME VIP PORT_NAME
  printf 'apiVersion: v1\nkind: Service\nmetadata: {name: %s, namespace: bench}\nspec:\n  clusterIP: %s\n' "$1" "$2"
  printf '  ports: [{name: %s, port: 80, targetPort: 8081}]\n---\n' "$3"
  printf 'apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: %s-1\n  namespace: bench\n' "$1"
  printf '  labels: {kubernetes.io/service-name: %s}\naddressType: IPv4\nports: [{name: %s, port: 8081}]\n' "$1" "$3"
  printf 'endpoints: [{addresses: [127.0.0.1], nodeName: bench}]\n---\n'
}
{ svc http "$VIP_HTTP" http; svc l4 "$VIP_L4" tcp; } > "$W/agent/manifests/bench.yaml"
mkdir -p "$W/before/manifests"
{ svc l4 "$VIP_BEFORE" tcp; [[ -z $BEFORE_HTTP ]] || svc http "$VIP_HTTP_BEFORE" http; } > "$W/before/manifests/bench.yaml"

# (`ip netns exec` execs nginx: this is nginx's pid.)
ip netns exec "$NS" nginx -c "$W/backend.conf" & BACKEND_PID=$!
wait_listen "$NS" tcp 127.0.0.1 8081
svc_start nginx "$NS" "$W/proxy.log" "nginx -p $W/proxy -c $W/proxy/nginx.conf"
PROXY_CG=$SVC_CG PROXY_PID=$SVC_PID
wait_listen "$NS" tcp 127.0.0.1 8083
svc_start agent "$NS" "$W/agent.log" \
  "$BIN agent --node-name bench --manifest-dir $W/agent/manifests --state-dir $W/agent/state \
   --vip-cidr 127.99.0.0/24 --dns-listen 127.0.0.1:0 --admin-listen $ADMIN --dns-upstream 127.0.0.1:9 --log-level warn ${AGENT_ARGS:-}"
AGENT_CG=$SVC_CG AGENT_PID=$SVC_PID
for _ in $(seq 200); do in_ns "$NS" curl -sf -o /dev/null "http://$ADMIN/readyz" && break; sleep 0.05; done
MODES="h1-direct h1-nginx h1-agent h1-l4 h2-direct h2-nginx h2-agent"
if [[ -n $BEFORE_BIN ]]; then
  svc_start before "$NS" "$W/before.log" \
    "$BEFORE_BIN agent --node-name bench --manifest-dir $W/before/manifests --state-dir $W/before/state \
     --vip-cidr 127.99.1.0/24 --dns-listen 127.0.0.1:0 --admin-listen 127.0.0.1:15021 --dns-upstream 127.0.0.1:9 --log-level warn ${BEFORE_ARGS:-}"
  BEFORE_CG=$SVC_CG BEFORE_PID=$SVC_PID
  for _ in $(seq 200); do in_ns "$NS" curl -sf -o /dev/null "http://127.0.0.1:15021/readyz" && break; sleep 0.05; done
  in_ns "$NS" curl -sf -o /dev/null "http://$VIP_BEFORE/f" || { echo "http.sh: the BEFORE_BIN agent does not answer" >&2; cat "$W/before.log" >&2; exit 1; }
  MODES="$MODES h1-l4-before"
  [[ -z $BEFORE_HTTP ]] || MODES="$MODES h1-agent-before h2-agent-before"
fi
for url in "http://$VIP_HTTP/f" "http://$VIP_L4/f" "http://127.0.0.1:8082/f"; do
  in_ns "$NS" curl -sf -o /dev/null "$url" || { echo "http.sh: $url does not answer" >&2; cat "$W/agent.log" >&2; exit 1; }
done
for url in "http://$VIP_HTTP/f" "http://127.0.0.1:8083/f" "http://127.0.0.1:8084/f"; do
  in_ns "$NS" curl -sf --http2-prior-knowledge -o /dev/null "$url" || { echo "http.sh: $url (h2c) does not answer" >&2; exit 1; }
done
# The agent really proxies `http` per request: its HTTP metrics count requests.
HTTP_PATH=$(in_ns "$NS" curl -sf "http://$ADMIN/metrics" | grep -c '^edgemesh_http_requests_total' || true)

url_of() {
  case $1 in
    h1-direct) echo "http://127.0.0.1:8081/f" ;; h1-nginx) echo "http://127.0.0.1:8082/f" ;;
    h1-agent) echo "http://$VIP_HTTP/f" ;; h1-l4) echo "http://$VIP_L4/f" ;; h1-l4-before) echo "http://$VIP_BEFORE/f" ;;
    h2-direct) echo "http://127.0.0.1:8084/f" ;; h2-nginx) echo "http://127.0.0.1:8083/f" ;;
    h2-agent) echo "http://$VIP_HTTP/f" ;;
    h1-agent-before|h2-agent-before) echo "http://$VIP_HTTP_BEFORE/f" ;;
  esac
}

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

# thread_ticks CG: "tid ticks" (user + system, clock ticks) of every thread in the cgroup.
thread_ticks() {
  local p t
  for p in $(cat "$CG_CPU/$1/cgroup.procs"); do
    for t in /proc/"$p"/task/*; do awk -v t="${t##*/}" '{print t, $14 + $15}' "$t/stat" 2>/dev/null; done
  done
}
# busiest_share BEFORE AFTER: of the two threads that used the most CPU between
# the snapshots (the two proxy workers; nginx's two worker processes), the
# busier one's share: 0.5 is an even spread, 1.0 all on one.
busiest_share() {
  awk 'NR == FNR { b[$1] = $2; next } { d = $2 - b[$1]; if (d > m1) { m2 = m1; m1 = d } else if (d > m2) m2 = d }
       END { printf "%.2f", (m1 + m2 > 0) ? m1 / (m1 + m2) : 0 }' <(echo "$1") <(echo "$2")
}

RES=$OUT/results.jsonl; : > "$RES"
run() { # REP MODE
  local rep=$1 mode=$2 quiet=true a0 a1 n0 n1 raw="$OUT/rep$1-$2.txt" url json cg=$AGENT_CG
  url=$(url_of "$mode"); [[ $mode != *-before ]] || cg=$BEFORE_CG
  wait_quiet || quiet=false
  watch_start; a0=$(svc_cpu_ns "$cg"); n0=$(svc_cpu_ns "$PROXY_CG")
  local at0 nt0; at0=$(thread_ticks "$cg"); nt0=$(thread_ticks "$PROXY_CG")
  if [[ $mode == h1-* ]]; then
    in_ns "$NS" wrk -t2 -c"$CONNS" -d"${DUR}s" --latency -s "$SHARED/wrk_report.lua" "$url" > "$raw"
    json=$(grep '^{' "$raw")
  else
    in_ns "$NS" h2load -c"$H2_CONNS" -m10 -t2 -D"$DUR" --log-file="$W/h2.log" "$url" > "$raw"
    json=$(h2load_json "$raw" "$W/h2.log"); rm -f "$W/h2.log"
  fi
  a1=$(svc_cpu_ns "$cg"); n1=$(svc_cpu_ns "$PROXY_CG"); watch_stop
  local ashare nshare; ashare=$(busiest_share "$at0" "$(thread_ticks "$cg")")
  nshare=$(busiest_share "$nt0" "$(thread_ticks "$PROXY_CG")")
  [[ $WATCH_SEEN == 0 ]] || quiet=false
  jq -c --argjson rep "$rep" --arg mode "$mode" --argjson quiet "$quiet" \
    --argjson agent "$(( (a1 - a0) / 1000000 ))" --argjson nginx "$(( (n1 - n0) / 1000000 ))" \
    --argjson ashare "$ashare" --argjson nshare "$nshare" \
    '{rep: $rep, mode: $mode, quiet: $quiet, agent_cpu_ms: $agent, nginx_cpu_ms: $nginx,
      agent_busiest_worker: $ashare, nginx_busiest_worker: $nshare} + .' <<< "$json" | tee -a "$RES"
}

log "warm-up"; for m in h1-nginx h1-agent h1-l4 ${BEFORE_HTTP:+h1-agent-before}; do in_ns "$NS" wrk -t2 -c"$CONNS" -d3s "$(url_of $m)" > /dev/null; done
for rep in $(seq "$REPS"); do
  if (( rep % 2 )); then order=$MODES; else order=$(tr ' ' '\n' <<< "$MODES" | tac | tr '\n' ' '); fi
  for mode in $order; do log "rep $rep: $mode"; run "$rep" "$mode"; done
done

{
  echo "date: $(date -u +%FT%TZ)"; echo "host: $(nproc) CPUs, $(uname -r)"
  echo "agent: $BIN ($("$BIN" --version 2>/dev/null || echo '?'))"
  [[ -z $BEFORE_BIN ]] || echo "before: $BEFORE_BIN (h1-l4-before${BEFORE_HTTP:+, h1-agent-before, h2-agent-before})"
  echo "git: $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?')"
  echo "nginx: $(nginx -v 2>&1 | cut -d/ -f2); wrk -t2 -c$CONNS -d${DUR}s --latency; h2load -c$H2_CONNS -m10 -t2 -D$DUR; reps: $REPS"
  echo "agent HTTP path in use: edgemesh_http_requests_total series after the checks: $HTTP_PATH"
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
modes = [m for m in ["h1-direct", "h1-nginx", "h1-agent", "h1-agent-before", "h1-l4", "h1-l4-before", "h2-direct",
                     "h2-nginx", "h2-agent", "h2-agent-before"]
         if any(r["mode"] == m for r in rows)]
def med(mode, key):
    return st.median(r[key] for r in rows if r["mode"] == mode)
def ratio(a, b, key):
    v = [by[(p, a)][key] / by[(p, b)][key] for p in reps if (p, a) in by and (p, b) in by and by[(p, b)][key]]
    return f"{st.median(v):.2f}x ({min(v):.2f}-{max(v):.2f})" if v else "-"
print("# HTTP path vs nginx (HTTP reverse proxy) vs direct, 100-byte GETs\n")
print("| mode | req/s | p50 us | p99 us | agent CPU ms/run | nginx CPU ms/run | busiest worker's share |")
print("|---|---:|---:|---:|---:|---:|---:|")
def share(m):
    key = "nginx_busiest_worker" if "nginx" in m else "agent_busiest_worker"
    v = [r[key] for r in rows if r["mode"] == m and key in r]
    return f"{st.median(v):.2f}" if v and "direct" not in m else "-"
for m in modes:
    print(f"| {m} | {med(m,'req_s'):,.0f} | {med(m,'p50_us'):.0f} | {med(m,'p99_us'):.0f} | "
          f"{med(m,'agent_cpu_ms'):.0f} | {med(m,'nginx_cpu_ms'):.0f} | {share(m)} |")
print("\nPaired ratios (median over repetitions, min-max):\n")
print("| pair | req/s | p99 |")
print("|---|---:|---:|")
for a, b in [("h1-agent", "h1-nginx"), ("h2-agent", "h2-nginx"), ("h1-agent", "h1-direct"),
             ("h2-agent", "h2-direct"), ("h1-nginx", "h1-direct"), ("h1-l4", "h1-direct"),
             ("h1-l4", "h1-l4-before"), ("h1-agent", "h1-agent-before"), ("h2-agent", "h2-agent-before"),
             ("h1-agent-before", "h1-nginx"), ("h2-agent-before", "h2-nginx")]:
    if not any(r["mode"] == b for r in rows):
        continue
    print(f"| {a} / {b} | {ratio(a, b, 'req_s')} | {ratio(a, b, 'p99_us')} |")
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

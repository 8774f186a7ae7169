#!/usr/bin/env bash
# Agent memory per established proxied connection.
#
# usage: bench/conn_mem.sh [-n CONNS]   (default 2000)
#
# Starts the release agent with one service (VIP CONN_VIP:CONN_PORT) whose
# endpoint is a local nginx (keep-alive, 100-byte file), opens CONNS client
# connections through the agent, sends one HTTP/1.1 request on each and
# keeps them all open and idle; then compares the agent's RssAnon / VmRSS
# with the figures before the connections (after one warm-up request). Kernel
# socket and pipe buffers are not in the process's RSS, so the delta is the
# agent's own memory. Checks that nginx sees CONNS established connections
# (so every one is really proxied) and prints one JSON line.
#
# Environment: EDGEMESH_BIN (default: target/release/edgemesh), CONN_VIP
# (127.129.0.10), CONN_PORT (26080), CONN_BACKEND_PORT (26081),
# IDLE_SECS (2).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
N=2000
while getopts n: o; do case $o in
  n) N=$OPTARG ;; *) sed -n '2,17p' "$0" >&2; exit 2 ;;
esac; done
VIP=${CONN_VIP:-127.129.0.10} PORT=${CONN_PORT:-26080} BPORT=${CONN_BACKEND_PORT:-26081}
IDLE_SECS=${IDLE_SECS:-2}
BIN=${EDGEMESH_BIN:-${CARGO_TARGET_DIR:-$ROOT/target}/release/edgemesh}
[[ -x $BIN ]] || { echo "conn_mem.sh: no release binary at $BIN (cargo build --release -p edgemesh)" >&2; exit 1; }
for t in nginx curl python3 ss; do command -v $t >/dev/null || { echo "conn_mem.sh: needs $t" >&2; exit 1; }; done

W=$(mktemp -d -t edgemesh-connmem.XXXXXX)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$W"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

mkdir -p "$W/www" && head -c 100 /dev/zero | tr '\0' x >"$W/www/f"
chmod 755 "$W" "$W/www" && chmod 644 "$W/www/f" # nginx's workers are not root
cat >"$W/nginx.conf" <<EOF
worker_processes 1; daemon off; pid $W/nginx.pid; error_log $W/nginx.err;
worker_rlimit_nofile $((N + 512));
events { worker_connections $((N + 256)); }
http { access_log off; keepalive_timeout 600s; keepalive_requests 1000000;
       server { listen 127.0.0.1:$BPORT; root $W/www; } }
EOF
nginx -c "$W/nginx.conf" &
PIDS+=($!)

# The agent as the TCP harness runs it: one service at $VIP:$PORT, endpoint nginx.
EDGEMESH_BIN=$BIN "$ROOT/bench/agent_proxy.sh" "$VIP" "$PORT" 127.0.0.1 "$BPORT" "$W" 2>"$W/agent.log" &
AGENT=$!
PIDS+=("$AGENT")
for _ in $(seq 200); do
  curl -sf --max-time 2 -o /dev/null "http://$VIP:$PORT/f" && break
  kill -0 "$AGENT" 2>/dev/null || { echo "conn_mem.sh: agent exited:" >&2; cat "$W/agent.log" >&2; exit 1; }
  sleep 0.05
done
curl -sf --max-time 2 -o /dev/null "http://$VIP:$PORT/f" || { echo "conn_mem.sh: no answer through the agent" >&2; exit 1; }

status_kib() { awk -v k="$1:" '$1 == k { print $2 }' "/proc/$AGENT/status"; }
sleep "$IDLE_SECS"
ANON0=$(status_kib RssAnon) RSS0=$(status_kib VmRSS)

# The client: N connections, one request each, all kept open until stdin closes.
mkfifo "$W/hold"
cat >"$W/client.py" <<'EOF'
import socket, sys
vip, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
request = b"GET /f HTTP/1.1\r\nHost: conn\r\n\r\n"
conns = []
for _ in range(n):
    s = socket.create_connection((vip, port), timeout=10)
    s.sendall(request)
    got = b""
    while not (b"\r\n\r\n" in got and got.endswith(b"x" * 100)):
        chunk = s.recv(4096)
        if not chunk:
            sys.exit("connection closed by the proxy")
        got += chunk
    conns.append(s)
print(len(conns), flush=True)
sys.stdin.read()
EOF
python3 "$W/client.py" "$VIP" "$PORT" "$N" <"$W/hold" >"$W/client.out" &
CLIENT=$!
PIDS+=("$CLIENT")
exec 3>"$W/hold"
for _ in $(seq 1200); do
  [[ -s $W/client.out ]] && break
  kill -0 "$CLIENT" 2>/dev/null || { echo "conn_mem.sh: client failed" >&2; exit 1; }
  sleep 0.05
done
[[ $(cat "$W/client.out") == "$N" ]] || { echo "conn_mem.sh: client opened $(cat "$W/client.out") of $N" >&2; exit 1; }
sleep "$IDLE_SECS"
ANON1=$(status_kib RssAnon) RSS1=$(status_kib VmRSS)
BACKEND=$(ss -Htn state established "( sport = :$BPORT )" | wc -l)
exec 3>&-
[[ $BACKEND -ge $N ]] || { echo "conn_mem.sh: nginx sees $BACKEND of $N connections" >&2; exit 1; }

python3 - "$N" "$ANON0" "$ANON1" "$RSS0" "$RSS1" "$BACKEND" <<'EOF'
import json, sys
n, a0, a1, r0, r1, backend = map(int, sys.argv[1:])
print(json.dumps({
    "connections": n, "backend_established": backend,
    "rss_anon_before_kib": a0, "rss_anon_after_kib": a1, "rss_before_kib": r0, "rss_after_kib": r1,
    "anon_per_conn_kib": round((a1 - a0) / n, 2), "rss_per_conn_kib": round((r1 - r0) / n, 2),
}))
EOF

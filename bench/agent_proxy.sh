#!/usr/bin/env bash
# Runs the edgemesh agent as a plain TCP proxy for the shared benchmark
# harness: one Service whose clusterIP is LISTEN_IP (inside the VIP range, so
# it becomes the VIP) on LISTEN_PORT, with one endpoint at UPSTREAM.
#
# usage (as a tcp_bench.sh template):
#   'edgemesh=bench/agent_proxy.sh {listen_ip} {listen_port} {upstream_ip} {upstream_port} {workdir}'
# EDGEMESH_BIN overrides the binary (default: target/release/edgemesh);
# EDGEMESH_ARGS adds agent arguments (e.g. --proxy-workers 1); EDGEMESH_ADMIN sets the
# admin endpoint's address (default: a free port on 127.0.0.1).
set -euo pipefail
listen_ip=$1 listen_port=$2 upstream_ip=$3 upstream_port=$4 work=$5
here=$(cd "$(dirname "$0")/.." && pwd)
bin=${EDGEMESH_BIN:-${CARGO_TARGET_DIR:-$here/target}/release/edgemesh}
mkdir -p "$work/manifests"
cat > "$work/manifests/bench.yaml" <<YAML
apiVersion: v1
kind: Service
metadata: {name: bench, namespace: bench}
spec:
  clusterIP: $listen_ip
  ports: [{name: tcp, port: $listen_port, targetPort: $upstream_port}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: bench-1
  namespace: bench
  labels: {kubernetes.io/service-name: bench}
addressType: IPv4
ports: [{name: tcp, port: $upstream_port}]
endpoints: [{addresses: [$upstream_ip], nodeName: bench}]
YAML
exec "$bin" agent --node-name bench --manifest-dir "$work/manifests" --vip-cidr "$listen_ip/24" \
  --dns-listen 127.0.0.1:0 --admin-listen "${EDGEMESH_ADMIN:-127.0.0.1:0}" --dns-upstream 127.0.0.1:9 --log-level warn \
  --state-dir "$work/state" ${EDGEMESH_ARGS:-}

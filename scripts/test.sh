#!/usr/bin/env bash
# Runs the whole edgemesh test suite: formatting, lints, unit and end-to-end
# tests. Installs the real tools the tests drive (dig, curl, nginx, nft, ip, iperf3,
# miniupnpd) when they are missing and we are root; otherwise says what to install.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v dig >/dev/null || need+=(dnsutils)
command -v curl >/dev/null || need+=(curl)
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || need+=(nginx)
# Interception tests: nftables in network namespaces (as root).
command -v nft >/dev/null || [ -x /usr/sbin/nft ] || need+=(nftables)
command -v ip >/dev/null || [ -x /usr/sbin/ip ] || need+=(iproute2)
# Tunnel tests: bulk transfer through the tunnel.
command -v iperf3 >/dev/null || need+=(iperf3)
# State tests: a tmpfs in a mount namespace of their own (as root).
command -v unshare >/dev/null && command -v nsenter >/dev/null || need+=(util-linux)
command -v mount >/dev/null || [ -x /usr/bin/mount ] || need+=(mount)
# Tunnel port mapping: a UPnP router (its nftables build) in a router namespace; the Debian
# package does not start it (debconf's default).
[ -x /usr/sbin/miniupnpd ] || need+=(miniupnpd-nftables)
# Metrics: promtool checks every /metrics scrape a test takes.
command -v promtool >/dev/null || need+=(prometheus)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "installing: ${need[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  else
    echo "missing tools: ${need[*]} (install them, e.g. apt-get install ${need[*]})" >&2
    exit 1
  fi
fi

cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo test --workspace --locked "$@"
# The tunnel with its optional QUIC transport (`--features quic`).
cargo clippy -p edgemesh-tunnel --features quic --all-targets --locked -- -D warnings
cargo test -p edgemesh-tunnel --features quic --locked --test tunnel "$@"
# The agent built with QUIC: the relay, hole-punching and fault scenarios again, over QUIC
# addresses only (the tests pick them when built with the feature: `Transport::of_this_build`).
cargo clippy -p edgemesh --features quic --all-targets --locked -- -D warnings
cargo test -p edgemesh --features quic --locked --test tunnel_e2e "$@" -- a_node_behind_nat nodes_behind_two_nats
cargo test -p edgemesh --features quic --locked --test tunnel_faults_e2e "$@"

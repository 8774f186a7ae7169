#!/usr/bin/env bash
# Runs the whole edgemesh test suite: formatting, lints, unit and end-to-end
# tests. Installs the real tools the tests drive (dig, dnsmasq, curl, nginx, nft, ip, iperf3,
# miniupnpd, prometheus, buildah, podman) when they are missing and we are root; otherwise says
# what to install.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v dig >/dev/null || need+=(dnsutils)
# DNS tests: a real upstream with large records (dnsmasq, no service).
command -v dnsmasq >/dev/null || [ -x /usr/sbin/dnsmasq ] || need+=(dnsmasq-base)
command -v curl >/dev/null || need+=(curl)
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || need+=(nginx)
# Interception tests: nftables in network namespaces (as root).
command -v nft >/dev/null || [ -x /usr/sbin/nft ] || need+=(nftables)
command -v ip >/dev/null || [ -x /usr/sbin/ip ] || need+=(iproute2)
# Tunnel tests: bulk transfer through the tunnel.
command -v iperf3 >/dev/null || need+=(iperf3)
# The topology page (/ui) in a headless browser.
[ -x /usr/bin/chromium ] || need+=(chromium)
# State tests: a tmpfs in a mount namespace of their own (as root).
command -v unshare >/dev/null && command -v nsenter >/dev/null || need+=(util-linux)
command -v mount >/dev/null || [ -x /usr/bin/mount ] || need+=(mount)
# Tunnel port mapping: a UPnP router (its nftables build) in a router namespace; the Debian
# package does not start it (debconf's default).
[ -x /usr/sbin/miniupnpd ] || need+=(miniupnpd-nftables)
# Metrics: a real Prometheus server and promtool (no system server is started: see .ci/run).
[ -x /usr/bin/prometheus ] && [ -x /usr/bin/promtool ] || need+=(prometheus)
# Kernel fast path (crates/ebpf): clang and libbpf's headers compile the BPF programs; its
# tests count attached programs with bpftool and drive sockets from python3.
command -v clang >/dev/null || need+=(clang)
[ -f /usr/include/bpf/bpf_helpers.h ] || need+=(libbpf-dev)
command -v bpftool >/dev/null || [ -x /usr/sbin/bpftool ] || need+=(bpftool)
command -v python3 >/dev/null || need+=(python3)
# SOCKS5 entry: ssh to sshd in a node's namespace through `nc -X 5` (no system sshd is started:
# see .ci/run; the test runs its own).
[ -x /usr/sbin/sshd ] || need+=(openssh-server)
command -v ssh >/dev/null || need+=(openssh-client)
nc -h 2>&1 | grep -q -- '-X proxy_protocol' || need+=(netcat-openbsd)
# The agent image (deploy/build-image.sh, image_e2e): buildah builds it FROM scratch, podman runs
# it with runc (crun refuses hosts with hybrid cgroups, such as the development machine).
command -v buildah >/dev/null || need+=(buildah)
command -v podman >/dev/null || need+=(podman)
command -v runc >/dev/null || [ -x /usr/sbin/runc ] || need+=(runc)
# The edge gateway's TLS tests: test certificates, and `openssl s_client` as a real TLS client.
command -v openssl >/dev/null || need+=(openssl)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "installing: ${need[*]}"
    apt-get update -qq
    own_policy=
    if [ ! -e /usr/sbin/policy-rc.d ]; then
      printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod 755 /usr/sbin/policy-rc.d
      own_policy=1 && trap 'rm -f /usr/sbin/policy-rc.d' EXIT
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
    [ -z "$own_policy" ] || { rm -f /usr/sbin/policy-rc.d; trap - EXIT; }
  else
    echo "missing tools: ${need[*]} (install them, e.g. apt-get install ${need[*]})" >&2
    exit 1
  fi
fi

cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
# Supply chain (deny.toml): licences, duplicate major versions, crates.io only. Advisories need
# the RustSec database, which `cargo deny fetch` downloads on a connected machine: checked only
# where one is present, offline, saying which.
if command -v cargo-deny >/dev/null; then
  cargo deny --locked check licenses bans sources
  advisory_dbs="${CARGO_HOME:-$HOME/.cargo}/advisory-dbs"
  if compgen -G "$advisory_dbs/*/crates" >/dev/null; then
    echo "cargo deny: advisories from $(ls -d "$advisory_dbs"/*/ | head -n 1)"
    cargo deny --locked check --disable-fetch advisories
  else
    echo "cargo deny: advisories SKIPPED: no RustSec database in $advisory_dbs (run \`cargo deny fetch\` where github.com is reachable)"
  fi
else
  echo "cargo deny: SKIPPED: cargo-deny is not installed (cargo install --locked cargo-deny; .ci/run does)"
fi
cargo test --workspace --locked "$@"
# The tunnel with its optional QUIC transport (`--features quic`).
cargo clippy -p edgemesh-tunnel --features quic --all-targets --locked -- -D warnings
cargo test -p edgemesh-tunnel --features quic --locked --test tunnel "$@"
# The agent built with QUIC: the relay, hole-punching and fault scenarios again, over QUIC
# addresses only (the tests pick them when built with the feature: `Transport::of_this_build`).
cargo clippy -p edgemesh --features quic --all-targets --locked -- -D warnings
cargo test -p edgemesh --features quic --locked --test tunnel_e2e "$@" -- a_node_behind_nat nodes_behind_two_nats
cargo test -p edgemesh --features quic --locked --test tunnel_faults_e2e "$@"
cargo test -p edgemesh --features quic --locked --test tunnel_metrics_e2e "$@"

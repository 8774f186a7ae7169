//! The proxy as a standalone forwarder, for `shared/bench/tcp_bench.sh`:
//!
//! ```sh
//! cargo build --release -p edgemesh-proxy --example bench_proxy
//! ./tcp_bench.sh direct haproxy 'edgemesh=target/release/examples/bench_proxy --listen {listen} --upstream {upstream}'
//! ```
//!
//! It runs the real registry and proxy: the VIP range is the listen address
//! alone (a /32), so the one service's VIP is exactly `--listen`.

use std::net::SocketAddr;

use edgemesh_core::{SourceEvent, build};
use edgemesh_proxy::{Proxy, ProxyConfig};
use edgemesh_test_support::registry::{RunningRegistry, start_registry};
use tokio_util::sync::CancellationToken;

fn arg(name: &str) -> SocketAddr {
    let mut args = std::env::args().skip_while(|a| a != name);
    args.nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("usage: bench_proxy --listen IP:PORT --upstream IP:PORT"))
}

#[tokio::main]
async fn main() {
    let listen = arg("--listen");
    let upstream = arg("--upstream");
    let prefix = if listen.is_ipv4() { 32 } else { 128 };
    let RunningRegistry { sink, snapshots, .. } = start_registry(&format!("{}/{prefix}", listen.ip()));
    let proxy = Proxy::new(ProxyConfig::default(), snapshots);
    let service = build::service("bench", "target").port("tcp", listen.port(), upstream.port()).object();
    let slice = build::slice("bench", "target-1", "target")
        .endpoint(&upstream.ip().to_string(), "local")
        .port("tcp", upstream.port())
        .object();
    for event in [SourceEvent::Apply(service), SourceEvent::Apply(slice), SourceEvent::Synced] {
        sink.send(event).await.unwrap();
    }
    let shutdown = CancellationToken::new();
    let stop = shutdown.clone();
    tokio::spawn(async move {
        let _ = tokio::signal::ctrl_c().await;
        stop.cancel();
    });
    proxy.run(shutdown).await;
    drop(sink);
}

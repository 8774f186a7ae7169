//! Serves a synthetic cluster for benchmarks and manual testing.
//!
//! ```text
//! cargo run --release -p edgemesh-dns --example serve -- 127.0.0.1:15053 [services] [upstream]
//! ```
//! Services are `svc-<i>.default.svc.cluster.local` (one endpoint each);
//! `upstream` (ip:port) receives every other name.

use std::net::SocketAddr;
use std::time::Duration;

use edgemesh_core::{SourceEvent, build};
use edgemesh_dns::{DnsConfig, DnsServer};
use edgemesh_test_support::registry::{RunningRegistry, start_registry};
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let listen: SocketAddr = args.next().as_deref().unwrap_or("127.0.0.1:15053").parse().expect("listen ip:port");
    let services: usize = args.next().map_or(1000, |s| s.parse().expect("service count"));
    let upstreams: Vec<SocketAddr> = args.next().map(|s| s.parse().expect("upstream ip:port")).into_iter().collect();

    let RunningRegistry { sink, mut snapshots, .. } = start_registry("9.251.0.0/16");
    for i in 0..services {
        let name = format!("svc-{i}");
        sink.send(SourceEvent::Apply(build::service("default", &name).port("http", 80, 8080).object())).await.unwrap();
        let ip = format!("10.{}.{}.{}", i / 65536 % 256, i / 256 % 256, i % 256);
        let slice = build::slice("default", &format!("{name}-1"), &name).endpoint(&ip, "n1").port("http", 8080);
        sink.send(SourceEvent::Apply(slice.object())).await.unwrap();
    }
    sink.send(SourceEvent::Synced).await.unwrap();
    snapshots.wait_for(|s| s.synced && s.len() == services).await.unwrap();

    let config =
        DnsConfig { listen: Some(listen), upstreams, upstream_timeout: Duration::from_secs(2), ..DnsConfig::default() };
    let server = DnsServer::bind(config, snapshots).await.expect("bind");
    eprintln!("serving {services} services on {}", server.local_addr());
    let shutdown = CancellationToken::new();
    let token = shutdown.clone();
    tokio::spawn(async move {
        let _ = tokio::signal::ctrl_c().await;
        token.cancel();
    });
    server.run(shutdown).await.expect("run");
    drop(sink);
}

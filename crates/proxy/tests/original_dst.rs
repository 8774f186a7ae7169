//! The transparent listener on loopback, without nftables or root: a test
//! lookup stands in for `SO_ORIGINAL_DST` and says where each connection
//! was "originally" sent, so routing by original destination (cluster IP
//! and port -> the service's pool; anything else reset) is tested directly.

mod common;

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use edgemesh_core::LbStrategy;
use edgemesh_metrics::{AgentRegistry, Format};
use edgemesh_proxy::{OriginalDst, Proxy, ProxyConfig, Transparent};
use edgemesh_test_support::scrape::sample;
use tokio::io::AsyncReadExt;
use tokio::net::TcpSocket;

/// Original destinations by client port, as nftables would have recorded.
#[derive(Default)]
struct Redirected(Mutex<HashMap<u16, SocketAddr>>);

impl OriginalDst for Redirected {
    fn original_dst(&self, stream: &std::net::TcpStream, _ipv6: bool) -> io::Result<SocketAddr> {
        let client = stream.peer_addr()?.port();
        let map = self.0.lock().unwrap();
        map.get(&client).copied().ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "not redirected"))
    }
}

/// Connects to the transparent listener as if sent to `original` (or not
/// redirected at all) and returns what came back, `None` for a reset.
async fn connect_as(listener: SocketAddr, lookup: &Redirected, original: Option<SocketAddr>) -> Option<String> {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    if let Some(original) = original {
        lookup.0.lock().unwrap().insert(socket.local_addr().unwrap().port(), original);
    }
    let mut s = socket.connect(listener).await.ok()?;
    let mut out = String::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_string(&mut out))
        .await
        .expect("an answer or a reset")
        .ok()?;
    Some(out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_go_where_they_were_originally_sent() {
    let mut h = start_registry(90, LbStrategy::RoundRobin);
    let lookup = Arc::new(Redirected::default());
    let config =
        ProxyConfig { transparent: Transparent::Every, workers: 1, max_connections: 100, ..ProxyConfig::default() };
    let mut registry = AgentRegistry::new("test");
    let mut proxy =
        Proxy::new(config, h.snapshots.clone()).with_original_dst(lookup.clone()).with_metrics(registry.edgemesh(), 10);
    let port = proxy.bind_transparent(0).unwrap()[0].port();
    h.run_proxy(proxy);
    let web = edgemesh_core::build::service(NS, "web").port("http", PORT, 80).cluster_ip("10.96.0.10").object();
    add_on_nodes(&mut h, web, "web", &[(identity_backend("web").await, "node-a")], false).await;
    let listener = SocketAddr::from(([127, 0, 0, 1], port));

    let cluster_ip = SocketAddr::from(([10, 96, 0, 10], PORT));
    assert_eq!(connect_as(listener, &lookup, Some(cluster_ip)).await.as_deref(), Some("web"));
    let vip = h.addr("web");
    assert_eq!(connect_as(listener, &lookup, Some(vip)).await.as_deref(), Some("web"), "the VIP too");

    let no_service = SocketAddr::from(([10, 96, 0, 11], PORT));
    assert_eq!(connect_as(listener, &lookup, Some(no_service)).await, None, "no service port there: reset");
    assert_eq!(connect_as(listener, &lookup, None).await, None, "not redirected: reset");
    assert_eq!(h.status.unrouted_connections.load(Ordering::Relaxed), 2);
    let scrape = registry.encode(Format::Text);
    assert_eq!(sample(&scrape, "edgemesh_proxy_unrouted_connections_total"), Some(2.0), "{scrape}");
    let web = r#"{service="default/web",port="8080"}"#;
    assert_eq!(sample(&scrape, &format!("edgemesh_tcp_connections_opened_total{web}")), Some(2.0), "{scrape}");
    h.stop().await;
}

/// Beside the kernel fast path: the VIP listener serves the service, and
/// the transparent listener serves its node port, and nothing else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn beside_the_fast_path_only_node_ports_come_through_the_transparent_listener() {
    let mut h = start_registry(91, LbStrategy::RoundRobin);
    let lookup = Arc::new(Redirected::default());
    let config = ProxyConfig { transparent: Transparent::NodePorts, workers: 1, ..ProxyConfig::default() };
    let mut proxy = Proxy::new(config, h.snapshots.clone()).with_original_dst(lookup.clone());
    let port = proxy.bind_transparent(0).unwrap()[0].port();
    h.run_proxy(proxy);
    let edgemesh_core::Object::Service(mut web) =
        edgemesh_core::build::service(NS, "web").port("http", PORT, 80).cluster_ip("10.96.0.10").object()
    else {
        unreachable!()
    };
    (web.service_type, web.ports[0].node_port) = ("NodePort".into(), Some(30080));
    let web = edgemesh_core::Object::Service(web);
    add_on_nodes(&mut h, web, "web", &[(identity_backend("web").await, "node-a")], false).await;
    let listener = SocketAddr::from(([127, 0, 0, 1], port));

    let node_port = SocketAddr::from(([192, 0, 2, 1], 30080));
    assert_eq!(connect_as(listener, &lookup, Some(node_port)).await.as_deref(), Some("web"), "the node port");
    let cluster_ip = SocketAddr::from(([10, 96, 0, 10], PORT));
    assert_eq!(connect_as(listener, &lookup, Some(cluster_ip)).await, None, "the kernel's: reset here");
    let mut direct = tokio::net::TcpStream::connect(h.addr("web")).await.expect("the VIP listener is bound");
    let mut out = String::new();
    direct.read_to_string(&mut out).await.unwrap();
    assert_eq!(out, "web", "the VIP listener serves as without interception");
    h.stop().await;
}

//! Endpoints on other nodes go through the `Remote` the agent hands in (the
//! tunnel); endpoints on this node are dialled directly. The `Remote` here
//! is a loopback stand-in that connects to the target itself and records
//! what it was asked, so the proxy's side of the contract (which endpoints,
//! which node, failures ejecting, half-close, one datagram session per
//! client) is checked on real sockets. The tunnel itself is tested in
//! `crates/tunnel` and end to end in network namespaces.

mod common;

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use edgemesh_core::build::service as svc_builder;
use edgemesh_core::{LbStrategy, ServiceKey};
use edgemesh_proxy::{ProxyConfig, Remote, RemoteDatagrams, RemoteFuture, RemoteStream};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio::sync::mpsc;

/// What the stand-in tunnel was asked: (protocol, node, target).
type Calls = Arc<Mutex<Vec<(&'static str, String, SocketAddr)>>>;

/// Connects to the target over loopback for any node but `node-down` (no
/// peer) and `node-lost` (a stream whose connection is lost after a few
/// bytes).
struct LoopbackTunnel {
    calls: Calls,
}

impl LoopbackTunnel {
    fn record(&self, proto: &'static str, node: &str, target: SocketAddr) -> io::Result<()> {
        self.calls.lock().unwrap().push((proto, node.to_owned(), target));
        if node == "node-down" {
            Err(io::Error::new(io::ErrorKind::NotConnected, "node-down has no peer"))
        } else {
            Ok(())
        }
    }
}

impl Remote for LoopbackTunnel {
    fn open_tcp(&self, node: &str, target: SocketAddr, _: &ServiceKey) -> RemoteFuture<RemoteStream> {
        let allowed = self.record("tcp", node, target);
        let lost = node == "node-lost";
        Box::pin(async move {
            allowed?;
            if lost {
                return Ok(Box::new(LostStream::default()) as RemoteStream);
            }
            Ok(Box::new(TcpStream::connect(target).await?) as RemoteStream)
        })
    }

    fn open_udp(&self, node: &str, target: SocketAddr, _: &ServiceKey) -> RemoteFuture<RemoteDatagrams> {
        let allowed = self.record("udp", node, target);
        Box::pin(async move {
            allowed?;
            let socket = Arc::new(UdpSocket::bind("127.0.0.1:0").await?);
            socket.connect(target).await?;
            let (to_remote, mut outbound) = mpsc::channel::<Vec<u8>>(1024);
            let (inbound, from_remote) = mpsc::channel(1024);
            let out = socket.clone();
            tokio::spawn(async move {
                while let Some(d) = outbound.recv().await {
                    let _ = out.send(&d).await;
                }
            });
            tokio::spawn(async move {
                let mut buf = vec![0u8; 65_536];
                while let Ok(n) = socket.recv(&mut buf).await {
                    if inbound.send(buf[..n].to_vec()).await.is_err() {
                        return;
                    }
                }
            });
            Ok(RemoteDatagrams { to_remote, from_remote })
        })
    }
}

/// A tunnel stream that answers the client's first bytes with `partial`,
/// then fails as the tunnel's streams do when their connection is lost
/// (`ConnectionReset`).
#[derive(Default)]
struct LostStream {
    asked: bool,
    answered: bool,
    reader: Option<std::task::Waker>,
}

impl tokio::io::AsyncRead for LostStream {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        if !self.asked {
            self.reader = Some(cx.waker().clone());
            return std::task::Poll::Pending;
        }
        if std::mem::replace(&mut self.answered, true) {
            return std::task::Poll::Ready(Err(io::Error::new(io::ErrorKind::ConnectionReset, "connection lost")));
        }
        buf.put_slice(b"partial");
        std::task::Poll::Ready(Ok(()))
    }
}

impl tokio::io::AsyncWrite for LostStream {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<io::Result<usize>> {
        self.asked = true;
        if let Some(w) = self.reader.take() {
            w.wake();
        }
        std::task::Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: std::pin::Pin<&mut Self>, _: &mut std::task::Context<'_>) -> std::task::Poll<io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}

fn config() -> ProxyConfig {
    ProxyConfig {
        connect_timeout: Duration::from_secs(2),
        max_connections: 1000,
        node_name: "node-a".into(),
        max_udp_sessions: 1000,
        ..ProxyConfig::default()
    }
}

async fn start_through_tunnel(net: u8) -> (Harness, Calls) {
    let mut h = start_registry(net, LbStrategy::RoundRobin);
    let calls = Calls::default();
    h.start_proxy_through(config(), Some(Arc::new(LoopbackTunnel { calls: calls.clone() })));
    (h, calls)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoints_on_other_nodes_go_through_the_tunnel() {
    let (mut h, calls) = start_through_tunnel(60).await;
    let (local, remote) = (identity_backend("local").await, identity_backend("remote").await);
    add_on_nodes(&mut h, service("web"), "web", &[(local, "node-a"), (remote, "node-b")], false).await;
    let mut seen = HashMap::new();
    for _ in 0..10 {
        *seen.entry(ask(h.addr("web")).await.unwrap()).or_insert(0) += 1;
    }
    assert_eq!(seen, HashMap::from([("local".to_owned(), 5), ("remote".to_owned(), 5)]));
    let calls = calls.lock().unwrap().clone();
    assert_eq!(calls.len(), 5, "only the other node's endpoint is opened through the tunnel: {calls:?}");
    assert!(calls.iter().all(|c| *c == ("tcp", "node-b".to_owned(), remote)), "{calls:?}");
    h.stop().await;
}

/// A tunnel stream lost mid-connection resets the client: a FIN would pass
/// a cut response off as a complete one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_lost_mid_connection_resets_the_client() {
    let (mut h, _calls) = start_through_tunnel(64).await;
    let target = identity_backend("never reached").await;
    add_on_nodes(&mut h, service("web"), "web", &[(target, "node-lost")], false).await;
    let mut s = TcpStream::connect(h.addr("web")).await.unwrap();
    s.write_all(b"GET / HTTP/1.0\r\n\r\n").await.unwrap();
    let mut got = Vec::new();
    let end = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut got)).await.expect("no hang");
    assert_eq!(got, b"partial");
    assert_eq!(end.expect_err("not a clean end of file").kind(), io::ErrorKind::ConnectionReset);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_close_passes_through_the_tunnel() {
    let (mut h, _calls) = start_through_tunnel(61).await;
    let backend = reply_after_eof_backend("far").await;
    add_on_nodes(&mut h, service("web"), "web", &[(backend, "node-b")], false).await;
    let mut s = TcpStream::connect(h.addr("web")).await.unwrap();
    s.write_all(&[1u8; 100_000]).await.unwrap();
    s.shutdown().await.unwrap();
    let mut reply = String::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_string(&mut reply)).await.unwrap().unwrap();
    assert_eq!(reply, "far:100000", "the backend saw EOF after every byte, and its reply came back");
    h.stop().await;
}

/// A node the tunnel cannot reach is skipped: its endpoint is ejected and
/// retried later, and no client connection fails meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_node_is_skipped_and_no_client_fails() {
    let (mut h, calls) = start_through_tunnel(62).await;
    let up = identity_backend("up").await;
    let down = identity_backend("down").await;
    add_on_nodes(&mut h, service("web"), "web", &[(up, "node-b"), (down, "node-down")], false).await;
    for _ in 0..20 {
        assert_eq!(ask(h.addr("web")).await.unwrap(), "up");
    }
    let tries_down = calls.lock().unwrap().iter().filter(|c| c.1 == "node-down").count();
    assert_eq!(tries_down, 1, "ejected after one failure, not retried on every connection");
    assert_eq!(h.status.failed_connections.load(std::sync::atomic::Ordering::Relaxed), 0);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_sessions_to_other_nodes_ride_one_tunnel_session_each() {
    let (mut h, calls) = start_through_tunnel(63).await;
    let echo_addr = udp_echo().await;
    let svc = svc_builder(NS, "dns").udp_port("p", PORT, 53).object();
    add_on_nodes(&mut h, svc, "dns", &[(echo_addr, "node-b")], true).await;
    let vip = h.addr("dns");
    let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    client.connect(vip).await.unwrap();
    // A paced stream: every datagram answered, in one session.
    paced_stream(&client, 20_000, 0).await;
    let (_, from) = {
        let c2 = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        c2.send_to(b"hi", vip).await.unwrap();
        let mut b = [0u8; 8];
        tokio::time::timeout(Duration::from_secs(2), c2.recv_from(&mut b)).await.unwrap().unwrap()
    };
    assert_eq!(from, vip, "replies come from the service address");
    let calls = calls.lock().unwrap().clone();
    assert_eq!(calls, vec![("udp", "node-b".to_owned(), echo_addr); 2], "one tunnel session per client");
    h.stop().await;
}

/// Endpoints through the tunnel are chosen by family like local ones: an
/// IPv4 VIP never opens a tunnel stream to an IPv6 endpoint.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tunnelled_endpoints_of_the_other_family_are_not_used() {
    let (mut h, calls) = start_through_tunnel(72).await;
    let v4 = identity_backend("v4").await;
    let v6 = identity_backend_on("[::1]:0", "v6").await;
    add_on_nodes(&mut h, service("web"), "web", &[(v4, "node-b"), (v6, "node-b")], false).await;
    for _ in 0..10 {
        assert_eq!(ask(h.addr("web")).await.unwrap(), "v4");
    }
    let calls = calls.lock().unwrap().clone();
    assert_eq!(calls, vec![("tcp", "node-b".to_owned(), v4); 10], "no stream to the IPv6 endpoint");
    h.stop().await;
}

/// Through the tunnel too, bytes are counted exactly each way (as the copy
/// writes them), a connection whose only endpoint's node cannot be reached
/// counts as a `tunnel` failure and ejects that endpoint, and datagrams to
/// another node count once handed to the tunnel.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tunnelled_traffic_and_tunnel_failures_are_counted() {
    let mut h = start_registry(73, LbStrategy::RoundRobin);
    let tunnel = Arc::new(LoopbackTunnel { calls: Calls::default() });
    let registry = h.start_counted_proxy(config(), Some(tunnel), 100);
    add_on_nodes(&mut h, service("web"), "web", &[(reply_after_eof_backend("far").await, "node-b")], false).await;
    add_on_nodes(&mut h, service("down"), "down", &[(identity_backend("x").await, "node-down")], false).await;
    let dns = svc_builder(NS, "dns").udp_port("p", PORT, 53).object();
    add_on_nodes(&mut h, dns, "dns", &[(udp_echo().await, "node-b")], true).await;

    let mut s = TcpStream::connect(h.addr("web")).await.unwrap();
    s.write_all(&[1u8; 100_000]).await.unwrap();
    s.shutdown().await.unwrap();
    let mut reply = String::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_string(&mut reply)).await.unwrap().unwrap();
    assert_eq!(reply, "far:100000");
    assert!(is_reset_or_eof(&connect_and_read(h.addr("down")).await));
    let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    client.connect(h.addr("dns")).await.unwrap();
    paced_stream(&client, 100, 0).await;

    let text = settles(
        &registry,
        &[
            is(series("edgemesh_tcp_sent_bytes_total", "web"), 100_000.0),
            is(series("edgemesh_tcp_received_bytes_total", "web"), reply.len() as f64),
            is(series("edgemesh_tcp_connection_duration_seconds_count", "web"), 1.0),
            is(failed("down", "tunnel"), 1.0),
            is(series("edgemesh_endpoint_ejections_total", "down"), 1.0),
            is(series("edgemesh_udp_sessions_opened_total", "dns"), 1.0),
            is(series("edgemesh_udp_sent_bytes_total", "dns"), 400.0),
            is(series("edgemesh_udp_received_bytes_total", "dns"), 400.0),
        ],
    )
    .await;
    edgemesh_test_support::scrape::promtool_check(&text);
    h.stop().await;
}

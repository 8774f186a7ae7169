//! The dispatcher's connections to endpoints: pooled and reused while
//! alive, never once closed, closed when idle; HTTP/2 multiplexed; upgrades
//! on a connection of their own; endpoints on other nodes through the
//! tunnel (here an in-process stand-in for it that carries the stream to a
//! real server).

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use edgemesh_core::{AppProtocol, Backend, LbStrategy, ServiceKey};
use edgemesh_http::HttpConfig;
use edgemesh_proxy::pool::Targets;
use edgemesh_proxy::{Reach, Remote, RemoteDatagrams, RemoteFuture, RemoteStream};
use edgemesh_test_support::eventually;
use hyper::StatusCode;
use support::{Behaviour, Client, Endpoint, counter, dispatcher, front, pool, serve, targets};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test(flavor = "current_thread")]
async fn http2_endpoints_get_one_connection_that_multiplexes_concurrent_requests() {
    let h2 = Behaviour { http2: true, delay: Duration::from_millis(100), ..Behaviour::default() };
    let endpoint = Endpoint::start("h2", h2).await;
    let mut t = targets(LbStrategy::RoundRobin, &[endpoint.addr]);
    t.app_protocol = AppProtocol::Http2;
    let (front, _pool, registry) = serve(HttpConfig::default(), t).await;
    let mut clients = tokio::task::JoinSet::new();
    for _ in 0..20 {
        clients.spawn(async move { Client::connect(front).await.get(&[]).await });
    }
    while let Some(answer) = clients.join_next().await {
        assert_eq!(answer.unwrap(), (StatusCode::OK, "h2".to_owned()));
    }
    assert_eq!(endpoint.connections(), 1, "one HTTP/2 connection for all");
    assert!(endpoint.max_in_flight.load(Ordering::SeqCst) > 1, "requests overlapped on it");
    assert_eq!(counter(&registry, "http_upstream_connections_opened"), 1.0);
}

#[tokio::test(flavor = "current_thread")]
async fn a_connection_the_endpoint_closed_is_never_reused() {
    let closing = Behaviour { keep_alive: false, ..Behaviour::default() };
    let endpoint = Endpoint::start("closing", closing).await;
    // No retries: a request sent on a dead connection would fail.
    let config = HttpConfig { max_retries: 0, ..HttpConfig::default() };
    let (front, _pool, _registry) = serve(config, targets(LbStrategy::RoundRobin, &[endpoint.addr])).await;
    let mut client = Client::connect(front).await;
    for _ in 0..20 {
        assert_eq!(client.get(&[]).await.0, StatusCode::OK);
    }
    assert_eq!(endpoint.connections(), 20);
}

#[tokio::test(flavor = "current_thread")]
async fn idle_pooled_connections_are_closed_after_the_idle_timeout() {
    let endpoint = Endpoint::named("e").await;
    let config = HttpConfig { upstream_idle_timeout: Duration::from_millis(200), ..HttpConfig::default() };
    let (front, _pool, _registry) = serve(config, targets(LbStrategy::RoundRobin, &[endpoint.addr])).await;
    let mut client = Client::connect(front).await;
    assert_eq!(client.get(&[]).await.0, StatusCode::OK);
    assert_eq!(client.get(&[]).await.0, StatusCode::OK);
    assert_eq!(endpoint.connections(), 1, "reused while fresh");
    eventually("the idle connection closed", Duration::from_secs(5), || async {
        (endpoint.closed() == 1).then_some(())
    })
    .await;
    assert_eq!(client.get(&[]).await.0, StatusCode::OK, "a new connection after it");
    assert_eq!(endpoint.connections(), 2);
}

#[tokio::test(flavor = "current_thread")]
async fn an_upgrade_gets_a_connection_of_its_own_and_passes_bytes_both_ways() {
    let endpoint = Endpoint::named("e").await;
    let (front, _pool, _registry) =
        serve(HttpConfig::default(), targets(LbStrategy::RoundRobin, &[endpoint.addr])).await;
    let mut client = Client::connect(front).await;
    let mut upgraded = client.upgrade("echo").await;
    upgraded.write_all(b"ping over the upgrade").await.unwrap();
    let mut echoed = [0u8; 21];
    upgraded.read_exact(&mut echoed).await.unwrap();
    assert_eq!(&echoed, b"ping over the upgrade");
    // The upgraded connection is not pooled: a plain request opens another.
    let mut plain = Client::connect(front).await;
    assert_eq!(plain.get(&[]).await.0, StatusCode::OK);
    assert_eq!(endpoint.connections(), 2);
}

/// The tunnel's stand-in: each open is an in-process duplex stream whose
/// other end is connected to `target` on loopback.
struct Tunnel {
    opened: Arc<AtomicUsize>,
    target: SocketAddr,
}

impl Remote for Tunnel {
    fn open_tcp(&self, node: &str, _: SocketAddr, _: &ServiceKey) -> RemoteFuture<RemoteStream> {
        assert_eq!(node, "node-b");
        self.opened.fetch_add(1, Ordering::SeqCst);
        let target = self.target;
        Box::pin(async move {
            let (near, mut far) = tokio::io::duplex(64 * 1024);
            let mut server = tokio::net::TcpStream::connect(target).await?;
            tokio::spawn(async move {
                let _ = tokio::io::copy_bidirectional(&mut far, &mut server).await;
            });
            Ok(Box::new(near) as RemoteStream)
        })
    }

    fn open_udp(&self, _: &str, _: SocketAddr, _: &ServiceKey) -> RemoteFuture<RemoteDatagrams> {
        Box::pin(async { Err(std::io::ErrorKind::Unsupported.into()) })
    }
}

#[tokio::test(flavor = "current_thread")]
async fn an_endpoint_on_another_node_is_reached_through_the_tunnel_and_its_stream_pooled() {
    let endpoint = Endpoint::named("remote").await;
    let opened = Arc::new(AtomicUsize::new(0));
    let tunnel = Arc::new(Tunnel { opened: opened.clone(), target: endpoint.addr });
    // The pod's address is not dialled: only the tunnel knows the way.
    let pod: SocketAddr = "10.244.1.7:8080".parse().unwrap();
    let backends: Arc<[Backend]> = Arc::from([Backend { addr: pod, node_name: Some("node-b".into()) }]);
    let (dispatcher, registry) = dispatcher(HttpConfig::default());
    let pool = pool(Targets::new(LbStrategy::RoundRobin, backends));
    let reach = Reach::through("node-a", tunnel, Duration::from_secs(2));
    let front = front(dispatcher, pool, reach).await;
    let mut client = Client::connect(front).await;
    for _ in 0..10 {
        assert_eq!(client.get(&[]).await, (StatusCode::OK, "remote".to_owned()));
    }
    assert_eq!(opened.load(Ordering::SeqCst), 1, "one tunnel stream, reused");
    assert_eq!(endpoint.requests(), 10);
    assert_eq!(counter(&registry, "http_upstream_connections_opened"), 1.0);
}

#[test]
fn each_worker_thread_pools_its_own_connections() {
    // The proxy's workers: single-threaded runtimes on their own threads,
    // sharing one dispatcher and the port's pool.
    let runtime = || tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let main = runtime();
    let endpoint = main.block_on(Endpoint::named("e"));
    let (dispatcher, registry) = dispatcher(HttpConfig::default());
    let pool = pool(targets(LbStrategy::RoundRobin, &[endpoint.addr]));
    // The endpoint's tasks run on `main`, driven by a thread of its own.
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let driver = std::thread::spawn(move || main.block_on(async { stopped.await.ok() }));
    let workers: Vec<_> = (0..2)
        .map(|_| {
            let (dispatcher, pool) = (dispatcher.clone(), pool.clone());
            std::thread::spawn(move || {
                runtime().block_on(async move {
                    let front = front(dispatcher, pool, Reach::direct()).await;
                    let mut client = Client::connect(front).await;
                    for _ in 0..10 {
                        assert_eq!(client.get(&[]).await.0, StatusCode::OK);
                    }
                })
            })
        })
        .collect();
    for worker in workers {
        worker.join().unwrap();
    }
    assert_eq!(endpoint.requests(), 20);
    assert_eq!(endpoint.connections(), 2, "one connection per worker, each reused");
    assert_eq!(counter(&registry, "http_upstream_connections_opened"), 2.0);
    stop.send(()).unwrap();
    driver.join().unwrap();
}

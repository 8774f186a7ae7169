//! The SOCKS5 entry on loopback, with real sockets: this node's host ports
//! by its own list, a service's address, refusals with their RFC 1928
//! codes, logins, the handshake time limit and the metrics of each outcome.
//! (Other nodes' hosts, through the tunnel, are in the edgemesh crate's
//! `socks_e2e` test.)

use std::net::SocketAddr;
use std::time::Duration;

use edgemesh_core::{SourceEvent, build};
use edgemesh_socks::{SocksConfig, SocksEnv, SocksServer};
use edgemesh_test_support::loopback::{closed_tcp_port, tcp_echo};
use edgemesh_test_support::registry::{RunningRegistry, start_registry};
use edgemesh_test_support::socks5::{self, Refusal};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

const NODE: &str = "edge-1";

/// The entry on node [`NODE`] with `config`, serving `registry`'s services
/// until `stop`: its address and its metrics.
async fn start(
    registry: &RunningRegistry,
    config: SocksConfig,
    stop: &CancellationToken,
) -> (SocketAddr, edgemesh_metrics::Registry) {
    let server = SocksServer::bind(config, "127.0.0.1:0".parse().unwrap(), env(registry)).await.unwrap();
    let mut metrics = edgemesh_metrics::Registry::with_prefix("edgemesh");
    let server = server.with_metrics(&mut metrics);
    let addr = server.local_addr().unwrap();
    tokio::spawn(server.run(stop.clone()));
    (addr, metrics)
}

/// Node [`NODE`], without a tunnel.
fn env(registry: &RunningRegistry) -> SocksEnv {
    SocksEnv {
        node_name: NODE.into(),
        cluster_domain: "cluster.local".into(),
        snapshots: registry.snapshots.clone(),
        hosts: None,
        connect_timeout: Duration::from_secs(2),
    }
}

/// The `web.default` service in `registry`, and an echo server on its VIP
/// and port standing where the proxy's listener would (the entry's part
/// ends at the service address; the e2e test goes through the proxy).
async fn web_service(registry: &mut RunningRegistry) -> SocketAddr {
    let service = build::service("default", "web").port("http", 18080, 8080).object();
    registry.sink.send(SourceEvent::Apply(service)).await.unwrap();
    let snapshot = registry.snapshots.wait_for(|s| s.services().any(|s| s.vip.is_some())).await.unwrap().clone();
    let vip = snapshot.services().next().unwrap().vip.unwrap();
    let listener = tokio::net::TcpListener::bind((vip, 18080)).await.unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    SocketAddr::new(vip, 18080)
}

/// The metrics as Prometheus text.
fn encode(metrics: &edgemesh_metrics::Registry) -> String {
    let mut text = String::new();
    edgemesh_metrics::prometheus_client::encoding::text::encode(&mut text, metrics).unwrap();
    text
}

/// Runs the blocking client off the runtime.
async fn client<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.unwrap()
}

fn reply_of(result: Result<std::net::TcpStream, Refusal>) -> Option<u8> {
    match result {
        Ok(_) => Some(0),
        Err(Refusal::Reply(code)) => Some(code),
        Err(other) => panic!("expected a reply, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connects_by_node_name_service_name_and_address_and_refuses_the_rest() {
    let mut registry = start_registry("127.252.16.0/24");
    let web = web_service(&mut registry).await;
    let (allowed, closed) = (tcp_echo().await, closed_tcp_port());
    let config =
        SocksConfig { enabled: true, allowed_ports: vec![allowed.port(), closed.port()], ..Default::default() };
    let stop = CancellationToken::new();
    let (proxy, metrics) = start(&registry, config, &stop).await;

    client(move || {
        // This node's host, by name, on a port its list allows.
        let mut s = socks5::connect(proxy, None, NODE, allowed.port()).unwrap();
        assert_eq!(socks5::echo(&mut s, b"ssh?").unwrap(), b"ssh?");
        // A listed port where nothing listens: refused (0x05); an unlisted one: not allowed (0x02).
        assert_eq!(reply_of(socks5::connect(proxy, None, NODE, closed.port())), Some(5));
        assert_eq!(reply_of(socks5::connect(proxy, None, NODE, allowed.port() ^ 1)), Some(2));
        // The service by each of its names, and by its VIP.
        for name in ["web.default", "web.default.svc", "web.default.svc.cluster.local", &web.ip().to_string()] {
            let mut s = socks5::connect(proxy, None, name, 18080).unwrap_or_else(|e| panic!("{name}: {e:?}"));
            assert_eq!(socks5::echo(&mut s, b"web:hi").unwrap(), b"web:hi", "{name}");
        }
        // A service port it does not have, an unknown name, an address of nothing known.
        assert_eq!(reply_of(socks5::connect(proxy, None, "web.default", 18081)), Some(5));
        assert_eq!(reply_of(socks5::connect(proxy, None, "nope.default", 80)), Some(4));
        assert_eq!(reply_of(socks5::connect(proxy, None, "edge-2", 22)), Some(4), "no tunnel: other nodes unknown");
        assert_eq!(reply_of(socks5::connect(proxy, None, &allowed.ip().to_string(), allowed.port())), Some(4));
    })
    .await;

    // BIND and UDP ASSOCIATE: "command not supported", read whole and answered.
    for command in [2u8, 3] {
        let mut s = tokio::net::TcpStream::connect(proxy).await.unwrap();
        s.write_all(&[5, 1, 0]).await.unwrap();
        let mut choice = [0u8; 2];
        s.read_exact(&mut choice).await.unwrap();
        assert_eq!(choice, [5, 0]);
        s.write_all(&[5, command, 0, 1, 127, 0, 0, 1, 0, 22]).await.unwrap();
        let mut reply = [0u8; 10];
        s.read_exact(&mut reply).await.unwrap();
        assert_eq!(reply[1], 7, "command {command}");
    }

    let text = encode(&metrics);
    for (result, count) in [("ok", 5), ("refused", 2), ("not_allowed", 1), ("unreachable", 3), ("unsupported", 2)] {
        let series = format!("edgemesh_socks_connections_total{{result=\"{result}\"}} {count}\n");
        assert!(text.contains(&series), "{series} in\n{text}");
    }
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logins_are_required_when_a_credentials_file_is_set() {
    let registry = start_registry("127.252.17.0/24");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("socks-users");
    std::fs::write(&file, "# operators\nalice:correct horse\n").unwrap();
    let allowed = tcp_echo().await;
    let config = SocksConfig {
        enabled: true,
        allowed_ports: vec![allowed.port()],
        credentials_file: Some(file.clone()),
        ..Default::default()
    };
    let stop = CancellationToken::new();
    let (proxy, _) = start(&registry, config.clone(), &stop).await;
    client(move || {
        assert!(matches!(socks5::connect(proxy, None, NODE, allowed.port()), Err(Refusal::NoMethod)));
        assert!(matches!(
            socks5::connect(proxy, Some(("alice", "wrong")), NODE, allowed.port()),
            Err(Refusal::BadLogin)
        ));
        assert!(matches!(
            socks5::connect(proxy, Some(("bob", "correct horse")), NODE, allowed.port()),
            Err(Refusal::BadLogin)
        ));
        let mut s = socks5::connect(proxy, Some(("alice", "correct horse")), NODE, allowed.port()).unwrap();
        assert_eq!(socks5::echo(&mut s, b"in").unwrap(), b"in");
    })
    .await;

    // A bad file is a start-up error naming the file and the line.
    std::fs::write(&file, "alice:x\nbob\n").unwrap();
    let error =
        SocksServer::bind(config, "127.0.0.1:0".parse().unwrap(), env(&registry)).await.err().unwrap().to_string();
    assert!(error.contains(&file.display().to_string()) && error.contains("line 2"), "{error}");
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_and_garbage_clients_are_closed_and_others_still_served() {
    let registry = start_registry("127.252.18.0/24");
    let allowed = tcp_echo().await;
    let config = SocksConfig {
        enabled: true,
        allowed_ports: vec![allowed.port()],
        handshake_timeout: Duration::from_millis(500),
        max_connections: 40,
        ..Default::default()
    };
    let stop = CancellationToken::new();
    let (proxy, _) = start(&registry, config, &stop).await;
    // Thirty clients that connect and say nothing or half a greeting.
    let mut silent = Vec::new();
    for i in 0..30 {
        let mut s = tokio::net::TcpStream::connect(proxy).await.unwrap();
        if i % 2 == 1 {
            s.write_all(&[5, 3, 0]).await.unwrap();
        }
        silent.push(s);
    }
    // Garbage gets closed at once.
    let mut http = tokio::net::TcpStream::connect(proxy).await.unwrap();
    http.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    let mut rest = Vec::new();
    let n = tokio::time::timeout(Duration::from_secs(5), http.read_to_end(&mut rest)).await.unwrap();
    assert!(matches!(n, Ok(0) | Err(_)), "garbage answered: {rest:?}");
    // A real client is served meanwhile.
    client(move || {
        let mut s = socks5::connect(proxy, None, NODE, allowed.port()).unwrap();
        assert_eq!(socks5::echo(&mut s, b"still here").unwrap(), b"still here");
    })
    .await;
    // The silent ones are closed by the time limit.
    for mut s in silent {
        let mut byte = [0u8; 8];
        let n =
            tokio::time::timeout(Duration::from_secs(5), s.read(&mut byte)).await.expect("closed by the time limit");
        assert!(matches!(n, Ok(0) | Err(_)));
    }
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_past_the_limit_are_closed_at_once_and_counted() {
    let registry = start_registry("127.252.19.0/24");
    let allowed = tcp_echo().await;
    let config =
        SocksConfig { enabled: true, allowed_ports: vec![allowed.port()], max_connections: 2, ..Default::default() };
    let stop = CancellationToken::new();
    let (proxy, metrics) = start(&registry, config, &stop).await;
    // Two clients hold the places (they wait for their handshake's 10 s limit).
    let held =
        [tokio::net::TcpStream::connect(proxy).await.unwrap(), tokio::net::TcpStream::connect(proxy).await.unwrap()];
    let mut third = tokio::net::TcpStream::connect(proxy).await.unwrap();
    let _ = third.write_all(&[5, 1, 0]).await;
    let mut rest = Vec::new();
    let read =
        tokio::time::timeout(Duration::from_secs(5), third.read_to_end(&mut rest)).await.expect("closed at once");
    assert!(matches!(read, Ok(0) | Err(_)), "answered past the limit: {rest:?}");
    // (Counted before the socket is dropped; the holders' tasks count themselves as they start.)
    let text = encode(&metrics);
    assert!(text.contains("edgemesh_socks_connections_total{result=\"limit\"} 1\n"), "{text}");
    edgemesh_test_support::eventually("two clients active", Duration::from_secs(5), || {
        let text = encode(&metrics);
        async move { text.contains("edgemesh_socks_connections_active 2\n").then_some(()) }
    })
    .await;
    // A place freed is a place to serve.
    drop(held);
    client(move || {
        edgemesh_test_support::blocking::eventually(Duration::from_secs(5), "a place after the others left", || {
            let mut s = socks5::connect(proxy, None, NODE, allowed.port()).ok()?;
            (socks5::echo(&mut s, b"in").ok()? == b"in").then_some(())
        })
    })
    .await;
    stop.cancel();
}

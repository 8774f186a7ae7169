//! The proxy's metrics, read as Prometheus reads them (the agent registry's
//! text, checked by `promtool`), against what real clients sent through
//! real sockets to real echo servers: connections and bytes exactly,
//! failures by reason, UDP sessions and datagrams, the cap on the
//! `service` label and the removal of a gone service's series.

mod common;

use std::time::Duration;

use common::*;
use edgemesh_core::build::service as svc_builder;
use edgemesh_core::{LbStrategy, ObjectKind, ServiceKey};
use edgemesh_metrics::Format;
use edgemesh_proxy::ProxyConfig;
use edgemesh_test_support::scrape::{promtool_check, sample};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

fn config() -> ProxyConfig {
    ProxyConfig { connect_timeout: Duration::from_secs(2), max_connections: 1000, ..ProxyConfig::default() }
}

/// Sends `data` through `addr` to an echo server, half-closes, and checks
/// every byte comes back.
async fn echo(addr: std::net::SocketAddr, data: &[u8]) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let (mut r, mut w) = s.split();
    let write = async {
        w.write_all(data).await.unwrap();
        w.shutdown().await.unwrap();
    };
    let mut back = Vec::with_capacity(data.len());
    let (_, read) = tokio::join!(write, tokio::time::timeout(WAIT, r.read_to_end(&mut back)));
    read.expect("the echo ends").unwrap();
    assert!(back == data, "{} bytes sent, {} came back", data.len(), back.len());
}

/// Connections and bytes each way are counted exactly, the bytes of an open
/// connection while it is open, through both of the forwarder's paths
/// (small messages copied, bulk spliced); the scrape passes promtool.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_and_bytes_are_counted_exactly_as_they_flow() {
    let mut h = start_registry(120, LbStrategy::RoundRobin);
    let registry = h.start_counted_proxy(config(), None, 100);
    add_service(&mut h, "web", &[tcp_echo().await]).await;
    let addr = h.addr("web");

    let mut open = TcpStream::connect(addr).await.unwrap();
    open.write_all(&[7u8; 1000]).await.unwrap();
    open.read_exact(&mut [0u8; 1000]).await.unwrap();
    settles(
        &registry,
        &[
            is(series("edgemesh_tcp_connections_opened_total", "web"), 1.0),
            is(series("edgemesh_tcp_connections_active", "web"), 1.0),
            is(series("edgemesh_tcp_sent_bytes_total", "web"), 1000.0),
            is(series("edgemesh_tcp_received_bytes_total", "web"), 1000.0),
            is(series("edgemesh_tcp_connection_duration_seconds_count", "web"), 0.0),
        ],
    )
    .await;

    let sizes = [1usize, 300, 16 * 1024, 100_000, 3 << 20];
    for size in sizes {
        let data: Vec<u8> = (0..size).map(|i| (i % 251).to_le_bytes()[0]).collect();
        echo(addr, &data).await;
    }
    drop(open);
    let total = (1000 + sizes.iter().sum::<usize>()) as f64;
    let connections = (sizes.len() + 1) as f64;
    let text = settles(
        &registry,
        &[
            is(series("edgemesh_tcp_connections_opened_total", "web"), connections),
            is(series("edgemesh_tcp_connections_active", "web"), 0.0),
            is(series("edgemesh_tcp_sent_bytes_total", "web"), total),
            is(series("edgemesh_tcp_received_bytes_total", "web"), total),
            is(series("edgemesh_tcp_connect_duration_seconds_count", "web"), connections),
            is(series("edgemesh_tcp_connection_duration_seconds_count", "web"), connections),
            is(failed("web", "refused"), 0.0),
            is(failed("web", "no_endpoints"), 0.0),
            is(series("edgemesh_endpoint_ejections_total", "web"), 0.0),
        ],
    )
    .await;
    let connect_le_10s = sample(&text, &series_le("edgemesh_tcp_connect_duration_seconds_bucket", "web", "10.0"));
    assert_eq!(connect_le_10s, Some(connections), "loopback connects take well under 10 s:\n{text}");
    promtool_check(&text);
    h.stop().await;
}

/// `name{le="<le>",service="default/<service>",port="8080"}` (a bucket's
/// bound comes first).
fn series_le(name: &str, service: &str, le: &str) -> String {
    format!("{name}{{le=\"{le}\",service=\"{NS}/{service}\",port=\"{PORT}\"}}")
}

/// Each way a connection can fail is counted under its reason, and a
/// refusing endpoint's ejection is counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_connections_are_counted_by_reason() {
    let mut h = start_registry(121, LbStrategy::RoundRobin);
    let registry =
        h.start_counted_proxy(ProxyConfig { connect_timeout: Duration::from_millis(200), ..config() }, None, 100);
    h.apply(service("empty"), exists("empty")).await;
    add_service(&mut h, "dead", &[closed_tcp_port()]).await;
    let (stuck, _listener, _queue) = stuck_endpoint().await;
    add_service(&mut h, "stuck", &[stuck]).await;

    for name in ["empty", "dead", "stuck"] {
        let r = connect_and_read(h.addr(name)).await;
        assert!(is_reset_or_eof(&r), "{name}: {r:?}");
    }
    let text = settles(
        &registry,
        &[
            is(failed("empty", "no_endpoints"), 1.0),
            is(failed("dead", "refused"), 1.0),
            is(failed("stuck", "timeout"), 1.0),
            is(series("edgemesh_endpoint_ejections_total", "dead"), 1.0),
            is(series("edgemesh_endpoint_ejections_total", "stuck"), 1.0),
            is(series("edgemesh_tcp_connections_opened_total", "dead"), 1.0),
            is(series("edgemesh_tcp_connections_active", "stuck"), 0.0),
            is(series("edgemesh_tcp_connect_duration_seconds_count", "dead"), 0.0),
        ],
    )
    .await;
    for (name, reason) in [("empty", "refused"), ("dead", "timeout"), ("stuck", "refused"), ("dead", "limit")] {
        assert_eq!(sample(&text, &failed(name, reason)), Some(0.0), "{name} {reason}:\n{text}");
    }
    h.stop().await;

    // Over the connection limit: one connection held open, the next reset.
    let mut h = start_registry(122, LbStrategy::RoundRobin);
    let registry = h.start_counted_proxy(ProxyConfig { max_connections: 1, ..config() }, None, 100);
    add_service(&mut h, "web", &[tcp_echo().await]).await;
    let mut held = TcpStream::connect(h.addr("web")).await.unwrap();
    held.write_all(b"hold").await.unwrap();
    held.read_exact(&mut [0u8; 4]).await.unwrap();
    assert!(is_reset_or_eof(&connect_and_read(h.addr("web")).await));
    settles(
        &registry,
        &[
            is(failed("web", "limit"), 1.0),
            is(series("edgemesh_tcp_connections_opened_total", "web"), 2.0),
            is(series("edgemesh_tcp_connections_active", "web"), 1.0),
        ],
    )
    .await;
    h.stop().await;
}

/// Past `maxServices` a service counts under `other`; a deleted service's
/// series go, its label slot is reused, and `other`'s series stay for the
/// services still folded into it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_service_cap_folds_into_other_and_gone_services_leave_the_scrape() {
    let mut h = start_registry(123, LbStrategy::RoundRobin);
    let registry = h.start_counted_proxy(config(), None, 1);
    let backend = tcp_echo().await;
    add_service(&mut h, "a", &[backend]).await;
    add_service(&mut h, "b", &[backend]).await;
    add_service(&mut h, "c", &[backend]).await;
    for name in ["a", "b", "c"] {
        echo(h.addr(name), b"ping").await;
    }
    let opened = |name| series("edgemesh_tcp_connections_opened_total", name);
    let sent = |name| series("edgemesh_tcp_sent_bytes_total", name);
    settles(
        &registry,
        &[
            is(opened("a"), 1.0),
            is(opened("other"), 2.0),
            is(sent("other"), 8.0),
            (opened("b"), None),
            (opened("c"), None),
            is("edgemesh_service_label_folded_values".to_owned(), 2.0),
        ],
    )
    .await;

    h.delete(ObjectKind::Service, "a", gone("a")).await;
    let text = registry.encode(Format::Text);
    assert!(!text.contains("service=\"default/a\""), "every series of the deleted service is gone:\n{text}");
    h.delete(ObjectKind::Service, "b", gone("b")).await;
    assert_eq!(sample(&registry.encode(Format::Text), "edgemesh_service_label_folded_values"), Some(1.0));
    assert_eq!(sample(&registry.encode(Format::Text), &opened("other")), Some(2.0), "other's series stay");

    add_service(&mut h, "d", &[backend]).await;
    echo(h.addr("d"), b"ping").await;
    echo(h.addr("c"), b"ping").await;
    let text = settles(&registry, &[is(opened("d"), 1.0), is(opened("other"), 3.0)]).await;
    promtool_check(&text);
    h.stop().await;
}

/// UDP: a session per client, datagram bytes each way exactly, and
/// datagrams that cannot be forwarded counted as dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_sessions_bytes_and_drops_are_counted() {
    let mut h = start_registry(124, LbStrategy::RoundRobin);
    let registry = h.start_counted_proxy(config(), None, 100);
    let udp = |name: &str| svc_builder(NS, name).udp_port("p", PORT, 9).object();
    add_on_nodes(&mut h, udp("dns"), "dns", &[(udp_echo().await, "node-a")], true).await;
    h.apply(udp("void"), exists("void")).await;

    let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    client.connect(h.addr("dns")).await.unwrap();
    let sizes = [1usize, 512, 1400, 9000];
    let mut buf = vec![0u8; 65_536];
    for size in sizes {
        client.send(&vec![3u8; size]).await.unwrap();
        let n = tokio::time::timeout(WAIT, client.recv(&mut buf)).await.expect("an echo").unwrap();
        assert_eq!(n, size);
    }
    let other = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    other.send_to(b"x", h.addr("dns")).await.unwrap();
    tokio::time::timeout(WAIT, other.recv(&mut buf)).await.expect("an echo").unwrap();
    for _ in 0..3 {
        other.send_to(b"lost", h.addr("void")).await.unwrap();
    }
    let total = (sizes.iter().sum::<usize>() + 1) as f64;
    let text = settles(
        &registry,
        &[
            is(series("edgemesh_udp_sessions_opened_total", "dns"), 2.0),
            is(series("edgemesh_udp_sessions_active", "dns"), 2.0),
            is(series("edgemesh_udp_sent_bytes_total", "dns"), total),
            is(series("edgemesh_udp_received_bytes_total", "dns"), total),
            is(series("edgemesh_udp_dropped_datagrams_total", "dns"), 0.0),
            is(series("edgemesh_udp_dropped_datagrams_total", "void"), 3.0),
            is(series("edgemesh_udp_sessions_opened_total", "void"), 0.0),
            (series("edgemesh_tcp_connections_opened_total", "dns"), None),
        ],
    )
    .await;
    promtool_check(&text);
    h.stop().await;
}

/// A port a service no longer has loses its series; the service's other
/// ports keep theirs (their counts included).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_port_loses_its_series_and_the_others_keep_theirs() {
    let mut h = start_registry(125, LbStrategy::RoundRobin);
    let registry = h.start_counted_proxy(config(), None, 100);
    let two_ports = svc_builder(NS, "web").port("http", PORT, 80).port("admin", 9090, 81).object();
    h.apply(two_ports, exists("web")).await;
    assert!(is_reset_or_eof(&connect_and_read(h.addr("web")).await), "no endpoints: reset");
    let admin = format!("edgemesh_tcp_connections_opened_total{{service=\"{NS}/web\",port=\"9090\"}}");
    let http = series("edgemesh_tcp_connections_opened_total", "web");
    settles(&registry, &[is(http.clone(), 1.0), is(admin.clone(), 0.0)]).await;

    let one_port = svc_builder(NS, "web").port("http", PORT, 80).object();
    let web = ServiceKey::new(NS, "web");
    h.apply(one_port, move |s| s.service(&web).is_some_and(|e| e.ports.len() == 1)).await;
    let text = registry.encode(Format::Text);
    assert!(!text.contains("port=\"9090\""), "the removed port's series are gone:\n{text}");
    assert_eq!(sample(&text, &http), Some(1.0), "{text}");
    h.stop().await;
}

/// `proxy.maxConnectionsPerService`: past it, new connections to that
/// service are reset and counted with reason `limit`, while another
/// service keeps being served; a slot freed is taken again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_at_its_own_limit_resets_new_connections_and_others_are_served() {
    let mut h = start_registry(121, LbStrategy::RoundRobin);
    let registry = h.start_counted_proxy(ProxyConfig { max_connections_per_service: 3, ..config() }, None, 100);
    add_service(&mut h, "web", &[tcp_echo().await]).await;
    add_service(&mut h, "api", &[tcp_echo().await]).await;
    let held = |addr| async move {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"x").await.unwrap();
        s.read_exact(&mut [0u8; 1]).await.unwrap();
        s
    };
    let mut web = Vec::new();
    for _ in 0..3 {
        web.push(held(h.addr("web")).await);
    }
    for _ in 0..2 {
        let r = connect_and_read(h.addr("web")).await;
        assert!(is_reset_or_eof(&r), "web is full: {r:?}");
    }
    // The other service has its own three.
    let mut api = Vec::new();
    for _ in 0..3 {
        api.push(held(h.addr("api")).await);
    }
    settles(
        &registry,
        &[
            is(failed("web", "limit"), 2.0),
            is(failed("api", "limit"), 0.0),
            is(series("edgemesh_tcp_connections_active", "web"), 3.0),
            is(series("edgemesh_tcp_connections_active", "api"), 3.0),
        ],
    )
    .await;
    // One of web's ends: its slot is free again.
    drop(web.pop());
    settles(&registry, &[is(series("edgemesh_tcp_connections_active", "web"), 2.0)]).await;
    web.push(held(h.addr("web")).await);
    let r = connect_and_read(h.addr("web")).await;
    assert!(is_reset_or_eof(&r), "full again: {r:?}");
    settles(&registry, &[is(failed("web", "limit"), 3.0)]).await;
    drop((web, api));
    h.stop().await;
}

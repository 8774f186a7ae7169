//! The real server on 127.0.0.1:0, fed by a real registry, queried with the
//! real `dig`.

mod common;

use std::io::Write;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use common::{FakeUpstream, Harness, silent_upstream};
use edgemesh_core::build;
use edgemesh_core::{ObjectKey, ObjectKind, ServiceKey, SourceEvent};
use edgemesh_dns::{DnsConfig, DnsServer};
use edgemesh_test_support::loopback::closed_udp_port;

fn web() -> Vec<edgemesh_core::Object> {
    vec![
        build::service("default", "web").port("http", 80, 8080).object(),
        build::slice("default", "web-1", "web").endpoint("10.0.0.1", "n1").port("http", 8080).object(),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_a_srv_ptr_and_negative_answers() {
    let h = Harness::start(web(), vec![]).await;
    let vip = h.vip("default", "web");

    let a = h.dig(&["web.default.svc.cluster.local", "A"]).await;
    assert_eq!(a.status, "NOERROR", "{}", a.raw);
    assert!(a.has_flag("aa"), "{}", a.raw);
    assert_eq!(a.answers("A"), vec![vip.clone()]);
    assert_eq!(a.ttl(), 5);

    let upper = h.dig(&["WEB.Default.SVC.cluster.LOCAL", "A"]).await;
    assert_eq!(upper.answers("A"), vec![vip.clone()], "{}", upper.raw);

    let srv = h.dig(&["_http._tcp.web.default.svc.cluster.local", "SRV"]).await;
    assert_eq!(srv.answers("SRV"), vec!["0 100 80 web.default.svc.cluster.local."], "{}", srv.raw);
    assert_eq!(srv.additionals("A"), vec![vip.clone()], "{}", srv.raw);

    let ptr = h.dig(&["-x", &vip]).await;
    assert_eq!(ptr.answers("PTR"), vec!["web.default.svc.cluster.local."], "{}", ptr.raw);

    let nodata = h.dig(&["web.default.svc.cluster.local", "AAAA"]).await;
    assert_eq!(nodata.status, "NOERROR", "{}", nodata.raw);
    assert!(nodata.answer.is_empty(), "{}", nodata.raw);
    assert_eq!(nodata.authority[0][3], "SOA", "{}", nodata.raw);

    let nx = h.dig(&["nope.default.svc.cluster.local", "A"]).await;
    assert_eq!(nx.status, "NXDOMAIN", "{}", nx.raw);
    assert!(nx.has_flag("aa"), "{}", nx.raw);
    assert_eq!(nx.authority.len(), 1, "{}", nx.raw);
    assert_eq!(nx.authority[0][0], "cluster.local.");
    assert_eq!(nx.authority[0][3], "SOA");
    assert_eq!(nx.authority[0][1], "5", "negative TTL: {}", nx.raw);

    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headless_services_answer_endpoints() {
    let h = Harness::start(
        vec![
            build::service("prod", "db").port("pg", 5432, 5432).headless().object(),
            build::slice("prod", "db-1", "db")
                .hostname("10.1.0.1", "n1", "db-0")
                .endpoint("10.1.0.2", "n2")
                .not_ready("10.1.0.3", "n3")
                .port("pg", 5432)
                .object(),
        ],
        vec![],
    )
    .await;
    let a = h.dig(&["db.prod.svc.cluster.local"]).await;
    assert_eq!(a.answers("A"), vec!["10.1.0.1", "10.1.0.2"], "{}", a.raw);
    let host = h.dig(&["db-0.db.prod.svc.cluster.local"]).await;
    assert_eq!(host.answers("A"), vec!["10.1.0.1"], "{}", host.raw);
    let srv = h.dig(&["_pg._tcp.db.prod.svc.cluster.local", "SRV"]).await;
    assert_eq!(
        srv.answers("SRV"),
        vec!["0 50 5432 10-1-0-2.db.prod.svc.cluster.local.", "0 50 5432 db-0.db.prod.svc.cluster.local."],
        "{}",
        srv.raw
    );
    assert_eq!(srv.additionals("A"), vec!["10.1.0.1", "10.1.0.2"], "{}", srv.raw);
    let dashed = h.dig(&["10-1-0-2.db.prod.svc.cluster.local"]).await;
    assert_eq!(dashed.answers("A"), vec!["10.1.0.2"], "{}", dashed.raw);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_changes_show_at_once() {
    let h = Harness::start(vec![], vec![]).await;
    let before = h.dig(&["web.default.svc.cluster.local"]).await;
    assert_eq!(before.status, "NXDOMAIN", "{}", before.raw);

    h.apply_all(web()).await;
    let vip = h.vip("default", "web");
    let after = h.dig(&["web.default.svc.cluster.local"]).await;
    assert_eq!(after.answers("A"), vec![vip], "{}", after.raw);

    // Headless: a new endpoint is served with the next snapshot.
    h.apply_all(vec![
        build::service("default", "hl").headless().object(),
        build::slice("default", "hl-1", "hl").endpoint("10.2.0.1", "n1").object(),
    ])
    .await;
    assert_eq!(h.dig(&["hl.default.svc.cluster.local"]).await.answers("A"), vec!["10.2.0.1"]);
    h.apply_all(vec![
        build::slice("default", "hl-1", "hl").endpoint("10.2.0.1", "n1").endpoint("10.2.0.2", "n2").object(),
    ])
    .await;
    assert_eq!(h.dig(&["hl.default.svc.cluster.local"]).await.answers("A"), vec!["10.2.0.1", "10.2.0.2"]);

    h.sink
        .send(SourceEvent::Delete(ObjectKey {
            kind: ObjectKind::Service,
            namespace: "default".into(),
            name: "web".into(),
        }))
        .await
        .unwrap();
    h.wait_for(|s| s.service(&ServiceKey::new("default", "web")).is_none()).await;
    let gone = h.dig(&["web.default.svc.cluster.local"]).await;
    assert_eq!(gone.status, "NXDOMAIN", "{}", gone.raw);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outside_names_are_forwarded_and_cached() {
    let upstream = FakeUpstream::start(2).await;
    let h = Harness::start(web(), vec![upstream.addr]).await;

    let first = h.dig(&["www.example.com"]).await;
    assert_eq!(first.status, "NOERROR", "{}", first.raw);
    assert_eq!(first.answers("A"), vec!["192.0.2.1"]);
    assert!(!first.has_flag("aa"), "{}", first.raw);
    assert!(first.has_flag("ra"), "{}", first.raw);
    assert_eq!(upstream.queries(), 1);

    // Within the TTL, in any case: from the cache.
    let second = h.dig(&["WWW.Example.COM"]).await;
    assert_eq!(second.answers("A"), vec!["192.0.2.1"], "{}", second.raw);
    assert!(second.ttl() <= 2);
    assert_eq!(upstream.queries(), 1, "second query must come from the cache");

    // Another type is another key.
    h.dig(&["www.example.com", "AAAA"]).await;
    assert_eq!(upstream.queries(), 2);

    // Negative answers are cached too (SOA minimum 2 s).
    let nx = h.dig(&["nx.example.com"]).await;
    assert_eq!(nx.status, "NXDOMAIN", "{}", nx.raw);
    assert_eq!(nx.authority[0][3], "SOA", "{}", nx.raw);
    h.dig(&["nx.example.com"]).await;
    assert_eq!(upstream.queries(), 3);

    // After the TTL the upstream is asked again.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let third = h.dig(&["www.example.com"]).await;
    assert_eq!(third.answers("A"), vec!["192.0.2.1"], "{}", third.raw);
    assert_eq!(upstream.queries(), 4);

    // Cluster names never reach the upstream.
    h.dig(&["web.default.svc.cluster.local"]).await;
    h.dig(&["nope.default.svc.cluster.local"]).await;
    assert_eq!(upstream.queries(), 4);

    // PTR for an address that is no service: forwarded.
    h.dig(&["-x", "10.9.9.9"]).await;
    assert_eq!(upstream.queries(), 5);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncated_upstream_answers_are_fetched_over_tcp() {
    let upstream = FakeUpstream::start(30).await;
    let h = Harness::start(vec![], vec![upstream.addr]).await;
    let big = h.dig(&["+tcp", "big.example"]).await;
    assert_eq!(big.answers("A").len(), 80, "{}", big.raw);
    assert_eq!(upstream.udp_queries.load(std::sync::atomic::Ordering::SeqCst), 1);
    assert_eq!(upstream.tcp_queries.load(std::sync::atomic::Ordering::SeqCst), 1);
    // Too big for a plain UDP client: TC, and the cached answer over TCP.
    let udp = h.dig(&["+ignore", "+noedns", "big.example"]).await;
    assert!(udp.has_flag("tc"), "{}", udp.raw);
    assert_eq!(upstream.queries(), 2);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_upstreams_give_servfail_quickly() {
    // Refused (ICMP port unreachable): immediately.
    let closed = closed_udp_port();
    let config = DnsConfig { upstreams: vec![closed], upstream_timeout: Duration::from_secs(5), ..common::config() };
    let h = Harness::start_with(vec![], config).await;
    let started = Instant::now();
    let refused = h.dig(&["www.example.com"]).await;
    assert_eq!(refused.status, "SERVFAIL", "{}", refused.raw);
    assert!(started.elapsed() < Duration::from_secs(1), "refused upstream took {:?}", started.elapsed());
    h.stop().await;

    // Silence: within the timeout.
    let silent = silent_upstream().await;
    let config = DnsConfig {
        upstreams: vec![silent.local_addr().unwrap()],
        upstream_timeout: Duration::from_millis(500),
        ..common::config()
    };
    let h = Harness::start_with(vec![], config).await;
    let started = Instant::now();
    let timed_out = h.dig(&["www.example.com"]).await;
    assert_eq!(timed_out.status, "SERVFAIL", "{}", timed_out.raw);
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(450) && took < Duration::from_millis(1500), "silent upstream took {took:?}");
    h.stop().await;

    // A dead first upstream: the second one answers.
    let upstream = FakeUpstream::start(30).await;
    let h = Harness::start(vec![], vec![closed_udp_port(), upstream.addr]).await;
    let ok = h.dig(&["www.example.com"]).await;
    assert_eq!(ok.answers("A"), vec!["192.0.2.1"], "{}", ok.raw);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_upstreams_outside_names_are_refused() {
    let h = Harness::start(vec![], vec![]).await;
    let out = h.dig(&["www.example.com"]).await;
    assert_eq!(out.status, "REFUSED", "{}", out.raw);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_packets_are_dropped_without_harm() {
    let h = Harness::start(web(), vec![]).await;
    let garbage: Vec<Vec<u8>> = vec![
        vec![],
        vec![0],
        vec![0xff; 11],
        vec![0xab; 12],
        vec![0x12, 0x34, 0x01, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0xc0, 0x0c],
        vec![0x12, 0x34, 0x01, 0x00, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 63, b'a'],
        (0..4000u32).map(|i| (i * 7919 % 251) as u8).collect(),
    ];
    let udp = std::net::UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    for packet in &garbage {
        udp.send_to(packet, h.addr).unwrap();
    }
    for packet in &garbage {
        let mut tcp = std::net::TcpStream::connect(h.addr).unwrap();
        let mut framed = u16::try_from(packet.len()).expect("a DNS message").to_be_bytes().to_vec();
        framed.extend_from_slice(packet);
        let _ = tcp.write_all(&framed);
    }
    // Raw bytes with a nonsense length, then a hang-up.
    let mut tcp = std::net::TcpStream::connect(h.addr).unwrap();
    let _ = tcp.write_all(&[0xff, 0xff, 1, 2, 3]);
    drop(tcp);

    let a = h.dig(&["web.default.svc.cluster.local"]).await;
    assert_eq!(a.status, "NOERROR", "{}", a.raw);
    let a = h.dig(&["+tcp", "web.default.svc.cluster.local"]).await;
    assert_eq!(a.status, "NOERROR", "{}", a.raw);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_answers_truncate_over_udp_and_come_whole_over_tcp() {
    let mut slice = build::slice("default", "big-1", "big");
    for i in 0..100 {
        slice = slice.endpoint(&format!("10.3.{}.{}", i / 250, i % 250 + 1), "n1");
    }
    let h = Harness::start(
        vec![
            build::service("default", "big").port("http", 80, 80).headless().object(),
            slice.port("http", 80).object(),
        ],
        vec![],
    )
    .await;
    let udp = h.dig(&["+ignore", "+noedns", "big.default.svc.cluster.local"]).await;
    assert!(udp.has_flag("tc"), "{}", udp.raw);
    let tcp = h.dig(&["+tcp", "big.default.svc.cluster.local"]).await;
    assert_eq!(tcp.answers("A").len(), 100, "{}", tcp.raw);
    assert!(!tcp.has_flag("tc"));
    // dig's default (EDNS 1232, retry over TCP on TC) gets everything too.
    let auto = h.dig(&["big.default.svc.cluster.local"]).await;
    assert_eq!(auto.answers("A").len(), 100, "{}", auto.raw);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bind_errors_name_the_address() {
    let h = Harness::start(vec![], vec![]).await;
    let taken = DnsConfig { listen: Some(h.addr), ..common::config() };
    let err = DnsServer::bind(taken, h.snapshots.clone()).await.unwrap_err().to_string();
    assert!(err.contains(&h.addr.to_string()), "{err}");
    assert!(err.contains("TCP"), "{err}");

    let bad_domain = DnsConfig { cluster_domain: "bad..domain".into(), ..common::config() };
    let err = DnsServer::bind(bad_domain, h.snapshots.clone()).await.unwrap_err().to_string();
    assert!(err.contains("bad..domain"), "{err}");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_connections_answer_pipelined_queries_in_order() {
    use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
    use hickory_proto::rr::{Name, RecordType};
    use std::io::Read;

    let h = Harness::start(web(), vec![]).await;
    let vip = h.vip("default", "web");
    let addr = h.addr;
    tokio::task::spawn_blocking(move || {
        let mut tcp = std::net::TcpStream::connect(addr).unwrap();
        tcp.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let mut framed = Vec::new();
        for (id, name) in [(1u16, "web.default.svc.cluster.local."), (2, "nope.default.svc.cluster.local.")] {
            let mut m = Message::new(id, MessageType::Query, OpCode::Query);
            m.add_query(Query::query(Name::from_ascii(name).unwrap(), RecordType::A));
            let bytes = m.to_vec().unwrap();
            framed.extend_from_slice(&u16::try_from(bytes.len()).expect("a DNS message").to_be_bytes());
            framed.extend_from_slice(&bytes);
        }
        tcp.write_all(&framed).unwrap();
        let mut read = || {
            let mut len = [0u8; 2];
            tcp.read_exact(&mut len).unwrap();
            let mut buf = vec![0u8; usize::from(u16::from_be_bytes(len))];
            tcp.read_exact(&mut buf).unwrap();
            Message::from_vec(&buf).unwrap()
        };
        let (first, second) = (read(), read());
        assert_eq!(first.metadata.id, 1);
        assert_eq!(first.answers[0].data.to_string(), vip);
        assert_eq!(second.metadata.id, 2);
        assert_eq!(second.metadata.response_code, ResponseCode::NXDomain);
    })
    .await
    .unwrap();
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_identical_questions_share_one_upstream_query() {
    let upstream = FakeUpstream::start(30).await;
    let h = Harness::start(vec![], vec![upstream.addr]).await;
    let digs: Vec<_> = (0..5).map(|_| common::dig(h.addr, &["slow.example.com"])).collect();
    for out in futures_join_all(digs).await {
        assert_eq!(out.answers("A"), vec!["192.0.2.1"], "{}", out.raw);
    }
    assert_eq!(upstream.queries(), 1);
    h.stop().await;
}

/// Runs the futures concurrently (no `futures` dependency for one call).
async fn futures_join_all<F: std::future::Future + Send + 'static>(futures: Vec<F>) -> Vec<F::Output>
where
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futures.into_iter().map(tokio::spawn).collect();
    let mut out = Vec::new();
    for handle in handles {
        out.push(handle.await.unwrap());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_closes_tcp_connections_and_frees_the_address() {
    use std::io::Read;

    let h = Harness::start(web(), vec![]).await;
    let addr = h.addr;
    // An idle TCP client must not hold the shutdown up, and must be hung up on.
    let mut idle = std::net::TcpStream::connect(addr).unwrap();
    idle.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let a = h.dig(&["+tcp", "web.default.svc.cluster.local"]).await;
    assert_eq!(a.status, "NOERROR", "{}", a.raw);
    let snapshots = h.snapshots.clone();
    h.stop().await;
    let closed = tokio::task::spawn_blocking(move || idle.read(&mut [0u8; 1])).await.unwrap();
    // EOF or a reset; a read timeout (WouldBlock/TimedOut) means still open.
    match closed {
        Ok(0) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        other => panic!("idle TCP connection left open: {other:?}"),
    }
    // Both protocols are free again for the next agent.
    let again = DnsServer::bind(DnsConfig { listen: Some(addr), ..common::config() }, snapshots).await;
    assert!(again.is_ok(), "{:?}", again.err());
}

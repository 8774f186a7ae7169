//! The proxy end to end on loopback: registry -> listeners -> backends.
//! Each test has its own VIP range `127.77.<n>.0/24`.

mod common;

use std::collections::HashMap;
use std::io;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::*;
use edgemesh_core::{LbStrategy, ObjectKind, ServiceKey};
use edgemesh_proxy::ProxyConfig;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn three_backends() -> Vec<std::net::SocketAddr> {
    vec![identity_backend("a").await, identity_backend("b").await, identity_backend("c").await]
}

async fn spread(addr: std::net::SocketAddr, n: usize) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for _ in 0..n {
        *counts.entry(ask(addr).await.expect("proxied connection")).or_default() += 1;
    }
    counts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_spreads_evenly() {
    let mut h = start(1, LbStrategy::RoundRobin).await;
    add_service(&mut h, "web", &three_backends().await).await;
    let counts = spread(h.addr("web"), 30).await;
    assert_eq!(counts.len(), 3, "{counts:?}");
    assert!(counts.values().all(|&c| c == 10), "round robin is exact: {counts:?}");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_spreads_roughly_evenly() {
    let mut h = start(2, LbStrategy::RoundRobin).await;
    let svc = edgemesh_core::build::service(NS, "web")
        .port("http", PORT, 80)
        .annotation(LbStrategy::ANNOTATION, "Random")
        .object();
    h.apply(svc, exists("web")).await;
    for (i, b) in three_backends().await.into_iter().enumerate() {
        h.sink.send(edgemesh_core::SourceEvent::Apply(slice_for("web", i, b))).await.unwrap();
    }
    h.settle(has_backends("web", 3)).await;
    assert_eq!(h.snapshots.borrow().service(&ServiceKey::new(NS, "web")).unwrap().strategy, LbStrategy::Random);
    let counts = spread(h.addr("web"), 300).await;
    // Binomial(300, 1/3): sd ~ 8; 60..140 is about 5 sd either side.
    assert_eq!(counts.len(), 3, "{counts:?}");
    assert!(counts.values().all(|&c| (60..=140).contains(&c)), "{counts:?}");
    // And it is not round robin in disguise: some consecutive repeats.
    let mut last = String::new();
    let mut repeats = 0;
    for _ in 0..30 {
        let id = ask(h.addr("web")).await.unwrap();
        repeats += usize::from(id == last);
        last = id;
    }
    assert!(repeats > 0, "30 random picks among 3 without one repeat is vanishingly unlikely");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_endpoint_is_skipped() {
    let mut h = start(3, LbStrategy::RoundRobin).await;
    let backends = vec![identity_backend("a").await, closed_tcp_port(), identity_backend("c").await];
    add_service(&mut h, "web", &backends).await;
    let counts = spread(h.addr("web"), 30).await;
    assert_eq!(counts.values().sum::<usize>(), 30, "every client succeeds: {counts:?}");
    assert_eq!(counts.keys().len(), 2, "{counts:?}");
    assert_eq!(load(&h.status.failed_connections), 0);
    h.stop().await;
}

/// An endpoint that accepts no more connections (full accept queue, so its
/// SYNs are dropped) times out and the next one is used.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timed_out_endpoint_is_skipped() {
    let config =
        ProxyConfig { connect_timeout: Duration::from_millis(200), max_connections: 100, ..ProxyConfig::default() };
    let mut h = start_with(4, LbStrategy::RoundRobin, config).await;
    let (stuck_addr, _stuck, _fillers) = stuck_endpoint().await;
    add_service(&mut h, "web", &[identity_backend("a").await, stuck_addr]).await;
    let started = Instant::now();
    let counts = spread(h.addr("web"), 4).await;
    assert_eq!(counts.get("a"), Some(&4), "{counts:?}");
    // The first connection that tried it waited out a 200 ms timeout, which
    // ejected the endpoint: the others went straight to "a".
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(200) && took < Duration::from_millis(400), "{took:?}");
    assert_eq!(load(&h.status.failed_connections), 0);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_ready_endpoint_resets_the_client_at_once() {
    let mut h = start(5, LbStrategy::RoundRobin).await;
    h.apply(service("web"), exists("web")).await;
    let slice = edgemesh_core::build::slice(NS, "web-0", "web").not_ready("127.0.0.1", "n").port("http", 9).object();
    h.apply(slice, |s| s.service(&ServiceKey::new(NS, "web")).is_some_and(|e| e.endpoints.len() == 1)).await;
    for _ in 0..3 {
        let started = Instant::now();
        let r = connect_and_read(h.addr("web")).await;
        assert!(matches!(r, Err(ref e) if e.kind() == io::ErrorKind::ConnectionReset), "SO_LINGER 0 -> RST: {r:?}");
        assert!(started.elapsed() < Duration::from_millis(500));
    }
    assert_eq!(load(&h.status.failed_connections), 3);
    // All endpoints refusing is the same to the client.
    let slice = edgemesh_core::build::slice(NS, "web-0", "web")
        .endpoint("127.0.0.1", "n")
        .port("http", closed_tcp_port().port())
        .object();
    h.apply(slice, has_backends("web", 1)).await;
    let r = connect_and_read(h.addr("web")).await;
    assert!(is_reset_or_eof(&r), "{r:?}");
    assert_eq!(load(&h.status.failed_connections), 4);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_close_passes_through() {
    let mut h = start(6, LbStrategy::RoundRobin).await;
    add_service(&mut h, "web", &[reply_after_eof_backend("b").await]).await;
    let mut s = TcpStream::connect(h.addr("web")).await.unwrap();
    s.write_all(b"hello, backend").await.unwrap();
    s.shutdown().await.unwrap();
    let mut reply = String::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_string(&mut reply)).await.unwrap().unwrap();
    assert_eq!(reply, "b:14");
    h.stop().await;
}

/// Deterministic test data: SplitMix64 words, so both ends can check every
/// byte without keeping a copy.
fn pattern_chunk(offset: u64, buf: &mut [u8]) {
    for (i, word) in buf.chunks_mut(8).enumerate() {
        let mut z = (offset / 8 + i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        word.copy_from_slice(&(z ^ (z >> 31)).to_le_bytes()[..word.len()]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_transfer_is_faithful_both_ways() {
    const TOTAL: u64 = 64 << 20;
    const CHUNK: usize = 64 << 10;
    let mut h = start(7, LbStrategy::RoundRobin).await;
    add_service(&mut h, "echo", &[tcp_echo().await]).await;
    let s = TcpStream::connect(h.addr("echo")).await.unwrap();
    let (mut r, mut w) = s.into_split();
    let writer = tokio::spawn(async move {
        let mut buf = vec![0u8; CHUNK];
        let mut off = 0;
        while off < TOTAL {
            pattern_chunk(off, &mut buf);
            w.write_all(&buf).await.unwrap();
            off += CHUNK as u64;
        }
        w.shutdown().await.unwrap();
    });
    let started = Instant::now();
    let mut buf = vec![0u8; CHUNK];
    let mut expect = vec![0u8; CHUNK];
    let mut off: u64 = 0;
    loop {
        // Read whole chunks to compare against the pattern at fixed offsets.
        match r.read_exact(&mut buf).await {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => break,
            Err(e) => panic!("read failed at {off}: {e}"),
        }
        pattern_chunk(off, &mut expect);
        assert!(buf == expect, "corrupted data in chunk at offset {off}");
        off += CHUNK as u64;
    }
    writer.await.unwrap();
    assert_eq!(off, TOTAL, "every byte came back, then EOF");
    let secs = started.elapsed().as_secs_f64();
    eprintln!("64 MiB each way through the proxy in {secs:.2}s (debug build)");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_service_accepts_within_a_second_and_deleted_one_refuses() {
    let mut h = start(8, LbStrategy::RoundRobin).await;
    let backend = identity_backend("a").await;
    let sent = Instant::now();
    h.sink.send(edgemesh_core::SourceEvent::Apply(service("web"))).await.unwrap();
    h.sink.send(edgemesh_core::SourceEvent::Apply(slice_for("web", 0, backend))).await.unwrap();
    let vip = {
        let snapshot = tokio::time::timeout(Duration::from_secs(1), h.snapshots.wait_for(|s| exists("web")(s)))
            .await
            .unwrap()
            .unwrap();
        snapshot.service(&ServiceKey::new(NS, "web")).unwrap().vip.unwrap()
    };
    let addr = std::net::SocketAddr::new(vip, PORT);
    loop {
        if let Ok(id) = ask(addr).await
            && id == "a"
        {
            break;
        }
        assert!(sent.elapsed() < Duration::from_secs(1), "not accepting within a second");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    eprintln!("accepting {:?} after the objects were sent", sent.elapsed());
    assert_eq!(h.status.listeners.load(Ordering::Relaxed), 1);

    h.delete(ObjectKind::Service, "web", gone("web")).await;
    // The listening socket is closed synchronously by the reconcile.
    let err = TcpStream::connect(addr).await.expect_err("deleted service refuses");
    assert_eq!(err.kind(), io::ErrorKind::ConnectionRefused);
    assert_eq!(h.status.listeners.load(Ordering::Relaxed), 0);

    // Re-creating it binds the same address again.
    h.apply(service("web"), has_backends("web", 1)).await;
    assert_eq!(h.addr("web"), addr);
    assert_eq!(ask(addr).await.unwrap(), "a");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_change_keeps_established_connections() {
    let mut h = start(9, LbStrategy::RoundRobin).await;
    let old = tcp_echo().await;
    add_service(&mut h, "web", &[old]).await;
    let mut open = TcpStream::connect(h.addr("web")).await.unwrap();
    let mut buf = [0u8; 5];
    open.write_all(b"first").await.unwrap();
    open.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"first");

    // Replace the only endpoint.
    let new = identity_backend("new").await;
    h.apply(slice_for("web", 0, new), |s| {
        s.service(&ServiceKey::new(NS, "web"))
            .is_some_and(|e| e.ports[0].backends.first().is_some_and(|b| b.addr == new))
    })
    .await;
    assert_eq!(ask(h.addr("web")).await.unwrap(), "new", "new connections use the new endpoint");
    assert_eq!(h.status.listeners.load(Ordering::Relaxed), 1, "no re-bind");

    // The old connection still works, both ways, and closes cleanly.
    open.write_all(b"again").await.unwrap();
    open.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"again");
    open.shutdown().await.unwrap();
    assert_eq!(open.read(&mut buf).await.unwrap(), 0);

    // Removing every endpoint does not touch established connections either.
    let mut open = TcpStream::connect(h.addr("web")).await.unwrap();
    let mut id = [0u8; 3];
    open.read_exact(&mut id).await.unwrap();
    h.delete(ObjectKind::EndpointSlice, "web-0", has_backends("web", 0)).await;
    open.write_all(b"still here").await.unwrap();
    open.shutdown().await.unwrap();
    assert_eq!(open.read(&mut id).await.unwrap(), 0, "orderly EOF, not a reset");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_counts_listeners_and_connections() {
    let mut h = start(10, LbStrategy::RoundRobin).await;
    assert_eq!(h.status.listeners.load(Ordering::Relaxed), 0);
    add_service(&mut h, "web", &[tcp_echo().await]).await;
    let two_ports = edgemesh_core::build::service(NS, "db").port("a", 5432, 5432).port("b", 5433, 5433).object();
    h.apply(two_ports, exists("db")).await;
    assert_eq!(h.status.listeners.load(Ordering::Relaxed), 3);
    let generation = h.snapshots.borrow().generation;
    assert!(h.status.has_applied(generation));

    let mut held = Vec::new();
    for _ in 0..3 {
        let mut s = TcpStream::connect(h.addr("web")).await.unwrap();
        s.write_all(b"x").await.unwrap();
        s.read_exact(&mut [0u8; 1]).await.unwrap();
        held.push(s);
    }
    assert_eq!(h.status.active_connections.load(Ordering::Relaxed), 3);
    assert_eq!(load(&h.status.total_connections), 3);
    // db has no endpoints: a failed connection.
    assert!(is_reset_or_eof(&connect_and_read(std::net::SocketAddr::new(h.vip("db"), 5432)).await));
    assert_eq!(load(&h.status.failed_connections), 1);
    assert_eq!(load(&h.status.total_connections), 4);
    drop(held);
    let status = h.status.clone();
    eventually("connections close", WAIT, || {
        let s = status.clone();
        async move { (s.active_connections.load(Ordering::Relaxed) == 0).then_some(()) }
    })
    .await;

    h.delete(ObjectKind::Service, "db", gone("db")).await;
    assert_eq!(h.status.listeners.load(Ordering::Relaxed), 1);
    let status = h.status.clone();
    h.stop().await;
    assert_eq!(status.listeners.load(Ordering::Relaxed), 0, "shutdown closes listeners");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_the_connection_limit_new_connections_are_reset() {
    let config = ProxyConfig { connect_timeout: Duration::from_secs(2), max_connections: 2, ..ProxyConfig::default() };
    let mut h = start_with(11, LbStrategy::RoundRobin, config).await;
    add_service(&mut h, "web", &[tcp_echo().await]).await;
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut s = TcpStream::connect(h.addr("web")).await.unwrap();
        s.write_all(b"x").await.unwrap();
        s.read_exact(&mut [0u8; 1]).await.unwrap();
        held.push(s);
    }
    let r = connect_and_read(h.addr("web")).await;
    assert!(is_reset_or_eof(&r), "{r:?}");
    assert_eq!(load(&h.status.rejected_connections), 1);
    drop(held);
    let status = h.status.clone();
    eventually("slots free up", WAIT, || {
        let s = status.clone();
        async move { (s.active_connections.load(Ordering::Relaxed) == 0).then_some(()) }
    })
    .await;
    let mut s = TcpStream::connect(h.addr("web")).await.unwrap();
    s.write_all(b"y").await.unwrap();
    s.read_exact(&mut [0u8; 1]).await.unwrap();
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bind_failure_is_retried_until_the_address_frees_up() {
    let mut h = start_registry(12, LbStrategy::RoundRobin);
    let backend = identity_backend("a").await;
    add_service_without_proxy(&mut h, "web", backend).await;
    // Someone else holds the VIP:port.
    let squatter = std::net::TcpListener::bind(h.addr("web")).unwrap();
    h.start_proxy(ProxyConfig {
        connect_timeout: Duration::from_secs(2),
        max_connections: 100,
        ..ProxyConfig::default()
    });
    let generation = h.snapshots.borrow().generation;
    h.wait_applied(generation).await;
    assert_eq!(h.status.bind_failures.load(Ordering::Relaxed), 1);
    assert_eq!(h.status.listeners.load(Ordering::Relaxed), 0);
    drop(squatter);
    let status = h.status.clone();
    eventually("the proxy binds on retry", WAIT, || {
        let s = status.clone();
        async move { (s.listeners.load(Ordering::Relaxed) == 1).then_some(()) }
    })
    .await;
    assert_eq!(h.status.bind_failures.load(Ordering::Relaxed), 0);
    assert_eq!(ask(h.addr("web")).await.unwrap(), "a");
    h.stop().await;
}

async fn add_service_without_proxy(h: &mut Harness, name: &str, backend: std::net::SocketAddr) {
    h.sink.send(edgemesh_core::SourceEvent::Apply(service(name))).await.unwrap();
    h.sink.send(edgemesh_core::SourceEvent::Apply(slice_for(name, 0, backend))).await.unwrap();
    tokio::time::timeout(Duration::from_secs(5), h.snapshots.wait_for(|s| has_backends(name, 1)(s)))
        .await
        .unwrap()
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn port_change_moves_the_listener() {
    let mut h = start(13, LbStrategy::RoundRobin).await;
    let backend = identity_backend("a").await;
    add_service(&mut h, "web", &[backend]).await;
    let old = h.addr("web");
    let moved = edgemesh_core::build::service(NS, "web").port("http", PORT + 1, 80).object();
    h.apply(moved, |s| s.service(&ServiceKey::new(NS, "web")).is_some_and(|e| e.ports[0].port == PORT + 1)).await;
    assert_eq!(TcpStream::connect(old).await.unwrap_err().kind(), io::ErrorKind::ConnectionRefused);
    assert_eq!(ask(std::net::SocketAddr::new(old.ip(), PORT + 1)).await.unwrap(), "a");
    assert_eq!(h.status.listeners.load(Ordering::Relaxed), 1);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_closes_listeners_and_connections() {
    let mut h = start(14, LbStrategy::RoundRobin).await;
    add_service(&mut h, "web", &[tcp_echo().await]).await;
    let addr = h.addr("web");
    let mut open = TcpStream::connect(addr).await.unwrap();
    open.write_all(b"x").await.unwrap();
    open.read_exact(&mut [0u8; 1]).await.unwrap();
    h.stop().await;
    assert_eq!(TcpStream::connect(addr).await.unwrap_err().kind(), io::ErrorKind::ConnectionRefused);
    let r = tokio::time::timeout(Duration::from_secs(1), open.read(&mut [0u8; 1])).await.unwrap();
    assert!(is_reset_or_eof(&r), "established connections end at shutdown: {r:?}");
}

/// Every TCP listener is served by one accepting task: a hundred services
/// answer at once, a queue of unanswered connections on one of them does not
/// hold up the others, and the listeners of removed services refuse while
/// the rest keep accepting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_listeners_share_one_acceptor() {
    let mut h = start(15, LbStrategy::RoundRobin).await;
    let backend = identity_backend("x").await;
    let names: Vec<String> = (0..100).map(|i| format!("s{i}")).collect();
    for name in &names {
        h.sink.send(edgemesh_core::SourceEvent::Apply(service(name))).await.unwrap();
        h.sink.send(edgemesh_core::SourceEvent::Apply(slice_for(name, 0, backend))).await.unwrap();
    }
    let all: Vec<_> = names.iter().map(|n| has_backends(n, 1)).collect();
    h.settle(move |s| all.iter().all(|f| f(s))).await;
    assert_eq!(h.status.listeners.load(Ordering::Relaxed), 100);

    // Forty connections queued on s0, none read by the client.
    let mut queued = Vec::new();
    for _ in 0..40 {
        queued.push(TcpStream::connect(h.addr("s0")).await.unwrap());
    }
    let mut asks = tokio::task::JoinSet::new();
    for name in &names {
        let addr = h.addr(name);
        asks.spawn(async move { ask(addr).await });
    }
    while let Some(answer) = asks.join_next().await {
        assert_eq!(answer.unwrap().unwrap(), "x");
    }
    drop(queued);

    let (removed, kept) = names.split_at(50);
    let removed_addrs: Vec<_> = removed.iter().map(|n| h.addr(n)).collect();
    for name in removed {
        h.sink
            .send(edgemesh_core::SourceEvent::Delete(edgemesh_core::ObjectKey {
                kind: ObjectKind::Service,
                namespace: NS.into(),
                name: name.clone(),
            }))
            .await
            .unwrap();
    }
    let gone_all: Vec<_> = removed.iter().map(|n| gone(n)).collect();
    h.settle(move |s| gone_all.iter().all(|f| f(s))).await;
    assert_eq!(h.status.listeners.load(Ordering::Relaxed), 50);
    for addr in removed_addrs {
        assert_eq!(TcpStream::connect(addr).await.unwrap_err().kind(), io::ErrorKind::ConnectionRefused, "{addr}");
    }
    for name in kept {
        assert_eq!(ask(h.addr(name)).await.unwrap(), "x", "{name}");
    }
    h.stop().await;
}

/// A generation of more changes than the snapshot's changelog keeps (8,192)
/// is reconciled without it: the changed services are found by comparing
/// with the last snapshot applied, and those are exactly the ones updated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_generation_past_the_changelog_updates_what_changed_and_keeps_the_rest() {
    let mut h = start(48, LbStrategy::RoundRobin).await;
    let (a, b) = (identity_backend("a").await, identity_backend("b").await);
    for name in ["kept", "web", "moved"] {
        add_service(&mut h, name, &[a]).await;
    }
    // 20,000 more services (headless: no VIP, no listener), so that the
    // registry, still loading, holds 10,000 changes before publishing.
    let bulk = |i: usize| edgemesh_core::build::service(NS, &format!("bulk-{i}")).headless();
    for i in 0..20_000 {
        h.sink.send(edgemesh_core::SourceEvent::Apply(bulk(i).object())).await.unwrap();
    }
    let last = ServiceKey::new(NS, "bulk-19999");
    h.settle(|s| s.service(&last).is_some()).await;
    let (kept, web, moved) = (h.addr("kept"), h.addr("web"), h.addr("moved"));
    let generation = h.snapshots.borrow().generation;

    // One generation: 9,000 bulk services change, "web" gets another
    // backend and "moved" another port; "kept" does not change.
    for i in 0..9_000 {
        let changed = bulk(i).port("p", 7, 7).object();
        h.sink.send(edgemesh_core::SourceEvent::Apply(changed)).await.unwrap();
    }
    let swapped =
        edgemesh_core::build::slice(NS, "web-0", "web").endpoint("127.0.0.1", "node-a").port("http", b.port());
    h.sink.send(edgemesh_core::SourceEvent::Apply(swapped.object())).await.unwrap();
    let moved_port = edgemesh_core::build::service(NS, "moved").port("http", PORT + 1, 80).object();
    h.apply(moved_port, |s| s.service(&ServiceKey::new(NS, "bulk-8999")).is_some_and(|e| !e.ports.is_empty())).await;
    let now = h.snapshots.borrow().clone();
    assert_eq!(now.generation, generation + 1, "one generation");
    assert_eq!(now.changes_since(generation), None, "past the changelog");

    assert_eq!(ask(kept).await.unwrap(), "a");
    assert_eq!(ask(web).await.unwrap(), "b");
    assert_eq!(TcpStream::connect(moved).await.unwrap_err().kind(), io::ErrorKind::ConnectionRefused);
    assert_eq!(ask(std::net::SocketAddr::new(moved.ip(), PORT + 1)).await.unwrap(), "a");
    assert_eq!(h.status.listeners.load(Ordering::Relaxed), 3);
    h.stop().await;
}

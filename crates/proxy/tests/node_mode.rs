//! Node-mode balancing and UDP, end to end on loopback: registry ->
//! listeners -> real TCP and UDP backends on 127.0.0.1, clients on many
//! source addresses of 127/8. Each test has its own VIP range
//! `127.77.<n>.0/24` (n from 40 up; tests/proxy.rs uses the low ones).

mod common;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::*;
use edgemesh_core::build::service as svc_builder;
use edgemesh_core::{InternalTrafficPolicy, LbStrategy, Object, ObjectKind, TrafficDistribution};
use edgemesh_proxy::ProxyConfig;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, UdpSocket};
use tokio::task::JoinHandle;

fn config() -> ProxyConfig {
    ProxyConfig {
        connect_timeout: Duration::from_secs(2),
        max_connections: 1000,
        node_name: "node-a".into(),
        max_udp_sessions: 1000,
        ..ProxyConfig::default()
    }
}

/// Connects from source address `from` and returns what the backend sent.
async fn ask_from(from: IpAddr, addr: SocketAddr) -> std::io::Result<String> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(from, 0))?;
    let mut s = socket.connect(addr).await?;
    let mut out = String::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_string(&mut out)).await??;
    Ok(out)
}

fn client_ip(i: usize) -> IpAddr {
    let byte = |n: usize| u8::try_from(n).expect("at most 62,500 clients");
    IpAddr::from([127, 1, byte(i / 250), byte(i % 250 + 1)])
}

/// An identity backend whose task can be killed (its port then refuses).
async fn killable_backend(id: &'static str) -> (SocketAddr, JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else { return };
            tokio::spawn(async move {
                let _ = s.write_all(id.as_bytes()).await;
                let _ = s.shutdown().await;
            });
        }
    });
    (addr, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_ip_affinity_pins_each_client() {
    let mut h = start_with(40, LbStrategy::RoundRobin, config()).await;
    let backends = [identity_backend("a").await, identity_backend("b").await, identity_backend("c").await];
    let service = svc_builder(NS, "web").port("http", PORT, 80).client_ip_affinity(60).object();
    add_on_nodes(&mut h, service, "web", &backends.map(|b| (b, "node-a")), false).await;
    let addr = h.addr("web");
    let mut firsts = HashMap::new();
    for i in 0..6 {
        let first = ask_from(client_ip(i), addr).await.unwrap();
        for _ in 0..10 {
            assert_eq!(ask_from(client_ip(i), addr).await.unwrap(), first, "client {i} sticks to its endpoint");
        }
        *firsts.entry(first).or_insert(0) += 1;
    }
    // Round robin chose the first endpoint of each client: all three used.
    assert_eq!(firsts.len(), 3, "{firsts:?}");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consistent_hash_by_source_ip_pins_and_moves_about_one_nth() {
    let mut h = start_with(41, LbStrategy::ConsistentHash, config()).await;
    let ids = ["a", "b", "c", "d"];
    let mut backends = Vec::new();
    for id in ids {
        backends.push((identity_backend(id).await, "node-a"));
    }
    add_on_nodes(&mut h, service("web"), "web", &backends, false).await;
    let addr = h.addr("web");
    let clients = 200;
    let mut before = Vec::new();
    for i in 0..clients {
        before.push(ask_from(client_ip(i), addr).await.unwrap());
    }
    for (i, owner) in before.iter().enumerate().take(40) {
        assert_eq!(&ask_from(client_ip(i), addr).await.unwrap(), owner, "the same key, the same endpoint");
    }
    let mut share: HashMap<&str, usize> = HashMap::new();
    for o in &before {
        *share.entry(o.as_str()).or_default() += 1;
    }
    assert_eq!(share.len(), 4, "{share:?}");

    // Endpoint "c" goes away (its slice is deleted).
    h.delete(ObjectKind::EndpointSlice, "web-2", has_backends("web", 3)).await;
    let mut moved = 0;
    for (i, owner) in before.iter().enumerate() {
        let now = ask_from(client_ip(i), addr).await.unwrap();
        if owner == "c" {
            assert_ne!(now, "c");
            moved += 1;
        } else {
            assert_eq!(&now, owner, "client {i} was not on the removed endpoint and must not move");
        }
    }
    // About 1/4 of the keys were on "c".
    assert!((25..=80).contains(&moved), "moved {moved} of {clients}");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_one_of_three_backends_under_load_fails_no_connection() {
    let mut h = start_with(42, LbStrategy::RoundRobin, config()).await;
    let (a, _ta) = killable_backend("a").await;
    let (b, tb) = killable_backend("b").await;
    let (c, _tc) = killable_backend("c").await;
    add_on_nodes(&mut h, service("web"), "web", &[(a, "node-a"), (b, "node-a"), (c, "node-a")], false).await;
    let addr = h.addr("web");
    let done = Arc::new(AtomicUsize::new(0));
    let mut clients = Vec::new();
    for w in 0..4 {
        let done = done.clone();
        clients.push(tokio::spawn(async move {
            let mut got = Vec::new();
            for i in 0..150 {
                let r = ask_from(client_ip(w * 150 + i), addr).await;
                got.push(r.expect("every new connection succeeds"));
                done.fetch_add(1, Ordering::Relaxed);
            }
            got
        }));
    }
    // Kill "b" once the load is running.
    while done.load(Ordering::Relaxed) < 100 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    tb.abort();
    let _ = tb.await;
    let killed_at = done.load(Ordering::Relaxed);
    let mut after_kill = HashMap::<String, usize>::new();
    for c in clients {
        for id in c.await.unwrap().into_iter().skip(killed_at / 4 + 10) {
            *after_kill.entry(id).or_default() += 1;
        }
    }
    assert_eq!(load(&h.status.failed_connections), 0, "no client saw a failure");
    assert!(!after_kill.contains_key("b"), "the dead endpoint gets nothing: {after_kill:?}");
    // Ejected, it is tried again only after its back-off: with the load
    // spread over the live two, about half each.
    let (na, nc) = (after_kill.get("a").copied().unwrap_or(0), after_kill.get("c").copied().unwrap_or(0));
    assert!(na > 0 && nc > 0 && na.abs_diff(nc) < (na + nc) / 3, "{after_kill:?}");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn internal_traffic_policy_local_and_prefer_close() {
    let mut h = start_with(43, LbStrategy::RoundRobin, config()).await;
    let near = identity_backend("near").await;
    let far = identity_backend("far").await;
    let local =
        svc_builder(NS, "local").port("http", PORT, 80).internal_traffic_policy(InternalTrafficPolicy::Local).object();
    add_on_nodes(&mut h, local, "local", &[(near, "node-a"), (far, "node-b")], false).await;
    for _ in 0..6 {
        assert_eq!(ask(h.addr("local")).await.unwrap(), "near", "Local uses this node's endpoints only");
    }
    // Only a remote endpoint: Local has nothing; the client is closed.
    let only_far =
        svc_builder(NS, "lonely").port("http", PORT, 80).internal_traffic_policy(InternalTrafficPolicy::Local).object();
    add_on_nodes(&mut h, only_far, "lonely", &[(far, "node-b")], false).await;
    assert!(ask(h.addr("lonely")).await.map(|s| s.is_empty()).unwrap_or(true), "no local endpoint: closed");

    let (near2, near2_task) = killable_backend("near2").await;
    let prefer = svc_builder(NS, "prefer")
        .port("http", PORT, 80)
        .traffic_distribution(TrafficDistribution::PreferClose)
        .object();
    add_on_nodes(&mut h, prefer, "prefer", &[(far, "node-b"), (near2, "node-a")], false).await;
    for _ in 0..6 {
        assert_eq!(ask(h.addr("prefer")).await.unwrap(), "near2", "PreferClose: the local endpoint");
    }
    near2_task.abort();
    let _ = near2_task.await;
    for _ in 0..6 {
        assert_eq!(ask(h.addr("prefer")).await.unwrap(), "far", "no healthy local endpoint: the remote one");
    }
    h.stop().await;
}

// ---------------------------------------------------------------------------
// UDP

/// A UDP backend that answers each datagram with `<id>:` and the datagram.
async fn udp_echo(id: &'static str) -> (SocketAddr, JoinHandle<()>) {
    udp_echo_on("127.0.0.1:0", id).await
}

/// [`udp_echo`] bound to `bind` (e.g. `[::1]:0`).
async fn udp_echo_on(bind: &str, id: &'static str) -> (SocketAddr, JoinHandle<()>) {
    let socket = UdpSocket::bind(bind).await.unwrap();
    let addr = socket.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let mut buf = vec![0u8; 65_536];
        loop {
            let Ok((n, from)) = socket.recv_from(&mut buf).await else { return };
            let mut reply = format!("{id}:").into_bytes();
            reply.extend_from_slice(&buf[..n]);
            let _ = socket.send_to(&reply, from).await;
        }
    });
    (addr, task)
}

fn udp_service(name: &str, idle: Option<&str>) -> Object {
    let b = svc_builder(NS, name).udp_port("p", PORT, 53);
    match idle {
        Some(t) => b.annotation(edgemesh_core::UDP_IDLE_TIMEOUT_ANNOTATION, t).object(),
        None => b.object(),
    }
}

/// Sends `data` and returns the reply and where it came from.
async fn exchange(client: &UdpSocket, to: SocketAddr, data: &[u8]) -> (Vec<u8>, SocketAddr) {
    client.send_to(data, to).await.unwrap();
    let mut buf = vec![0u8; 65_536];
    let (n, from) =
        tokio::time::timeout(Duration::from_secs(2), client.recv_from(&mut buf)).await.expect("a reply").unwrap();
    (buf[..n].to_vec(), from)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_request_response_from_the_service_address() {
    let mut h = start_with(44, LbStrategy::RoundRobin, config()).await;
    let (a, _ta) = udp_echo("a").await;
    let (b, _tb) = udp_echo("b").await;
    add_on_nodes(&mut h, udp_service("dns", None), "dns", &[(a, "node-a"), (b, "node-a")], true).await;
    let vip = h.addr("dns");
    let mut seen = HashMap::new();
    for i in 0..6 {
        let client = UdpSocket::bind(SocketAddr::new(client_ip(i), 0)).await.unwrap();
        let (reply, from) = exchange(&client, vip, b"query").await;
        assert_eq!(from, vip, "the reply comes from the service address");
        let reply = String::from_utf8(reply).unwrap();
        let id = reply.split(':').next().unwrap().to_owned();
        assert!(reply.ends_with(":query"), "{reply}");
        // The same client address stays on its session's endpoint.
        for _ in 0..5 {
            let (again, _) = exchange(&client, vip, b"again").await;
            assert_eq!(String::from_utf8(again).unwrap(), format!("{id}:again"));
        }
        *seen.entry(id).or_insert(0) += 1;
    }
    assert_eq!(seen.len(), 2, "sessions are balanced over endpoints: {seen:?}");
    assert_eq!(h.status.udp_sessions.load(Ordering::Relaxed), 6);

    // Empty and maximum-size datagrams pass untouched; nothing breaks.
    let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let (reply, _) = exchange(&client, vip, b"").await;
    assert!(reply.len() == 2 && reply.ends_with(b":"), "{reply:?}");
    let big = vec![7u8; 65_000];
    let (reply, _) = exchange(&client, vip, &big).await;
    assert_eq!(reply.len(), 65_002);
    assert!(reply[2..].iter().all(|&b| b == 7));
    h.stop().await;
}

/// A long stream through one session: 100,000 datagrams, each answered.
/// Paced by a window of in-flight datagrams, so no socket buffer on the way
/// can overflow, and loopback does not lose datagrams otherwise: every one
/// must come back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_long_stream_through_one_session_loses_nothing() {
    let mut h = start_with(45, LbStrategy::RoundRobin, config()).await;
    let (a, _ta) = udp_echo("a").await;
    add_on_nodes(&mut h, udp_service("stream", None), "stream", &[(a, "node-a")], true).await;
    let vip = h.addr("stream");
    let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    client.connect(vip).await.unwrap();
    paced_stream(&client, 100_000, 2).await;
    assert_eq!(load(&h.status.dropped_datagrams), 0);
    assert_eq!(h.status.total_udp_sessions.load(Ordering::Relaxed), 1, "one session carried it all");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_sessions_expire_after_the_annotated_idle_timeout() {
    let mut h = start_with(46, LbStrategy::RoundRobin, config()).await;
    let (a, _ta) = udp_echo("a").await;
    let (b, _tb) = udp_echo("b").await;
    add_on_nodes(&mut h, udp_service("idle", Some("300ms")), "idle", &[(a, "node-a"), (b, "node-a")], true).await;
    let vip = h.addr("idle");
    let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let (first, _) = exchange(&client, vip, b"x").await;
    // Traffic keeps the session alive past the timeout.
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(150)).await;
        assert_eq!(exchange(&client, vip, b"x").await.0, first, "an active session stays");
    }
    assert_eq!(h.status.udp_sessions.load(Ordering::Relaxed), 1);
    let status = h.status.clone();
    eventually("the idle session to close", WAIT, || {
        let status = status.clone();
        async move { (status.udp_sessions.load(Ordering::Relaxed) == 0).then_some(()) }
    })
    .await;
    // A new datagram opens a new session (round robin: the other endpoint).
    let (second, _) = exchange(&client, vip, b"x").await;
    assert_ne!(second, first);
    assert_eq!(h.status.total_udp_sessions.load(Ordering::Relaxed), 2);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_sessions_are_bounded_and_a_dead_endpoint_is_left() {
    let mut h = start_registry(47, LbStrategy::RoundRobin);
    let registry = h.start_counted_proxy(ProxyConfig { max_udp_sessions: 2, ..config() }, None, 100);
    let (a, ta) = udp_echo("a").await;
    let (b, _tb) = udp_echo("b").await;
    add_on_nodes(&mut h, udp_service("few", None), "few", &[(a, "node-a"), (b, "node-a")], true).await;
    let vip = h.addr("few");
    let mut clients = Vec::new();
    for i in 0..5 {
        let c = UdpSocket::bind(SocketAddr::new(client_ip(i), 0)).await.unwrap();
        exchange(&c, vip, b"hi").await;
        assert!(h.status.udp_sessions.load(Ordering::Relaxed) <= 2);
        clients.push(c);
    }
    assert_eq!(h.status.total_udp_sessions.load(Ordering::Relaxed), 5);
    // The evicted first client simply gets a new session, in place of the
    // longest-idle one: every client past the second evicted one, each
    // counted.
    exchange(&clients[0], vip, b"back").await;
    let evicted = series("edgemesh_udp_sessions_evicted_total", "few");
    settles(&registry, &[is(evicted, 4.0), is(series("edgemesh_udp_sessions_active", "few"), 2.0)]).await;

    // Endpoint "a" dies: its port answers with ICMP unreachable, which ends
    // the session and ejects it; clients move to "b" (a datagram or two may
    // be lost on the way, as with any UDP endpoint that dies).
    ta.abort();
    let _ = ta.await;
    for c in &clients {
        let mut answered = None;
        for _ in 0..4 {
            c.send_to(b"ping", vip).await.unwrap();
            let mut buf = [0u8; 64];
            if let Ok(Ok((n, _))) = tokio::time::timeout(Duration::from_millis(300), c.recv_from(&mut buf)).await {
                answered = Some(buf[..n].to_vec());
                break;
            }
        }
        assert_eq!(answered.as_deref(), Some(&b"b:ping"[..]), "the live endpoint answers");
    }
    h.stop().await;
}

/// Sends `data` from a new socket on `from` and returns the reply, if one
/// comes within a second.
async fn one_session(from: IpAddr, to: SocketAddr, data: &[u8]) -> Option<String> {
    let client = UdpSocket::bind(SocketAddr::new(from, 0)).await.unwrap();
    client.send_to(data, to).await.unwrap();
    let mut buf = [0u8; 256];
    let (n, _) = tokio::time::timeout(Duration::from_secs(1), client.recv_from(&mut buf)).await.ok()?.ok()?;
    Some(String::from_utf8_lossy(&buf[..n]).into_owned())
}

/// A dual-stack service whose IPv6 endpoints are as alive as its IPv4 ones:
/// its IPv4 VIP sends every UDP session and TCP connection to the IPv4
/// endpoints, never across (as kube-proxy), whatever the strategy's turn.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ipv4_vip_uses_its_ipv4_endpoints_only() {
    let mut h = start_with(70, LbStrategy::RoundRobin, config()).await;
    let (udp4, _t4) = udp_echo("v4").await;
    let (udp6, _t6) = udp_echo_on("[::1]:0", "v6").await;
    add_on_nodes(&mut h, udp_service("dns", None), "dns", &[(udp4, "node-a"), (udp6, "node-a")], true).await;
    let vip = h.addr("dns");
    for i in 0..20 {
        assert_eq!(one_session(client_ip(i), vip, b"q").await.as_deref(), Some("v4:q"), "UDP session {i}");
    }
    let tcp4 = identity_backend("v4").await;
    let tcp6 = identity_backend_on("[::1]:0", "v6").await;
    let web = svc_builder(NS, "web").port("http", PORT, 80).object();
    add_on_nodes(&mut h, web, "web", &[(tcp4, "node-a"), (tcp6, "node-a")], false).await;
    for i in 0..20 {
        assert_eq!(ask(h.addr("web")).await.unwrap(), "v4", "TCP connection {i}");
    }
    h.stop().await;
}

/// An endpoint whose UDP port is closed answers a session's datagram with
/// ICMP port unreachable (loopback delivers it): the session's connected
/// socket gets `ECONNREFUSED`, the session ends and the endpoint is
/// ejected, so every session after it goes to the live endpoint (round
/// robin would otherwise send every second one to the dead port), the
/// refused client's included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_udp_refusal_ejects_the_endpoint() {
    let mut h = start_with(71, LbStrategy::RoundRobin, config()).await;
    let (live, _t) = udp_echo("live").await;
    let closed = closed_udp_port();
    add_on_nodes(&mut h, udp_service("dns", None), "dns", &[(closed, "node-a"), (live, "node-a")], true).await;
    let vip = h.addr("dns");
    // Round robin: of two new clients, one gets the closed port.
    let clients = [client_ip(0), client_ip(1)].map(|ip| std::net::UdpSocket::bind(SocketAddr::new(ip, 0)).unwrap());
    for c in &clients {
        c.send_to(b"first", vip).unwrap();
    }
    let status = h.status.clone();
    eventually("two sessions opened and the refused one ended", WAIT, || {
        let status = status.clone();
        async move {
            (status.total_udp_sessions.load(Ordering::Relaxed) == 2 && status.udp_sessions.load(Ordering::Relaxed) == 1)
                .then_some(())
        }
    })
    .await;
    // Within the first ejection (1 s): a few loopback round trips.
    for i in 2..12 {
        assert_eq!(one_session(client_ip(i), vip, b"q").await.as_deref(), Some("live:q"), "session {i}");
    }
    // The refused client's next datagram opens a session to the live one.
    for c in clients {
        let c = UdpSocket::from_std({
            c.set_nonblocking(true).unwrap();
            c
        })
        .unwrap();
        let mut buf = [0u8; 64];
        loop {
            c.send_to(b"again", vip).await.unwrap();
            let (n, _) = tokio::time::timeout(Duration::from_secs(1), c.recv_from(&mut buf)).await.unwrap().unwrap();
            if &buf[..n] == b"live:again" {
                break;
            }
            assert!(buf[..n].starts_with(b"live:"), "{:?}", String::from_utf8_lossy(&buf[..n]));
        }
    }
    h.stop().await;
}

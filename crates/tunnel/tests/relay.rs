//! Relay on loopback: A and B only know the relay R; B reserves a slot; A reaches B through R.
//! A relay at `tunnel.relayLimits` refuses more reservations and circuits, counts them, and
//! keeps serving the ones it holds.

mod common;

use std::{sync::Arc, time::Duration};

use common::*;
use edgemesh_tunnel::{ConnectionType, Tunnel, TunnelProtocol, TunnelStream};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn open_eventually(t: &Tunnel, node: &str, target: std::net::SocketAddr) -> TunnelStream {
    eventually(&format!("a stream to {node}"), Duration::from_secs(30), || async {
        match t.open_tcp(node, target, "relayed").await {
            Ok(s) => Some(s),
            Err(e) => {
                eprintln!("not yet: {e}");
                None
            }
        }
    })
    .await
}

/// Waits until `t`'s connection to `node` is direct (DCUtR: on loopback it always can be),
/// then checks that a new stream takes it.
async fn goes_direct(t: &Tunnel, node: &str, target: std::net::SocketAddr) {
    eventually("hole punching", Duration::from_secs(20), || async {
        let p = t.peers();
        (p.iter().find(|p| p.node.as_deref() == Some(node))?.connection == ConnectionType::Direct).then_some(())
    })
    .await;
    let s = t.open_tcp(node, target, "direct").await.unwrap();
    assert!(!s.is_relayed());
    check_answer(s, 1000).await;
}

async fn check_answer(mut s: TunnelStream, n: usize) {
    s.write_all(&vec![5u8; n]).await.unwrap();
    s.shutdown().await.unwrap();
    let mut reply = String::new();
    s.read_to_string(&mut reply).await.unwrap();
    assert_eq!(reply, format!("got {n} bytes"));
}

fn relayed_node(keys: &Keys, name: &str, relay: &edgemesh_tunnel::Multiaddr) -> edgemesh_tunnel::TunnelConfig {
    let mut c = config(keys, name);
    c.relays = vec![relay.clone()];
    c
}

const RESERVATIONS_REFUSED: &str = r#"edgemesh_tunnel_limit_hits_total{limit="relay_reservations"}"#;
const CIRCUITS_REFUSED: &str = r#"edgemesh_tunnel_limit_hits_total{limit="relay_circuits"}"#;

/// Waits until `registry`'s `series` is at least `value`.
async fn at_least(registry: &edgemesh_metrics::AgentRegistry, series: &str, value: f64) {
    eventually(&format!("{series} >= {value}"), Duration::from_secs(20), || async {
        (sample(registry, series) >= value).then_some(())
    })
    .await;
}

/// A relay with room for one reservation and one circuit: B takes the reservation, C's is
/// refused; C reaches B through B's reservation, and while C's circuit is open A's circuit
/// is refused. Each refusal is counted, and what the relay holds keeps working.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_at_its_limits_refuses_more_and_keeps_serving_what_it_holds() {
    init_tracing();
    let keys = Keys::new();
    let dir = Arc::new(TestDirectory::default());
    for n in ["a", "b", "c"] {
        dir.bind(n, keys.peer(n));
    }
    let mut cr = config(&keys, "relay");
    cr.relay_server = true;
    cr.relay_limits.max_reservations = 1;
    cr.relay_limits.max_circuits = 1;
    let (r, registry) = start_metered(cr, dir.clone()).await;
    let relay = r.addr();
    let rid = r.tunnel.peer_id().to_string();
    let reserved = |n: &Node| n.tunnel.peers().iter().any(|p| p.peer_id == rid && p.relay_reserved);
    let answer = count_then_answer_server().await;
    dir.serve(answer, TunnelProtocol::Tcp);

    // B takes the one reservation.
    let b = start(relayed_node(&keys, "b", &relay), dir.clone()).await;
    eventually("b's reservation", Duration::from_secs(10), || async { reserved(&b).then_some(()) }).await;
    assert_eq!(sample(&registry, RESERVATIONS_REFUSED), 0.0, "nothing refused yet");

    // C asks for a second: refused and counted; B keeps its own.
    let c = start(relayed_node(&keys, "c", &relay), dir.clone()).await;
    at_least(&registry, RESERVATIONS_REFUSED, 1.0).await;
    assert!(!reserved(&c), "c holds no reservation: {:?}", c.tunnel.peers());
    assert!(reserved(&b), "b keeps its reservation: {:?}", b.tunnel.peers());
    assert_eq!(sample(&registry, "edgemesh_tunnel_relay_served_reservations"), 1.0);

    // B's reservation still works: C reaches B through R, on the relay's one circuit, and
    // holds it open with a stream.
    let mut held = open_eventually(&c.tunnel, "b", answer).await;
    assert!(held.is_relayed(), "c reaches b through the relay");
    held.write_all(&[5u8; 100]).await.unwrap();
    // DCUtR adds a direct connection (so C and B stop opening relayed ones to upgrade); the
    // relayed one stays while the stream is open.
    eventually("c and b connected directly", Duration::from_secs(20), || async {
        let p = c.tunnel.peers();
        (p.iter().find(|p| p.node.as_deref() == Some("b"))?.connection == ConnectionType::Direct).then_some(())
    })
    .await;
    assert_eq!(sample(&registry, "edgemesh_tunnel_relay_served_circuits"), 1.0, "the held circuit");

    // A, which knows only R (its own reservation refused too), cannot have a circuit to B.
    let reservations_refused = sample(&registry, RESERVATIONS_REFUSED);
    let a = start(relayed_node(&keys, "a", &relay), dir.clone()).await;
    at_least(&registry, RESERVATIONS_REFUSED, reservations_refused + 1.0).await;
    let circuits_refused = sample(&registry, CIRCUITS_REFUSED);
    let refused = tokio::time::timeout(Duration::from_secs(20), a.tunnel.open_tcp("b", answer, "over the limit"))
        .await
        .expect("a's attempt ends");
    assert!(refused.is_err(), "a reached b past the relay's circuit limit");
    at_least(&registry, CIRCUITS_REFUSED, circuits_refused + 1.0).await;

    // The circuit the relay holds carries on.
    held.write_all(&[5u8; 200]).await.unwrap();
    held.shutdown().await.unwrap();
    let mut reply = String::new();
    held.read_to_string(&mut reply).await.unwrap();
    assert_eq!(reply, "got 300 bytes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reach_a_node_through_the_relay_then_hole_punch() {
    init_tracing();
    let keys = Keys::new();
    // R is not a node in the directory: A and B keep it as their relay anyway.
    let dir = Arc::new(TestDirectory::default());
    dir.bind("a", keys.peer("a"));
    dir.bind("b", keys.peer("b"));
    let mut cr = config(&keys, "relay");
    cr.relay_server = true;
    let r = start(cr, dir.clone()).await;
    let relay = r.addr();
    let b = start(relayed_node(&keys, "b", &relay), dir.clone()).await;
    let a = start(relayed_node(&keys, "a", &relay), dir.clone()).await;
    let answer = count_then_answer_server().await;
    dir.serve(answer, TunnelProtocol::Tcp);

    // B holds a reservation on R (and says so).
    let rid = r.tunnel.peer_id().to_string();
    eventually("b's reservation", Duration::from_secs(10), || async {
        b.tunnel.peers().iter().find(|p| p.peer_id == rid && p.relay_reserved).map(|_| ())
    })
    .await;

    // Nobody told A where B is: the first connection goes through R.
    let s = open_eventually(&a.tunnel, "b", answer).await;
    assert!(s.is_relayed(), "the first stream rides the relayed connection");
    let seen = a.tunnel.peers();
    let to_b = seen.iter().find(|p| p.node.as_deref() == Some("b")).expect("a lists b");
    assert!(to_b.addresses.iter().any(|a| a.contains("p2p-circuit")), "{to_b:?}");
    check_answer(s, 300_000).await;

    // DCUtR upgrades it to a direct connection (on loopback it always can), and new streams
    // take the direct one.
    goes_direct(&a.tunnel, "b", answer).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn re_reserve_after_the_relay_restarts() {
    init_tracing();
    let keys = Keys::new();
    let dir = Arc::new(TestDirectory::default());
    for n in ["a", "b", "c"] {
        dir.bind(n, keys.peer(n));
    }
    let mut cr = config(&keys, "relay");
    cr.relay_server = true;
    let r = start(cr.clone(), dir.clone()).await;
    let relay = r.addr();
    let b = start(relayed_node(&keys, "b", &relay), dir.clone()).await;
    let rid = r.tunnel.peer_id().to_string();
    let reserved = || async { b.tunnel.peers().iter().find(|p| p.peer_id == rid && p.relay_reserved).map(|_| ()) };
    eventually("b's reservation", Duration::from_secs(10), reserved).await;

    // Restart R on the same address with the same key.
    let port = relay.iter().find_map(|p| match p {
        edgemesh_tunnel::multiaddr::Protocol::Tcp(p) => Some(p),
        _ => None,
    });
    let mut task = {
        let mut r = r;
        r.stop.cancel();
        std::mem::replace(&mut r.task, tokio::spawn(async {}))
    };
    tokio::time::timeout(Duration::from_secs(5), &mut task).await.unwrap().unwrap();
    eventually("b to notice", Duration::from_secs(10), || async {
        (!b.tunnel.peers().iter().any(|p| p.peer_id == rid)).then_some(())
    })
    .await;
    cr.listen = vec![format!("/ip4/127.0.0.1/tcp/{}", port.unwrap()).parse().unwrap()];
    let r2 = start(cr, dir.clone()).await;
    assert_eq!(r2.tunnel.peer_id().to_string(), rid);
    eventually("b's new reservation", Duration::from_secs(20), reserved).await;

    // A newcomer that knows only R reaches B.
    let a = start(relayed_node(&keys, "a", &relay), dir.clone()).await;
    let answer = count_then_answer_server().await;
    dir.serve(answer, TunnelProtocol::Tcp);
    let s = open_eventually(&a.tunnel, "b", answer).await;
    check_answer(s, 10).await;
}

fn write_psk(keys: &Keys, name: &str, byte: u8) -> std::path::PathBuf {
    let p = keys.dir.path().join(name);
    std::fs::write(&p, format!("/key/swarm/psk/1.0.0/\n/base16/\n{}\n", format!("{byte:02x}").repeat(32))).unwrap();
    std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    p
}

/// With a PSK each connection proves the key, the relayed one too (inside the circuit, end to
/// end): A reaches B through R, all three holding the key, then directly;
/// C, with another key, gets no connection to R (so no reservation, no circuit) and no path
/// to B.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_private_network_relays_for_its_members_only() {
    init_tracing();
    let keys = Keys::new();
    let dir = Arc::new(TestDirectory::default());
    for n in ["a", "b", "c"] {
        dir.bind(n, keys.peer(n));
    }
    let (psk, other) = (write_psk(&keys, "psk", 0x11), write_psk(&keys, "other", 0x22));
    let mut cr = config(&keys, "relay");
    cr.relay_server = true;
    cr.psk_file = Some(psk.clone());
    let r = start(cr, dir.clone()).await;
    let relay = r.addr();
    let with = |name: &str, key: &std::path::PathBuf| {
        let mut c = relayed_node(&keys, name, &relay);
        c.psk_file = Some(key.clone());
        c
    };
    let b = start(with("b", &psk), dir.clone()).await;
    let a = start(with("a", &psk), dir.clone()).await;
    let answer = count_then_answer_server().await;
    dir.serve(answer, TunnelProtocol::Tcp);

    let rid = r.tunnel.peer_id().to_string();
    eventually("b's reservation", Duration::from_secs(10), || async {
        b.tunnel.peers().iter().find(|p| p.peer_id == rid && p.relay_reserved).map(|_| ())
    })
    .await;
    let s = open_eventually(&a.tunnel, "b", answer).await;
    assert!(s.is_relayed(), "the first stream rides the relayed connection");
    check_answer(s, 300_000).await;
    // The direct connection that replaces it (connection reversal or hole punch) proves the
    // key too.
    goes_direct(&a.tunnel, "b", answer).await;

    let c = start(with("c", &other), dir.clone()).await;
    let e = c.tunnel.open_tcp("b", answer, "stranger").await.unwrap_err();
    assert!(e.is_node_failure(), "{e}");
    assert!(c.tunnel.peers().is_empty(), "c has no connection at all: {:?}", c.tunnel.peers());
    let cid = c.tunnel.peer_id().to_string();
    assert!(!r.tunnel.peers().iter().any(|p| p.peer_id == cid), "the relay keeps no connection from c");
}

//! Who gets in (issue #18), with real swarms on loopback: `tunnel.allowedPeers` refuses every
//! other peer, even one bound to a node, and counts it; the remote side dials only what it
//! serves, over IPv6 and for UDP as for IPv4 TCP. (A peer without the PSK is refused in
//! `tunnel.rs`'s `psk_private_network`, and a peer bound to no node in
//! `impersonator_and_unknown_peer_get_nothing`.)

mod common;

use std::{sync::Arc, time::Duration};

use common::*;
use edgemesh_tunnel::{TunnelError, TunnelProtocol};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_not_on_the_allow_list_cannot_open_streams() {
    init_tracing();
    let keys = Keys::new();
    let dir = Arc::new(TestDirectory::default());
    // All three are bound to their node names: only the list keeps c out of b.
    for n in ["a", "b", "c"] {
        dir.bind(n, keys.peer(n));
    }
    let echo = tcp_echo().await;
    dir.serve(echo, TunnelProtocol::Tcp);

    let mut cb = config(&keys, "b");
    cb.allowed_peers = vec![keys.peer("a").to_string()];
    let (b, registry) = start_metered(cb, dir.clone()).await;
    let b_addr = b.addr();

    // a is listed: its streams reach b's endpoint.
    let mut ca = config(&keys, "a");
    ca.bootstrap = vec![b_addr.clone()];
    let a = start(ca, dir.clone()).await;
    round_trip(&mut a.tunnel.open_tcp("b", echo, "listed").await.expect("a is on b's list")).await;

    // c is not: refused as its connection is established, and so never gets a stream. It
    // reaches a, which has no list: the list is what keeps it out of b.
    let mut cc = config(&keys, "c");
    cc.bootstrap = vec![b_addr, a.addr()];
    let c = start(cc, dir.clone()).await;
    round_trip(&mut c.tunnel.open_tcp("a", echo, "no list").await.expect("a has no allow-list")).await;
    let e = c.tunnel.open_tcp("b", echo, "unlisted").await.unwrap_err();
    assert!(matches!(e, TunnelError::PeerUnreachable { .. } | TunnelError::Timeout { .. }), "{e}");
    let c_id = c.tunnel.peer_id().to_string();
    assert!(!b.tunnel.peers().iter().any(|p| p.peer_id == c_id), "c is no peer of b: {:?}", b.tunnel.peers());
    let refused = r#"edgemesh_tunnel_peers_refused_total{reason="not_allowed"}"#;
    eventually("b counts the refusal", Duration::from_secs(5), || async {
        (sample(&registry, refused) >= 1.0).then_some(())
    })
    .await;
    // And b still serves a.
    round_trip(&mut a.tunnel.open_tcp("b", echo, "listed").await.expect("a still reaches b")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_remote_side_dials_only_what_it_serves_over_ipv6_and_udp() {
    init_tracing();
    let keys = Keys::new();
    let (a, _b, dir) = pair(&keys).await;
    let (tcp6, udp6, udp4) = (tcp_echo_on("[::1]:0").await, udp_echo_on("[::1]:0").await, udp_echo().await);

    // Nothing served yet: every kind of request is refused by b, before it dials anything.
    for (target, protocol) in [(tcp6, TunnelProtocol::Tcp), (udp6, TunnelProtocol::Udp), (udp4, TunnelProtocol::Udp)] {
        let e = match protocol {
            TunnelProtocol::Tcp => a.tunnel.open_tcp("b", target, "x").await.err(),
            TunnelProtocol::Udp => a.tunnel.open_udp("b", target, "x").await.err(),
        };
        let e = e.unwrap_or_else(|| panic!("{target} {protocol:?} was not refused"));
        assert!(matches!(e, TunnelError::NotServed { .. }), "{target} {protocol:?}: {e}");
    }
    // Served for the other protocol only: still refused.
    dir.serve(tcp6, TunnelProtocol::Udp);
    dir.serve(udp6, TunnelProtocol::Tcp);
    let Err(e) = a.tunnel.open_tcp("b", tcp6, "x").await else { panic!("TCP to a UDP-only target went through") };
    assert!(matches!(e, TunnelError::NotServed { .. }), "{e}");
    let e = a.tunnel.open_udp("b", udp6, "x").await.err().expect("UDP to a TCP-only target");
    assert!(matches!(e, TunnelError::NotServed { .. }), "{e}");

    // Served: the same IPv6 requests go through.
    dir.serve(tcp6, TunnelProtocol::Tcp);
    dir.serve(udp6, TunnelProtocol::Udp);
    round_trip(&mut a.tunnel.open_tcp("b", tcp6, "v6").await.expect("served over IPv6")).await;
    let (mut tx, mut rx) = a.tunnel.open_udp("b", udp6, "v6").await.expect("served over IPv6 UDP");
    tx.send(b"ping6").await.unwrap();
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(Duration::from_secs(5), rx.recv(&mut buf)).await.expect("UDP echo").unwrap();
    assert_eq!(&buf[..n], b"ping6");
}

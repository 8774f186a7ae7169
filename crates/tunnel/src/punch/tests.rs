use std::{
    collections::HashSet,
    net::{IpAddr, SocketAddr},
    time::{Duration, Instant},
};

use libp2p::{Multiaddr, PeerId, swarm::NetworkBehaviour};

use super::{marks::MARK_LIFETIME, *};

fn addrs(texts: &[&str]) -> Vec<Multiaddr> {
    texts.iter().map(|t| t.parse().unwrap()).collect()
}

fn sock(text: &str) -> SocketAddr {
    text.parse().unwrap()
}

#[test]
fn a_peers_public_tcp_addresses_are_primed_in_both_families() {
    let peer = PeerId::random();
    let dial = addrs(&[
        &format!("/ip4/198.18.3.2/tcp/20006/p2p/{peer}"),
        "/ip6/2001:db8::7/tcp/20006",
        "/ip4/10.1.0.2/tcp/20006",
    ]);
    assert_eq!(
        targets(&dial, &HashSet::new(), MAX_TARGETS),
        [sock("198.18.3.2:20006"), sock("[2001:db8::7]:20006"), sock("10.1.0.2:20006")]
    );
}

#[test]
fn loopback_link_local_unspecified_and_own_addresses_are_never_primed() {
    let own: HashSet<IpAddr> = ["198.18.2.2".parse().unwrap()].into();
    let dial = addrs(&[
        "/ip4/127.0.0.1/tcp/20006",
        "/ip6/::1/tcp/20006",
        "/ip4/169.254.3.4/tcp/20006",
        "/ip6/fe80::1/tcp/20006",
        "/ip4/0.0.0.0/tcp/20006",
        "/ip4/224.0.0.251/tcp/20006",
        "/ip4/198.18.2.2/tcp/20006",
    ]);
    assert_eq!(targets(&dial, &own, MAX_TARGETS), []);
}

#[test]
fn relayed_quic_and_named_addresses_are_not_primed() {
    let (relay, peer) = (PeerId::random(), PeerId::random());
    let dial = addrs(&[
        &format!("/ip4/198.18.0.2/tcp/20006/p2p/{relay}/p2p-circuit/p2p/{peer}"),
        "/ip4/198.18.3.2/udp/20006/quic-v1",
        "/dns4/node-c.example/tcp/20006",
        "/ip4/198.18.3.2/tcp/443/ws",
    ]);
    assert_eq!(targets(&dial, &HashSet::new(), MAX_TARGETS), []);
}

#[test]
fn a_dial_primes_a_few_distinct_addresses_at_most() {
    let dial: Vec<Multiaddr> = (1..=10)
        .flat_map(|i| [format!("/ip4/198.18.3.{i}/tcp/20006"), format!("/ip4/198.18.3.{i}/tcp/20006")])
        .map(|t| t.parse().unwrap())
        .collect();
    let out = targets(&dial, &HashSet::new(), MAX_TARGETS);
    assert_eq!(out.len(), MAX_TARGETS);
    assert_eq!(out.iter().collect::<HashSet<_>>().len(), MAX_TARGETS, "{out:?}");
}

#[test]
fn a_mark_is_taken_once_and_expires() {
    let marks = Marks::new(2);
    let now = Instant::now();
    marks.mark(&[sock("198.18.3.2:20006")], now);
    assert!(!marks.take(sock("198.18.3.2:20007"), now));
    assert!(marks.take(sock("198.18.3.2:20006"), now));
    assert!(!marks.take(sock("198.18.3.2:20006"), now), "used up");
    marks.mark(&[sock("198.18.3.2:20006")], now);
    assert!(!marks.take(sock("198.18.3.2:20006"), now + MARK_LIFETIME + Duration::from_millis(1)));
}

/// What the behaviour marks for a dial to `peer` of `dial`.
fn marked_by(behaviour: &mut Behaviour, peer: PeerId, dial: &[Multiaddr]) -> bool {
    behaviour
        .handle_pending_outbound_connection(
            libp2p::swarm::ConnectionId::new_unchecked(1),
            Some(peer),
            dial,
            libp2p::core::Endpoint::Dialer,
        )
        .unwrap();
    behaviour.marks.take(sock("198.18.3.2:20006"), Instant::now())
}

#[test]
fn only_dials_to_a_peer_reached_through_relays_alone_are_primed() {
    let peer = PeerId::random();
    let dial = addrs(&["/ip4/198.18.3.2/tcp/20006"]);
    let mut b = Behaviour::new(Marks::new(2));
    assert!(!marked_by(&mut b, peer, &dial), "not connected: an ordinary dial");
    b.count(peer, true, true);
    assert!(marked_by(&mut b, peer, &dial), "relayed only: a hole punch");
    b.count(peer, false, true);
    assert!(!marked_by(&mut b, peer, &dial), "direct already");
    b.count(peer, false, false);
    assert!(marked_by(&mut b, peer, &dial), "relayed only again");
    b.count(peer, true, false);
    assert!(b.connections.is_empty());
}

#[test]
fn ttl_zero_turns_priming_off() {
    let peer = PeerId::random();
    let mut b = Behaviour::new(Marks::new(0));
    b.count(peer, true, true);
    assert!(!marked_by(&mut b, peer, &addrs(&["/ip4/198.18.3.2/tcp/20006"])));
}

/// The default TTL (IPv6: hop limit) of a new socket of `target`'s family.
fn default_hops(target: SocketAddr) -> u32 {
    let socket = socket2::Socket::new(socket2::Domain::for_address(target), socket2::Type::STREAM, None).unwrap();
    if target.is_ipv6() { socket.unicast_hops_v6().unwrap() } else { socket.ttl_v4().unwrap() }
}

#[tokio::test]
async fn a_primed_dial_connects_in_both_families_with_the_ttl_set_back() {
    for (listen, local) in [("127.0.0.1:0", "0.0.0.0:0"), ("[::1]:0", "[::]:0")] {
        let listener = tokio::net::TcpListener::bind(listen).await.unwrap();
        let target = listener.local_addr().unwrap();
        let (stream, accepted) = tokio::join!(transport::primed_connect(sock(local), target, 1), listener.accept());
        let stream = stream.unwrap_or_else(|e| panic!("{target}: {e}"));
        assert_eq!(stream.peer_addr().unwrap(), target);
        assert_eq!(accepted.unwrap().1, stream.local_addr().unwrap());
        let socket = socket2::SockRef::from(&stream);
        let hops = if target.is_ipv6() { socket.unicast_hops_v6() } else { socket.ttl_v4() };
        assert_eq!(hops.unwrap(), default_hops(target), "{target}: what follows the first SYN goes all the way");
    }
}

#[tokio::test]
async fn a_primed_dial_that_is_refused_fails_at_once() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let dial = transport::primed_connect(sock("0.0.0.0:0"), closed, 2);
    let error = tokio::time::timeout(Duration::from_secs(5), dial).await.expect("the reset ends the dial").unwrap_err();
    assert_eq!(error.kind(), std::io::ErrorKind::ConnectionRefused, "{error}");
}

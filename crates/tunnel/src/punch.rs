//! Hole punching through NAT routers whose own TCP stack resets unsolicited SYNs: the hole
//! punch's dials send their first SYN with a small IP TTL (issue #13, edge faults).
//!
//! DCUtR makes both peers dial each other's public address from their tunnel port at about
//! the same time (a simultaneous open). Through a router that drops unsolicited SYNs, the
//! first SYN is lost and the second one meets the mapping the first side's router made for
//! its own outgoing SYN. A router that *answers* them (its input chain accepts new connections
//! from the WAN, so its TCP stack resets a SYN to a port it does not listen on) resets the
//! first SYN to arrive; the reset travels back and deletes the sender's mapping in its own
//! router, so the other side's SYN meets no mapping either and is reset too. Between
//! namespaces, where the two SYNs are milliseconds apart and the routers microseconds, every
//! attempt fails that way.
//!
//! So a hole punch dial (a dial with port reuse to an address of a peer we are connected to
//! only through a relay) sends its first SYN with the IP TTL [`crate::TunnelConfig::punch_ttl`]:
//! it passes our own NAT, whose mapping it creates (conntrack `SYN_SENT`, 120 s), and expires
//! one hop beyond (an ICMP time exceeded, a soft error to the connecting socket). The socket's
//! TTL is then set back, so what follows goes all the way: the peer's SYN arrives at our
//! router as the reply of our mapping, reaches the still connecting socket, and the two
//! sockets complete a simultaneous open; else our SYN's retransmission (after 1 s) meets the
//! peer's primed mapping. Either way the SYN-ACK carries the sequence number our router saw in
//! the first SYN, which Linux conntrack requires: a throwaway primer socket closed before the
//! dial (STUNT's variant) leaves the answer to the listening socket, whose different initial
//! sequence number conntrack drops as out of window.
//!
//! The peers' two dials must come within about a second of each other (the first
//! retransmission), as DCUtR's do. The price where the routers drop unsolicited SYNs: the
//! punch completes on that retransmission, about a second later than before.
//!
//! - [`Behaviour`] sees every dial before the transport makes it, and marks the addresses of
//!   hole punch dials ([`targets`]: TCP, not loopback, link-local or ours, a few per dial);
//! - [`transport::Primed`] wraps the TCP transport: a dial of a marked address with port reuse
//!   is made primed.

mod marks;
#[cfg(test)]
mod tests;
mod transport;

use std::{
    collections::{HashMap, HashSet},
    convert::Infallible,
    net::{IpAddr, SocketAddr},
    task::{Context, Poll},
    time::Instant,
};

use libp2p::{
    Multiaddr, PeerId,
    core::{Endpoint, multiaddr::Protocol, transport::PortUse},
    swarm::{
        ConnectionDenied, ConnectionId, FromSwarm, NetworkBehaviour, THandler, THandlerInEvent, THandlerOutEvent,
        ToSwarm, dummy,
    },
};
pub(crate) use marks::Marks;
use marks::tcp_socket_addr;
pub(crate) use transport::Primed;

/// At most this many addresses of one dial are primed.
pub(crate) const MAX_TARGETS: usize = 4;
/// The addresses of `dial` that a hole punch primes: TCP over IPv4 or IPv6 (QUIC needs no
/// priming), not relayed, not loopback, link-local, multicast or unspecified, not one of
/// `own`; deduplicated, at most `limit`.
pub(crate) fn targets(dial: &[Multiaddr], own: &HashSet<IpAddr>, limit: usize) -> Vec<SocketAddr> {
    let mut out: Vec<SocketAddr> = Vec::new();
    for addr in dial {
        let Some(target) = tcp_socket_addr(addr) else { continue };
        if out.len() >= limit {
            break;
        }
        if is_local(target.ip()) || own.contains(&target.ip()) || out.contains(&target) {
            continue;
        }
        out.push(target);
    }
    out
}

/// Loopback, link-local, multicast or unspecified: never a peer's public address.
fn is_local(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(ip) => ip.is_loopback() || ip.is_link_local() || ip.is_unspecified() || ip.is_multicast(),
        IpAddr::V6(ip) => ip.is_loopback() || ip.is_unicast_link_local() || ip.is_unspecified() || ip.is_multicast(),
    }
}

/// Marks the addresses of hole punch dials (see the module doc); no connection handler.
pub(crate) struct Behaviour {
    marks: Marks,
    /// Relayed and direct connections per peer.
    connections: HashMap<PeerId, (usize, usize)>,
    /// The IP addresses this node listens on or was seen from.
    own: HashSet<IpAddr>,
}

impl Behaviour {
    pub(crate) fn new(marks: Marks) -> Behaviour {
        Behaviour { marks, connections: HashMap::new(), own: HashSet::new() }
    }

    fn relayed_only(&self, peer: &PeerId) -> bool {
        self.connections.get(peer).is_some_and(|&(relayed, direct)| relayed > 0 && direct == 0)
    }

    fn count(&mut self, peer: PeerId, relayed: bool, up: bool) {
        let entry = self.connections.entry(peer).or_default();
        let n = if relayed { &mut entry.0 } else { &mut entry.1 };
        *n = if up { *n + 1 } else { n.saturating_sub(1) };
        if *entry == (0, 0) {
            self.connections.remove(&peer);
        }
    }

    fn own_address(&mut self, addr: &Multiaddr, add: bool) {
        let ip = match addr.iter().next() {
            Some(Protocol::Ip4(ip)) => IpAddr::V4(ip),
            Some(Protocol::Ip6(ip)) => IpAddr::V6(ip),
            _ => return,
        };
        if add {
            self.own.insert(ip);
        } else {
            self.own.remove(&ip);
        }
    }
}

impl NetworkBehaviour for Behaviour {
    type ConnectionHandler = dummy::ConnectionHandler;
    type ToSwarm = Infallible;

    fn handle_established_inbound_connection(
        &mut self,
        _: ConnectionId,
        _: PeerId,
        _: &Multiaddr,
        _: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        Ok(dummy::ConnectionHandler)
    }

    fn handle_established_outbound_connection(
        &mut self,
        _: ConnectionId,
        _: PeerId,
        _: &Multiaddr,
        _: Endpoint,
        _: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        Ok(dummy::ConnectionHandler)
    }

    /// Runs just before the transport dials `addresses`: a dial to a peer we reach only
    /// through a relay is a hole punch (DCUtR's, or a re-upgrade), whose addresses are marked.
    fn handle_pending_outbound_connection(
        &mut self,
        _: ConnectionId,
        peer: Option<PeerId>,
        addresses: &[Multiaddr],
        _: Endpoint,
    ) -> Result<Vec<Multiaddr>, ConnectionDenied> {
        if self.marks.ttl == 0 || !peer.is_some_and(|p| self.relayed_only(&p)) {
            return Ok(Vec::new());
        }
        let targets = targets(addresses, &self.own, MAX_TARGETS);
        if !targets.is_empty() {
            tracing::debug!(peer = ?peer, ?targets, ttl = self.marks.ttl, "hole punch: priming the dials");
            self.marks.mark(&targets, Instant::now());
        }
        Ok(Vec::new())
    }

    fn on_swarm_event(&mut self, event: FromSwarm) {
        match event {
            FromSwarm::ConnectionEstablished(e) => self.count(e.peer_id, e.endpoint.is_relayed(), true),
            FromSwarm::ConnectionClosed(e) => self.count(e.peer_id, e.endpoint.is_relayed(), false),
            FromSwarm::NewListenAddr(e) => self.own_address(e.addr, true),
            FromSwarm::ExpiredListenAddr(e) => self.own_address(e.addr, false),
            FromSwarm::NewExternalAddrCandidate(e) => self.own_address(e.addr, true),
            FromSwarm::ExternalAddrConfirmed(e) => self.own_address(e.addr, true),
            _ => {}
        }
    }

    fn on_connection_handler_event(&mut self, _: PeerId, _: ConnectionId, event: THandlerOutEvent<Self>) {
        match event {}
    }

    fn poll(&mut self, _: &mut Context<'_>) -> Poll<ToSwarm<Self::ToSwarm, THandlerInEvent<Self>>> {
        Poll::Pending
    }
}

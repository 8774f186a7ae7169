//! What the swarm task counts as it sees it happen: dials by result, hole punches, the
//! reservations and circuits it serves as a relay, and every event libp2p's own metrics
//! record. The per-peer gauges are the peer table's (see `metrics`).
//!
//! A hole punch is a dial to a peer connected only through a relay (DCUtR's simultaneous
//! dials, whose TCP SYNs `punch` primes, and the re-upgrade dials of `heal`): one attempt per
//! dial, a success when it makes the direct connection. DCUtR's own outcomes are in
//! `edgemesh_libp2p_dcutr_events_total`.

use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
};

use libp2p::{PeerId, metrics::Recorder, relay, swarm::ConnectionId};

use crate::{
    metrics::{Limit, TunnelMetrics},
    peer_table::PeerTable,
    streams::Control,
};

/// Bound on the hole punch dials in flight remembered (each ends in an event that removes it).
const MAX_PUNCHES: usize = 10_000;

pub(super) struct Counting {
    metrics: Arc<TunnelMetrics>,
    /// Hole punch dials under way, and their peers.
    punches: HashMap<ConnectionId, PeerId>,
    /// Peers holding a reservation on this node (as a relay server).
    served: HashSet<PeerId>,
}

impl Counting {
    pub(super) fn new(metrics: Arc<TunnelMetrics>) -> Counting {
        Counting { metrics, punches: HashMap::new(), served: HashSet::new() }
    }

    /// libp2p's own metrics record `event`.
    pub(super) fn record<E>(&self, event: &E)
    where
        libp2p::metrics::Metrics: Recorder<E>,
    {
        self.metrics.libp2p.record(event);
    }

    /// A dial to `peer` starts: a hole punch if the peer is connected only through relays.
    pub(super) fn dialing(&mut self, peer: PeerId, connection: ConnectionId, control: &Control, peers: &PeerTable) {
        let connections = control.connections(&peer);
        if connections.is_empty() || connections.iter().any(|(_, relayed)| !relayed) {
            return;
        }
        if self.punches.len() >= MAX_PUNCHES {
            self.punches.clear();
        }
        self.punches.insert(connection, peer);
        self.metrics.holepunch_attempt(&peers.node_label(peer));
    }

    /// Our dial `connection` to `peer` connected (`ok`) or failed.
    pub(super) fn dialed(&mut self, peer: PeerId, connection: ConnectionId, ok: bool, peers: &PeerTable) {
        let node = peers.node_label(peer);
        self.metrics.dialed(&node, ok);
        if self.punches.remove(&connection).is_some() && ok {
            self.metrics.holepunch_success(&node);
        }
    }

    /// An event of the relay server: the reservations and circuits it serves.
    pub(super) fn relay_server(&mut self, event: &relay::Event) {
        match event {
            relay::Event::ReservationReqAccepted { src_peer_id, .. } => {
                self.served.insert(*src_peer_id);
            }
            relay::Event::ReservationClosed { src_peer_id } | relay::Event::ReservationTimedOut { src_peer_id } => {
                self.served.remove(src_peer_id);
            }
            relay::Event::CircuitReqAccepted { .. } => {
                self.metrics.relay_served_circuits.inc();
            }
            relay::Event::CircuitClosed { .. } => {
                self.metrics.relay_served_circuits.dec();
            }
            relay::Event::ReservationReqDenied { src_peer_id, status: relay::StatusCode::ResourceLimitExceeded } => {
                self.relay_limit_hit(Limit::RelayReservations, *src_peer_id);
            }
            relay::Event::CircuitReqDenied {
                src_peer_id, status: relay::StatusCode::ResourceLimitExceeded, ..
            } => {
                self.relay_limit_hit(Limit::RelayCircuits, *src_peer_id);
            }
            _ => {}
        }
        self.metrics.relay_served_reservations.set(edgemesh_metrics::gauge_value(self.served.len()));
    }

    /// libp2p's relay server refused `peer` a reservation or circuit at its limits (or their
    /// rate limits, which it reports alike).
    fn relay_limit_hit(&self, limit: Limit, peer: PeerId) {
        if self.metrics.limit_hit(limit) {
            tracing::warn!(%peer, setting = limit.setting(),
                "relay request refused at its limit (logged at most every 10 s; counted in \
                 edgemesh_tunnel_limit_hits_total)");
        }
    }
}

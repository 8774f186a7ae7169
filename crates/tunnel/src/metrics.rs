//! The tunnel's metrics (`edgemesh_tunnel_*`, and libp2p's own under `edgemesh_libp2p_*`).
//!
//! A view, not a second record: the peer table updates the per-peer gauges (path, RTT) where
//! it changes the state `/peers` shows, the stream guards and copies count streams and bytes,
//! and the swarm task counts dials, hole punches and relay events as it sees them. Each
//! peer's series are resolved once and kept in its peer table entry ([`NodeMeters`]), never
//! looked up per read or write.
//!
//! Node labels go through [`BoundedLabels`] (`metrics.maxNodes`); a peer whose node name is
//! not known yet is labelled [`UNKNOWN`].

use std::{
    collections::HashSet,
    sync::{
        Arc, Mutex, MutexGuard,
        atomic::{AtomicU64, Ordering},
    },
};

use edgemesh_core::LogLimiter;
use edgemesh_metrics::{
    BoundedLabels, Counter, Family, Gauge, OTHER, Registry, Unit, prometheus_client::encoding::EncodeLabelSet,
};
use libp2p::PeerId;

use crate::peer_table::ConnectionType;

/// The node label of a peer whose node name is not known yet.
pub const UNKNOWN: &str = "unknown";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NodeLabels {
    node: Arc<str>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PathLabels {
    node: Arc<str>,
    path: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DirectionLabels {
    node: Arc<str>,
    direction: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    node: Arc<str>,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RelayLabels {
    relay: Arc<str>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LimitLabels {
    limit: &'static str,
}

/// A limit that refused something (`edgemesh_tunnel_limit_hits_total{limit}`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Limit {
    /// `tunnel.maxInboundStreamsPerPeer`: proxy streams one peer holds open here.
    StreamsPerPeer,
    /// `tunnel.maxInboundStreams`: proxy streams all peers hold open here.
    Streams,
    /// `tunnel.relayLimits` (reservations, in all, per peer, or their rate), as a relay server.
    RelayReservations,
    /// `tunnel.relayLimits` (circuits, in all, per peer, or their rate), as a relay server.
    RelayCircuits,
}

impl Limit {
    const ALL: [Limit; 4] = [Limit::StreamsPerPeer, Limit::Streams, Limit::RelayReservations, Limit::RelayCircuits];

    fn label(self) -> &'static str {
        match self {
            Limit::StreamsPerPeer => "inbound_streams_per_peer",
            Limit::Streams => "inbound_streams",
            Limit::RelayReservations => "relay_reservations",
            Limit::RelayCircuits => "relay_circuits",
        }
    }

    /// The setting to raise, for log lines.
    pub(crate) fn setting(self) -> &'static str {
        match self {
            Limit::StreamsPerPeer => "tunnel.maxInboundStreamsPerPeer",
            Limit::Streams => "tunnel.maxInboundStreams",
            Limit::RelayReservations => "tunnel.relayLimits (maxReservations, maxReservationsPerPeer)",
            Limit::RelayCircuits => "tunnel.relayLimits (maxCircuits, maxCircuitsPerPeer)",
        }
    }
}

/// Why a peer's connection was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// Not in `tunnel.allowedPeers`.
    NotAllowed,
    /// Its hello claims a node no peer ID is bound to.
    UnknownNode,
    /// Its hello claims a node bound to another peer ID.
    PeerMismatch,
    /// Its hello could not be read.
    Malformed,
    /// Its proof of the private network's key did not match (`psk`).
    Psk,
}

impl Refusal {
    fn label(self) -> &'static str {
        match self {
            Refusal::NotAllowed => "not_allowed",
            Refusal::UnknownNode => "unknown_node",
            Refusal::PeerMismatch => "peer_mismatch",
            Refusal::Malformed => "malformed",
            Refusal::Psk => "psk",
        }
    }
}

type RttGauge = Gauge<f64, AtomicU64>;

/// One node's stream and byte series, resolved once per peer (see the peer table).
#[derive(Clone, Debug, Default)]
pub(crate) struct NodeMeters {
    pub streams: Gauge,
    pub opened_outbound: Counter,
    pub opened_inbound: Counter,
    /// Payload bytes to the peer (tunnel framing not counted).
    pub sent: Counter,
    /// Payload bytes from the peer.
    pub received: Counter,
}

/// Which side opened a stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Direction {
    Outbound,
    Inbound,
}

/// The tunnel's series, registered into the agent's `edgemesh_` registry by
/// [`TunnelMetrics::register`]; hand it to [`crate::Tunnel::start_with_metrics`].
pub struct TunnelMetrics {
    nodes: Arc<BoundedLabels>,
    /// The node names given series, for [`TunnelMetrics::retain_nodes`].
    named: Mutex<HashSet<Arc<str>>>,
    /// Bumped when series are removed, so cached [`NodeMeters`] are resolved again.
    generation: AtomicU64,
    peer_path: Family<PathLabels, Gauge>,
    peer_rtt: Family<NodeLabels, RttGauge>,
    peer_streams: Family<NodeLabels, Gauge>,
    streams_opened: Family<DirectionLabels, Counter>,
    sent: Family<NodeLabels, Counter>,
    received: Family<NodeLabels, Counter>,
    dials: Family<ResultLabels, Counter>,
    holepunch_attempts: Family<NodeLabels, Counter>,
    holepunch_successes: Family<NodeLabels, Counter>,
    relay_reservations: Family<RelayLabels, Gauge>,
    relay_circuits: Family<RelayLabels, Gauge>,
    peers_refused: Family<ReasonLabels, Counter>,
    limit_hits: Family<LimitLabels, Counter>,
    /// One log line per interval for each [`Limit`], in [`Limit::ALL`]'s order.
    limit_logs: [LogLimiter; Limit::ALL.len()],
    /// One log line per interval for the connections refused for a wrong PSK.
    psk_log: LogLimiter,
    /// The configured relays (the only `relay` label values besides `other`).
    relays: Mutex<HashSet<PeerId>>,
    pub(crate) relay_served_reservations: Gauge,
    pub(crate) relay_served_circuits: Gauge,
    /// libp2p's own (swarm, identify, ping, relay server, DCUtR).
    pub(crate) libp2p: libp2p::metrics::Metrics,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl TunnelMetrics {
    /// Registers the tunnel's series into `registry` (the agent's `edgemesh_` registry):
    /// `tunnel_*`, `libp2p_*` and `node_label_folded_values`; at most `max_nodes` node labels.
    pub fn register(registry: &mut Registry, max_nodes: usize) -> TunnelMetrics {
        let nodes = BoundedLabels::new("node", max_nodes, registry);
        let libp2p = libp2p::metrics::Metrics::new(registry);
        let r = registry.sub_registry_with_prefix("tunnel");
        let m = TunnelMetrics {
            nodes,
            named: Mutex::default(),
            generation: AtomicU64::new(0),
            peer_path: Family::default(),
            peer_rtt: Family::default(),
            peer_streams: Family::default(),
            streams_opened: Family::default(),
            sent: Family::default(),
            received: Family::default(),
            dials: Family::default(),
            holepunch_attempts: Family::default(),
            holepunch_successes: Family::default(),
            relay_reservations: Family::default(),
            relay_circuits: Family::default(),
            peers_refused: Family::default(),
            limit_hits: Family::default(),
            limit_logs: Default::default(),
            psk_log: LogLimiter::default(),
            relays: Mutex::default(),
            relay_served_reservations: Gauge::default(),
            relay_served_circuits: Gauge::default(),
            libp2p,
        };
        r.register(
            "peer_path",
            "The path new streams to the peer take (1 per connected peer: direct or relayed; no series while \
             disconnected)",
            m.peer_path.clone(),
        );
        r.register_with_unit(
            "peer_rtt",
            "Ping round-trip time of the peer's preferred connection",
            Unit::Seconds,
            m.peer_rtt.clone(),
        );
        r.register("peer_streams", "Proxied connections and UDP sessions open with the peer", m.peer_streams.clone());
        r.register("streams_opened", "Proxy streams opened, by the side that opened them", m.streams_opened.clone());
        r.register_with_unit(
            "sent",
            "Payload bytes sent to the peer through proxy streams",
            Unit::Bytes,
            m.sent.clone(),
        );
        r.register_with_unit(
            "received",
            "Payload bytes received from the peer through proxy streams",
            Unit::Bytes,
            m.received.clone(),
        );
        r.register("dials", "Outbound connection attempts to the peer, by result", m.dials.clone());
        r.register(
            "holepunch_attempts",
            "Hole punch dials: direct dials to a peer connected only through a relay",
            m.holepunch_attempts.clone(),
        );
        r.register(
            "holepunch_successes",
            "Hole punch dials that made a direct connection",
            m.holepunch_successes.clone(),
        );
        r.register("relay_reservations", "Reservations this node holds on the relay", m.relay_reservations.clone());
        r.register("relay_circuits", "Relayed connections open through the relay", m.relay_circuits.clone());
        r.register(
            "peers_refused",
            "Peer connections closed by this node: not in tunnel.allowedPeers, claiming a node name not bound \
             to their peer ID, or without the private network's key",
            m.peers_refused.clone(),
        );
        r.register(
            "limit_hits",
            "Requests refused at a limit: inbound proxy streams (per peer or in total), and as a relay server \
             reservations and circuits",
            m.limit_hits.clone(),
        );
        for limit in Limit::ALL {
            m.limit_hits.get_or_create_owned(&LimitLabels { limit: limit.label() });
        }
        r.register(
            "relay_served_reservations",
            "Reservations this node holds for others as a relay server",
            m.relay_served_reservations.clone(),
        );
        r.register(
            "relay_served_circuits",
            "Circuits this node relays as a relay server",
            m.relay_served_circuits.clone(),
        );
        m
    }

    /// Series registered nowhere (a tunnel started without an agent registry).
    pub(crate) fn unregistered() -> TunnelMetrics {
        TunnelMetrics::register(&mut Registry::default(), usize::MAX)
    }

    /// The label of node `name` (bounded: `other` past the cap).
    pub(crate) fn node_label(&self, name: &str) -> Arc<str> {
        let label = self.nodes.label(name);
        if &*label != OTHER {
            lock(&self.named).insert(label.clone());
        }
        label
    }

    /// Changes when series were removed: a cached [`NodeMeters`] of an older generation must
    /// be resolved again.
    pub(crate) fn generation(&self) -> u64 {
        self.generation.load(Ordering::Relaxed)
    }

    /// The stream and byte series of node label `node`.
    pub(crate) fn node_meters(&self, node: &Arc<str>) -> NodeMeters {
        let n = NodeLabels { node: node.clone() };
        let direction = |d| DirectionLabels { node: node.clone(), direction: d };
        NodeMeters {
            streams: self.peer_streams.get_or_create_owned(&n),
            opened_outbound: self.streams_opened.get_or_create_owned(&direction("outbound")),
            opened_inbound: self.streams_opened.get_or_create_owned(&direction("inbound")),
            sent: self.sent.get_or_create_owned(&n),
            received: self.received.get_or_create_owned(&n),
        }
    }

    /// A peer labelled `node` now takes `path` (`+1`) or no longer does (`-1`); a series at
    /// zero is removed (several peers share `unknown` and `other`).
    pub(crate) fn add_path(&self, node: &Arc<str>, path: ConnectionType, delta: i64) {
        let labels = PathLabels { node: node.clone(), path: path_name(path) };
        let left = self.peer_path.get_or_create(&labels).inc_by(delta) + delta;
        if left <= 0 {
            self.peer_path.remove(&labels);
        }
    }

    /// The peer's preferred RTT (None: remove the series).
    pub(crate) fn set_rtt(&self, node: &Arc<str>, rtt_seconds: Option<f64>) {
        let labels = NodeLabels { node: node.clone() };
        match rtt_seconds {
            Some(rtt) => {
                self.peer_rtt.get_or_create(&labels).set(rtt);
            }
            None => {
                self.peer_rtt.remove(&labels);
            }
        }
    }

    pub(crate) fn dialed(&self, node: &Arc<str>, ok: bool) {
        let labels = ResultLabels { node: node.clone(), result: if ok { "ok" } else { "error" } };
        self.dials.get_or_create(&labels).inc();
    }

    pub(crate) fn peer_refused(&self, why: Refusal) {
        self.peers_refused.get_or_create(&ReasonLabels { reason: why.label() }).inc();
    }

    /// Counts a refusal at `limit`; true when it should also be logged (the first one, then
    /// at most one per [`LogLimiter::INTERVAL`] for each limit).
    /// Counts a connection refused for a wrong PSK; true if it should be logged (once per
    /// interval: a prober may try many times).
    pub(crate) fn psk_refused(&self) -> bool {
        self.peer_refused(Refusal::Psk);
        self.psk_log.allow()
    }

    pub(crate) fn limit_hit(&self, limit: Limit) -> bool {
        self.limit_hits.get_or_create(&LimitLabels { limit: limit.label() }).inc();
        let index = Limit::ALL.iter().position(|l| *l == limit).expect("every limit is in ALL");
        self.limit_logs[index].allow()
    }

    pub(crate) fn holepunch_attempt(&self, node: &Arc<str>) {
        self.holepunch_attempts.get_or_create(&NodeLabels { node: node.clone() }).inc();
    }

    pub(crate) fn holepunch_success(&self, node: &Arc<str>) {
        self.holepunch_successes.get_or_create(&NodeLabels { node: node.clone() }).inc();
    }

    /// The configured relays: their series start at zero.
    pub(crate) fn set_relays(&self, relays: &HashSet<PeerId>) {
        *lock(&self.relays) = relays.clone();
        for relay in relays {
            let labels = RelayLabels { relay: relay.to_string().into() };
            self.relay_reservations.get_or_create_owned(&labels);
            self.relay_circuits.get_or_create_owned(&labels);
        }
    }

    fn relay_labels(&self, relay: PeerId) -> RelayLabels {
        let configured = lock(&self.relays).contains(&relay);
        RelayLabels { relay: if configured { relay.to_string().into() } else { OTHER.into() } }
    }

    pub(crate) fn set_reserved(&self, relay: PeerId, reserved: bool) {
        self.relay_reservations.get_or_create(&self.relay_labels(relay)).set(i64::from(reserved));
    }

    /// A relayed connection through `relay` opened (`+1`) or closed (`-1`).
    pub(crate) fn add_circuit(&self, relay: PeerId, delta: i64) {
        self.relay_circuits.get_or_create(&self.relay_labels(relay)).inc_by(delta);
    }

    /// Removes the series of every node for which `keep` is false (it left the cluster) and
    /// frees its label.
    pub fn retain_nodes(&self, keep: impl Fn(&str) -> bool) {
        let gone: Vec<Arc<str>> = {
            let mut named = lock(&self.named);
            let gone = named.iter().filter(|n| !keep(n)).cloned().collect::<Vec<_>>();
            for n in &gone {
                named.remove(n);
            }
            gone
        };
        if gone.is_empty() {
            return;
        }
        for node in gone {
            tracing::debug!(%node, "node left the cluster: its tunnel series are removed");
            let n = NodeLabels { node: node.clone() };
            self.peer_streams.remove(&n);
            for family in [&self.sent, &self.received, &self.holepunch_attempts, &self.holepunch_successes] {
                family.remove(&n);
            }
            self.peer_rtt.remove(&n);
            for direction in ["outbound", "inbound"] {
                self.streams_opened.remove(&DirectionLabels { node: node.clone(), direction });
            }
            for result in ["ok", "error"] {
                self.dials.remove(&ResultLabels { node: node.clone(), result });
            }
            self.nodes.release(&node);
        }
        self.generation.fetch_add(1, Ordering::Relaxed);
    }
}

fn path_name(path: ConnectionType) -> &'static str {
    match path {
        ConnectionType::Direct => "direct",
        ConnectionType::Relayed => "relayed",
    }
}

#[cfg(test)]
mod tests {
    use edgemesh_metrics::prometheus_client::encoding::text::encode;

    use super::*;

    fn scrape(registry: &Registry) -> String {
        let mut text = String::new();
        encode(&mut text, registry).unwrap();
        text
    }

    /// Several peers share `unknown`: its path series counts them and goes
    /// away with the last one, never below zero.
    #[test]
    fn a_shared_path_series_counts_its_peers_and_disappears_with_the_last() {
        let mut registry = Registry::default();
        let metrics = TunnelMetrics::register(&mut registry, 10);
        let unknown: Arc<str> = UNKNOWN.into();
        metrics.add_path(&unknown, ConnectionType::Relayed, 1);
        metrics.add_path(&unknown, ConnectionType::Relayed, 1);
        assert!(scrape(&registry).contains("tunnel_peer_path{node=\"unknown\",path=\"relayed\"} 2\n"));
        metrics.add_path(&unknown, ConnectionType::Relayed, -1);
        metrics.add_path(&unknown, ConnectionType::Relayed, -1);
        assert!(!scrape(&registry).contains("tunnel_peer_path{"), "{}", scrape(&registry));
    }

    /// A node gone from the cluster loses its series and its label slot; a
    /// cached handle of the old generation is resolved again.
    #[test]
    fn a_departed_node_loses_its_series_and_its_label() {
        let mut registry = Registry::default();
        let metrics = TunnelMetrics::register(&mut registry, 1);
        let b = metrics.node_label("node-b");
        let meters = metrics.node_meters(&b);
        meters.sent.inc_by(100);
        metrics.dialed(&b, true);
        assert_eq!(&*metrics.node_label("node-c"), OTHER, "at the cap of 1");
        let before = metrics.generation();

        metrics.retain_nodes(|node| node == "node-a");
        let text = scrape(&registry);
        assert!(!text.contains("node-b"), "{text}");
        assert_ne!(metrics.generation(), before);
        assert_eq!(&*metrics.node_label("node-c"), "node-c", "node-b's slot is free again");
        metrics.node_meters(&metrics.node_label("node-c")).received.inc_by(7);
        assert!(scrape(&registry).contains("tunnel_received_bytes_total{node=\"node-c\"} 7\n"));
    }

    /// Every refusal is counted; only the first of an interval is logged, per limit.
    #[test]
    fn limit_hits_are_all_counted_and_logged_once_per_interval_each() {
        let mut registry = Registry::default();
        let metrics = TunnelMetrics::register(&mut registry, 10);
        assert!(scrape(&registry).contains("tunnel_limit_hits_total{limit=\"relay_circuits\"} 0\n"));
        assert!(metrics.limit_hit(Limit::StreamsPerPeer));
        assert!(!metrics.limit_hit(Limit::StreamsPerPeer));
        assert!(metrics.limit_hit(Limit::Streams), "another limit logs on its own");
        let text = scrape(&registry);
        assert!(text.contains("tunnel_limit_hits_total{limit=\"inbound_streams_per_peer\"} 2\n"), "{text}");
        assert!(text.contains("tunnel_limit_hits_total{limit=\"inbound_streams\"} 1\n"), "{text}");
    }
}

//! What the tunnel knows about each connected peer: its connections, both sides' node name
//! claims, its open streams, path and relay reservation; and the status `/peers` shows of it.
//!
//! One owner, [`PeerTable`]: the swarm task records connections, paths and reservations, the
//! stream side records claims, and both wait on its change notification. Fields are private;
//! nothing outside takes its locks.
//!
//! The per-peer metrics (path, RTT, relay reservations and circuits) are published here, by
//! the same calls that change what `/peers` shows and computed the same way, so the two never
//! disagree (see `metrics`).

use std::{
    collections::{HashMap, HashSet},
    sync::{
        Arc, Mutex, MutexGuard,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use libp2p::{Multiaddr, PeerId, swarm::ConnectionId};
use serde::Serialize;
use tokio::sync::watch;

use crate::{
    liveness::ConnectionState,
    metrics::{Direction, NodeMeters, TunnelMetrics, UNKNOWN},
    streams::{Control, Slot},
};

/// At most one warning per peer and kind within this period.
const WARN_EVERY: Duration = Duration::from_secs(600);

/// A peer's name claim, or our claim as judged by the peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Claim {
    Pending,
    Accepted(String),
    Refused(String),
}

struct ConnInfo {
    addr: Multiaddr,
    relayed: bool,
    /// The relay it runs through (relayed connections).
    relay: Option<PeerId>,
}

/// Bound on the node names remembered per peer (one per node of the cluster; cleared beyond,
/// which only labels a few first dials `unknown`).
const MAX_NAMES: usize = 100_000;

struct PeerEntry {
    /// The peer's claim (their hello), as we judged it.
    theirs: Claim,
    /// Our claim, as the peer judged it.
    ours: Claim,
    conns: HashMap<ConnectionId, ConnInfo>,
    streams: Arc<AtomicUsize>,
    reserved: bool,
    /// The path new streams take (None: not known yet), and since when.
    path: Option<ConnectionType>,
    path_since: Instant,
    /// The `peer_path` series this peer counts in (None: none, it is not connected).
    published_path: Option<(Arc<str>, ConnectionType)>,
    /// The `peer_rtt` series this peer sets.
    published_rtt: Option<Arc<str>>,
    /// The node's stream series, resolved once: (node name, metrics generation, series).
    meters: Option<(Arc<str>, u64, NodeMeters)>,
}

impl PeerEntry {
    fn new() -> Self {
        PeerEntry {
            theirs: Claim::Pending,
            ours: Claim::Pending,
            conns: HashMap::new(),
            streams: Arc::new(AtomicUsize::new(0)),
            reserved: false,
            path: None,
            path_since: Instant::now(),
            published_path: None,
            published_rtt: None,
            meters: None,
        }
    }
}

/// The peers' state, and a notification of its changes.
pub(crate) struct PeerTable {
    /// The swarm's connections, as the streams behaviour sees them (health, liveness).
    control: Control,
    peers: Mutex<HashMap<PeerId, PeerEntry>>,
    /// Bumped on every change of `peers` (or of a connection's health) a waiter may care about.
    changed: watch::Sender<u64>,
    /// Peers whose connections we keep open (relays, bootstrap peers).
    keep_open: Mutex<HashSet<PeerId>>,
    warned: Mutex<HashMap<(PeerId, &'static str), Instant>>,
    /// Node names of peers, from the directory (a node we open streams to) and from accepted
    /// claims; kept across reconnections, to label dials before the hello.
    names: Mutex<HashMap<PeerId, Arc<str>>>,
    metrics: Arc<TunnelMetrics>,
}

/// A peer's open stream count (`/peers`) and its node's stream series.
pub(crate) struct PeerStreams {
    open: Arc<AtomicUsize>,
    pub meters: NodeMeters,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl PeerTable {
    /// An empty table; `keep_open` starts as the configured relays.
    pub(crate) fn new(control: Control, keep_open: HashSet<PeerId>, metrics: Arc<TunnelMetrics>) -> Self {
        PeerTable {
            control,
            peers: Mutex::new(HashMap::new()),
            changed: watch::Sender::new(0),
            keep_open: Mutex::new(keep_open),
            warned: Mutex::new(HashMap::new()),
            names: Mutex::new(HashMap::new()),
            metrics,
        }
    }

    /// A receiver that sees every change (claims, connections, connection health).
    pub(crate) fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// Wakes the waiters: something they may care about changed (e.g. a connection's health).
    pub(crate) fn bump(&self) {
        self.changed.send_modify(|v| *v = v.wrapping_add(1));
    }

    /// A new connection; `relay` is the relay a relayed one runs through.
    pub(crate) fn connection_established(
        &self,
        peer: PeerId,
        conn: ConnectionId,
        addr: Multiaddr,
        relayed: bool,
        relay: Option<PeerId>,
    ) {
        let mut peers = lock(&self.peers);
        let e = peers.entry(peer).or_insert_with(PeerEntry::new);
        if e.conns.insert(conn, ConnInfo { addr, relayed, relay }).is_none()
            && let Some(relay) = relay
        {
            self.metrics.add_circuit(relay, 1);
        }
        self.publish(&peer, e);
        drop(peers);
        self.bump();
    }

    pub(crate) fn connection_closed(&self, peer: PeerId, conn: ConnectionId) {
        let mut peers = lock(&self.peers);
        if let Some(e) = peers.get_mut(&peer) {
            if let Some(ConnInfo { relay: Some(relay), .. }) = e.conns.remove(&conn) {
                self.metrics.add_circuit(relay, -1);
            }
            self.publish(&peer, e);
            // Forget the claims only when no connection is left (the streams behaviour sees new
            // connections before this task does).
            if e.conns.is_empty() && !self.control.is_connected(&peer) {
                peers.remove(&peer);
            }
        }
        drop(peers);
        self.bump();
    }

    /// Publishes the peer's path and RTT again (after a ping: connection health and RTT).
    pub(crate) fn refresh(&self, peer: PeerId) {
        if let Some(e) = lock(&self.peers).get_mut(&peer) {
            self.publish(&peer, e);
        }
    }

    /// Remembers that `peer` is node `node` (the directory's binding), to label dials to it.
    pub(crate) fn note_node(&self, peer: PeerId, node: &str) {
        let mut names = lock(&self.names);
        if names.get(&peer).is_some_and(|n| &**n == node) {
            return;
        }
        if names.len() >= MAX_NAMES {
            names.clear();
        }
        names.insert(peer, node.into());
    }

    /// The `node` label of `peer`: its accepted claim, else the name the directory gave it,
    /// else `unknown`.
    pub(crate) fn node_label(&self, peer: PeerId) -> Arc<str> {
        let peers = lock(&self.peers);
        self.label_of(&peer, peers.get(&peer))
    }

    fn label_of(&self, peer: &PeerId, e: Option<&PeerEntry>) -> Arc<str> {
        if let Some(PeerEntry { theirs: Claim::Accepted(node), .. }) = e {
            return self.metrics.node_label(node);
        }
        match lock(&self.names).get(peer) {
            Some(node) => self.metrics.node_label(node),
            None => UNKNOWN.into(),
        }
    }

    /// Brings the peer's `peer_path` and `peer_rtt` series in line with its status (what
    /// `/peers` shows: the preferred path and its RTT; no series while not connected).
    fn publish(&self, peer: &PeerId, e: &mut PeerEntry) {
        let now = match e.conns.is_empty() {
            true => None,
            false => Some(preferred(&self.connection_statuses(e))),
        };
        let label = self.label_of(peer, Some(e));
        let path = now.map(|(path, _)| (label.clone(), path));
        if e.published_path != path {
            if let Some((node, path)) = e.published_path.take() {
                self.metrics.add_path(&node, path, -1);
            }
            if let Some((node, path)) = &path {
                self.metrics.add_path(node, *path, 1);
            }
            e.published_path = path;
        }
        // `unknown` and `other` stand for several peers: no one RTT of theirs to show.
        let rtt = now.and_then(|(_, rtt)| rtt).filter(|_| &*label != UNKNOWN && &*label != edgemesh_metrics::OTHER);
        let rtt_label = rtt.map(|_| label.clone());
        if let Some(old) = e.published_rtt.take()
            && Some(&old) != rtt_label.as_ref()
        {
            self.metrics.set_rtt(&old, None);
        }
        if let (Some(label), Some(rtt_ms)) = (&rtt_label, rtt) {
            self.metrics.set_rtt(label, Some(rtt_ms / 1000.0));
        }
        e.published_rtt = rtt_label;
    }

    /// The path new streams to `peer` take now (see `swarm_task::heal`).
    pub(crate) fn note_path(&self, peer: PeerId, path: Option<ConnectionType>) {
        if let Some(e) = lock(&self.peers).get_mut(&peer)
            && e.path != path
        {
            if let (Some(from), Some(to)) = (e.path, path) {
                tracing::info!(%peer, ?from, ?to, "tunnel path changed");
            }
            e.path = path;
            e.path_since = Instant::now();
            self.publish(&peer, e);
        }
    }

    /// Whether relay `peer` holds a reservation for us.
    pub(crate) fn set_reserved(&self, peer: PeerId, reserved: bool) {
        if let Some(e) = lock(&self.peers).get_mut(&peer) {
            e.reserved = reserved;
        }
        self.metrics.set_reserved(peer, reserved);
    }

    /// Keeps `peer`'s connections open (a bootstrap peer we connected to).
    pub(crate) fn keep_open(&self, peer: PeerId) {
        lock(&self.keep_open).insert(peer);
    }

    /// Whether we keep `peer`'s connections open (our hello asks the peer to hold it).
    pub(crate) fn is_kept_open(&self, peer: PeerId) -> bool {
        lock(&self.keep_open).contains(&peer)
    }

    /// The peer's node name claim, as we judged it (None: not connected).
    pub(crate) fn their_claim(&self, peer: PeerId) -> Option<Claim> {
        lock(&self.peers).get(&peer).map(|e| e.theirs.clone())
    }

    /// Our node name claim, as the peer judged it (None: not connected).
    pub(crate) fn our_claim(&self, peer: PeerId) -> Option<Claim> {
        lock(&self.peers).get(&peer).map(|e| e.ours.clone())
    }

    pub(crate) fn set_theirs(&self, peer: PeerId, claim: Claim) {
        if let Claim::Accepted(node) = &claim {
            self.note_node(peer, node);
        }
        let mut peers = lock(&self.peers);
        let e = peers.entry(peer).or_insert_with(PeerEntry::new);
        e.theirs = claim;
        // The node label may have changed (from `unknown`).
        self.publish(&peer, e);
        drop(peers);
        self.bump();
    }

    pub(crate) fn set_ours(&self, peer: PeerId, claim: Claim, force: bool) {
        let mut peers = lock(&self.peers);
        let e = peers.entry(peer).or_insert_with(PeerEntry::new);
        if force || e.ours == Claim::Pending {
            e.ours = claim;
        }
        drop(peers);
        self.bump();
    }

    /// The peer's stream count and the stream series of node `node` (the directory's name for
    /// the peer we open a stream to, or its accepted claim for a stream it opened), resolved
    /// once per peer.
    pub(crate) fn streams(&self, peer: PeerId, node: &str) -> PeerStreams {
        let generation = self.metrics.generation();
        let mut peers = lock(&self.peers);
        let e = peers.entry(peer).or_insert_with(PeerEntry::new);
        let meters = match &e.meters {
            Some((name, g, meters)) if &**name == node && *g == generation => meters.clone(),
            _ => {
                let meters = self.metrics.node_meters(&self.metrics.node_label(node));
                e.meters = Some((node.into(), generation, meters.clone()));
                meters
            }
        };
        PeerStreams { open: e.streams.clone(), meters }
    }

    /// Whether to log a warning of this kind about this peer now (rate limited).
    /// The tunnel's metrics, for the parts that count events beside the table.
    pub(crate) fn metrics(&self) -> &TunnelMetrics {
        &self.metrics
    }

    pub(crate) fn should_warn(&self, peer: PeerId, kind: &'static str) -> bool {
        let mut w = lock(&self.warned);
        let now = Instant::now();
        if w.len() > 10_000 {
            w.retain(|_, t| now.duration_since(*t) < WARN_EVERY);
        }
        match w.get(&(peer, kind)) {
            Some(t) if now.duration_since(*t) < WARN_EVERY => false,
            _ => {
                w.insert((peer, kind), now);
                true
            }
        }
    }

    /// The connected peers' status (a peer with no connection left is not listed).
    pub(crate) fn statuses(&self) -> Vec<PeerStatus> {
        let peers = lock(&self.peers);
        let mut out: Vec<PeerStatus> = peers
            .iter()
            .filter(|(_, e)| !e.conns.is_empty())
            .map(|(peer, e)| {
                let connections = self.connection_statuses(e);
                let mut addresses: Vec<String> = e.conns.values().map(|c| c.addr.to_string()).collect();
                addresses.sort();
                addresses.dedup();
                let (preferred, rtt) = preferred(&connections);
                PeerStatus {
                    node: match &e.theirs {
                        Claim::Accepted(n) => Some(n.clone()),
                        _ => None,
                    },
                    peer_id: peer.to_string(),
                    addresses,
                    connection: preferred,
                    rtt_ms: rtt,
                    path_changed_seconds_ago: e.path_since.elapsed().as_secs_f64(),
                    connections,
                    open_streams: e.streams.load(Ordering::Relaxed),
                    trusted: matches!(e.theirs, Claim::Accepted(_)),
                    relay_reserved: e.reserved,
                }
            })
            .collect();
        out.sort_by(|a, b| (&a.node, &a.peer_id).cmp(&(&b.node, &b.peer_id)));
        out
    }

    /// The peer's connections as `/peers` shows them (those the streams behaviour knows).
    fn connection_statuses(&self, e: &PeerEntry) -> Vec<ConnectionStatus> {
        let mut connections: Vec<ConnectionStatus> = e
            .conns
            .iter()
            .filter_map(|(id, c)| {
                let health = self.control.health(*id)?;
                Some(ConnectionStatus {
                    address: c.addr.to_string(),
                    connection: if c.relayed { ConnectionType::Relayed } else { ConnectionType::Direct },
                    state: health.state,
                    last_ping_ms_ago: health.last_ping_age.map(edgemesh_core::duration::millis),
                    rtt_ms: health.rtt.map(|d| d.as_secs_f64() * 1000.0),
                })
            })
            .collect();
        connections.sort_by(|a, b| (a.state, a.connection, &a.address).cmp(&(b.state, b.connection, &b.address)));
        connections
    }
}

/// The path new streams take (direct if a direct connection is open and not being closed)
/// and its best RTT in milliseconds.
fn preferred(connections: &[ConnectionStatus]) -> (ConnectionType, Option<f64>) {
    let usable = |c: &&ConnectionStatus| c.state != ConnectionState::Closing;
    let direct = connections.iter().filter(usable).any(|c| c.connection == ConnectionType::Direct);
    let preferred = if direct { ConnectionType::Direct } else { ConnectionType::Relayed };
    let rtt = connections
        .iter()
        .filter(usable)
        .filter(|c| c.connection == preferred)
        .filter_map(|c| c.rtt_ms)
        .min_by(f64::total_cmp);
    (preferred, rtt)
}

/// Counts a peer's open streams while alive (`/peers` and the `peer_streams` gauge), and
/// holds the stream's slot in its connection.
pub(crate) struct StreamGuard {
    open: Arc<AtomicUsize>,
    gauge: edgemesh_metrics::Gauge,
    _slot: Option<Slot>,
}

impl StreamGuard {
    /// A stream opened by `direction`'s side (counted in `streams_opened`).
    pub(crate) fn new(streams: &PeerStreams, direction: Direction, slot: Option<Slot>) -> Self {
        streams.open.fetch_add(1, Ordering::Relaxed);
        streams.meters.streams.inc();
        match direction {
            Direction::Outbound => streams.meters.opened_outbound.inc(),
            Direction::Inbound => streams.meters.opened_inbound.inc(),
        };
        StreamGuard { open: streams.open.clone(), gauge: streams.meters.streams.clone(), _slot: slot }
    }
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.open.fetch_sub(1, Ordering::Relaxed);
        self.gauge.dec();
    }
}

/// How a peer is connected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ConnectionType {
    /// At least one direct connection (TCP or QUIC, possibly hole punched).
    Direct,
    /// Only connections through a relay.
    Relayed,
}

/// A connected peer, for the admin `/peers` endpoint (JSON keys in camelCase, like the rest of
/// the admin JSON: `peerId`, `rttMs`, `openStreams`, `relayReserved`, `pathChangedSecondsAgo`,
/// `connections`).
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PeerStatus {
    /// The node name the peer claimed and we accepted (None: not (yet) accepted).
    pub node: Option<String>,
    pub peer_id: String,
    /// Remote addresses of the open connections.
    pub addresses: Vec<String>,
    /// The path new streams take: direct if a direct connection is open and not being closed.
    pub connection: ConnectionType,
    /// Round-trip time of the preferred connection, in milliseconds (None: not measured yet).
    pub rtt_ms: Option<f64>,
    /// Seconds since `connection` last changed (or since the peer connected).
    pub path_changed_seconds_ago: f64,
    /// Each open connection.
    pub connections: Vec<ConnectionStatus>,
    /// Proxied TCP connections and UDP sessions open with this peer (both directions).
    pub open_streams: usize,
    /// The peer's node name claim is accepted (it may open proxy streams to us).
    pub trusted: bool,
    /// This peer is one of our relays and holds a reservation for us.
    pub relay_reserved: bool,
}

/// One connection to a peer, in `/peers`.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ConnectionStatus {
    /// The remote address (through a relay: `.../p2p-circuit/...`).
    pub address: String,
    pub connection: ConnectionType,
    /// `alive`, `suspect` (missed two pings: new streams avoid it) or `closing` (no ping
    /// answered for the liveness timeout).
    pub state: ConnectionState,
    /// Milliseconds since its last ping was answered (None: none yet).
    pub last_ping_ms_ago: Option<u64>,
    /// The last ping's round-trip time, in milliseconds.
    pub rtt_ms: Option<f64>,
}

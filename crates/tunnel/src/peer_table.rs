//! What the tunnel knows about each connected peer: its connections, both sides' node name
//! claims, its open streams, path and relay reservation; and the status `/peers` shows of it.
//!
//! One owner, [`PeerTable`]: the swarm task records connections, paths and reservations, the
//! stream side records claims, and both wait on its change notification. Fields are private;
//! nothing outside takes its locks.

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
}

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
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl PeerTable {
    /// An empty table; `keep_open` starts as the configured relays.
    pub(crate) fn new(control: Control, keep_open: HashSet<PeerId>) -> Self {
        PeerTable {
            control,
            peers: Mutex::new(HashMap::new()),
            changed: watch::Sender::new(0),
            keep_open: Mutex::new(keep_open),
            warned: Mutex::new(HashMap::new()),
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

    pub(crate) fn connection_established(&self, peer: PeerId, conn: ConnectionId, addr: Multiaddr, relayed: bool) {
        lock(&self.peers).entry(peer).or_insert_with(PeerEntry::new).conns.insert(conn, ConnInfo { addr, relayed });
        self.bump();
    }

    pub(crate) fn connection_closed(&self, peer: PeerId, conn: ConnectionId) {
        let mut peers = lock(&self.peers);
        if let Some(e) = peers.get_mut(&peer) {
            e.conns.remove(&conn);
            // Forget the claims only when no connection is left (the streams behaviour sees new
            // connections before this task does).
            if e.conns.is_empty() && !self.control.is_connected(&peer) {
                peers.remove(&peer);
            }
        }
        drop(peers);
        self.bump();
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
        }
    }

    pub(crate) fn set_reserved(&self, peer: PeerId, reserved: bool) {
        if let Some(e) = lock(&self.peers).get_mut(&peer) {
            e.reserved = reserved;
        }
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
        lock(&self.peers).entry(peer).or_insert_with(PeerEntry::new).theirs = claim;
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

    pub(crate) fn stream_counter(&self, peer: PeerId) -> Arc<AtomicUsize> {
        lock(&self.peers).entry(peer).or_insert_with(PeerEntry::new).streams.clone()
    }

    /// Whether to log a warning of this kind about this peer now (rate limited).
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
                let mut connections: Vec<ConnectionStatus> = e
                    .conns
                    .iter()
                    .filter_map(|(id, c)| {
                        let health = self.control.health(*id)?;
                        Some(ConnectionStatus {
                            address: c.addr.to_string(),
                            connection: if c.relayed { ConnectionType::Relayed } else { ConnectionType::Direct },
                            state: health.state,
                            last_ping_ms_ago: health.last_ping_age.map(|d| d.as_millis() as u64),
                            rtt_ms: health.rtt.map(|d| d.as_secs_f64() * 1000.0),
                        })
                    })
                    .collect();
                connections
                    .sort_by(|a, b| (a.state, a.connection, &a.address).cmp(&(b.state, b.connection, &b.address)));
                let usable = |c: &&ConnectionStatus| c.state != ConnectionState::Closing;
                let direct = connections.iter().filter(usable).any(|c| c.connection == ConnectionType::Direct);
                let mut addresses: Vec<String> = e.conns.values().map(|c| c.addr.to_string()).collect();
                addresses.sort();
                addresses.dedup();
                let preferred = if direct { ConnectionType::Direct } else { ConnectionType::Relayed };
                let rtt = connections
                    .iter()
                    .filter(usable)
                    .filter(|c| c.connection == preferred)
                    .filter_map(|c| c.rtt_ms)
                    .min_by(f64::total_cmp);
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
}

/// Counts a peer's open streams while alive, and holds the stream's slot in its connection.
pub(crate) struct StreamGuard(Arc<AtomicUsize>, #[allow(dead_code)] Option<Slot>);

impl StreamGuard {
    pub(crate) fn new(counter: Arc<AtomicUsize>, slot: Option<Slot>) -> Self {
        counter.fetch_add(1, Ordering::Relaxed);
        StreamGuard(counter, slot)
    }
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
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

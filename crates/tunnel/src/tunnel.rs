//! The tunnel handle, the hello exchange and the proxy streams.

use std::{
    collections::{HashMap, HashSet},
    io,
    net::SocketAddr,
    pin::Pin,
    sync::{
        Arc, Mutex, MutexGuard,
        atomic::{AtomicUsize, Ordering},
    },
    task::{Context, Poll},
    time::{Duration, Instant},
};

use libp2p::{Multiaddr, PeerId, Stream, StreamProtocol, swarm::ConnectionId};
use serde::Serialize;
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf, ReadHalf, WriteHalf},
    net::{TcpStream, UdpSocket},
    sync::{mpsc, oneshot, watch},
    time::timeout,
};
use tokio_util::{
    compat::{Compat, FuturesAsyncReadCompatExt},
    sync::CancellationToken,
};

use crate::{
    Directory, TunnelConfig, TunnelError, TunnelProtocol,
    config::MAX_STREAMS_PER_CONNECTION,
    identity::{load_or_create_identity, load_psk},
    node::{self, Command, SwarmParams, Task},
    streams::{self, Control, HELLO, Inbound, OpenError, Slot, TCP, UDP},
    wire::{self, Header, Hello, HelloStatus, Reply},
};

/// Time limit on reading a hello or a proxy header, and on a hello reply.
const HEADER_TIMEOUT: Duration = if cfg!(test) { Duration::from_secs(2) } else { Duration::from_secs(10) };
/// How long an inbound proxy stream waits for the peer's hello to be verified.
const AUTHORIZE_WAIT: Duration = Duration::from_secs(10);
/// A UDP session (remote side) with no datagram either way for this long is closed.
pub const UDP_IDLE_TIMEOUT: Duration = Duration::from_secs(300);
/// The largest datagram a session carries (the length prefix is a u16).
pub const MAX_DATAGRAM: usize = u16::MAX as usize;
/// Copy buffer per direction of a proxied TCP connection.
const COPY_BUFFER: usize = 64 * 1024;
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
    rtt: Option<Duration>,
}

struct PeerEntry {
    /// The peer's claim (their hello), as we judged it.
    theirs: Claim,
    /// Our claim, as the peer judged it.
    ours: Claim,
    conns: HashMap<ConnectionId, ConnInfo>,
    streams: Arc<AtomicUsize>,
    reserved: bool,
}

impl PeerEntry {
    fn new() -> Self {
        PeerEntry {
            theirs: Claim::Pending,
            ours: Claim::Pending,
            conns: HashMap::new(),
            streams: Arc::new(AtomicUsize::new(0)),
            reserved: false,
        }
    }
}

/// State shared by the handles, the swarm task and the stream tasks.
pub(crate) struct Inner {
    pub local_peer: PeerId,
    pub node_name: String,
    pub directory: Arc<dyn Directory>,
    pub control: Control,
    pub commands: mpsc::UnboundedSender<Command>,
    peers: Mutex<HashMap<PeerId, PeerEntry>>,
    /// Bumped on every change of `peers` that a waiter may care about.
    changed: watch::Sender<u64>,
    pub connect_timeout: Duration,
    max_streams: usize,
    pub stop: CancellationToken,
    /// QUIC is usable (no PSK).
    pub quic: bool,
    relay_peers: HashSet<PeerId>,
    /// Peers whose connections we keep open (relays, bootstrap peers).
    pub keep_alive: Mutex<HashSet<PeerId>>,
    relay_server: bool,
    listen_addrs: Mutex<Vec<Multiaddr>>,
    warned: Mutex<HashMap<(PeerId, &'static str), Instant>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Inner {
    fn bump(&self) {
        self.changed.send_modify(|v| *v = v.wrapping_add(1));
    }

    pub(crate) fn connection_established(&self, peer: PeerId, conn: ConnectionId, addr: Multiaddr, relayed: bool) {
        lock(&self.peers)
            .entry(peer)
            .or_insert_with(PeerEntry::new)
            .conns
            .insert(conn, ConnInfo { addr, relayed, rtt: None });
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

    pub(crate) fn set_rtt(&self, peer: PeerId, conn: ConnectionId, rtt: Duration) {
        if let Some(c) = lock(&self.peers).get_mut(&peer).and_then(|e| e.conns.get_mut(&conn)) {
            c.rtt = Some(rtt);
        }
    }

    pub(crate) fn set_reserved(&self, peer: PeerId, reserved: bool) {
        if let Some(e) = lock(&self.peers).get_mut(&peer) {
            e.reserved = reserved;
        }
    }

    pub(crate) fn add_listen_addr(&self, a: Multiaddr) {
        let mut l = lock(&self.listen_addrs);
        if !l.contains(&a) {
            l.push(a);
        }
    }

    pub(crate) fn remove_listen_addr(&self, a: &Multiaddr) {
        lock(&self.listen_addrs).retain(|x| x != a);
    }

    fn set_theirs(&self, peer: PeerId, claim: Claim) {
        lock(&self.peers).entry(peer).or_insert_with(PeerEntry::new).theirs = claim;
        self.bump();
    }

    fn set_ours(&self, peer: PeerId, claim: Claim, force: bool) {
        let mut peers = lock(&self.peers);
        let e = peers.entry(peer).or_insert_with(PeerEntry::new);
        if force || e.ours == Claim::Pending {
            e.ours = claim;
        }
        drop(peers);
        self.bump();
    }

    fn stream_counter(&self, peer: PeerId) -> Arc<AtomicUsize> {
        lock(&self.peers).entry(peer).or_insert_with(PeerEntry::new).streams.clone()
    }

    /// Whether to log a warning of this kind about this peer now (rate limited).
    fn should_warn(&self, peer: PeerId, kind: &'static str) -> bool {
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

    /// The node name of an inbound stream's peer, if its claim was accepted and still holds.
    async fn authorize(&self, peer: PeerId) -> Option<String> {
        let mut rx = self.changed.subscribe();
        let deadline = tokio::time::Instant::now() + AUTHORIZE_WAIT;
        loop {
            rx.borrow_and_update();
            let claim = lock(&self.peers).get(&peer).map(|e| e.theirs.clone());
            match claim {
                Some(Claim::Accepted(name)) => {
                    // Re-check: the directory may have changed since the hello.
                    return (self.directory.peer_of(&name) == Some(peer)).then_some(name);
                }
                Some(Claim::Refused(_)) => return None,
                _ => {}
            }
            if tokio::time::timeout_at(deadline, rx.changed()).await.is_err() || self.stop.is_cancelled() {
                return None;
            }
        }
    }
}

/// Counts a peer's open streams while alive, and holds the stream's slot in its connection.
struct StreamGuard(Arc<AtomicUsize>, #[allow(dead_code)] Option<Slot>);

impl StreamGuard {
    fn new(counter: Arc<AtomicUsize>, slot: Option<Slot>) -> Self {
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ConnectionType {
    /// At least one direct connection (TCP or QUIC, possibly hole punched).
    Direct,
    /// Only connections through a relay.
    Relayed,
}

/// A connected peer, for the admin `/peers` endpoint (JSON keys in camelCase, like the rest of
/// the admin JSON: `peerId`, `rttMs`, `openStreams`, `relayReserved`).
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PeerStatus {
    /// The node name the peer claimed and we accepted (None: not (yet) accepted).
    pub node: Option<String>,
    pub peer_id: String,
    /// Remote addresses of the open connections.
    pub addresses: Vec<String>,
    pub connection: ConnectionType,
    /// Round-trip time of the preferred connection, in milliseconds (None: not measured yet).
    pub rtt_ms: Option<f64>,
    /// Proxied TCP connections and UDP sessions open with this peer (both directions).
    pub open_streams: usize,
    /// The peer's node name claim is accepted (it may open proxy streams to us).
    pub trusted: bool,
    /// This peer is one of our relays and holds a reservation for us.
    pub relay_reserved: bool,
}

/// The cross-node tunnel (a cheap handle).
#[derive(Clone)]
pub struct Tunnel {
    pub(crate) inner: Arc<Inner>,
}

impl Tunnel {
    /// Binds the listeners (a taken port is an error here, not later) and spawns the swarm
    /// task; the task stops when `stop` is cancelled.
    pub async fn start(
        config: TunnelConfig,
        directory: Arc<dyn Directory>,
        stop: CancellationToken,
    ) -> Result<(Tunnel, tokio::task::JoinHandle<()>), TunnelError> {
        if config.node_name.is_empty() || config.node_name.len() > wire::MAX_NODE_NAME {
            return Err(TunnelError::Config(format!(
                "node name {:?} must be 1 to {} bytes",
                config.node_name,
                wire::MAX_NODE_NAME
            )));
        }
        let key = load_or_create_identity(&config.key_file)?;
        let psk = config.psk_file.as_deref().map(load_psk).transpose()?;
        let quic = psk.is_none();
        let default_listen = config.listen.is_empty();
        let listen = if default_listen { node::default_listen(quic) } else { config.listen.clone() };
        if psk.is_some() {
            for (what, list) in [("listen", &listen), ("bootstrap", &config.bootstrap), ("relay", &config.relays)] {
                if let Some(a) = list.iter().find(|a| node::is_quic(a)) {
                    return Err(TunnelError::Config(format!(
                        "{what} address {a} is QUIC, but a pre-shared key is configured and libp2p's private \
                         network (pnet) protects TCP only: use TCP addresses with --psk-file"
                    )));
                }
            }
        }
        for r in &config.relays {
            if !matches!(r.iter().last(), Some(libp2p::multiaddr::Protocol::P2p(_))) || streams::is_relayed(r) {
                return Err(TunnelError::Config(format!(
                    "relay address {r} must be a direct address ending in /p2p/<relay peer id>"
                )));
            }
        }
        let mut max_streams = config.max_streams_per_connection;
        if max_streams == 0 {
            return Err(TunnelError::Config("max_streams_per_connection must be at least 1".into()));
        }
        if max_streams > MAX_STREAMS_PER_CONNECTION {
            tracing::warn!(
                requested = max_streams,
                used = MAX_STREAMS_PER_CONNECTION,
                "max_streams_per_connection is at most {MAX_STREAMS_PER_CONNECTION}; clamped"
            );
            max_streams = MAX_STREAMS_PER_CONNECTION;
        }
        let built = node::build(SwarmParams {
            key: &key,
            psk,
            quic,
            max_streams,
            relay_server: config.relay_server.as_ref(),
            mdns: config.mdns,
            idle_timeout: config.idle_connection_timeout,
        })?;
        let mut swarm = built.swarm;
        let mut listeners = HashSet::new();
        for addr in &listen {
            match swarm.listen_on(addr.clone()) {
                Ok(id) => {
                    listeners.insert(id);
                }
                // The default [::] listeners are optional: IPv6 may be disabled on the host.
                Err(e) if default_listen && node::is_ipv6(addr) => {
                    tracing::warn!(%addr, error = %e, "IPv6 tunnel listener unavailable");
                }
                Err(e) => return Err(TunnelError::Listen { addr: addr.clone(), message: e.to_string() }),
            }
        }

        let (commands_tx, commands_rx) = mpsc::unbounded_channel();
        let relay_peers: HashSet<PeerId> = config
            .relays
            .iter()
            .filter_map(|a| match a.iter().last() {
                Some(libp2p::multiaddr::Protocol::P2p(p)) => Some(p),
                _ => None,
            })
            .collect();
        let inner = Arc::new(Inner {
            local_peer: key.public().to_peer_id(),
            node_name: config.node_name.clone(),
            directory,
            control: built.control,
            commands: commands_tx,
            peers: Mutex::new(HashMap::new()),
            changed: watch::Sender::new(0),
            connect_timeout: config.connect_timeout,
            max_streams,
            stop: stop.clone(),
            quic,
            keep_alive: Mutex::new(relay_peers.clone()),
            relay_peers,
            relay_server: config.relay_server.is_some(),
            listen_addrs: Mutex::new(Vec::new()),
            warned: Mutex::new(HashMap::new()),
        });
        let mut task = Task::new(
            inner.clone(),
            swarm,
            commands_rx,
            &config.relays,
            &config.bootstrap,
            config.relay_server.is_some(),
        );
        // Wait (briefly) until every listener reported its addresses, so that `listen_addrs`
        // is complete when `start` returns.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
        while !listeners.is_empty() {
            use futures::StreamExt;
            let Ok(ev) = tokio::time::timeout_at(deadline, task.swarm.select_next_some()).await else { break };
            match &ev {
                libp2p::swarm::SwarmEvent::NewListenAddr { listener_id, .. } => {
                    listeners.remove(listener_id);
                }
                libp2p::swarm::SwarmEvent::ListenerClosed { listener_id, reason, .. }
                    if listeners.contains(listener_id) =>
                {
                    return Err(TunnelError::Listen {
                        addr: listen.first().cloned().unwrap_or_else(Multiaddr::empty),
                        message: format!("listener closed: {reason:?}"),
                    });
                }
                _ => {}
            }
            task.on_event(ev);
        }
        tracing::info!(peer_id = %inner.local_peer, node = %inner.node_name, "tunnel started");

        tokio::spawn(dispatch(inner.clone(), built.inbound));
        let handle = tokio::spawn(task.run());
        Ok((Tunnel { inner }, handle))
    }

    /// This node's peer ID.
    pub fn peer_id(&self) -> PeerId {
        self.inner.local_peer
    }

    /// The addresses the tunnel listens on (wildcards expanded per interface).
    pub fn listen_addrs(&self) -> Vec<Multiaddr> {
        lock(&self.inner.listen_addrs).clone()
    }

    /// A byte stream to `target` on node `node`, through the agent on that node. Resolves after
    /// the remote agent's reply: Ok only when the remote connected to the endpoint.
    pub async fn open_tcp(&self, node: &str, target: SocketAddr, service: &str) -> Result<TunnelStream, TunnelError> {
        let (peer, stream, relayed, guard) = self.open(node, target, service, TunnelProtocol::Tcp).await?;
        Ok(TunnelStream { io: stream, peer, relayed, _guard: guard })
    }

    /// A datagram session to `target` on node `node`: one stream carrying length-prefixed
    /// datagrams (never a stream per datagram).
    pub async fn open_udp(
        &self,
        node: &str,
        target: SocketAddr,
        service: &str,
    ) -> Result<(DatagramSender, DatagramReceiver), TunnelError> {
        let (_, stream, _, guard) = self.open(node, target, service, TunnelProtocol::Udp).await?;
        Ok(datagram_pair(stream, Some(guard)))
    }

    /// The connected peers, for the admin `/peers` endpoint.
    pub fn peers(&self) -> Vec<PeerStatus> {
        let peers = lock(&self.inner.peers);
        let mut out: Vec<PeerStatus> = peers
            .iter()
            .filter(|(_, e)| !e.conns.is_empty())
            .map(|(peer, e)| {
                let direct = e.conns.values().any(|c| !c.relayed);
                let mut addresses: Vec<String> = e.conns.values().map(|c| c.addr.to_string()).collect();
                addresses.sort();
                addresses.dedup();
                let rtt = e.conns.values().filter(|c| c.relayed != direct).filter_map(|c| c.rtt).min();
                PeerStatus {
                    node: match &e.theirs {
                        Claim::Accepted(n) => Some(n.clone()),
                        _ => None,
                    },
                    peer_id: peer.to_string(),
                    addresses,
                    connection: if direct { ConnectionType::Direct } else { ConnectionType::Relayed },
                    rtt_ms: rtt.map(|d| d.as_secs_f64() * 1000.0),
                    open_streams: e.streams.load(Ordering::Relaxed),
                    trusted: matches!(e.theirs, Claim::Accepted(_)),
                    relay_reserved: e.reserved,
                }
            })
            .collect();
        out.sort_by(|a, b| (&a.node, &a.peer_id).cmp(&(&b.node, &b.peer_id)));
        out
    }

    /// Connects to `peer` (if needed) and waits until it accepted our node name claim.
    async fn ready(&self, node: &str, peer: PeerId, deadline: tokio::time::Instant) -> Result<(), TunnelError> {
        let inner = &self.inner;
        let mut rx = inner.changed.subscribe();
        let mut dials = 0;
        let timed_out = || TunnelError::Timeout { node: node.to_owned(), timeout: inner.connect_timeout };
        loop {
            rx.borrow_and_update();
            if inner.stop.is_cancelled() {
                return Err(TunnelError::Stopped);
            }
            let connected = inner.control.is_connected(&peer);
            if connected {
                let ours = lock(&inner.peers).get(&peer).map(|e| e.ours.clone());
                match ours {
                    Some(Claim::Accepted(_)) => return Ok(()),
                    Some(Claim::Refused(reason)) => {
                        return Err(TunnelError::Untrusted { node: node.to_owned(), peer: peer.to_string(), reason });
                    }
                    _ => {}
                }
            } else {
                if dials >= 3 {
                    return Err(TunnelError::PeerUnreachable {
                        node: node.to_owned(),
                        peer: peer.to_string(),
                        reason: "connection lost repeatedly".into(),
                    });
                }
                dials += 1;
                let (tx, reply) = oneshot::channel();
                inner.commands.send(Command::Connect { peer, reply: tx }).map_err(|_| TunnelError::Stopped)?;
                match tokio::time::timeout_at(deadline, reply).await {
                    Err(_) => return Err(timed_out()),
                    Ok(Err(_)) => return Err(TunnelError::Stopped),
                    Ok(Ok(Err(reason))) => {
                        return Err(TunnelError::PeerUnreachable {
                            node: node.to_owned(),
                            peer: peer.to_string(),
                            reason,
                        });
                    }
                    Ok(Ok(Ok(()))) => continue,
                }
            }
            if tokio::time::timeout_at(deadline, rx.changed()).await.is_err() {
                return Err(timed_out());
            }
        }
    }

    async fn open(
        &self,
        node: &str,
        target: SocketAddr,
        service: &str,
        protocol: TunnelProtocol,
    ) -> Result<(PeerId, Compat<Stream>, bool, StreamGuard), TunnelError> {
        let inner = &self.inner;
        if inner.stop.is_cancelled() {
            return Err(TunnelError::Stopped);
        }
        let peer = inner.directory.peer_of(node).ok_or_else(|| TunnelError::UnknownNode(node.to_owned()))?;
        if peer == inner.local_peer {
            return Err(TunnelError::Config(format!("node {node:?} is this node: connect to its endpoints directly")));
        }
        let timeout_err = || TunnelError::Timeout { node: node.to_owned(), timeout: inner.connect_timeout };
        let protocol_err = |message: String| TunnelError::Protocol { node: node.to_owned(), message };
        let deadline = tokio::time::Instant::now() + inner.connect_timeout;
        self.ready(node, peer, deadline).await?;
        let proto = match protocol {
            TunnelProtocol::Tcp => TCP,
            TunnelProtocol::Udp => UDP,
        };
        let opening = loop {
            let freed = inner.control.slot_freed();
            let notified = freed.notified();
            match inner.control.open(peer, proto.clone()) {
                Ok(o) => break o,
                Err(OpenError::NotConnected) => {
                    // Lost the connection since `ready`: try once more.
                    self.ready(node, peer, deadline).await?;
                }
                Err(OpenError::Full) => {
                    if tokio::time::timeout_at(deadline, notified).await.is_err() {
                        return Err(TunnelError::PeerUnreachable {
                            node: node.to_owned(),
                            peer: peer.to_string(),
                            reason: format!("{} streams already open on every connection", inner.max_streams),
                        });
                    }
                }
            }
        };
        let relayed = opening.relayed;
        let stream = match tokio::time::timeout_at(deadline, opening.rx).await {
            Err(_) => return Err(timeout_err()),
            Ok(Err(_)) => {
                return Err(TunnelError::PeerUnreachable {
                    node: node.to_owned(),
                    peer: peer.to_string(),
                    reason: "connection closed".into(),
                });
            }
            Ok(Ok(Err(e))) if e.kind() == io::ErrorKind::Unsupported => {
                return Err(TunnelError::Untrusted {
                    node: node.to_owned(),
                    peer: peer.to_string(),
                    reason: e.to_string(),
                });
            }
            Ok(Ok(Err(e))) => return Err(protocol_err(format!("cannot open a stream: {e}"))),
            Ok(Ok(Ok(s))) => s,
        };
        let guard = StreamGuard::new(inner.stream_counter(peer), opening.slot);
        let mut stream = stream.compat();
        let header = wire::encode_header(&Header { protocol, target, service: service.to_owned() });
        // The remote dials the endpoint within its connect timeout: allow for that and a bit.
        let reply_deadline = tokio::time::Instant::now() + inner.connect_timeout + Duration::from_secs(5);
        let exchange = async {
            stream.write_all(&header).await?;
            stream.flush().await?;
            stream.read_u8().await
        };
        let reply = match tokio::time::timeout_at(reply_deadline, exchange).await {
            Err(_) => return Err(timeout_err()),
            Ok(Err(e)) if e.kind() == io::ErrorKind::UnexpectedEof => {
                // Closed without a reply: the remote does not accept proxy streams from us.
                return Err(TunnelError::Untrusted {
                    node: node.to_owned(),
                    peer: peer.to_string(),
                    reason: "the remote agent closed the stream without a reply".into(),
                });
            }
            Ok(Err(e)) => return Err(protocol_err(format!("no reply: {e}"))),
            Ok(Ok(r)) => r,
        };
        match Reply::from_u8(reply) {
            Some(Reply::Ok) => Ok((peer, stream, relayed, guard)),
            Some(Reply::Refused) => Err(TunnelError::Refused { node: node.to_owned(), target }),
            Some(Reply::Unreachable) | Some(Reply::Error) => {
                Err(TunnelError::Unreachable { node: node.to_owned(), target })
            }
            Some(Reply::NotServed) => Err(TunnelError::NotServed { node: node.to_owned(), target }),
            Some(Reply::BadRequest) => Err(protocol_err("the remote agent rejected the header".into())),
            None => Err(protocol_err(format!("unknown reply {reply}"))),
        }
    }
}

/// Sends our hello on a new connection and records the peer's verdict.
pub(crate) fn spawn_hello(inner: Arc<Inner>, peer: PeerId, conn: ConnectionId) {
    tokio::spawn(async move {
        let keep_open = lock(&inner.keep_alive).contains(&peer);
        let result: io::Result<(HelloStatus, Compat<Stream>)> = async {
            let rx = inner
                .control
                .open_on(conn, HELLO)
                .ok_or_else(|| io::Error::new(io::ErrorKind::NotConnected, "connection closed"))?;
            let stream = timeout(HEADER_TIMEOUT, rx)
                .await
                .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "opening the hello stream timed out"))?
                .map_err(|_| io::Error::new(io::ErrorKind::NotConnected, "connection closed"))??;
            let mut s = stream.compat();
            let hello = Hello {
                node: inner.node_name.clone(),
                agent: format!("edgemesh/{}", env!("CARGO_PKG_VERSION")),
                keep_open,
            };
            let exchange = async {
                s.write_all(&wire::encode_hello(&hello)).await?;
                s.flush().await?;
                s.read_u8().await
            };
            let status = timeout(HEADER_TIMEOUT, exchange)
                .await
                .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no hello reply"))??;
            let status = HelloStatus::from_u8(status)
                .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "unknown hello reply"))?;
            Ok((status, s))
        }
        .await;
        let mut stream = match result {
            Ok((HelloStatus::Accepted, s)) => {
                tracing::debug!(%peer, "the peer accepted our node name");
                inner.set_ours(peer, Claim::Accepted(String::new()), true);
                s
            }
            Ok((status, s)) => {
                // Our relays do not know our name, and say so: expected.
                if !inner.relay_peers.contains(&peer) && inner.should_warn(peer, "refused-us") {
                    tracing::warn!(%peer, node = %inner.node_name, reason = status.describe(), "the peer refuses this node's name claim");
                }
                inner.set_ours(peer, Claim::Refused(status.describe().into()), true);
                s
            }
            Err(e) if e.kind() == io::ErrorKind::NotConnected => return,
            Err(e) => {
                tracing::debug!(%peer, error = %e, "hello failed");
                let reason = if e.kind() == io::ErrorKind::Unsupported {
                    "the peer does not speak the edgemesh hello".to_owned()
                } else {
                    format!("hello failed: {e}")
                };
                if inner.control.connections(&peer).iter().any(|(c, _)| *c == conn) {
                    inner.set_ours(peer, Claim::Refused(reason), false);
                }
                return;
            }
        };
        if keep_open {
            // Hold the stream (and so the connection) until the peer or the connection ends it.
            let mut one = [0u8; 1];
            tokio::select! {
                _ = stream.read(&mut one) => {}
                _ = inner.stop.cancelled() => {}
            }
        } else {
            let _ = stream.shutdown().await;
        }
    });
}

/// Hands each inbound stream to its own task.
async fn dispatch(inner: Arc<Inner>, mut inbound: mpsc::UnboundedReceiver<Inbound>) {
    loop {
        let s = tokio::select! {
            _ = inner.stop.cancelled() => return,
            s = inbound.recv() => match s { Some(s) => s, None => return },
        };
        let inner = inner.clone();
        let protocol: StreamProtocol = s.protocol.clone();
        if protocol == HELLO {
            tokio::spawn(serve_hello(inner, s));
        } else if protocol == TCP {
            tokio::spawn(serve_tcp(inner, s));
        } else if protocol == UDP {
            tokio::spawn(serve_udp(inner, s));
        }
    }
}

async fn serve_hello(inner: Arc<Inner>, s: Inbound) {
    let peer = s.peer;
    let mut stream = s.stream.compat();
    let (status, claimed) = match timeout(HEADER_TIMEOUT, wire::read_hello(&mut stream)).await {
        Ok(Ok(hello)) => {
            // Just started: give the directory a moment to read its nodes
            // (within the peer's wait for our reply).
            let ready_by = tokio::time::Instant::now() + HEADER_TIMEOUT / 2;
            while !inner.directory.is_ready() && tokio::time::Instant::now() < ready_by {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            let status = match inner.directory.peer_of(&hello.node) {
                Some(p) if p == peer => HelloStatus::Accepted,
                Some(_) => HelloStatus::PeerMismatch,
                None => HelloStatus::UnknownNode,
            };
            (status, Some(hello))
        }
        Ok(Err(e)) => {
            tracing::debug!(%peer, error = %e, "malformed hello");
            (HelloStatus::Malformed, None)
        }
        Err(_) => (HelloStatus::Malformed, None),
    };
    // A relay keeps serving peers it does not know (they only use the relay), and we keep
    // our relays; a peer claiming another node's name is always cut off.
    let keep = status == HelloStatus::Accepted
        || (status == HelloStatus::UnknownNode && (inner.relay_server || inner.relay_peers.contains(&peer)));
    let hold = keep && claimed.as_ref().is_some_and(|h| h.keep_open);
    let _ = timeout(HEADER_TIMEOUT, async {
        stream.write_u8(status as u8).await?;
        stream.flush().await?;
        if !hold {
            stream.shutdown().await?;
        }
        Ok::<_, io::Error>(())
    })
    .await;
    let node = claimed.as_ref().map(|h| h.node.clone()).unwrap_or_default();
    if status == HelloStatus::Accepted {
        let agent = claimed.as_ref().map(|h| h.agent.clone()).unwrap_or_default();
        let first = lock(&inner.peers).get(&peer).map(|e| e.theirs != Claim::Accepted(node.clone())).unwrap_or(true);
        if first {
            tracing::info!(%peer, node = %node, agent = %agent, "peer identified");
        }
        inner.set_theirs(peer, Claim::Accepted(node.clone()));
    } else {
        inner.set_theirs(peer, Claim::Refused(status.describe().into()));
        if keep {
            tracing::debug!(%peer, claimed = %node, "peer not in the directory (kept: relay)");
        }
    }
    if hold {
        // The opener keeps this connection (bootstrap peer, relay): hold the stream open so
        // that neither side lets the connection idle out.
        let mut buf = [0u8; 64];
        loop {
            tokio::select! {
                r = stream.read(&mut buf) => if !matches!(r, Ok(n) if n > 0) { break },
                _ = inner.stop.cancelled() => break,
            }
        }
        return;
    }
    if keep {
        return;
    }
    if inner.should_warn(peer, "refused") {
        let why = match status {
            HelloStatus::PeerMismatch => "the node name is bound to another peer ID",
            HelloStatus::UnknownNode => "no peer ID is bound to the node name",
            _ => "malformed hello",
        };
        tracing::warn!(%peer, claimed_node = %node, reason = why, "refusing peer: closing its connections");
    }
    // Let the reply reach the peer before closing.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let _ = inner.commands.send(Command::Disconnect { peer });
}

/// Reads and checks a proxy stream's header; replies and returns None when refused.
async fn accept_header(
    inner: &Inner,
    peer: PeerId,
    stream: &mut Compat<Stream>,
    protocol: TunnelProtocol,
) -> Option<(String, Header)> {
    let Some(node) = inner.authorize(peer).await else {
        if inner.should_warn(peer, "untrusted-stream") {
            tracing::warn!(%peer, "proxy stream from a peer without an accepted node name: dropped");
        }
        return None;
    };
    let header = match timeout(HEADER_TIMEOUT, wire::read_header(stream)).await {
        Ok(Ok(h)) if h.protocol == protocol => h,
        other => {
            tracing::debug!(%peer, node = %node, result = ?other.map(|r| r.map(|_| "wrong protocol")), "bad proxy header");
            let _ = timeout(HEADER_TIMEOUT, stream.write_u8(Reply::BadRequest as u8)).await;
            return None;
        }
    };
    if !inner.directory.serves(header.target, protocol) {
        if inner.should_warn(peer, "not-served") {
            tracing::warn!(%peer, node = %node, target = %header.target, service = %header.service, ?protocol,
                "peer asked for an endpoint this node does not serve: refused");
        }
        let _ = timeout(HEADER_TIMEOUT, async {
            stream.write_u8(Reply::NotServed as u8).await?;
            stream.flush().await
        })
        .await;
        return None;
    }
    Some((node, header))
}

fn reply_for(e: &io::Error) -> Reply {
    match e.kind() {
        io::ErrorKind::ConnectionRefused | io::ErrorKind::ConnectionReset => Reply::Refused,
        io::ErrorKind::TimedOut
        | io::ErrorKind::HostUnreachable
        | io::ErrorKind::NetworkUnreachable
        | io::ErrorKind::AddrNotAvailable
        | io::ErrorKind::NetworkDown => Reply::Unreachable,
        _ => Reply::Error,
    }
}

async fn serve_tcp(inner: Arc<Inner>, s: Inbound) {
    let peer = s.peer;
    let mut stream = s.stream.compat();
    let Some((node, header)) = accept_header(&inner, peer, &mut stream, TunnelProtocol::Tcp).await else { return };
    let target = header.target;
    let tcp = match timeout(inner.connect_timeout, TcpStream::connect(target)).await {
        Ok(Ok(t)) => t,
        Ok(Err(e)) => {
            tracing::debug!(%peer, node = %node, %target, service = %header.service, error = %e, "endpoint connect failed");
            let _ = stream.write_u8(reply_for(&e) as u8).await;
            let _ = stream.flush().await;
            return;
        }
        Err(_) => {
            tracing::debug!(%peer, node = %node, %target, service = %header.service, "endpoint connect timed out");
            let _ = stream.write_u8(Reply::Unreachable as u8).await;
            let _ = stream.flush().await;
            return;
        }
    };
    let _ = tcp.set_nodelay(true);
    let _guard = StreamGuard::new(inner.stream_counter(peer), None);
    if stream.write_u8(Reply::Ok as u8).await.is_err() || stream.flush().await.is_err() {
        return;
    }
    let mut tcp = tcp;
    let result = tokio::select! {
        r = tokio::io::copy_bidirectional_with_sizes(&mut stream, &mut tcp, COPY_BUFFER, COPY_BUFFER) => r,
        _ = inner.stop.cancelled() => return,
    };
    match result {
        Ok((to_endpoint, from_endpoint)) => {
            tracing::trace!(%peer, %target, to_endpoint, from_endpoint, "proxied connection closed")
        }
        Err(e) => tracing::debug!(%peer, %target, error = %e, "proxied connection ended with an error"),
    }
}

async fn serve_udp(inner: Arc<Inner>, s: Inbound) {
    let peer = s.peer;
    let mut stream = s.stream.compat();
    let Some((node, header)) = accept_header(&inner, peer, &mut stream, TunnelProtocol::Udp).await else { return };
    let target = header.target;
    let bind: SocketAddr =
        if target.is_ipv4() { "0.0.0.0:0".parse().expect("valid") } else { "[::]:0".parse().expect("valid") };
    let socket = match UdpSocket::bind(bind).await {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(%peer, error = %e, "cannot open a UDP socket");
            let _ = stream.write_u8(Reply::Error as u8).await;
            return;
        }
    };
    if let Err(e) = socket.connect(target).await {
        tracing::debug!(%peer, node = %node, %target, error = %e, "UDP connect failed");
        let _ = stream.write_u8(reply_for(&e) as u8).await;
        return;
    }
    if stream.write_u8(Reply::Ok as u8).await.is_err() || stream.flush().await.is_err() {
        return;
    }
    let _guard = StreamGuard::new(inner.stream_counter(peer), None);
    let (mut tx, mut rx) = datagram_pair(stream, None);
    let mut from_stream = vec![0u8; MAX_DATAGRAM];
    let mut from_socket = vec![0u8; MAX_DATAGRAM];
    let idle = tokio::time::sleep(UDP_IDLE_TIMEOUT);
    tokio::pin!(idle);
    loop {
        tokio::select! {
            r = rx.recv(&mut from_stream) => match r {
                Ok(n) => {
                    // Loss is UDP's nature: a failed send (e.g. ICMP port unreachable) is not fatal.
                    if let Err(e) = socket.send(&from_stream[..n]).await {
                        tracing::trace!(%target, error = %e, "UDP send failed");
                    }
                }
                Err(e) => {
                    if e.kind() != io::ErrorKind::UnexpectedEof {
                        tracing::debug!(%peer, %target, error = %e, "UDP session stream failed");
                    }
                    break;
                }
            },
            r = socket.recv(&mut from_socket) => match r {
                Ok(n) => {
                    if let Err(e) = tx.send(&from_socket[..n]).await {
                        tracing::debug!(%peer, %target, error = %e, "UDP session stream failed");
                        break;
                    }
                }
                Err(e) => tracing::trace!(%target, error = %e, "UDP recv failed"),
            },
            _ = &mut idle => {
                tracing::debug!(%peer, %target, "UDP session idle: closed");
                break;
            }
            _ = inner.stop.cancelled() => break,
        }
        idle.as_mut().reset(tokio::time::Instant::now() + UDP_IDLE_TIMEOUT);
    }
    let _ = tx.close().await;
}

/// A proxied TCP connection through the tunnel.
///
/// `shutdown()` half-closes: the remote agent shuts down the write side of its connection to
/// the endpoint, and this stream can keep reading until the endpoint closes its side.
pub struct TunnelStream {
    io: Compat<Stream>,
    peer: PeerId,
    relayed: bool,
    _guard: StreamGuard,
}

impl TunnelStream {
    /// The peer (agent) at the other end.
    pub fn peer_id(&self) -> PeerId {
        self.peer
    }

    /// Whether this stream runs over a relayed connection (no direct one existed when it was
    /// opened).
    pub fn is_relayed(&self) -> bool {
        self.relayed
    }
}

impl std::fmt::Debug for TunnelStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TunnelStream").field("peer", &self.peer).field("relayed", &self.relayed).finish_non_exhaustive()
    }
}

impl AsyncRead for TunnelStream {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for TunnelStream {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

fn datagram_pair(stream: Compat<Stream>, guard: Option<StreamGuard>) -> (DatagramSender, DatagramReceiver) {
    let guard = guard.map(Arc::new);
    let (r, w) = tokio::io::split(stream);
    (
        DatagramSender { w, pending: Vec::new(), _guard: guard.clone() },
        DatagramReceiver { r, len: [0; 2], len_filled: 0, body: Vec::new(), body_filled: 0, _guard: guard },
    )
}

/// The sending half of a UDP session.
pub struct DatagramSender {
    w: WriteHalf<Compat<Stream>>,
    /// Bytes of a frame not written yet (a cancelled `send` leaves its frame here).
    pending: Vec<u8>,
    _guard: Option<Arc<StreamGuard>>,
}

impl DatagramSender {
    /// Sends one datagram (at most 65,535 bytes). A cancelled call never corrupts the
    /// session: the rest of its frame is written by the next call (or by `close`).
    pub async fn send(&mut self, datagram: &[u8]) -> io::Result<()> {
        if datagram.len() > MAX_DATAGRAM {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "datagram larger than 65535 bytes"));
        }
        if !self.pending.is_empty() {
            self.drain().await?;
        }
        self.pending.reserve(2 + datagram.len());
        self.pending.extend_from_slice(&(datagram.len() as u16).to_be_bytes());
        self.pending.extend_from_slice(datagram);
        self.drain().await
    }

    async fn drain(&mut self) -> io::Result<()> {
        while !self.pending.is_empty() {
            let n = self.w.write(&self.pending).await?;
            if n == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
            self.pending.drain(..n);
        }
        self.w.flush().await
    }

    /// Ends the session in this direction (the remote sees end of stream).
    pub async fn close(&mut self) -> io::Result<()> {
        self.drain().await?;
        self.w.shutdown().await
    }
}

/// The receiving half of a UDP session.
pub struct DatagramReceiver {
    r: ReadHalf<Compat<Stream>>,
    len: [u8; 2],
    len_filled: usize,
    body: Vec<u8>,
    body_filled: usize,
    _guard: Option<Arc<StreamGuard>>,
}

impl DatagramReceiver {
    /// Receives one datagram into `buf` and returns its length; a datagram longer than `buf`
    /// is truncated (like `recv(2)`). `Ok(0)` is an empty datagram, never the end: the end of
    /// the session is an error of kind `UnexpectedEof`. Cancel-safe: a cancelled call loses
    /// no data.
    pub async fn recv(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.len_filled < 2 {
            let n = self.r.read(&mut self.len[self.len_filled..]).await?;
            if n == 0 {
                return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "UDP session closed"));
            }
            self.len_filled += n;
            if self.len_filled == 2 {
                self.body.resize(u16::from_be_bytes(self.len) as usize, 0);
                self.body_filled = 0;
            }
        }
        while self.body_filled < self.body.len() {
            let n = self.r.read(&mut self.body[self.body_filled..]).await?;
            if n == 0 {
                return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "UDP session closed mid-datagram"));
            }
            self.body_filled += n;
        }
        let n = self.body.len().min(buf.len());
        buf[..n].copy_from_slice(&self.body[..n]);
        self.len_filled = 0;
        self.body_filled = 0;
        Ok(n)
    }
}

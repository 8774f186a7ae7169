//! A raw-stream behaviour: opens and accepts the edgemesh stream protocols.
//!
//! Modelled on libp2p-stream (MIT), which this crate does not use because its 0.5.0-alpha:
//! - hands inbound streams over through a channel of capacity one and *drops* streams that
//!   arrive while the previous one has not been taken yet (bursts of connections get reset);
//! - negotiates one outbound stream at a time per connection;
//! - picks a random connection to a peer (we want a direct connection over a relayed one).
//!
//! Here inbound streams go to an unbounded channel straight from the connection task (they are
//! bounded by the stream limit of each connection), any number of outbound streams negotiate
//! concurrently, and `open` picks a connection by [`liveness::preference`]: live direct, then
//! live relayed, then suspect ones, never one being closed. Opening a stream never goes through
//! the swarm task.

use std::{
    collections::{HashMap, HashSet, VecDeque},
    convert::Infallible,
    future::{Ready, ready},
    io,
    sync::{
        Arc, Mutex, MutexGuard,
        atomic::{AtomicUsize, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use futures::channel::oneshot;
use libp2p::{
    Multiaddr, PeerId, Stream, StreamProtocol,
    core::{
        Endpoint, UpgradeInfo,
        multiaddr::Protocol,
        transport::PortUse,
        upgrade::{InboundUpgrade, OutboundUpgrade},
    },
    swarm::{
        ConnectionDenied, ConnectionHandler, ConnectionHandlerEvent, ConnectionId, FromSwarm, NetworkBehaviour,
        NotifyHandler, StreamUpgradeError, SubstreamProtocol, THandler, THandlerInEvent, THandlerOutEvent, ToSwarm,
        behaviour::{ConnectionClosed, ConnectionEstablished},
        handler::{ConnectionEvent, DialUpgradeError, FullyNegotiatedInbound, FullyNegotiatedOutbound},
    },
};
use tokio::sync::{Notify, mpsc};

use crate::liveness::{self, Candidate, ConnectionState, Liveness, LivenessPolicy};

mod health;

pub(crate) const HELLO: StreamProtocol = StreamProtocol::new("/edgemesh/hello/1.0.0");
pub(crate) const TCP: StreamProtocol = StreamProtocol::new("/edgemesh/tcp/1.0.0");
pub(crate) const UDP: StreamProtocol = StreamProtocol::new("/edgemesh/udp/1.0.0");

/// Connections to one peer beyond this many are refused (a relayed one, a direct one after
/// hole punching, simultaneous dials from both sides...).
const MAX_CONNECTIONS_PER_PEER: usize = 8;

/// How long the multistream negotiation of one stream may take.
const NEGOTIATION_TIMEOUT: Duration = Duration::from_secs(30);

/// A negotiated inbound stream.
pub(crate) struct Inbound {
    pub peer: PeerId,
    pub protocol: StreamProtocol,
    pub stream: Stream,
}

pub(crate) type OpenResult = Result<Stream, io::Error>;

struct OpenRequest {
    protocol: StreamProtocol,
    reply: oneshot::Sender<OpenResult>,
}

struct Conn {
    peer: PeerId,
    relayed: bool,
    /// Order of establishment (newer connections are preferred).
    seq: u64,
    /// Confirmed by `FromSwarm::ConnectionEstablished` (a handler may be created for a
    /// connection another behaviour then denies).
    established: bool,
    /// Proxy streams we opened on this connection and that are still alive.
    outbound: Arc<AtomicUsize>,
    requests: mpsc::UnboundedSender<OpenRequest>,
    /// Its pings (the swarm task records them and closes the connection when it is dead).
    liveness: Liveness,
}

impl Conn {
    /// Not closed, not being closed.
    fn usable(&self) -> bool {
        self.established && !self.requests.is_closed()
    }

    fn state(&self, policy: &LivenessPolicy) -> ConnectionState {
        self.liveness.state(tokio::time::Instant::now(), policy)
    }
}

struct Shared {
    conns: HashMap<ConnectionId, Conn>,
    seq: u64,
    /// Proxy streams we open per connection (yamux is sized for this many each way).
    limit: usize,
    policy: LivenessPolicy,
}

fn lock(shared: &Mutex<Shared>) -> MutexGuard<'_, Shared> {
    shared.lock().unwrap_or_else(|e| e.into_inner())
}

pub(crate) fn is_relayed(addr: &Multiaddr) -> bool {
    addr.iter().any(|p| p == Protocol::P2pCircuit)
}

/// The peer an address names (its trailing `/p2p/<peer id>`), if any.
pub(crate) fn peer_of_addr(addr: &Multiaddr) -> Option<PeerId> {
    match addr.iter().last() {
        Some(Protocol::P2p(p)) => Some(p),
        _ => None,
    }
}

/// A proxy stream's place in its connection's budget; freed on drop.
pub(crate) struct Slot {
    count: Arc<AtomicUsize>,
    freed: Arc<Notify>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.count.fetch_sub(1, Ordering::AcqRel);
        self.freed.notify_waiters();
    }
}

pub(crate) enum OpenError {
    NotConnected,
    /// Every connection to the peer carries its limit of streams.
    Full,
}

pub(crate) struct Opening {
    pub rx: oneshot::Receiver<OpenResult>,
    pub relayed: bool,
    pub slot: Option<Slot>,
}

/// Opens streams (cheap to clone).
#[derive(Clone)]
pub(crate) struct Control {
    shared: Arc<Mutex<Shared>>,
    freed: Arc<Notify>,
}

impl Control {
    fn send(
        &self,
        conn: Option<ConnectionId>,
        peer: PeerId,
        protocol: StreamProtocol,
        counted: bool,
    ) -> Result<Opening, OpenError> {
        let shared = lock(&self.shared);
        let mut candidates: Vec<&Conn> = match conn {
            Some(c) => shared.conns.get(&c).into_iter().collect(),
            None => shared.conns.values().filter(|c| c.peer == peer && c.established).collect(),
        };
        candidates.retain(|c| !c.requests.is_closed());
        let order = liveness::preference(
            &candidates
                .iter()
                .map(|c| Candidate { state: c.state(&shared.policy), relayed: c.relayed, seq: c.seq })
                .collect::<Vec<_>>(),
        );
        if order.is_empty() {
            return Err(OpenError::NotConnected);
        }
        let (reply, rx) = oneshot::channel();
        let mut request = OpenRequest { protocol, reply };
        for c in order.into_iter().map(|i| candidates[i]) {
            let slot = if counted {
                if c.outbound.fetch_add(1, Ordering::AcqRel) >= shared.limit {
                    c.outbound.fetch_sub(1, Ordering::AcqRel);
                    continue;
                }
                Some(Slot { count: c.outbound.clone(), freed: self.freed.clone() })
            } else {
                None
            };
            match c.requests.send(request) {
                Ok(()) => return Ok(Opening { rx, relayed: c.relayed, slot }),
                Err(mpsc::error::SendError(r)) => request = r,
            }
        }
        Err(OpenError::Full)
    }

    /// Opens a proxy stream on the preferred connection to `peer` with room for it (see
    /// [`liveness::preference`]).
    pub(crate) fn open(&self, peer: PeerId, protocol: StreamProtocol) -> Result<Opening, OpenError> {
        self.send(None, peer, protocol, true)
    }

    /// Resolves when a proxy stream slot was freed somewhere (create it before checking).
    pub(crate) fn slot_freed(&self) -> Arc<Notify> {
        self.freed.clone()
    }

    /// Opens an uncounted stream (hello) on one given connection.
    pub(crate) fn open_on(
        &self,
        conn: ConnectionId,
        protocol: StreamProtocol,
    ) -> Option<oneshot::Receiver<OpenResult>> {
        self.send(Some(conn), PeerId::random(), protocol, false).ok().map(|o| o.rx)
    }

    /// The live connections to `peer`: (id, relayed).
    pub(crate) fn connections(&self, peer: &PeerId) -> Vec<(ConnectionId, bool)> {
        lock(&self.shared)
            .conns
            .iter()
            .filter(|(_, c)| &c.peer == peer && !c.requests.is_closed())
            .map(|(id, c)| (*id, c.relayed))
            .collect()
    }

    pub(crate) fn is_connected(&self, peer: &PeerId) -> bool {
        lock(&self.shared).conns.values().any(|c| &c.peer == peer && c.established && !c.requests.is_closed())
    }
}

/// The behaviour.
pub(crate) struct Behaviour {
    shared: Arc<Mutex<Shared>>,
    inbound: mpsc::UnboundedSender<Inbound>,
    keep_alive: HashSet<PeerId>,
    events: VecDeque<ToSwarm<Infallible, bool>>,
}

impl Behaviour {
    pub(crate) fn new(limit: usize, policy: LivenessPolicy) -> (Behaviour, Control, mpsc::UnboundedReceiver<Inbound>) {
        let shared = Arc::new(Mutex::new(Shared { conns: HashMap::new(), seq: 0, limit, policy }));
        let (tx, rx) = mpsc::unbounded_channel();
        (
            Behaviour { shared: shared.clone(), inbound: tx, keep_alive: HashSet::new(), events: VecDeque::new() },
            Control { shared, freed: Arc::new(Notify::new()) },
            rx,
        )
    }

    /// Keeps every connection to `peer` open even without streams (bootstrap peers, relays).
    pub(crate) fn set_keep_alive(&mut self, peer: PeerId, keep: bool) {
        let changed = if keep { self.keep_alive.insert(peer) } else { self.keep_alive.remove(&peer) };
        if changed {
            let conns: Vec<ConnectionId> =
                lock(&self.shared).conns.iter().filter(|(_, c)| c.peer == peer).map(|(id, _)| *id).collect();
            for id in conns {
                self.events.push_back(ToSwarm::NotifyHandler {
                    peer_id: peer,
                    handler: NotifyHandler::One(id),
                    event: keep,
                });
            }
        }
    }

    fn handler(&mut self, id: ConnectionId, peer: PeerId, relayed: bool) -> Result<Handler, ConnectionDenied> {
        let (tx, rx) = mpsc::unbounded_channel();
        let mut shared = lock(&self.shared);
        shared.conns.retain(|_, c| !c.requests.is_closed());
        let existing = shared.conns.values().filter(|c| c.peer == peer).count();
        if existing >= MAX_CONNECTIONS_PER_PEER {
            return Err(ConnectionDenied::new(io::Error::other(format!(
                "already {existing} connections to peer {peer}"
            ))));
        }
        shared.seq += 1;
        let seq = shared.seq;
        shared.conns.insert(
            id,
            Conn {
                peer,
                relayed,
                seq,
                established: false,
                outbound: Arc::new(AtomicUsize::new(0)),
                requests: tx,
                liveness: Liveness::new(tokio::time::Instant::now()),
            },
        );
        Ok(Handler { peer, inbound: self.inbound.clone(), requests: rx, keep_alive: self.keep_alive.contains(&peer) })
    }
}

impl NetworkBehaviour for Behaviour {
    type ConnectionHandler = Handler;
    type ToSwarm = Infallible;

    fn handle_established_inbound_connection(
        &mut self,
        id: ConnectionId,
        peer: PeerId,
        local_addr: &Multiaddr,
        remote_addr: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        self.handler(id, peer, is_relayed(local_addr) || is_relayed(remote_addr))
    }

    fn handle_established_outbound_connection(
        &mut self,
        id: ConnectionId,
        peer: PeerId,
        addr: &Multiaddr,
        _: Endpoint,
        _: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        self.handler(id, peer, is_relayed(addr))
    }

    fn on_swarm_event(&mut self, event: FromSwarm) {
        match event {
            FromSwarm::ConnectionEstablished(ConnectionEstablished { connection_id, .. }) => {
                if let Some(c) = lock(&self.shared).conns.get_mut(&connection_id) {
                    c.established = true;
                }
            }
            FromSwarm::ConnectionClosed(ConnectionClosed { connection_id, .. }) => {
                lock(&self.shared).conns.remove(&connection_id);
            }
            _ => {}
        }
    }

    fn on_connection_handler_event(&mut self, _: PeerId, _: ConnectionId, event: THandlerOutEvent<Self>) {
        match event {}
    }

    fn poll(&mut self, _: &mut Context<'_>) -> Poll<ToSwarm<Self::ToSwarm, THandlerInEvent<Self>>> {
        match self.events.pop_front() {
            Some(e) => Poll::Ready(e),
            None => Poll::Pending,
        }
    }
}

pub(crate) struct Handler {
    peer: PeerId,
    inbound: mpsc::UnboundedSender<Inbound>,
    requests: mpsc::UnboundedReceiver<OpenRequest>,
    keep_alive: bool,
}

impl ConnectionHandler for Handler {
    type FromBehaviour = bool;
    type ToBehaviour = Infallible;
    type InboundProtocol = Upgrade;
    type OutboundProtocol = Upgrade;
    type InboundOpenInfo = ();
    type OutboundOpenInfo = oneshot::Sender<OpenResult>;

    fn listen_protocol(&self) -> SubstreamProtocol<Upgrade, ()> {
        SubstreamProtocol::new(Upgrade(vec![HELLO, TCP, UDP]), ()).with_timeout(NEGOTIATION_TIMEOUT)
    }

    fn connection_keep_alive(&self) -> bool {
        self.keep_alive
    }

    fn poll(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<ConnectionHandlerEvent<Upgrade, Self::OutboundOpenInfo, Infallible>> {
        match self.requests.poll_recv(cx) {
            Poll::Ready(Some(req)) => Poll::Ready(ConnectionHandlerEvent::OutboundSubstreamRequest {
                protocol: SubstreamProtocol::new(Upgrade(vec![req.protocol]), req.reply)
                    .with_timeout(NEGOTIATION_TIMEOUT),
            }),
            _ => Poll::Pending,
        }
    }

    fn on_behaviour_event(&mut self, keep_alive: bool) {
        self.keep_alive = keep_alive;
    }

    fn on_connection_event(&mut self, event: ConnectionEvent<Upgrade, Upgrade, (), Self::OutboundOpenInfo>) {
        match event {
            ConnectionEvent::FullyNegotiatedInbound(FullyNegotiatedInbound {
                protocol: (stream, protocol), ..
            }) => {
                let _ = self.inbound.send(Inbound { peer: self.peer, protocol, stream });
            }
            ConnectionEvent::FullyNegotiatedOutbound(FullyNegotiatedOutbound { protocol: (stream, _), info }) => {
                let _ = info.send(Ok(stream));
            }
            ConnectionEvent::DialUpgradeError(DialUpgradeError { info, error }) => {
                let e = match error {
                    StreamUpgradeError::Timeout => {
                        io::Error::new(io::ErrorKind::TimedOut, "stream negotiation timed out")
                    }
                    StreamUpgradeError::NegotiationFailed => {
                        io::Error::new(io::ErrorKind::Unsupported, "the peer does not support the edgemesh protocol")
                    }
                    StreamUpgradeError::Io(e) => e,
                    StreamUpgradeError::Apply(v) => match v {},
                };
                let _ = info.send(Err(e));
            }
            _ => {}
        }
    }
}

/// Negotiates one of a list of protocols and hands the raw stream over.
pub(crate) struct Upgrade(Vec<StreamProtocol>);

impl UpgradeInfo for Upgrade {
    type Info = StreamProtocol;
    type InfoIter = std::vec::IntoIter<StreamProtocol>;

    fn protocol_info(&self) -> Self::InfoIter {
        self.0.clone().into_iter()
    }
}

impl InboundUpgrade<Stream> for Upgrade {
    type Output = (Stream, StreamProtocol);
    type Error = Infallible;
    type Future = Ready<Result<Self::Output, Infallible>>;

    fn upgrade_inbound(self, stream: Stream, info: StreamProtocol) -> Self::Future {
        ready(Ok((stream, info)))
    }
}

impl OutboundUpgrade<Stream> for Upgrade {
    type Output = (Stream, StreamProtocol);
    type Error = Infallible;
    type Future = Ready<Result<Self::Output, Infallible>>;

    fn upgrade_outbound(self, stream: Stream, info: StreamProtocol) -> Self::Future {
        ready(Ok((stream, info)))
    }
}

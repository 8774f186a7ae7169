//! The tunnel handle: starting the tunnel, opening proxy streams to other nodes, and the
//! peers' status.
//!
//! Layout: [`context`] what the handles and stream tasks work with, [`hello`] the node name
//! exchange on each connection, [`inbound`] serves the proxy streams peers open (and runs the
//! hello on each new connection), [`proxied`] the stream and datagram types handed out. The
//! peers' state is the `peer_table`'s; the swarm task is reached by `messages` only.

mod context;
mod copy;
mod hello;
mod inbound;
mod inbound_limits;
mod proxied;

use std::{collections::HashSet, io, net::SocketAddr, sync::Arc, time::Duration};

use libp2p::{Multiaddr, PeerId, Stream};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    sync::{mpsc, oneshot, watch},
};
use tokio_util::{
    compat::{Compat, FuturesAsyncReadCompatExt},
    sync::CancellationToken,
};

use context::Context;
pub use inbound::UDP_IDLE_TIMEOUT;
pub use proxied::{DatagramReceiver, DatagramSender, MAX_DATAGRAM, TunnelStream};
use proxied::{Metered, datagram_pair};

use crate::{
    Directory, PeerStatus, TunnelConfig, TunnelError, TunnelProtocol,
    config::MAX_STREAMS_PER_CONNECTION,
    identity::{load_or_create_identity, load_psk},
    messages::Command,
    metrics::{Direction, TunnelMetrics},
    muxer::StreamReset,
    peer_table::{Claim, PeerTable, StreamGuard},
    settings::Settings,
    streams::{self, OpenError, TCP, UDP},
    swarm::{self, SwarmParams},
    swarm_task::Task,
    wire::{self, Header, Reply},
};

/// Pause before dialling a peer again after a failed dial (see `Tunnel::ready`).
const REDIAL_PAUSE: Duration = Duration::from_millis(300);

/// The cross-node tunnel (a cheap handle).
#[derive(Clone)]
pub struct Tunnel {
    pub(crate) ctx: Arc<Context>,
    /// The swarm task's listen addresses.
    listen_addrs: watch::Receiver<Vec<Multiaddr>>,
}

impl Tunnel {
    /// Binds the listeners (a taken port is an error here, not later) and spawns the swarm
    /// task; the task stops when `stop` is cancelled. Its metrics are registered nowhere.
    pub async fn start(
        config: TunnelConfig,
        directory: Arc<dyn Directory>,
        stop: CancellationToken,
    ) -> Result<(Tunnel, tokio::task::JoinHandle<()>), TunnelError> {
        Tunnel::start_with_metrics(config, directory, stop, Arc::new(TunnelMetrics::unregistered())).await
    }

    /// [`Tunnel::start`], counting into `metrics` (registered in the agent's registry).
    pub async fn start_with_metrics(
        config: TunnelConfig,
        directory: Arc<dyn Directory>,
        stop: CancellationToken,
        metrics: Arc<TunnelMetrics>,
    ) -> Result<(Tunnel, tokio::task::JoinHandle<()>), TunnelError> {
        if config.node_name.is_empty() || config.node_name.len() > wire::MAX_NODE_NAME {
            return Err(TunnelError::Config(format!(
                "node name {:?} must be 1 to {} bytes",
                config.node_name,
                wire::MAX_NODE_NAME
            )));
        }
        let key_file =
            config.key_file.as_deref().ok_or_else(|| TunnelError::Config("no key file (key_file)".into()))?;
        let key = load_or_create_identity(key_file)?;
        let psk = config.psk_file.as_deref().map(load_psk).transpose()?;
        let quic = psk.is_none() && cfg!(feature = "quic");
        let default_listen = config.listen.is_empty();
        let listen = if default_listen { swarm::default_listen(quic) } else { config.listen.clone() };
        let no_quic = if !cfg!(feature = "quic") {
            Some("this edgemesh was built without QUIC (the `quic` cargo feature): use TCP addresses")
        } else if psk.is_some() {
            Some(
                "a pre-shared key is configured and its proof runs on TCP and relayed connections only (QUIC's \
                 TLS handshake is libp2p's own): use TCP addresses with --psk-file",
            )
        } else {
            None
        };
        if let Some(why) = no_quic {
            for (what, list) in [("listen", &listen), ("bootstrap", &config.bootstrap), ("relay", &config.relays)] {
                if let Some(a) = list.iter().find(|a| swarm::is_quic(a)) {
                    return Err(TunnelError::Config(format!("{what} address {a} is QUIC, but {why}")));
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
        let liveness = config.liveness().map_err(TunnelError::Config)?;
        let relay_peers: HashSet<PeerId> = config.relays.iter().filter_map(streams::peer_of_addr).collect();
        // Our relays are always allowed: without them the listed peers behind NAT are unreachable.
        let allowed_peers = config.allowed_peer_ids()?.map(|mut peers| {
            peers.extend(relay_peers.iter().copied());
            peers
        });
        let built = swarm::build(SwarmParams {
            key: &key,
            psk,
            quic,
            max_streams,
            relay_server: config.relay_service(),
            mdns: config.mdns,
            upnp: config.upnp,
            tls: config.tls,
            idle_timeout: config.idle_connection_timeout,
            liveness,
            tcp_user_timeout: config.tcp_user_timeout,
            punch_ttl: config.punch_ttl,
            allowed_peers,
        })?;
        let mut swarm = built.swarm;
        let mut listeners = HashSet::new();
        for addr in &listen {
            match swarm.listen_on(addr.clone()) {
                Ok(id) => {
                    listeners.insert(id);
                }
                // The default [::] listeners are optional: IPv6 may be disabled on the host.
                Err(e) if default_listen && swarm::is_ipv6(addr) => {
                    tracing::warn!(%addr, error = %e, "IPv6 tunnel listener unavailable");
                }
                Err(e) => return Err(TunnelError::Listen { addr: addr.clone(), message: e.to_string() }),
            }
        }

        let (commands_tx, commands_rx) = mpsc::unbounded_channel();
        let (connected_tx, connected_rx) = mpsc::unbounded_channel();
        let (listen_tx, listen_addrs) = watch::channel(Vec::new());
        let settings = Arc::new(Settings {
            local_peer: key.public().to_peer_id(),
            node_name: config.node_name.clone(),
            connect_timeout: config.connect_timeout,
            liveness,
            max_streams,
            quic,
            psk: config.psk_file.is_some(),
            relay_peers: relay_peers.clone(),
            relay_server: config.relay_server,
        });
        metrics.set_relays(&relay_peers);
        let peers = Arc::new(PeerTable::new(built.control.clone(), relay_peers, metrics.clone()));
        let ctx = Arc::new(Context {
            settings: settings.clone(),
            peers: peers.clone(),
            control: built.control,
            directory,
            inbound: inbound_limits::InboundStreams::new(
                config.max_inbound_streams_per_peer,
                config.max_inbound_streams,
            ),
            commands: commands_tx,
            stop: stop.clone(),
        });
        let mut task = Task::new(
            settings,
            peers,
            ctx.control.clone(),
            swarm,
            commands_rx,
            connected_tx,
            listen_tx,
            &config.relays,
            &config.bootstrap,
            metrics,
            stop,
        );
        // Wait (briefly) until every listener reported its addresses, so that `listen_addrs`
        // is complete when `start` returns.
        if let Err(reason) = task.await_listeners(listeners, Duration::from_secs(3)).await {
            return Err(TunnelError::Listen {
                addr: listen.first().cloned().unwrap_or_else(Multiaddr::empty),
                message: format!("listener closed: {reason}"),
            });
        }
        tracing::info!(peer_id = %ctx.settings.local_peer, node = %ctx.settings.node_name, "tunnel started");

        tokio::spawn(inbound::dispatch(ctx.clone(), built.inbound, connected_rx));
        let handle = tokio::spawn(task.run());
        Ok((Tunnel { ctx, listen_addrs }, handle))
    }

    /// This node's peer ID.
    pub fn peer_id(&self) -> PeerId {
        self.ctx.settings.local_peer
    }

    /// The addresses the tunnel listens on (wildcards expanded per interface).
    pub fn listen_addrs(&self) -> Vec<Multiaddr> {
        self.listen_addrs.borrow().clone()
    }

    /// A byte stream to `target` on node `node`, through the agent on that node. Resolves after
    /// the remote agent's reply: Ok only when the remote connected to the endpoint.
    pub async fn open_tcp(&self, node: &str, target: SocketAddr, service: &str) -> Result<TunnelStream, TunnelError> {
        let (peer, stream, relayed, opened) =
            self.open(node, Target::Endpoint(target), service, TunnelProtocol::Tcp).await?;
        Ok(TunnelStream::new(stream, peer, relayed, opened))
    }

    /// A byte stream to TCP port `port` of node `node`'s own host (its loopback), for the
    /// SOCKS5 entry; that node's agent connects only if it allows the port
    /// ([`crate::Directory::allows_host_port`]), and answers [`TunnelError::NotServed`]
    /// otherwise. An agent from before host streams answers [`TunnelError::Protocol`].
    pub async fn open_host(&self, node: &str, port: u16, purpose: &str) -> Result<TunnelStream, TunnelError> {
        let target = SocketAddr::from((std::net::Ipv4Addr::LOCALHOST, port));
        let (peer, stream, relayed, opened) =
            self.open(node, Target::Host(target), purpose, TunnelProtocol::Tcp).await?;
        Ok(TunnelStream::new(stream, peer, relayed, opened))
    }

    /// A datagram session to `target` on node `node`: one stream carrying length-prefixed
    /// datagrams (never a stream per datagram).
    pub async fn open_udp(
        &self,
        node: &str,
        target: SocketAddr,
        service: &str,
    ) -> Result<(DatagramSender, DatagramReceiver), TunnelError> {
        let (_, stream, _, opened) = self.open(node, Target::Endpoint(target), service, TunnelProtocol::Udp).await?;
        Ok(datagram_pair(stream, opened))
    }

    /// The connected peers, for the admin `/peers` endpoint.
    pub fn peers(&self) -> Vec<PeerStatus> {
        self.ctx.peers.statuses()
    }

    /// Connects to `peer` (if needed) and waits until it accepted our node name claim.
    ///
    /// A peer whose connections all missed pings gets a fresh dial (beside them) rather than a
    /// stream on a connection that may be dead; only if that dial fails are they used.
    async fn ready(&self, node: &str, peer: PeerId, deadline: tokio::time::Instant) -> Result<(), TunnelError> {
        let ctx = &self.ctx;
        let mut rx = ctx.peers.subscribe();
        let mut dials = 0;
        let mut suspect_will_do = false;
        let mut last_failure = None;
        let timed_out = || TunnelError::Timeout { node: node.to_owned(), timeout: ctx.settings.connect_timeout };
        // Dials to the peer are labelled with the node it is for.
        ctx.peers.note_node(peer, node);
        loop {
            rx.borrow_and_update();
            if ctx.stop.is_cancelled() {
                return Err(TunnelError::Stopped);
            }
            let connected = ctx.control.is_alive(&peer) || (suspect_will_do && ctx.control.is_connected(&peer));
            if connected {
                match ctx.peers.our_claim(peer) {
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
                        reason: last_failure.take().unwrap_or_else(|| "connection lost repeatedly".into()),
                    });
                }
                dials += 1;
                let (tx, reply) = oneshot::channel();
                ctx.commands.send(Command::Connect { peer, reply: tx }).map_err(|_| TunnelError::Stopped)?;
                match tokio::time::timeout_at(deadline, reply).await {
                    Err(_) => return Err(timed_out()),
                    Ok(Err(_)) => return Err(TunnelError::Stopped),
                    Ok(Ok(Err(_))) if ctx.control.is_connected(&peer) => suspect_will_do = true,
                    // A dial can fail for a moment (the relay connection it needed was being
                    // replaced, the relay restarts): dial again, a little later, within the
                    // deadline.
                    Ok(Ok(Err(reason))) => {
                        last_failure = Some(reason);
                        tokio::time::sleep_until(deadline.min(tokio::time::Instant::now() + REDIAL_PAUSE)).await;
                        continue;
                    }
                    Ok(Ok(Ok(()))) => continue,
                }
            }
            if tokio::time::timeout_at(deadline, rx.changed()).await.is_err() {
                return Err(timed_out());
            }
        }
    }

    /// Opens a proxy stream to `node` and exchanges its header. A stream whose connection was
    /// lost before the reply (nothing of the client's was sent yet) is opened again on the
    /// remaining path, within the same deadline.
    async fn open(
        &self,
        node: &str,
        target: Target,
        service: &str,
        protocol: TunnelProtocol,
    ) -> Result<Opened, TunnelError> {
        let ctx = &self.ctx;
        if ctx.stop.is_cancelled() {
            return Err(TunnelError::Stopped);
        }
        let peer = ctx.directory.peer_of(node).ok_or_else(|| TunnelError::UnknownNode(node.to_owned()))?;
        if peer == ctx.settings.local_peer {
            return Err(TunnelError::Config(format!("node {node:?} is this node: connect to its endpoints directly")));
        }
        let deadline = tokio::time::Instant::now() + ctx.settings.connect_timeout;
        let mut attempts = 0;
        loop {
            attempts += 1;
            match self.open_once(node, peer, target, service, protocol, deadline).await {
                Err(Failed::Lost(message)) if attempts < 3 && tokio::time::Instant::now() < deadline => {
                    tracing::debug!(%node, %peer, %message, "tunnel connection lost while opening a stream: again");
                }
                Err(Failed::Lost(reason)) => {
                    return Err(TunnelError::PeerUnreachable { node: node.to_owned(), peer: peer.to_string(), reason });
                }
                Err(Failed::Error(e)) => return Err(e),
                Ok(opened) => return Ok(opened),
            }
        }
    }

    /// One [`Tunnel::open`] attempt; `Err(Lost)` when the connection carrying the stream was
    /// lost before the reply.
    async fn open_once(
        &self,
        node: &str,
        peer: PeerId,
        target: Target,
        service: &str,
        protocol: TunnelProtocol,
        deadline: tokio::time::Instant,
    ) -> Result<Opened, Failed> {
        let ctx = &self.ctx;
        let (to_host, target) = match target {
            Target::Endpoint(target) => (false, target),
            Target::Host(target) => (true, target),
        };
        let timeout_err = || TunnelError::Timeout { node: node.to_owned(), timeout: ctx.settings.connect_timeout };
        let protocol_err = |message: String| TunnelError::Protocol { node: node.to_owned(), message };
        self.ready(node, peer, deadline).await?;
        let proto = match protocol {
            TunnelProtocol::Tcp => TCP,
            TunnelProtocol::Udp => UDP,
        };
        let opening = loop {
            let freed = ctx.control.slot_freed();
            let notified = freed.notified();
            match ctx.control.open(peer, proto.clone()) {
                Ok(o) => break o,
                Err(OpenError::NotConnected) => {
                    // Lost the connection since `ready`: try once more.
                    self.ready(node, peer, deadline).await?;
                }
                Err(OpenError::Full) => {
                    if tokio::time::timeout_at(deadline, notified).await.is_err() {
                        return Err(Failed::Error(TunnelError::PeerUnreachable {
                            node: node.to_owned(),
                            peer: peer.to_string(),
                            reason: format!("{} streams already open on every connection", ctx.settings.max_streams),
                        }));
                    }
                }
            }
        };
        let relayed = opening.relayed;
        let stream = match tokio::time::timeout_at(deadline, opening.rx).await {
            Err(_) => return Err(Failed::Error(timeout_err())),
            Ok(Err(_)) => return Err(Failed::Lost("connection closed".into())),
            Ok(Ok(Err(e))) if e.kind() == io::ErrorKind::Unsupported => {
                return Err(Failed::Error(TunnelError::Untrusted {
                    node: node.to_owned(),
                    peer: peer.to_string(),
                    reason: e.to_string(),
                }));
            }
            Ok(Ok(Err(e))) => return Err(Failed::Error(protocol_err(format!("cannot open a stream: {e}")))),
            Ok(Ok(Ok(s))) => s,
        };
        let streams = ctx.peers.streams(peer, node);
        let guard = StreamGuard::new(&streams, Direction::Outbound, opening.slot);
        let opened = Metered::new(guard, &streams.meters);
        let mut stream = stream.compat();
        let header = wire::encode_header(&Header { protocol, target, to_host, service: service.to_owned() });
        // The remote dials the endpoint within its connect timeout: allow for that and a bit.
        let reply_deadline = tokio::time::Instant::now() + ctx.settings.connect_timeout + Duration::from_secs(5);
        let exchange = async {
            stream.write_all(&header).await?;
            stream.flush().await?;
            stream.read_u8().await
        };
        let reply = match tokio::time::timeout_at(reply_deadline, exchange).await {
            Err(_) => return Err(Failed::Error(timeout_err())),
            Ok(Err(e)) if e.kind() == io::ErrorKind::UnexpectedEof => {
                // Closed without a reply: the remote does not accept proxy streams from us.
                return Err(Failed::Error(TunnelError::Untrusted {
                    node: node.to_owned(),
                    peer: peer.to_string(),
                    reason: "the remote agent closed the stream without a reply".into(),
                }));
            }
            Ok(Err(e)) if connection_lost(&e) => return Err(Failed::Lost(format!("no reply: {e}"))),
            Ok(Err(e)) if e.kind() == io::ErrorKind::ConnectionReset => {
                // Reset without a reply: the remote does not accept proxy streams from us.
                return Err(Failed::Error(TunnelError::Untrusted {
                    node: node.to_owned(),
                    peer: peer.to_string(),
                    reason: "the remote agent reset the stream without a reply".into(),
                }));
            }
            Ok(Err(e)) => return Err(Failed::Error(protocol_err(format!("no reply: {e}")))),
            Ok(Ok(r)) => r,
        };
        Ok(match Reply::from_u8(reply) {
            Some(Reply::Ok) => Ok((peer, stream, relayed, opened)),
            Some(Reply::Refused) => Err(TunnelError::Refused { node: node.to_owned(), target }),
            Some(Reply::Unreachable) | Some(Reply::Error) => {
                Err(TunnelError::Unreachable { node: node.to_owned(), target })
            }
            Some(Reply::NotServed) => Err(TunnelError::NotServed { node: node.to_owned(), target }),
            Some(Reply::Busy) => Err(TunnelError::Busy { node: node.to_owned() }),
            Some(Reply::BadRequest) if to_host => Err(protocol_err(
                "the remote agent rejected the request for a port of its host (an edgemesh without host streams?)"
                    .into(),
            )),
            Some(Reply::BadRequest) => Err(protocol_err("the remote agent rejected the header".into())),
            None => Err(protocol_err(format!("unknown reply {reply}"))),
        }?)
    }
}

/// Whether a tunnel stream's error says its connection was lost (yamux: see `muxer`; QUIC:
/// `NotConnected`), rather than that the peer reset the stream.
fn connection_lost(e: &io::Error) -> bool {
    StreamReset::of(e) == Some(StreamReset::ConnectionLost) || e.kind() == io::ErrorKind::NotConnected
}

/// What a proxy stream reaches on the remote node.
#[derive(Clone, Copy)]
enum Target {
    /// An endpoint the remote node serves.
    Endpoint(SocketAddr),
    /// A port of the remote node's own host (its loopback address and the port).
    Host(SocketAddr),
}

/// A stream to a peer, header exchanged: (peer, stream, relayed, what counts it).
type Opened = (PeerId, Compat<Stream>, bool, Metered);

/// Why a [`Tunnel::open`] attempt failed.
enum Failed {
    /// The connection carrying the stream was lost before the reply: try the remaining path.
    Lost(String),
    Error(TunnelError),
}

impl From<TunnelError> for Failed {
    fn from(e: TunnelError) -> Self {
        Failed::Error(e)
    }
}

//! The adapter between the cross-node tunnel (`edgemesh-tunnel`) and the
//! rest of the agent: the [`Directory`] the tunnel asks about nodes, and the
//! proxy's [`Remote`] through which connections and UDP sessions to
//! endpoints on other nodes go (the proxy's datagram pumps run over the
//! tunnel's UDP streams). The proxy itself knows nothing of libp2p.
//!
//! It also gives the SOCKS5 entry other nodes' hosts ([`TunnelHosts`]),
//! and answers other nodes' entries by this node's `socks.allowedPorts`.
//!
//! Node name -> peer ID bindings come from `tunnel.peers` in the config
//! first (the operator's word wins), then from Node objects annotated
//! `edgemesh.io/peer-id` in the current snapshot, so a binding added to or
//! removed from a Node takes effect at once.
//!
//! The tunnel's metrics (`edgemesh_tunnel_*`, `edgemesh_libp2p_*`) go into
//! the agent's registry; a node's series are removed when the node leaves
//! the snapshot.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::str::FromStr;
use std::sync::{Arc, Mutex};

use anyhow::Context;
use edgemesh_core::{Protocol, RegistryHandle, ServiceKey};
use edgemesh_metrics::Registry;
use edgemesh_proxy::{DatagramRecv, DatagramSend, Remote, RemoteDatagrams, RemoteFuture, RemoteStream};
use edgemesh_socks::{HostFuture, HostIo, NodeHosts};
use edgemesh_tunnel::{
    CancellationToken, DatagramReceiver, DatagramSender, Directory, MAX_DATAGRAM, PeerId, Tunnel, TunnelError,
    TunnelMetrics, TunnelProtocol,
};

use crate::config::Config;

/// What the tunnel asks about nodes, answered from the config's allow-list
/// and the current snapshot.
pub struct AgentDirectory {
    allow: HashMap<String, PeerId>,
    snapshots: RegistryHandle,
    /// Node annotations already parsed, keyed by node name with the text they
    /// came from: `peer_of` runs on every tunnelled connection, and decoding a
    /// peer ID is base58 plus a multihash. One entry per node; a changed
    /// annotation is parsed again.
    parsed: Mutex<HashMap<Arc<str>, ParsedPeer>>,
    /// Ports of this host other nodes' SOCKS5 entries may reach
    /// (`socks.allowedPorts`).
    host_ports: Vec<u16>,
}

/// A node's annotation text and the peer ID decoded from it.
type ParsedPeer = (Arc<str>, PeerId);

impl AgentDirectory {
    pub fn new(allow: HashMap<String, PeerId>, snapshots: RegistryHandle) -> Self {
        Self { allow, snapshots, parsed: Mutex::default(), host_ports: Vec::new() }
    }

    /// Lets other nodes reach these ports of this host (`socks.allowedPorts`).
    pub fn with_host_ports(mut self, ports: Vec<u16>) -> Self {
        self.host_ports = ports;
        self
    }
}

impl Directory for AgentDirectory {
    fn peer_of(&self, node: &str) -> Option<PeerId> {
        if let Some(peer) = self.allow.get(node) {
            return Some(*peer);
        }
        let (name, text) = {
            let snapshot = self.snapshots.borrow();
            let entry = snapshot.node(node)?;
            (entry.name.clone(), entry.peer_id.clone()?)
        };
        let mut parsed = self.parsed.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some((from, peer)) = parsed.get(&name)
            && *from == text
        {
            return Some(*peer);
        }
        match PeerId::from_str(&text) {
            Ok(peer) => {
                parsed.insert(name, (text, peer));
                Some(peer)
            }
            Err(_) => {
                tracing::debug!(node, peer_id = %text, "Node annotation edgemesh.io/peer-id is not a peer ID; ignored");
                None
            }
        }
    }

    fn serves(&self, target: SocketAddr, protocol: TunnelProtocol) -> bool {
        let protocol = match protocol {
            TunnelProtocol::Tcp => Protocol::Tcp,
            TunnelProtocol::Udp => Protocol::Udp,
        };
        self.snapshots.borrow().serves_endpoint(target, protocol)
    }

    fn allows_host_port(&self, port: u16) -> bool {
        self.host_ports.contains(&port)
    }

    /// Ready once the registry has the source's first full view (or the
    /// cache's): Node objects, and so their peer IDs, arrive with it.
    fn ready(&self) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        let mut snapshots = self.snapshots.clone();
        Box::pin(async move {
            // An error means the registry is gone (shutting down): nothing to wait for.
            let _ = snapshots.wait_for(|s| s.synced).await;
        })
    }
}

/// The proxy's way to endpoints on other nodes.
pub struct TunnelRemote(pub Tunnel);

/// The proxy classifies failures by `io::ErrorKind`: a refusal is
/// `ConnectionRefused`; everything else keeps the tunnel's message.
fn to_io(error: TunnelError) -> io::Error {
    let kind = match &error {
        TunnelError::Refused { .. } => io::ErrorKind::ConnectionRefused,
        TunnelError::Timeout { .. } => io::ErrorKind::TimedOut,
        e if e.is_node_failure() => io::ErrorKind::NotConnected,
        _ => io::ErrorKind::Other,
    };
    io::Error::new(kind, error)
}

/// Datagrams buffered each way between the proxy and one tunnel session.
const DATAGRAM_QUEUE: usize = 256;

impl Remote for TunnelRemote {
    fn open_tcp(&self, node: &str, target: SocketAddr, service: &ServiceKey) -> RemoteFuture<RemoteStream> {
        let (tunnel, node, service) = (self.0.clone(), node.to_owned(), service.to_string());
        Box::pin(async move {
            let stream = tunnel.open_tcp(&node, target, &service).await.map_err(to_io)?;
            Ok(Box::new(stream) as RemoteStream)
        })
    }

    fn open_udp(&self, node: &str, target: SocketAddr, service: &ServiceKey) -> RemoteFuture<RemoteDatagrams> {
        let (tunnel, node, service) = (self.0.clone(), node.to_owned(), service.to_string());
        Box::pin(async move {
            let (sender, receiver) = tunnel.open_udp(&node, target, &service).await.map_err(to_io)?;
            Ok(RemoteDatagrams::pump(SendHalf(sender), RecvHalf(receiver), MAX_DATAGRAM, DATAGRAM_QUEUE))
        })
    }
}

/// Other nodes' hosts for the SOCKS5 entry: a node is one the directory
/// binds to a peer; its agent decides which ports it lets through.
pub struct TunnelHosts {
    pub tunnel: Tunnel,
    pub directory: Arc<AgentDirectory>,
}

impl NodeHosts for TunnelHosts {
    fn is_node(&self, name: &str) -> bool {
        self.directory.peer_of(name).is_some()
    }

    fn open(&self, node: &str, port: u16) -> HostFuture {
        let (tunnel, node) = (self.tunnel.clone(), node.to_owned());
        Box::pin(async move {
            match tunnel.open_host(&node, port, "socks").await {
                Ok(stream) => Ok(Box::new(stream) as Box<dyn HostIo>),
                Err(e @ TunnelError::NotServed { .. }) => Err(io::Error::new(io::ErrorKind::PermissionDenied, e)),
                Err(e @ TunnelError::Unreachable { .. }) => Err(io::Error::new(io::ErrorKind::HostUnreachable, e)),
                // E.g. an agent from before host streams: a general failure, not an unreachable node.
                Err(e @ TunnelError::Protocol { .. }) => Err(io::Error::other(e)),
                Err(e) => Err(to_io(e)),
            }
        })
    }
}

/// A tunnel UDP stream's halves as the proxy's pumps drive them.
struct SendHalf(DatagramSender);
struct RecvHalf(DatagramReceiver);

impl DatagramSend for SendHalf {
    async fn send(&mut self, datagram: &[u8]) -> io::Result<()> {
        self.0.send(datagram).await
    }

    async fn close(&mut self) -> io::Result<()> {
        self.0.close().await
    }
}

impl DatagramRecv for RecvHalf {
    async fn recv(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.recv(buf).await
    }
}

/// Starts the tunnel with the agent's settings, its metrics registered in
/// `registry` (the agent's `edgemesh_` registry); the returned task ends when
/// `stop` is cancelled.
pub async fn start(
    config: &Config,
    snapshots: RegistryHandle,
    registry: &mut Registry,
    stop: CancellationToken,
) -> anyhow::Result<(Tunnel, tokio::task::JoinHandle<()>, Arc<AgentDirectory>)> {
    let metrics = Arc::new(TunnelMetrics::register(registry, config.metrics.max_nodes));
    let settings = edgemesh_tunnel::TunnelConfig {
        node_name: config.node_name.clone(),
        key_file: Some(config.key_file()),
        ..config.tunnel.clone()
    };
    let allow = settings.allow_list()?;
    let configured: Vec<String> = allow.keys().cloned().collect();
    let directory = Arc::new(AgentDirectory::new(allow, snapshots.clone()).with_host_ports(served_host_ports(config)));
    let (tunnel, task) = Tunnel::start_with_metrics(settings, directory.clone(), stop.clone(), metrics.clone())
        .await
        .context("cannot start the tunnel")?;
    tokio::spawn(forget_departed_nodes(metrics, configured, snapshots, stop));
    Ok((tunnel, task, directory))
}

/// The ports of this node's host that other nodes' SOCKS5 entries may
/// reach: `socks.allowedPorts` only where the operator turned SOCKS on
/// (`socks.enabled`); a node that never asked for it exposes nothing, so
/// the default `[22]` opens no host by itself.
fn served_host_ports(config: &Config) -> Vec<u16> {
    if config.socks.enabled { config.socks.allowed_ports.clone() } else { Vec::new() }
}

/// Removes the tunnel series of nodes gone from the snapshot (and not in
/// `tunnel.peers`), so a fleet's churn does not pile up series or use up
/// `metrics.maxNodes`.
async fn forget_departed_nodes(
    metrics: Arc<TunnelMetrics>,
    configured: Vec<String>,
    mut snapshots: RegistryHandle,
    stop: CancellationToken,
) {
    loop {
        let snapshot = snapshots.borrow_and_update().clone();
        // Before the first full view a node may just not be loaded yet.
        if snapshot.synced {
            metrics.retain_nodes(|node| snapshot.node(node).is_some() || configured.iter().any(|c| c == node));
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            changed = snapshots.changed() => if changed.is_err() { return },
        }
    }
}

#[cfg(test)]
mod tests {
    use std::task::{Context, Poll, Waker};

    use edgemesh_core::build;
    use edgemesh_core::registry::RegistryState;
    use edgemesh_core::snapshot::Snapshot;
    use edgemesh_core::{RegistryConfig, SourceEvent};
    use tokio::sync::watch;

    use super::*;

    #[test]
    fn the_directory_is_ready_with_the_first_full_view() {
        let (publish, snapshots) = watch::channel(Arc::new(Snapshot::default()));
        let directory = AgentDirectory::new(HashMap::new(), snapshots);
        let mut ready = directory.ready();
        let mut cx = Context::from_waker(Waker::noop());
        assert!(ready.as_mut().poll(&mut cx).is_pending(), "not before the source's first full view");
        let mut synced = Snapshot::default();
        synced.synced = true;
        publish.send_replace(Arc::new(synced));
        assert_eq!(ready.as_mut().poll(&mut cx), Poll::Ready(()));
    }

    /// The parsed peer ID is cached per node, and a changed annotation
    /// replaces it rather than the stale one being served.
    #[test]
    fn peer_ids_follow_the_node_annotation() {
        let (first, second) = (PeerId::random(), PeerId::random());
        let mut state = RegistryState::new(&RegistryConfig::default());
        let mut publish_node = |peer: &str| {
            state.apply(SourceEvent::Apply(build::node("node-b").peer_id(peer).object()));
            Arc::new(state.take_generation())
        };
        let (publish, snapshots) = watch::channel(publish_node(&first.to_string()));
        let directory = AgentDirectory::new(HashMap::new(), snapshots);
        assert_eq!(directory.peer_of("node-b"), Some(first));
        assert_eq!(directory.peer_of("node-b"), Some(first), "from the cache");
        assert_eq!(directory.peer_of("node-c"), None);

        publish.send_replace(publish_node(&second.to_string()));
        assert_eq!(directory.peer_of("node-b"), Some(second));
        publish.send_replace(publish_node("not-a-peer-id"));
        assert_eq!(directory.peer_of("node-b"), None, "a bad annotation is ignored, not the old peer served");
    }
}

//! Wires the cross-node tunnel (`edgemesh-tunnel`) into the agent: its
//! settings from the config, the [`Directory`] it asks about nodes, and the
//! proxy's [`Remote`] through which connections to endpoints on other nodes
//! go.
//!
//! Node name -> peer ID bindings come from `tunnel.peers` in the config
//! first (the operator's word wins), then from Node objects annotated
//! `edgemesh.io/peer-id` in the current snapshot, so a binding added to or
//! removed from a Node takes effect at once.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::str::FromStr;
use std::sync::{Arc, Mutex};

use anyhow::Context;
use edgemesh_core::{Protocol, RegistryHandle, ServiceKey};
use edgemesh_proxy::{Remote, RemoteDatagrams, RemoteFuture, RemoteStream};
use edgemesh_tunnel::{
    CancellationToken, Directory, MAX_DATAGRAM, Multiaddr, PeerId, RelayLimits, Tunnel, TunnelConfig, TunnelError,
    TunnelProtocol,
};
use tokio::sync::mpsc;

use crate::config::{Config, TunnelSection};

/// The identity key file: `tunnel.keyFile`, else `<stateDir>/tunnel.key`.
pub fn key_file(config: &Config) -> PathBuf {
    config.tunnel.key_file.clone().unwrap_or_else(|| config.state_dir.join("tunnel.key"))
}

/// The tunnel's settings from the agent's config; bad multiaddrs and peer
/// IDs are reported with their key.
pub fn tunnel_config(config: &Config) -> anyhow::Result<TunnelConfig> {
    let t = &config.tunnel;
    let mut c = TunnelConfig::new(config.node_name.clone(), key_file(config));
    c.psk_file = t.psk_file.clone();
    c.listen = multiaddrs("tunnel.listen", &t.listen)?;
    c.bootstrap = multiaddrs("tunnel.bootstrap", &t.bootstrap)?;
    c.relays = multiaddrs("tunnel.relays", &t.relays)?;
    c.relay_server = t.relay_server.then(|| RelayLimits::from(&t.relay_limits));
    c.mdns = t.mdns;
    c.upnp = t.upnp;
    c.max_streams_per_connection = t.max_streams_per_connection;
    c.connect_timeout = t.connect_timeout;
    c.idle_connection_timeout = t.idle_connection_timeout;
    c.punch_ttl = t.punch_ttl;
    Ok(c)
}

fn multiaddrs(key: &str, texts: &[String]) -> anyhow::Result<Vec<Multiaddr>> {
    texts
        .iter()
        .map(|t| Multiaddr::from_str(t.trim()).with_context(|| format!("{key}: {t:?} is not a multiaddr")))
        .collect()
}

/// `tunnel.peers` parsed; a bad peer ID names its node.
pub fn allow_list(section: &TunnelSection) -> anyhow::Result<HashMap<String, PeerId>> {
    section
        .peers
        .iter()
        .map(|(node, peer)| {
            let id = PeerId::from_str(peer.trim())
                .with_context(|| format!("tunnel.peers.{node}: {peer:?} is not a libp2p peer ID"))?;
            Ok((node.clone(), id))
        })
        .collect()
}

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
}

/// A node's annotation text and the peer ID decoded from it.
type ParsedPeer = (Arc<str>, PeerId);

impl AgentDirectory {
    pub fn new(allow: HashMap<String, PeerId>, snapshots: RegistryHandle) -> Self {
        Self { allow, snapshots, parsed: Mutex::default() }
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
            let (mut sender, mut receiver) = tunnel.open_udp(&node, target, &service).await.map_err(to_io)?;
            let (to_remote, mut outbound) = mpsc::channel::<Vec<u8>>(DATAGRAM_QUEUE);
            let (inbound, from_remote) = mpsc::channel(DATAGRAM_QUEUE);
            // Each pump ends when its side closes; the proxy drops its
            // sender when the session ends, which closes the stream.
            tokio::spawn(async move {
                while let Some(datagram) = outbound.recv().await {
                    if sender.send(&datagram).await.is_err() {
                        return;
                    }
                }
                let _ = sender.close().await;
            });
            tokio::spawn(async move {
                let mut buf = vec![0u8; MAX_DATAGRAM];
                loop {
                    let n = tokio::select! {
                        r = receiver.recv(&mut buf) => match r {
                            Ok(n) => n,
                            Err(_) => return,
                        },
                        () = inbound.closed() => return,
                    };
                    if inbound.send(buf[..n].to_vec()).await.is_err() {
                        return;
                    }
                }
            });
            Ok(RemoteDatagrams { to_remote, from_remote })
        })
    }
}

/// Starts the tunnel with the agent's settings; the returned task ends when
/// `stop` is cancelled.
pub async fn start(
    config: &Config,
    snapshots: RegistryHandle,
    stop: CancellationToken,
) -> anyhow::Result<(Tunnel, tokio::task::JoinHandle<()>)> {
    let settings = tunnel_config(config)?;
    let directory = Arc::new(AgentDirectory::new(allow_list(&config.tunnel)?, snapshots));
    let started = Tunnel::start(settings, directory, stop).await.context("cannot start the tunnel")?;
    Ok(started)
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

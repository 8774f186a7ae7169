//! Tunnel configuration.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use libp2p::{Multiaddr, PeerId};
use serde::{Deserialize, Serialize};

use crate::TunnelError;

/// The default tunnel port (TCP and QUIC).
///
/// 20007, not EdgeMesh's 20006: during a switch from EdgeMesh both agents run
/// on the same node (README, "Coming from EdgeMesh"), and EdgeMesh's tunnel
/// holds 20006 on every address. Nothing pins the port to EdgeMesh's value
/// (peers learn each other's addresses, relays are named by full
/// multiaddrs), so the defaults differ rather than clash; 20007 is
/// unassigned in the IANA registry and below Linux's ephemeral range.
pub const DEFAULT_PORT: u16 = 20007;

/// Default [`TunnelConfig::punch_ttl`]: host -> its NAT router -> the first hop beyond.
pub const DEFAULT_PUNCH_TTL: u8 = 2;

/// Default limit of proxy streams (TCP connections + UDP sessions) this agent opens on one
/// connection to a peer.
///
/// yamux counts the streams of both directions against one limit and fails the whole
/// connection when a stream too many is opened, so the tunnel sizes yamux for twice this plus
/// a margin and never opens more than this on one connection: an open beyond it waits (up to
/// the connect timeout) for a stream to end. Use the same value on every node. QUIC's
/// concurrent stream limit is set to match.
pub const DEFAULT_MAX_STREAMS_PER_CONNECTION: usize = 4096;

/// Default [`TunnelConfig::max_inbound_streams_per_peer`]: as many as a peer opens on one
/// connection by default, so a well-behaved peer never meets it before its own limit.
pub const DEFAULT_MAX_INBOUND_STREAMS_PER_PEER: usize = DEFAULT_MAX_STREAMS_PER_CONNECTION;

/// Default [`TunnelConfig::max_inbound_streams`]: each holds one descriptor (a socket to the
/// endpoint), so 8192 stays well inside a 20,000 open-files limit beside the agent's own proxy.
pub const DEFAULT_MAX_INBOUND_STREAMS: usize = 8192;

/// The largest accepted `max_streams_per_connection` (yamux then allows 16,640 streams and a
/// 4 GiB connection window; memory is only used by data actually in flight).
pub const MAX_STREAMS_PER_CONNECTION: usize = 8192;

/// Configuration of a [`Tunnel`](crate::Tunnel): the `tunnel` section of the
/// agent's config (keys in camelCase). Fields marked "derived" are not keys:
/// the agent sets them from other settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct TunnelConfig {
    /// Carry connections to endpoints on other nodes through the tunnel
    /// (the agent starts it only when set). Off: endpoints on other nodes
    /// are dialled directly (a flat network).
    pub enabled: bool,
    /// Derived (`nodeName`): this node's name, claimed in the hello sent to
    /// every peer.
    #[serde(skip)]
    pub node_name: String,
    /// Ed25519 identity; created (mode 0600, parent dirs created) on first
    /// start when missing. The agent's default: `<stateDir>/tunnel.key`.
    pub key_file: Option<PathBuf>,
    /// libp2p private-network key file (the go-libp2p `swarm.key` format:
    /// `/key/swarm/psk/1.0.0/\n/base16/\n<64 hex>`), if any.
    pub psk_file: Option<PathBuf>,
    /// Listen addresses; empty = the default: TCP port 20007 (0.0.0.0 and ::), plus QUIC on it
    /// with the `quic` feature and no PSK.
    #[serde(with = "multiaddrs")]
    pub listen: Vec<Multiaddr>,
    /// Peers dialed at start and re-dialed with back-off whenever the connection is lost.
    #[serde(with = "multiaddrs")]
    pub bootstrap: Vec<Multiaddr>,
    /// Relays (each address must end in `/p2p/<relay peer id>`) to reserve a slot on when this
    /// node is not publicly reachable, and to reach peers through.
    #[serde(with = "multiaddrs")]
    pub relays: Vec<Multiaddr>,
    /// Offer circuit relay v2 to other nodes, within `relay_limits`.
    pub relay_server: bool,
    pub relay_limits: RelayLimits,
    /// Discover peers on the LAN with mDNS.
    pub mdns: bool,
    /// Ask the router for a port mapping of the TCP listen port (UPnP IGD): with one, peers
    /// connect to this node directly through its NAT and it needs no relay slot.
    pub upnp: bool,
    /// Node name -> peer ID of the nodes this agent trusts, besides Node
    /// objects annotated `edgemesh.io/peer-id` (and winning over them); see
    /// [`TunnelConfig::allow_list`].
    pub peers: BTreeMap<String, String>,
    /// When set, the only peer IDs this agent keeps a connection with (besides its `relays`):
    /// any other peer is refused when its connection is established, before it can say or ask
    /// anything; see [`TunnelConfig::allowed_peer_ids`]. Empty: any peer may connect (and is
    /// still refused proxy streams unless bound to a node).
    pub allowed_peers: Vec<String>,
    /// Proxy streams this agent opens on one connection (yamux and QUIC are sized for it); see
    /// [`DEFAULT_MAX_STREAMS_PER_CONNECTION`].
    pub max_streams_per_connection: usize,
    /// Proxy streams (TCP connections, UDP sessions) one peer may hold open on this node, over
    /// all its connections: each holds a socket to a local endpoint. One more is refused with a
    /// reply (the opener sees [`TunnelError::Busy`]), counted in
    /// `edgemesh_tunnel_limit_hits_total{limit="inbound_streams_per_peer"}`; the peer's other
    /// streams, and other peers', are served as before. At least 1.
    pub max_inbound_streams_per_peer: usize,
    /// Proxy streams all peers together may hold open on this node; refused and counted
    /// (`limit="inbound_streams"`) as above. At least 1.
    pub max_inbound_streams: usize,
    /// Bound on reaching a node (dial + hello) and, on the remote agent, on connecting to the
    /// endpoint.
    #[serde(with = "edgemesh_core::duration")]
    pub connect_timeout: Duration,
    /// A connection with no open stream is closed after this long (connections to bootstrap
    /// peers and relays are kept regardless).
    #[serde(with = "edgemesh_core::duration")]
    pub idle_connection_timeout: Duration,
    /// Offer TLS 1.3 (AES-GCM on CPUs with AES instructions) before Noise on TCP and relayed
    /// connections. Peers pick the first they both support, so agents that only speak Noise
    /// still connect; false offers Noise only (as agents before TLS). QUIC always uses TLS.
    pub tls: bool,
    /// Every connection is pinged this long after its previous ping was answered (QUIC's own
    /// keep-alive runs at the same pace).
    #[serde(with = "edgemesh_core::duration")]
    pub ping_interval: Duration,
    /// A connection that answered no ping for this long is closed: new streams move to another
    /// connection (a live direct one, else the relayed one, else a fresh dial) and the proxied
    /// connections it carried are reset toward their clients. From two missed pings on, new
    /// streams already prefer another connection. Also QUIC's idle timeout. At least twice
    /// `ping_interval`.
    #[serde(with = "edgemesh_core::duration")]
    pub liveness_timeout: Duration,
    /// `TCP_USER_TIMEOUT` of every tunnel TCP socket: the kernel drops a connection whose sent
    /// bytes stay unacknowledged this long. Idle sockets get TCP keepalive probes after the
    /// same time (every second, three), so a dead path is found even without traffic.
    #[serde(with = "edgemesh_core::duration")]
    pub tcp_user_timeout: Duration,
    /// The IP TTL (IPv6: hop limit) of the first SYN of a hole punch's dials: enough to pass
    /// this node's own NAT router and expire one hop beyond, so that the router keeps a mapping
    /// for the peer's SYN but the peer's router never sees (and resets) ours. 2 (the default)
    /// is host -> NAT router -> first hop beyond; a node behind two NATs (e.g. carrier-grade
    /// NAT) needs 3. 0 turns priming off. See `punch`.
    pub punch_ttl: u8,
}

impl TunnelConfig {
    /// A configuration with the defaults and the given node name and key file.
    pub fn new(node_name: impl Into<String>, key_file: impl Into<PathBuf>) -> Self {
        TunnelConfig { node_name: node_name.into(), key_file: Some(key_file.into()), ..Self::default() }
    }

    /// The relay service's limits, when this node offers it.
    pub fn relay_service(&self) -> Option<&RelayLimits> {
        self.relay_server.then_some(&self.relay_limits)
    }

    /// `peers` parsed; a bad peer ID names its node.
    pub fn allow_list(&self) -> Result<HashMap<String, PeerId>, TunnelError> {
        self.peers
            .iter()
            .map(|(node, peer)| {
                let id = PeerId::from_str(peer.trim()).map_err(|_| {
                    TunnelError::Config(format!("tunnel.peers.{node}: {peer:?} is not a libp2p peer ID"))
                })?;
                Ok((node.clone(), id))
            })
            .collect()
    }

    /// The peers of `allowed_peers` (`None` when it is empty: no allow-list), a bad one named.
    pub fn allowed_peer_ids(&self) -> Result<Option<HashSet<PeerId>>, TunnelError> {
        if self.allowed_peers.is_empty() {
            return Ok(None);
        }
        self.allowed_peers
            .iter()
            .map(|peer| {
                PeerId::from_str(peer.trim())
                    .map_err(|_| TunnelError::Config(format!("tunnel.allowedPeers: {peer:?} is not a libp2p peer ID")))
            })
            .collect::<Result<HashSet<_>, _>>()
            .map(Some)
    }

    /// Problems with these settings, each naming its key (checked with the
    /// rest of the agent's config, before anything starts).
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if !self.enabled {
            return problems;
        }
        let max = MAX_STREAMS_PER_CONNECTION;
        if !(1..=max).contains(&self.max_streams_per_connection) {
            problems.push(format!("tunnel.maxStreamsPerConnection must be between 1 and {max}"));
        }
        if self.max_inbound_streams_per_peer == 0 || self.max_inbound_streams == 0 {
            problems.push(
                "tunnel.maxInboundStreamsPerPeer and tunnel.maxInboundStreams must be at least 1 (limits, never \
                 unlimited)"
                    .into(),
            );
        }
        if self.connect_timeout.is_zero() {
            problems.push("tunnel.connectTimeout must be greater than zero".into());
        }
        let l = &self.relay_limits;
        if self.relay_server {
            if l.max_reservations == 0 || l.max_circuits == 0 || l.max_circuits_per_peer == 0 {
                problems.push(
                    "tunnel.relayLimits: maxReservations, maxCircuits and maxCircuitsPerPeer must be greater than zero"
                        .into(),
                );
            }
            if l.max_circuit_duration.is_zero() || l.max_circuit_bytes == 0 {
                problems.push("tunnel.relayLimits: maxCircuitDuration and maxCircuitBytes must be greater than zero (limits, never unlimited)".into());
            }
        }
        for (node, peer) in &self.peers {
            if node.trim().is_empty() || peer.trim().is_empty() {
                problems.push(format!("tunnel.peers: empty node name or peer ID in {node:?}: {peer:?}"));
            }
        }
        if let Err(e) = self.allow_list() {
            problems.push(e.to_string());
        }
        if let Err(e) = self.allowed_peer_ids() {
            problems.push(e.to_string());
        }
        if let Err(e) = self.liveness() {
            problems.push(format!("tunnel.{e}"));
        }
        problems
    }
}

impl Default for TunnelConfig {
    fn default() -> Self {
        TunnelConfig {
            enabled: false,
            node_name: String::new(),
            key_file: None,
            psk_file: None,
            listen: Vec::new(),
            bootstrap: Vec::new(),
            relays: Vec::new(),
            relay_server: false,
            relay_limits: RelayLimits::default(),
            mdns: true,
            upnp: true,
            peers: BTreeMap::new(),
            allowed_peers: Vec::new(),
            max_streams_per_connection: DEFAULT_MAX_STREAMS_PER_CONNECTION,
            max_inbound_streams_per_peer: DEFAULT_MAX_INBOUND_STREAMS_PER_PEER,
            max_inbound_streams: DEFAULT_MAX_INBOUND_STREAMS,
            connect_timeout: Duration::from_secs(10),
            idle_connection_timeout: Duration::from_secs(120),
            tls: true,
            ping_interval: Duration::from_secs(1),
            liveness_timeout: Duration::from_secs(5),
            tcp_user_timeout: Duration::from_secs(10),
            punch_ttl: DEFAULT_PUNCH_TTL,
        }
    }
}

impl TunnelConfig {
    /// The liveness settings, checked: what is wrong and why.
    pub(crate) fn liveness(&self) -> Result<crate::liveness::LivenessPolicy, String> {
        let (interval, timeout) = (self.ping_interval, self.liveness_timeout);
        if interval < Duration::from_millis(100) {
            return Err(format!("pingInterval {interval:?} is below 100ms: pings would flood the connections"));
        }
        if timeout < interval * 2 {
            return Err(format!(
                "livenessTimeout {timeout:?} must be at least twice pingInterval ({interval:?}): one late ping \
                 would close a healthy connection"
            ));
        }
        if self.tcp_user_timeout < Duration::from_secs(1) {
            return Err(format!(
                "tcpUserTimeout {:?} is below 1s: a short stall would drop healthy connections",
                self.tcp_user_timeout
            ));
        }
        Ok(crate::liveness::LivenessPolicy { interval, timeout })
    }
}

/// Multiaddrs read and written as text; a bad one is named.
mod multiaddrs {
    use libp2p::Multiaddr;
    use serde::{Deserialize, Deserializer, Serializer, de::Error};

    pub fn serialize<S: Serializer>(addrs: &[Multiaddr], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(addrs.iter().map(ToString::to_string))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Multiaddr>, D::Error> {
        let texts = Vec::<String>::deserialize(d)?;
        texts
            .iter()
            .map(|t| t.trim().parse().map_err(|e| D::Error::custom(format!("{t:?} is not a multiaddr ({e})"))))
            .collect()
    }
}

/// Limits of the circuit relay v2 server.
///
/// libp2p's own defaults (16 circuits, 2 minutes and 128 KiB per circuit) are meant for a
/// relay that only helps hole punching; they cut real traffic off. A relayed connection
/// carries every proxied connection between two nodes (multiplexed), and falls back to the
/// relay whenever hole punching fails, so these defaults carry real traffic while staying
/// bounded:
///
/// | limit | default |
/// |---|---|
/// | reservations | 512 in all, 4 per peer, each valid 1 h (renewed by the client) |
/// | circuits | 256 in all, 32 per peer |
/// | per circuit | 1 h and 8 GiB (then the relayed connection closes; the next proxied connection re-opens one) |
///
/// Reservation and circuit requests are also rate limited per peer and per IP address
/// (reservations: burst 30, then one per 30 s per peer / 15 s per IP; circuits: burst 120,
/// then one per 5 s per peer / 2 s per IP).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct RelayLimits {
    /// Reservations (nodes reachable through this relay) held at once.
    pub max_reservations: usize,
    /// Reservations one node may hold.
    pub max_reservations_per_peer: usize,
    /// How long a reservation lasts (clients renew it).
    #[serde(with = "edgemesh_core::duration")]
    pub reservation_duration: Duration,
    /// Relayed connections at once, in all.
    pub max_circuits: usize,
    /// Relayed connections at once per node.
    pub max_circuits_per_peer: usize,
    /// Longest life of one relayed connection (the nodes then reconnect).
    #[serde(with = "edgemesh_core::duration")]
    pub max_circuit_duration: Duration,
    /// Most bytes one relayed connection may carry.
    pub max_circuit_bytes: u64,
}

impl Default for RelayLimits {
    fn default() -> Self {
        RelayLimits {
            max_reservations: 512,
            max_reservations_per_peer: 4,
            reservation_duration: Duration::from_secs(3600),
            max_circuits: 256,
            max_circuits_per_peer: 32,
            max_circuit_duration: Duration::from_secs(3600),
            max_circuit_bytes: 8 << 30,
        }
    }
}

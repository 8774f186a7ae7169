//! Tunnel configuration.

use std::{path::PathBuf, time::Duration};

use libp2p::Multiaddr;

/// The default tunnel port (TCP and QUIC).
pub const DEFAULT_PORT: u16 = 20006;

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

/// The largest accepted `max_streams_per_connection` (yamux then allows 16,640 streams and a
/// 4 GiB connection window; memory is only used by data actually in flight).
pub const MAX_STREAMS_PER_CONNECTION: usize = 8192;

/// Configuration of a [`Tunnel`](crate::Tunnel).
#[derive(Debug, Clone)]
pub struct TunnelConfig {
    /// This node's name (claimed in the hello sent to every peer).
    pub node_name: String,
    /// Ed25519 identity; created (mode 0600, parent dirs created) on first start when missing.
    pub key_file: PathBuf,
    /// libp2p private-network key file (the go-libp2p `swarm.key` format:
    /// `/key/swarm/psk/1.0.0/\n/base16/\n<64 hex>`), if any.
    pub psk_file: Option<PathBuf>,
    /// Listen addresses; empty = the default: TCP port 20006 (0.0.0.0 and ::), plus QUIC on it
    /// with the `quic` feature and no PSK.
    pub listen: Vec<Multiaddr>,
    /// Peers dialed at start and re-dialed with back-off whenever the connection is lost.
    pub bootstrap: Vec<Multiaddr>,
    /// Relays (each address must end in `/p2p/<relay peer id>`) to reserve a slot on when this
    /// node is not publicly reachable, and to reach peers through.
    pub relays: Vec<Multiaddr>,
    /// Offer circuit relay v2 with these limits (None: not a relay server).
    pub relay_server: Option<RelayLimits>,
    /// Discover peers on the LAN with mDNS.
    pub mdns: bool,
    /// Ask the router for a port mapping of the TCP listen port (UPnP IGD): with one, peers
    /// connect to this node directly through its NAT and it needs no relay slot.
    pub upnp: bool,
    /// Proxy streams this agent opens on one connection (yamux and QUIC are sized for it); see
    /// [`DEFAULT_MAX_STREAMS_PER_CONNECTION`].
    pub max_streams_per_connection: usize,
    /// Bound on reaching a node (dial + hello) and, on the remote agent, on connecting to the
    /// endpoint.
    pub connect_timeout: Duration,
    /// A connection with no open stream is closed after this long (connections to bootstrap
    /// peers and relays are kept regardless).
    pub idle_connection_timeout: Duration,
    /// Offer TLS 1.3 (AES-GCM on CPUs with AES instructions) before Noise on TCP and relayed
    /// connections. Peers pick the first they both support, so agents that only speak Noise
    /// still connect; false offers Noise only (as agents before TLS). QUIC always uses TLS.
    pub tls: bool,
    /// Every connection is pinged this long after its previous ping was answered (QUIC's own
    /// keep-alive runs at the same pace).
    pub ping_interval: Duration,
    /// A connection that answered no ping for this long is closed: new streams move to another
    /// connection (a live direct one, else the relayed one, else a fresh dial) and the proxied
    /// connections it carried are reset toward their clients. From two missed pings on, new
    /// streams already prefer another connection. Also QUIC's idle timeout. At least twice
    /// `ping_interval`.
    pub liveness_timeout: Duration,
    /// `TCP_USER_TIMEOUT` of every tunnel TCP socket: the kernel drops a connection whose sent
    /// bytes stay unacknowledged this long. Idle sockets get TCP keepalive probes after the
    /// same time (every second, three), so a dead path is found even without traffic.
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
        TunnelConfig {
            node_name: node_name.into(),
            key_file: key_file.into(),
            psk_file: None,
            listen: Vec::new(),
            bootstrap: Vec::new(),
            relays: Vec::new(),
            relay_server: None,
            mdns: true,
            upnp: true,
            max_streams_per_connection: DEFAULT_MAX_STREAMS_PER_CONNECTION,
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
            return Err(format!("ping_interval {interval:?} is below 100ms: pings would flood the connections"));
        }
        if timeout < interval * 2 {
            return Err(format!(
                "liveness_timeout {timeout:?} must be at least twice ping_interval ({interval:?}): one late ping \
                 would close a healthy connection"
            ));
        }
        if self.tcp_user_timeout < Duration::from_secs(1) {
            return Err(format!(
                "tcp_user_timeout {:?} is below 1s: a short stall would drop healthy connections",
                self.tcp_user_timeout
            ));
        }
        Ok(crate::liveness::LivenessPolicy { interval, timeout })
    }
}

impl Default for TunnelConfig {
    fn default() -> Self {
        TunnelConfig::new("", "/var/lib/edgemesh/tunnel.key")
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
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayLimits {
    pub max_reservations: usize,
    pub max_reservations_per_peer: usize,
    pub reservation_duration: Duration,
    pub max_circuits: usize,
    pub max_circuits_per_peer: usize,
    pub max_circuit_duration: Duration,
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

//! The cross-node tunnel of edgemesh: an authenticated libp2p tunnel between agents, with
//! relay, hole punching and LAN discovery.
//!
//! A connection to a service whose endpoint lives on another node is carried by the local
//! agent over one libp2p stream to the agent on the endpoint's node, which opens the
//! connection to the endpoint ([`Tunnel::open_tcp`]); UDP sessions ride one stream each, as
//! length-prefixed datagrams ([`Tunnel::open_udp`]).
//!
//! # Security
//!
//! - **Identity.** Each node has its own random Ed25519 key ([`load_or_create_identity`]),
//!   never derived from its name. Connections are always encrypted and authenticated with
//!   TLS 1.3 (offered first on TCP and relayed connections, always on QUIC) or Noise (the
//!   fallback for agents that only speak Noise), so a peer ID cannot be spoofed.
//! - **Node names.** On every new connection each side sends a hello
//!   (`/edgemesh/hello/1.0.0`) claiming its node name. The receiver accepts the claim only if
//!   its [`Directory`] binds that name to the peer's ID (allow-list or Node annotation
//!   `edgemesh.io/peer-id`); otherwise it logs a warning naming the peer and the claimed node
//!   and closes the connection. Only peers with an accepted name may open proxy streams, and
//!   the claim is checked against the directory again for every stream. Exceptions, which
//!   still get no proxy streams: a relay server keeps connections of peers it does not know
//!   (they use it as a relay), and a node keeps its configured relays. A peer claiming the name
//!   of a node bound to another peer ID is always cut off.
//! - **No open proxy.** The remote agent connects only to targets for which
//!   [`Directory::serves`] is true, and to ports of its own host only when
//!   [`Directory::allows_host_port`] is ([`Tunnel::open_host`]).
//! - **Private network.** With a pre-shared key (`psk_file`, go-libp2p's `swarm.key` format),
//!   every TCP and relayed connection proves the key once, right after the TLS or Noise
//!   handshake and before the muxer (`psk`): a peer without the key completes no connection,
//!   so it opens no stream. The data is then encrypted once, by TLS or Noise (libp2p's pnet
//!   encrypted it a second time). With a key the upgrades go by other protocol names, so a
//!   node without one, or an agent still on pnet, fails at once in multistream-select. A
//!   relayed connection proves the key end to end inside the circuit, and the relay's own
//!   connections prove it too: a relay serves members only. **The proof runs on TCP and
//!   relayed connections only: QUIC's TLS handshake is libp2p's own.** So with a PSK the
//!   default listeners are TCP only, and an explicit QUIC listen, bootstrap or relay address
//!   is a start-up error ([`TunnelError::Config`]). Without a PSK, TCP and QUIC are both on
//!   (QUIC hole punches more NATs).
//!
//! # Discovery, relay and hole punching
//!
//! Addresses come from mDNS (if enabled; LAN peers are connected to as soon as they are
//! discovered), identify, the bootstrap list (dialed at start and re-dialed with back-off,
//! connections kept open) and the relays. To reach a node whose peer is not connected, the
//! tunnel dials the peer's known addresses and, at the same time, `<relay>/p2p-circuit/p2p/<peer>`
//! for every configured relay; the first connection wins. A node with `relays` configured
//! reserves a slot on each (while AutoNAT has not found it publicly reachable), keeps the
//! reservation renewed and re-reserves with back-off after losing it (e.g. the relay
//! restarted), so a node behind NAT is reachable through the relay with nobody configuring its
//! address. The node that accepted a relayed connection dials the addresses the peer advertises
//! (connection reversal: if the peer is reachable, that connects directly at once), and DCUtR
//! tries to upgrade each relayed connection to a direct one (hole punching, for when neither
//! side is reachable); while a peer stays relayed, the upgrade is tried again with back-off
//! (`upgrade`). A hole punch's TCP dials send their first SYN with a small TTL
//! ([`TunnelConfig::punch_ttl`], `punch`), so that NAT routers that reset unsolicited SYNs
//! do not break the simultaneous open. Proxy streams use a live direct connection when there is one and the relayed
//! one otherwise, so traffic falls back to the relay when the direct path breaks.
//!
//! # Liveness
//!
//! rust-libp2p's ping only reports, so the tunnel acts on it (`liveness`, `swarm_task::heal`): a
//! connection that answers no ping for [`TunnelConfig::liveness_timeout`] is closed, its
//! proxied connections read as reset (`muxer`), and new streams take the remaining path or a
//! fresh dial. Tunnel TCP sockets carry `TCP_USER_TIMEOUT` and keepalive probes.
//!
//! A relay server ([`TunnelConfig::relay_server`]) offers circuit relay v2 with the bounded
//! [`RelayLimits`], and announces its listen addresses as external addresses (libp2p's relay
//! only serves when it has some).
//!
//! # Wire protocol
//!
//! See the `wire` module: a versioned header (protocol, target address and port, service name
//! for logs, bounded lengths) and a one-byte reply before bytes flow. Every read of a header
//! is time limited and every length bounded; each inbound stream is served by its own task,
//! never by the swarm task.
//!
//! # Layout
//!
//! - `config`, `error`, `identity` (keys and the PSK file); `settings`: the checked settings
//!   every part reads;
//! - `security`: TLS or Noise, then `psk` (the private network's proof) when there is a key;
//!   `tls`: our TLS 1.3 configuration; `coalesce`: TLS write batching;
//! - `swarm`: transports and behaviours; `punch`: primed hole punch dials (a behaviour that
//!   marks them, a wrapper of the TCP transport); `swarm_task`: the task that drives the
//!   swarm, with its parts `relays` (relay slots), `bootstrap` (bootstrap connections),
//!   `reachability` (AutoNAT, port mapping), `addresses` (the peers' dialable addresses),
//!   `connect` (reaching a node) and `heal` (liveness, failover dials, re-upgrading);
//!   `liveness` and `upgrade`: the pure rules behind those;
//! - `streams`: the raw-stream behaviour (opens and accepts the edgemesh protocols); `muxer`:
//!   yamux sized for both directions; `wire`: hello and proxy headers;
//! - `peer_table`: what is known of each peer (claims, connections, path, reservation, open
//!   streams; `/peers`), the one owner of that state, with its change notification; it
//!   publishes the per-peer gauges of `metrics` (the tunnel's series, a view of that state and
//!   of the swarm task's events: `swarm_task::counting`);
//! - `messages`: the `Command`s from the handles to the swarm task, and the swarm task's
//!   notice of each new connection (`Connected`) to the stream side;
//! - `tunnel`: the [`Tunnel`] handle, with `context` (what the handles and stream tasks work
//!   with), `hello` (node name claims), `inbound` (serving proxy streams) and `proxied` (the
//!   stream and datagram types handed out).
//!
//! The modules depend on each other one way (arrows: "uses"):
//!
//! ```text
//! tunnel ─► inbound ─► hello ─► context        (proxied: used by tunnel and inbound)
//!   │  builds the swarm and starts the task, then talks to it by message only
//!   ├──────────────────────► swarm_task ─► heal ─► connect ─► addresses, relays ─► backoff
//!   │                          │          (also ─► bootstrap ─► backoff, reachability)
//!   ▼                          ▼
//! messages, peer_table, settings       both sides use these; these use neither side
//!   │
//!   ▼
//! streams, liveness, upgrade, swarm (+ punch), metrics, muxer, wire, ...   the leaves
//! ```
//!
//! No module imports one that imports it back; the one split `impl` left is
//! `streams::health` (more methods of `streams::Control` on its private state).

#![forbid(unsafe_code)]
#![warn(clippy::unwrap_used)] // outside tests: an error with context, or an `expect` naming the invariant

mod coalesce;
mod config;
mod error;
mod identity;
mod liveness;
mod messages;
mod metrics;
mod muxer;
mod peer_table;
mod psk;
mod punch;
mod security;
mod settings;
mod streams;
mod swarm;
mod swarm_task;
#[cfg(test)]
mod tests;
mod tls;
mod tunnel;
mod upgrade;
mod wire;

use std::{future::Future, net::SocketAddr, pin::Pin};

pub use config::{
    DEFAULT_MAX_INBOUND_STREAMS, DEFAULT_MAX_INBOUND_STREAMS_PER_PEER, DEFAULT_MAX_STREAMS_PER_CONNECTION,
    DEFAULT_PORT, DEFAULT_PUNCH_TTL, MAX_STREAMS_PER_CONNECTION, RelayLimits, TunnelConfig,
};
pub use error::TunnelError;
pub use identity::load_or_create_identity;
pub use libp2p::{Multiaddr, PeerId, identity::Keypair, multiaddr};
pub use liveness::ConnectionState;
pub use metrics::TunnelMetrics;
pub use peer_table::{ConnectionStatus, ConnectionType, PeerStatus};
pub use tokio_util::sync::CancellationToken;
pub use tunnel::{DatagramReceiver, DatagramSender, MAX_DATAGRAM, Tunnel, TunnelStream, UDP_IDLE_TIMEOUT};

/// The stream protocols' parsers, for the fuzz targets (`fuzz/`) only: not an API.
#[doc(hidden)]
pub mod fuzzing {
    pub use crate::wire::{Header, Hello, encode_header, encode_hello, read_header, read_hello};
}

/// The transport protocol of a proxied flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TunnelProtocol {
    Tcp,
    Udp,
}

/// What the agent knows about nodes; implemented by the binary from its config allow-list and
/// Node objects.
pub trait Directory: Send + Sync + 'static {
    /// The peer ID bound to node `node` (allow-list or Node annotation `edgemesh.io/peer-id`),
    /// if any.
    fn peer_of(&self, node: &str) -> Option<PeerId>;
    /// Whether this node serves endpoint `target` for `protocol` (the tunnel dials nothing
    /// else: no open proxy).
    fn serves(&self, target: SocketAddr, protocol: TunnelProtocol) -> bool;
    /// Whether a peer may reach TCP port `port` of this node's own host (loopback) through the
    /// tunnel (the SOCKS5 entry's `socks.allowedPorts`): this node decides, not the asking one.
    /// The default: no port.
    fn allows_host_port(&self, _port: u16) -> bool {
        false
    }
    /// Resolves once the directory holds its first full view of the nodes (the agent's first
    /// complete read of its source, or of its cache). Until then a node name bound to nothing
    /// may just not be loaded yet, so a hello claiming such a name waits for this (a few
    /// seconds at most) before it is judged, instead of refusing a node the agent is about to
    /// know. The default: ready at once.
    fn ready(&self) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        Box::pin(std::future::ready(()))
    }
}

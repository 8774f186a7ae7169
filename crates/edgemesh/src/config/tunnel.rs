//! The `tunnel` section: the libp2p tunnel that carries connections to
//! endpoints on other nodes.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::duration;

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct TunnelSection {
    /// Carry connections to endpoints on other nodes through the tunnel.
    /// Off: endpoints on other nodes are dialled directly (a flat network).
    pub enabled: bool,
    /// This node's Ed25519 identity, created (mode 0600) on first start.
    /// Default: `<stateDir>/tunnel.key`.
    pub key_file: Option<PathBuf>,
    /// Pre-shared key of the private network (go-libp2p `swarm.key`
    /// format): peers without it cannot complete a handshake. With a PSK
    /// the tunnel uses TCP only (QUIC cannot carry it).
    pub psk_file: Option<PathBuf>,
    /// Listen multiaddrs. Empty: TCP port 20006 on every address, and QUIC
    /// on it too in a build with the `quic` feature and no PSK.
    pub listen: Vec<String>,
    /// Peers to dial at start (multiaddrs ending in `/p2p/<peer id>`).
    pub bootstrap: Vec<String>,
    /// Relays to reserve a slot on when this node is not publicly
    /// reachable (multiaddrs ending in `/p2p/<peer id>`).
    pub relays: Vec<String>,
    /// Offer circuit relay v2 to other nodes, within `relayLimits`.
    pub relay_server: bool,
    pub relay_limits: RelayLimitsSection,
    /// Find peers on the local network with mDNS.
    pub mdns: bool,
    /// Ask the router for a port mapping (UPnP IGD), to be reachable
    /// directly through its NAT.
    pub upnp: bool,
    /// Node name -> peer ID of the nodes this agent trusts, in addition to
    /// Node objects annotated `edgemesh.io/peer-id`. A peer that claims a
    /// node name bound to another peer ID is refused.
    pub peers: BTreeMap<String, String>,
    /// Concurrent streams (proxied connections and UDP sessions) per
    /// connection between two agents.
    pub max_streams_per_connection: usize,
    /// Bound on reaching a node (dial, relay, hello) and, on the node, on
    /// connecting to the endpoint.
    #[serde(with = "duration")]
    pub connect_timeout: Duration,
    /// How long an idle connection to another agent (no streams) is kept.
    #[serde(with = "duration")]
    pub idle_connection_timeout: Duration,
    /// IP TTL of the first SYN of a hole punch's dials: passes this node's
    /// own NAT router, expires one hop beyond. 2: one NAT; 3 behind two
    /// (carrier-grade NAT); 0: off.
    pub punch_ttl: u8,
}

/// Limits of the relay service (`relayServer: true`).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct RelayLimitsSection {
    /// Reservations (nodes reachable through this relay) held at once.
    pub max_reservations: usize,
    /// Reservations one node may hold.
    pub max_reservations_per_peer: usize,
    /// How long a reservation lasts (clients renew it).
    #[serde(with = "duration")]
    pub reservation_duration: Duration,
    /// Relayed connections at once, in all.
    pub max_circuits: usize,
    /// Relayed connections at once per node.
    pub max_circuits_per_peer: usize,
    /// Longest life of one relayed connection (the nodes then reconnect).
    #[serde(with = "duration")]
    pub max_circuit_duration: Duration,
    /// Most bytes one relayed connection may carry.
    pub max_circuit_bytes: u64,
}

impl Default for TunnelSection {
    fn default() -> Self {
        let defaults = edgemesh_tunnel::TunnelConfig::default();
        Self {
            enabled: false,
            key_file: None,
            psk_file: None,
            listen: Vec::new(),
            bootstrap: Vec::new(),
            relays: Vec::new(),
            relay_server: false,
            relay_limits: RelayLimitsSection::default(),
            mdns: defaults.mdns,
            upnp: defaults.upnp,
            peers: BTreeMap::new(),
            max_streams_per_connection: defaults.max_streams_per_connection,
            connect_timeout: defaults.connect_timeout,
            idle_connection_timeout: defaults.idle_connection_timeout,
            punch_ttl: defaults.punch_ttl,
        }
    }
}

impl Default for RelayLimitsSection {
    fn default() -> Self {
        edgemesh_tunnel::RelayLimits::default().into()
    }
}

// The section mirrors the tunnel crate's limits field for field; both
// directions of the copy live here, beside the section.
impl From<edgemesh_tunnel::RelayLimits> for RelayLimitsSection {
    fn from(l: edgemesh_tunnel::RelayLimits) -> Self {
        Self {
            max_reservations: l.max_reservations,
            max_reservations_per_peer: l.max_reservations_per_peer,
            reservation_duration: l.reservation_duration,
            max_circuits: l.max_circuits,
            max_circuits_per_peer: l.max_circuits_per_peer,
            max_circuit_duration: l.max_circuit_duration,
            max_circuit_bytes: l.max_circuit_bytes,
        }
    }
}

impl From<&RelayLimitsSection> for edgemesh_tunnel::RelayLimits {
    fn from(l: &RelayLimitsSection) -> Self {
        Self {
            max_reservations: l.max_reservations,
            max_reservations_per_peer: l.max_reservations_per_peer,
            reservation_duration: l.reservation_duration,
            max_circuits: l.max_circuits,
            max_circuits_per_peer: l.max_circuits_per_peer,
            max_circuit_duration: l.max_circuit_duration,
            max_circuit_bytes: l.max_circuit_bytes,
        }
    }
}

impl TunnelSection {
    /// Problems with these settings, each naming its key.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if !self.enabled {
            return problems;
        }
        let max = edgemesh_tunnel::MAX_STREAMS_PER_CONNECTION;
        if !(1..=max).contains(&self.max_streams_per_connection) {
            problems.push(format!("tunnel.maxStreamsPerConnection must be between 1 and {max}"));
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
        problems
    }
}

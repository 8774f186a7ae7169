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
    /// Listen multiaddrs. Empty: TCP and QUIC on port 20006 on every
    /// address (TCP only with a PSK).
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
    /// Node name -> peer ID of the nodes this agent trusts, in addition to
    /// Node objects annotated `edgemesh.io/peer-id`. A peer that claims a
    /// node name bound to another peer ID is refused.
    pub peers: BTreeMap<String, String>,
    /// Concurrent streams (proxied connections and UDP sessions) per
    /// connection between two agents.
    pub max_streams_per_connection: usize,
    /// How long an idle connection to another agent (no streams) is kept.
    #[serde(with = "duration")]
    pub idle_connection_timeout: Duration,
}

/// Limits of the relay service (`relayServer: true`).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct RelayLimitsSection {
    /// Reservations (nodes reachable through this relay) held at once.
    pub max_reservations: usize,
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
        Self {
            enabled: false,
            key_file: None,
            psk_file: None,
            listen: Vec::new(),
            bootstrap: Vec::new(),
            relays: Vec::new(),
            relay_server: false,
            relay_limits: RelayLimitsSection::default(),
            mdns: true,
            peers: BTreeMap::new(),
            max_streams_per_connection: 8192,
            idle_connection_timeout: Duration::from_secs(300),
        }
    }
}

impl Default for RelayLimitsSection {
    fn default() -> Self {
        Self {
            max_reservations: 128,
            max_circuits: 1024,
            max_circuits_per_peer: 256,
            max_circuit_duration: Duration::from_secs(3600),
            max_circuit_bytes: 8 << 30,
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
        if self.max_streams_per_connection == 0 {
            problems.push("tunnel.maxStreamsPerConnection must be greater than zero".into());
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

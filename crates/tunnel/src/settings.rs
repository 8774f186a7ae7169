//! The tunnel's settings once checked at start: a plain value, shared read-only by the swarm
//! task and the stream side.

use std::{collections::HashSet, time::Duration};

use libp2p::PeerId;

use crate::liveness::LivenessPolicy;

/// What every part of the running tunnel reads and nothing changes.
pub(crate) struct Settings {
    pub local_peer: PeerId,
    pub node_name: String,
    pub connect_timeout: Duration,
    pub liveness: LivenessPolicy,
    /// Proxy streams we open per connection (after clamping).
    pub max_streams: usize,
    /// QUIC is usable (no PSK).
    pub quic: bool,
    /// A private network's key is configured (`psk_file`).
    pub psk: bool,
    /// The configured relays' peer IDs.
    pub relay_peers: HashSet<PeerId>,
    /// This node serves as a relay.
    pub relay_server: bool,
}

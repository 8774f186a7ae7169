//! The swarm task's side of liveness, failover and re-upgrading (issue #13, edge faults): the
//! task hands each ping to [`on_ping`], and [`Heal`] its ticks and path changes.
//!
//! - **Liveness.** Ping outcomes go to each connection's record (`liveness`); a connection
//!   that answered no ping for the liveness timeout is closed. Its proxied connections are
//!   reset (see `muxer`), and new streams take the remaining path: a live direct connection,
//!   else the relayed one, else a fresh dial (`streams::Control::open`, `Tunnel::ready`).
//! - **Re-upgrading.** While a peer is only relayed, the direct upgrade is tried again on the
//!   `upgrade` schedule: a dial of the peer's known direct addresses, and a fresh DCUtR
//!   attempt. DCUtR runs once per relayed connection, started by the side that *accepted* it;
//!   so the peer with the lower ID opens a new relayed connection, and the other side's DCUtR
//!   hole punches on it. (Both doing so would run two hole punches at once through the same
//!   ports.)
//! - **Fresh dials.** Reaching a peer dials its known direct addresses and its relay circuits
//!   as two dials: a black-holed direct address hangs until the transport timeout (20 s), and
//!   a relay that was down a moment ago must not wait for it. Each new request re-dials a leg
//!   that is not under way; the waiters are answered by the first connection, and failed only
//!   when both legs failed.
//! - **Path changes** (direct or relayed) are timestamped for `/peers`.

use std::collections::{HashMap, HashSet};

use libp2p::{
    PeerId, ping,
    swarm::dial_opts::{DialOpts, PeerCondition},
};
use tokio::time::Instant;

use super::connect::Dial;
use crate::{ConnectionType, peer_table::PeerTable, settings::Settings, streams::Control, upgrade::Retry};

/// Re-upgrade bookkeeping of the swarm task.
#[derive(Default)]
pub(super) struct Heal {
    /// Peers connected only through relays, and when to try the upgrade again.
    retries: HashMap<PeerId, Retry>,
    /// Peers we had a direct connection to (they get the faster schedule once relayed again).
    was_direct: HashSet<PeerId>,
}

/// Bound on `was_direct` (a peer per node of the cluster; cleared beyond, which only slows
/// the schedule of a few pairs).
const MAX_REMEMBERED: usize = 100_000;

/// Records a ping's outcome on its connection (`/peers`, and whether new streams avoid it).
pub(super) fn on_ping(control: &Control, peers: &PeerTable, event: ping::Event) {
    let changed = match event.result {
        Ok(rtt) => control.record_ping(event.connection, Some(rtt)),
        Err(ping::Failure::Unsupported) => {
            tracing::debug!(peer = %event.peer, "peer does not answer pings: its connection is watched by \
                TCP timeouts only");
            control.record_ping(event.connection, None)
        }
        Err(e) => {
            tracing::debug!(peer = %event.peer, error = %e, "ping failed");
            false
        }
    };
    // The connection's health and RTT show in `/peers` and the peer's metrics.
    peers.refresh(event.peer);
    if changed {
        peers.bump();
    }
}

impl Heal {
    /// Runs on every tick of the swarm task: closes the dead connections, retries the
    /// upgrades that are due.
    pub(super) fn tick(&mut self, d: Dial<'_>, peers: &PeerTable, settings: &Settings) {
        let dead = d.control.take_dead();
        for (connection, peer, relayed) in &dead {
            tracing::info!(%peer, relayed, timeout = ?settings.liveness.timeout,
                "closing a tunnel connection that answers no pings; new streams take another path");
            d.swarm.close_connection(*connection);
        }
        for (_, peer, _) in dead {
            self.path_changed(peer, d.control, peers);
        }
        self.retry_upgrades(d, settings.local_peer);
    }

    /// After a connection to `peer` was established, closed or found dead: the path `/peers`
    /// shows, and whether the peer now waits for a re-upgrade.
    pub(super) fn path_changed(&mut self, peer: PeerId, control: &Control, peers: &PeerTable) {
        let path = if control.has_direct(&peer) {
            Some(ConnectionType::Direct)
        } else if control.is_connected(&peer) {
            Some(ConnectionType::Relayed)
        } else {
            None
        };
        peers.note_path(peer, path);
        match path {
            Some(ConnectionType::Direct) => {
                self.retries.remove(&peer);
                if self.was_direct.len() >= MAX_REMEMBERED {
                    self.was_direct.clear();
                }
                self.was_direct.insert(peer);
            }
            // Only relays and bootstrap peers are kept connected without streams: a relayed
            // peer that is neither is retried while it stays connected.
            Some(ConnectionType::Relayed) => {
                let lost = self.was_direct.contains(&peer);
                self.retries.entry(peer).or_insert_with(|| Retry::new(Instant::now(), lost));
            }
            None => {
                self.retries.remove(&peer);
            }
        }
        peers.bump();
    }

    fn retry_upgrades(&mut self, d: Dial<'_>, local_peer: PeerId) {
        let now = Instant::now();
        let due: Vec<(PeerId, u32)> = self
            .retries
            .iter_mut()
            .filter_map(|(peer, retry)| retry.due(now).then(|| (*peer, retry.attempts())))
            .collect();
        for (peer, attempt) in due {
            if d.control.has_direct(&peer) {
                self.retries.remove(&peer);
                continue;
            }
            retry_upgrade(peer, attempt, Dial { swarm: &mut *d.swarm, ..d }, local_peer);
        }
    }
}

/// One re-upgrade attempt: a dial of the peer's known direct addresses (enough when either
/// side is reachable), and, from the peer with the lower ID, a new relayed connection on
/// which the other side starts a fresh DCUtR hole punch.
fn retry_upgrade(peer: PeerId, attempt: u32, d: Dial<'_>, local_peer: PeerId) {
    let direct = d.addresses.of(&peer);
    let relayed = d.relays.circuits(peer);
    let punch = local_peer < peer && !relayed.is_empty();
    tracing::debug!(%peer, attempt, direct = ?direct, punch, "retrying the direct upgrade");
    if !direct.is_empty() {
        let opts =
            DialOpts::peer_id(peer).addresses(direct).condition(PeerCondition::Always).allocate_new_port().build();
        if let Err(e) = d.swarm.dial(opts) {
            tracing::debug!(%peer, error = %e, "cannot dial the known addresses");
        }
    }
    if punch {
        let opts = DialOpts::peer_id(peer).addresses(relayed).condition(PeerCondition::Always).build();
        if let Err(e) = d.swarm.dial(opts) {
            tracing::debug!(%peer, error = %e, "cannot open a relayed connection for hole punching");
        }
    }
}

//! What the connections' pings say, as path choice, the swarm task and `/peers` ask it (see
//! `liveness`).

use std::{collections::HashSet, time::Duration};

use libp2p::{PeerId, swarm::ConnectionId};

use super::{Control, lock};
use crate::liveness::ConnectionState;

/// What `/peers` shows of one connection's health.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Health {
    pub state: ConnectionState,
    pub last_ping_age: Option<Duration>,
    pub rtt: Option<Duration>,
}

impl Control {
    /// Whether `peer` has a connection that answers its pings (a new stream need not wait for
    /// a fresh dial).
    pub(crate) fn is_alive(&self, peer: &PeerId) -> bool {
        let shared = lock(&self.shared);
        shared
            .conns
            .values()
            .any(|c| &c.peer == peer && c.usable() && c.state(&shared.policy) == ConnectionState::Alive)
    }

    /// Whether `peer` has a direct connection that is not being closed.
    pub(crate) fn has_direct(&self, peer: &PeerId) -> bool {
        let shared = lock(&self.shared);
        shared
            .conns
            .values()
            .any(|c| &c.peer == peer && !c.relayed && c.usable() && c.state(&shared.policy) != ConnectionState::Closing)
    }

    /// Records a ping's outcome on `conn`; true when that changed whether the connection is
    /// alive (waiters for a usable connection care).
    pub(crate) fn record_ping(&self, conn: ConnectionId, rtt: Option<Duration>) -> bool {
        let mut shared = lock(&self.shared);
        let policy = shared.policy;
        let Some(c) = shared.conns.get_mut(&conn) else { return false };
        let before = c.state(&policy);
        match rtt {
            Some(rtt) => c.liveness.ping_ok(tokio::time::Instant::now(), rtt),
            None => c.liveness.ping_unsupported(),
        }
        before != c.state(&policy)
    }

    /// Connections that answered no ping for the liveness timeout while their peer has a live
    /// connection beside them, or for the last-path timeout (see `liveness`), marked as being
    /// closed (no new stream goes to them): (connection, peer, relayed). The caller closes them.
    pub(crate) fn take_dead(&self) -> Vec<(ConnectionId, PeerId, bool)> {
        let mut shared = lock(&self.shared);
        let policy = shared.policy;
        let now = tokio::time::Instant::now();
        let alive: HashSet<PeerId> = shared
            .conns
            .values()
            .filter(|c| c.usable() && c.liveness.state(now, &policy) == ConnectionState::Alive)
            .map(|c| c.peer)
            .collect();
        let mut dead = Vec::new();
        for (id, c) in shared.conns.iter_mut() {
            let bound = policy.close_after(alive.contains(&c.peer));
            if c.usable() && c.liveness.silent_at_least(now, bound) {
                c.liveness.set_closing();
                dead.push((*id, c.peer, c.relayed));
            }
        }
        dead
    }

    /// The health of one connection, for `/peers`.
    pub(crate) fn health(&self, conn: ConnectionId) -> Option<Health> {
        let shared = lock(&self.shared);
        let c = shared.conns.get(&conn)?;
        Some(Health {
            state: c.state(&shared.policy),
            last_ping_age: c.liveness.last_ping_age(tokio::time::Instant::now()),
            rtt: c.liveness.rtt(),
        })
    }
}

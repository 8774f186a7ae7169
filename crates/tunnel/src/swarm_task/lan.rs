//! Dialling the peers mDNS finds on the LAN, and again when such a dial fails.
//!
//! Two agents that find each other at the same instant dial each other at once. With port
//! reuse (both dial from their listen port) the two dials can meet as one TCP simultaneous
//! open, on which both sides speak first (two TLS ClientHellos) and both handshakes fail.
//! Nothing else dials a LAN peer until a stream to it is asked for, so a failed LAN dial is
//! tried again after a random delay (the two sides stop colliding), a few times.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use libp2p::{
    PeerId, Swarm,
    swarm::{
        ConnectionId,
        dial_opts::{DialOpts, PeerCondition},
    },
};
use rand::Rng;

use super::addresses::Addresses;
use crate::swarm::Behaviour;

/// Dials of one discovery, the first included.
const ATTEMPTS: u32 = 4;

#[derive(Default)]
pub(super) struct LanDials {
    /// Dials under way: their peer and which attempt they are.
    dials: HashMap<ConnectionId, (PeerId, u32)>,
    /// Retries waiting for their time.
    due: Vec<(Instant, PeerId, u32)>,
}

impl LanDials {
    /// Dials `peer` at the addresses known for it, unless connected or being dialled.
    pub(super) fn dial(&mut self, swarm: &mut Swarm<Behaviour>, addresses: &Addresses, peer: PeerId) {
        self.dial_attempt(swarm, addresses, peer, 1);
    }

    fn dial_attempt(&mut self, swarm: &mut Swarm<Behaviour>, addresses: &Addresses, peer: PeerId, attempt: u32) {
        if swarm.is_connected(&peer) {
            return;
        }
        let opts = DialOpts::peer_id(peer)
            .addresses(addresses.of(&peer))
            .condition(PeerCondition::DisconnectedAndNotDialing)
            .build();
        let connection = opts.connection_id();
        if swarm.dial(opts).is_ok() {
            self.dials.insert(connection, (peer, attempt));
        }
    }

    /// A dial ended with a connection (or another way): forget it.
    pub(super) fn done(&mut self, connection: ConnectionId) {
        self.dials.remove(&connection);
    }

    /// A dial failed: if it was a LAN dial with attempts left, try again after a random
    /// 0.25-1 s times the attempt.
    pub(super) fn failed(&mut self, connection: ConnectionId, now: Instant) {
        let Some((peer, attempt)) = self.dials.remove(&connection) else { return };
        if attempt >= ATTEMPTS {
            tracing::debug!(%peer, attempt, "giving up dialling a LAN peer until it is needed or announced again");
            return;
        }
        let delay = Duration::from_millis(rand::rng().random_range(250..=1000) * u64::from(attempt));
        self.due.push((now + delay, peer, attempt + 1));
    }

    /// Dials the retries whose time has come.
    pub(super) fn tick(&mut self, swarm: &mut Swarm<Behaviour>, addresses: &Addresses, now: Instant) {
        let (ready, waiting): (Vec<_>, Vec<_>) = self.due.drain(..).partition(|(at, _, _)| *at <= now);
        self.due = waiting;
        for (_, peer, attempt) in ready {
            self.dial_attempt(swarm, addresses, peer, attempt);
        }
    }
}

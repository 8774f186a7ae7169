//! The connections kept to bootstrap peers: dialled at start, kept open, and dialled again
//! with back-off after they close or fail. The swarm task hands this its swarm to dial with
//! and its connection events; the slots are this module's alone.

use std::time::{Duration, Instant};

use libp2p::{
    Multiaddr, PeerId, Swarm,
    swarm::{
        ConnectionId, DialError,
        dial_opts::{DialOpts, PeerCondition},
    },
};

use super::backoff::{BACKOFF_MIN, next_backoff};
use crate::{streams::peer_of_addr, swarm::Behaviour};

/// A bootstrap connection that lived at least this long resets the back-off.
const STABLE: Duration = Duration::from_secs(30);

/// The bootstrap peers and the state of our connection to each.
pub(super) struct Bootstrap {
    slots: Vec<Slot>,
}

/// A bootstrap peer we keep a connection to.
struct Slot {
    addr: Multiaddr,
    /// From the address, or learnt when the first connection is made.
    peer: Option<PeerId>,
    dialing: Option<ConnectionId>,
    connected_since: Option<Instant>,
    retry_at: Option<Instant>,
    backoff: Duration,
}

impl Bootstrap {
    /// Every address is due to be dialled at once.
    pub(super) fn new(addrs: &[Multiaddr]) -> Self {
        let slots = addrs
            .iter()
            .map(|addr| Slot {
                addr: addr.clone(),
                peer: peer_of_addr(addr),
                dialing: None,
                connected_since: None,
                retry_at: Some(Instant::now()),
                backoff: BACKOFF_MIN,
            })
            .collect();
        Bootstrap { slots }
    }

    /// The bootstrap addresses whose peer ID is known.
    pub(super) fn known(&self) -> Vec<(PeerId, Multiaddr)> {
        self.slots.iter().filter_map(|b| Some((b.peer?, b.addr.clone()))).collect()
    }

    /// The bootstrap dial under way to `peer`, if any: reaching that peer for streams waits
    /// for it rather than dialling the same address again (two connections, both kept open).
    pub(super) fn dialing(&self, peer: PeerId) -> Option<ConnectionId> {
        self.slots.iter().find(|b| b.peer == Some(peer)).and_then(|b| b.dialing)
    }

    /// Dials the bootstrap peers that are due.
    pub(super) fn tick(&mut self, swarm: &mut Swarm<Behaviour>, now: Instant) {
        for b in &mut self.slots {
            if b.dialing.is_some() || b.connected_since.is_some() || b.retry_at.is_none_or(|t| t > now) {
                continue;
            }
            b.retry_at = None;
            let opts = match b.peer {
                Some(peer) if swarm.is_connected(&peer) => {
                    b.connected_since = Some(now);
                    continue;
                }
                Some(peer) => DialOpts::peer_id(peer)
                    .addresses(vec![b.addr.clone()])
                    .condition(PeerCondition::DisconnectedAndNotDialing)
                    .build(),
                None => DialOpts::unknown_peer_id().address(b.addr.clone()).build(),
            };
            let id = opts.connection_id();
            match swarm.dial(opts) {
                Ok(()) => b.dialing = Some(id),
                Err(e) => {
                    tracing::debug!(bootstrap = %b.addr, error = %e, "cannot dial bootstrap peer");
                    b.retry_at = Some(now + b.backoff);
                    b.backoff = next_backoff(b.backoff);
                }
            }
        }
    }

    /// A connection to `peer` was established; true if `peer` is a bootstrap peer (its
    /// connections are to be kept open).
    pub(super) fn established(&mut self, peer: PeerId, connection: ConnectionId) -> bool {
        let mut bootstrap = false;
        for b in &mut self.slots {
            if b.dialing == Some(connection) || (b.peer == Some(peer) && b.connected_since.is_none()) {
                b.dialing = None;
                b.peer = Some(peer);
                b.connected_since = Some(Instant::now());
                bootstrap = true;
            }
        }
        bootstrap
    }

    /// The last connection to `peer` closed: a bootstrap peer is dialled again after its
    /// back-off (reset if the connection was stable).
    pub(super) fn closed(&mut self, peer: PeerId) {
        let now = Instant::now();
        for b in &mut self.slots {
            if b.peer != Some(peer) {
                continue;
            }
            if let Some(since) = b.connected_since.take() {
                if now - since >= STABLE {
                    b.backoff = BACKOFF_MIN;
                }
                b.retry_at = Some(now + b.backoff);
                b.backoff = next_backoff(b.backoff);
            }
        }
    }

    /// A dial failed: if it was a bootstrap dial, it is retried after the back-off.
    pub(super) fn dial_failed(&mut self, connection: ConnectionId, error: &DialError) {
        let now = Instant::now();
        for b in &mut self.slots {
            if b.dialing == Some(connection) {
                tracing::debug!(bootstrap = %b.addr, %error, retry_in = ?b.backoff, "cannot reach bootstrap peer");
                b.dialing = None;
                b.retry_at = Some(now + b.backoff);
                b.backoff = next_backoff(b.backoff);
            }
        }
    }
}

//! The slots this node reserves on its relays: reserved on start, renewed by libp2p, taken
//! again with back-off after a loss (e.g. the relay restarted), and given up while this node
//! is reachable without a relay (`reachability`). The swarm task hands this its swarm and the
//! peer table (where a reservation shows in `/peers`) with each event; the slots are this
//! module's alone.

use std::time::{Duration, Instant};

use libp2p::{Multiaddr, PeerId, Swarm, core::transport::ListenerId, multiaddr::Protocol};

use super::backoff::{BACKOFF_MIN, next_backoff};
use crate::{peer_table::PeerTable, streams::peer_of_addr, swarm::Behaviour};

/// The configured relays and our slot on each.
pub(super) struct Relays {
    slots: Vec<Slot>,
    /// Whether we want slots (false while reachable without a relay).
    reserve: bool,
}

/// A relay we reserve a slot on.
struct Slot {
    addr: Multiaddr,
    peer: PeerId,
    listener: Option<ListenerId>,
    /// The relay accepted the listener's reservation (none in flight): only then may the
    /// listener be removed, as libp2p's relay client panics on an answer to a reservation whose
    /// listener is gone.
    confirmed: bool,
    retry_at: Option<Instant>,
    backoff: Duration,
}

impl Relays {
    /// Relay addresses end in `/p2p/<relay>` (checked at start); a slot is due at once on each.
    pub(super) fn new(addrs: &[Multiaddr]) -> Self {
        let slots = addrs
            .iter()
            .filter_map(|a| {
                Some(Slot {
                    peer: peer_of_addr(a)?,
                    addr: a.clone(),
                    listener: None,
                    confirmed: false,
                    retry_at: Some(Instant::now()),
                    backoff: BACKOFF_MIN,
                })
            })
            .collect();
        Relays { slots, reserve: true }
    }

    /// Each relay's peer and address.
    pub(super) fn known(&self) -> Vec<(PeerId, Multiaddr)> {
        self.slots.iter().map(|r| (r.peer, r.addr.clone())).collect()
    }

    pub(super) fn is_relay(&self, peer: PeerId) -> bool {
        self.slots.iter().any(|r| r.peer == peer)
    }

    /// Addresses to reach `peer` through every relay.
    pub(super) fn circuits(&self, peer: PeerId) -> Vec<Multiaddr> {
        let through = self.slots.iter().filter(|r| r.peer != peer);
        through.map(|r| r.addr.clone().with(Protocol::P2pCircuit).with(Protocol::P2p(peer))).collect()
    }

    /// Some relay is being dialled: its reservation listener exists but no connection yet.
    pub(super) fn connecting(&self, swarm: &Swarm<Behaviour>) -> bool {
        self.slots.iter().any(|r| r.listener.is_some() && !swarm.is_connected(&r.peer))
    }

    /// Asks for the slots that are due.
    pub(super) fn tick(&mut self, swarm: &mut Swarm<Behaviour>, now: Instant) {
        if !self.reserve {
            return;
        }
        for r in &mut self.slots {
            if r.listener.is_some() || r.retry_at.is_none_or(|t| t > now) {
                continue;
            }
            r.retry_at = None;
            let addr = r.addr.clone().with(Protocol::P2pCircuit);
            match swarm.listen_on(addr.clone()) {
                Ok(id) => {
                    tracing::debug!(relay = %r.addr, "reserving a relay slot");
                    r.listener = Some(id);
                }
                Err(e) => {
                    tracing::warn!(relay = %r.addr, error = %e, "cannot reserve a relay slot");
                    r.retry_at = Some(now + r.backoff);
                    r.backoff = next_backoff(r.backoff);
                }
            }
        }
    }

    /// A listener closed; true if it held a relay slot (now lost, and asked for again after
    /// the back-off if we still want it).
    pub(super) fn listener_gone(
        &mut self,
        listener_id: ListenerId,
        error: Option<std::io::Error>,
        peers: &PeerTable,
    ) -> bool {
        let Some(r) = self.slots.iter_mut().find(|r| r.listener == Some(listener_id)) else { return false };
        r.listener = None;
        r.confirmed = false;
        peers.set_reserved(r.peer, false);
        if self.reserve {
            tracing::warn!(relay = %r.addr, error = ?error.map(|e| e.to_string()), retry_in = ?r.backoff, "relay reservation lost");
            r.retry_at = Some(Instant::now() + r.backoff);
            r.backoff = next_backoff(r.backoff);
        }
        true
    }

    /// `relay` accepted (or renewed) our reservation.
    pub(super) fn accepted(&mut self, relay: PeerId, renewal: bool, swarm: &mut Swarm<Behaviour>, peers: &PeerTable) {
        if !renewal {
            tracing::info!(%relay, "relay slot reserved");
        }
        for r in &mut self.slots {
            if r.peer == relay {
                r.backoff = BACKOFF_MIN;
                r.confirmed = r.listener.is_some();
            }
        }
        peers.set_reserved(relay, true);
        // Given up while the request was in flight (see `set_reserve`): release it now.
        if !self.reserve {
            self.release(swarm, peers);
        }
    }

    /// Takes slots (`reserve`) or gives them up.
    pub(super) fn set_reserve(&mut self, reserve: bool, swarm: &mut Swarm<Behaviour>, peers: &PeerTable) {
        if reserve == self.reserve {
            return;
        }
        self.reserve = reserve;
        if !reserve {
            self.release(swarm, peers);
            return;
        }
        for r in &mut self.slots {
            r.retry_at = Some(Instant::now());
            r.backoff = BACKOFF_MIN;
        }
    }

    /// Removes the relay listeners whose reservation is confirmed; one still in flight is
    /// released when the relay answers.
    fn release(&mut self, swarm: &mut Swarm<Behaviour>, peers: &PeerTable) {
        for r in &mut self.slots {
            if !r.confirmed {
                continue;
            }
            if let Some(id) = r.listener.take() {
                tracing::info!(relay = %r.addr, "publicly reachable: releasing the relay slot");
                r.confirmed = false;
                swarm.remove_listener(id);
                // (The listener's closing no longer finds its slot: say it here.)
                peers.set_reserved(r.peer, false);
            }
        }
    }
}

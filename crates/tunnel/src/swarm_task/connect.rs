//! Reaching a node for the handles (`Command::Connect`).
//!
//! - **Two legs.** Reaching a peer dials its known direct addresses and its relay circuits as
//!   two dials: a black-holed direct address hangs until the transport timeout (20 s), and a
//!   relay that was down a moment ago must not wait for it. Each new request re-dials a leg
//!   that is not under way; the waiters are answered by the first connection to the peer (by
//!   these dials or any other), and failed only when both legs failed. A connection that
//!   missed pings does not count as connected: a fresh path is dialled beside it. A bootstrap
//!   peer's dial under way (at start, or after its connection closed) is taken as the direct
//!   leg rather than dialled again: two connections would both be kept open for good; should
//!   it fail, the direct leg is dialled afresh once.
//! - **Relays still connecting.** A dial through a relay needs a connection to the relay;
//!   while the agent's own connection to a relay is still being made (its reservation, at
//!   start), libp2p's relay client cancels the circuit instead of waiting for it. Such a
//!   failure leaves the waiters pending, and the relayed leg is dialled again as soon as a
//!   relay connects (the waiters' own timeout bounds the wait); when the last relay being
//!   connected is given up, the waiters left with no dial learn it.

use std::collections::HashMap;

use libp2p::{
    Multiaddr, PeerId, Swarm,
    swarm::{
        ConnectionId,
        dial_opts::{DialOpts, PeerCondition},
    },
};
use tokio::sync::oneshot;

use super::{addresses::Addresses, bootstrap::Bootstrap, relays::Relays};
use crate::{streams::Control, swarm::Behaviour};

/// What reaching a peer dials with, lent by the swarm task for one call.
pub(super) struct Dial<'a> {
    pub swarm: &'a mut Swarm<Behaviour>,
    pub addresses: &'a Addresses,
    pub relays: &'a Relays,
    pub control: &'a Control,
    pub bootstrap: &'a Bootstrap,
}

type Reply = oneshot::Sender<Result<(), String>>;

/// The handles waiting to reach a peer, and the dials under way for them.
#[derive(Default)]
pub(super) struct Connects {
    waiting: HashMap<PeerId, Vec<Reply>>,
    dials: HashMap<PeerId, Legs>,
}

/// The two dials that reach a peer for streams (None: not under way).
#[derive(Default)]
struct Legs {
    direct: Option<ConnectionId>,
    relayed: Option<ConnectionId>,
    /// The direct leg is the bootstrap module's dial, taken over.
    adopted: bool,
}

impl Legs {
    fn is_empty(&self) -> bool {
        self.direct.is_none() && self.relayed.is_none()
    }

    fn contains(&self, connection: ConnectionId) -> bool {
        self.direct == Some(connection) || self.relayed == Some(connection)
    }

    fn remove(&mut self, connection: ConnectionId) {
        self.direct = self.direct.filter(|id| *id != connection);
        self.relayed = self.relayed.filter(|id| *id != connection);
    }
}

impl Connects {
    /// Reaches `peer` for a stream: replies when a connection is established, or when both
    /// dials failed.
    pub(super) fn request(&mut self, peer: PeerId, reply: Reply, d: Dial<'_>) {
        if d.control.is_alive(&peer) {
            let _ = reply.send(Ok(()));
            return;
        }
        self.waiting.entry(peer).or_default().push(reply);
        self.dial_legs(peer, d);
        if self.dials.get(&peer).is_none_or(Legs::is_empty) {
            self.fail(peer, "no known address and no relay configured".into());
        }
    }

    /// Dials the legs to `peer` that are not under way.
    fn dial_legs(&mut self, peer: PeerId, d: Dial<'_>) {
        let direct = d.addresses.of(&peer);
        let relayed = d.relays.circuits(peer);
        let mut legs = self.dials.remove(&peer).unwrap_or_default();
        if legs.direct.is_none()
            && let Some(dialing) = d.bootstrap.dialing(peer)
        {
            (legs.direct, legs.adopted) = (Some(dialing), true);
        }
        legs.direct = legs.direct.or_else(|| dial_leg(d.swarm, peer, direct));
        legs.relayed = legs.relayed.or_else(|| dial_leg(d.swarm, peer, relayed));
        if !legs.is_empty() {
            self.dials.insert(peer, legs);
        }
    }

    /// A connection to `peer` was established: its waiters are answered; if it was one of our
    /// dials, that leg is over; a relay's lets the peers waiting for one be dialled through it.
    pub(super) fn established(&mut self, peer: PeerId, connection: ConnectionId, d: Dial<'_>) {
        if let Some(waiters) = self.waiting.remove(&peer) {
            for w in waiters {
                let _ = w.send(Ok(()));
            }
        }
        self.dial_done(peer, connection);
        if !d.relays.is_relay(peer) {
            return;
        }
        let waiting: Vec<PeerId> = self
            .waiting
            .keys()
            .filter(|p| !d.control.is_alive(p))
            .filter(|p| self.dials.get(*p).is_none_or(|legs| legs.relayed.is_none()))
            .copied()
            .collect();
        for p in waiting {
            self.dial_legs(p, Dial { swarm: &mut *d.swarm, ..d });
        }
    }

    fn dial_done(&mut self, peer: PeerId, connection: ConnectionId) {
        if let Some(legs) = self.dials.get_mut(&peer) {
            legs.remove(connection);
            if legs.is_empty() {
                self.dials.remove(&peer);
            }
        }
    }

    /// A dial to `peer` failed: when it was the last leg under way and no live connection is
    /// left, the waiters learn why, unless a relay connection is still being made (then they
    /// wait for it).
    pub(super) fn dial_failed(&mut self, peer: PeerId, connection: ConnectionId, error: String, d: Dial<'_>) {
        let Some(legs) = self.dials.get_mut(&peer).filter(|legs| legs.contains(connection)) else {
            return;
        };
        if legs.adopted && legs.direct == Some(connection) {
            // The bootstrap dial failed: the direct leg gets a dial of its own, once.
            legs.direct = dial_leg(d.swarm, peer, d.addresses.of(&peer));
            legs.adopted = false;
            if legs.direct.is_some() {
                return;
            }
        }
        self.dial_done(peer, connection);
        if self.dials.contains_key(&peer) || d.control.is_alive(&peer) {
            return;
        }
        if d.relays.connecting(d.swarm) {
            tracing::debug!(%peer, %error, "cannot reach the node yet: again once a relay is connected");
            return;
        }
        self.fail(peer, error);
    }

    /// A relay's reservation is gone: peers left waiting for a relay connection, with no dial
    /// under way, get an error once no relay connection is being made any more.
    pub(super) fn relay_gone(&mut self, d: Dial<'_>) {
        if d.relays.connecting(d.swarm) {
            return;
        }
        let stranded: Vec<PeerId> = self.waiting.keys().filter(|p| !self.dials.contains_key(*p)).copied().collect();
        for p in stranded {
            self.fail(p, "no relay could be reached".into());
        }
    }

    /// The tunnel stops: every waiter learns it.
    pub(super) fn stop(&mut self) {
        for (_, waiters) in self.waiting.drain() {
            for w in waiters {
                let _ = w.send(Err("tunnel stopped".into()));
            }
        }
    }

    fn fail(&mut self, peer: PeerId, reason: String) {
        if let Some(waiters) = self.waiting.remove(&peer) {
            for w in waiters {
                let _ = w.send(Err(reason.clone()));
            }
        }
    }
}

fn dial_leg(swarm: &mut Swarm<Behaviour>, peer: PeerId, addrs: Vec<Multiaddr>) -> Option<ConnectionId> {
    if addrs.is_empty() {
        return None;
    }
    let opts = DialOpts::peer_id(peer).addresses(addrs).condition(PeerCondition::Always).build();
    let id = opts.connection_id();
    match swarm.dial(opts) {
        Ok(()) => Some(id),
        Err(e) => {
            tracing::debug!(%peer, error = %e, "cannot dial");
            None
        }
    }
}

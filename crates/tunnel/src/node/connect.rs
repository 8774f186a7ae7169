//! Reaching a node for the handles (`Command::Connect`).
//!
//! - **Two legs.** Reaching a peer dials its known direct addresses and its relay circuits as
//!   two dials: a black-holed direct address hangs until the transport timeout (20 s), and a
//!   relay that was down a moment ago must not wait for it. Each new request re-dials a leg
//!   that is not under way; the waiters are answered by the first connection to the peer (by
//!   these dials or any other), and failed only when both legs failed. A connection that
//!   missed pings does not count as connected: a fresh path is dialled beside it.
//! - **Relays still connecting.** A dial through a relay needs a connection to the relay;
//!   while the agent's own connection to a relay is still being made (its reservation, at
//!   start), libp2p's relay client cancels the circuit instead of waiting for it. Such a
//!   failure leaves the waiters pending, and the relayed leg is dialled again as soon as a
//!   relay connects (the waiters' own timeout bounds the wait); when the last relay being
//!   connected is given up, the waiters left with no dial learn it.

use libp2p::{
    Multiaddr, PeerId,
    swarm::{
        ConnectionId,
        dial_opts::{DialOpts, PeerCondition},
    },
};
use tokio::sync::oneshot;

use super::Task;

/// The two dials that reach a peer for streams (None: not under way).
#[derive(Default)]
pub(super) struct Legs {
    direct: Option<ConnectionId>,
    relayed: Option<ConnectionId>,
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

impl Task {
    /// Reaches `peer` for a stream: replies when a connection is established, or when both
    /// dials failed.
    pub(super) fn connect(&mut self, peer: PeerId, reply: oneshot::Sender<Result<(), String>>) {
        if self.inner.control.is_alive(&peer) {
            let _ = reply.send(Ok(()));
            return;
        }
        self.pending_connects.entry(peer).or_default().push(reply);
        self.dial_legs(peer);
        if self.connect_dials.get(&peer).is_none_or(Legs::is_empty) {
            self.fail_connects(peer, "no known address and no relay configured".into());
        }
    }

    /// Dials the legs to `peer` that are not under way.
    fn dial_legs(&mut self, peer: PeerId) {
        let direct = self.addresses.get(&peer).cloned().unwrap_or_default();
        let relayed = self.relay_circuits(peer);
        let mut legs = self.connect_dials.remove(&peer).unwrap_or_default();
        legs.direct = legs.direct.or_else(|| self.dial_leg(peer, direct));
        legs.relayed = legs.relayed.or_else(|| self.dial_leg(peer, relayed));
        if !legs.is_empty() {
            self.connect_dials.insert(peer, legs);
        }
    }

    fn dial_leg(&mut self, peer: PeerId, addrs: Vec<Multiaddr>) -> Option<ConnectionId> {
        if addrs.is_empty() {
            return None;
        }
        let opts = DialOpts::peer_id(peer).addresses(addrs).condition(PeerCondition::Always).build();
        let id = opts.connection_id();
        match self.swarm.dial(opts) {
            Ok(()) => Some(id),
            Err(e) => {
                tracing::debug!(%peer, error = %e, "cannot dial");
                None
            }
        }
    }

    /// A connection to `peer` was established: if it was one of our dials, that leg is over;
    /// a relay's lets the peers waiting for one be dialled through it.
    pub(super) fn connect_established(&mut self, peer: PeerId, connection: ConnectionId) {
        self.connect_dial_done(peer, connection);
        if !self.relays.iter().any(|r| r.peer == peer) {
            return;
        }
        let waiting: Vec<PeerId> = self
            .pending_connects
            .keys()
            .filter(|p| !self.inner.control.is_alive(p))
            .filter(|p| self.connect_dials.get(*p).is_none_or(|legs| legs.relayed.is_none()))
            .copied()
            .collect();
        for p in waiting {
            self.dial_legs(p);
        }
    }

    fn connect_dial_done(&mut self, peer: PeerId, connection: ConnectionId) {
        if let Some(legs) = self.connect_dials.get_mut(&peer) {
            legs.remove(connection);
            if legs.is_empty() {
                self.connect_dials.remove(&peer);
            }
        }
    }

    /// A dial to `peer` failed: when it was the last leg under way and no live connection is
    /// left, the waiters learn why, unless a relay connection is still being made (then they
    /// wait for it).
    pub(super) fn connect_dial_failed(&mut self, peer: PeerId, connection: ConnectionId, error: String) {
        if !self.connect_dials.get(&peer).is_some_and(|legs| legs.contains(connection)) {
            return;
        }
        self.connect_dial_done(peer, connection);
        if self.connect_dials.contains_key(&peer) || self.inner.control.is_alive(&peer) {
            return;
        }
        if self.relay_connecting() {
            tracing::debug!(%peer, %error, "cannot reach the node yet: again once a relay is connected");
            return;
        }
        self.fail_connects(peer, error);
    }

    /// A relay's reservation is gone: peers left waiting for a relay connection, with no dial
    /// under way, get an error once no relay connection is being made any more.
    pub(super) fn connect_relay_gone(&mut self) {
        if self.relay_connecting() {
            return;
        }
        let stranded: Vec<PeerId> =
            self.pending_connects.keys().filter(|p| !self.connect_dials.contains_key(*p)).copied().collect();
        for p in stranded {
            self.fail_connects(p, "no relay could be reached".into());
        }
    }

    /// Some relay is being dialled: its reservation listener exists but no connection yet.
    fn relay_connecting(&self) -> bool {
        self.relays.iter().any(|r| r.listener.is_some() && !self.swarm.is_connected(&r.peer))
    }
}

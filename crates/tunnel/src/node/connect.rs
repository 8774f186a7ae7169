//! Reaching a node for the handles (`Command::Connect`): one dial at a time per node, to the
//! addresses we know and through every relay at once, answering every waiter when a connection
//! to the node comes up (by this dial or any other) or when this dial fails.
//!
//! A dial through a relay needs a connection to the relay; while the agent's own connection to
//! a relay is still being made (its reservation, at start), libp2p's relay client cancels the
//! circuit instead of waiting for it. Such a failure leaves the waiters pending and the node is
//! dialled again as soon as a relay connects (the waiters' own timeout bounds the wait).

use libp2p::{
    PeerId,
    swarm::{
        ConnectionId, DialError,
        dial_opts::{DialOpts, PeerCondition},
    },
};
use tokio::sync::oneshot;

use super::Task;

impl Task {
    pub(super) fn connect(&mut self, peer: PeerId, reply: oneshot::Sender<Result<(), String>>) {
        if self.swarm.is_connected(&peer) {
            let _ = reply.send(Ok(()));
            return;
        }
        self.pending_connects.entry(peer).or_default().push(reply);
        if !self.connect_dials.values().any(|p| *p == peer) {
            self.connect_dial(peer);
        }
    }

    fn connect_dial(&mut self, peer: PeerId) {
        let addrs = self.dial_addresses(peer);
        if addrs.is_empty() {
            self.fail_connects(peer, "no known address and no relay configured".into());
            return;
        }
        // Even while another dial is under way: that one may be a hole punch or a dial back to
        // an address that only times out (20 s), and this one also goes through every relay.
        let opts = DialOpts::peer_id(peer).addresses(addrs).condition(PeerCondition::Disconnected).build();
        let id = opts.connection_id();
        match self.swarm.dial(opts) {
            Ok(()) => {
                self.connect_dials.insert(id, peer);
            }
            Err(e) => self.fail_connects(peer, e.to_string()),
        }
    }

    /// A dial failed: if it was one of ours and the node is still not connected, its waiters
    /// get the error, unless a relay connection is under way (then they wait for it).
    pub(super) fn connect_dial_failed(&mut self, connection: ConnectionId, error: &DialError) {
        let Some(peer) = self.connect_dials.remove(&connection) else { return };
        if self.swarm.is_connected(&peer) {
            return;
        }
        if self.relay_connecting() {
            tracing::debug!(%peer, %error, "cannot reach the node yet: again once a relay is connected");
            return;
        }
        self.fail_connects(peer, error.to_string());
    }

    /// A connection came up: the dial that made it is done; a relay's lets the nodes waiting
    /// for one be dialled through it.
    pub(super) fn connect_established(&mut self, peer: PeerId, connection: ConnectionId) {
        self.connect_dials.remove(&connection);
        if !self.relays.iter().any(|r| r.peer == peer) {
            return;
        }
        let waiting: Vec<PeerId> = self
            .pending_connects
            .keys()
            .filter(|p| !self.swarm.is_connected(p) && !self.connect_dials.values().any(|d| d == *p))
            .copied()
            .collect();
        for p in waiting {
            self.connect_dial(p);
        }
    }

    /// A relay's reservation is gone: nodes left waiting for a relay connection get an error
    /// once no relay connection is under way any more.
    pub(super) fn connect_relay_gone(&mut self) {
        if self.relay_connecting() {
            return;
        }
        let stranded: Vec<PeerId> =
            self.pending_connects.keys().filter(|p| !self.connect_dials.values().any(|d| d == *p)).copied().collect();
        for p in stranded {
            self.fail_connects(p, "no relay could be reached".into());
        }
    }

    /// Some relay is being dialled: its reservation listener exists but no connection yet.
    fn relay_connecting(&self) -> bool {
        self.relays.iter().any(|r| r.listener.is_some() && !self.swarm.is_connected(&r.peer))
    }
}

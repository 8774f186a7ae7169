//! The connections the swarm task keeps to bootstrap peers: dialled at start, kept open (and
//! marked so, for the hello), and dialled again with back-off after they close or fail.

use std::time::{Duration, Instant};

use libp2p::{
    Multiaddr, PeerId,
    swarm::{
        ConnectionId, DialError,
        dial_opts::{DialOpts, PeerCondition},
    },
};

use super::{BACKOFF_MIN, Task, next_backoff, peer_of_addr};

/// A bootstrap connection that lived at least this long resets the back-off.
const STABLE: Duration = Duration::from_secs(30);

/// A bootstrap peer we keep a connection to.
pub(super) struct BootstrapSlot {
    pub(super) addr: Multiaddr,
    pub(super) peer: Option<PeerId>,
    dialing: Option<ConnectionId>,
    connected_since: Option<Instant>,
    retry_at: Option<Instant>,
    backoff: Duration,
}

impl BootstrapSlot {
    pub(super) fn new(addr: &Multiaddr) -> Self {
        BootstrapSlot {
            addr: addr.clone(),
            peer: peer_of_addr(addr),
            dialing: None,
            connected_since: None,
            retry_at: Some(Instant::now()),
            backoff: BACKOFF_MIN,
        }
    }
}

impl Task {
    /// Dials the bootstrap peers that are due.
    pub(super) fn bootstrap_tick(&mut self, now: Instant) {
        for i in 0..self.bootstrap.len() {
            let b = &mut self.bootstrap[i];
            if b.dialing.is_some() || b.connected_since.is_some() || b.retry_at.is_none_or(|t| t > now) {
                continue;
            }
            b.retry_at = None;
            let opts = match b.peer {
                Some(peer) if self.swarm.is_connected(&peer) => {
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
            match self.swarm.dial(opts) {
                Ok(()) => b.dialing = Some(id),
                Err(e) => {
                    tracing::debug!(bootstrap = %b.addr, error = %e, "cannot dial bootstrap peer");
                    b.retry_at = Some(now + b.backoff);
                    b.backoff = next_backoff(b.backoff);
                }
            }
        }
    }

    /// A connection to `peer` was established: a bootstrap peer's is kept open.
    pub(super) fn bootstrap_established(&mut self, peer: PeerId, connection: ConnectionId) {
        for b in &mut self.bootstrap {
            if b.dialing == Some(connection) || (b.peer == Some(peer) && b.connected_since.is_none()) {
                b.dialing = None;
                b.peer = Some(peer);
                b.connected_since = Some(Instant::now());
                self.swarm.behaviour_mut().streams.set_keep_alive(peer, true);
                self.peers.keep_open(peer);
            }
        }
    }

    /// The last connection to `peer` closed: a bootstrap peer is dialled again after its
    /// back-off (reset if the connection was stable).
    pub(super) fn bootstrap_closed(&mut self, peer: PeerId) {
        let now = Instant::now();
        for b in &mut self.bootstrap {
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
    pub(super) fn bootstrap_dial_failed(&mut self, connection: ConnectionId, error: &DialError) {
        let now = Instant::now();
        for b in &mut self.bootstrap {
            if b.dialing == Some(connection) {
                tracing::debug!(bootstrap = %b.addr, %error, retry_in = ?b.backoff, "cannot reach bootstrap peer");
                b.dialing = None;
                b.retry_at = Some(now + b.backoff);
                b.backoff = next_backoff(b.backoff);
            }
        }
    }
}

//! The inbound proxy streams this node holds open for its peers, against
//! `tunnel.maxInboundStreamsPerPeer` and `tunnel.maxInboundStreams`: each holds a socket to a
//! local endpoint, so without a bound one hostile or buggy peer could take every descriptor
//! the agent has. A stream over a limit is refused with a reply (`Reply::Busy`); the peer's
//! other streams, and every other peer's, are served as before.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, MutexGuard},
};

use libp2p::PeerId;

use crate::metrics::Limit;

/// The counts, and the limits they are held to.
pub(crate) struct InboundStreams {
    per_peer: usize,
    total: usize,
    held: Mutex<Held>,
}

#[derive(Default)]
struct Held {
    total: usize,
    /// Peers holding at least one stream (an entry goes with its last stream).
    per_peer: HashMap<PeerId, usize>,
}

/// One admitted inbound stream; its slot is freed when dropped.
pub(crate) struct InboundPermit {
    streams: Arc<InboundStreams>,
    peer: PeerId,
}

impl InboundStreams {
    /// Limits of at least one stream (a zero is taken as one: a limit, never "none served").
    pub(crate) fn new(per_peer: usize, total: usize) -> Arc<Self> {
        Arc::new(InboundStreams { per_peer: per_peer.max(1), total: total.max(1), held: Mutex::default() })
    }

    fn held(&self) -> MutexGuard<'_, Held> {
        self.held.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A slot for one more stream from `peer`, or the limit that refuses it.
    pub(crate) fn admit(self: &Arc<Self>, peer: PeerId) -> Result<InboundPermit, Limit> {
        let mut held = self.held();
        let of_peer = held.per_peer.get(&peer).copied().unwrap_or(0);
        if of_peer >= self.per_peer {
            return Err(Limit::StreamsPerPeer);
        }
        if held.total >= self.total {
            return Err(Limit::Streams);
        }
        held.total += 1;
        held.per_peer.insert(peer, of_peer + 1);
        Ok(InboundPermit { streams: self.clone(), peer })
    }

    /// The limit `limit` is set to, for log lines.
    pub(crate) fn max(&self, limit: Limit) -> usize {
        if limit == Limit::StreamsPerPeer { self.per_peer } else { self.total }
    }

    #[cfg(test)]
    fn counts(&self, peer: PeerId) -> (usize, usize) {
        let held = self.held();
        (held.per_peer.get(&peer).copied().unwrap_or(0), held.total)
    }
}

impl Drop for InboundPermit {
    fn drop(&mut self) {
        let mut held = self.streams.held();
        held.total = held.total.saturating_sub(1);
        if let Some(n) = held.per_peer.get_mut(&self.peer) {
            *n -= 1;
            if *n == 0 {
                held.per_peer.remove(&self.peer);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_peer_is_held_to_its_limit_and_all_to_the_total() {
        let streams = InboundStreams::new(2, 3);
        let (a, b, c) = (PeerId::random(), PeerId::random(), PeerId::random());
        let a1 = streams.admit(a).unwrap();
        let a2 = streams.admit(a).unwrap();
        assert_eq!(streams.admit(a).err(), Some(Limit::StreamsPerPeer));
        let b1 = streams.admit(b).unwrap();
        // Three held: c is refused by the total, a still by its own limit first.
        assert_eq!(streams.admit(c).err(), Some(Limit::Streams));
        assert_eq!(streams.admit(a).err(), Some(Limit::StreamsPerPeer));
        drop(a1);
        assert_eq!(streams.counts(a), (1, 2));
        let c1 = streams.admit(c).unwrap();
        drop((a2, b1, c1));
        assert_eq!(streams.counts(a), (0, 0));
        assert!(streams.held().per_peer.is_empty(), "no entry outlives its peer's last stream");
    }

    #[test]
    fn a_zero_limit_is_one() {
        let streams = InboundStreams::new(0, 0);
        let peer = PeerId::random();
        let held = streams.admit(peer).unwrap();
        assert_eq!(streams.admit(peer).err(), Some(Limit::StreamsPerPeer));
        assert_eq!(streams.admit(PeerId::random()).err(), Some(Limit::Streams));
        drop(held);
        assert!(streams.admit(peer).is_ok());
    }
}

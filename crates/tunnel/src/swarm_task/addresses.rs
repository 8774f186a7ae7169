//! The peers' dialable addresses, learnt from mDNS, identify, our own dials and the
//! configuration; newest first, a bounded number per peer.

use std::collections::HashMap;

use libp2p::{Multiaddr, PeerId, multiaddr::Protocol};

const MAX_ADDRS_PER_PEER: usize = 16;

pub(super) struct Addresses {
    local: PeerId,
    /// QUIC is usable (no PSK).
    quic: bool,
    by_peer: HashMap<PeerId, Vec<Multiaddr>>,
}

impl Addresses {
    pub(super) fn new(local: PeerId, quic: bool) -> Self {
        Addresses { local, quic, by_peer: HashMap::new() }
    }

    /// `peer`'s addresses, newest first.
    pub(super) fn of(&self, peer: &PeerId) -> Vec<Multiaddr> {
        self.by_peer.get(peer).cloned().unwrap_or_default()
    }

    /// Remembers `addr` for `peer` (first), if we can dial it.
    pub(super) fn learn(&mut self, peer: PeerId, addr: Multiaddr) {
        if peer == self.local {
            return;
        }
        // Strip a trailing /p2p/<peer>: dial options carry the peer ID.
        let mut addr = addr;
        if let Some(Protocol::P2p(p)) = addr.iter().last() {
            if p != peer {
                return;
            }
            addr.pop();
        }
        if !self.dialable(&addr) {
            return;
        }
        let list = self.by_peer.entry(peer).or_default();
        if let Some(pos) = list.iter().position(|a| a == &addr) {
            let a = list.remove(pos);
            list.insert(0, a);
        } else {
            list.insert(0, addr);
            list.truncate(MAX_ADDRS_PER_PEER);
        }
    }

    /// Whether we can dial `addr` at all: not an unspecified address, and no QUIC with a PSK.
    pub(super) fn dialable(&self, addr: &Multiaddr) -> bool {
        addr.iter().all(|p| match p {
            Protocol::Ip4(ip) => !ip.is_unspecified(),
            Protocol::Ip6(ip) => !ip.is_unspecified(),
            Protocol::QuicV1 => self.quic,
            _ => true,
        })
    }
}

//! Whether this node needs relay slots. It does not while AutoNAT finds it public or the
//! router maps its port (UPnP IGD: libp2p's `upnp` behaviour confirms the mapped address as an
//! external address, so identify advertises it and peers dial it; here the mapping is logged).
//! Slots are given up then, and taken again when neither holds.

use std::{collections::HashSet, time::Instant};

use libp2p::{Multiaddr, upnp};

use super::{BACKOFF_MIN, Task};

/// Whether this node is reachable without a relay, and why.
#[derive(Default)]
pub(super) struct Reachability {
    /// AutoNAT's verdict.
    autonat_public: bool,
    /// External addresses the router maps to our listen ports.
    mapped: HashSet<Multiaddr>,
}

impl Reachability {
    fn public(&self) -> bool {
        self.autonat_public || !self.mapped.is_empty()
    }
}

impl Task {
    pub(super) fn on_autonat_public(&mut self, public: bool) {
        self.reachability.autonat_public = public;
        self.set_reserve(!self.reachability.public());
    }

    pub(super) fn on_upnp(&mut self, event: upnp::Event) {
        match event {
            upnp::Event::NewExternalAddr { local_addr, external_addr } => {
                tracing::info!(%external_addr, %local_addr, "port mapping made on the router: reachable directly");
                self.reachability.mapped.insert(external_addr);
            }
            upnp::Event::ExpiredExternalAddr { external_addr, .. } => {
                tracing::info!(%external_addr, "port mapping lost");
                self.reachability.mapped.remove(&external_addr);
            }
            upnp::Event::GatewayNotFound => tracing::debug!("no UPnP router found: no port mapping"),
            upnp::Event::NonRoutableGateway => {
                tracing::info!("the UPnP router's external address is not public (double NAT?): no port mapping")
            }
        }
        self.set_reserve(!self.reachability.public());
    }

    /// Takes relay slots (`reserve`) or gives them up.
    fn set_reserve(&mut self, reserve: bool) {
        if reserve == self.reserve {
            return;
        }
        self.reserve = reserve;
        if !reserve {
            self.release_relay_slots();
            return;
        }
        for r in &mut self.relays {
            r.retry_at = Some(Instant::now());
            r.backoff = BACKOFF_MIN;
        }
    }

    /// Removes the relay listeners whose reservation is confirmed; one still in flight is
    /// released when the relay answers.
    pub(super) fn release_relay_slots(&mut self) {
        for r in &mut self.relays {
            if !r.confirmed {
                continue;
            }
            if let Some(id) = r.listener.take() {
                tracing::info!(relay = %r.addr, "publicly reachable: releasing the relay slot");
                r.confirmed = false;
                self.swarm.remove_listener(id);
                // (The listener's closing no longer finds its slot: say it here.)
                self.inner.set_reserved(r.peer, false);
            }
        }
    }
}

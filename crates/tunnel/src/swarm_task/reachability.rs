//! Whether this node needs relay slots. It does not while AutoNAT finds it public or the
//! router maps its port (UPnP IGD: libp2p's `upnp` behaviour confirms the mapped address as an
//! external address, so identify advertises it and peers dial it; here the mapping is logged).
//! Slots are given up then, and taken again when neither holds (`relays`).

use std::collections::HashSet;

use libp2p::{Multiaddr, upnp};

/// Whether this node is reachable without a relay, and why.
#[derive(Default)]
pub(super) struct Reachability {
    /// AutoNAT's verdict.
    autonat_public: bool,
    /// External addresses the router maps to our listen ports.
    mapped: HashSet<Multiaddr>,
}

impl Reachability {
    /// Reachable without a relay.
    pub(super) fn public(&self) -> bool {
        self.autonat_public || !self.mapped.is_empty()
    }

    pub(super) fn on_autonat_public(&mut self, public: bool) {
        self.autonat_public = public;
    }

    pub(super) fn on_upnp(&mut self, event: upnp::Event) {
        match event {
            upnp::Event::NewExternalAddr { local_addr, external_addr } => {
                tracing::info!(%external_addr, %local_addr, "port mapping made on the router: reachable directly");
                self.mapped.insert(external_addr);
            }
            upnp::Event::ExpiredExternalAddr { external_addr, .. } => {
                tracing::info!(%external_addr, "port mapping lost");
                self.mapped.remove(&external_addr);
            }
            upnp::Event::GatewayNotFound => tracing::debug!("no UPnP router found: no port mapping"),
            upnp::Event::NonRoutableGateway => {
                tracing::info!("the UPnP router's external address is not public (double NAT?): no port mapping")
            }
        }
    }
}

//! Port mapping (UPnP IGD): when the router maps the tunnel port, this node is reachable
//! directly through its NAT. libp2p's `upnp` behaviour confirms the mapped address as an
//! external address, so identify advertises it and peers dial it; here the swarm task logs the
//! mapping and stops holding relay slots while one works (a node reachable through its mapping
//! needs no relay), taking them again when the last mapping is lost and AutoNAT has not found
//! the node public.

use std::collections::HashSet;

use libp2p::{Multiaddr, upnp};

use super::Task;

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
}

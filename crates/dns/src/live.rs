//! The DNS settings a config reload changes while the server runs: the
//! TTLs of cluster answers (`serviceTtl`, `negativeTtl`), the upstreams
//! and their time budget (`upstreams`, `upstreamTimeout`), and the
//! clients answered (`allowedClients`); the rate limit needs a restart. Each is read
//! once per query (an atomic load, an `ArcSwap` load), never locked.
//!
//! The address, the cluster domain and the cache size shape what is made at
//! start and need a restart. So does forwarding itself: a server started
//! without upstreams answers cluster names only, and gains upstreams at
//! its next start.

use std::sync::Arc;

use crate::DnsConfig;
use crate::handler::Handler;

/// See the module docs; from [`DnsServer::live_settings`](crate::DnsServer::live_settings).
#[derive(Clone, Debug)]
pub struct DnsLiveSettings {
    handler: Arc<Handler>,
}

impl DnsLiveSettings {
    pub(crate) fn new(handler: Arc<Handler>) -> Self {
        Self { handler }
    }

    /// Whether the server forwards, so that its upstreams can be changed.
    pub fn forwards(&self) -> bool {
        self.handler.forwarder().is_some()
    }

    /// Puts `config`'s TTLs, upstreams and upstream timeout in force for
    /// the queries to come (upstreams only if the server [forwards](Self::forwards)).
    pub fn apply(&self, config: &DnsConfig) {
        self.handler.zone().set_ttls(config.service_ttl, config.negative_ttl);
        self.handler.access().set_allowed(config.allowed_clients.clone());
        if let Some(forwarder) = self.handler.forwarder() {
            forwarder.set(config.upstreams.clone(), config.upstream_timeout);
        }
    }
}

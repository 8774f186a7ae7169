//! `edgemesh_socks_connections_total{result}` (each client's outcome: `ok`,
//! `not_allowed`, `unreachable`, `refused`, `unsupported`, `error`, `auth`
//! (no acceptable method or a wrong login), `malformed` (not SOCKS5, cut
//! short, or too slow), `limit` (over `socks.maxConnections`)) and
//! `edgemesh_socks_connections_active`.

use edgemesh_metrics::{Counter, Family, Gauge, Registry};
use prometheus_client::encoding::EncodeLabelSet;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Outcome {
    result: &'static str,
}

#[derive(Clone, Default)]
pub(crate) struct SocksMetrics {
    connections: Family<Outcome, Counter>,
    pub active: Gauge,
}

impl SocksMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self::default();
        let socks = registry.sub_registry_with_prefix("socks");
        socks.register("connections", "SOCKS5 clients by outcome", metrics.connections.clone());
        socks.register("connections_active", "SOCKS5 clients connected now", metrics.active.clone());
        metrics
    }

    pub fn count(&self, result: &'static str) {
        self.connections.get_or_create(&Outcome { result }).inc();
    }
}

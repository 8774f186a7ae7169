//! The agent's metrics: one Prometheus registry that every component
//! registers into at start-up, served as text on the admin endpoint's
//! `/metrics`.
//!
//! Naming (so existing dashboards and habits carry over):
//! - Everything of ours is under `edgemesh_` ([`AgentRegistry::edgemesh`]);
//!   a component takes a sub-registry (`edgemesh_dns_`, `edgemesh_tcp_`, ...).
//! - Counters are registered without `_total` (the encoder appends it), byte
//!   counters with [`Unit::Bytes`] (`_bytes_total`), durations are
//!   histograms with [`Unit::Seconds`] (`_seconds`).
//! - The process's own metrics keep the names every Prometheus client uses
//!   (`process_cpu_seconds_total`, `process_resident_memory_bytes`,
//!   `process_open_fds`, ...; see [`process`]), so standard panels work.
//! - No label names a client or a connection. Labels whose values come from
//!   the cluster (services, nodes) go through [`BoundedLabels`], which folds
//!   everything past a cap into `other` and counts what it folded.
//!
//! Counters live where the events happen (the proxy's, the DNS server's, the
//! tunnel's own structs hold handles to them); the registry only reads them
//! at scrape time, so a scrape never takes a lock the data path holds.
#![warn(clippy::unwrap_used)] // outside tests: an error with context, or an `expect` naming the invariant

mod classic;
mod labels;
pub mod process;

use std::fmt::Write as _;

pub use prometheus_client;
pub use prometheus_client::metrics::counter::Counter;
pub use prometheus_client::metrics::family::Family;
pub use prometheus_client::metrics::gauge::Gauge;
pub use prometheus_client::metrics::histogram::Histogram;
pub use prometheus_client::registry::{Registry, Unit};

pub use self::labels::{BoundedLabels, OTHER};

/// The `metrics` section of the agent's config (keys in camelCase).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct MetricsConfig {
    /// Services (namespace/name) given their own `service` label; the rest
    /// are reported as `other`.
    pub max_services: usize,
    /// Tunnel peers (nodes) given their own `node` label; the rest are
    /// reported as `other`.
    pub max_nodes: usize,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self { max_services: 500, max_nodes: 1000 }
    }
}

/// The `Content-Type` of [`AgentRegistry::encode`]'s output in OpenMetrics
/// (what Prometheus asks for first).
/// A count or size as a gauge's `i64`, saturating at `i64::MAX` (a gauge
/// never reads negative because a value did not fit).
pub fn gauge_value<T: TryInto<i64>>(n: T) -> i64 {
    n.try_into().unwrap_or(i64::MAX)
}

pub const OPENMETRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// The `Content-Type` of the classic text format (anyone else: curl,
/// `promtool check metrics`).
pub const TEXT_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The two formats `/metrics` serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    OpenMetrics,
    Text,
}

impl Format {
    /// OpenMetrics when the client's `Accept` header asks for it, else the
    /// classic text format.
    pub fn negotiate(accept: Option<&str>) -> Self {
        match accept {
            Some(accept) if accept.contains("application/openmetrics-text") => Format::OpenMetrics,
            _ => Format::Text,
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Format::OpenMetrics => OPENMETRICS_CONTENT_TYPE,
            Format::Text => TEXT_CONTENT_TYPE,
        }
    }
}

/// The registry of a whole agent: the process's metrics at the root, ours
/// under `edgemesh_`.
#[derive(Debug)]
pub struct AgentRegistry {
    root: Registry,
}

impl AgentRegistry {
    /// A registry with the process metrics and `edgemesh_build_info`
    /// registered.
    pub fn new(version: &str) -> Self {
        let mut root = Registry::default();
        root.register_collector(Box::new(process::ProcessCollector::new()));
        process::register_build_info(root.sub_registry_with_prefix("edgemesh"), version);
        Self { root }
    }

    /// The `edgemesh_` sub-registry, for a component to register into (take
    /// a further sub-registry with [`Registry::sub_registry_with_prefix`]).
    pub fn edgemesh(&mut self) -> &mut Registry {
        self.root.sub_registry_with_prefix("edgemesh")
    }

    /// Every metric, in `format`.
    pub fn encode(&self, format: Format) -> String {
        let openmetrics = self.encode_openmetrics();
        match format {
            Format::OpenMetrics => openmetrics,
            Format::Text => classic::from_openmetrics(&openmetrics),
        }
    }

    /// Every metric, in the OpenMetrics text format (ends with `# EOF`).
    fn encode_openmetrics(&self) -> String {
        let mut text = String::with_capacity(16 * 1024);
        if let Err(e) = prometheus_client::encoding::text::encode(&mut text, &self.root) {
            // Encoding into a String fails only if a metric's own encoder
            // does; say so in the output rather than serve half of it silently.
            text.clear();
            let _ = writeln!(text, "# encoding the metrics failed: {e}\n# EOF");
        }
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn components_register_under_the_edgemesh_prefix_and_process_metrics_keep_their_names() {
        let mut registry = AgentRegistry::new("1.2.3");
        let requests: Family<Vec<(String, String)>, Counter> = Family::default();
        registry.edgemesh().sub_registry_with_prefix("dns").register("requests", "DNS requests", requests.clone());
        requests.get_or_create(&vec![("proto".into(), "udp".into())]).inc();
        let text = registry.encode(Format::OpenMetrics);
        assert!(text.contains("edgemesh_dns_requests_total{proto=\"udp\"} 1"), "{text}");
        assert!(text.contains("edgemesh_build_info{version=\"1.2.3\""), "{text}");
        assert!(text.contains("\nprocess_resident_memory_bytes "), "{text}");
        assert!(text.contains("\nprocess_open_fds "), "{text}");
        assert!(text.ends_with("# EOF\n"), "{text}");
        let classic = registry.encode(Format::Text);
        assert!(classic.contains("# TYPE edgemesh_dns_requests_total counter\n"), "{classic}");
        assert!(!classic.contains("# EOF"), "{classic}");
    }
}

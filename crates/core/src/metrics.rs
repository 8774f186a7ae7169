//! Metrics of the source and the registry, for the agent's `/metrics`:
//!
//! - `source_events_total{source,kind,action}`, `source_synced`,
//!   `source_connected`, `source_last_update_timestamp_seconds` and
//!   `source_last_update_age_seconds` ([`SourceMetrics`], counted by the
//!   [`EventSink`](crate::EventSink) the source sends through, so every
//!   source is counted the same way without code of its own);
//! - `registry_generation` and `registry_services` ([`register_registry`],
//!   read from the newest snapshot at scrape time).
//!
//! The connection and the age are computed when scraped (a small
//! [`Collector`]), so an agent whose source went quiet shows the age
//! growing without anything having to tick.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::UNIX_EPOCH;

use edgemesh_metrics::prometheus_client::collector::Collector;
use edgemesh_metrics::prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use edgemesh_metrics::prometheus_client::metrics::gauge::ConstGauge;
use edgemesh_metrics::{Counter, Family, Gauge, Registry, Unit};

use crate::Clock;
use crate::health::{Connection, SourceHealth};
use crate::object::{Object, ObjectKind, RoutingKind, SourceEvent};
use crate::registry::RegistryHandle;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EventLabels {
    source: &'static str,
    kind: &'static str,
    action: &'static str,
}

const KINDS: [ObjectKind; 13] = [
    ObjectKind::Service,
    ObjectKind::EndpointSlice,
    ObjectKind::Endpoints,
    ObjectKind::Node,
    ObjectKind::DestinationRule,
    ObjectKind::Routing(RoutingKind::Gateway),
    ObjectKind::Routing(RoutingKind::HttpRoute),
    ObjectKind::Routing(RoutingKind::GrpcRoute),
    ObjectKind::Routing(RoutingKind::TlsRoute),
    ObjectKind::Routing(RoutingKind::TcpRoute),
    ObjectKind::Routing(RoutingKind::ReferenceGrant),
    ObjectKind::Routing(RoutingKind::IstioGateway),
    ObjectKind::Routing(RoutingKind::VirtualService),
];
const ACTIONS: [&str; 2] = ["apply", "delete"];

/// What one source delivered: events by kind and action, whether its first
/// full view arrived, and when it last sent anything.
pub struct SourceMetrics {
    /// Indexed [kind][action], resolved once.
    events: [[Counter; 2]; KINDS.len()],
    synced: Gauge,
    /// Unix time of the last event, in milliseconds; 0 before the first.
    last_update_ms: AtomicU64,
    health: Arc<SourceHealth>,
    clock: Clock,
}

impl fmt::Debug for SourceMetrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SourceMetrics").field("synced", &self.synced.get()).finish_non_exhaustive()
    }
}

impl SourceMetrics {
    /// Metrics of the source named `source` (`manifests`, `kube`), whose
    /// connection `health` reports, registered under `source_` in
    /// `registry` (the agent's `edgemesh_` one). Times are read from `clock`.
    pub fn register(
        source: &'static str,
        health: Arc<SourceHealth>,
        clock: Clock,
        registry: &mut Registry,
    ) -> Arc<Self> {
        let family = Family::<EventLabels, Counter>::default();
        let events = KINDS.map(|kind| {
            ACTIONS.map(|action| family.get_or_create_owned(&EventLabels { source, kind: kind_name(kind), action }))
        });
        let synced = Gauge::default();
        let registry = registry.sub_registry_with_prefix("source");
        registry.register("events", "Objects changed or deleted by the source, by kind", family);
        registry.register(
            "synced",
            "Whether the source has delivered its first full view (1) or not (0)",
            synced.clone(),
        );
        let metrics = Arc::new(Self { events, synced, last_update_ms: AtomicU64::new(0), health, clock });
        registry.register_collector(Box::new(SourceCollector(metrics.clone())));
        metrics
    }

    /// Counts `event`, sent by the source.
    pub(crate) fn record(&self, event: &SourceEvent) {
        let (kind, action) = match event {
            SourceEvent::Apply(object) => (object_kind(object), 0),
            SourceEvent::Delete(key) => (key.kind, 1),
            SourceEvent::Synced => {
                self.synced.set(1);
                self.touch();
                return;
            }
        };
        let kind = KINDS.iter().position(|k| *k == kind).unwrap_or(0);
        self.events[kind][action].inc();
        self.touch();
    }

    fn touch(&self) {
        let now = self.clock.now().duration_since(UNIX_EPOCH).unwrap_or_default();
        self.last_update_ms.store(u64::try_from(now.as_millis()).unwrap_or(u64::MAX), Ordering::Relaxed);
    }
}

fn object_kind(object: &Object) -> ObjectKind {
    match object {
        Object::Service(_) => ObjectKind::Service,
        Object::Endpoints(set) => set.kind,
        Object::Node(_) => ObjectKind::Node,
        Object::DestinationRule(_) => ObjectKind::DestinationRule,
        Object::Routing(r) => ObjectKind::Routing(r.kind),
    }
}

fn kind_name(kind: ObjectKind) -> &'static str {
    match kind {
        ObjectKind::Service => "Service",
        ObjectKind::EndpointSlice => "EndpointSlice",
        ObjectKind::Endpoints => "Endpoints",
        ObjectKind::Node => "Node",
        ObjectKind::DestinationRule => "DestinationRule",
        ObjectKind::Routing(kind) => kind.label(),
    }
}

/// `source_connected`, `source_last_update_timestamp_seconds` and
/// `source_last_update_age_seconds`, read when scraped (the last two once
/// the source has sent anything).
#[derive(Debug)]
struct SourceCollector(Arc<SourceMetrics>);

impl Collector for SourceCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        let metrics = &self.0;
        let connected = i64::from(metrics.health.report().connection == Connection::Connected);
        let help = "Whether the source's last requests were answered (1) or not (0)";
        gauge(&mut encoder, "connected", help, None, connected)?;
        let last_ms = metrics.last_update_ms.load(Ordering::Relaxed);
        if last_ms == 0 {
            return Ok(());
        }
        let last = last_ms as f64 / 1000.0;
        let now = metrics.clock.now().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs_f64();
        let seconds = Some(&Unit::Seconds);
        gauge(&mut encoder, "last_update_timestamp", "Unix time of the source's last event", seconds, last)?;
        gauge(&mut encoder, "last_update_age", "Seconds since the source's last event", seconds, (now - last).max(0.0))
    }
}

/// Encodes one unlabelled gauge of a collector.
fn gauge<N>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    value: N,
) -> Result<(), fmt::Error>
where
    ConstGauge<N>: EncodeMetric,
{
    let gauge = ConstGauge::new(value);
    gauge.encode(encoder.encode_descriptor(name, help, unit, gauge.metric_type())?)
}

/// Registers `registry_generation` and `registry_services` in `registry`
/// (the agent's `edgemesh_` one), read from the newest of `snapshots` when
/// scraped.
pub fn register_registry(snapshots: RegistryHandle, registry: &mut Registry) {
    registry.register_collector(Box::new(RegistryCollector(snapshots)));
}

#[derive(Debug)]
struct RegistryCollector(RegistryHandle);

impl Collector for RegistryCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        let (generation, services) = {
            let snapshot = self.0.borrow();
            (snapshot.generation, snapshot.len())
        };
        let generation = i64::try_from(generation).unwrap_or(i64::MAX);
        let help = "Generation of the newest published snapshot (grows with every change)";
        gauge(&mut encoder, "registry_generation", help, None, generation)?;
        let services = i64::try_from(services).unwrap_or(i64::MAX);
        gauge(&mut encoder, "registry_services", "Services in the newest published snapshot", None, services)
    }
}

#[cfg(test)]
mod tests;

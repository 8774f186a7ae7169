//! One service's entry: its stored objects joined into what the snapshot
//! serves (ports with their ready backends, endpoints, VIPs, and the policy
//! its annotations ask for). Pure: no registry state.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use super::EndpointSets;
use super::stored::{StoredService, StoredSet};
use crate::app_protocol::{
    AppProtocol, HTTP_PER_TRY_TIMEOUT_ANNOTATION, HTTP_TIMEOUT_ANNOTATION, HttpPolicy, PROTOCOL_ANNOTATION,
};
use crate::object::{DestinationRuleObject, ObjectKind};
use crate::service::{
    DEFAULT_UDP_IDLE_TIMEOUT, HashKey, LbStrategy, Protocol, ServiceKey, TargetPort, UDP_IDLE_TIMEOUT_ANNOTATION,
    parse_duration,
};
use crate::snapshot::{Backend, EndpointInfo, ResolvedPort, ServiceEntry};
use crate::vip::Assigned;

/// What the annotations ask of the proxy.
pub(super) struct Policy {
    strategy: LbStrategy,
    hash_key: HashKey,
    udp_idle_timeout: Duration,
    /// `edgemesh.io/protocol: tcp`: every port stays on L4.
    l4_only: bool,
    http: HttpPolicy,
}

/// What a DestinationRule asks of its service's load balancing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct RulePolicy {
    strategy: Option<LbStrategy>,
    hash_key: Option<HashKey>,
}

impl RulePolicy {
    pub(super) fn of(rule: &DestinationRuleObject) -> Self {
        let hash_key = rule.hash_key.as_deref().and_then(|k| match k.parse() {
            Ok(key) => Some(key),
            Err(e) => {
                // Sources convert only valid keys; a cached copy from elsewhere might not be.
                tracing::warn!(rule = %format!("{}/{}", rule.meta.namespace, rule.meta.name), error = %e, "ignoring the DestinationRule's hash key");
                None
            }
        });
        RulePolicy { strategy: rule.strategy, hash_key }
    }
}

impl Policy {
    /// The service's annotations; where it has none, its DestinationRule's
    /// load balancing (`rule`), else `default_strategy`. The annotation wins:
    /// it is the service's own, edgemesh-specific word, where a rule is the
    /// mesh's (README, "Coming from EdgeMesh").
    pub(super) fn of(
        key: &ServiceKey,
        svc: &StoredService,
        default_strategy: LbStrategy,
        rule: Option<&RulePolicy>,
    ) -> Self {
        let strategy = rule.and_then(|r| r.strategy).unwrap_or(default_strategy);
        let hash_key = rule.and_then(|r| r.hash_key.clone()).unwrap_or(HashKey::SourceIp);
        Policy {
            strategy: annotation(key, svc, LbStrategy::ANNOTATION, strategy, str::parse),
            hash_key: annotation(key, svc, HashKey::ANNOTATION, hash_key, str::parse),
            udp_idle_timeout: annotation(
                key,
                svc,
                UDP_IDLE_TIMEOUT_ANNOTATION,
                DEFAULT_UDP_IDLE_TIMEOUT,
                parse_duration,
            ),
            l4_only: annotation(key, svc, PROTOCOL_ANNOTATION, false, parse_protocol),
            http: HttpPolicy {
                per_try_timeout: annotation(key, svc, HTTP_PER_TRY_TIMEOUT_ANNOTATION, None, |v| {
                    parse_duration(v).map(Some)
                }),
                timeout: annotation(key, svc, HTTP_TIMEOUT_ANNOTATION, None, |v| parse_duration(v).map(Some)),
            },
        }
    }
}

/// `edgemesh.io/protocol`: `tcp` keeps the service on L4 (true); `http`
/// lets its ports' `appProtocol` and names decide (false).
fn parse_protocol(value: &str) -> Result<bool, String> {
    match value.trim().to_ascii_lowercase().as_str() {
        "tcp" => Ok(true),
        "http" | "auto" => Ok(false),
        _ => Err(format!("unknown protocol {value:?} (expected tcp or http)")),
    }
}

/// Whether a service of this `spec.type` is served on node ports.
fn has_node_ports(service_type: &str) -> bool {
    matches!(service_type, "NodePort" | "LoadBalancer")
}

/// Joins a service with its endpoint sets.
pub(super) fn build_entry(
    key: &ServiceKey,
    svc: &StoredService,
    vips: &Assigned,
    policy: Policy,
    sets: Option<&EndpointSets>,
) -> ServiceEntry {
    // EndpointSlices win over legacy Endpoints when both exist (Kubernetes
    // mirrors one into the other).
    let sets: Vec<&StoredSet> = sets.map(|s| s.iter().collect()).unwrap_or_default();
    let has_slices = sets.iter().any(|s| s.key.kind() == ObjectKind::EndpointSlice);
    let sets: Vec<&StoredSet> =
        sets.into_iter().filter(|s| !has_slices || s.key.kind() == ObjectKind::EndpointSlice).collect();

    let ports = svc
        .ports
        .iter()
        .map(|sp| {
            let mut backends: Vec<Backend> = Vec::new();
            for subset in sets.iter().flat_map(|s| &s.subsets) {
                let matched = subset.ports.iter().find(|p| *p.name == *sp.name && p.protocol == sp.protocol);
                let port = match (matched, &sp.target_port) {
                    (Some(p), _) => p.port,
                    (None, TargetPort::Number(n)) if subset.ports.is_empty() => *n,
                    _ => continue,
                };
                for ep in subset.endpoints.iter().filter(|e| e.ready) {
                    for addr in &ep.addresses {
                        backends.push(Backend { addr: SocketAddr::new(*addr, port), node_name: ep.node_name.clone() });
                    }
                }
            }
            backends.sort_by_key(|b| b.addr);
            backends.dedup_by(|a, b| a.addr == b.addr);
            ResolvedPort {
                name: sp.name.clone(),
                protocol: sp.protocol,
                port: sp.port,
                target_port: sp.target_port.clone(),
                node_port: sp.node_port.filter(|_| has_node_ports(&svc.service_type)),
                app_protocol: match sp.protocol {
                    Protocol::Tcp => AppProtocol::classify(sp.app_protocol.as_deref(), &sp.name, policy.l4_only),
                    _ => AppProtocol::Tcp,
                },
                backends: backends.into(),
            }
        })
        .collect();

    let mut endpoints: BTreeMap<IpAddr, EndpointInfo> = BTreeMap::new();
    for ep in sets.iter().flat_map(|s| &s.subsets).flat_map(|s| &s.endpoints) {
        for addr in &ep.addresses {
            let info = endpoints.entry(*addr).or_insert_with(|| EndpointInfo {
                address: *addr,
                ready: false,
                node_name: ep.node_name.clone(),
                hostname: ep.hostname.clone(),
            });
            info.ready |= ep.ready;
        }
    }

    ServiceEntry {
        key: key.clone(),
        vip: vips.vip,
        vip6: vips.vip6,
        cluster_ips: svc.cluster_ips.as_slice().into(),
        headless: svc.headless,
        service_type: svc.service_type.clone(),
        strategy: policy.strategy,
        hash_key: policy.hash_key,
        session_affinity: svc.session_affinity,
        internal_traffic_policy: svc.internal_traffic_policy,
        traffic_distribution: svc.traffic_distribution,
        ip_families: svc.ip_families.clone(),
        ip_family_policy: svc.ip_family_policy,
        udp_idle_timeout: policy.udp_idle_timeout,
        http: policy.http,
        ports,
        endpoints: endpoints.into_values().collect(),
        problem: vips.problem.as_deref().map(Box::from),
    }
}

/// An annotation's value parsed by `parse`; absent gives `default`, and an
/// invalid value is logged and gives `default` too: an annotation is a hint,
/// never a reason to stop serving the service.
fn annotation<T>(
    key: &ServiceKey,
    svc: &StoredService,
    name: &'static str,
    default: T,
    parse: impl FnOnce(&str) -> Result<T, String>,
) -> T {
    match svc.annotation(name) {
        None => default,
        Some(value) => parse(value).unwrap_or_else(|e| {
            tracing::warn!(service = %key, annotation = name, error = %e, "ignoring invalid annotation; using the default");
            default
        }),
    }
}

//! The registry's own copies of service and endpoint objects: only what
//! building a service's entry reads, in as few allocations as the data
//! allows.
//!
//! A source's [`EndpointSet`] spends an allocation on every endpoint's
//! address list (almost always one address), every node name and every port
//! name, plus metadata the registry never reads; at 10,000 services that was
//! about 60,000 small allocations. Here an endpoint keeps one address
//! inline, and node and port names are the shared copies of
//! [`SharedNames`].

use std::net::IpAddr;
use std::sync::Arc;

use smallvec::SmallVec;

use super::names::SharedNames;
use crate::object::{EndpointSet, ObjectId, ServiceObject};
use crate::service::{
    InternalTrafficPolicy, IpFamily, IpFamilyPolicy, Protocol, SessionAffinity, TargetPort, TrafficDistribution,
};
use crate::vip::VipRequest;

/// One endpoint object of a service.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct StoredSet {
    pub(super) key: ObjectId,
    pub(super) subsets: Box<[StoredSubset]>,
}

/// Endpoints that share one port list.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct StoredSubset {
    pub(super) endpoints: Box<[StoredEndpoint]>,
    pub(super) ports: Box<[StoredPort]>,
}

/// One endpoint (a pod).
#[derive(Debug, PartialEq, Eq)]
pub(super) struct StoredEndpoint {
    /// One address needs no allocation of its own.
    pub(super) addresses: SmallVec<[IpAddr; 1]>,
    pub(super) ready: bool,
    pub(super) node_name: Option<Arc<str>>,
    pub(super) hostname: Option<Box<str>>,
}

/// A port of a subset; `name` matches the service port's name.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct StoredPort {
    pub(super) name: Arc<str>,
    pub(super) port: u16,
    pub(super) protocol: Protocol,
}

impl StoredSet {
    /// The registry's copy of `set`, its names shared through `names`.
    pub(super) fn new(set: EndpointSet, names: &mut SharedNames) -> Self {
        let subsets = set
            .subsets
            .into_iter()
            .map(|subset| StoredSubset {
                endpoints: subset
                    .endpoints
                    .into_iter()
                    .map(|ep| StoredEndpoint {
                        addresses: SmallVec::from_slice(&ep.addresses),
                        ready: ep.ready,
                        node_name: ep.node_name.as_deref().map(|n| names.get(n)),
                        hostname: ep.hostname.map(String::into_boxed_str),
                    })
                    .collect(),
                ports: subset
                    .ports
                    .into_iter()
                    .map(|p| StoredPort { name: names.get(&p.name), port: p.port, protocol: p.protocol })
                    .collect(),
            })
            .collect();
        Self { key: ObjectId::new(set.kind, &set.meta.namespace, &set.meta.name), subsets }
    }
}

/// The registry's copy of a service object: what building its entry and
/// assigning its VIPs read. A [`ServiceObject`] held its namespace and name
/// again (the key has them), empty label and annotation maps, and a string
/// per port name and type; here names are shared, one cluster IP is inline,
/// and annotations (only `edgemesh.io/` ones are kept) cost no allocation
/// when there are none. About half the bytes of the boxed object.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct StoredService {
    pub(super) ports: Box<[StoredServicePort]>,
    pub(super) cluster_ips: SmallVec<[IpAddr; 1]>,
    pub(super) service_type: Arc<str>,
    pub(super) ip_families: Box<[IpFamily]>,
    /// `edgemesh.io/` annotations, in key order (usually none).
    annotations: Box<[(Box<str>, Box<str>)]>,
    pub(super) session_affinity: SessionAffinity,
    pub(super) internal_traffic_policy: InternalTrafficPolicy,
    pub(super) traffic_distribution: Option<TrafficDistribution>,
    pub(super) ip_family_policy: Option<IpFamilyPolicy>,
    pub(super) headless: bool,
}

/// One entry of a service's `spec.ports`.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct StoredServicePort {
    pub(super) name: Arc<str>,
    /// `appProtocol`, shared like names (a fleet uses a handful of values).
    pub(super) app_protocol: Option<Arc<str>>,
    pub(super) target_port: TargetPort,
    pub(super) port: u16,
    pub(super) node_port: Option<u16>,
    pub(super) protocol: Protocol,
}

impl StoredService {
    /// The registry's copy of `svc` (its annotations already reduced to the
    /// data plane's), names shared through `names`.
    pub(super) fn new(svc: ServiceObject, names: &mut SharedNames) -> Self {
        Self {
            ports: svc
                .ports
                .into_iter()
                .map(|p| StoredServicePort {
                    name: names.get(&p.name),
                    app_protocol: p.app_protocol.as_deref().map(|a| names.get(a)),
                    target_port: p.target_port,
                    port: p.port,
                    node_port: p.node_port,
                    protocol: p.protocol,
                })
                .collect(),
            cluster_ips: SmallVec::from_vec(svc.cluster_ips),
            service_type: names.get(&svc.service_type),
            ip_families: svc.ip_families.into_boxed_slice(),
            annotations: svc.meta.annotations.into_iter().map(|(k, v)| (k.into(), v.into())).collect(),
            session_affinity: svc.session_affinity,
            internal_traffic_policy: svc.internal_traffic_policy,
            traffic_distribution: svc.traffic_distribution,
            ip_family_policy: svc.ip_family_policy,
            headless: svc.headless,
        }
    }

    /// The value of annotation `name`, if set.
    pub(super) fn annotation(&self, name: &str) -> Option<&str> {
        self.annotations.iter().find(|(k, _)| **k == *name).map(|(_, v)| &**v)
    }

    /// What decides the service's VIPs.
    pub(super) fn vip_request(&self) -> VipRequest<'_> {
        VipRequest {
            headless: self.headless,
            cluster_ips: &self.cluster_ips,
            ip_families: &self.ip_families,
            ip_family_policy: self.ip_family_policy,
            has_udp: self.ports.iter().any(|p| p.protocol == Protocol::Udp),
        }
    }
}

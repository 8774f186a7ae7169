//! API objects (`k8s-openapi` types) into the shared wire model
//! ([`edgemesh_k8s::schema`]), field by field, then through the same
//! validation and conversion as the manifests source
//! ([`edgemesh_k8s::convert`]), so a service means the same thing whichever
//! source delivered it.
//!
//! The API server has validated what it stores, but metaServer relays a
//! cache and older servers were laxer: an object that breaks a rule is
//! reported and skipped, and the version sent before it stays in force.

use edgemesh_core::Object;
use edgemesh_k8s::ConvertError;
use edgemesh_k8s::convert;
use edgemesh_k8s::schema::{
    ClientIpConfig, Conditions, Document, EndpointAddress, EndpointPort, IntOrString, Located, Metadata, NodeAddress,
    NodeSpec, NodeStatus, ServicePort, ServiceSpec, SessionAffinityConfig, SliceEndpoint, Subset,
};
use k8s_openapi::api::core::v1 as core_v1;
use k8s_openapi::api::discovery::v1 as discovery_v1;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta as ApiMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString as ApiIntOrString;

/// Services with this label are left to another proxy, as in EdgeMesh.
pub const SERVICE_PROXY_NAME_LABEL: &str = "service.edgemesh.kubeedge.io/service-proxy-name";

/// Whether a service is left to another proxy (see [`SERVICE_PROXY_NAME_LABEL`]).
pub fn excluded(svc: &core_v1::Service) -> bool {
    svc.metadata.labels.as_ref().is_some_and(|l| l.contains_key(SERVICE_PROXY_NAME_LABEL))
}

/// A Service.
pub fn service(svc: &core_v1::Service) -> Result<Option<Object>, ConvertError> {
    let spec = svc.spec.as_ref().map(|s| ServiceSpec {
        service_type: string(&s.type_),
        cluster_ip: string(&s.cluster_ip),
        cluster_ips: strings(s.cluster_ips.as_deref()),
        ports: s.ports.as_ref().map(|ports| ports.iter().map(service_port).collect()),
        session_affinity: string(&s.session_affinity),
        session_affinity_config: s.session_affinity_config.as_ref().map(|c| SessionAffinityConfig {
            client_ip: c
                .client_ip
                .as_ref()
                .map(|c| ClientIpConfig { timeout_seconds: c.timeout_seconds.map(|t| located(i64::from(t))) }),
        }),
        internal_traffic_policy: string(&s.internal_traffic_policy),
        traffic_distribution: string(&s.traffic_distribution),
        ip_families: strings(s.ip_families.as_deref()),
        ip_family_policy: string(&s.ip_family_policy),
    });
    convert::object(Document { spec, ..header("Service", "v1", &svc.metadata) })
}

fn service_port(p: &core_v1::ServicePort) -> Located<ServicePort> {
    let target_port = p.target_port.as_ref().map(|t| match t {
        ApiIntOrString::Int(n) => IntOrString::Int(i64::from(*n)),
        // The API server accepts a numeric string; so does kube-proxy.
        ApiIntOrString::String(s) => s.parse().map_or_else(|_| IntOrString::Str(s.clone()), IntOrString::Int),
    });
    located(ServicePort {
        name: string(&p.name),
        protocol: string(&p.protocol),
        port: Some(located(i64::from(p.port))),
        target_port: target_port.map(located),
        node_port: p.node_port.map(|n| located(i64::from(n))),
        app_protocol: string(&p.app_protocol),
    })
}

/// An EndpointSlice: `None` for slices the agent cannot use (FQDN).
pub fn endpoint_slice(slice: &discovery_v1::EndpointSlice) -> Result<Option<Object>, ConvertError> {
    let endpoints = slice.endpoints.iter().map(|ep| {
        located(SliceEndpoint {
            addresses: strings(Some(&ep.addresses)),
            conditions: ep.conditions.as_ref().map(|c| Conditions { ready: c.ready }),
            node_name: ep.node_name.clone(),
            hostname: ep.hostname.clone(),
        })
    });
    let ports =
        slice.ports.as_ref().map(|ports| ports.iter().map(|p| endpoint_port(&p.name, p.port, &p.protocol)).collect());
    convert::object(Document {
        address_type: Some(slice.address_type.clone()).filter(|t| !t.is_empty()).map(located),
        endpoints: Some(endpoints.collect()),
        ports,
        ..header("EndpointSlice", "discovery.k8s.io/v1", &slice.metadata)
    })
}

/// A legacy Endpoints object.
pub fn endpoints(eps: &core_v1::Endpoints) -> Result<Option<Object>, ConvertError> {
    let addresses = |list: &Option<Vec<core_v1::EndpointAddress>>| {
        list.as_ref().map(|list| {
            list.iter()
                .map(|a| {
                    located(EndpointAddress {
                        ip: Some(located(a.ip.clone())),
                        hostname: a.hostname.clone(),
                        node_name: a.node_name.clone(),
                    })
                })
                .collect()
        })
    };
    let subsets = eps.subsets.as_ref().map(|subsets| {
        subsets
            .iter()
            .map(|s| Subset {
                addresses: addresses(&s.addresses),
                not_ready_addresses: addresses(&s.not_ready_addresses),
                ports: s
                    .ports
                    .as_ref()
                    .map(|ports| ports.iter().map(|p| endpoint_port(&p.name, Some(p.port), &p.protocol)).collect()),
            })
            .collect()
    });
    convert::object(Document { subsets, ..header("Endpoints", "v1", &eps.metadata) })
}

/// A Node: its name, annotations, its `InternalIP` / `ExternalIP`
/// addresses (other address types, host names, are not dialable) and its
/// pod CIDRs.
pub fn node(n: &core_v1::Node) -> Result<Option<Object>, ConvertError> {
    let node_spec =
        n.spec.as_ref().map(|s| NodeSpec { pod_cidr: string(&s.pod_cidr), pod_cidrs: strings(s.pod_cidrs.as_deref()) });
    let status = n.status.as_ref().map(|s| NodeStatus {
        addresses: s.addresses.as_ref().map(|list| {
            list.iter()
                .map(|a| {
                    located(NodeAddress {
                        address_type: Some(located(a.type_.clone())),
                        address: Some(located(a.address.clone())),
                    })
                })
                .collect()
        }),
    });
    convert::object(Document { node_spec, status, ..header("Node", "v1", &n.metadata) })
}

/// A document with its kind, version and metadata, the rest empty.
pub(crate) fn header(kind: &str, api_version: &str, m: &ApiMeta) -> Document {
    Document {
        api_version: Some(located(api_version.to_owned())),
        kind: Some(located(kind.to_owned())),
        metadata: Some(Metadata {
            name: string(&m.name),
            namespace: string(&m.namespace),
            labels: m.labels.clone(),
            annotations: m.annotations.clone(),
            generation: m.generation,
            creation_timestamp: m
                .creation_timestamp
                .as_ref()
                .and_then(|t| serde_json::to_value(t).ok())
                .and_then(|v| v.as_str().map(str::to_owned)),
        }),
        ..Document::default()
    }
}

fn endpoint_port(name: &Option<String>, port: Option<i32>, protocol: &Option<String>) -> Located<EndpointPort> {
    located(EndpointPort { name: string(name), port: port.map(|p| located(i64::from(p))), protocol: string(protocol) })
}

/// A value with no line: API objects do not come from a file.
fn located<T>(value: T) -> Located<T> {
    Located { value, line: 0 }
}

fn string(s: &Option<String>) -> Option<Located<String>> {
    s.clone().map(located)
}

fn strings(list: Option<&[String]>) -> Option<Vec<Located<String>>> {
    list.map(|l| l.iter().cloned().map(located).collect())
}

#[cfg(test)]
mod tests;

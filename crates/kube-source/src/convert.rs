//! Conversion of API objects (`k8s-openapi` types) into `edgemesh_core`
//! objects, with the manifests source's validation rules and error messages
//! (both use `edgemesh_manifests::validate` and its `Problem`), so a service
//! means the same thing whichever source delivered it.
//!
//! The API server has validated what it stores, but metaServer relays a
//! cache and older servers were laxer: an object that breaks a rule is
//! reported and skipped, and the version sent before it stays in force.

use std::collections::HashSet;
use std::net::IpAddr;

use edgemesh_core::object::{
    EndpointPortSpec, EndpointSet, EndpointSpec, EndpointSubset, NodeObject, ObjectMeta, ServiceObject, ServicePortSpec,
};
use edgemesh_core::{ObjectKind, Protocol, TargetPort};
use edgemesh_manifests::{NODE_ADDRESS_TYPES, Problem, SERVICE_NAME_LABEL, validate};
use k8s_openapi::api::core::v1 as core_v1;
use k8s_openapi::api::discovery::v1 as discovery_v1;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta as ApiMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

/// Services with this label are left to another proxy, as in EdgeMesh.
pub const SERVICE_PROXY_NAME_LABEL: &str = "service.edgemesh.kubeedge.io/service-proxy-name";

/// An object the agent cannot use: which one, and why.
#[derive(Debug, thiserror::Error)]
#[error("{object}: {problem}")]
pub struct ConvertError {
    /// `Kind namespace/name`.
    pub object: String,
    pub problem: Problem,
}

const SERVICE_TYPES: [&str; 4] = ["ClusterIP", "NodePort", "LoadBalancer", "ExternalName"];

/// Which rule `metadata.name` follows.
#[derive(Clone, Copy)]
enum NameRule {
    Dns1035Label,
    Dns1123Subdomain,
}

fn meta(kind: &str, m: &ApiMeta, rule: NameRule) -> Result<ObjectMeta, ConvertError> {
    let err = |object: String, problem| ConvertError { object, problem };
    let name = m.name.clone().filter(|n| !n.is_empty()).ok_or_else(|| err(kind.to_owned(), Problem::MissingName))?;
    let namespace = m.namespace.clone().filter(|n| !n.is_empty()).unwrap_or_else(|| "default".to_owned());
    let object = format!("{kind} {namespace}/{name}");
    if let Err(why) = validate::dns1123_label(&namespace) {
        let problem = Problem::InvalidName {
            field: "metadata.namespace".into(),
            value: namespace.clone(),
            rule: "namespace (RFC 1123 label)",
            why,
        };
        return Err(err(object, problem));
    }
    let (checked, rule_name) = match rule {
        NameRule::Dns1035Label => (validate::dns1035_label(&name), "name (RFC 1035 label)"),
        NameRule::Dns1123Subdomain => (validate::dns1123_subdomain(&name), "name (RFC 1123 subdomain)"),
    };
    if let Err(why) = checked {
        return Err(err(
            object,
            Problem::InvalidName { field: "metadata.name".into(), value: name, rule: rule_name, why },
        ));
    }
    Ok(ObjectMeta {
        namespace,
        name,
        labels: m.labels.clone().unwrap_or_default(),
        annotations: m.annotations.clone().unwrap_or_default(),
    })
}

/// Whether a service is left to another proxy (see [`SERVICE_PROXY_NAME_LABEL`]).
pub fn excluded(svc: &core_v1::Service) -> bool {
    svc.metadata.labels.as_ref().is_some_and(|l| l.contains_key(SERVICE_PROXY_NAME_LABEL))
}

// ---------------------------------------------------------------------------
// Service

pub fn service(svc: &core_v1::Service) -> Result<ServiceObject, ConvertError> {
    let meta = meta("Service", &svc.metadata, NameRule::Dns1035Label)?;
    let object = format!("Service {}/{}", meta.namespace, meta.name);
    let err = |problem| ConvertError { object: object.clone(), problem };
    let default_spec = core_v1::ServiceSpec::default();
    let spec = svc.spec.as_ref().unwrap_or(&default_spec);

    let service_type = match &spec.type_ {
        None => "ClusterIP".to_owned(),
        Some(t) if SERVICE_TYPES.contains(&t.as_str()) => t.clone(),
        Some(t) => return Err(err(Problem::UnknownServiceType { value: t.clone() })),
    };

    // `clusterIPs` wins; `clusterIP`, when also set, must be its first entry.
    let single = spec.cluster_ip.clone().filter(|ip| !ip.is_empty());
    let ips = spec.cluster_ips.clone().unwrap_or_default();
    let (ips, field) = match (single, ips.is_empty()) {
        (Some(ip), true) => (vec![ip], "spec.clusterIP"),
        (Some(ip), false) if ips[0] != ip => {
            return Err(err(Problem::ClusterIpMismatch { ip, ips: ips[0].clone() }));
        }
        _ => (ips, "spec.clusterIPs"),
    };
    let headless = ips.first().is_some_and(|ip| ip == "None");
    let mut cluster_ips = Vec::with_capacity(ips.len());
    for (i, ip) in ips.iter().enumerate() {
        if headless {
            if i > 0 {
                return Err(err(Problem::HeadlessWithIps));
            }
            continue;
        }
        if ip == "None" {
            return Err(err(Problem::HeadlessWithIps));
        }
        let field = if field == "spec.clusterIP" { field.to_owned() } else { format!("{field}[{i}]") };
        cluster_ips.push(ip_addr(ip, field).map_err(err)?);
    }

    let raw = spec.ports.as_deref().unwrap_or_default();
    let mut ports = Vec::with_capacity(raw.len());
    let mut names = HashSet::with_capacity(raw.len());
    let mut numbers = HashSet::with_capacity(raw.len());
    for (i, sp) in raw.iter().enumerate() {
        let field = format!("spec.ports[{i}]");
        let port = service_port(sp, &field).map_err(err)?;
        if port.name.is_empty() && raw.len() > 1 {
            return Err(err(Problem::UnnamedPort { field }));
        }
        if !names.insert(port.name.clone()) {
            return Err(err(Problem::DuplicatePortName { field, name: port.name }));
        }
        if !numbers.insert((port.port, port.protocol)) {
            let problem = Problem::DuplicatePort { field, port: port.port, protocol: protocol_name(port.protocol) };
            return Err(err(problem));
        }
        ports.push(port);
    }

    // Fields added to the model later keep their defaults.
    #[allow(clippy::needless_update)]
    Ok(ServiceObject { meta, cluster_ips, headless, ports, service_type, ..Default::default() })
}

fn service_port(p: &core_v1::ServicePort, field: &str) -> Result<ServicePortSpec, Problem> {
    let name = port_name(p.name.as_deref(), field)?;
    let protocol = protocol(p.protocol.as_deref(), field)?;
    let port = port_number(i64::from(p.port), format!("{field}.port"))?;
    let target_port = match &p.target_port {
        None => TargetPort::Number(port),
        Some(IntOrString::Int(n)) => TargetPort::Number(port_number(i64::from(*n), format!("{field}.targetPort"))?),
        Some(IntOrString::String(s)) => {
            // The API server accepts a numeric string; so does kube-proxy.
            if let Ok(n) = s.parse::<i64>() {
                TargetPort::Number(port_number(n, format!("{field}.targetPort"))?)
            } else {
                validate::iana_svc_name(s).map_err(|why| Problem::InvalidPortName {
                    field: format!("{field}.targetPort"),
                    value: s.clone(),
                    why,
                })?;
                TargetPort::Name(s.clone())
            }
        }
    };
    // 0 or unset: no node port.
    let node_port = match p.node_port {
        Some(n) if n != 0 => Some(port_number(i64::from(n), format!("{field}.nodePort"))?),
        _ => None,
    };
    Ok(ServicePortSpec { name, protocol, port, target_port, node_port })
}

// ---------------------------------------------------------------------------
// EndpointSlice

/// `Ok(None)` for slices the agent cannot use (FQDN).
pub fn endpoint_slice(slice: &discovery_v1::EndpointSlice) -> Result<Option<EndpointSet>, ConvertError> {
    let meta = meta("EndpointSlice", &slice.metadata, NameRule::Dns1123Subdomain)?;
    let object = format!("EndpointSlice {}/{}", meta.namespace, meta.name);
    let err = |problem| ConvertError { object: object.clone(), problem };
    let Some(service_name) = meta.labels.get(SERVICE_NAME_LABEL).cloned() else {
        return Err(err(Problem::MissingServiceName));
    };
    if let Err(why) = validate::dns1035_label(&service_name) {
        return Err(err(Problem::InvalidName {
            field: format!("metadata.labels[{SERVICE_NAME_LABEL}]"),
            value: service_name,
            rule: "Service name (RFC 1035 label)",
            why,
        }));
    }
    let ipv6 = match slice.address_type.as_str() {
        "IPv4" => false,
        "IPv6" => true,
        "FQDN" => {
            tracing::debug!(%object, "skipping EndpointSlice with addressType FQDN: the agent forwards to IP addresses only");
            return Ok(None);
        }
        "" => return Err(err(Problem::MissingField { field: "addressType".into() })),
        other => return Err(err(Problem::UnknownAddressType { value: other.to_owned() })),
    };
    let mut endpoints = Vec::with_capacity(slice.endpoints.len());
    for (i, ep) in slice.endpoints.iter().enumerate() {
        let field = format!("endpoints[{i}].addresses");
        if ep.addresses.is_empty() {
            return Err(err(Problem::NoAddresses { field }));
        }
        let mut addresses = Vec::with_capacity(ep.addresses.len());
        for (j, a) in ep.addresses.iter().enumerate() {
            let field = format!("{field}[{j}]");
            let ip = ip_addr(a, field.clone()).map_err(err)?;
            if ip.is_ipv6() != ipv6 {
                let family = if ipv6 { "IPv6" } else { "IPv4" };
                return Err(err(Problem::WrongFamily { field, value: a.clone(), family }));
            }
            addresses.push(ip);
        }
        endpoints.push(EndpointSpec {
            addresses,
            // Kubernetes: an unknown readiness is interpreted as ready.
            ready: ep.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true),
            node_name: ep.node_name.clone(),
            hostname: ep.hostname.clone(),
        });
    }
    let raw: Vec<(Option<&str>, Option<i64>, Option<&str>)> = slice
        .ports
        .as_deref()
        .unwrap_or_default()
        .iter()
        .map(|p| (p.name.as_deref(), p.port.map(i64::from), p.protocol.as_deref()))
        .collect();
    let ports = endpoint_ports(&raw, "ports").map_err(err)?;
    Ok(Some(EndpointSet {
        meta,
        kind: ObjectKind::EndpointSlice,
        service_name,
        subsets: vec![EndpointSubset { endpoints, ports }],
    }))
}

// ---------------------------------------------------------------------------
// Endpoints (legacy)

pub fn endpoints(eps: &core_v1::Endpoints) -> Result<EndpointSet, ConvertError> {
    let meta = meta("Endpoints", &eps.metadata, NameRule::Dns1123Subdomain)?;
    let object = format!("Endpoints {}/{}", meta.namespace, meta.name);
    let err = |problem| ConvertError { object: object.clone(), problem };
    let raw = eps.subsets.as_deref().unwrap_or_default();
    let mut subsets = Vec::with_capacity(raw.len());
    for (i, s) in raw.iter().enumerate() {
        let mut endpoints = Vec::new();
        for (list, ready, name) in
            [(&s.addresses, true, "addresses"), (&s.not_ready_addresses, false, "notReadyAddresses")]
        {
            for (j, a) in list.as_deref().unwrap_or_default().iter().enumerate() {
                let field = format!("subsets[{i}].{name}[{j}].ip");
                endpoints.push(EndpointSpec {
                    addresses: vec![ip_addr(&a.ip, field).map_err(err)?],
                    ready,
                    node_name: a.node_name.clone(),
                    hostname: a.hostname.clone(),
                });
            }
        }
        let raw: Vec<(Option<&str>, Option<i64>, Option<&str>)> = s
            .ports
            .as_deref()
            .unwrap_or_default()
            .iter()
            .map(|p| (p.name.as_deref(), Some(i64::from(p.port)), p.protocol.as_deref()))
            .collect();
        let ports = endpoint_ports(&raw, &format!("subsets[{i}].ports")).map_err(err)?;
        subsets.push(EndpointSubset { endpoints, ports });
    }
    let service_name = meta.name.clone();
    Ok(EndpointSet { meta, kind: ObjectKind::Endpoints, service_name, subsets })
}

/// Ports of a slice or subset as (name, port, protocol): optional names,
/// unique, named when several.
fn endpoint_ports(
    raw: &[(Option<&str>, Option<i64>, Option<&str>)],
    field: &str,
) -> Result<Vec<EndpointPortSpec>, Problem> {
    let mut ports = Vec::with_capacity(raw.len());
    let mut names = HashSet::with_capacity(raw.len());
    for (i, (name, port, proto)) in raw.iter().enumerate() {
        let field = format!("{field}[{i}]");
        let name = port_name(*name, &field)?;
        if name.is_empty() && raw.len() > 1 {
            return Err(Problem::UnnamedPort { field });
        }
        if !names.insert(name.clone()) {
            return Err(Problem::DuplicatePortName { field, name });
        }
        let protocol = protocol(*proto, &field)?;
        let Some(port) = port else { return Err(Problem::MissingField { field: format!("{field}.port") }) };
        let port = port_number(*port, format!("{field}.port"))?;
        ports.push(EndpointPortSpec { name, port, protocol });
    }
    Ok(ports)
}

// ---------------------------------------------------------------------------
// Node

/// A Node: its name, annotations and its `InternalIP` / `ExternalIP`
/// addresses (other address types, host names, are not dialable).
pub fn node(n: &core_v1::Node) -> Result<NodeObject, ConvertError> {
    let name = n.metadata.name.clone().filter(|n| !n.is_empty());
    let name = name.ok_or_else(|| ConvertError { object: "Node".into(), problem: Problem::MissingName })?;
    let err = |problem| ConvertError { object: format!("Node {name}"), problem };
    validate::dns1123_subdomain(&name).map_err(|why| {
        err(Problem::InvalidName {
            field: "metadata.name".into(),
            value: name.clone(),
            rule: "name (RFC 1123 subdomain)",
            why,
        })
    })?;
    let mut addresses = Vec::new();
    let listed = n.status.as_ref().and_then(|s| s.addresses.as_deref()).unwrap_or_default();
    for (i, a) in listed.iter().enumerate().filter(|(_, a)| NODE_ADDRESS_TYPES.contains(&a.type_.as_str())) {
        let ip = ip_addr(&a.address, format!("status.addresses[{i}].address")).map_err(err)?;
        if !addresses.contains(&ip) {
            addresses.push(ip);
        }
    }
    let meta = ObjectMeta {
        namespace: String::new(),
        name: name.clone(),
        labels: n.metadata.labels.clone().unwrap_or_default(),
        annotations: n.metadata.annotations.clone().unwrap_or_default(),
    };
    Ok(NodeObject { meta, addresses })
}

// ---------------------------------------------------------------------------
// Fields

fn port_name(name: Option<&str>, field: &str) -> Result<String, Problem> {
    let Some(name) = name.filter(|n| !n.is_empty()) else { return Ok(String::new()) };
    validate::dns1123_label(name).map_err(|why| Problem::InvalidName {
        field: format!("{field}.name"),
        value: name.to_owned(),
        rule: "port name",
        why,
    })?;
    Ok(name.to_owned())
}

fn protocol(p: Option<&str>, field: &str) -> Result<Protocol, Problem> {
    match p {
        None => Ok(Protocol::Tcp),
        Some(p) => {
            p.parse().map_err(|_| Problem::UnknownProtocol { field: format!("{field}.protocol"), value: p.to_owned() })
        }
    }
}

fn port_number(n: i64, field: String) -> Result<u16, Problem> {
    validate::port(n).ok_or(Problem::PortOutOfRange { field, value: n })
}

fn ip_addr(s: &str, field: String) -> Result<IpAddr, Problem> {
    s.parse().map_err(|_| Problem::BadIp { field, value: s.to_owned() })
}

fn protocol_name(p: Protocol) -> &'static str {
    match p {
        Protocol::Tcp => "TCP",
        Protocol::Udp => "UDP",
        Protocol::Sctp => "SCTP",
    }
}

#[cfg(test)]
mod tests;

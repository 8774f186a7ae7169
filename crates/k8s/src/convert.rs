//! Validation of [`schema`](crate::schema) objects and conversion into
//! `edgemesh_core` objects: one set of rules and messages, so a service
//! means the same thing whichever source delivered it.
//!
//! Line numbers: spans from the YAML parser are relative to the document's
//! text; `base` (the number of lines before the document) turns them into
//! lines of the file. Objects not read from a file have line 0 everywhere.

use std::collections::HashSet;
use std::net::IpAddr;

use edgemesh_core::object::{EndpointPortSpec, EndpointSet, EndpointSpec, EndpointSubset, ObjectMeta};
use edgemesh_core::{Object, ObjectKind, Protocol, RoutingKind};

use crate::problem::{ConvertError, Problem};
use crate::schema::{Document, EndpointAddress, EndpointPort, Kind, Located, Metadata};
use crate::validate;

mod node;
mod routing;
mod rule;
mod service;

pub use node::NODE_ADDRESS_TYPES;
pub use rule::API_VERSIONS as DESTINATION_RULE_API_VERSIONS;

/// The label that links an EndpointSlice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// The `apiVersion` each supported kind must have; other pairs (a Knative
/// `serving.knative.dev/v1` Service, say) are someone else's and skipped.
pub fn api_version_of(kind: Kind) -> Option<&'static str> {
    match kind {
        Kind::Service | Kind::Endpoints | Kind::Node | Kind::List => Some("v1"),
        Kind::EndpointSlice => Some("discovery.k8s.io/v1"),
        // Also v1beta1 and v1 (see [`DESTINATION_RULE_API_VERSIONS`]).
        Kind::DestinationRule => Some(rule::API_VERSIONS[0]),
        // Any version of the kind's group (RoutingKind::of).
        Kind::Routing => Some("gateway.networking.k8s.io/v1"),
        Kind::Other => None,
    }
}

/// Whether objects of `kind` written as `api_version` (when known) are
/// ones the agent reads (so that their errors are reported, not skipped).
pub fn reads(kind: &str, api_version: Option<&str>) -> bool {
    match Kind::of(kind) {
        Kind::Routing => api_version.is_none_or(|v| RoutingKind::of(v, kind).is_some()),
        Kind::DestinationRule => api_version.is_none_or(|v| rule::API_VERSIONS.contains(&v)),
        other => api_version_of(other).is_some_and(|expected| api_version.is_none_or(|v| v == expected)),
    }
}

/// An object converted from a document, and the 1-based line of the file it
/// starts on (0 when it was not read from a file).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParsedObject {
    pub line: usize,
    pub object: Object,
}

/// Converts one object that was not read from a file (lines are 0): `None`
/// for a kind or variant the agent does not use (an FQDN EndpointSlice).
pub fn object(doc: Document) -> Result<Option<Object>, ConvertError> {
    let mut out = Vec::with_capacity(1);
    document(doc, 0, 0, &mut out)?;
    Ok(out.pop().map(|p| p.object))
}

/// Converts one document (or `List` item) that starts on file line `line`,
/// appending its objects to `out`.
pub fn document(doc: Document, base: usize, line: usize, out: &mut Vec<ParsedObject>) -> Result<(), ConvertError> {
    let cx = Cx { base, line, object: String::new() };
    let Some(kind_field) = &doc.kind else {
        return Err(cx.err(Problem::MissingKind));
    };
    let kind = Kind::of(&kind_field.value);
    let Some(expected) = api_version_of(kind) else {
        tracing::debug!(line, kind = %kind_field.value, "skipping object of a kind the agent does not use");
        return Ok(());
    };
    let cx = Cx { object: kind_field.value.clone(), ..cx };
    match &doc.api_version {
        None => return Err(cx.err(Problem::MissingApiVersion { expected })),
        Some(v) if kind == Kind::DestinationRule && rule::API_VERSIONS.contains(&v.value.as_str()) => {}
        Some(v) if kind == Kind::Routing => {
            if RoutingKind::of(&v.value, &kind_field.value).is_none() {
                tracing::debug!(line, kind = %kind_field.value, api_version = %v.value, "skipping object of another API group");
                return Ok(());
            }
        }
        Some(v) if v.value != expected => {
            tracing::debug!(line, kind = %kind_field.value, api_version = %v.value, "skipping object of another API group");
            return Ok(());
        }
        Some(_) => {}
    }
    let object = match kind {
        Kind::Service => Object::Service(service::service(doc, cx)?),
        Kind::EndpointSlice => match endpoint_slice(doc, cx)? {
            Some(set) => Object::Endpoints(set),
            None => return Ok(()),
        },
        Kind::Endpoints => Object::Endpoints(endpoints(doc, cx)?),
        Kind::Node => Object::Node(node::node(doc, cx)?),
        Kind::DestinationRule => Object::DestinationRule(rule::destination_rule(doc, cx)?),
        Kind::Routing => {
            let api_version = doc.api_version.as_ref().map(|v| v.value.clone()).unwrap_or_default();
            let Some(routing) = RoutingKind::of(&api_version, &kind_field.value) else { return Ok(()) };
            Object::Routing(routing::routing(routing, &api_version, doc, cx)?)
        }
        Kind::List => {
            for item in doc.items.unwrap_or_default() {
                let line = base + item.line;
                document(item.value, base, line, out)?;
            }
            return Ok(());
        }
        Kind::Other => return Ok(()),
    };
    out.push(ParsedObject { line, object });
    Ok(())
}

/// What the errors of one object need: where it is and what it is called.
struct Cx {
    base: usize,
    /// File line of the object's start.
    line: usize,
    /// `Kind namespace/name` once known.
    object: String,
}

impl Cx {
    /// An error at the object's start.
    fn err(&self, problem: Problem) -> ConvertError {
        ConvertError { line: self.line, object: self.object.clone(), problem }
    }

    /// An error at `at`, a value of the document (at the object's start if
    /// the parser did not know where the value was).
    fn err_at<T>(&self, at: &Located<T>, problem: Problem) -> ConvertError {
        let line = Some(at.line).filter(|&l| l > 0).map_or(self.line, |l| self.base + l);
        ConvertError { line, object: self.object.clone(), problem }
    }
}

/// Which rule `metadata.name` follows.
#[derive(Clone, Copy)]
enum NameRule {
    Dns1035Label,
    Dns1123Subdomain,
    /// A cluster-scoped object (a Node): an RFC 1123 subdomain, and no
    /// namespace (one written is ignored, as the API server does).
    ClusterScoped,
}

/// Validates and converts `metadata`, and names the object in `cx`.
fn meta(m: Option<Metadata>, rule: NameRule, cx: &mut Cx) -> Result<ObjectMeta, ConvertError> {
    let m = m.unwrap_or_default();
    let name = match m.name {
        Some(n) if !n.value.is_empty() => n,
        _ => return Err(cx.err(Problem::MissingName)),
    };
    let namespace = match m.namespace {
        _ if matches!(rule, NameRule::ClusterScoped) => String::new(),
        Some(ns) if !ns.value.is_empty() => {
            if let Err(why) = validate::dns1123_label(&ns.value) {
                let problem = Problem::InvalidName {
                    field: "metadata.namespace".into(),
                    value: ns.value.clone(),
                    rule: "namespace (RFC 1123 label)",
                    why,
                };
                return Err(cx.err_at(&ns, problem));
            }
            ns.value
        }
        _ => "default".to_owned(),
    };
    cx.object = match rule {
        NameRule::ClusterScoped => format!("{} {}", cx.object, name.value),
        _ => format!("{} {}/{}", cx.object, namespace, name.value),
    };
    let (checked, rule_name) = match rule {
        NameRule::Dns1035Label => (validate::dns1035_label(&name.value), "name (RFC 1035 label)"),
        NameRule::Dns1123Subdomain | NameRule::ClusterScoped => {
            (validate::dns1123_subdomain(&name.value), "name (RFC 1123 subdomain)")
        }
    };
    if let Err(why) = checked {
        let problem =
            Problem::InvalidName { field: "metadata.name".into(), value: name.value.clone(), rule: rule_name, why };
        return Err(cx.err_at(&name, problem));
    }
    Ok(ObjectMeta {
        namespace,
        name: name.value,
        labels: m.labels.unwrap_or_default(),
        annotations: m.annotations.unwrap_or_default(),
    })
}

// ---------------------------------------------------------------------------
// EndpointSlice

/// `None` for slices the agent cannot use (FQDN).
fn endpoint_slice(doc: Document, mut cx: Cx) -> Result<Option<EndpointSet>, ConvertError> {
    let meta = meta(doc.metadata, NameRule::Dns1123Subdomain, &mut cx)?;
    let Some(service_name) = meta.labels.get(SERVICE_NAME_LABEL).cloned() else {
        return Err(cx.err(Problem::MissingServiceName));
    };
    if let Err(why) = validate::dns1035_label(&service_name) {
        let problem = Problem::InvalidName {
            field: format!("metadata.labels[{SERVICE_NAME_LABEL}]"),
            value: service_name,
            rule: "Service name (RFC 1035 label)",
            why,
        };
        return Err(cx.err(problem));
    }
    let ipv6 = match &doc.address_type {
        None => return Err(cx.err(Problem::MissingField { field: "addressType".into() })),
        Some(t) if t.value == "IPv4" => false,
        Some(t) if t.value == "IPv6" => true,
        Some(t) if t.value == "FQDN" => {
            tracing::warn!(line = cx.line, object = %cx.object, "skipping EndpointSlice with addressType FQDN: the agent forwards to IP addresses only");
            return Ok(None);
        }
        Some(t) => return Err(cx.err_at(t, Problem::UnknownAddressType { value: t.value.clone() })),
    };

    let raw = doc.endpoints.unwrap_or_default();
    let mut endpoints = Vec::with_capacity(raw.len());
    for (i, ep) in raw.iter().enumerate() {
        let field = format!("endpoints[{i}].addresses");
        let addrs = ep.value.addresses.as_deref().unwrap_or_default();
        if addrs.is_empty() {
            return Err(cx.err_at(ep, Problem::NoAddresses { field }));
        }
        let mut addresses = Vec::with_capacity(addrs.len());
        for (j, a) in addrs.iter().enumerate() {
            let field = format!("{field}[{j}]");
            let ip = ip_addr(a, field.clone(), &cx)?;
            if ip.is_ipv6() != ipv6 {
                let family = if ipv6 { "IPv6" } else { "IPv4" };
                return Err(cx.err_at(a, Problem::WrongFamily { field, value: a.value.clone(), family }));
            }
            addresses.push(ip);
        }
        endpoints.push(EndpointSpec {
            addresses,
            // Kubernetes: an unknown readiness is interpreted as ready.
            ready: ep.value.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true),
            node_name: ep.value.node_name.clone(),
            hostname: ep.value.hostname.clone(),
        });
    }
    let ports = endpoint_ports(doc.ports.as_deref().unwrap_or_default(), "ports", &cx)?;
    Ok(Some(EndpointSet {
        meta,
        kind: ObjectKind::EndpointSlice,
        service_name,
        subsets: vec![EndpointSubset { endpoints, ports }],
    }))
}

// ---------------------------------------------------------------------------
// Endpoints (legacy)

fn endpoints(doc: Document, mut cx: Cx) -> Result<EndpointSet, ConvertError> {
    let meta = meta(doc.metadata, NameRule::Dns1123Subdomain, &mut cx)?;
    let raw = doc.subsets.unwrap_or_default();
    let mut subsets = Vec::with_capacity(raw.len());
    for (i, s) in raw.iter().enumerate() {
        let mut endpoints = Vec::new();
        for (list, ready, name) in
            [(&s.addresses, true, "addresses"), (&s.not_ready_addresses, false, "notReadyAddresses")]
        {
            for (j, a) in list.as_deref().unwrap_or_default().iter().enumerate() {
                endpoints.push(endpoint_address(a, ready, &format!("subsets[{i}].{name}[{j}]"), &cx)?);
            }
        }
        let ports = endpoint_ports(s.ports.as_deref().unwrap_or_default(), &format!("subsets[{i}].ports"), &cx)?;
        subsets.push(EndpointSubset { endpoints, ports });
    }
    let service_name = meta.name.clone();
    Ok(EndpointSet { meta, kind: ObjectKind::Endpoints, service_name, subsets })
}

fn endpoint_address(
    a: &Located<EndpointAddress>,
    ready: bool,
    field: &str,
    cx: &Cx,
) -> Result<EndpointSpec, ConvertError> {
    let Some(ip) = &a.value.ip else {
        return Err(cx.err_at(a, Problem::MissingField { field: format!("{field}.ip") }));
    };
    Ok(EndpointSpec {
        addresses: vec![ip_addr(ip, format!("{field}.ip"), cx)?],
        ready,
        node_name: a.value.node_name.clone(),
        hostname: a.value.hostname.clone(),
    })
}

/// Ports of a slice or subset: optional names, unique, named when several.
fn endpoint_ports(raw: &[Located<EndpointPort>], field: &str, cx: &Cx) -> Result<Vec<EndpointPortSpec>, ConvertError> {
    let mut ports = Vec::with_capacity(raw.len());
    let mut names = HashSet::with_capacity(raw.len());
    for (i, p) in raw.iter().enumerate() {
        let field = format!("{field}[{i}]");
        let name = port_name(p.value.name.as_ref(), &field, cx)?;
        if name.is_empty() && raw.len() > 1 {
            return Err(cx.err_at(p, Problem::UnnamedPort { field }));
        }
        if !names.insert(name.clone()) {
            return Err(cx.err_at(p, Problem::DuplicatePortName { field, name }));
        }
        let protocol = protocol(p.value.protocol.as_ref(), &field, cx)?;
        let port = port_number(p.value.port.as_ref(), format!("{field}.port"), p, cx)?;
        ports.push(EndpointPortSpec { name, port, protocol });
    }
    Ok(ports)
}

// ---------------------------------------------------------------------------
// Fields

fn port_name(name: Option<&Located<String>>, field: &str, cx: &Cx) -> Result<String, ConvertError> {
    let Some(name) = name.filter(|n| !n.value.is_empty()) else { return Ok(String::new()) };
    if let Err(why) = validate::dns1123_label(&name.value) {
        let problem =
            Problem::InvalidName { field: format!("{field}.name"), value: name.value.clone(), rule: "port name", why };
        return Err(cx.err_at(name, problem));
    }
    Ok(name.value.clone())
}

fn protocol(p: Option<&Located<String>>, field: &str, cx: &Cx) -> Result<Protocol, ConvertError> {
    match p {
        None => Ok(Protocol::Tcp),
        Some(p) => p.value.parse().map_err(|_| {
            cx.err_at(p, Problem::UnknownProtocol { field: format!("{field}.protocol"), value: p.value.clone() })
        }),
    }
}

/// A required port number; a missing one is reported at `owner`.
fn port_number<T>(n: Option<&Located<i64>>, field: String, owner: &Located<T>, cx: &Cx) -> Result<u16, ConvertError> {
    let Some(n) = n else { return Err(cx.err_at(owner, Problem::MissingField { field })) };
    validate::port(n.value).ok_or_else(|| cx.err_at(n, Problem::PortOutOfRange { field, value: n.value }))
}

fn ip_addr(s: &Located<String>, field: String, cx: &Cx) -> Result<IpAddr, ConvertError> {
    s.value.parse().map_err(|_| cx.err_at(s, Problem::BadIp { field, value: s.value.clone() }))
}

//! Validation of [`schema`](crate::schema) objects and conversion into
//! `edgemesh_core` objects: one set of rules and messages, so a service
//! means the same thing whichever source delivered it.
//!
//! Line numbers: spans from the YAML parser are relative to the document's
//! text; `base` (the number of lines before the document) turns them into
//! lines of the file. Objects not read from a file have line 0 everywhere.

use std::collections::HashSet;
use std::net::IpAddr;

use edgemesh_core::object::{
    EndpointPortSpec, EndpointSet, EndpointSpec, EndpointSubset, ObjectMeta, ServiceObject, ServicePortSpec,
};
use edgemesh_core::{
    InternalTrafficPolicy, IpFamily, IpFamilyPolicy, Object, ObjectKind, Protocol, SessionAffinity, TargetPort,
};

use crate::problem::{ConvertError, Problem};
use crate::schema::{
    Document, EndpointAddress, EndpointPort, IntOrString, Kind, Located, Metadata, ServicePort, ServiceSpec,
};
use crate::validate;

mod node;

pub use node::NODE_ADDRESS_TYPES;

/// The label that links an EndpointSlice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// The `apiVersion` each supported kind must have; other pairs (a Knative
/// `serving.knative.dev/v1` Service, say) are someone else's and skipped.
pub fn api_version_of(kind: Kind) -> Option<&'static str> {
    match kind {
        Kind::Service | Kind::Endpoints | Kind::Node | Kind::List => Some("v1"),
        Kind::EndpointSlice => Some("discovery.k8s.io/v1"),
        Kind::Other => None,
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
        Some(v) if v.value != expected => {
            tracing::debug!(line, kind = %kind_field.value, api_version = %v.value, "skipping object of another API group");
            return Ok(());
        }
        Some(_) => {}
    }
    let object = match kind {
        Kind::Service => Object::Service(service(doc, cx)?),
        Kind::EndpointSlice => match endpoint_slice(doc, cx)? {
            Some(set) => Object::Endpoints(set),
            None => return Ok(()),
        },
        Kind::Endpoints => Object::Endpoints(endpoints(doc, cx)?),
        Kind::Node => Object::Node(node::node(doc, cx)?),
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
// Service

const SERVICE_TYPES: [&str; 4] = ["ClusterIP", "NodePort", "LoadBalancer", "ExternalName"];

fn service(doc: Document, mut cx: Cx) -> Result<ServiceObject, ConvertError> {
    let meta = meta(doc.metadata, NameRule::Dns1035Label, &mut cx)?;
    let mut spec = doc.spec.unwrap_or_default();

    let service_type = match spec.service_type.take() {
        None => "ClusterIP".to_owned(),
        Some(t) if SERVICE_TYPES.contains(&t.value.as_str()) => t.value,
        Some(t) => return Err(cx.err_at(&t, Problem::UnknownServiceType { value: t.value.clone() })),
    };

    // `clusterIPs` wins; `clusterIP`, when also set, must be its first entry.
    let single = spec.cluster_ip.take().filter(|ip| !ip.value.is_empty());
    let ips = spec.cluster_ips.take().unwrap_or_default();
    let (ips, field) = match (single, ips.is_empty()) {
        (Some(ip), true) => (vec![ip], "spec.clusterIP"),
        (Some(ip), false) if ips[0].value != ip.value => {
            let problem = Problem::ClusterIpMismatch { ip: ip.value.clone(), ips: ips[0].value.clone() };
            return Err(cx.err_at(&ip, problem));
        }
        _ => (ips, "spec.clusterIPs"),
    };
    let headless = ips.first().is_some_and(|ip| ip.value == "None");
    let mut cluster_ips = Vec::with_capacity(ips.len());
    for (i, ip) in ips.iter().enumerate() {
        if headless {
            if i > 0 {
                return Err(cx.err_at(ip, Problem::HeadlessWithIps));
            }
            continue;
        }
        if ip.value == "None" {
            return Err(cx.err_at(ip, Problem::HeadlessWithIps));
        }
        let field = if field == "spec.clusterIP" { field.to_owned() } else { format!("{field}[{i}]") };
        cluster_ips.push(ip_addr(ip, field, &cx)?);
    }

    let raw = spec.ports.take().unwrap_or_default();
    let mut ports = Vec::with_capacity(raw.len());
    let mut names = HashSet::with_capacity(raw.len());
    let mut numbers = HashSet::with_capacity(raw.len());
    let several = raw.len() > 1;
    for (i, sp) in raw.iter().enumerate() {
        let field = format!("spec.ports[{i}]");
        let port = service_port(sp, &field, &cx)?;
        if port.name.is_empty() && several {
            return Err(cx.err_at(sp, Problem::UnnamedPort { field }));
        }
        if !names.insert(port.name.clone()) {
            return Err(cx.err_at(sp, Problem::DuplicatePortName { field, name: port.name }));
        }
        if !numbers.insert((port.port, port.protocol)) {
            let problem = Problem::DuplicatePort { field, port: port.port, protocol: protocol_name(port.protocol) };
            return Err(cx.err_at(sp, problem));
        }
        ports.push(port);
    }

    let session_affinity = session_affinity(&spec, &cx)?;
    let internal_traffic_policy = match &spec.internal_traffic_policy {
        None => InternalTrafficPolicy::Cluster,
        Some(p) => p.value.parse().map_err(|_| {
            cx.err_at(
                p,
                Problem::UnknownValue {
                    field: "spec.internalTrafficPolicy".into(),
                    value: p.value.clone(),
                    expected: "Cluster or Local",
                },
            )
        })?,
    };
    let traffic_distribution = match &spec.traffic_distribution {
        None => None,
        Some(d) => Some(d.value.parse().map_err(|_| {
            cx.err_at(
                d,
                Problem::UnknownValue {
                    field: "spec.trafficDistribution".into(),
                    value: d.value.clone(),
                    expected: "PreferClose",
                },
            )
        })?),
    };
    let ip_family_policy = match &spec.ip_family_policy {
        None => None,
        Some(p) => Some(p.value.parse().map_err(|_| {
            cx.err_at(
                p,
                Problem::UnknownValue {
                    field: "spec.ipFamilyPolicy".into(),
                    value: p.value.clone(),
                    expected: "SingleStack, PreferDualStack or RequireDualStack",
                },
            )
        })?),
    };
    let raw_families = spec.ip_families.as_deref().unwrap_or_default();
    let mut ip_families: Vec<IpFamily> = Vec::with_capacity(raw_families.len());
    for (i, f) in raw_families.iter().enumerate() {
        let family: IpFamily = f.value.parse().map_err(|_| {
            cx.err_at(
                f,
                Problem::UnknownValue {
                    field: format!("spec.ipFamilies[{i}]"),
                    value: f.value.clone(),
                    expected: "IPv4 or IPv6",
                },
            )
        })?;
        if ip_families.contains(&family) {
            return Err(cx.err_at(f, Problem::DuplicateIpFamily { family: f.value.clone() }));
        }
        ip_families.push(family);
    }
    if raw_families.len() > 2 {
        return Err(cx.err_at(&raw_families[2], Problem::TooManyIpFamilies { count: raw_families.len() }));
    }
    if let (Some(p), 2) = (&spec.ip_family_policy, ip_families.len())
        && ip_family_policy == Some(IpFamilyPolicy::SingleStack)
    {
        return Err(cx.err_at(p, Problem::SingleStackWithTwoFamilies { count: 2 }));
    }

    Ok(ServiceObject {
        meta,
        cluster_ips,
        headless,
        ports,
        service_type,
        session_affinity,
        internal_traffic_policy,
        traffic_distribution,
        ip_families,
        ip_family_policy,
    })
}

/// `spec.sessionAffinity` and `spec.sessionAffinityConfig.clientIP.timeoutSeconds`
/// (default 10800, 1-86400 as Kubernetes validates it). The timeout is
/// ignored when affinity is `None`.
fn session_affinity(spec: &ServiceSpec, cx: &Cx) -> Result<SessionAffinity, ConvertError> {
    match &spec.session_affinity {
        None => Ok(SessionAffinity::None),
        Some(a) if a.value == "None" => Ok(SessionAffinity::None),
        Some(a) if a.value == "ClientIP" => {
            let timeout = spec
                .session_affinity_config
                .as_ref()
                .and_then(|c| c.client_ip.as_ref())
                .and_then(|c| c.timeout_seconds.as_ref());
            let timeout_seconds = match timeout {
                None => SessionAffinity::DEFAULT_TIMEOUT_SECONDS,
                Some(t) => {
                    let max = SessionAffinity::MAX_TIMEOUT_SECONDS;
                    u32::try_from(t.value).ok().filter(|s| (1..=max).contains(s)).ok_or_else(|| {
                        cx.err_at(
                            t,
                            Problem::OutOfRange {
                                field: "spec.sessionAffinityConfig.clientIP.timeoutSeconds".into(),
                                value: t.value,
                                min: 1,
                                max: i64::from(max),
                            },
                        )
                    })?
                }
            };
            Ok(SessionAffinity::ClientIp { timeout_seconds })
        }
        Some(a) => Err(cx.err_at(
            a,
            Problem::UnknownValue {
                field: "spec.sessionAffinity".into(),
                value: a.value.clone(),
                expected: "None or ClientIP",
            },
        )),
    }
}

fn service_port(sp: &Located<ServicePort>, field: &str, cx: &Cx) -> Result<ServicePortSpec, ConvertError> {
    let p = &sp.value;
    let name = port_name(p.name.as_ref(), field, cx)?;
    let protocol = protocol(p.protocol.as_ref(), field, cx)?;
    let port = port_number(p.port.as_ref(), format!("{field}.port"), sp, cx)?;
    let target_port = match &p.target_port {
        None => TargetPort::Number(port),
        Some(t) => match &t.value {
            IntOrString::Int(n) => match validate::port(*n) {
                Some(n) => TargetPort::Number(n),
                None => {
                    let problem = Problem::PortOutOfRange { field: format!("{field}.targetPort"), value: *n };
                    return Err(cx.err_at(t, problem));
                }
            },
            IntOrString::Str(s) => {
                if let Err(why) = validate::iana_svc_name(s) {
                    let problem =
                        Problem::InvalidPortName { field: format!("{field}.targetPort"), value: s.clone(), why };
                    return Err(cx.err_at(t, problem));
                }
                TargetPort::Name(s.clone())
            }
        },
    };
    // 0 asks Kubernetes to allocate one: no node port as far as we know.
    let node_port = match &p.node_port {
        Some(n) if n.value != 0 => match validate::port(n.value) {
            Some(n) => Some(n),
            None => {
                let problem = Problem::PortOutOfRange { field: format!("{field}.nodePort"), value: n.value };
                return Err(cx.err_at(n, problem));
            }
        },
        _ => None,
    };
    Ok(ServicePortSpec { name, protocol, port, target_port, node_port })
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

fn protocol_name(p: Protocol) -> &'static str {
    match p {
        Protocol::Tcp => "TCP",
        Protocol::Udp => "UDP",
        Protocol::Sctp => "SCTP",
    }
}

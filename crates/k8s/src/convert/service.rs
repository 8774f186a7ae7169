//! `v1/Service`: type, cluster IPs (or headless), ports, session affinity,
//! traffic policies and IP families.

use std::collections::HashSet;

use edgemesh_core::object::{ServiceObject, ServicePortSpec};
use edgemesh_core::{InternalTrafficPolicy, IpFamily, IpFamilyPolicy, Protocol, SessionAffinity, TargetPort};

use super::{Cx, NameRule, ip_addr, meta, port_name, port_number, protocol};
use crate::problem::{ConvertError, Problem};
use crate::schema::{Document, IntOrString, Located, ServicePort, ServiceSpec};
use crate::validate;

const SERVICE_TYPES: [&str; 4] = ["ClusterIP", "NodePort", "LoadBalancer", "ExternalName"];

pub(super) fn service(doc: Document, mut cx: Cx) -> Result<ServiceObject, ConvertError> {
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
    let app_protocol = match &p.app_protocol {
        None => None,
        Some(a) => match validate::qualified_name(&a.value) {
            Ok(()) => Some(a.value.clone()),
            Err(why) => {
                let problem = Problem::InvalidName {
                    field: format!("{field}.appProtocol"),
                    value: a.value.clone(),
                    rule: "appProtocol (a qualified name such as http or kubernetes.io/h2c)",
                    why,
                };
                return Err(cx.err_at(a, problem));
            }
        },
    };
    Ok(ServicePortSpec { name, protocol, port, target_port, node_port, app_protocol })
}

fn protocol_name(p: Protocol) -> &'static str {
    match p {
        Protocol::Tcp => "TCP",
        Protocol::Udp => "UDP",
        Protocol::Sctp => "SCTP",
    }
}

//! Field-level checks shared by the kinds: port names and numbers,
//! protocols, addresses; each error names the field and its line.

use std::collections::HashSet;
use std::net::IpAddr;

use edgemesh_core::Protocol;

use edgemesh_core::object::{EndpointPortSpec, EndpointSpec};

use super::Cx;
use crate::error::{ManifestError, Problem};
use crate::schema::{EndpointAddress, EndpointPort, Located};
use crate::validate;

pub(super) fn port_name(name: Option<&Located<String>>, field: &str, cx: &Cx) -> Result<String, ManifestError> {
    let Some(name) = name.filter(|n| !n.value.is_empty()) else { return Ok(String::new()) };
    if let Err(why) = validate::dns1123_label(&name.value) {
        let problem =
            Problem::InvalidName { field: format!("{field}.name"), value: name.value.clone(), rule: "port name", why };
        return Err(cx.err_at(name, problem));
    }
    Ok(name.value.clone())
}

pub(super) fn protocol(p: Option<&Located<String>>, field: &str, cx: &Cx) -> Result<Protocol, ManifestError> {
    match p {
        None => Ok(Protocol::Tcp),
        Some(p) => p.value.parse().map_err(|_| {
            cx.err_at(p, Problem::UnknownProtocol { field: format!("{field}.protocol"), value: p.value.clone() })
        }),
    }
}

/// A required port number; a missing one is reported at `owner`.
pub(super) fn port_number<T>(
    n: Option<&Located<i64>>,
    field: String,
    owner: &Located<T>,
    cx: &Cx,
) -> Result<u16, ManifestError> {
    let Some(n) = n else { return Err(cx.err_at(owner, Problem::MissingField { field })) };
    validate::port(n.value).ok_or_else(|| cx.err_at(n, Problem::PortOutOfRange { field, value: n.value }))
}

pub(super) fn ip_addr(s: &Located<String>, field: String, cx: &Cx) -> Result<IpAddr, ManifestError> {
    s.value.parse().map_err(|_| cx.err_at(s, Problem::BadIp { field, value: s.value.clone() }))
}

pub(super) fn protocol_name(p: Protocol) -> &'static str {
    match p {
        Protocol::Tcp => "TCP",
        Protocol::Udp => "UDP",
        Protocol::Sctp => "SCTP",
    }
}

pub(super) fn endpoint_address(
    a: &Located<EndpointAddress>,
    ready: bool,
    field: &str,
    cx: &Cx,
) -> Result<EndpointSpec, ManifestError> {
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
pub(super) fn endpoint_ports(
    raw: &[Located<EndpointPort>],
    field: &str,
    cx: &Cx,
) -> Result<Vec<EndpointPortSpec>, ManifestError> {
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

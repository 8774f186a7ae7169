//! Where a CONNECT goes, decided without I/O from the client's destination
//! and the registry's snapshot.
//!
//! - `<this node's name>:<port>`: this node's host, if `socks.allowedPorts`
//!   lists the port;
//! - `<another node's name>:<port>`: that node's host, through the tunnel;
//!   that node's agent decides by its own `socks.allowedPorts`;
//! - `<service>:<port>` (`name.namespace`, `name.namespace.svc`,
//!   `name.namespace.svc.<cluster domain>`, or a VIP or cluster IP): the
//!   service's address, where the proxy balances it like any connection;
//! - anything else: unknown (no open proxy to arbitrary addresses).
//!
//! Node names are looked up before service names (a node may be called
//! `web.default`), and names compare without case and a trailing dot.

use std::net::SocketAddr;

use edgemesh_core::{Protocol, ServiceKey, Snapshot};

use crate::handshake::Destination;

/// What a CONNECT reaches.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Route {
    /// A port of this node's own host.
    ThisHost(u16),
    /// A port of another node's host, through the tunnel.
    NodeHost { node: String, port: u16 },
    /// A service port, at this address (the proxy's).
    Service { service: ServiceKey, addr: SocketAddr },
    /// This node's port that `socks.allowedPorts` does not list.
    NotAllowed,
    /// A known service without this TCP port.
    NoSuchPort(ServiceKey),
    /// No node or service of that name or address.
    Unknown,
}

/// What [`route`] needs besides the snapshot.
pub struct Names<'a> {
    pub this_node: &'a str,
    /// The cluster domain, without dots at either end.
    pub cluster_domain: &'a str,
    /// This node's `socks.allowedPorts`.
    pub allowed_ports: &'a [u16],
    /// Whether a name is another node reachable through the tunnel.
    pub is_node: &'a dyn Fn(&str) -> bool,
}

pub fn route(destination: &Destination, snapshot: &Snapshot, names: &Names<'_>) -> Route {
    let (name, port) = match destination {
        Destination::Ip(addr) => {
            return match snapshot.service_by_ip(&addr.ip()) {
                Some(service) => service_port(&service.key, *addr, snapshot),
                None => Route::Unknown,
            };
        }
        Destination::Name(name, port) => (name.trim_end_matches('.').to_ascii_lowercase(), *port),
    };
    if name == names.this_node.to_ascii_lowercase() {
        return if names.allowed_ports.contains(&port) { Route::ThisHost(port) } else { Route::NotAllowed };
    }
    if (names.is_node)(&name) {
        return Route::NodeHost { node: name, port };
    }
    let Some(key) = service_key(&name, names.cluster_domain) else { return Route::Unknown };
    match snapshot.service(&key).and_then(|s| s.ips().next()) {
        Some(ip) => service_port(&key, SocketAddr::new(ip, port), snapshot),
        None => Route::Unknown,
    }
}

/// The route to a service address, if the service has that TCP port.
fn service_port(key: &ServiceKey, addr: SocketAddr, snapshot: &Snapshot) -> Route {
    match snapshot.service(key) {
        Some(service) if service.port(addr.port(), Protocol::Tcp).is_some() => {
            Route::Service { service: key.clone(), addr }
        }
        Some(_) => Route::NoSuchPort(key.clone()),
        None => Route::Unknown,
    }
}

/// `name.namespace`, optionally followed by `.svc` or `.svc.<domain>`.
fn service_key(name: &str, domain: &str) -> Option<ServiceKey> {
    let short = name
        .strip_suffix(domain)
        .and_then(|n| n.strip_suffix(".svc."))
        .or_else(|| name.strip_suffix(".svc"))
        .unwrap_or(name);
    let (service, namespace) = short.split_once('.')?;
    if service.is_empty() || namespace.is_empty() || namespace.contains('.') {
        return None;
    }
    Some(ServiceKey::new(namespace, service))
}

#[cfg(test)]
mod tests;

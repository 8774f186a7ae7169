//! What goes where in the kernel fast path: a pure function from one
//! service (and this node's name, and the endpoints the proxy has ejected)
//! to a [`Route`] per service address, port and protocol.
//!
//! The kernel picks only among endpoints a client reaches directly: those
//! on this node. Everything the kernel cannot decide the way the proxy
//! would is sent to the agent's own listener for the service (its VIP and
//! port), where the proxy takes over:
//! - an endpoint topology would use is on another node (the tunnel; an
//!   endpoint without a node name is dialled directly, as the proxy does);
//! - the strategy is not RoundRobin or Random (`ConsistentHash`,
//!   `LeastRequest`);
//! - the port is HTTP-aware;
//! - the proxy has ejected one of the endpoints (passive health the kernel
//!   does not know of);
//! - no endpoint is left (the agent refuses the connection at once, where
//!   an unrouted cluster IP would hang).
//!
//! Headless services and SCTP ports get nothing. A VIP whose traffic goes
//! to the agent gets no entry at all: the proxy listens on it already.

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use edgemesh_core::{Backend, LbStrategy, Protocol, ServiceEntry, SessionAffinity};
use edgemesh_ebpf::{FastBackend, FastService, Pick, ServicePort};
use edgemesh_proxy::balance;

/// Where the kernel sends connections to one service address and port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    pub port: ServicePort,
    /// Endpoints on this node the kernel picks among (none: every
    /// connection goes to the agent), how, and the agent's listener for
    /// the service (its VIP of the address' family).
    pub service: FastService,
    /// Why the agent keeps this port, when it does.
    pub via_agent: Option<ViaAgent>,
}

/// Why connections to a service port go to the agent rather than straight
/// to an endpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ViaAgent {
    /// An endpoint topology would use is on another node.
    RemoteEndpoint,
    /// A strategy the kernel does not implement.
    Strategy(LbStrategy),
    /// The port is proxied per HTTP request.
    Http,
    /// The proxy has ejected one of the endpoints.
    Ejected,
    /// No endpoint (of this family, after topology).
    NoEndpoint,
}

/// The routes of every address (VIPs and cluster IPs), port and protocol
/// of `entry`, as seen from node `node`; `ejected`: endpoints the proxy
/// skips for now.
pub fn routes(entry: &ServiceEntry, node: &str, ejected: &HashSet<SocketAddr>) -> Vec<Route> {
    if entry.headless {
        return Vec::new();
    }
    let mut routes = Vec::new();
    for port in entry.ports.iter() {
        let protocol = match port.protocol {
            Protocol::Tcp => edgemesh_ebpf::Protocol::Tcp,
            Protocol::Udp => edgemesh_ebpf::Protocol::Udp,
            Protocol::Sctp => continue,
        };
        for ip in entry.ips() {
            let service_port = ServicePort { addr: ip, port: port.port, protocol };
            let family = balance::same_family(&port.backends, ip.is_ipv6());
            let (used, preferred) =
                balance::topology(&family, entry.internal_traffic_policy, entry.traffic_distribution, node);
            // PreferClose: the others only while none of these is healthy.
            let candidates = &used[..preferred];
            let via_agent = via_agent(entry, port.app_protocol.is_http(), candidates, node, ejected);
            let agent = entry.vip_of_family(ip).map(|vip| SocketAddr::new(vip, port.port));
            if via_agent.is_some() && (agent.is_none() || is_vip(entry, ip)) {
                // The VIP is the agent's listener already; without a VIP
                // (pool exhausted) the kernel has nowhere to send it.
                continue;
            }
            let backends = match via_agent {
                Some(_) => Vec::new(),
                None => candidates
                    .iter()
                    .map(|b| FastBackend { addr: b.addr, host_only: is_host_only(b.addr.ip()) })
                    .collect(),
            };
            let service = FastService {
                backends,
                pick: if entry.strategy == LbStrategy::Random { Pick::Random } else { Pick::RoundRobin },
                affinity: match entry.session_affinity {
                    SessionAffinity::None => None,
                    SessionAffinity::ClientIp { timeout_seconds } => Some(Duration::from_secs(timeout_seconds.into())),
                },
                agent,
            };
            routes.push(Route { port: service_port, service, via_agent });
        }
    }
    routes
}

fn via_agent(
    entry: &ServiceEntry,
    http: bool,
    candidates: &[Backend],
    node: &str,
    ejected: &HashSet<SocketAddr>,
) -> Option<ViaAgent> {
    if !matches!(entry.strategy, LbStrategy::RoundRobin | LbStrategy::Random) {
        Some(ViaAgent::Strategy(entry.strategy))
    } else if http {
        Some(ViaAgent::Http)
    } else if candidates.is_empty() {
        Some(ViaAgent::NoEndpoint)
    } else if candidates.iter().any(|b| b.node_name.as_deref().is_some_and(|n| n != node)) {
        Some(ViaAgent::RemoteEndpoint)
    } else if candidates.iter().any(|b| ejected.contains(&b.addr)) {
        Some(ViaAgent::Ejected)
    } else {
        None
    }
}

fn is_vip(entry: &ServiceEntry, ip: IpAddr) -> bool {
    entry.vips().any(|v| v == ip)
}

fn is_host_only(ip: IpAddr) -> bool {
    ip.to_canonical().is_loopback()
}

#[cfg(test)]
mod tests;

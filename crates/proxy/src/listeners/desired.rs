//! What a snapshot asks of the listeners, without I/O: which services
//! changed, which listeners a service wants (one per family), and under
//! which addresses the transparent listener finds each.

use std::net::SocketAddr;
use std::sync::Arc;

use edgemesh_core::{Protocol, ResolvedPort, ServiceEntry, ServiceKey, Snapshot};

use crate::Transparent;
use crate::routes::node_port_route;

/// Keys of the services whose entries differ between `old` (nothing yet
/// when `None`) and `new`, in order: one walk over both maps in key order.
/// The registry replaces an entry only when it changes, so an unchanged
/// service is the same `Arc` in both; a generation of 50,000 changes among
/// 100,000 services then visits 50,000 services, not 100,000.
pub(super) fn changed_between(old: Option<&Snapshot>, new: &Snapshot) -> Vec<ServiceKey> {
    let mut old = old.into_iter().flat_map(|s| s.services()).peekable();
    let mut new = new.services().peekable();
    let mut keys = Vec::new();
    loop {
        let order = match (old.peek(), new.peek()) {
            (None, None) => return keys,
            (Some(_), None) => std::cmp::Ordering::Less,
            (None, Some(_)) => std::cmp::Ordering::Greater,
            (Some(o), Some(n)) => o.key.cmp(&n.key),
        };
        match order {
            std::cmp::Ordering::Less => keys.push(old.next().expect("peeked").key.clone()),
            std::cmp::Ordering::Greater => keys.push(new.next().expect("peeked").key.clone()),
            std::cmp::Ordering::Equal => {
                let (o, n) = (old.next().expect("peeked"), new.next().expect("peeked"));
                if !Arc::ptr_eq(o, n) {
                    keys.push(n.key.clone());
                }
            }
        }
    }
}

/// The address:port/protocol pairs a service should have listeners for,
/// with their ports: each VIP (IPv4 and IPv6) with each TCP and UDP port
/// (SCTP is not proxied); with interception, TCP ports once per family the
/// service has an address in, served through the transparent listener
/// under every address of that family (so a service without a VIP is
/// still served by its cluster IPs). Each listener's pool uses the
/// endpoints of its address' family only (`Targets::for_port`).
pub(super) fn desired_listeners<'a>(
    entry: Option<&'a ServiceEntry>,
    transparent: bool,
) -> Vec<(SocketAddr, Protocol, &'a ResolvedPort)> {
    let Some(entry) = entry else { return Vec::new() };
    let mut out: Vec<(SocketAddr, Protocol, &'a ResolvedPort)> = Vec::with_capacity(entry.ports.len());
    let mut push = |addr: SocketAddr, port: &'a ResolvedPort| {
        if !out.iter().any(|(a, p, _)| *a == addr && *p == port.protocol) {
            out.push((addr, port.protocol, port));
        }
    };
    for port in &entry.ports {
        match port.protocol {
            // Through the transparent listener: one pool per port and
            // family, found under every address of the service in that
            // family (see `routes_of`), keyed here by the first of them.
            Protocol::Tcp if transparent => {
                for ipv6 in [false, true] {
                    if let Some(first) = entry.ips().find(|ip| ip.is_ipv6() == ipv6) {
                        push(SocketAddr::new(first, port.port), port);
                    }
                }
            }
            // A listener on each VIP (one per family).
            Protocol::Tcp | Protocol::Udp => {
                for vip in entry.vips() {
                    push(SocketAddr::new(vip, port.port), port);
                }
            }
            Protocol::Sctp => {}
        }
    }
    out
}

/// Where the transparent listener finds the pool of TCP port `port` keyed
/// by `frontend`: with [`Transparent::Every`], every address of the service
/// in `frontend`'s family, and the node port on the node's addresses of
/// that family; with [`Transparent::NodePorts`], that node port only.
pub(super) fn routes_of(
    entry: &ServiceEntry,
    port: &ResolvedPort,
    frontend: SocketAddr,
    scope: Transparent,
) -> Box<[SocketAddr]> {
    let ipv6 = frontend.is_ipv6();
    let node_port = port.node_port.map(|p| node_port_route(ipv6, p));
    match scope {
        Transparent::Off => Box::default(),
        Transparent::Every => entry
            .ips()
            .filter(|ip| ip.is_ipv6() == ipv6)
            .map(|ip| SocketAddr::new(ip, port.port))
            .chain(node_port)
            .collect(),
        Transparent::NodePorts => node_port.into_iter().collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pool::tests::entry;

    fn listeners(entry: &ServiceEntry, transparent: bool) -> Vec<(String, Protocol)> {
        desired_listeners(Some(entry), transparent).into_iter().map(|(a, p, _)| (a.to_string(), p)).collect()
    }

    fn routes(entry: &ServiceEntry, frontend: &str) -> Vec<String> {
        routes_in(entry, frontend, Transparent::Every)
    }

    fn routes_in(entry: &ServiceEntry, frontend: &str, scope: Transparent) -> Vec<String> {
        routes_of(entry, &entry.ports[0], frontend.parse().unwrap(), scope).iter().map(ToString::to_string).collect()
    }

    /// A listener (and so a pool) per family: each VIP listens for itself;
    /// with interception, a TCP port has a pool per family of the service's
    /// addresses, found under that family's addresses and node port only.
    #[test]
    fn a_listener_per_family_and_routes_of_its_family() {
        let udp = entry(&["127.251.0.1", "fd00:9:251::1"], &[], Protocol::Udp, None, &[]);
        let both = [("127.251.0.1:80".to_owned(), Protocol::Udp), ("[fd00:9:251::1]:80".to_owned(), Protocol::Udp)];
        assert_eq!(listeners(&udp, false), both);
        assert_eq!(listeners(&udp, true), both, "UDP keeps its VIP listeners with interception");

        let dual =
            entry(&["fd00:9:251::1"], &["10.96.0.10", "10.96.0.11", "fd00:96::10"], Protocol::Tcp, Some(30080), &[]);
        assert_eq!(
            listeners(&dual, true),
            [("10.96.0.10:80".to_owned(), Protocol::Tcp), ("[fd00:9:251::1]:80".to_owned(), Protocol::Tcp)]
        );
        assert_eq!(routes(&dual, "10.96.0.10:80"), ["10.96.0.10:80", "10.96.0.11:80", "0.0.0.0:30080"]);
        assert_eq!(routes(&dual, "[fd00:9:251::1]:80"), ["[fd00:9:251::1]:80", "[fd00:96::10]:80", "[::]:30080"]);

        // Single stack: one pool, and its node port in its family only.
        let v4 = entry(&[], &["10.96.0.10"], Protocol::Tcp, Some(30080), &[]);
        assert_eq!(listeners(&v4, true), [("10.96.0.10:80".to_owned(), Protocol::Tcp)]);
        assert_eq!(routes(&v4, "10.96.0.10:80"), ["10.96.0.10:80", "0.0.0.0:30080"]);
    }

    /// Beside the kernel fast path: the VIP listeners stay, and each TCP
    /// one is also found under its node port in its family, only there.
    #[test]
    fn node_ports_only_beside_the_vip_listeners() {
        let dual = entry(&["9.251.0.1", "fd00:9:251::1"], &["10.96.0.10"], Protocol::Tcp, Some(30080), &[]);
        assert_eq!(
            listeners(&dual, false),
            [("9.251.0.1:80".to_owned(), Protocol::Tcp), ("[fd00:9:251::1]:80".to_owned(), Protocol::Tcp)]
        );
        assert_eq!(routes_in(&dual, "9.251.0.1:80", Transparent::NodePorts), ["0.0.0.0:30080"]);
        assert_eq!(routes_in(&dual, "[fd00:9:251::1]:80", Transparent::NodePorts), ["[::]:30080"]);
        let cluster_ip_only = entry(&["9.251.0.1"], &["10.96.0.10"], Protocol::Tcp, None, &[]);
        assert_eq!(routes_in(&cluster_ip_only, "9.251.0.1:80", Transparent::NodePorts), Vec::<String>::new());
        assert_eq!(routes_in(&dual, "9.251.0.1:80", Transparent::Off), Vec::<String>::new());
    }
}

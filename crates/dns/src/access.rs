//! Who may ask: the node-local DNS is no open resolver.
//!
//! A query is this node's when it arrives on a node-local address (the
//! server listens on loopback or on a link-local address such as
//! `169.254.96.16`, which nothing beyond the node's own links routes to),
//! or when it comes from loopback, from one of this node's own addresses,
//! from this node's pod CIDRs (its Node object's `spec.podCIDRs`, from the
//! snapshot, so they follow the Node live and survive an outage through
//! the cache), or from a network in `dns.allowedClients`. Anyone else gets
//! REFUSED, for cluster names as well as for forwarded ones: the cluster's
//! service names and addresses are not for the outside either.
//!
//! This node's addresses are read from the kernel (`getifaddrs`) at start
//! and again, at most once per [`OWN_REFRESH`], when a client matches
//! nothing else, so an address added later (DHCP, a new interface) counts
//! within a second without a lookup per query.

use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use ipnet::IpNet;

/// Least time between two reads of this node's addresses.
const OWN_REFRESH: Duration = Duration::from_secs(1);

/// The client check of one server (see the module docs).
#[derive(Debug)]
pub struct ClientAccess {
    /// The server listens on a node-local address: every query is the node's.
    node_local: bool,
    allowed: ArcSwap<Vec<IpNet>>,
    own: ArcSwap<Vec<IpAddr>>,
    /// When `own` was last read; `None` before the first read.
    own_read: Mutex<Option<Instant>>,
}

/// Whether queries to `listen` can only come from this node: loopback, or
/// a link-local address (not routed beyond the node's links; pods reach it
/// through the node).
pub fn is_node_local(listen: IpAddr) -> bool {
    let ip = canonical(listen);
    ip.is_loopback()
        || match ip {
            IpAddr::V4(v4) => v4.is_link_local(),
            IpAddr::V6(v6) => v6.is_unicast_link_local(),
        }
}

/// An IPv4-mapped IPv6 address as the IPv4 address it is.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

impl ClientAccess {
    /// The check for a server on `listen` that also answers `allowed`.
    pub fn new(listen: IpAddr, allowed: Vec<IpNet>) -> Self {
        Self {
            node_local: is_node_local(listen),
            allowed: ArcSwap::from_pointee(allowed),
            own: ArcSwap::from_pointee(Vec::new()),
            own_read: Mutex::new(None),
        }
    }

    /// Whether every query is answered whatever its source.
    pub fn node_local(&self) -> bool {
        self.node_local
    }

    /// Replaces the allowed networks (a config reload).
    pub fn set_allowed(&self, allowed: Vec<IpNet>) {
        self.allowed.store(allowed.into());
    }

    /// Whether a query from `client` is answered. `in_pod_cidrs` tells
    /// whether an address is in this node's pod CIDRs; it is asked only
    /// when loopback and the allowed networks do not match.
    pub fn allows(&self, client: IpAddr, in_pod_cidrs: impl FnOnce(IpAddr) -> bool) -> bool {
        if self.node_local {
            return true;
        }
        let client = canonical(client);
        if client.is_loopback() || self.allowed.load().iter().any(|net| net.contains(&client)) {
            return true;
        }
        if in_pod_cidrs(client) {
            return true;
        }
        if self.own.load().contains(&client) {
            return true;
        }
        self.refresh_own() && self.own.load().contains(&client)
    }

    /// Reads this node's addresses again unless that was done within
    /// [`OWN_REFRESH`]; whether it read them.
    fn refresh_own(&self) -> bool {
        {
            let mut read = self.own_read.lock().unwrap_or_else(|p| p.into_inner());
            if read.is_some_and(|at| at.elapsed() < OWN_REFRESH) {
                return false;
            }
            *read = Some(Instant::now());
        }
        match own_addresses() {
            Ok(addrs) => {
                self.own.store(addrs.into());
                true
            }
            Err(error) => {
                tracing::debug!(%error, "cannot list this node's addresses; only dns.allowedClients and loopback are answered");
                false
            }
        }
    }
}

/// Every address on this node's interfaces (in this network namespace).
fn own_addresses() -> nix::Result<Vec<IpAddr>> {
    let mut addrs: Vec<IpAddr> = nix::ifaddrs::getifaddrs()?
        .filter_map(|ifa| {
            let addr = ifa.address?;
            if let Some(v4) = addr.as_sockaddr_in() {
                Some(IpAddr::V4(v4.ip()))
            } else {
                addr.as_sockaddr_in6().map(|v6| IpAddr::V6(v6.ip()))
            }
        })
        .collect();
    addrs.sort_unstable();
    addrs.dedup();
    Ok(addrs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn node_local_listeners_answer_everyone() {
        for listen in ["127.0.0.1", "127.0.0.53", "::1", "169.254.96.16", "fe80::1"] {
            let access = ClientAccess::new(ip(listen), Vec::new());
            assert!(access.node_local(), "{listen}");
            assert!(access.allows(ip("203.0.113.9"), |_| false), "{listen}");
        }
        for listen in ["0.0.0.0", "::", "10.0.0.1", "192.168.1.5", "2001:db8::1"] {
            assert!(!ClientAccess::new(ip(listen), Vec::new()).node_local(), "{listen}");
        }
    }

    #[test]
    fn other_listeners_answer_loopback_own_addresses_and_allowed_networks_only() {
        let access = ClientAccess::new(ip("0.0.0.0"), vec!["10.244.1.0/24".parse().unwrap()]);
        assert!(access.allows(ip("127.0.0.1"), |_| false));
        assert!(access.allows(ip("::1"), |_| false));
        assert!(access.allows(ip("10.244.1.77"), |_| false));
        assert!(access.allows(ip("::ffff:10.244.1.77"), |_| false), "IPv4-mapped is the IPv4 address");
        assert!(!access.allows(ip("10.244.2.77"), |_| false));
        assert!(!access.allows(ip("203.0.113.9"), |_| false));
        // This process's own interface addresses count as the node's.
        let own = own_addresses().unwrap();
        assert!(own.contains(&ip("127.0.0.1")), "{own:?}");
        for addr in own {
            assert!(access.allows(addr, |_| false), "{addr}");
        }
        access.set_allowed(Vec::new());
        assert!(!access.allows(ip("10.244.1.77"), |_| false), "a reload takes the network away");
    }

    #[test]
    fn this_nodes_pod_cidrs_are_answered_and_asked_only_when_needed() {
        let access = ClientAccess::new(ip("0.0.0.0"), vec!["10.1.0.0/16".parse().unwrap()]);
        let pods: ipnet::IpNet = "10.244.1.0/24".parse().unwrap();
        let in_pods = |client: IpAddr| pods.contains(&client);
        assert!(access.allows(ip("10.244.1.9"), in_pods));
        assert!(access.allows(ip("::ffff:10.244.1.9"), in_pods), "asked with the IPv4 address");
        assert!(!access.allows(ip("10.244.2.9"), in_pods));
        let not_asked = |_| panic!("loopback and allowed networks need no snapshot");
        assert!(access.allows(ip("127.0.0.1"), not_asked));
        assert!(access.allows(ip("10.1.2.3"), not_asked));
        assert!(ClientAccess::new(ip("169.254.96.16"), Vec::new()).allows(ip("203.0.113.9"), not_asked));
    }
}

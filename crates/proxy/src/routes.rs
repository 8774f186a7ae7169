//! Which pool serves a connection redirected to the transparent listener:
//! service address (cluster IP or VIP, and port) -> its port's pool, and
//! node port -> its pool, one per family.
//!
//! The listener reconciler (`listeners`) writes it, one write lock per
//! changed service held for a few map operations, so a resync never
//! stalls accepts for long; the transparent listener's accept loops read it.

use std::collections::HashMap;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, RwLock};

use crate::pool::Pool;

/// Service address (cluster IP or VIP, and port) -> the pool serving it.
///
/// Pools are per family (see `crate::pool`): a service's IPv4 addresses
/// and its node ports reached on the node's IPv4 addresses lead to its IPv4
/// pool, IPv6 ones to its IPv6 pool.
#[derive(Debug, Default)]
pub(crate) struct Routes {
    map: RwLock<HashMap<SocketAddr, Arc<Pool>>>,
}

impl Routes {
    /// The pool for a connection originally sent to `dst`: the service
    /// address itself, else a node port of `dst`'s family (nftables
    /// redirects a node port only when sent to one of the node's own
    /// addresses, which are no service addresses).
    pub(crate) fn lookup(&self, dst: &SocketAddr) -> Option<Arc<Pool>> {
        let dst = normalize(*dst);
        let map = self.map.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        map.get(&dst).or_else(|| map.get(&node_port_route(dst.is_ipv6(), dst.port()))).cloned()
    }

    /// Whether `dst`'s port is a node port served in the other family only
    /// (a single-stack service reached on a node address of the family it
    /// lacks, which kube-proxy does not serve either).
    pub(crate) fn is_node_port_of_other_family(&self, dst: &SocketAddr) -> bool {
        let dst = normalize(*dst);
        let map = self.map.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        map.contains_key(&node_port_route(!dst.is_ipv6(), dst.port()))
    }

    /// Removes `old` and inserts `new` in one step (no moment where a
    /// kept address is missing).
    pub(crate) fn replace(&self, old: &[SocketAddr], new: &[(SocketAddr, Arc<Pool>)]) {
        if old.is_empty() && new.is_empty() {
            return;
        }
        let mut map = self.map.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        for addr in old {
            map.remove(addr);
        }
        for (addr, pool) in new {
            map.insert(*addr, pool.clone());
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.map.read().unwrap_or_else(std::sync::PoisonError::into_inner).len()
    }
}

/// The key under which the pool of a node port is found in a family: the
/// port on that family's unspecified address (any address of the node).
pub(crate) fn node_port_route(ipv6: bool, port: u16) -> SocketAddr {
    if ipv6 { SocketAddr::from((Ipv6Addr::UNSPECIFIED, port)) } else { SocketAddr::from((Ipv4Addr::UNSPECIFIED, port)) }
}

/// An IPv4-mapped IPv6 address is the IPv4 address.
fn normalize(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(v4.into(), v6.port()),
            None => addr,
        },
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pool::Targets;
    use edgemesh_core::{LbStrategy, ServiceKey};

    fn pool(addr: &str) -> Arc<Pool> {
        Arc::new(Pool::new(
            ServiceKey::new("default", "web"),
            addr.parse().unwrap(),
            Targets::new(LbStrategy::RoundRobin, Arc::from(Vec::new())),
        ))
    }

    #[test]
    fn routes_follow_replacements() {
        let routes = Routes::default();
        let vip: SocketAddr = "127.251.0.1:80".parse().unwrap();
        let cluster: SocketAddr = "10.96.0.10:80".parse().unwrap();
        let p = pool("127.251.0.1:80");
        routes.replace(&[], &[(vip, p.clone()), (cluster, p.clone())]);
        assert!(Arc::ptr_eq(&routes.lookup(&cluster).unwrap(), &p));
        assert!(routes.lookup(&"10.96.0.10:81".parse().unwrap()).is_none(), "another port is another service port");
        // The cluster IP changes: the old address goes, the kept one stays.
        let moved: SocketAddr = "10.96.0.11:80".parse().unwrap();
        routes.replace(&[vip, cluster], &[(vip, p.clone()), (moved, p.clone())]);
        assert!(routes.lookup(&cluster).is_none());
        assert!(routes.lookup(&moved).is_some() && routes.lookup(&vip).is_some());
        assert_eq!(routes.len(), 2);
        // An IPv4-mapped destination is the IPv4 one.
        assert!(routes.lookup(&"[::ffff:10.96.0.11]:80".parse().unwrap()).is_some());
        // A node port is found on any (node) address of its family; the
        // service's own addresses win.
        let np = pool("127.251.0.2:80");
        routes.replace(&[], &[(node_port_route(false, 30080), np.clone())]);
        assert!(Arc::ptr_eq(&routes.lookup(&"192.0.2.1:30080".parse().unwrap()).unwrap(), &np));
        assert!(routes.lookup(&"192.0.2.1:30081".parse().unwrap()).is_none());
        // An IPv4-only node port is not served on IPv6 addresses (as
        // kube-proxy); a dual-stack one is, by its IPv6 pool.
        let v6: SocketAddr = "[2001:db8::1]:30080".parse().unwrap();
        assert!(routes.lookup(&v6).is_none());
        assert!(routes.is_node_port_of_other_family(&v6));
        assert!(!routes.is_node_port_of_other_family(&"192.0.2.1:30080".parse().unwrap()));
        let np6 = pool("[fd00:9:251::2]:80");
        routes.replace(&[], &[(node_port_route(true, 30080), np6.clone())]);
        assert!(Arc::ptr_eq(&routes.lookup(&v6).unwrap(), &np6));
        assert!(Arc::ptr_eq(&routes.lookup(&"192.0.2.1:30080".parse().unwrap()).unwrap(), &np));
    }
}

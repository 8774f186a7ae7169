//! Virtual IP allocation.
//!
//! A service's VIP is derived from a stable hash of `namespace/name`, so it
//! stays the same across updates and restarts; a collision probes forward to
//! the next free address. Loading the same set of services in the same order
//! therefore always yields the same VIPs.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;
use thiserror::Error;

use crate::service::ServiceKey;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum VipError {
    #[error("the VIP range {cidr} is exhausted ({size} addresses all in use); widen --vip-cidr")]
    Exhausted { cidr: IpNet, size: u64 },
}

/// Hands out addresses of one CIDR to services.
#[derive(Debug)]
pub struct VipAllocator {
    cidr: IpNet,
    /// Offset of the first usable address from the network address.
    first: u128,
    /// Number of usable addresses.
    size: u64,
    by_ip: HashMap<IpAddr, ServiceKey>,
    by_key: HashMap<ServiceKey, IpAddr>,
}

impl VipAllocator {
    pub fn new(cidr: IpNet) -> Self {
        let cidr = cidr.trunc();
        let host_bits = u32::from(cidr.max_prefix_len() - cidr.prefix_len());
        let total: u128 = if host_bits >= 64 { 1u128 << 64 } else { 1u128 << host_bits };
        // Skip the network address, and the broadcast address of IPv4
        // networks that have one.
        let (first, usable) = match cidr {
            IpNet::V4(_) if host_bits >= 2 => (1, total - 2),
            IpNet::V6(_) if host_bits >= 1 => (1, total - 1),
            _ => (0, total),
        };
        Self { cidr, first, size: usable.min(u64::MAX as u128) as u64, by_ip: HashMap::new(), by_key: HashMap::new() }
    }

    pub fn cidr(&self) -> IpNet {
        self.cidr
    }

    /// The VIP of `key`, allocating one if it has none.
    pub fn allocate(&mut self, key: &ServiceKey) -> Result<IpAddr, VipError> {
        self.allocate_preferring(key, None)
    }

    /// Like [`allocate`](Self::allocate), but takes `preferred` (a cluster IP
    /// the service asks for) when it lies in the range and is free; a service
    /// holding another address moves to it.
    pub fn allocate_preferring(&mut self, key: &ServiceKey, preferred: Option<IpAddr>) -> Result<IpAddr, VipError> {
        if let Some(want) = preferred.filter(|ip| self.contains(ip)) {
            match self.by_ip.get(&want) {
                Some(owner) if owner == key => return Ok(want),
                Some(owner) => {
                    tracing::warn!(service = %key, ip = %want, owner = %owner, "requested VIP is taken; allocating another");
                }
                None => {
                    self.release(key);
                    self.by_ip.insert(want, key.clone());
                    self.by_key.insert(key.clone(), want);
                    return Ok(want);
                }
            }
        }
        if let Some(ip) = self.by_key.get(key) {
            return Ok(*ip);
        }
        if self.by_ip.len() as u64 >= self.size {
            return Err(VipError::Exhausted { cidr: self.cidr, size: self.size });
        }
        let start = stable_hash(key) % self.size;
        // The pool is not full, so this finds a free address.
        for i in 0..self.size {
            let ip = self.nth((start + i) % self.size);
            if let std::collections::hash_map::Entry::Vacant(slot) = self.by_ip.entry(ip) {
                slot.insert(key.clone());
                self.by_key.insert(key.clone(), ip);
                return Ok(ip);
            }
        }
        Err(VipError::Exhausted { cidr: self.cidr, size: self.size })
    }

    /// Gives `key`'s VIP back to the pool; true if it had one.
    pub fn release(&mut self, key: &ServiceKey) -> bool {
        match self.by_key.remove(key) {
            Some(ip) => {
                self.by_ip.remove(&ip);
                true
            }
            None => false,
        }
    }

    /// Whether `ip` is a usable address of the range.
    pub fn contains(&self, ip: &IpAddr) -> bool {
        if !self.cidr.contains(ip) {
            return false;
        }
        let offset = match (ip, self.cidr) {
            (IpAddr::V4(ip), IpNet::V4(net)) => u128::from(u32::from(*ip) - u32::from(net.network())),
            (IpAddr::V6(ip), IpNet::V6(net)) => u128::from(*ip) - u128::from(net.network()),
            _ => return false,
        };
        offset >= self.first && offset - self.first < u128::from(self.size)
    }

    pub fn get(&self, key: &ServiceKey) -> Option<IpAddr> {
        self.by_key.get(key).copied()
    }

    pub fn in_use(&self) -> usize {
        self.by_key.len()
    }

    fn nth(&self, n: u64) -> IpAddr {
        let offset = self.first + u128::from(n);
        match self.cidr {
            IpNet::V4(net) => IpAddr::V4(Ipv4Addr::from(u32::from(net.network()) + offset as u32)),
            IpNet::V6(net) => IpAddr::V6(Ipv6Addr::from(u128::from(net.network()) + offset)),
        }
    }
}

/// FNV-1a over `namespace/name`: stable across Rust versions and platforms,
/// unlike `std`'s hasher, so VIPs survive upgrades of the agent.
fn stable_hash(key: &ServiceKey) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key.namespace.bytes().chain(std::iter::once(b'/')).chain(key.name.bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: &str) -> ServiceKey {
        ServiceKey::new("default", n)
    }

    #[test]
    fn same_key_same_vip_across_allocators() {
        let cidr: IpNet = "127.251.0.0/16".parse().unwrap();
        let mut a = VipAllocator::new(cidr);
        let mut b = VipAllocator::new(cidr);
        let va = a.allocate(&key("web")).unwrap();
        // Other services allocated first do not move it, unless they collide.
        b.allocate(&key("db")).unwrap();
        let vb = b.allocate(&key("web")).unwrap();
        assert_eq!(va, vb);
        assert!(cidr.contains(&va));
        assert_eq!(a.allocate(&key("web")).unwrap(), va, "allocation is idempotent");
    }

    #[test]
    fn skips_network_and_broadcast_and_exhausts_cleanly() {
        let cidr: IpNet = "10.9.0.0/30".parse().unwrap();
        let mut a = VipAllocator::new(cidr);
        let x = a.allocate(&key("a")).unwrap();
        let y = a.allocate(&key("b")).unwrap();
        assert_ne!(x, y);
        for ip in [x, y] {
            assert!(ip != "10.9.0.0".parse::<IpAddr>().unwrap() && ip != "10.9.0.3".parse::<IpAddr>().unwrap());
        }
        let err = a.allocate(&key("c")).unwrap_err();
        assert!(err.to_string().contains("exhausted"), "{err}");
        assert!(a.release(&key("a")));
        assert_eq!(a.allocate(&key("c")).unwrap(), x, "released address is reused");
    }

    #[test]
    fn requested_address_in_range_is_honoured() {
        let mut a = VipAllocator::new("127.60.0.0/24".parse().unwrap());
        let want: IpAddr = "127.60.0.7".parse().unwrap();
        let first = a.allocate(&key("web")).unwrap();
        assert_eq!(a.allocate_preferring(&key("web"), Some(want)).unwrap(), want, "moves to the requested address");
        assert!(!a.by_ip.contains_key(&first) || first == want, "old address released");
        // Taken by another service: falls back to a hashed address.
        let other = a.allocate_preferring(&key("db"), Some(want)).unwrap();
        assert_ne!(other, want);
        // Outside the range, or the network address: ignored.
        let outside = a.allocate_preferring(&key("x"), Some("10.0.0.1".parse().unwrap())).unwrap();
        assert!(a.cidr().contains(&outside));
        assert!(!a.contains(&"127.60.0.0".parse().unwrap()) && !a.contains(&"127.60.0.255".parse().unwrap()));
    }

    #[test]
    fn ipv6_ranges_work() {
        let cidr: IpNet = "fd00:ed6e::/112".parse().unwrap();
        let mut a = VipAllocator::new(cidr);
        let ip = a.allocate(&key("web")).unwrap();
        assert!(ip.is_ipv6() && cidr.contains(&ip));
    }

    #[test]
    fn many_services_get_distinct_vips() {
        let mut a = VipAllocator::new("127.251.0.0/16".parse().unwrap());
        let mut seen = std::collections::HashSet::new();
        for i in 0..5000 {
            assert!(seen.insert(a.allocate(&key(&format!("svc-{i}"))).unwrap()));
        }
    }
}

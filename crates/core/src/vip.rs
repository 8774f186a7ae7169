//! Virtual IP allocation.
//!
//! A service's VIP is derived from a stable hash of `namespace/name`, so it
//! stays the same across updates and restarts; a collision probes forward to
//! the next free address. Loading the same set of services in the same order
//! therefore always yields the same VIPs.
//!
//! [`VipPools`] holds one pool per family (`vipCidr`, `vipCidr6`) and
//! decides which services get a VIP of which family: one per family the
//! service asks for (`spec.ipFamilies` / `ipFamilyPolicy`, else the
//! families of its cluster IPs, else IPv4), as [`VipPolicy`] says.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;
use thiserror::Error;

use crate::service::{IpFamily, IpFamilyPolicy, ServiceKey};

/// Which services get a VIP (never a headless one), per family they ask
/// for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum VipPolicy {
    /// Every service: clients reach services through their VIPs only (no
    /// interception).
    #[default]
    Every,
    /// Only where the agent must receive traffic on an address of its own:
    /// with interception, connections to a cluster IP are redirected where
    /// they are, so a service needs a VIP of a family only when it has no
    /// cluster IP of that family, or when it has UDP ports (datagrams to its
    /// cluster IP are DNATed to the VIP of the same family). Keeps the pools
    /// and the VIP device small.
    WhereNeeded,
}

/// What of a service decides its VIPs (the registry's stored copy lends
/// these; vip does not depend on how it is stored).
#[derive(Clone, Copy, Debug)]
pub struct VipRequest<'a> {
    pub headless: bool,
    pub cluster_ips: &'a [IpAddr],
    pub ip_families: &'a [IpFamily],
    pub ip_family_policy: Option<IpFamilyPolicy>,
    pub has_udp: bool,
}

/// The families a service asks for: `spec.ipFamilies` (else the families
/// of its cluster IPs, else IPv4, the cluster's default), both with a
/// dual-stack `ipFamilyPolicy`, the first only with `SingleStack`.
pub fn wanted_families(svc: &VipRequest<'_>) -> Vec<IpFamily> {
    let family = |ip: &IpAddr| if ip.is_ipv4() { IpFamily::IPv4 } else { IpFamily::IPv6 };
    let mut families: Vec<IpFamily> = Vec::with_capacity(2);
    for f in svc.ip_families.iter().copied().chain(svc.cluster_ips.iter().map(family)) {
        if !families.contains(&f) {
            families.push(f);
        }
    }
    if families.is_empty() {
        families.push(IpFamily::IPv4);
    }
    match svc.ip_family_policy {
        Some(IpFamilyPolicy::SingleStack) => families.truncate(1),
        Some(IpFamilyPolicy::PreferDualStack | IpFamilyPolicy::RequireDualStack) => {
            for f in [IpFamily::IPv4, IpFamily::IPv6] {
                if !families.contains(&f) {
                    families.push(f);
                }
            }
        }
        None => {}
    }
    families
}

/// The VIP pools of both families, and which service gets which VIPs.
#[derive(Debug)]
pub struct VipPools {
    v4: VipAllocator,
    v6: Option<VipAllocator>,
    policy: VipPolicy,
}

/// A service's VIPs after [`VipPools::assign`].
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Assigned {
    pub vip: Option<IpAddr>,
    pub vip6: Option<IpAddr>,
    /// An address went back to a pool (others may be waiting for one).
    pub released: bool,
    /// The service waits for an address: a pool was full, or a cluster IP
    /// it asks for as its VIP is taken.
    pub waiting: bool,
    /// Why it has not every VIP it should (a pool exhausted).
    pub problem: Option<String>,
}

impl VipPools {
    /// `v4` must be an IPv4 range and `v6`, when given, an IPv6 one (the
    /// configuration checks this).
    pub fn new(v4: IpNet, v6: Option<IpNet>, policy: VipPolicy) -> Self {
        Self { v4: VipAllocator::new(v4), v6: v6.map(VipAllocator::new), policy }
    }

    /// Gives `key` (service `svc`) the VIPs it should have now, keeping
    /// those it has, releasing those it no longer needs.
    pub fn assign(&mut self, key: &ServiceKey, svc: &VipRequest<'_>) -> Assigned {
        let families = if svc.headless { Vec::new() } else { wanted_families(svc) };
        let has_udp = svc.has_udp;
        let policy = self.policy;
        let mut out = Assigned::default();
        let pools = [(IpFamily::IPv4, Some(&mut self.v4)), (IpFamily::IPv6, self.v6.as_mut())];
        for (family, pool) in pools {
            let Some(pool) = pool else { continue };
            let of_family = |ip: &&IpAddr| ip.is_ipv4() == (family == IpFamily::IPv4);
            let has_cluster_ip = svc.cluster_ips.iter().any(|ip| of_family(&ip));
            let wanted = families.contains(&family) && (policy == VipPolicy::Every || !has_cluster_ip || has_udp);
            if !wanted {
                out.released |= pool.release(key);
                continue;
            }
            // A cluster IP inside the VIP range is honoured as the VIP, the
            // way Kubernetes honours a requested clusterIP.
            let preferred = svc.cluster_ips.iter().filter(of_family).copied().find(|ip| pool.contains(ip));
            let vip = match pool.allocate_preferring(key, preferred) {
                Ok(ip) => {
                    // Holding a stand-in for a requested address that was
                    // taken: wait for it like a service without a VIP.
                    out.waiting |= preferred.is_some_and(|want| want != ip);
                    Some(ip)
                }
                Err(e) => {
                    tracing::error!(service = %key, error = %e, "no virtual IP for service; it is not proxied");
                    out.waiting = true;
                    out.problem = Some(e.to_string());
                    None
                }
            };
            match family {
                IpFamily::IPv4 => out.vip = vip,
                IpFamily::IPv6 => out.vip6 = vip,
            }
        }
        out
    }

    /// Gives `key`'s VIPs back; true if it had any.
    pub fn release(&mut self, key: &ServiceKey) -> bool {
        let v4 = self.v4.release(key);
        let v6 = self.v6.as_mut().is_some_and(|p| p.release(key));
        v4 || v6
    }

    /// VIPs handed out, both families.
    pub fn in_use(&self) -> usize {
        self.v4.in_use() + self.v6.as_ref().map_or(0, VipAllocator::in_use)
    }
}

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
    /// Addresses in use, by their index in the range ([`Self::nth`]): a
    /// `u64` where an `IpAddr` takes 17 bytes (a third of each map's table).
    by_ip: HashMap<u64, ServiceKey>,
    by_key: HashMap<ServiceKey, u64>,
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
        Self {
            cidr,
            first,
            size: u64::try_from(usable).unwrap_or(u64::MAX),
            by_ip: HashMap::new(),
            by_key: HashMap::new(),
        }
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
        if let Some((want, n)) = preferred.and_then(|ip| Some((ip, self.index_of(&ip)?))) {
            match self.by_ip.get(&n) {
                Some(owner) if owner == key => return Ok(want),
                Some(owner) => {
                    tracing::warn!(service = %key, ip = %want, owner = %owner, "requested VIP is taken; allocating another");
                }
                None => {
                    self.release(key);
                    self.by_ip.insert(n, key.clone());
                    self.by_key.insert(key.clone(), n);
                    return Ok(want);
                }
            }
        }
        if let Some(&n) = self.by_key.get(key) {
            return Ok(self.nth(n));
        }
        if self.by_ip.len() as u64 >= self.size {
            return Err(VipError::Exhausted { cidr: self.cidr, size: self.size });
        }
        let start = stable_hash(key) % self.size;
        // The pool is not full, so this finds a free address.
        for i in 0..self.size {
            let n = (start + i) % self.size;
            if let std::collections::hash_map::Entry::Vacant(slot) = self.by_ip.entry(n) {
                slot.insert(key.clone());
                self.by_key.insert(key.clone(), n);
                return Ok(self.nth(n));
            }
        }
        Err(VipError::Exhausted { cidr: self.cidr, size: self.size })
    }

    /// Gives `key`'s VIP back to the pool; true if it had one.
    pub fn release(&mut self, key: &ServiceKey) -> bool {
        match self.by_key.remove(key) {
            Some(n) => {
                self.by_ip.remove(&n);
                true
            }
            None => false,
        }
    }

    /// Whether `ip` is a usable address of the range.
    pub fn contains(&self, ip: &IpAddr) -> bool {
        self.index_of(ip).is_some()
    }

    /// The index of `ip` among the usable addresses (the inverse of
    /// [`Self::nth`]); `None` outside them.
    fn index_of(&self, ip: &IpAddr) -> Option<u64> {
        if !self.cidr.contains(ip) {
            return None;
        }
        let offset = match (ip, self.cidr) {
            (IpAddr::V4(ip), IpNet::V4(net)) => u128::from(u32::from(*ip) - u32::from(net.network())),
            (IpAddr::V6(ip), IpNet::V6(net)) => u128::from(*ip) - u128::from(net.network()),
            _ => return None,
        };
        let n = offset.checked_sub(self.first)?;
        u64::try_from(n).ok().filter(|&n| n < self.size)
    }

    pub fn get(&self, key: &ServiceKey) -> Option<IpAddr> {
        self.by_key.get(key).map(|&n| self.nth(n))
    }

    pub fn in_use(&self) -> usize {
        self.by_key.len()
    }

    fn nth(&self, n: u64) -> IpAddr {
        let offset = self.first + u128::from(n);
        match self.cidr {
            IpNet::V4(net) => {
                let host = u32::try_from(offset).expect("an index below the pool's size is inside the IPv4 network");
                IpAddr::V4(Ipv4Addr::from(u32::from(net.network()) + host))
            }
            IpNet::V6(net) => IpAddr::V6(Ipv6Addr::from(u128::from(net.network()) + offset)),
        }
    }
}

/// FNV-1a over `namespace/name`: stable across Rust versions and platforms,
/// unlike `std`'s hasher, so VIPs survive upgrades of the agent.
fn stable_hash(key: &ServiceKey) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key.namespace().bytes().chain(std::iter::once(b'/')).chain(key.name().bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::build::service;
    use crate::object::{Object, ServiceObject};
    use crate::service::Protocol;

    fn object(o: Object) -> ServiceObject {
        match o {
            Object::Service(s) => s,
            _ => unreachable!(),
        }
    }

    fn request(svc: &ServiceObject) -> VipRequest<'_> {
        VipRequest {
            headless: svc.headless,
            cluster_ips: &svc.cluster_ips,
            ip_families: &svc.ip_families,
            ip_family_policy: svc.ip_family_policy,
            has_udp: svc.ports.iter().any(|p| p.protocol == Protocol::Udp),
        }
    }

    #[test]
    fn families_a_service_asks_for() {
        use IpFamily::*;
        let base = || service("default", "web");
        assert_eq!(wanted_families(&request(&object(base().object()))), vec![IPv4], "the cluster default");
        assert_eq!(wanted_families(&request(&object(base().cluster_ip("fd00::10").object()))), vec![IPv6]);
        let mut dual = object(base().cluster_ip("10.96.0.10").object());
        dual.ip_family_policy = Some(IpFamilyPolicy::PreferDualStack);
        assert_eq!(wanted_families(&request(&dual)), vec![IPv4, IPv6], "dual-stack adds the other family");
        let mut v6_first = object(base().object());
        v6_first.ip_families = vec![IPv6, IPv4];
        v6_first.ip_family_policy = Some(IpFamilyPolicy::RequireDualStack);
        assert_eq!(wanted_families(&request(&v6_first)), vec![IPv6, IPv4]);
        v6_first.ip_family_policy = Some(IpFamilyPolicy::SingleStack);
        assert_eq!(wanted_families(&request(&v6_first)), vec![IPv6], "single stack: the first family");
    }

    #[test]
    fn a_vip_per_family_as_the_policy_says() {
        let key = ServiceKey::new("default", "web");
        let v4: IpNet = "9.251.0.0/16".parse().unwrap();
        let v6: IpNet = "fd00:9:251::/112".parse().unwrap();
        let mut every = VipPools::new(v4, Some(v6), VipPolicy::Every);
        let mut dual = object(service("default", "web").cluster_ip("10.96.0.10").port("http", 80, 80).object());
        dual.ip_family_policy = Some(IpFamilyPolicy::RequireDualStack);
        let a = every.assign(&key, &request(&dual));
        assert!(a.vip.is_some_and(|ip| v4.contains(&ip)) && a.vip6.is_some_and(|ip| v6.contains(&ip)), "{a:?}");

        // With interception, the IPv4 cluster IP serves; IPv6 has none.
        let mut needed = VipPools::new(v4, Some(v6), VipPolicy::WhereNeeded);
        let a = needed.assign(&key, &request(&dual));
        assert_eq!(a.vip, None);
        assert!(a.vip6.is_some());
        // Given an IPv6 cluster IP too, the service needs no VIP at all ...
        dual.cluster_ips.push("fd00:96::10".parse().unwrap());
        let a = needed.assign(&key, &request(&dual));
        assert_eq!((a.vip, a.vip6, a.released), (None, None, true));
        // ... unless it has UDP ports: then one per family, as DNAT targets.
        let udp = object(service("default", "web").cluster_ip("10.96.0.10").udp_port("dns", 53, 53).object());
        let mut udp = ServiceObject { ip_family_policy: Some(IpFamilyPolicy::PreferDualStack), ..udp };
        udp.cluster_ips.push("fd00:96::53".parse().unwrap());
        let a = needed.assign(&key, &request(&udp));
        assert!(a.vip.is_some() && a.vip6.is_some(), "{a:?}");
        assert_eq!(needed.in_use(), 2);
        assert!(needed.release(&key));
        assert_eq!(needed.in_use(), 0);

        // No IPv6 pool: no IPv6 VIP, and that is no problem.
        let mut v4_only = VipPools::new(v4, None, VipPolicy::Every);
        let a = v4_only.assign(&key, &request(&dual));
        assert!(a.vip.is_some() && a.vip6.is_none() && a.problem.is_none(), "{a:?}");
    }

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
        let first_n = a.index_of(&first).unwrap();
        assert!(!a.by_ip.contains_key(&first_n) || first == want, "old address released");
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

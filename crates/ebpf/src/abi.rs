//! Map keys and values as `bpf/edgemesh.bpf.c` lays them out (change both
//! together). Addresses are 16 bytes, IPv4 v4-mapped; ports in network
//! byte order, as the hooks read them.

use std::net::{IpAddr, SocketAddr};

use crate::plan::{ServicePort, ServiceRecord, SlotList};
use crate::service::Pick;

/// `struct svc_key`.
#[repr(C, align(4))]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct SvcKey {
    pub addr: [u8; 16],
    pub port: u16,
    pub proto: u8,
    pub pad: u8,
}

/// `struct svc_value`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct SvcValue {
    pub id: u32,
    pub count: u16,
    pub flags: u16,
    pub netns_id: u32,
    pub netns_count: u16,
    pub pad: u16,
    pub affinity_timeout: u32,
    /// The kernel's round robin counter: written 0, advanced by the hooks.
    pub rr: u32,
    pub agent_addr: [u8; 16],
    pub agent_port: u16,
    pub pad2: u16,
}

/// `SVC_F_*` of `struct svc_value`.
const SVC_F_AFFINITY: u16 = 0x1;
const SVC_F_ROUND_ROBIN: u16 = 0x2;
const SVC_F_AGENT: u16 = 0x4;

/// `struct config`, the one entry of `em_config`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Config {
    pub host_netns_cookie: u64,
    pub object_hash: u64,
}

/// `struct backend_key`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct BackendKey {
    pub id: u32,
    pub slot: u32,
}

/// `struct backend_value`; `flags` is reserved (0).
#[repr(C, align(4))]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct BackendValue {
    pub addr: [u8; 16],
    pub port: u16,
    pub flags: u8,
    pub pad: u8,
}

/// `struct rev_key`: a translated socket (its cookie) and where it was sent.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct RevKey {
    pub cookie: u64,
    pub addr: [u8; 16],
    pub port: u16,
    pub pad: u16,
    pub pad2: u32,
}

/// `struct rev_value`: the service address the socket asked for.
#[repr(C, align(4))]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct RevValue {
    pub addr: [u8; 16],
    pub port: u16,
    pub pad: u16,
}

// SAFETY: plain `repr(C)` data without padding bytes, valid for any bits.
unsafe impl aya::Pod for SvcKey {}
// SAFETY: as above.
unsafe impl aya::Pod for SvcValue {}
// SAFETY: as above.
unsafe impl aya::Pod for BackendKey {}
// SAFETY: as above.
unsafe impl aya::Pod for BackendValue {}
// SAFETY: as above.
unsafe impl aya::Pod for Config {}
// SAFETY: as above.
unsafe impl aya::Pod for RevKey {}
// SAFETY: as above.
unsafe impl aya::Pod for RevValue {}

fn addr16(ip: IpAddr) -> [u8; 16] {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    }
}

fn ip_of(addr: [u8; 16]) -> IpAddr {
    std::net::Ipv6Addr::from(addr).to_canonical()
}

impl SvcKey {
    pub fn new(p: &ServicePort) -> SvcKey {
        SvcKey { addr: addr16(p.addr), port: p.port.to_be(), proto: p.protocol as u8, pad: 0 }
    }

    /// The service port this key names; None for a protocol we never write.
    pub fn service_port(&self) -> Option<ServicePort> {
        let protocol = crate::plan::Protocol::from_number(self.proto)?;
        Some(ServicePort { addr: ip_of(self.addr), port: u16::from_be(self.port), protocol })
    }
}

impl SvcValue {
    pub fn new(r: &ServiceRecord) -> SvcValue {
        let mut flags = 0;
        if r.affinity_secs > 0 {
            flags |= SVC_F_AFFINITY;
        }
        if r.pick == Pick::RoundRobin {
            flags |= SVC_F_ROUND_ROBIN;
        }
        let (agent_addr, agent_port) = match r.agent {
            Some(a) => {
                flags |= SVC_F_AGENT;
                (addr16(a.ip()), a.port().to_be())
            }
            None => ([0; 16], 0),
        };
        SvcValue {
            id: r.all.id,
            count: r.all.count,
            flags,
            netns_id: r.netns.id,
            netns_count: r.netns.count,
            pad: 0,
            affinity_timeout: r.affinity_secs,
            rr: 0,
            agent_addr,
            agent_port,
            pad2: 0,
        }
    }

    /// The record this entry holds (the round robin counter aside).
    pub fn record(&self) -> ServiceRecord {
        ServiceRecord {
            all: SlotList { id: self.id, count: self.count },
            netns: SlotList { id: self.netns_id, count: self.netns_count },
            pick: if self.flags & SVC_F_ROUND_ROBIN != 0 { Pick::RoundRobin } else { Pick::Random },
            affinity_secs: if self.flags & SVC_F_AFFINITY != 0 { self.affinity_timeout } else { 0 },
            agent: (self.flags & SVC_F_AGENT != 0)
                .then(|| SocketAddr::new(ip_of(self.agent_addr), u16::from_be(self.agent_port))),
        }
    }
}

impl RevKey {
    /// Where the socket was sent (a backend or the agent).
    pub fn target(&self) -> SocketAddr {
        SocketAddr::new(ip_of(self.addr), u16::from_be(self.port))
    }
}

impl BackendValue {
    pub fn new(backend: SocketAddr) -> BackendValue {
        BackendValue { addr: addr16(backend.ip()), port: backend.port().to_be(), flags: 0, pad: 0 }
    }

    pub fn socket_addr(&self) -> SocketAddr {
        SocketAddr::new(ip_of(self.addr), u16::from_be(self.port))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts_match_the_c_structs() {
        // Sizes from bpf/edgemesh.bpf.c (svc_key 20, svc_value 44,
        // backend_key 8, backend_value 20, config 16, rev_key 32,
        // rev_value 20): a mismatch would
        // make every lookup miss (the loader also checks them against the
        // object's maps).
        assert_eq!(std::mem::size_of::<SvcKey>(), 20);
        assert_eq!(std::mem::size_of::<SvcValue>(), 44);
        assert_eq!(std::mem::size_of::<Config>(), 16);
        assert_eq!(std::mem::size_of::<RevKey>(), 32);
        assert_eq!(std::mem::size_of::<RevValue>(), 20);
        assert_eq!(std::mem::size_of::<BackendKey>(), 8);
        assert_eq!(std::mem::size_of::<BackendValue>(), 20);
    }

    #[test]
    fn ipv4_is_v4_mapped_and_ports_are_in_network_order() {
        let key = SvcKey::new(&ServicePort::tcp("10.96.0.10:80".parse().unwrap()));
        assert_eq!(key.addr, [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 10, 96, 0, 10]);
        assert_eq!(key.port.to_ne_bytes(), [0, 80]);
        assert_eq!(key.proto, 6);
        assert_eq!(key.service_port(), Some(ServicePort::tcp("10.96.0.10:80".parse().unwrap())));
        let be = BackendValue::new("[fd00::1]:8080".parse().unwrap());
        assert_eq!(be.socket_addr(), "[fd00::1]:8080".parse().unwrap());
    }

    #[test]
    fn a_service_record_survives_the_map_value() {
        for (pick, affinity_secs, agent) in
            [(Pick::RoundRobin, 0, None), (Pick::Random, 10800, Some("[fd00::9]:80".parse().unwrap()))]
        {
            let record = ServiceRecord {
                all: SlotList { id: 7, count: 3 },
                netns: SlotList { id: 8, count: 2 },
                pick,
                affinity_secs,
                agent,
            };
            let value = SvcValue::new(&record);
            assert_eq!(value.record(), record);
            assert_eq!(SvcValue { rr: 41, ..value }.record(), record, "the kernel's counter is not part of it");
        }
    }
}

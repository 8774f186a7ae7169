//! Map keys and values as `bpf/edgemesh.bpf.c` lays them out (change both
//! together). Addresses are 16 bytes, IPv4 v4-mapped; ports in network
//! byte order, as the hooks read them.

use std::net::{IpAddr, SocketAddr};

use crate::plan::ServicePort;

/// `struct svc_key`.
#[repr(C, align(4))]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct SvcKey {
    pub addr: [u8; 16],
    pub port: u16,
    pub proto: u8,
    pub pad: u8,
}

/// `struct svc_value`; `flags` and `affinity_timeout` are reserved (0).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct SvcValue {
    pub id: u32,
    pub count: u16,
    pub flags: u16,
    pub affinity_timeout: u32,
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

// SAFETY: plain `repr(C)` data without padding bytes, valid for any bits.
unsafe impl aya::Pod for SvcKey {}
// SAFETY: as above.
unsafe impl aya::Pod for SvcValue {}
// SAFETY: as above.
unsafe impl aya::Pod for BackendKey {}
// SAFETY: as above.
unsafe impl aya::Pod for BackendValue {}

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
        // Sizes from bpf/edgemesh.bpf.c (svc_key 20, svc_value 12,
        // backend_key 8, backend_value 20): a mismatch would make every
        // lookup miss.
        assert_eq!(std::mem::size_of::<SvcKey>(), 20);
        assert_eq!(std::mem::size_of::<SvcValue>(), 12);
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
}

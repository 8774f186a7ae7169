//! The cached objects' encoding: a compact binary form written by hand.
//!
//! A first full view of 100,000 services writes 200,000 objects before the
//! agent is ready, and JSON spent most of the cache's CPU on field names,
//! quoting and number formatting. This form writes each field in a fixed
//! order: lengths and counts as LEB128 varints, strings as their bytes,
//! enums as one byte. A value starts with its version ([`VERSION`]); a
//! value that starts with `{` is JSON, as the cache wrote it before
//! (format 1), and still decodes, so an upgrade keeps the offline state.
//!
//! Every struct is taken apart with an exhaustive pattern, so a new field
//! does not compile until it is encoded here (and [`VERSION`] is bumped).

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use edgemesh_core::object::{EndpointPortSpec, EndpointSpec, ObjectMeta, ServicePortSpec};
use edgemesh_core::service::{
    InternalTrafficPolicy, IpFamily, IpFamilyPolicy, Protocol, SessionAffinity, TargetPort, TrafficDistribution,
};
use edgemesh_core::{EndpointSet, EndpointSubset, NodeObject, Object, ObjectKind, ServiceObject};

/// The first byte of every value this agent writes.
pub const VERSION: u8 = 2;
/// The first byte of a JSON value (format 1).
const JSON: u8 = b'{';

/// Why a stored value does not decode.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("value is empty")]
    Empty,
    #[error("value has encoding version {0}, this agent reads versions 1 (JSON) and {VERSION}")]
    Version(u8),
    #[error("value ends early, at byte {0}")]
    Truncated(usize),
    #[error("value has {0} bytes past its end")]
    Trailing(usize),
    #[error("byte {at}: {what} {value} is out of range")]
    Invalid { at: usize, what: &'static str, value: u64 },
    #[error("byte {0}: a string is not UTF-8")]
    Utf8(usize),
    #[error("JSON value (format 1): {0}")]
    Json(String),
}

/// Appends `object`'s encoding to `out`.
pub fn encode(object: &Object, out: &mut Vec<u8>) {
    out.push(VERSION);
    match object {
        Object::Service(s) => {
            out.push(0);
            service(s, out);
        }
        Object::Endpoints(e) => {
            out.push(1);
            endpoints(e, out);
        }
        Object::Node(n) => {
            out.push(2);
            let NodeObject { meta: m, addresses } = n;
            meta(m, out);
            list(addresses, out, ip);
        }
    }
}

/// Decodes a value written by [`encode`] (or, for format 1, as JSON).
pub fn decode(bytes: &[u8]) -> Result<Object, DecodeError> {
    match bytes.first() {
        None => Err(DecodeError::Empty),
        Some(&JSON) => serde_json::from_slice(bytes).map_err(|e| DecodeError::Json(e.to_string())),
        Some(&VERSION) => {
            let mut r = Reader { bytes, at: 1 };
            let object = match r.byte()? {
                0 => Object::Service(r.service()?),
                1 => Object::Endpoints(r.endpoints()?),
                2 => Object::Node(NodeObject { meta: r.meta()?, addresses: r.list(Reader::ip)? }),
                other => return Err(r.invalid(1, "object kind", other)),
            };
            match bytes.len() - r.at {
                0 => Ok(object),
                extra => Err(DecodeError::Trailing(extra)),
            }
        }
        Some(&other) => Err(DecodeError::Version(other)),
    }
}

// Writing.

fn service(s: &ServiceObject, out: &mut Vec<u8>) {
    let ServiceObject {
        meta: m,
        cluster_ips,
        headless,
        ports,
        service_type,
        session_affinity,
        internal_traffic_policy,
        traffic_distribution,
        ip_families,
        ip_family_policy,
    } = s;
    meta(m, out);
    list(cluster_ips, out, ip);
    out.push(u8::from(*headless));
    list(ports, out, service_port);
    string(service_type, out);
    match session_affinity {
        SessionAffinity::None => out.push(0),
        SessionAffinity::ClientIp { timeout_seconds } => {
            out.push(1);
            varint(u64::from(*timeout_seconds), out);
        }
    }
    out.push(match internal_traffic_policy {
        InternalTrafficPolicy::Cluster => 0,
        InternalTrafficPolicy::Local => 1,
    });
    out.push(match traffic_distribution {
        None => 0,
        Some(TrafficDistribution::PreferClose) => 1,
    });
    list(ip_families, out, |f, out| {
        out.push(match f {
            IpFamily::IPv4 => 0,
            IpFamily::IPv6 => 1,
        })
    });
    out.push(match ip_family_policy {
        None => 0,
        Some(IpFamilyPolicy::SingleStack) => 1,
        Some(IpFamilyPolicy::PreferDualStack) => 2,
        Some(IpFamilyPolicy::RequireDualStack) => 3,
    });
}

fn service_port(p: &ServicePortSpec, out: &mut Vec<u8>) {
    let ServicePortSpec { name, protocol: proto, port, target_port, node_port } = p;
    string(name, out);
    protocol(*proto, out);
    varint(u64::from(*port), out);
    match target_port {
        TargetPort::Number(n) => {
            out.push(0);
            varint(u64::from(*n), out);
        }
        TargetPort::Name(name) => {
            out.push(1);
            string(name, out);
        }
    }
    option(node_port.map(u64::from), out);
}

fn endpoints(e: &EndpointSet, out: &mut Vec<u8>) {
    let EndpointSet { meta: m, kind, service_name, subsets } = e;
    meta(m, out);
    out.push(match kind {
        ObjectKind::Service => 0,
        ObjectKind::EndpointSlice => 1,
        ObjectKind::Endpoints => 2,
        ObjectKind::Node => 3,
    });
    string(service_name, out);
    list(subsets, out, |s, out| {
        let EndpointSubset { endpoints, ports } = s;
        list(endpoints, out, |e, out| {
            let EndpointSpec { addresses, ready, node_name, hostname } = e;
            list(addresses, out, ip);
            out.push(u8::from(*ready));
            optional_string(node_name.as_deref(), out);
            optional_string(hostname.as_deref(), out);
        });
        list(ports, out, |p, out| {
            let EndpointPortSpec { name, port, protocol: proto } = p;
            string(name, out);
            varint(u64::from(*port), out);
            protocol(*proto, out);
        });
    });
}

fn meta(m: &ObjectMeta, out: &mut Vec<u8>) {
    let ObjectMeta { namespace, name, labels, annotations } = m;
    string(namespace, out);
    string(name, out);
    map(labels, out);
    map(annotations, out);
}

fn map(m: &BTreeMap<String, String>, out: &mut Vec<u8>) {
    varint(m.len() as u64, out);
    for (k, v) in m {
        string(k, out);
        string(v, out);
    }
}

fn list<T>(items: &[T], out: &mut Vec<u8>, mut each: impl FnMut(&T, &mut Vec<u8>)) {
    varint(items.len() as u64, out);
    for item in items {
        each(item, out);
    }
}

fn protocol(p: Protocol, out: &mut Vec<u8>) {
    out.push(match p {
        Protocol::Tcp => 0,
        Protocol::Udp => 1,
        Protocol::Sctp => 2,
    });
}

fn ip(a: &IpAddr, out: &mut Vec<u8>) {
    match a {
        IpAddr::V4(v4) => {
            out.push(4);
            out.extend_from_slice(&v4.octets());
        }
        IpAddr::V6(v6) => {
            out.push(6);
            out.extend_from_slice(&v6.octets());
        }
    }
}

fn string(s: &str, out: &mut Vec<u8>) {
    varint(s.len() as u64, out);
    out.extend_from_slice(s.as_bytes());
}

fn optional_string(s: Option<&str>, out: &mut Vec<u8>) {
    match s {
        None => out.push(0),
        Some(s) => {
            out.push(1);
            string(s, out);
        }
    }
}

fn option(v: Option<u64>, out: &mut Vec<u8>) {
    match v {
        None => out.push(0),
        Some(v) => {
            out.push(1);
            varint(v, out);
        }
    }
}

/// LEB128: seven bits a byte, low bits first, high bit set on all but the last.
fn varint(mut v: u64, out: &mut Vec<u8>) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

// Reading.

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn invalid(&self, at: usize, what: &'static str, value: impl Into<u64>) -> DecodeError {
        DecodeError::Invalid { at, what, value: value.into() }
    }

    fn byte(&mut self) -> Result<u8, DecodeError> {
        let b = *self.bytes.get(self.at).ok_or(DecodeError::Truncated(self.at))?;
        self.at += 1;
        Ok(b)
    }

    fn take(&mut self, n: usize) -> Result<&[u8], DecodeError> {
        let end = self.at.checked_add(n).filter(|&e| e <= self.bytes.len()).ok_or(DecodeError::Truncated(self.at))?;
        let s = &self.bytes[self.at..end];
        self.at = end;
        Ok(s)
    }

    fn varint(&mut self) -> Result<u64, DecodeError> {
        let start = self.at;
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.byte()?;
            v |= u64::from(b & 0x7f) << shift;
            if b < 0x80 {
                return Ok(v);
            }
        }
        Err(self.invalid(start, "varint of more than 64 bits", v))
    }

    fn u16(&mut self, what: &'static str) -> Result<u16, DecodeError> {
        let at = self.at;
        let v = self.varint()?;
        u16::try_from(v).map_err(|_| self.invalid(at, what, v))
    }

    /// A count of items that each take at least one byte: never more than
    /// the bytes left, so a corrupt count cannot reserve gigabytes.
    fn count(&mut self) -> Result<usize, DecodeError> {
        let at = self.at;
        let n = self.varint()?;
        let left = (self.bytes.len() - self.at) as u64;
        if n > left {
            return Err(self.invalid(at, "count", n));
        }
        Ok(n as usize)
    }

    fn bool(&mut self) -> Result<bool, DecodeError> {
        let at = self.at;
        match self.byte()? {
            0 => Ok(false),
            1 => Ok(true),
            other => Err(self.invalid(at, "boolean", other)),
        }
    }

    /// A one-byte tag below `limit`.
    fn tag(&mut self, what: &'static str, limit: u8) -> Result<u8, DecodeError> {
        let at = self.at;
        let b = self.byte()?;
        if b < limit { Ok(b) } else { Err(self.invalid(at, what, b)) }
    }

    fn string(&mut self) -> Result<String, DecodeError> {
        let n = self.count()?;
        let at = self.at;
        let bytes = self.take(n)?;
        std::str::from_utf8(bytes).map(str::to_owned).map_err(|_| DecodeError::Utf8(at))
    }

    fn optional_string(&mut self) -> Result<Option<String>, DecodeError> {
        Ok(if self.bool()? { Some(self.string()?) } else { None })
    }

    fn list<T>(&mut self, mut each: impl FnMut(&mut Self) -> Result<T, DecodeError>) -> Result<Vec<T>, DecodeError> {
        let n = self.count()?;
        let mut items = Vec::with_capacity(n);
        for _ in 0..n {
            items.push(each(self)?);
        }
        Ok(items)
    }

    fn map(&mut self) -> Result<BTreeMap<String, String>, DecodeError> {
        let n = self.count()?;
        let mut m = BTreeMap::new();
        for _ in 0..n {
            let k = self.string()?;
            m.insert(k, self.string()?);
        }
        Ok(m)
    }

    fn meta(&mut self) -> Result<ObjectMeta, DecodeError> {
        Ok(ObjectMeta {
            namespace: self.string()?,
            name: self.string()?,
            labels: self.map()?,
            annotations: self.map()?,
        })
    }

    fn ip(&mut self) -> Result<IpAddr, DecodeError> {
        let at = self.at;
        match self.byte()? {
            4 => Ok(IpAddr::V4(Ipv4Addr::from(<[u8; 4]>::try_from(self.take(4)?).expect("4 bytes")))),
            6 => Ok(IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(self.take(16)?).expect("16 bytes")))),
            other => Err(self.invalid(at, "address family", other)),
        }
    }

    fn protocol(&mut self) -> Result<Protocol, DecodeError> {
        Ok([Protocol::Tcp, Protocol::Udp, Protocol::Sctp][usize::from(self.tag("protocol", 3)?)])
    }

    fn service(&mut self) -> Result<ServiceObject, DecodeError> {
        let meta = self.meta()?;
        let cluster_ips = self.list(Self::ip)?;
        let headless = self.bool()?;
        let ports = self.list(Self::service_port)?;
        let service_type = self.string()?;
        let session_affinity = match self.tag("session affinity", 2)? {
            0 => SessionAffinity::None,
            _ => {
                let at = self.at;
                let v = self.varint()?;
                let timeout_seconds = u32::try_from(v).map_err(|_| self.invalid(at, "affinity timeout", v))?;
                SessionAffinity::ClientIp { timeout_seconds }
            }
        };
        let internal_traffic_policy =
            [InternalTrafficPolicy::Cluster, InternalTrafficPolicy::Local][usize::from(self.tag("traffic policy", 2)?)];
        let traffic_distribution =
            [None, Some(TrafficDistribution::PreferClose)][usize::from(self.tag("traffic distribution", 2)?)];
        let ip_families = self.list(|r| Ok([IpFamily::IPv4, IpFamily::IPv6][usize::from(r.tag("IP family", 2)?)]))?;
        let ip_family_policy = [
            None,
            Some(IpFamilyPolicy::SingleStack),
            Some(IpFamilyPolicy::PreferDualStack),
            Some(IpFamilyPolicy::RequireDualStack),
        ][usize::from(self.tag("IP family policy", 4)?)];
        Ok(ServiceObject {
            meta,
            cluster_ips,
            headless,
            ports,
            service_type,
            session_affinity,
            internal_traffic_policy,
            traffic_distribution,
            ip_families,
            ip_family_policy,
        })
    }

    fn service_port(&mut self) -> Result<ServicePortSpec, DecodeError> {
        let name = self.string()?;
        let protocol = self.protocol()?;
        let port = self.u16("port")?;
        let target_port = match self.tag("target port", 2)? {
            0 => TargetPort::Number(self.u16("target port")?),
            _ => TargetPort::Name(self.string()?),
        };
        let node_port = if self.bool()? { Some(self.u16("node port")?) } else { None };
        Ok(ServicePortSpec { name, protocol, port, target_port, node_port })
    }

    fn endpoints(&mut self) -> Result<EndpointSet, DecodeError> {
        let meta = self.meta()?;
        let kind = [ObjectKind::Service, ObjectKind::EndpointSlice, ObjectKind::Endpoints, ObjectKind::Node]
            [usize::from(self.tag("object kind", 4)?)];
        let service_name = self.string()?;
        let subsets = self.list(|r| {
            let endpoints = r.list(|r| {
                Ok(EndpointSpec {
                    addresses: r.list(Self::ip)?,
                    ready: r.bool()?,
                    node_name: r.optional_string()?,
                    hostname: r.optional_string()?,
                })
            })?;
            let ports = r.list(|r| {
                Ok(EndpointPortSpec { name: r.string()?, port: r.u16("endpoint port")?, protocol: r.protocol()? })
            })?;
            Ok(EndpointSubset { endpoints, ports })
        })?;
        Ok(EndpointSet { meta, kind, service_name, subsets })
    }
}

#[cfg(test)]
mod tests;

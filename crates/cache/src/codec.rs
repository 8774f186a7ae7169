//! The cached objects' encoding: a compact binary form.
//!
//! A first full view of 100,000 services writes 200,000 objects before the
//! agent is ready, and JSON spent most of the cache's CPU on field names,
//! quoting and number formatting. This form writes each field in a fixed
//! order: lengths and counts as LEB128 varints, strings as their bytes,
//! enums as one byte. A value starts with its version ([`VERSION`]); a
//! value that starts with `{` is JSON, as the cache wrote it before
//! (format 1), and still decodes, so an upgrade keeps the offline state.
//!
//! Each model type implements [`Field`] once: a struct by naming its fields
//! in [`record!`] (an exhaustive pattern, so a new field does not compile
//! until it is listed there, and [`VERSION`] is bumped), an enum by its tags
//! in [`tags!`]. Writing and reading both follow that one list. A field
//! added in a later version is listed after `since N`: it is written last,
//! and a value of an older version reads as the field's default, so the
//! offline state survives the upgrade (format 3 added `appProtocol`,
//! format 4 a Node's pod CIDRs). A new kind of object (DestinationRule,
//! object tag 3; the gateway's routing objects, tag 4) needs no new
//! version: older values never hold one.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;

use edgemesh_core::object::{EndpointPortSpec, EndpointSpec, ObjectMeta, ServicePortSpec};
use edgemesh_core::service::{
    InternalTrafficPolicy, IpFamily, IpFamilyPolicy, LbStrategy, Protocol, SessionAffinity, TargetPort,
    TrafficDistribution,
};
use edgemesh_core::{
    DestinationRuleObject, EndpointSet, EndpointSubset, NodeObject, Object, ObjectKind, RoutingKind, RoutingObject,
    ServiceObject,
};

/// The first byte of every value this agent writes.
pub const VERSION: u8 = 4;
/// The oldest binary version still read (format 2: no `appProtocol`).
const OLDEST: u8 = 2;
/// The first byte of a JSON value (format 1).
const JSON: u8 = b'{';

/// Why a stored value does not decode.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("value is empty")]
    Empty,
    #[error("value has encoding version {0}, this agent reads versions 1 (JSON) and {OLDEST} to {VERSION}")]
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
    object.write(out);
}

/// Decodes a value written by [`encode`] (or, for format 1, as JSON).
pub fn decode(bytes: &[u8]) -> Result<Object, DecodeError> {
    match bytes.first() {
        None => Err(DecodeError::Empty),
        Some(&JSON) => serde_json::from_slice(bytes).map_err(|e| DecodeError::Json(e.to_string())),
        Some(&version) if (OLDEST..=VERSION).contains(&version) => {
            let mut r = Reader { bytes, at: 1, version };
            let object = Object::read(&mut r)?;
            match bytes.len() - r.at {
                0 => Ok(object),
                extra => Err(DecodeError::Trailing(extra)),
            }
        }
        Some(&other) => Err(DecodeError::Version(other)),
    }
}

/// A value of the model, written and read in one fixed order.
trait Field: Sized {
    fn write(&self, out: &mut Vec<u8>);
    fn read(r: &mut Reader<'_>) -> Result<Self, DecodeError>;
}

/// A struct: its fields in order, then those added in later versions
/// (`since N { ... }`), which a value of an older version does not hold.
macro_rules! record {
    ($ty:ident { $($field:ident),+ $(,)? } $(since $version:literal { $($added:ident),+ $(,)? })*) => {
        impl Field for $ty {
            fn write(&self, out: &mut Vec<u8>) {
                let $ty { $($field,)+ $($($added,)+)* } = self;
                $($field.write(out);)+
                $($($added.write(out);)+)*
            }
            fn read(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
                // Fields are evaluated in the order written.
                Ok($ty {
                    $($field: Field::read(r)?,)+
                    $($($added: if r.version >= $version { Field::read(r)? } else { Default::default() },)+)*
                })
            }
        }
    };
}

/// An enum without data (or an optional one): one byte per value.
macro_rules! tags {
    ($ty:ty, $what:literal { $($tag:literal => ($($value:tt)+)),+ $(,)? }) => {
        impl Field for $ty {
            fn write(&self, out: &mut Vec<u8>) {
                out.push(match self { $($($value)+ => $tag),+ });
            }
            fn read(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
                let at = r.at;
                match r.byte()? {
                    $($tag => Ok($($value)+),)+
                    other => Err(r.invalid(at, $what, other)),
                }
            }
        }
    };
}

record!(ServiceObject {
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
});
record!(ServicePortSpec { name, protocol, port, target_port, node_port } since 3 { app_protocol });
record!(EndpointSet { meta, kind, service_name, subsets });
record!(EndpointSubset { endpoints, ports });
record!(EndpointSpec { addresses, ready, node_name, hostname });
record!(EndpointPortSpec { name, port, protocol });
record!(NodeObject { meta, addresses } since 4 { pod_cidrs });
record!(ObjectMeta { namespace, name, labels, annotations });
record!(DestinationRuleObject { meta, service_namespace, service_name, strategy, hash_key });
record!(RoutingObject { kind, meta, document });

tags!(Protocol, "protocol" { 0 => (Protocol::Tcp), 1 => (Protocol::Udp), 2 => (Protocol::Sctp) });
tags!(ObjectKind, "object kind" {
    0 => (ObjectKind::Service),
    1 => (ObjectKind::EndpointSlice),
    2 => (ObjectKind::Endpoints),
    3 => (ObjectKind::Node),
    4 => (ObjectKind::DestinationRule),
    5 => (ObjectKind::Routing(RoutingKind::Gateway)),
    6 => (ObjectKind::Routing(RoutingKind::HttpRoute)),
    7 => (ObjectKind::Routing(RoutingKind::GrpcRoute)),
    8 => (ObjectKind::Routing(RoutingKind::TlsRoute)),
    9 => (ObjectKind::Routing(RoutingKind::TcpRoute)),
    10 => (ObjectKind::Routing(RoutingKind::ReferenceGrant)),
    11 => (ObjectKind::Routing(RoutingKind::IstioGateway)),
    12 => (ObjectKind::Routing(RoutingKind::VirtualService)),
});
tags!(RoutingKind, "routing kind" {
    0 => (RoutingKind::Gateway),
    1 => (RoutingKind::HttpRoute),
    2 => (RoutingKind::GrpcRoute),
    3 => (RoutingKind::TlsRoute),
    4 => (RoutingKind::TcpRoute),
    5 => (RoutingKind::ReferenceGrant),
    6 => (RoutingKind::IstioGateway),
    7 => (RoutingKind::VirtualService),
});
tags!(Option<LbStrategy>, "load-balancing strategy" {
    0 => (None),
    1 => (Some(LbStrategy::RoundRobin)),
    2 => (Some(LbStrategy::Random)),
    3 => (Some(LbStrategy::ConsistentHash)),
    4 => (Some(LbStrategy::LeastRequest)),
});
tags!(InternalTrafficPolicy, "traffic policy" {
    0 => (InternalTrafficPolicy::Cluster),
    1 => (InternalTrafficPolicy::Local),
});
tags!(Option<TrafficDistribution>, "traffic distribution" {
    0 => (None),
    1 => (Some(TrafficDistribution::PreferClose)),
});
tags!(IpFamily, "IP family" { 0 => (IpFamily::IPv4), 1 => (IpFamily::IPv6) });
tags!(Option<IpFamilyPolicy>, "IP family policy" {
    0 => (None),
    1 => (Some(IpFamilyPolicy::SingleStack)),
    2 => (Some(IpFamilyPolicy::PreferDualStack)),
    3 => (Some(IpFamilyPolicy::RequireDualStack)),
});

// ---------------------------------------------------------------------------
// Enums with data: a tag, then the data.

impl Field for Object {
    fn write(&self, out: &mut Vec<u8>) {
        match self {
            Object::Service(s) => tagged(0, s, out),
            Object::Endpoints(e) => tagged(1, e, out),
            Object::Node(n) => tagged(2, n, out),
            Object::DestinationRule(d) => tagged(3, d, out),
            Object::Routing(g) => tagged(4, g, out),
        }
    }
    fn read(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let at = r.at;
        match r.byte()? {
            0 => Ok(Object::Service(Field::read(r)?)),
            1 => Ok(Object::Endpoints(Field::read(r)?)),
            2 => Ok(Object::Node(Field::read(r)?)),
            3 => Ok(Object::DestinationRule(Field::read(r)?)),
            4 => Ok(Object::Routing(Field::read(r)?)),
            other => Err(r.invalid(at, "object kind", other)),
        }
    }
}

impl Field for SessionAffinity {
    fn write(&self, out: &mut Vec<u8>) {
        match self {
            SessionAffinity::None => out.push(0),
            SessionAffinity::ClientIp { timeout_seconds } => tagged(1, timeout_seconds, out),
        }
    }
    fn read(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(match r.tag("session affinity", 2)? {
            0 => SessionAffinity::None,
            _ => SessionAffinity::ClientIp { timeout_seconds: Field::read(r)? },
        })
    }
}

impl Field for TargetPort {
    fn write(&self, out: &mut Vec<u8>) {
        match self {
            TargetPort::Number(n) => tagged(0, n, out),
            TargetPort::Name(name) => tagged(1, name, out),
        }
    }
    fn read(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(match r.tag("target port", 2)? {
            0 => TargetPort::Number(Field::read(r)?),
            _ => TargetPort::Name(Field::read(r)?),
        })
    }
}

/// A value's tag, then the value.
fn tagged(tag: u8, value: &impl Field, out: &mut Vec<u8>) {
    out.push(tag);
    value.write(out);
}

/// Options of a value (not of an enum, whose `None` is one of its tags):
/// 0, or 1 and the value.
macro_rules! optional {
    ($($ty:ty),+) => {$(
        impl Field for Option<$ty> {
            fn write(&self, out: &mut Vec<u8>) {
                match self {
                    None => out.push(0),
                    Some(v) => tagged(1, v, out),
                }
            }
            fn read(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
                Ok(if bool::read(r)? { Some(<$ty>::read(r)?) } else { None })
            }
        }
    )+};
}

optional!(String, u16);

// ---------------------------------------------------------------------------
// Scalars and collections.

impl Field for bool {
    fn write(&self, out: &mut Vec<u8>) {
        out.push(u8::from(*self));
    }
    fn read(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let at = r.at;
        match r.byte()? {
            0 => Ok(false),
            1 => Ok(true),
            other => Err(r.invalid(at, "boolean", other)),
        }
    }
}

/// Unsigned numbers as varints, refused when out of their range (`what`
/// names them in the error: every `u16` of the model is a port number,
/// every `u32` a session affinity timeout).
macro_rules! varints {
    ($($ty:ty: $what:literal),+) => {$(
        impl Field for $ty {
            fn write(&self, out: &mut Vec<u8>) {
                varint(u64::from(*self), out);
            }
            fn read(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
                let at = r.at;
                let v = r.varint()?;
                <$ty>::try_from(v).map_err(|_| r.invalid(at, $what, v))
            }
        }
    )+};
}

varints!(u16: "port number", u32: "affinity timeout");

impl Field for String {
    fn write(&self, out: &mut Vec<u8>) {
        varint(self.len() as u64, out);
        out.extend_from_slice(self.as_bytes());
    }
    fn read(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let n = r.count()?;
        let at = r.at;
        let bytes = r.take(n)?;
        std::str::from_utf8(bytes).map(str::to_owned).map_err(|_| DecodeError::Utf8(at))
    }
}

impl Field for IpAddr {
    fn write(&self, out: &mut Vec<u8>) {
        match self {
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
    fn read(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let at = r.at;
        match r.byte()? {
            4 => Ok(IpAddr::V4(Ipv4Addr::from(<[u8; 4]>::try_from(r.take(4)?).expect("4 bytes")))),
            6 => Ok(IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(r.take(16)?).expect("16 bytes")))),
            other => Err(r.invalid(at, "address family", other)),
        }
    }
}

/// The address, then the prefix length (refused when too long for it).
impl Field for IpNet {
    fn write(&self, out: &mut Vec<u8>) {
        self.addr().write(out);
        out.push(self.prefix_len());
    }
    fn read(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let addr = IpAddr::read(r)?;
        let at = r.at;
        let len = r.byte()?;
        IpNet::new(addr, len).map_err(|_| r.invalid(at, "prefix length", len))
    }
}

/// A count, then the items.
impl<T: Field> Field for Vec<T> {
    fn write(&self, out: &mut Vec<u8>) {
        varint(self.len() as u64, out);
        for item in self {
            item.write(out);
        }
    }
    fn read(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let n = r.count()?;
        let mut items = Vec::with_capacity(n);
        for _ in 0..n {
            items.push(T::read(r)?);
        }
        Ok(items)
    }
}

/// A count, then each key and its value.
impl Field for BTreeMap<String, String> {
    fn write(&self, out: &mut Vec<u8>) {
        varint(self.len() as u64, out);
        for (k, v) in self {
            k.write(out);
            v.write(out);
        }
    }
    fn read(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let n = r.count()?;
        let mut m = BTreeMap::new();
        for _ in 0..n {
            let k = String::read(r)?;
            m.insert(k, String::read(r)?);
        }
        Ok(m)
    }
}

/// LEB128: seven bits a byte, low bits first, high bit set on all but the last.
fn varint(mut v: u64, out: &mut Vec<u8>) {
    let low7 = |v: u64| v.to_le_bytes()[0] & 0x7f;
    while v >= 0x80 {
        out.push(low7(v) | 0x80);
        v >>= 7;
    }
    out.push(low7(v));
}

// ---------------------------------------------------------------------------
// Reading.

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
    /// The value's version: which fields it holds.
    version: u8,
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

    /// A count of items that each take at least one byte: never more than
    /// the bytes left, so a corrupt count cannot reserve gigabytes.
    fn count(&mut self) -> Result<usize, DecodeError> {
        let at = self.at;
        let n = self.varint()?;
        let left = (self.bytes.len() - self.at) as u64;
        match usize::try_from(n) {
            Ok(count) if n <= left => Ok(count),
            _ => Err(self.invalid(at, "count", n)),
        }
    }

    /// A one-byte tag below `limit`.
    fn tag(&mut self, what: &'static str, limit: u8) -> Result<u8, DecodeError> {
        let at = self.at;
        let b = self.byte()?;
        if b < limit { Ok(b) } else { Err(self.invalid(at, what, b)) }
    }
}

#[cfg(test)]
mod tests;

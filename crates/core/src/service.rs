//! Small value types shared by sources, the registry and consumers.

use std::borrow::Borrow;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// Identity of a service: namespace and name, both lowercase DNS labels as
/// Kubernetes requires.
///
/// One allocation shared by every clone: the registry, the VIP allocator,
/// the snapshot and the proxy each keep a key per service, and two fresh
/// `String`s for each were a third of the agent's live allocations at
/// 10,000 services. The text is `namespace`, NUL, `name`: NUL sorts below
/// every character of a name, so comparing the text orders keys by
/// namespace then name, and maps can be searched by a joined `&str`
/// ([`ServiceKey::join_into`]) without building a key.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceKey {
    text: Arc<str>,
}

/// Between namespace and name in a key's text.
const KEY_SEPARATOR: char = '\0';

impl ServiceKey {
    pub fn new(namespace: impl AsRef<str>, name: impl AsRef<str>) -> Self {
        let (namespace, name) = (namespace.as_ref(), name.as_ref());
        let mut text = String::with_capacity(namespace.len() + 1 + name.len());
        Self::join_into(&mut text, namespace.chars(), name.chars());
        Self { text: Arc::from(text) }
    }

    /// Writes into `buf` the text of the key (`namespace`, NUL, `name`): what maps
    /// keyed by `ServiceKey` can be searched with (`Borrow<str>`), with no
    /// allocation once `buf` is large enough.
    pub fn join_into(buf: &mut String, namespace: impl Iterator<Item = char>, name: impl Iterator<Item = char>) {
        buf.clear();
        buf.extend(namespace);
        buf.push(KEY_SEPARATOR);
        buf.extend(name);
    }

    pub fn namespace(&self) -> &str {
        self.text.split_once(KEY_SEPARATOR).map_or(&self.text, |(ns, _)| ns)
    }

    pub fn name(&self) -> &str {
        self.text.split_once(KEY_SEPARATOR).map_or("", |(_, name)| name)
    }
}

/// The joined text (see [`ServiceKey::join_into`]); equality, hash and
/// order agree with the key's.
impl Borrow<str> for ServiceKey {
    fn borrow(&self) -> &str {
        &self.text
    }
}

impl fmt::Display for ServiceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace(), self.name())
    }
}

impl fmt::Debug for ServiceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServiceKey").field("namespace", &self.namespace()).field("name", &self.name()).finish()
    }
}

/// Serialized as `{namespace, name}` (flattened into the admin dump's entries).
impl Serialize for ServiceKey {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut st = s.serialize_struct("ServiceKey", 2)?;
        st.serialize_field("namespace", self.namespace())?;
        st.serialize_field("name", self.name())?;
        st.end()
    }
}

/// L4 protocol of a port, as Kubernetes spells it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
pub enum Protocol {
    #[default]
    #[serde(rename = "TCP")]
    Tcp,
    #[serde(rename = "UDP")]
    Udp,
    #[serde(rename = "SCTP")]
    Sctp,
}

impl Protocol {
    /// The label used in SRV names (`_http._tcp...`).
    pub fn srv_label(self) -> &'static str {
        match self {
            Protocol::Tcp => "_tcp",
            Protocol::Udp => "_udp",
            Protocol::Sctp => "_sctp",
        }
    }
}

impl FromStr for Protocol {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "TCP" => Ok(Protocol::Tcp),
            "UDP" => Ok(Protocol::Udp),
            "SCTP" => Ok(Protocol::Sctp),
            other => Err(format!("unknown protocol {other:?} (expected TCP, UDP or SCTP)")),
        }
    }
}

/// A Service port's `targetPort`: a number, or the name of a container port
/// that the endpoints resolve.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(untagged)]
pub enum TargetPort {
    Number(u16),
    Name(String),
}

/// How the proxy picks an endpoint for a new connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Default, serde::Deserialize)]
pub enum LbStrategy {
    #[default]
    RoundRobin,
    Random,
    /// A consistent-hash ring keyed by [`HashKey`]: the same key goes to the
    /// same endpoint, and endpoint changes move as few keys as possible.
    ConsistentHash,
    /// Per HTTP request (issue #16): power of two choices over a peak-EWMA
    /// of each endpoint's latency, weighted by its requests in flight
    /// (linkerd's balancer). On the L4 path: the fewer active connections
    /// of two random endpoints.
    LeastRequest,
}

impl LbStrategy {
    /// The annotation that selects a strategy per service.
    pub const ANNOTATION: &'static str = "edgemesh.io/lb-strategy";
}

impl FromStr for LbStrategy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "RoundRobin" => Ok(LbStrategy::RoundRobin),
            "Random" => Ok(LbStrategy::Random),
            "ConsistentHash" => Ok(LbStrategy::ConsistentHash),
            "LeastRequest" => Ok(LbStrategy::LeastRequest),
            other => Err(format!(
                "unknown load-balancing strategy {other:?} (expected RoundRobin, Random, ConsistentHash or LeastRequest)"
            )),
        }
    }
}

impl fmt::Display for LbStrategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LbStrategy::RoundRobin => "RoundRobin",
            LbStrategy::Random => "Random",
            LbStrategy::ConsistentHash => "ConsistentHash",
            LbStrategy::LeastRequest => "LeastRequest",
        })
    }
}

/// What a `ConsistentHash` service hashes to choose an endpoint
/// (annotation `edgemesh.io/hash-key`).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Default)]
pub enum HashKey {
    /// The client's source IP address (`source-ip`, the default).
    #[default]
    SourceIp,
    /// The value of this HTTP request header, read from the first request on
    /// the connection without consuming it (`header:<Name>`); connections
    /// without it (or not HTTP) fall back to the source IP.
    Header(String),
    /// The value of this cookie (`cookie:<name>`), read from each request on
    /// HTTP ports; requests without it fall back to the source IP, and so
    /// does every connection on the L4 path.
    Cookie(String),
}

impl HashKey {
    pub const ANNOTATION: &'static str = "edgemesh.io/hash-key";
}

impl FromStr for HashKey {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s == "source-ip" {
            return Ok(HashKey::SourceIp);
        }
        // RFC 9110 field names are tokens.
        let token = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c);
        if let Some(name) = s.strip_prefix("header:") {
            if !name.is_empty() && name.chars().all(token) {
                return Ok(HashKey::Header(name.to_owned()));
            }
            return Err(format!("invalid header name {name:?} in hash key {s:?}"));
        }
        if let Some(name) = s.strip_prefix("cookie:") {
            // RFC 6265 cookie names are tokens too.
            if !name.is_empty() && name.chars().all(token) {
                return Ok(HashKey::Cookie(name.to_owned()));
            }
            return Err(format!("invalid cookie name {name:?} in hash key {s:?}"));
        }
        Err(format!("unknown hash key {s:?} (expected source-ip, header:<Name> or cookie:<name>)"))
    }
}

impl fmt::Display for HashKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HashKey::SourceIp => f.write_str("source-ip"),
            HashKey::Header(name) => write!(f, "header:{name}"),
            HashKey::Cookie(name) => write!(f, "cookie:{name}"),
        }
    }
}

impl Serialize for HashKey {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// `spec.sessionAffinity` with `sessionAffinityConfig.clientIP.timeoutSeconds`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub enum SessionAffinity {
    #[default]
    None,
    /// Connections from one client IP go to the endpoint it last used, until
    /// `timeout_seconds` pass without a connection from it.
    #[serde(rename = "ClientIP")]
    ClientIp { timeout_seconds: u32 },
}

impl SessionAffinity {
    /// Kubernetes' default `timeoutSeconds` (3 hours).
    pub const DEFAULT_TIMEOUT_SECONDS: u32 = 10_800;
    /// Kubernetes' upper bound for `timeoutSeconds` (one day).
    pub const MAX_TIMEOUT_SECONDS: u32 = 86_400;
}

/// `spec.internalTrafficPolicy`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub enum InternalTrafficPolicy {
    /// Every ready endpoint.
    #[default]
    Cluster,
    /// Only endpoints on this node; none means the connection is closed.
    Local,
}

impl FromStr for InternalTrafficPolicy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "Cluster" => Ok(Self::Cluster),
            "Local" => Ok(Self::Local),
            other => Err(format!("unknown internalTrafficPolicy {other:?} (expected Cluster or Local)")),
        }
    }
}

/// `spec.trafficDistribution`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum TrafficDistribution {
    /// Endpoints on this node while any is ready and healthy, others after.
    PreferClose,
}

impl FromStr for TrafficDistribution {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "PreferClose" => Ok(Self::PreferClose),
            other => Err(format!("unknown trafficDistribution {other:?} (expected PreferClose)")),
        }
    }
}

/// One entry of `spec.ipFamilies`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum IpFamily {
    IPv4,
    IPv6,
}

impl FromStr for IpFamily {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "IPv4" => Ok(Self::IPv4),
            "IPv6" => Ok(Self::IPv6),
            other => Err(format!("unknown IP family {other:?} (expected IPv4 or IPv6)")),
        }
    }
}

/// `spec.ipFamilyPolicy`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum IpFamilyPolicy {
    SingleStack,
    PreferDualStack,
    RequireDualStack,
}

impl FromStr for IpFamilyPolicy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "SingleStack" => Ok(Self::SingleStack),
            "PreferDualStack" => Ok(Self::PreferDualStack),
            "RequireDualStack" => Ok(Self::RequireDualStack),
            other => Err(format!(
                "unknown ipFamilyPolicy {other:?} (expected SingleStack, PreferDualStack or RequireDualStack)"
            )),
        }
    }
}

/// Annotation: how long a UDP session may stay idle before it is closed.
pub const UDP_IDLE_TIMEOUT_ANNOTATION: &str = "edgemesh.io/udp-idle-timeout";

/// Default idle timeout of a UDP session.
pub const DEFAULT_UDP_IDLE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// Parses a duration written `250ms`, `2s`, `1m` or `1h` (a bare number is
/// seconds); zero is refused.
pub fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num.parse().map_err(|_| format!("invalid duration {text:?} (expected e.g. 250ms, 30s, 2m)"))?;
    let ms = match unit {
        "ms" => Some(n),
        "" | "s" => n.checked_mul(1000),
        "m" => n.checked_mul(60_000),
        "h" => n.checked_mul(3_600_000),
        _ => return Err(format!("invalid duration unit in {text:?} (use ms, s, m or h)")),
    };
    match ms {
        Some(0) => Err(format!("duration {text:?} must be greater than zero")),
        Some(ms) => Ok(std::time::Duration::from_millis(ms)),
        None => Err(format!("duration {text:?} is too long")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_keys() {
        assert_eq!("source-ip".parse::<HashKey>(), Ok(HashKey::SourceIp));
        assert_eq!("header:X-User".parse::<HashKey>(), Ok(HashKey::Header("X-User".into())));
        assert_eq!("cookie:session".parse::<HashKey>(), Ok(HashKey::Cookie("session".into())));
        for bad in ["", "header:", "header:a b", "cookie:", "cookie:a;b", "query:x", "Source-IP"] {
            assert!(bad.parse::<HashKey>().is_err(), "{bad}");
        }
        assert_eq!(HashKey::Header("X-User".into()).to_string(), "header:X-User");
        assert_eq!(HashKey::Cookie("session".into()).to_string(), "cookie:session");
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms"), Ok(std::time::Duration::from_millis(250)));
        assert_eq!(parse_duration("90"), Ok(std::time::Duration::from_secs(90)));
        assert_eq!(parse_duration("2m"), Ok(std::time::Duration::from_secs(120)));
        for bad in ["", "0s", "1.5s", "-1s", "3d", "s", "99999999999999999999h"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn service_keys_order_by_namespace_then_name() {
        let k = |ns: &str, name: &str| ServiceKey::new(ns, name);
        let mut keys = [k("a-b", "x"), k("a", "y"), k("a", "x-1"), k("b", "a"), k("a", "x")];
        keys.sort();
        let pairs: Vec<_> = keys.iter().map(|k| (k.namespace(), k.name())).collect();
        assert_eq!(pairs, [("a", "x"), ("a", "x-1"), ("a", "y"), ("a-b", "x"), ("b", "a")]);
        assert_eq!(k("default", "web").to_string(), "default/web");
        let mut buf = String::new();
        ServiceKey::join_into(&mut buf, "default".chars(), "web".chars());
        let set: std::collections::BTreeSet<ServiceKey> = [k("default", "web")].into();
        assert!(set.contains(buf.as_str()));
        assert_ne!(k("ab", "c"), k("a", "bc"));
    }

    #[test]
    fn strategies_round_trip() {
        for s in [LbStrategy::RoundRobin, LbStrategy::Random, LbStrategy::ConsistentHash] {
            assert_eq!(s.to_string().parse::<LbStrategy>(), Ok(s));
        }
    }
}

//! The wire format: serde structs for the parts of Kubernetes objects the
//! agent reads, spelled exactly as `kubectl` writes them (camelCase).
//!
//! Both sources read into these structs: the manifests source from YAML
//! (serde-saphyr, or its fast path), the Kubernetes source from the API's
//! types.
//!
//! Every field is optional here, so that a missing field is reported by
//! [`crate::convert`] with a clear message instead of a serde one; unknown
//! fields are ignored because real manifests carry many (status, managed
//! fields, selectors). Values that validation may reject are wrapped in
//! [`Located`] so the error can point at their line.
//!
//! From YAML, the same structs are filled by serde-saphyr (the reference)
//! and by the manifests source's plain-YAML fast path.

use std::collections::BTreeMap;
use std::fmt;

use serde::Deserialize;
use serde::de::{self, Deserializer, IgnoredAny, MapAccess, Visitor};

/// The kinds this crate converts; everything else is skipped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Service,
    EndpointSlice,
    Endpoints,
    Node,
    /// Istio's `networking.istio.io` DestinationRule.
    DestinationRule,
    /// One of the edge gateway's kinds (its `apiVersion` tells which:
    /// [`edgemesh_core::RoutingKind::of`]), read whole.
    Routing,
    List,
    Other,
}

impl Kind {
    pub fn of(kind: &str) -> Kind {
        match kind {
            "Service" => Kind::Service,
            "EndpointSlice" => Kind::EndpointSlice,
            "Endpoints" => Kind::Endpoints,
            "Node" => Kind::Node,
            "DestinationRule" => Kind::DestinationRule,
            "Gateway" | "HTTPRoute" | "GRPCRoute" | "TLSRoute" | "TCPRoute" | "ReferenceGrant" | "VirtualService" => {
                Kind::Routing
            }
            "List" => Kind::List,
            _ => Kind::Other,
        }
    }
}

/// A value and the 1-based line (within its document) it starts on; 0
/// when the parser could not tell, or the value did not come from a file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Located<T> {
    pub value: T,
    pub line: usize,
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Located<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = serde_saphyr::Spanned::<T>::deserialize(d)?;
        Ok(Located { value: s.value, line: usize::try_from(s.referenced.line()).unwrap_or(0) })
    }
}

/// One top-level document or one `items[]` entry of a `List`: the union of
/// the top-level fields of every supported kind.
///
/// Deserialized by hand so that, once `kind` has been read (kubectl writes
/// `apiVersion` and `kind` before `spec`), the fields of other kinds are
/// skipped without being typed: a Deployment's `spec` is never mistaken for
/// a Service's.
#[derive(Default)]
pub struct Document {
    pub api_version: Option<Located<String>>,
    pub kind: Option<Located<String>>,
    pub metadata: Option<Metadata>,
    /// Service.
    pub spec: Option<ServiceSpec>,
    /// EndpointSlice.
    pub address_type: Option<Located<String>>,
    pub endpoints: Option<Vec<Located<SliceEndpoint>>>,
    pub ports: Option<Vec<Located<EndpointPort>>>,
    /// Endpoints.
    pub subsets: Option<Vec<Subset>>,
    /// Node (`spec` of a Node, read into its own struct once `kind` says
    /// Node: kubectl and the API write `kind` first; a Node whose `spec`
    /// comes before its `kind` has that spec read as a Service's, and no
    /// pod CIDRs).
    pub node_spec: Option<NodeSpec>,
    pub status: Option<NodeStatus>,
    /// DestinationRule: its whole `spec` (read once `kind` says so), so that
    /// every field without effect here can be reported by name.
    pub rule_spec: Option<serde_json::Value>,
    /// A routing object: its whole `spec`.
    pub routing_spec: Option<serde_json::Value>,
    /// List.
    pub items: Option<Vec<Located<Document>>>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct Metadata {
    pub name: Option<Located<String>>,
    pub namespace: Option<Located<String>>,
    pub labels: Option<BTreeMap<String, String>>,
    pub annotations: Option<BTreeMap<String, String>>,
    /// Kept by routing objects only (the gateway's status names it).
    pub generation: Option<i64>,
    /// RFC 3339; kept by routing objects only (route precedence ties).
    pub creation_timestamp: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct ServiceSpec {
    #[serde(rename = "type")]
    pub service_type: Option<Located<String>>,
    #[serde(rename = "clusterIP")]
    pub cluster_ip: Option<Located<String>>,
    #[serde(rename = "clusterIPs")]
    pub cluster_ips: Option<Vec<Located<String>>>,
    pub ports: Option<Vec<Located<ServicePort>>>,
    pub session_affinity: Option<Located<String>>,
    pub session_affinity_config: Option<SessionAffinityConfig>,
    pub internal_traffic_policy: Option<Located<String>>,
    pub traffic_distribution: Option<Located<String>>,
    pub ip_families: Option<Vec<Located<String>>>,
    pub ip_family_policy: Option<Located<String>>,
}

#[derive(Deserialize, Default)]
pub struct SessionAffinityConfig {
    #[serde(rename = "clientIP")]
    pub client_ip: Option<ClientIpConfig>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct ClientIpConfig {
    pub timeout_seconds: Option<Located<i64>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServicePort {
    pub name: Option<Located<String>>,
    pub protocol: Option<Located<String>>,
    pub port: Option<Located<i64>>,
    pub target_port: Option<Located<IntOrString>>,
    pub node_port: Option<Located<i64>>,
    pub app_protocol: Option<Located<String>>,
}

/// `targetPort`: a number or a container port name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IntOrString {
    Int(i64),
    Str(String),
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SliceEndpoint {
    pub addresses: Option<Vec<Located<String>>>,
    pub conditions: Option<Conditions>,
    pub node_name: Option<String>,
    pub hostname: Option<String>,
}

#[derive(Deserialize)]
pub struct Conditions {
    pub ready: Option<bool>,
}

/// A port of an EndpointSlice or of an Endpoints subset (same shape).
#[derive(Deserialize)]
pub struct EndpointPort {
    pub name: Option<Located<String>>,
    pub port: Option<Located<i64>>,
    pub protocol: Option<Located<String>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Subset {
    pub addresses: Option<Vec<Located<EndpointAddress>>>,
    pub not_ready_addresses: Option<Vec<Located<EndpointAddress>>>,
    pub ports: Option<Vec<Located<EndpointPort>>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EndpointAddress {
    pub ip: Option<Located<String>>,
    pub hostname: Option<String>,
    pub node_name: Option<String>,
}

/// The parts of a Node's `spec` the agent reads: its pod CIDRs.
#[derive(Deserialize, Default)]
pub struct NodeSpec {
    /// The first pod CIDR; older clusters set only this one.
    #[serde(rename = "podCIDR")]
    pub pod_cidr: Option<Located<String>>,
    /// Every pod CIDR (one per family); its first entry equals `podCIDR`.
    #[serde(rename = "podCIDRs")]
    pub pod_cidrs: Option<Vec<Located<String>>>,
}

#[derive(Deserialize, Default)]
pub struct NodeStatus {
    pub addresses: Option<Vec<Located<NodeAddress>>>,
}

/// One entry of a Node's `status.addresses`.
#[derive(Deserialize)]
pub struct NodeAddress {
    #[serde(rename = "type")]
    pub address_type: Option<Located<String>>,
    pub address: Option<Located<String>>,
}

/// Just `apiVersion` and `kind`: used to tell whether a document that failed
/// to deserialize is one of ours at all.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Header {
    pub api_version: Option<String>,
    pub kind: Option<String>,
}

// ---------------------------------------------------------------------------
// Hand-written deserializers.

impl<'de> Deserialize<'de> for IntOrString {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = IntOrString;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a port number or a port name")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<IntOrString, E> {
                Ok(IntOrString::Int(v))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<IntOrString, E> {
                Ok(IntOrString::Int(i64::try_from(v).unwrap_or(i64::MAX)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<IntOrString, E> {
                Ok(IntOrString::Str(v.to_owned()))
            }
        }
        d.deserialize_any(V)
    }
}

/// Top-level keys we look at; everything else is `Ignored`.
enum Key {
    ApiVersion,
    Kind,
    Metadata,
    Spec,
    AddressType,
    Endpoints,
    Ports,
    Subsets,
    Status,
    Items,
    Ignored,
}

impl<'de> Deserialize<'de> for Key {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Key;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a field name")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Key, E> {
                Ok(match v {
                    "apiVersion" => Key::ApiVersion,
                    "kind" => Key::Kind,
                    "metadata" => Key::Metadata,
                    "spec" => Key::Spec,
                    "addressType" => Key::AddressType,
                    "endpoints" => Key::Endpoints,
                    "ports" => Key::Ports,
                    "subsets" => Key::Subsets,
                    "status" => Key::Status,
                    "items" => Key::Items,
                    _ => Key::Ignored,
                })
            }
            // Non-string keys (`1: x`) are legal YAML; they are not ours.
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<Key, E> {
                Ok(Key::Ignored)
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> Result<Key, E> {
                Ok(Key::Ignored)
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<Key, E> {
                Ok(Key::Ignored)
            }
        }
        d.deserialize_identifier(V)
    }
}

impl<'de> Deserialize<'de> for Document {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Document;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a Kubernetes object (a mapping with apiVersion and kind)")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Document, A::Error> {
                let mut doc = Document::default();
                // Once the kind is known, fields of other kinds are skipped untyped.
                let mut kind: Option<Kind> = None;
                let wants = |kind: Option<Kind>, k: Kind| kind.is_none_or(|have| have == k);
                while let Some(key) = map.next_key::<Key>()? {
                    match key {
                        Key::ApiVersion => doc.api_version = map.next_value()?,
                        Key::Kind => {
                            let k: Option<Located<String>> = map.next_value()?;
                            kind = k.as_ref().map(|k| Kind::of(&k.value));
                            doc.kind = k;
                        }
                        Key::Metadata => doc.metadata = map.next_value()?,
                        Key::Spec if kind == Some(Kind::Node) => doc.node_spec = map.next_value()?,
                        Key::Spec if kind == Some(Kind::DestinationRule) => doc.rule_spec = map.next_value()?,
                        Key::Spec if kind == Some(Kind::Routing) => doc.routing_spec = map.next_value()?,
                        Key::Spec if wants(kind, Kind::Service) => doc.spec = map.next_value()?,
                        Key::AddressType if wants(kind, Kind::EndpointSlice) => doc.address_type = map.next_value()?,
                        Key::Endpoints if wants(kind, Kind::EndpointSlice) => doc.endpoints = map.next_value()?,
                        Key::Ports if wants(kind, Kind::EndpointSlice) => doc.ports = map.next_value()?,
                        Key::Subsets if wants(kind, Kind::Endpoints) => doc.subsets = map.next_value()?,
                        Key::Status if wants(kind, Kind::Node) => doc.status = map.next_value()?,
                        Key::Items if wants(kind, Kind::List) => doc.items = map.next_value()?,
                        _ => {
                            map.next_value::<IgnoredAny>()?;
                        }
                    }
                }
                Ok(doc)
            }
        }
        d.deserialize_map(V)
    }
}

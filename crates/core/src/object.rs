//! What sources produce: source-neutral, already validated copies of the
//! Kubernetes objects the agent cares about.
//!
//! Sources (manifests, the Kubernetes API) parse and validate their own wire
//! format and convert into these types, so the registry never sees invalid
//! input and every source has exactly the same semantics.

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::service::{
    InternalTrafficPolicy, IpFamily, IpFamilyPolicy, LbStrategy, Protocol, ServiceKey, SessionAffinity, TargetPort,
    TrafficDistribution,
};

/// The kinds of object a source can emit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum ObjectKind {
    Service,
    /// `discovery.k8s.io/v1` EndpointSlice.
    EndpointSlice,
    /// Legacy `v1` Endpoints.
    Endpoints,
    /// `v1` Node (cluster-scoped: its key has an empty namespace).
    Node,
    /// Istio `networking.istio.io` DestinationRule: a service's
    /// load-balancing strategy, as EdgeMesh reads it.
    DestinationRule,
    /// An object the edge gateway routes by ([`RoutingKind`]).
    Routing(RoutingKind),
}

/// The objects the edge gateway reads (issue #17): the Gateway API's, and
/// the Istio `Gateway` and `VirtualService` EdgeMesh's gateway read. Kept
/// whole ([`RoutingObject`]): the gateway compiles them together, and
/// reports what is wrong in one as that object's status, not as a source
/// error that would lose it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum RoutingKind {
    Gateway,
    HttpRoute,
    GrpcRoute,
    TlsRoute,
    TcpRoute,
    ReferenceGrant,
    /// `networking.istio.io` `Gateway`.
    IstioGateway,
    /// `networking.istio.io` `VirtualService`.
    VirtualService,
}

impl RoutingKind {
    pub const ALL: [RoutingKind; 8] = [
        RoutingKind::Gateway,
        RoutingKind::HttpRoute,
        RoutingKind::GrpcRoute,
        RoutingKind::TlsRoute,
        RoutingKind::TcpRoute,
        RoutingKind::ReferenceGrant,
        RoutingKind::IstioGateway,
        RoutingKind::VirtualService,
    ];

    /// The API group of the kind.
    pub fn group(self) -> &'static str {
        match self {
            RoutingKind::IstioGateway | RoutingKind::VirtualService => "networking.istio.io",
            _ => "gateway.networking.k8s.io",
        }
    }

    /// `kind` as objects spell it.
    pub fn kind(self) -> &'static str {
        match self {
            RoutingKind::Gateway | RoutingKind::IstioGateway => "Gateway",
            RoutingKind::HttpRoute => "HTTPRoute",
            RoutingKind::GrpcRoute => "GRPCRoute",
            RoutingKind::TlsRoute => "TLSRoute",
            RoutingKind::TcpRoute => "TCPRoute",
            RoutingKind::ReferenceGrant => "ReferenceGrant",
            RoutingKind::VirtualService => "VirtualService",
        }
    }

    /// A name for logs, metric labels and cache keys, unique among every
    /// [`ObjectKind`]'s (`IstioGateway` for Istio's Gateway).
    pub fn label(self) -> &'static str {
        match self {
            RoutingKind::IstioGateway => "IstioGateway",
            other => other.kind(),
        }
    }

    /// The kind that `apiVersion` (`group/version`) and `kind` name, if it
    /// is one of these.
    pub fn of(api_version: &str, kind: &str) -> Option<RoutingKind> {
        let group = api_version.split_once('/').map_or("", |(g, _)| g);
        RoutingKind::ALL.into_iter().find(|k| k.group() == group && k.kind() == kind)
    }
}

impl std::fmt::Display for RoutingKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.kind(), self.group())
    }
}

/// Identity of a source object: kind, namespace and name.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ObjectKey {
    pub kind: ObjectKind,
    pub namespace: String,
    pub name: String,
}

/// An [`ObjectKey`] in one shared allocation, for the maps that hold a key
/// per object for as long as it exists (the registry's endpoint owners, the
/// manifests index): an `ObjectKey` is three allocations with its two
/// `String`s, this is one, and clones share it. Orders like `ObjectKey`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectId {
    kind: ObjectKind,
    /// Namespace and name, joined as a [`ServiceKey`]'s are.
    text: ServiceKey,
}

impl ObjectId {
    pub fn new(kind: ObjectKind, namespace: &str, name: &str) -> Self {
        Self { kind, text: ServiceKey::new(namespace, name) }
    }

    pub fn kind(&self) -> ObjectKind {
        self.kind
    }

    /// The [`ObjectKey`] (allocates its strings).
    pub fn to_key(&self) -> ObjectKey {
        ObjectKey { kind: self.kind, namespace: self.text.namespace().into(), name: self.text.name().into() }
    }
}

impl From<&ObjectKey> for ObjectId {
    fn from(key: &ObjectKey) -> Self {
        Self::new(key.kind, &key.namespace, &key.name)
    }
}

impl std::fmt::Debug for ObjectId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ObjectKey")
            .field("kind", &self.kind)
            .field("namespace", &self.text.namespace())
            .field("name", &self.text.name())
            .finish()
    }
}

/// Namespace, name, labels and annotations of an object.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectMeta {
    pub namespace: String,
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
}

/// A `v1/Service`, reduced to what the data plane needs. Construct with
/// `..Default::default()` so that new fields do not break sources.
/// Deserialized with defaults for missing fields, so a persisted copy
/// written before a field existed still loads.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ServiceObject {
    pub meta: ObjectMeta,
    /// `spec.clusterIPs` (or `spec.clusterIP`); empty when unset.
    pub cluster_ips: Vec<IpAddr>,
    /// `clusterIP: None`: no virtual IP, DNS answers with the endpoints.
    pub headless: bool,
    pub ports: Vec<ServicePortSpec>,
    /// `spec.type` as written (`ClusterIP`, `NodePort`, `LoadBalancer`, `ExternalName`).
    pub service_type: String,
    /// `spec.sessionAffinity` and its timeout.
    pub session_affinity: SessionAffinity,
    /// `spec.internalTrafficPolicy` (Kubernetes' default: `Cluster`).
    pub internal_traffic_policy: InternalTrafficPolicy,
    /// `spec.trafficDistribution`, when set.
    pub traffic_distribution: Option<TrafficDistribution>,
    /// `spec.ipFamilies` as written (empty when unset): with
    /// `ipFamilyPolicy`, which families of VIP the service gets
    /// (`vip::wanted_families`).
    pub ip_families: Vec<IpFamily>,
    /// `spec.ipFamilyPolicy`, when set.
    pub ip_family_policy: Option<IpFamilyPolicy>,
}

/// One entry of `spec.ports`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServicePortSpec {
    /// Empty when the service has a single unnamed port.
    pub name: String,
    pub protocol: Protocol,
    pub port: u16,
    pub target_port: TargetPort,
    pub node_port: Option<u16>,
    /// `appProtocol` as written (`http`, `kubernetes.io/h2c`, ...): with the
    /// name, whether the port is proxied per HTTP request
    /// ([`AppProtocol::classify`](crate::AppProtocol::classify)). Missing in
    /// copies persisted before it existed: `None`.
    #[serde(default)]
    pub app_protocol: Option<String>,
}

/// Endpoints of a service: one EndpointSlice (one subset) or one legacy
/// Endpoints object (one subset per `subsets[]` entry).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointSet {
    pub meta: ObjectMeta,
    /// Kind of the object this came from; decides the [`ObjectKey`].
    pub kind: ObjectKind,
    /// The service these endpoints belong to: the `kubernetes.io/service-name`
    /// label of a slice, the object name of a legacy Endpoints.
    pub service_name: String,
    pub subsets: Vec<EndpointSubset>,
}

/// Endpoints that share one port list.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct EndpointSubset {
    pub endpoints: Vec<EndpointSpec>,
    pub ports: Vec<EndpointPortSpec>,
}

/// One endpoint (a pod): its addresses and conditions.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointSpec {
    pub addresses: Vec<IpAddr>,
    /// `conditions.ready`; Kubernetes treats an unset condition as ready.
    pub ready: bool,
    pub node_name: Option<String>,
    pub hostname: Option<String>,
}

/// A port of an endpoint set; `name` matches the service port's name.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointPortSpec {
    pub name: String,
    pub port: u16,
    pub protocol: Protocol,
}

/// A `v1/Node`, reduced to what the agent needs: its name, annotations
/// (the peer ID, [`crate::PEER_ID_ANNOTATION`]) and addresses for the
/// tunnel, and its pod CIDRs for DNS access. Deserialized with defaults,
/// like [`ServiceObject`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct NodeObject {
    /// `namespace` is empty: nodes are cluster-scoped.
    pub meta: ObjectMeta,
    /// `status.addresses` of type `InternalIP` or `ExternalIP`, in order.
    pub addresses: Vec<IpAddr>,
    /// `spec.podCIDRs` (or, when that is empty, `spec.podCIDR`): the
    /// networks of the pods on this node, whose DNS queries are the node's.
    pub pod_cidrs: Vec<IpNet>,
}

/// An Istio DestinationRule (`networking.istio.io` v1alpha3, v1beta1 or
/// v1), reduced to what EdgeMesh read from it: the load-balancing strategy
/// of one service. Fields without effect here are reported by the source
/// that converts it. Deserialized with defaults, like [`ServiceObject`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct DestinationRuleObject {
    pub meta: ObjectMeta,
    /// The service its `spec.host` names (a short name is in the rule's
    /// namespace): namespace and name.
    pub service_namespace: String,
    pub service_name: String,
    /// `trafficPolicy.loadBalancer`: `simple` (ROUND_ROBIN, RANDOM,
    /// LEAST_REQUEST/LEAST_CONN) or `consistentHash`; `None` when the rule
    /// sets no strategy.
    pub strategy: Option<LbStrategy>,
    /// `consistentHash`'s key, in the `edgemesh.io/hash-key` syntax
    /// (`source-ip`, `header:<Name>`, `cookie:<name>`).
    pub hash_key: Option<String>,
}

/// A routing object ([`RoutingKind`]) as its source read it: the whole
/// object as JSON (`apiVersion`, `kind`, `metadata` with `generation` and
/// `creationTimestamp`, `spec`; no `status`), which the gateway parses with
/// its own schema. Sources check only that it is an object of the kind.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoutingObject {
    pub kind: RoutingKind,
    pub meta: ObjectMeta,
    /// The object, as JSON text.
    pub document: String,
}

/// Any object a source can emit.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Object {
    Service(ServiceObject),
    Endpoints(EndpointSet),
    Node(NodeObject),
    DestinationRule(DestinationRuleObject),
    Routing(RoutingObject),
}

impl Object {
    pub fn key(&self) -> ObjectKey {
        match self {
            Object::Service(s) => {
                ObjectKey { kind: ObjectKind::Service, namespace: s.meta.namespace.clone(), name: s.meta.name.clone() }
            }
            Object::Endpoints(e) => {
                ObjectKey { kind: e.kind, namespace: e.meta.namespace.clone(), name: e.meta.name.clone() }
            }
            Object::Node(n) => {
                ObjectKey { kind: ObjectKind::Node, namespace: String::new(), name: n.meta.name.clone() }
            }
            Object::DestinationRule(d) => ObjectKey {
                kind: ObjectKind::DestinationRule,
                namespace: d.meta.namespace.clone(),
                name: d.meta.name.clone(),
            },
            Object::Routing(r) => ObjectKey {
                kind: ObjectKind::Routing(r.kind),
                namespace: r.meta.namespace.clone(),
                name: r.meta.name.clone(),
            },
        }
    }

    /// The key in one allocation, without building an [`ObjectKey`] first.
    pub fn id(&self) -> ObjectId {
        match self {
            Object::Service(s) => ObjectId::new(ObjectKind::Service, &s.meta.namespace, &s.meta.name),
            Object::Endpoints(e) => ObjectId::new(e.kind, &e.meta.namespace, &e.meta.name),
            Object::Node(n) => ObjectId::new(ObjectKind::Node, "", &n.meta.name),
            Object::DestinationRule(d) => ObjectId::new(ObjectKind::DestinationRule, &d.meta.namespace, &d.meta.name),
            Object::Routing(r) => ObjectId::new(ObjectKind::Routing(r.kind), &r.meta.namespace, &r.meta.name),
        }
    }

    /// The service this object belongs to (a DestinationRule: the one its
    /// host names); `None` for a Node or a routing object.
    pub fn service_key(&self) -> Option<ServiceKey> {
        match self {
            Object::Service(s) => Some(ServiceKey::new(&s.meta.namespace, &s.meta.name)),
            Object::Endpoints(e) => Some(ServiceKey::new(&e.meta.namespace, &e.service_name)),
            Object::Node(_) | Object::Routing(_) => None,
            Object::DestinationRule(d) => Some(ServiceKey::new(&d.service_namespace, &d.service_name)),
        }
    }
}

/// What a source tells the registry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SourceEvent {
    /// The object was created or changed (the whole new object).
    Apply(Object),
    /// The object is gone.
    Delete(ObjectKey),
    /// The source has delivered its first complete view; the agent may
    /// report ready once this is applied.
    Synced,
}

//! The immutable view of all services that consumers read.
//!
//! A [`Snapshot`] is built by the registry and published whole; it is made of
//! persistent maps (`imbl`), so publishing a change to one service among
//! 100,000 copies nothing but the path to that service. Consumers that keep
//! per-service state (proxy listeners) follow [`Snapshot::changes_since`]
//! instead of diffing everything.
//!
//! Nodes ([`NodeEntry`]) are in the snapshot too, for the tunnel; a change
//! to a node publishes a generation with no service in its changelog.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use imbl::{HashMap, OrdMap, Vector};
use ipnet::IpNet;
use serde::Serialize;

use crate::node::NodeEntry;
use crate::object::{ObjectId, ObjectKind, RoutingObject};
use std::time::Duration;

use crate::service::{
    HashKey, InternalTrafficPolicy, IpFamily, IpFamilyPolicy, LbStrategy, Protocol, ServiceKey, SessionAffinity,
    TargetPort, TrafficDistribution,
};

/// Everything the data plane knows, at one generation.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    /// Increases by one with every published change.
    pub generation: u64,
    /// True once every source has delivered its first full view.
    pub synced: bool,
    services: OrdMap<ServiceKey, Arc<ServiceEntry>>,
    /// Every VIP and cluster IP -> its service.
    by_ip: HashMap<IpAddr, ServiceKey>,
    /// Keys changed at each generation, oldest first, bounded.
    changelog: Vector<(u64, ServiceKey)>,
    /// Oldest generation whose changes are all still in the changelog.
    changelog_complete_from: u64,
    /// This node's name (the registry's `node_name`).
    node_name: Arc<str>,
    nodes: OrdMap<Arc<str>, Arc<NodeEntry>>,
    /// Backends on this node, for [`Snapshot::serves_endpoint`].
    local: local::LocalBackends,
    /// The edge gateway's objects, by kind, namespace and name.
    routing: OrdMap<ObjectId, Arc<RoutingObject>>,
    /// The generation at which `routing` last changed.
    routing_changed: u64,
}

mod local;

/// How many changed keys the changelog keeps; a consumer further behind
/// than this reconciles against the whole snapshot.
const CHANGELOG_LEN: usize = 8192;

impl Snapshot {
    /// The service with this namespace and name.
    pub fn service(&self, key: &ServiceKey) -> Option<&Arc<ServiceEntry>> {
        self.services.get(key)
    }

    /// The service whose key has this text ([`ServiceKey::join_into`]):
    /// a lookup that allocates nothing.
    pub fn service_by_joined_key(&self, joined: &str) -> Option<&Arc<ServiceEntry>> {
        self.services.get(joined)
    }

    /// The service whose VIP or cluster IP is `ip`.
    pub fn service_by_ip(&self, ip: &IpAddr) -> Option<&Arc<ServiceEntry>> {
        self.by_ip.get(ip).and_then(|k| self.services.get(k))
    }

    /// All services, ordered by namespace then name.
    pub fn services(&self) -> impl Iterator<Item = &Arc<ServiceEntry>> {
        self.services.values()
    }

    pub fn len(&self) -> usize {
        self.services.len()
    }

    pub fn is_empty(&self) -> bool {
        self.services.is_empty()
    }

    /// The name of the node this agent runs on (empty if not configured).
    pub fn node_name(&self) -> &str {
        &self.node_name
    }

    /// Whether `addr` is a ready backend, on this node, of a service port of
    /// `protocol`: the only addresses this agent opens connections to on
    /// behalf of other nodes. An indexed lookup, cheap enough per connection.
    pub fn serves_endpoint(&self, addr: SocketAddr, protocol: Protocol) -> bool {
        // Backends carry no IPv6 flow label or scope; neither may the query.
        self.local.contains(SocketAddr::new(addr.ip(), addr.port()), protocol)
    }

    /// How many distinct (address, protocol) pairs [`Snapshot::serves_endpoint`] accepts.
    pub fn local_backends(&self) -> usize {
        self.local.len()
    }

    /// The node with this name.
    pub fn node(&self, name: &str) -> Option<&Arc<NodeEntry>> {
        self.nodes.get(name)
    }

    /// This node's pod CIDRs, from its Node object (none until the source
    /// has delivered it, or without a node name).
    pub fn own_pod_cidrs(&self) -> &[IpNet] {
        self.nodes.get(&*self.node_name).map_or(&[], |n| &n.pod_cidrs)
    }

    /// All nodes, ordered by name.
    pub fn nodes(&self) -> impl Iterator<Item = &Arc<NodeEntry>> {
        self.nodes.values()
    }

    /// The edge gateway's objects, ordered by kind, namespace and name.
    pub fn routing_objects(&self) -> impl Iterator<Item = &Arc<RoutingObject>> {
        self.routing.values()
    }

    /// The generation at which the routing objects last changed (0: never),
    /// so that the gateway recompiles only when they did.
    pub fn routing_changed(&self) -> u64 {
        self.routing_changed
    }

    /// Keys of services that changed (added, updated or removed) after
    /// generation `since`, possibly with repeats; `None` when the changelog
    /// no longer reaches back that far and the caller must look at every
    /// service.
    pub fn changes_since(&self, since: u64) -> Option<Vec<ServiceKey>> {
        if since >= self.generation {
            return Some(Vec::new());
        }
        if self.changelog_complete_from > since + 1 {
            return None;
        }
        Some(self.changelog.iter().filter(|(g, _)| *g > since).map(|(_, k)| k.clone()).collect())
    }

    // Mutation is for the registry only.

    /// An empty snapshot for the agent on node `node_name`.
    pub(crate) fn for_node(node_name: &str) -> Self {
        Self { node_name: Arc::from(node_name), ..Self::default() }
    }

    pub(crate) fn insert(&mut self, entry: Arc<ServiceEntry>) {
        let key = entry.key.clone();
        let old = self.services.get(&key).cloned();
        if let Some(old) = &old {
            for ip in old.ips() {
                self.by_ip.remove(&ip);
            }
        }
        self.local.replace(&self.node_name, old.as_deref(), Some(&entry));
        for ip in entry.ips() {
            self.by_ip.insert(ip, key.clone());
        }
        self.services.insert(key.clone(), entry);
        self.log_change(key);
    }

    pub(crate) fn remove(&mut self, key: &ServiceKey) -> Option<Arc<ServiceEntry>> {
        let old = self.services.remove(key)?;
        for ip in old.ips() {
            if self.by_ip.get(&ip) == Some(key) {
                self.by_ip.remove(&ip);
            }
        }
        self.local.replace(&self.node_name, Some(&old), None);
        self.log_change(key.clone());
        Some(old)
    }

    /// Adds or replaces a node; returns whether anything changed.
    pub(crate) fn set_node(&mut self, entry: NodeEntry) -> bool {
        if self.nodes.get(&*entry.name).is_some_and(|old| **old == entry) {
            return false;
        }
        self.nodes.insert(entry.name.clone(), Arc::new(entry));
        true
    }

    /// Removes a node; returns whether it was there.
    pub(crate) fn remove_node(&mut self, name: &str) -> bool {
        self.nodes.remove(name).is_some()
    }

    /// Adds or replaces a routing object; returns whether it changed.
    pub(crate) fn set_routing(&mut self, object: RoutingObject) -> bool {
        let id = ObjectId::new(ObjectKind::Routing(object.kind), &object.meta.namespace, &object.meta.name);
        if self.routing.get(&id).is_some_and(|old| **old == object) {
            return false;
        }
        self.routing.insert(id, Arc::new(object));
        self.routing_changed_now();
        true
    }

    /// Removes a routing object; returns whether it was there.
    pub(crate) fn remove_routing(&mut self, id: &ObjectId) -> bool {
        let removed = self.routing.remove(id).is_some();
        if removed {
            self.routing_changed_now();
        }
        removed
    }

    /// Events are applied before the registry begins the generation that
    /// publishes them ([`Snapshot::begin_generation`]): that next one.
    fn routing_changed_now(&mut self) {
        self.routing_changed = self.generation + 1;
    }

    /// Called by the registry before a batch of changes.
    pub(crate) fn begin_generation(&mut self) {
        self.generation += 1;
    }

    fn log_change(&mut self, key: ServiceKey) {
        self.changelog.push_back((self.generation, key));
        while self.changelog.len() > CHANGELOG_LEN {
            if let Some((g, _)) = self.changelog.pop_front() {
                self.changelog_complete_from = g + 1;
            }
        }
    }
}

/// One service as the data plane sees it: its addresses, ports with their
/// ready backends, and the endpoints for DNS.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceEntry {
    #[serde(flatten)]
    pub key: ServiceKey,
    /// IPv4 virtual IP allocated by the agent (from `vipCidr`); `None` for
    /// headless services, services that ask for no IPv4 or need no VIP
    /// (see `VipPolicy`), and when the pool is exhausted.
    pub vip: Option<IpAddr>,
    /// IPv6 virtual IP (from `vipCidr6`), on the same terms.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vip6: Option<IpAddr>,
    /// `spec.clusterIPs` from the source.
    pub cluster_ips: Box<[IpAddr]>,
    pub headless: bool,
    pub service_type: Arc<str>,
    pub strategy: LbStrategy,
    /// What `ConsistentHash` hashes (annotation `edgemesh.io/hash-key`).
    pub hash_key: HashKey,
    pub session_affinity: SessionAffinity,
    pub internal_traffic_policy: InternalTrafficPolicy,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub traffic_distribution: Option<TrafficDistribution>,
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    pub ip_families: Box<[IpFamily]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ip_family_policy: Option<IpFamilyPolicy>,
    /// Idle time after which a UDP session ends (annotation
    /// `edgemesh.io/udp-idle-timeout`, default 60 s).
    #[serde(rename = "udpIdleTimeoutMs", serialize_with = "as_millis")]
    pub udp_idle_timeout: Duration,
    /// HTTP timeouts from annotations (`edgemesh.io/http-timeout`,
    /// `edgemesh.io/http-per-try-timeout`), for its HTTP ports.
    #[serde(skip_serializing_if = "is_default")]
    pub http: crate::HttpPolicy,
    pub ports: Box<[ResolvedPort]>,
    /// Every endpoint, ready or not, deduplicated by address.
    pub endpoints: Box<[EndpointInfo]>,
    /// Why this service is not fully served (e.g. VIP pool exhausted).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub problem: Option<Box<str>>,
}

impl ServiceEntry {
    /// The VIPs and cluster IPs: every address the service answers on.
    pub fn ips(&self) -> impl Iterator<Item = IpAddr> + '_ {
        self.vips().chain(self.cluster_ips.iter().copied())
    }

    /// The VIPs (IPv4, then IPv6).
    pub fn vips(&self) -> impl Iterator<Item = IpAddr> + use<> {
        self.vip.into_iter().chain(self.vip6)
    }

    /// The VIP of `ip`'s family (where datagrams to cluster IP `ip` go).
    pub fn vip_of_family(&self, ip: IpAddr) -> Option<IpAddr> {
        if ip.is_ipv4() { self.vip } else { self.vip6 }
    }

    /// The port with this service port number and protocol.
    pub fn port(&self, port: u16, protocol: Protocol) -> Option<&ResolvedPort> {
        self.ports.iter().find(|p| p.port == port && p.protocol == protocol)
    }

    /// Addresses of ready endpoints (what a headless service resolves to).
    pub fn ready_addresses(&self) -> impl Iterator<Item = IpAddr> + '_ {
        self.endpoints.iter().filter(|e| e.ready).map(|e| e.address)
    }
}

fn is_default<T: Default + PartialEq>(v: &T) -> bool {
    *v == T::default()
}

fn as_millis<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// A service port with the backends it forwards to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ResolvedPort {
    pub name: Arc<str>,
    pub protocol: Protocol,
    pub port: u16,
    pub target_port: TargetPort,
    /// The node port (`spec.ports[].nodePort`) of a `NodePort` or
    /// `LoadBalancer` service; served on the node's own addresses.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node_port: Option<u16>,
    /// Whether the port is proxied per HTTP request (see
    /// [`crate::AppProtocol::classify`]).
    #[serde(skip_serializing_if = "is_default")]
    pub app_protocol: crate::AppProtocol,
    /// Ready backends, in a stable order (sorted by address).
    pub backends: Arc<[Backend]>,
}

/// A concrete place to send a connection.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Backend {
    pub addr: SocketAddr,
    pub node_name: Option<Arc<str>>,
}

/// One endpoint address, for DNS and the admin dump.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EndpointInfo {
    pub address: IpAddr,
    pub ready: bool,
    pub node_name: Option<Arc<str>>,
    pub hostname: Option<Box<str>>,
}

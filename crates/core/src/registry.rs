//! The registry: sole owner of service state.
//!
//! Sources send [`SourceEvent`]s through an [`EventSink`]; the registry task
//! applies them in batches, rebuilds only the services they touch, and
//! publishes a new [`Snapshot`] on a `watch` channel. Per-event work depends
//! on the size of the touched service, never on the number of services.
//! Nodes go straight into the snapshot as [`NodeEntry`]s (name, peer ID,
//! addresses, pod CIDRs): nothing else of a Node object is kept.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;
use tokio::sync::{mpsc, watch};

use crate::node::NodeEntry;
use crate::object::{DestinationRuleObject, Object, ObjectId, ObjectKind, SourceEvent};
use crate::service::{LbStrategy, ServiceKey};
use crate::snapshot::Snapshot;
pub use crate::vip::VipPolicy;
use crate::vip::VipPools;

/// While sources deliver their first full view, a pause this long in their
/// events publishes what was applied (see [`Registry::run`]).
pub const LOADING_PUBLISH_INTERVAL: Duration = Duration::from_millis(200);
/// While sources deliver their first full view, the longest a change waits
/// to be published (see [`Registry::run`]).
pub const LOADING_MAX_DELAY: Duration = Duration::from_secs(5);

/// Settings the registry needs to turn objects into entries. Construct
/// with `..Default::default()` so that new fields do not break callers.
#[derive(Clone, Debug)]
pub struct RegistryConfig {
    /// Where IPv4 service VIPs come from.
    pub vip_cidr: IpNet,
    /// Where IPv6 service VIPs come from; `None`: services get no IPv6 VIP.
    pub vip_cidr6: Option<IpNet>,
    /// Strategy for services without the `edgemesh.io/lb-strategy` annotation.
    pub default_strategy: LbStrategy,
    /// This node's name: endpoints with this `nodeName` are local
    /// ([`Snapshot::serves_endpoint`]). Empty: no endpoint is local.
    pub node_name: String,
    /// Which services get a VIP.
    pub vips: VipPolicy,
}

impl Default for RegistryConfig {
    /// The agent's default VIP range (`127.251.0.0/16`) for every service,
    /// round robin, no node name.
    fn default() -> Self {
        Self {
            vip_cidr: "127.251.0.0/16".parse().expect("valid CIDR"),
            vip_cidr6: None,
            default_strategy: LbStrategy::default(),
            node_name: String::new(),
            vips: VipPolicy::Every,
        }
    }
}

/// Read side of the registry: the latest snapshot and its changes.
pub type RegistryHandle = watch::Receiver<Arc<Snapshot>>;

/// Owns service state; see the module docs.
pub struct Registry {
    config: RegistryConfig,
    state: RegistryState,
    publish: watch::Sender<Arc<Snapshot>>,
    tx: mpsc::Sender<(usize, SourceEvent)>,
    rx: mpsc::Receiver<(usize, SourceEvent)>,
    sources: usize,
    synced_sources: HashSet<usize>,
    /// Changes of the default strategy (a config reload), if followed.
    default_strategy: Option<watch::Receiver<LbStrategy>>,
}

impl Registry {
    pub fn new(config: RegistryConfig) -> Self {
        let (tx, rx) = mpsc::channel(4096);
        let (publish, _) = watch::channel(Arc::new(Snapshot::default()));
        let state = RegistryState::new(&config);
        Self { state, config, publish, tx, rx, sources: 0, synced_sources: HashSet::new(), default_strategy: None }
    }

    /// Follows `strategy` for services without the strategy annotation: a
    /// change rebuilds every service and publishes them in one generation.
    pub fn with_default_strategy(mut self, strategy: watch::Receiver<LbStrategy>) -> Self {
        self.default_strategy = Some(strategy);
        self
    }

    /// Registers a source and returns the sink it sends events to.
    pub fn source(&mut self) -> EventSink {
        self.sources += 1;
        EventSink { source: self.sources - 1, tx: self.tx.clone(), metrics: None }
    }

    /// A receiver of published snapshots.
    pub fn subscribe(&self) -> RegistryHandle {
        self.publish.subscribe()
    }

    pub fn config(&self) -> &RegistryConfig {
        &self.config
    }

    /// Applies events until every source has dropped its sink.
    ///
    /// Once synced, every batch is published at once. Before that (the
    /// initial load; nothing is ready yet) changes are held back until the
    /// sources pause for [`LOADING_PUBLISH_INTERVAL`], or they number at
    /// least half the services held (at least 4,096), or the oldest is
    /// [`LOADING_MAX_DELAY`] old. Each generation costs path copies in the
    /// snapshot's maps and a reconcile in every consumer: published in
    /// batches of fixed size or time, 100,000 services would cost time
    /// quadratic in their number; published in growing batches, linear.
    pub async fn run(mut self) {
        drop(self.tx);
        let mut batch = Vec::with_capacity(BATCH_KEPT);
        // Changes applied but not published yet: how many, since when.
        let mut held = 0usize;
        let mut held_since = tokio::time::Instant::now();
        loop {
            let received = if held == 0 {
                tokio::select! {
                    n = self.rx.recv_many(&mut batch, 4096) => n,
                    strategy = strategy_change(&mut self.default_strategy) => {
                        if self.state.set_default_strategy(strategy) {
                            publish(&mut self.state, &self.publish);
                        }
                        continue;
                    }
                }
            } else {
                let pause = tokio::time::sleep(LOADING_PUBLISH_INTERVAL);
                tokio::select! {
                    n = self.rx.recv_many(&mut batch, 4096) => n,
                    () = pause => {
                        publish(&mut self.state, &self.publish);
                        held = 0;
                        continue;
                    }
                    // Held back with the rest of the initial load.
                    strategy = strategy_change(&mut self.default_strategy) => {
                        self.state.set_default_strategy(strategy);
                        continue;
                    }
                }
            };
            if received == 0 {
                break;
            }
            let mut changed = 0usize;
            for (source, event) in batch.drain(..) {
                let applied = match event {
                    SourceEvent::Synced => self.synced_sources.insert(source),
                    event => self.state.apply(event),
                };
                changed += usize::from(applied);
            }
            let synced = self.synced_sources.len() >= self.sources;
            if synced != self.state.snapshot.synced {
                self.state.snapshot.synced = synced;
            } else if changed == 0 {
                continue;
            } else if !synced {
                if held == 0 {
                    held_since = tokio::time::Instant::now();
                }
                held += changed;
                if held < (self.state.services.len() / 2).max(4096) && held_since.elapsed() < LOADING_MAX_DELAY {
                    continue;
                }
            }
            publish(&mut self.state, &self.publish);
            held = 0;
            // A load burst grows the batch to thousands of events (~200
            // bytes each); the agent then idles for hours.
            batch.shrink_to(BATCH_KEPT);
        }
        if held > 0 {
            publish(&mut self.state, &self.publish);
        }
    }
}

/// The next default strategy from `changes`; never, without one (or once
/// its sender is gone).
async fn strategy_change(changes: &mut Option<watch::Receiver<LbStrategy>>) -> LbStrategy {
    if let Some(rx) = changes
        && rx.changed().await.is_ok()
    {
        return *rx.borrow_and_update();
    }
    std::future::pending().await
}

/// Events the registry's batch keeps room for between bursts.
const BATCH_KEPT: usize = 64;

/// Publishes the state's pending changes as a new generation.
fn publish(state: &mut RegistryState, to: &watch::Sender<Arc<Snapshot>>) {
    to.send_replace(Arc::new(state.take_generation()));
}

/// The mutable state behind the registry, separate from the task so it can
/// be driven synchronously (tests, benchmarks).
pub struct RegistryState {
    default_strategy: LbStrategy,
    vips: VipPools,
    /// In the registry's compact form ([`StoredService`]). Boxed: a table
    /// sized for growth holds a pointer per empty slot, not a whole object.
    services: HashMap<ServiceKey, Box<StoredService>>,
    /// Endpoint objects of each service, sorted by kind and name, in the
    /// registry's compact form ([`StoredSet`]). Almost always one:
    /// a `Vec` costs a few words where a `BTreeMap` allocates a node with
    /// room for eleven (about 2 KiB per service).
    endpoint_sets: HashMap<ServiceKey, EndpointSets>,
    /// Which service each endpoint object belongs to (its label may change);
    /// the key is shared with the object's [`StoredSet`].
    endpoint_owner: HashMap<ObjectId, ServiceKey>,
    /// Services that want a VIP they do not have: the pool was full, or
    /// the cluster IP they ask for was taken.
    awaiting_vip: BTreeSet<ServiceKey>,
    /// Changes since the last published generation.
    pending: BTreeSet<ServiceKey>,
    /// Node, port and type names shared by the entries.
    names: SharedNames,
    /// DestinationRules by the service their host names, then by the
    /// rule's own namespace and name (the first one decides, see
    /// [`RulePolicy`]).
    rules: HashMap<ServiceKey, BTreeMap<(String, String), RulePolicy>>,
    /// The service each DestinationRule names (its host may change).
    rule_target: HashMap<(String, String), ServiceKey>,
    snapshot: Snapshot,
}

impl RegistryState {
    pub fn new(config: &RegistryConfig) -> Self {
        Self {
            default_strategy: config.default_strategy,
            vips: VipPools::new(config.vip_cidr, config.vip_cidr6, config.vips),
            services: HashMap::new(),
            endpoint_sets: HashMap::new(),
            endpoint_owner: HashMap::new(),
            awaiting_vip: BTreeSet::new(),
            pending: BTreeSet::new(),
            names: SharedNames::default(),
            rules: HashMap::new(),
            rule_target: HashMap::new(),
            snapshot: Snapshot::for_node(&config.node_name),
        }
    }

    /// Changes the strategy of services without the annotation; returns
    /// whether it changed (every service is then rebuilt at the next
    /// generation; only those whose entry changes are republished).
    pub fn set_default_strategy(&mut self, strategy: LbStrategy) -> bool {
        if strategy == self.default_strategy {
            return false;
        }
        self.default_strategy = strategy;
        self.pending.extend(self.services.keys().cloned());
        true
    }

    /// Applies one event; returns whether any service or node may have changed.
    pub fn apply(&mut self, event: SourceEvent) -> bool {
        match event {
            SourceEvent::Apply(Object::Service(mut svc)) => {
                retain_data_plane_meta(&mut svc.meta);
                let key = self.shared_key(ServiceKey::new(&svc.meta.namespace, &svc.meta.name));
                let svc = StoredService::new(svc, &mut self.names);
                if self.services.get(&key).is_some_and(|old| **old == svc) {
                    return false;
                }
                self.services.insert(key.clone(), Box::new(svc));
                self.pending.insert(key);
            }
            SourceEvent::Apply(Object::Endpoints(set)) => {
                let owner = self.shared_key(ServiceKey::new(&set.meta.namespace, &set.service_name));
                let set = StoredSet::new(set, &mut self.names);
                let okey = match self.endpoint_owner.get_key_value(&set.key) {
                    // Same object: keep the one key both maps share.
                    Some((held, old_owner)) => {
                        let (held, old_owner) = (held.clone(), old_owner.clone());
                        if old_owner != owner {
                            self.endpoint_owner.insert(held.clone(), owner.clone());
                            self.remove_endpoint_set(&old_owner, &held);
                        }
                        held
                    }
                    None => {
                        self.endpoint_owner.insert(set.key.clone(), owner.clone());
                        set.key.clone()
                    }
                };
                let set = StoredSet { key: okey.clone(), ..set };
                let sets = self.endpoint_sets.entry(owner.clone()).or_default();
                match sets.binary_search_by(|s| s.key.cmp(&okey)) {
                    Ok(i) if sets[i] == set => return false,
                    Ok(i) => sets[i] = set,
                    Err(i) => {
                        // Exact growth: `insert` would make room for four.
                        sets.reserve_exact(1);
                        sets.insert(i, set);
                    }
                }
                self.pending.insert(owner);
            }
            SourceEvent::Apply(Object::Node(node)) => return self.snapshot.set_node(NodeEntry::from(&node)),
            SourceEvent::Apply(Object::DestinationRule(rule)) => return self.apply_rule(rule),
            SourceEvent::Apply(Object::Routing(object)) => return self.snapshot.set_routing(object),
            SourceEvent::Delete(okey) => match okey.kind {
                ObjectKind::Service => {
                    let key = ServiceKey::new(&okey.namespace, &okey.name);
                    if self.services.remove(&key).is_none() {
                        return false;
                    }
                    self.pending.insert(key);
                }
                ObjectKind::EndpointSlice | ObjectKind::Endpoints => {
                    let okey = ObjectId::from(&okey);
                    let Some(owner) = self.endpoint_owner.remove(&okey) else { return false };
                    self.remove_endpoint_set(&owner, &okey);
                }
                ObjectKind::Node => return self.snapshot.remove_node(&okey.name),
                ObjectKind::DestinationRule => return self.remove_rule(&(okey.namespace, okey.name)),
                ObjectKind::Routing(_) => return self.snapshot.remove_routing(&ObjectId::from(&okey)),
            },
            SourceEvent::Synced => return false,
        }
        true
    }

    /// A DestinationRule added or changed: the service it names (and the
    /// one it named before) is rebuilt with its strategy.
    fn apply_rule(&mut self, rule: DestinationRuleObject) -> bool {
        let id = (rule.meta.namespace.clone(), rule.meta.name.clone());
        let target = ServiceKey::new(&rule.service_namespace, &rule.service_name);
        let policy = RulePolicy::of(&rule);
        if self.rule_target.get(&id) == Some(&target)
            && self.rules.get(&target).and_then(|r| r.get(&id)) == Some(&policy)
        {
            return false;
        }
        self.remove_rule(&id);
        self.rules.entry(target.clone()).or_default().insert(id.clone(), policy);
        self.rule_target.insert(id, target.clone());
        self.pending.insert(target);
        true
    }

    /// A DestinationRule gone: its service falls back to its annotation or
    /// the default strategy.
    fn remove_rule(&mut self, id: &(String, String)) -> bool {
        let Some(target) = self.rule_target.remove(id) else { return false };
        if let Some(rules) = self.rules.get_mut(&target) {
            rules.remove(id);
            if rules.is_empty() {
                self.rules.remove(&target);
            }
        }
        self.pending.insert(target);
        true
    }

    /// The key already held for this service, if any, so that every map
    /// (and the snapshot, the VIP pools, the proxy) shares one allocation.
    fn shared_key(&self, key: ServiceKey) -> ServiceKey {
        let held = self.services.get_key_value(&key).map(|(k, _)| k);
        held.or_else(|| self.endpoint_sets.get_key_value(&key).map(|(k, _)| k)).map_or(key, ServiceKey::clone)
    }

    fn remove_endpoint_set(&mut self, owner: &ServiceKey, okey: &ObjectId) {
        if let Some(sets) = self.endpoint_sets.get_mut(owner) {
            if let Ok(i) = sets.binary_search_by(|s| s.key.cmp(okey)) {
                sets.remove(i);
            }
            if sets.is_empty() {
                self.endpoint_sets.remove(owner);
            }
        }
        self.pending.insert(owner.clone());
    }

    /// Rebuilds every pending service and returns the new snapshot.
    pub fn take_generation(&mut self) -> Snapshot {
        self.snapshot.begin_generation();
        let mut released = false;
        for key in std::mem::take(&mut self.pending) {
            released |= self.rebuild(&key);
        }
        if released {
            // Addresses came free: services waiting for one get a chance.
            for key in std::mem::take(&mut self.awaiting_vip) {
                self.rebuild(&key);
            }
        }
        self.snapshot.clone()
    }

    /// The current snapshot (without publishing pending changes).
    pub fn snapshot(&self) -> &Snapshot {
        &self.snapshot
    }

    /// Recomputes one service's entry; returns true if a VIP was released.
    fn rebuild(&mut self, key: &ServiceKey) -> bool {
        let Some(svc) = self.services.get(key) else {
            self.awaiting_vip.remove(key);
            let released = self.vips.release(key);
            self.snapshot.remove(key);
            return released;
        };
        let assigned = self.vips.assign(key, &svc.vip_request());
        if assigned.waiting {
            self.awaiting_vip.insert(key.clone());
        } else {
            self.awaiting_vip.remove(key);
        }
        let released = assigned.released;
        let rule = self.rules.get(key).and_then(|r| r.values().next());
        let policy = Policy::of(key, svc, self.default_strategy, rule);
        let entry = build_entry(key, svc, &assigned, policy, self.endpoint_sets.get(key));
        if self.snapshot.service(key).is_some_and(|old| **old == entry) {
            return released;
        }
        self.snapshot.insert(Arc::new(entry));
        released
    }
}

/// A service's endpoint objects, sorted by key (all in the service's
/// namespace: by kind, then name).
type EndpointSets = Vec<StoredSet>;

/// Annotations the data plane reads: `edgemesh.io/...`.
const DATA_PLANE_ANNOTATIONS: &str = "edgemesh.io/";

/// Drops the metadata nothing downstream reads, before the object is
/// stored and copied into the snapshot: labels (helm and kubectl add several
/// to every service), and annotations other than `edgemesh.io/` ones
/// (`kubectl apply` leaves a copy of the whole object in
/// `kubectl.kubernetes.io/last-applied-configuration`, often larger than
/// everything else the agent keeps for the service).
fn retain_data_plane_meta(meta: &mut crate::object::ObjectMeta) {
    meta.labels = Default::default();
    if meta.annotations.keys().any(|k| !k.starts_with(DATA_PLANE_ANNOTATIONS)) {
        meta.annotations.retain(|k, _| k.starts_with(DATA_PLANE_ANNOTATIONS));
    }
}

mod entry;
mod events;
mod names;
mod stored;
use entry::{Policy, RulePolicy, build_entry};

pub use events::{EventSink, EventStream, RegistryClosed};
use names::SharedNames;
use stored::{StoredService, StoredSet};

#[cfg(test)]
mod node_tests;
#[cfg(test)]
mod tests;

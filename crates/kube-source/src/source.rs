//! The watch loop: one kube-runtime watcher per resource, merged, turned
//! into exactly the Apply/Delete events that changed.
//!
//! kube-runtime does list-then-watch, resumes from the last resourceVersion
//! (bookmarks included), re-lists after `410 Gone`; [`JitteredBackoff`]
//! spaces retries. On every (re-)list this module diffs the listing against
//! what it sent before and deletes what vanished, so nothing deleted during
//! an outage survives the reconnection.

use std::collections::{HashMap, HashSet};
use std::fmt::Debug;
use std::sync::Arc;
use std::time::Duration;

use edgemesh_core::registry::EventSink;
use edgemesh_core::{Object, ObjectKey, ObjectKind, RoutingKind, SourceEvent, SourceHealth};
use futures_util::stream::{BoxStream, StreamExt};
use k8s_openapi::api::core::v1::{Endpoints, Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, DynamicObject, ListParams};
use kube::runtime::watcher::{self, Event};
use kube::runtime::{WatchStreamExt, watcher as watch_stream};
use kube::{Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use tokio_util::sync::CancellationToken;

use crate::backoff::JitteredBackoff;
use crate::client::{ApiEndpoint, observed_client};
use crate::convert;
use crate::error::KubeError;
use crate::health::Link;
use crate::rule::DestinationRule;
use edgemesh_k8s::ConvertError;

/// Settings of the Kubernetes source.
#[derive(Clone, Debug)]
pub struct KubeSourceConfig {
    pub endpoint: ApiEndpoint,
    /// First retry delay after an error; doubles up to `backoff_max`.
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    /// Where the source reports whether it is connected (for `/readyz`).
    pub health: Arc<SourceHealth>,
    /// Also watch the edge gateway's objects ([`crate::routing`]).
    pub routing: bool,
}

impl KubeSourceConfig {
    pub fn new(endpoint: ApiEndpoint) -> Self {
        Self {
            endpoint,
            backoff_min: Duration::from_millis(200),
            backoff_max: Duration::from_secs(30),
            health: SourceHealth::new(),
            routing: false,
        }
    }
}

/// Lists and watches Services, EndpointSlices (or legacy Endpoints) and
/// Nodes, and sends the agent's objects to the registry.
pub struct KubeSource {
    client: Client,
    config: KubeSourceConfig,
    link: Arc<Link>,
}

/// The resources the source follows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Watched {
    Services,
    EndpointSlices,
    Endpoints,
    Nodes,
    /// Optional (a CRD): never part of the first full view.
    DestinationRules,
    /// Optional CRDs, watched for the gateway only.
    Routing(RoutingKind),
}

impl Watched {
    fn name(self) -> &'static str {
        match self {
            Watched::Services => "services",
            Watched::EndpointSlices => "endpointslices",
            Watched::Endpoints => "endpoints",
            Watched::Nodes => "nodes",
            Watched::DestinationRules => "destinationrules",
            Watched::Routing(kind) => crate::routing::plural(kind),
        }
    }
}

/// Back-off of the DestinationRule watch: a cluster without the CRD is
/// asked again slowly, up to every two minutes (also how late rules
/// changed during an outage may apply after it).
const RULES_BACKOFF_MIN: Duration = Duration::from_secs(2);
const RULES_BACKOFF_MAX: Duration = Duration::from_secs(120);

/// One item of the merged streams.
enum Update {
    // Boxed: API objects are large and the variants' sizes differ a lot.
    Service(Box<Event<Service>>),
    Slice(Box<Event<EndpointSlice>>),
    Endpoints(Box<Event<Endpoints>>),
    Node(Box<Event<Node>>),
    Rule(Box<Event<DestinationRule>>),
    Routing(RoutingKind, Box<Event<DynamicObject>>),
    Error(Watched, watcher::Error),
}

impl KubeSource {
    /// Builds the client (no request is made yet).
    pub async fn new(config: KubeSourceConfig) -> Result<Self, KubeError> {
        let (client, link) = observed_client(&config.endpoint, config.health.clone()).await?;
        Ok(Self { client, config, link })
    }

    /// The gateway's TLS Secrets, and the task that watches them through
    /// this source's client (to spawn).
    pub fn tls_secrets(
        &self,
        shutdown: CancellationToken,
    ) -> (crate::secrets::TlsSecrets, impl std::future::Future<Output = ()> + Send + 'static) {
        let secrets = crate::secrets::TlsSecrets::default();
        (secrets.clone(), secrets.run(self.client.clone(), shutdown))
    }

    /// A writer of the gateway's status through this source's client.
    pub fn status_writer(&self) -> crate::status::StatusWriter {
        crate::status::StatusWriter::new(self.client.clone())
    }

    fn backoff(&self) -> JitteredBackoff {
        JitteredBackoff::new(self.config.backoff_min, self.config.backoff_max)
    }

    /// Follows the API until `shutdown` or until the registry is gone. Sends
    /// `Synced` once services, endpoints and nodes have been listed in full.
    pub async fn run(self, sink: EventSink, shutdown: CancellationToken) {
        let slices = tokio::select! {
            s = self.probe_endpoint_slices() => s,
            () = shutdown.cancelled() => return,
        };
        let endpoints = if slices { Watched::EndpointSlices } else { Watched::Endpoints };
        let mut state = State::new(endpoints);
        let mut streams: Vec<BoxStream<'static, Update>> = vec![
            self.stream::<Service>(Watched::Services, Update::Service),
            if slices {
                self.stream::<EndpointSlice>(Watched::EndpointSlices, Update::Slice)
            } else {
                self.stream::<Endpoints>(Watched::Endpoints, Update::Endpoints)
            },
            self.stream::<Node>(Watched::Nodes, Update::Node),
            self.stream_with::<DestinationRule>(
                Watched::DestinationRules,
                Update::Rule,
                JitteredBackoff::new(RULES_BACKOFF_MIN, RULES_BACKOFF_MAX),
            ),
        ];
        if self.config.routing {
            streams.extend(RoutingKind::ALL.into_iter().map(|kind| self.routing_stream(kind)));
        }
        // Whether the API has said it has no DestinationRules (logged once
        // each time that starts), and which routing kinds it has not.
        let mut rules_missing = false;
        let mut routing_missing = HashSet::new();
        let mut merged = futures_util::stream::select_all(streams);
        loop {
            let update = tokio::select! {
                u = merged.next() => match u {
                    Some(u) => u,
                    None => return, // watchers never end on their own
                },
                () = shutdown.cancelled() => return,
            };
            // `410 Gone` only means "list again"; a missing (or forbidden)
            // DestinationRule CRD is no outage either; anything else is.
            match &update {
                // Optional: never an outage of the source (the other watches
                // tell that), so it cannot hold readiness at stale while it
                // backs off.
                Update::Error(Watched::DestinationRules, e)
                    if optional_missing(e) && !std::mem::replace(&mut rules_missing, true) =>
                {
                    tracing::info!(
                        error = %e,
                        "no DestinationRules from the API (networking.istio.io/{}: CRD not installed, or not \
                         allowed by the ClusterRole); services use their annotations and the default strategy; \
                         asking again every few minutes",
                        crate::rule::VERSION
                    );
                }
                Update::Error(Watched::DestinationRules, e) => {
                    tracing::debug!(error = %e, "DestinationRule watch failed; retrying with back-off");
                }
                Update::Error(Watched::Routing(kind), e) if optional_missing(e) && routing_missing.insert(*kind) => {
                    tracing::info!(
                        error = %e,
                        resource = %crate::routing::api_resource(*kind).api_version,
                        kind = kind.kind(),
                        "no gateway objects of this kind from the API (CRD not installed, or not allowed by the \
                         ClusterRole); asking again every few minutes"
                    );
                }
                Update::Error(Watched::Routing(kind), e) => {
                    tracing::debug!(error = %e, kind = kind.label(), "gateway object watch failed; retrying with back-off");
                }
                Update::Error(which, e) if !matches!(e, watcher::Error::WatchError(status) if status.code == 410) => {
                    self.link.failed(which.name(), e);
                }
                Update::Rule(ev) if matches!(**ev, Event::Init) && std::mem::take(&mut rules_missing) => {
                    tracing::info!("DestinationRules are served now; their load balancing applies");
                }
                Update::Routing(kind, ev) if matches!(**ev, Event::Init) && routing_missing.remove(kind) => {
                    tracing::info!(kind = kind.label(), "gateway objects of this kind are served now");
                }
                _ => {}
            }
            let events = state.handle(update);
            for event in events {
                let sent = tokio::select! {
                    r = sink.send(event) => r,
                    () = shutdown.cancelled() => return,
                };
                if sent.is_err() {
                    tracing::debug!("registry stopped; Kubernetes source exits");
                    return;
                }
            }
        }
    }

    /// Whether the API serves `discovery.k8s.io/v1` EndpointSlices (else the
    /// source falls back to v1 Endpoints). Retries with back-off until the
    /// API answers either way.
    async fn probe_endpoint_slices(&self) -> bool {
        let api: Api<EndpointSlice> = Api::all(self.client.clone());
        let mut backoff = self.backoff();
        loop {
            match api.list(&ListParams::default().limit(1)).await {
                Ok(_) => return true,
                Err(kube::Error::Api(status)) if status.code == 404 => {
                    self.link.answered(Watched::EndpointSlices.name());
                    tracing::info!("the API has no discovery.k8s.io/v1 EndpointSlices; using v1 Endpoints");
                    return false;
                }
                Err(e) => {
                    let delay = backoff.next().unwrap_or(self.config.backoff_max);
                    // Warns once per outage (the link); each retry at debug.
                    self.link.failed(Watched::EndpointSlices.name(), &e);
                    tracing::debug!(error = %e, retry_in = ?delay, "Kubernetes API unreachable");
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }

    /// A routing kind's objects, as dynamic objects (see [`crate::routing`]).
    fn routing_stream(&self, kind: RoutingKind) -> BoxStream<'static, Update> {
        let api: Api<DynamicObject> = Api::all_with(self.client.clone(), &crate::routing::api_resource(kind));
        watch_stream(api, watcher::Config::default())
            .backoff(JitteredBackoff::new(RULES_BACKOFF_MIN, RULES_BACKOFF_MAX))
            .map(move |r| match r {
                Ok(event) => Update::Routing(kind, Box::new(event)),
                Err(e) => Update::Error(Watched::Routing(kind), e),
            })
            .boxed()
    }

    fn stream<K>(&self, which: Watched, wrap: fn(Box<Event<K>>) -> Update) -> BoxStream<'static, Update>
    where
        K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + 'static,
    {
        self.stream_with(which, wrap, self.backoff())
    }

    fn stream_with<K>(
        &self,
        which: Watched,
        wrap: fn(Box<Event<K>>) -> Update,
        backoff: JitteredBackoff,
    ) -> BoxStream<'static, Update>
    where
        K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + 'static,
    {
        let api: Api<K> = Api::all(self.client.clone());
        watch_stream(api, watcher::Config::default())
            .backoff(backoff)
            .map(move |r| match r {
                Ok(event) => wrap(Box::new(event)),
                Err(e) => Update::Error(which, e),
            })
            .boxed()
    }
}

/// What the source has sent and is listing, to send only changes.
struct State {
    endpoints: Watched,
    /// Objects sent to the registry, by key (for diffs and no-op updates).
    sent: HashMap<ObjectKey, Object>,
    /// During a (re-)list of a resource: the keys listed so far.
    listing: HashMap<Watched, HashSet<ObjectKey>>,
    /// Resources listed in full at least once.
    listed: HashSet<Watched>,
    synced: bool,
}

impl State {
    fn new(endpoints: Watched) -> Self {
        Self { endpoints, sent: HashMap::new(), listing: HashMap::new(), listed: HashSet::new(), synced: false }
    }

    fn handle(&mut self, update: Update) -> Vec<SourceEvent> {
        let mut out = Vec::new();
        match update {
            Update::Error(which, e) => {
                // The outage is logged once, and published, by the link.
                tracing::debug!(resource = which.name(), error = %e, "Kubernetes watch failed; retrying with back-off");
                return out;
            }
            Update::Service(ev) => self.event(Watched::Services, *ev, &mut out, service_key, |s| {
                if convert::excluded(s) {
                    return Ok(None);
                }
                convert::service(s)
            }),
            Update::Slice(ev) => self.event(Watched::EndpointSlices, *ev, &mut out, slice_key, convert::endpoint_slice),
            Update::Endpoints(ev) => self.event(Watched::Endpoints, *ev, &mut out, endpoints_key, convert::endpoints),
            Update::Node(ev) => self.event(Watched::Nodes, *ev, &mut out, node_key, convert::node),
            Update::Rule(ev) => {
                self.event(Watched::DestinationRules, *ev, &mut out, rule_key, crate::rule::destination_rule)
            }
            Update::Routing(kind, ev) => self.event(
                Watched::Routing(kind),
                *ev,
                &mut out,
                |o| key(ObjectKind::Routing(kind), o),
                |o| crate::routing::routing_object(kind, o),
            ),
        }
        // Nodes are part of the first full view: the tunnel needs them, and
        // a cache replay would otherwise drop cached nodes until they are listed.
        if !self.synced && [Watched::Services, self.endpoints, Watched::Nodes].iter().all(|w| self.listed.contains(w)) {
            self.synced = true;
            let services = self.sent.keys().filter(|k| k.kind == ObjectKind::Service).count();
            let nodes = self.sent.keys().filter(|k| k.kind == ObjectKind::Node).count();
            tracing::info!(
                services,
                nodes,
                objects = self.sent.len(),
                endpoints = self.endpoints.name(),
                "listed services from the Kubernetes API; watching for changes"
            );
            out.push(SourceEvent::Synced);
        }
        out
    }

    /// One watcher event of a resource that becomes objects.
    fn event<K: ResourceExt>(
        &mut self,
        which: Watched,
        ev: Event<K>,
        out: &mut Vec<SourceEvent>,
        key_of: impl Fn(&K) -> ObjectKey,
        convert: impl Fn(&K) -> Result<Option<Object>, ConvertError>,
    ) {
        match ev {
            Event::Init => {
                self.listing.insert(which, HashSet::new());
            }
            Event::InitApply(obj) | Event::Apply(obj) => {
                let key = key_of(&obj);
                if let Some(listing) = self.listing.get_mut(&which) {
                    listing.insert(key.clone());
                }
                match convert(&obj) {
                    Ok(Some(object)) => {
                        if self.sent.get(&key) != Some(&object) {
                            self.sent.insert(key, object.clone());
                            out.push(SourceEvent::Apply(object));
                        }
                    }
                    Ok(None) => {
                        if self.sent.remove(&key).is_some() {
                            out.push(SourceEvent::Delete(key));
                        }
                    }
                    Err(e) => tracing::warn!(
                        error = %e,
                        "ignoring invalid object from the Kubernetes API; its previous version (if any) stays in force"
                    ),
                }
            }
            Event::Delete(obj) => {
                let key = key_of(&obj);
                if self.sent.remove(&key).is_some() {
                    out.push(SourceEvent::Delete(key));
                }
            }
            Event::InitDone => {
                let listed = self.listing.remove(&which).unwrap_or_default();
                let kind = key_kind(which);
                let gone: Vec<ObjectKey> =
                    self.sent.keys().filter(|k| k.kind == kind && !listed.contains(k)).cloned().collect();
                if !gone.is_empty() {
                    tracing::info!(
                        resource = which.name(),
                        deleted = gone.len(),
                        "objects deleted while the watch was down are removed"
                    );
                }
                for key in gone {
                    self.sent.remove(&key);
                    out.push(SourceEvent::Delete(key));
                }
                self.listed.insert(which);
            }
        }
    }
}

fn key_kind(which: Watched) -> ObjectKind {
    match which {
        Watched::EndpointSlices => ObjectKind::EndpointSlice,
        Watched::Endpoints => ObjectKind::Endpoints,
        Watched::Services => ObjectKind::Service,
        Watched::Nodes => ObjectKind::Node,
        Watched::DestinationRules => ObjectKind::DestinationRule,
        Watched::Routing(kind) => ObjectKind::Routing(kind),
    }
}

fn key<K: ResourceExt>(kind: ObjectKind, obj: &K) -> ObjectKey {
    ObjectKey {
        kind,
        namespace: obj.namespace().filter(|n| !n.is_empty()).unwrap_or_else(|| "default".to_owned()),
        name: obj.name_any(),
    }
}

fn service_key(s: &Service) -> ObjectKey {
    key(ObjectKind::Service, s)
}

fn slice_key(s: &EndpointSlice) -> ObjectKey {
    key(ObjectKind::EndpointSlice, s)
}

fn endpoints_key(e: &Endpoints) -> ObjectKey {
    key(ObjectKind::Endpoints, e)
}

fn rule_key(r: &DestinationRule) -> ObjectKey {
    key(ObjectKind::DestinationRule, r)
}

/// Whether a watch error says an optional resource is not there (`404`:
/// no such CRD) or not ours to read (`403`: the ClusterRole lacks it).
fn optional_missing(e: &watcher::Error) -> bool {
    let status = match e {
        watcher::Error::InitialListFailed(kube::Error::Api(s))
        | watcher::Error::WatchStartFailed(kube::Error::Api(s))
        | watcher::Error::WatchFailed(kube::Error::Api(s)) => s.code,
        watcher::Error::WatchError(s) => s.code,
        _ => return false,
    };
    matches!(status, 403 | 404)
}

/// Nodes are cluster-scoped: no namespace.
fn node_key(n: &Node) -> ObjectKey {
    ObjectKey { kind: ObjectKind::Node, namespace: String::new(), name: n.name_any() }
}

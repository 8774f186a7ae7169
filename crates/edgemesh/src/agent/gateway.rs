//! The edge gateway in the agent (`gateway.enabled`; `edgemesh gateway`
//! turns it on): the routing objects of each snapshot compiled into route
//! tables, swapped in whole for the listeners' requests, and the listening
//! ports reconciled against them; the report is what `/gateway` shows.
//!
//! ```text
//! snapshots ─(routing objects or a Service they name changed)─> read + compile
//!     ─> routes (ArcSwap: the listeners' requests read it) ─> reconcile ports ─> report
//! client ─> listener ─> HTTP front ─> GatewayUpstream (route, filters, pick)
//!     ─> the agent's dispatcher with the Service's pool (local or tunnel)
//! ```
//!
//! A change compiles within one snapshot: routes and filters change under
//! open connections (they read the tables per request); only a port that
//! no listener names any more stops, and a new one starts.

use std::collections::HashSet;
use std::sync::Arc;

use arc_swap::ArcSwap;
use edgemesh_core::{Protocol, RegistryHandle, ServiceKey, Snapshot};
use edgemesh_gateway::backend::ServiceRef;
use edgemesh_gateway::listeners::{GatewayListeners, ListenerSettings};
use edgemesh_gateway::metrics::GatewayTlsMetrics;
use edgemesh_gateway::objects::{self, GatewayInputs};
use edgemesh_gateway::report::GatewayReport;
use edgemesh_gateway::{
    CertificatePem, CertificateStore, Compiled, FileCertificates, GatewayUpstream, ServiceLookup, ServicePools,
    compile_objects,
};
use edgemesh_http::{HttpProxy, Upstream};
use edgemesh_kube::secrets::TlsSecrets;
use edgemesh_proxy::pool::Pool;
use edgemesh_proxy::{ProxyStatus, Reach};
use tokio_util::sync::CancellationToken;

use crate::config::Config;

mod status;

/// What `/gateway` reads: the last compile's report.
pub type GatewayReports = Arc<ArcSwap<GatewayReport>>;

/// The gateway, built; [`GatewayTask::run`] serves it.
pub struct GatewayTask {
    class: String,
    cluster_domain: String,
    snapshots: RegistryHandle,
    routes: Arc<ArcSwap<Compiled>>,
    listeners: GatewayListeners,
    /// HTTPS listeners' certificates: `gateway.certificates`, then (with
    /// the Kubernetes source) TLS Secrets.
    certificates: AgentCertificates,
    /// The TLS Secrets' watch, to run with the gateway.
    secrets_task: Option<std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>>,
    report: GatewayReports,
    /// Cancelled when the agent starts draining (SIGTERM): every listener
    /// stops at once, and their connections drain.
    drain: Option<CancellationToken>,
    /// With the Kubernetes source: each object's status to write back.
    status: Option<(
        edgemesh_kube::status::StatusWriter,
        tokio::sync::watch::Sender<std::collections::HashMap<status::StatusKey, serde_json::Value>>,
    )>,
}

impl GatewayTask {
    /// Sends through `dispatcher` (the agent's: its upstream connection
    /// pools and balancing) to the pools `proxy` serves, reached as
    /// `reach` says; counts into `metrics` (`edgemesh_gateway_http_*`,
    /// `edgemesh_gateway_tls_*`).
    pub fn new(
        config: &Config,
        snapshots: RegistryHandle,
        proxy: Arc<ProxyStatus>,
        reach: Reach,
        upstream_mark: Option<u32>,
        dispatcher: Arc<dyn Upstream>,
        metrics: &mut edgemesh_metrics::Registry,
    ) -> Self {
        let routes = Arc::new(ArcSwap::from_pointee(Compiled::default()));
        let pools: Arc<dyn ServicePools> = Arc::new(AgentPools { proxy, reach });
        let upstream = GatewayUpstream::new(routes.clone(), pools.clone(), dispatcher, "http");
        let routes_for_listeners = routes.clone();
        let front = HttpProxy::with_metrics(
            Arc::new(upstream),
            config.http.clone(),
            metrics.sub_registry_with_prefix("gateway"),
        );
        let tls_metrics = GatewayTlsMetrics::register(metrics);
        let settings = ListenerSettings {
            ip: config.gateway.listen_address,
            connect_timeout: config.proxy.connect_timeout,
            upstream_mark,
            // As many as the proxy's (0 there: one per CPU).
            workers: match config.proxy.workers {
                0 => edgemesh_proxy::default_workers(),
                n => n,
            },
        };
        let class = config.gateway.class_name.clone();
        let report = Arc::new(ArcSwap::from_pointee(GatewayReport { class: class.clone(), ..Default::default() }));
        Self {
            class,
            cluster_domain: config.dns.cluster_domain.clone(),
            snapshots,
            routes,
            listeners: GatewayListeners::new(settings, Arc::new(front))
                .with_routes(routes_for_listeners, pools)
                .with_max_connections(config.gateway.max_connections_per_listener)
                .with_metrics(tls_metrics),
            certificates: AgentCertificates {
                files: FileCertificates::new(config.gateway.certificates.iter().cloned()),
                secrets: None,
            },
            secrets_task: None,
            report,
            drain: None,
            status: None,
        }
    }

    /// Also takes certificates from `secrets` (the Kubernetes source's TLS
    /// Secrets), whose watch `task` runs with the gateway.
    pub fn with_tls_secrets(
        mut self,
        secrets: TlsSecrets,
        task: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> Self {
        self.certificates.secrets = Some(secrets);
        self.secrets_task = Some(Box::pin(task));
        self
    }

    /// Writes each Gateway's and HTTPRoute's status back through `writer`
    /// (the Kubernetes source's).
    pub fn with_status_writer(mut self, writer: edgemesh_kube::status::StatusWriter) -> Self {
        self.status = Some((writer, tokio::sync::watch::Sender::new(Default::default())));
        self
    }

    /// Gives TLS passthrough and TCP connections whose route or listener
    /// went `grace()` to end before they are closed (the agent's live
    /// `drainTimeout`, read at each drain).
    pub fn with_drain_timeout(mut self, grace: impl Fn() -> std::time::Duration + Send + Sync + 'static) -> Self {
        self.listeners = self.listeners.with_l4_drain(grace);
        self
    }

    /// Drains when `drain` is cancelled (the agent's drain at SIGTERM, as
    /// the proxy's): every listener closes at once (new connections are
    /// refused), HTTP connections end after their requests in flight, TLS
    /// passthrough and TCP connections get the drain grace (see
    /// [`GatewayTask::with_drain_timeout`]); nothing is bound again until
    /// the process stops.
    pub fn with_drain(mut self, drain: CancellationToken) -> Self {
        self.drain = Some(drain);
        self
    }

    /// The connections the gateway's listeners serve now (what the agent's
    /// drain waits for, with the proxy's).
    pub fn open_connections(&self) -> Arc<std::sync::atomic::AtomicUsize> {
        self.listeners.open_connections()
    }

    /// The reports, for the admin endpoint.
    pub fn reports(&self) -> GatewayReports {
        self.report.clone()
    }

    /// Compiles each snapshot that changes what the gateway serves, until
    /// `shutdown`; then stops every listener (their connections drain).
    pub async fn run(mut self, shutdown: CancellationToken) {
        if let Some((writer, desired)) = &self.status {
            tokio::spawn(status::run(writer.clone(), desired.subscribe(), shutdown.clone()));
        }
        if let Some(task) = self.secrets_task.take() {
            tokio::spawn(task);
        }
        let mut secrets = self.certificates.secrets.as_ref().map(TlsSecrets::changes);
        // A TLS Secret was added, changed or removed since the last compile.
        let mut secrets_moved = false;
        // The generation last looked at: each change is checked once, so
        // Service churn the routes do not name costs nothing after.
        let mut checked_at: Option<u64> = None;
        let mut referenced: HashSet<ServiceKey> = HashSet::new();
        let mut files = self.certificates.files.stamp();
        // When ports could not be bound at the last compile: compiled again
        // every BIND_RETRY until they are (a port freed by another process).
        let mut unbound_since: Option<std::time::Instant> = None;
        let mut poll = tokio::time::interval(CERTIFICATE_POLL);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let drain = self.drain.take().unwrap_or_default();
        loop {
            if drain.is_cancelled() {
                let open = self.listeners.open_connections().load(std::sync::atomic::Ordering::Acquire);
                tracing::info!(
                    connections = open,
                    "gateway draining: listeners closed; established connections may finish"
                );
                self.listeners.reconcile(Default::default()).await;
                shutdown.cancelled().await;
                break;
            }
            let snapshot = self.snapshots.borrow_and_update().clone();
            // A certificate file rewritten (rotated) compiles again.
            let stamp = self.certificates.files.stamp();
            let rotated = std::mem::replace(&mut files, stamp) != stamp || std::mem::take(&mut secrets_moved);
            // Before the first full view, a route's Service may just not be
            // listed yet: wait rather than report it missing.
            if snapshot.synced {
                let retry_binds = unbound_since.is_some_and(|at| at.elapsed() >= BIND_RETRY);
                if rotated || retry_binds || needs_compile(&snapshot, checked_at, &referenced) {
                    let all_bound;
                    (referenced, all_bound) = self.apply(&snapshot).await;
                    unbound_since = (!all_bound).then(std::time::Instant::now);
                }
                checked_at = Some(snapshot.generation);
            }
            tokio::select! {
                changed = self.snapshots.changed() => if changed.is_err() { break },
                _ = poll.tick() => {}
                Ok(()) = next_change(secrets.as_mut()) => secrets_moved = true,
                () = drain.cancelled() => {}
                () = shutdown.cancelled() => break,
            }
        }
        self.listeners.stop();
    }

    /// Compiles `snapshot`'s objects, swaps the tables in, reconciles the
    /// ports; returns the Services the routes name, and whether every port
    /// is bound.
    async fn apply(&mut self, snapshot: &Snapshot) -> (HashSet<ServiceKey>, bool) {
        let inputs = objects::read(snapshot.routing_objects().map(|o| &**o), &self.cluster_domain);
        let lookup = SnapshotServices(snapshot);
        let compiled = compile_objects(&self.class, &inputs.objects(), &lookup, &self.certificates);
        let ports = compiled.ports.clone();
        self.routes.store(Arc::new(compiled));
        let failed = self.listeners.reconcile(ports).await;
        let bound = self.listeners.bound();
        let report =
            GatewayReport::new(&self.class, snapshot.generation, &self.routes.load(), &inputs, &bound, &failed);
        tracing::debug!(
            generation = snapshot.generation,
            ports = report.ports.len(),
            routes = report.routes.len(),
            "gateway compiled"
        );
        if let Some((_, desired)) = &self.status {
            desired.send_replace(status::desired(&report, snapshot));
        }
        self.report.store(Arc::new(report));
        (referenced_services(&inputs), failed.is_empty())
    }
}

/// The next change `changes` sees; never without it.
async fn next_change(
    changes: Option<&mut tokio::sync::watch::Receiver<u64>>,
) -> Result<(), tokio::sync::watch::error::RecvError> {
    match changes {
        Some(changes) => changes.changed().await,
        None => std::future::pending().await,
    }
}

/// How soon a compile that left ports unbound is tried again.
const BIND_RETRY: std::time::Duration = std::time::Duration::from_secs(5);

/// How often `gateway.certificates`' files are checked for a change.
const CERTIFICATE_POLL: std::time::Duration = std::time::Duration::from_secs(1);

/// Whether `snapshot` changed, since generation `checked_at`, what the
/// gateway compiles: its routing objects, or a Service they name.
fn needs_compile(snapshot: &Snapshot, checked_at: Option<u64>, referenced: &HashSet<ServiceKey>) -> bool {
    let Some(at) = checked_at else { return true };
    if snapshot.routing_changed() > at {
        return true;
    }
    match snapshot.changes_since(at) {
        Some(changed) => changed.iter().any(|key| referenced.contains(key)),
        None => true,
    }
}

/// The Services the routes' backendRefs name (a reference without a
/// namespace is in the route's).
fn referenced_services(inputs: &GatewayInputs) -> HashSet<ServiceKey> {
    let mut out = HashSet::new();
    let mut add = |namespace: &str, backend_namespace: &Option<String>, name: &str| {
        out.insert(ServiceKey::new(backend_namespace.as_deref().unwrap_or(namespace), name));
    };
    for route in &inputs.http_routes {
        for backend in route.spec.rules.iter().flat_map(|rule| &rule.backend_refs) {
            add(route.metadata.namespace(), &backend.namespace, &backend.name);
        }
    }
    for route in &inputs.grpc_routes {
        for backend in route.spec.rules.iter().flat_map(|rule| &rule.backend_refs) {
            add(route.metadata.namespace(), &backend.namespace, &backend.name);
        }
    }
    for route in inputs
        .tls_routes
        .iter()
        .map(|r| (&r.metadata, &r.spec.rules))
        .chain(inputs.tcp_routes.iter().map(|r| (&r.metadata, &r.spec.rules)))
    {
        for backend in route.1.iter().flat_map(|rule| &rule.backend_refs) {
            add(route.0.namespace(), &backend.namespace, &backend.name);
        }
    }
    out
}

/// The Services of a snapshot, for the routes' `ResolvedRefs`.
struct SnapshotServices<'a>(&'a Snapshot);

impl ServiceLookup for SnapshotServices<'_> {
    fn check(&self, namespace: &str, name: &str, port: u16) -> Result<(), String> {
        let service = self.0.service(&ServiceKey::new(namespace, name)).ok_or("no such Service")?;
        if service.port(port, Protocol::Tcp).is_some() {
            Ok(())
        } else {
            Err(format!("the Service has no TCP port {port}"))
        }
    }
}

/// HTTPS certificates: the config's files first (they work offline),
/// then the Kubernetes source's TLS Secrets.
struct AgentCertificates {
    files: FileCertificates,
    secrets: Option<TlsSecrets>,
}

impl CertificateStore for AgentCertificates {
    fn certificate(&self, namespace: &str, name: &str) -> Result<CertificatePem, String> {
        match (self.files.certificate(namespace, name), &self.secrets) {
            (Ok(pem), _) => Ok(pem),
            (Err(_), Some(secrets)) => secrets.get(namespace, name).map(|pair| CertificatePem {
                chain: pair.chain,
                key: pair.key,
                ca: pair.ca,
            }),
            (Err(why), None) => Err(why),
        }
    }
}

/// The proxy's pools, for the routes' backends.
struct AgentPools {
    proxy: Arc<ProxyStatus>,
    reach: Reach,
}

impl ServicePools for AgentPools {
    fn pool(&self, service: &ServiceRef) -> Option<(Arc<Pool>, Reach)> {
        let key = ServiceKey::new(&service.namespace, &service.name);
        let pool = self.proxy.pools.pool(&key, service.port, Protocol::Tcp)?;
        Some((pool, self.reach.clone()))
    }

    fn generation(&self) -> Option<u64> {
        Some(self.proxy.pools.generation())
    }
}

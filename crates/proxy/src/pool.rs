//! A listener's view of its service port: what it forwards to
//! ([`Targets`], replaced in place when endpoints change) and what its
//! connections learn ([`Pool`]: balancing, passive health, affinity), plus
//! the rate-limited reporting every listener shares.
//!
//! A pool serves one frontend family: the endpoints of its service port are
//! filtered to the family of its address (see [`Targets::for_port`]).

use std::any::Any;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use arc_swap::ArcSwap;
use edgemesh_core::{
    AppProtocol, Backend, HashKey, HttpPolicy, LbStrategy, ResolvedPort, ServiceEntry, ServiceKey, SessionAffinity,
};

use crate::balance::{self, AFFINITY_CAPACITY, Affinity, Balancer, Health, Lead, Ring};
use crate::error::ProxyError;
use crate::metrics::PortMetrics;

/// What one listener forwards to; replaced in place when endpoints change.
#[derive(Debug)]
pub struct Targets {
    pub strategy: LbStrategy,
    pub hash_key: HashKey,
    /// `sessionAffinity: ClientIP` timeout, if set.
    pub affinity: Option<Duration>,
    /// Idle timeout of UDP sessions.
    pub udp_idle_timeout: Duration,
    /// Whether connections to the port are proxied per HTTP request.
    pub app_protocol: AppProtocol,
    /// The service's HTTP timeouts (annotations).
    pub http: HttpPolicy,
    /// The endpoints in use: those of the frontend's family, after
    /// topology, preferred first.
    pub backends: Arc<[Backend]>,
    /// `backends[..preferred]` are preferred (on this node).
    pub preferred: usize,
    /// The hash ring, for `ConsistentHash` (boxed: most services have none,
    /// and every service port keeps its targets).
    pub ring: Option<Box<Ring>>,
    /// The registry's endpoint list (every family) and topology fields, to
    /// tell changes.
    source: (Arc<[Backend]>, edgemesh_core::InternalTrafficPolicy, Option<edgemesh_core::TrafficDistribution>),
}

impl Targets {
    /// Every endpoint, no topology, no affinity: the plain strategies.
    pub fn new(strategy: LbStrategy, backends: Arc<[Backend]>) -> Self {
        let preferred = backends.len();
        let source = (backends.clone(), Default::default(), None);
        let ring = (strategy == LbStrategy::ConsistentHash).then(|| ring_of(&backends));
        Self {
            strategy,
            hash_key: HashKey::SourceIp,
            affinity: None,
            udp_idle_timeout: edgemesh_core::DEFAULT_UDP_IDLE_TIMEOUT,
            app_protocol: AppProtocol::Tcp,
            http: HttpPolicy::default(),
            backends,
            preferred,
            ring,
            source,
        }
    }

    /// What a service port forwards to when reached on `frontend` (a VIP or
    /// cluster IP), as seen from node `node`: only endpoints of
    /// `frontend`'s family (see [`balance::same_family`]).
    pub fn for_port(entry: &ServiceEntry, port: &ResolvedPort, frontend: IpAddr, node: &str) -> Self {
        let family = balance::same_family(&port.backends, frontend.is_ipv6());
        let (backends, preferred) =
            balance::topology(&family, entry.internal_traffic_policy, entry.traffic_distribution, node);
        let ring = (entry.strategy == LbStrategy::ConsistentHash).then(|| ring_of(&backends));
        if entry.strategy == LbStrategy::LeastRequest && !port.app_protocol.is_http() {
            least_request_on_l4(entry, port.port);
        }
        Self {
            strategy: entry.strategy,
            hash_key: entry.hash_key.clone(),
            affinity: match entry.session_affinity {
                SessionAffinity::None => None,
                SessionAffinity::ClientIp { timeout_seconds } => Some(Duration::from_secs(timeout_seconds.into())),
            },
            udp_idle_timeout: entry.udp_idle_timeout,
            app_protocol: port.app_protocol,
            http: entry.http,
            backends,
            preferred,
            ring,
            source: (port.backends.clone(), entry.internal_traffic_policy, entry.traffic_distribution),
        }
    }

    /// Whether `other` forwards the same way (the ring follows the rest).
    fn same_as(&self, other: &Targets) -> bool {
        self.strategy == other.strategy
            && self.hash_key == other.hash_key
            && self.affinity == other.affinity
            && self.udp_idle_timeout == other.udp_idle_timeout
            && self.app_protocol == other.app_protocol
            && self.http == other.http
            && self.source.1 == other.source.1
            && self.source.2 == other.source.2
            && (Arc::ptr_eq(&self.source.0, &other.source.0) || self.source.0 == other.source.0)
    }
}

/// Says once per process that `LeastRequest` is per request: the L4 path
/// does not count each endpoint's connections, and spreads them round robin.
fn least_request_on_l4(entry: &ServiceEntry, port: u16) {
    static SAID: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    if !SAID.swap(true, Ordering::Relaxed) {
        tracing::info!(
            service = %entry.key,
            port,
            "LeastRequest balances each request on HTTP ports; connections to other ports are spread round robin"
        );
    }
}

fn ring_of(backends: &[Backend]) -> Box<Ring> {
    Box::new(Ring::new(&backends.iter().map(|b| b.addr).collect::<Vec<_>>()))
}

/// A listener's view of its service port, shared with its connections.
#[derive(Debug)]
pub struct Pool {
    pub service: ServiceKey,
    /// The service port.
    pub port: u16,
    /// The VIP:port listened on (with interception, the service's first
    /// address of the pool's family); its family is the pool's.
    pub addr: SocketAddr,
    /// TCP connections open now to the whole service (every port and
    /// family): one counter shared by the service's pools, for
    /// `proxy.maxConnectionsPerService`.
    pub(crate) service_connections: Arc<std::sync::atomic::AtomicUsize>,
    targets: ArcSwap<Targets>,
    balancer: Balancer,
    /// Passive health and session affinity, allocated on first use. A std
    /// mutex: held for a few map operations, never across an await.
    state: Mutex<Option<Box<PoolState>>>,
    pub(crate) warnings: LogLimiter,
    /// Connections closed at `proxy.idleTimeout` or
    /// `proxy.maxConnectionDuration`: logged apart from failures, so that
    /// routine idle closes never hide a failure's warning.
    pub(crate) time_limits: LogLimiter,
    /// The port's series (see `crate::metrics`).
    pub(crate) metrics: PortMetrics,
    /// What the HTTP layer keeps for this port (see [`Pool::extension`]).
    extension: OnceLock<Box<dyn Any + Send + Sync>>,
}

/// What a pool learns from its connections. Most pools never see a failed
/// connect or a `ClientIP` service: unallocated, the two tables cost a
/// pointer instead of ~110 bytes per service port (a megabyte at 10,000).
#[derive(Debug)]
struct PoolState {
    health: Health,
    affinity: Affinity,
}

impl PoolState {
    fn new() -> Box<Self> {
        Box::new(Self { health: Health::default(), affinity: Affinity::new(AFFINITY_CAPACITY) })
    }

    fn is_empty(&self) -> bool {
        self.health.is_empty() && self.affinity.is_empty()
    }
}

impl Pool {
    pub fn new(service: ServiceKey, addr: SocketAddr, targets: Targets) -> Self {
        Self {
            service,
            port: addr.port(),
            addr,
            service_connections: Arc::default(),
            targets: ArcSwap::from_pointee(targets),
            balancer: Balancer::new(),
            state: Mutex::new(None),
            warnings: LogLimiter::default(),
            time_limits: LogLimiter::default(),
            metrics: PortMetrics::detached(),
            extension: OnceLock::new(),
        }
    }

    /// State another layer keeps per service port (the HTTP dispatcher's
    /// pooled connections, load figures and retry budget), made by `make`
    /// on first use and dropped with the pool. `None` if a value of another
    /// type is there already.
    pub fn extension<T: Any + Send + Sync>(&self, make: impl FnOnce() -> T) -> Option<&T> {
        self.extension.get_or_init(|| Box::new(make())).downcast_ref()
    }

    /// The `service` label the port's series carry (the service, or `other`
    /// past `metrics.maxServices`); `None` for a pool made without metrics.
    pub fn service_label(&self) -> Option<Arc<str>> {
        (!self.metrics.service.is_empty()).then(|| self.metrics.service.clone())
    }

    /// The endpoints of `targets` (indices) passive health has ejected now;
    /// one lock, no allocation while none is.
    pub fn ejected(&self, targets: &Targets) -> Vec<usize> {
        let state = lock(&self.state);
        let Some(s) = state.as_ref().filter(|s| !s.health.is_empty()) else { return Vec::new() };
        let now = tokio::time::Instant::now();
        (0..targets.backends.len()).filter(|&i| s.health.is_ejected(&targets.backends[i].addr, now)).collect()
    }

    /// Counts into `metrics` (the port's series) instead of nowhere.
    pub fn with_metrics(mut self, metrics: PortMetrics) -> Self {
        self.metrics = metrics;
        self
    }

    /// Counts its connections in `counter`, which the service's other
    /// pools share (see [`Pool::service_connections`]).
    pub fn with_service_connections(mut self, counter: Arc<std::sync::atomic::AtomicUsize>) -> Self {
        self.service_connections = counter;
        self
    }

    /// Points new connections at `next`; established ones keep theirs.
    /// Returns whether anything changed.
    pub fn update(&self, next: Targets) -> bool {
        let current = self.targets.load();
        if current.same_as(&next) {
            return false;
        }
        {
            let mut state = lock(&self.state);
            if let Some(s) = state.as_mut() {
                if !s.health.is_empty() {
                    s.health.retain(|a| next.backends.iter().any(|b| b.addr == *a));
                }
                if next.affinity.is_none() && !s.affinity.is_empty() {
                    s.affinity = Affinity::new(AFFINITY_CAPACITY);
                }
                if s.is_empty() {
                    *state = None;
                }
            }
        }
        self.targets.store(Arc::new(next));
        true
    }

    pub fn targets(&self) -> Arc<Targets> {
        self.targets.load_full()
    }

    /// The order in which a new connection from `client` tries `targets`'
    /// endpoints; `key` is the consistent-hash key (ignored otherwise).
    pub fn plan(&self, targets: &Targets, client: IpAddr, key: u64) -> Vec<usize> {
        let now = tokio::time::Instant::now();
        let n = targets.backends.len();
        let state = lock(&self.state);
        let sticky = targets.affinity.and_then(|timeout| {
            let addr = state.as_ref()?.affinity.get(client, timeout, now)?;
            targets.backends.iter().position(|b| b.addr == addr)
        });
        let pick = |k: usize| self.balancer.pick(targets.strategy, k);
        let lead = match (&targets.ring, targets.strategy) {
            (Some(ring), LbStrategy::ConsistentHash) => Lead::Hash(ring, key),
            _ => Lead::Spread(&pick),
        };
        match state.as_deref() {
            Some(s) if !s.health.is_empty() => balance::plan(n, targets.preferred, lead, sticky, |i| {
                s.health.is_ejected(&targets.backends[i].addr, now)
            }),
            _ => balance::plan(n, targets.preferred, lead, sticky, |_| false),
        }
    }

    /// `client` reached `backend`: it is healthy, and the client sticks to
    /// it when the service asks for affinity.
    pub fn connected(&self, targets: &Targets, client: IpAddr, backend: SocketAddr) {
        self.record(targets, client, backend, true);
    }

    /// A UDP session of `client` was opened to `backend` on this node: the
    /// client sticks to it when the service asks for affinity. Its health
    /// is unknown until it answers ([`Pool::healthy`]) or refuses
    /// ([`Pool::failed`]): a connected UDP socket proves nothing, and
    /// counting it as a success would clear an ejection each time it
    /// expires, so a dead endpoint would cost a session every
    /// [`balance::EJECT_BASE`] instead of backing off.
    pub fn session_opened(&self, targets: &Targets, client: IpAddr, backend: SocketAddr) {
        self.record(targets, client, backend, false);
    }

    /// One lock for both tables: this runs for every connection.
    fn record(&self, targets: &Targets, client: IpAddr, backend: SocketAddr, reached: bool) {
        let mut state = lock(&self.state);
        if reached
            && let Some(s) = state.as_mut()
            && !s.health.is_empty()
        {
            s.health.success(&backend);
        }
        if let Some(timeout) = targets.affinity {
            let s = state.get_or_insert_with(PoolState::new);
            s.affinity.record(client, backend, timeout, tokio::time::Instant::now());
        }
    }

    /// `backend` answered (a connect, a UDP reply): it is healthy.
    pub fn healthy(&self, backend: &SocketAddr) {
        let mut state = lock(&self.state);
        if let Some(s) = state.as_mut()
            && !s.health.is_empty()
        {
            s.health.success(backend);
        }
    }

    /// A connect to `backend` failed: eject it for a while (a failure while
    /// it is ejected already, from a connection that picked it before,
    /// leaves the ejection as it is and is not counted as another).
    pub fn failed(&self, backend: SocketAddr) {
        let now = tokio::time::Instant::now();
        let (backoff, ejected) = {
            let mut state = lock(&self.state);
            let health = &mut state.get_or_insert_with(PoolState::new).health;
            let ejected = !health.is_ejected(&backend, now);
            (health.failure(backend, now), ejected)
        };
        if ejected {
            self.metrics.ejections.inc();
        }
        tracing::debug!(service = %self.service, endpoint = %backend, ?backoff, "endpoint ejected");
    }

    /// The passive health of each endpoint this pool forwards to, for the
    /// admin endpoint (read-only: one lock, a lookup per endpoint).
    pub fn endpoint_health(&self) -> Vec<crate::pools::EndpointHealth> {
        let targets = self.targets();
        let now = tokio::time::Instant::now();
        let state = lock(&self.state);
        targets
            .backends
            .iter()
            .map(|b| {
                let record = state.as_ref().and_then(|s| s.health.state(&b.addr, now));
                crate::pools::EndpointHealth::new(b, record)
            })
            .collect()
    }

    /// Why `targets` (this pool's) have no endpoint: none at all, or none
    /// of this pool's family while the port has some of the other.
    pub(crate) fn no_backends(&self, targets: &Targets) -> ProxyError {
        let (service, port) = (self.service.clone(), self.port);
        let all = &targets.source.0;
        let ipv6 = self.addr.is_ipv6();
        if !all.is_empty() && all.iter().all(|b| b.addr.is_ipv6() != ipv6) {
            let family = if ipv6 { "IPv6" } else { "IPv4" };
            ProxyError::NoBackendsInFamily { service, port, family }
        } else {
            ProxyError::NoBackends { service, port }
        }
    }

    /// Logs a connection problem at warn, at most once per interval per
    /// listener, and at debug otherwise (always at debug when it is how the
    /// service is meant to behave, see [`ProxyError::is_expected`]).
    pub(crate) fn report(&self, error: &ProxyError) {
        if error.is_expected() {
            tracing::debug!(service = %self.service, listener = %self.addr, kind = error.kind(), "{error}");
        } else if self.warnings.allow() {
            tracing::warn!(service = %self.service, listener = %self.addr, kind = error.kind(), "{error}");
        } else {
            tracing::debug!(service = %self.service, listener = %self.addr, kind = error.kind(), "{error}");
        }
    }
}

/// Locks a mutex, recovering from poisoning: the guarded tables stay
/// consistent after any panic (each operation is a few map updates).
pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

pub(crate) use edgemesh_core::LogLimiter;

#[cfg(test)]
pub(crate) mod tests;

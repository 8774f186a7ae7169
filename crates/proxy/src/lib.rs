//! The intra-node proxy: one listener per service VIP and port; each TCP
//! connection, and each UDP client, forwarded to one ready backend.
//!
//! # Layout
//!
//! - [`balance`]: pure endpoint choice (round robin, random, consistent
//!   hash, ClientIP affinity, topology, passive health) and the order in
//!   which a connection tries endpoints; no I/O, property-tested.
//! - [`pool`]: a listener's view of its service port: its targets (the
//!   endpoints of the listener's address family, after topology), passive
//!   health and affinity, rate-limited reporting.
//! - [`listeners`]: follows registry snapshots through
//!   `Snapshot::changes_since`, binds and closes listening sockets, swaps
//!   targets in place; `listeners::desired` says, without I/O, which
//!   listeners (one per family) a service wants.
//! - `bind`: listening sockets; a TCP service address is a group of
//!   sockets, one per worker (`SO_REUSEPORT`), from its first connection
//!   on (one socket before).
//! - `acceptor`: a task per worker accepting on its socket of every TCP
//!   listener, through an epoll set of its own (no task or I/O
//!   registration per socket).
//! - [`connection`]: accept -> admission (connection limit) -> pick ->
//!   connect with retry on the next endpoint -> forward.
//! - `workers`: the threads connections run on, one single-threaded
//!   runtime each; a connection runs on the worker that accepted it.
//! - [`udp`]: UDP service ports: a session per client address, each with a
//!   connected socket to its endpoint, replies sent from the service
//!   address, idle expiry, a bound on sessions; an endpoint that answers
//!   with ICMP port unreachable is ejected.
//! - [`transparent`]: with interception on, one listener for every
//!   intercepted service address: the original destination
//!   (`SO_ORIGINAL_DST`) picks the service port's pool of that family in
//!   `routes`; TCP VIP listeners are then not bound (nftables redirects
//!   VIPs too). Beside the kernel fast path it serves node ports only, and
//!   the VIP listeners stay ([`Transparent`]).
//! - [`pools`]: which pools serve each service, so that their endpoints'
//!   passive health can be read from outside (the admin endpoint).
//! - [`http`]: the hand-off of connections to HTTP service ports to the
//!   agent's HTTP layer (`edgemesh-http`), which proxies them per request.
//! - [`remote`]: endpoints on other nodes, opened through the tunnel the
//!   agent hands in (the proxy knows nothing of its transport).
//! - [`splice`]: zero-copy forwarding with `splice(2)` through a pipe per
//!   direction, taken from a small pool only while data moves; half-close
//!   passes through; small copy fallback when splice is unavailable.
//! - [`error`]: operator-facing error messages.
//! - [`metrics`]: the Prometheus series per service and port; pools hold
//!   their port's handles, so counting costs a few atomic additions.
//!
//! Modules depend one way: `listeners` -> `acceptor`, `transparent` ->
//! `connection` -> `routes` -> `pool` -> `balance`.
//!
//! # Data flow
//!
//! ```text
//! watch<Snapshot> -> Proxy::run -> listeners::Reconciler -> acceptor (every VIP:port,
//!                                                              |  a socket per worker once used)
//!                    connection::serve (on that worker) <------+
//!                      balance::Balancer::pick, connect (timeout, retry)
//!                      splice::forward (client <-> backend)
//! ```
//!
//! Per-connection state is deliberately small: two sockets, pipes only while
//! bytes are in flight, and a future whose size a test bounds (about 1.5 KiB
//! of resident memory per established connection, measured with
//! `examples/measure.rs`).
#![forbid(unsafe_code)]
#![warn(clippy::unwrap_used)] // outside tests: an error with context, or an `expect` naming the invariant

mod acceptor;
pub mod balance;
mod bind;
pub mod connection;
pub mod error;
pub mod http;
pub mod listeners;
pub mod live;
pub mod metrics;
pub mod pool;
pub mod pools;
pub mod remote;
mod routes;
pub mod splice;
pub mod transparent;
pub mod udp;
pub mod workers;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use edgemesh_core::{LbStrategy, Snapshot};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use connection::L4Dial;
pub use error::ProxyError;
pub use http::{ClientIo, ClientStream, HttpConnection, HttpFuture, HttpServe};
pub use live::LiveSettings;
pub use metrics::ProxyMetrics;
pub use remote::{DatagramRecv, DatagramSend, Reach, Remote, RemoteDatagrams, RemoteFuture, RemoteStream};
pub use transparent::{OriginalDst, SocketOriginalDst, Transparent, TransparentListeners};
pub use workers::default_count as default_workers;

/// File descriptors one proxied connection may hold: two sockets and, while
/// data flows, two pipes (two descriptors each). Idle connections hold two.
pub const FDS_PER_CONNECTION: u64 = 6;

/// Default `proxy.idleTimeout`: an hour, as Envoy's TCP proxy; long
/// enough for quiet but live sessions (SSH, database pools) that send no
/// keepalives of their own.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(3600);

/// Default bound on UDP sessions.
pub const DEFAULT_MAX_UDP_SESSIONS: usize = 4096;

/// Descriptors kept aside for listeners, DNS, admin, logs, etc. when the
/// connection limit is derived from the open-files limit.
const RESERVED_FDS: u64 = 512;

/// Proxy settings: the `proxy` section of the agent's config (keys in
/// camelCase); the fields marked "derived" are not keys but set by the
/// agent from other settings.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct ProxyConfig {
    /// Strategy for services without the `edgemesh.io/lb-strategy`
    /// annotation (the registry writes it into each service's entry).
    pub default_strategy: LbStrategy,
    /// How long to wait for one endpoint to accept before trying the next.
    #[serde(with = "edgemesh_core::duration")]
    pub connect_timeout: Duration,
    /// A forwarded connection that moves no byte either way for this long
    /// is closed (a FIN to both sides), so peers that vanished without a
    /// FIN or reset do not hold descriptors forever. 0: never.
    #[serde(with = "edgemesh_core::duration")]
    pub idle_timeout: Duration,
    /// A forwarded connection open this long is reset, busy or not. 0:
    /// never (the default; long-lived streams are normal).
    #[serde(with = "edgemesh_core::duration")]
    pub max_connection_duration: Duration,
    /// Established (or connecting) connections allowed at once; beyond it,
    /// new connections are reset at once instead of exhausting descriptors.
    /// 0: derived from the open-files limit when the proxy is made.
    pub max_connections: usize,
    /// Connections allowed at once to one service (all its ports); beyond
    /// it, new connections to that service are reset while others are
    /// served. 0: no limit besides `max_connections`.
    pub max_connections_per_service: usize,
    /// UDP sessions allowed at once (each holds one socket); past it, the
    /// oldest idle session of the port is closed for a new client.
    pub max_udp_sessions: usize,
    /// Threads TCP connections run on, each with its own event loop (see
    /// `workers`); 0: one per CPU.
    pub workers: usize,
    /// Derived (`nodeName`): endpoints whose `nodeName` is this one are
    /// local (`internalTrafficPolicy: Local`, `trafficDistribution:
    /// PreferClose`).
    ///
    /// Topology is applied here, in the proxy, rather than in the registry:
    /// the snapshot stays one node-independent description of the services
    /// that every consumer reads the same way (DNS lists every endpoint of a
    /// headless service, a cross-node tunnel needs remote endpoints), and
    /// the proxy, which alone knows endpoint health, needs the local/remote
    /// split anyway for `PreferClose`. It is computed once per endpoint
    /// change (see `balance::topology`), never per connection.
    #[serde(skip)]
    pub node_name: String,
    /// Derived (`intercept.mode`): which TCP connections the transparent
    /// listener (see [`Proxy::bind_transparent`]) serves: none, every
    /// service address (instead of a listener per VIP and port), or node
    /// ports only (beside them).
    #[serde(skip)]
    pub transparent: Transparent,
    /// Derived (`intercept.mark`): mark (`SO_MARK`, needs CAP_NET_ADMIN)
    /// set on upstream connections, so that interception rules let them
    /// pass.
    #[serde(skip)]
    pub upstream_mark: Option<u32>,
}

impl ProxyConfig {
    /// Fills the settings left 0: the connection limit from the process'
    /// current soft open-files limit (the agent raises it first), the
    /// workers one per CPU.
    pub fn resolved(mut self) -> Self {
        if self.max_connections == 0 {
            let open_files = rustix::process::getrlimit(rustix::process::Resource::Nofile).current.unwrap_or(1 << 20);
            self.max_connections = Self::max_connections_for_fd_limit(open_files);
        }
        if self.workers == 0 {
            self.workers = default_workers();
        }
        self
    }

    /// The connection limit that fits in `open_files` descriptors, leaving
    /// some for everything else the agent does.
    pub fn max_connections_for_fd_limit(open_files: u64) -> usize {
        let usable = open_files.saturating_sub(RESERVED_FDS).max(FDS_PER_CONNECTION);
        usize::try_from(usable / FDS_PER_CONNECTION).unwrap_or(usize::MAX)
    }

    /// How many per-service listening sockets fit in `open_files`
    /// descriptors: three quarters of what is left after the reserve, so
    /// that a node with more service ports than descriptors keeps a quarter
    /// for proxied connections, and DNS and the admin endpoint keep theirs
    /// (beyond the budget, listeners wait and are logged once per pass).
    pub fn max_listeners_for_fd_limit(open_files: u64) -> usize {
        let usable = open_files.saturating_sub(RESERVED_FDS);
        usize::try_from(usable / 4 * 3).unwrap_or(usize::MAX)
    }
}

impl Default for ProxyConfig {
    /// Round robin, a 2 s connect timeout, an hour's idle timeout, and the
    /// connection limit and workers derived when the proxy is made.
    fn default() -> Self {
        Self {
            default_strategy: LbStrategy::RoundRobin,
            connect_timeout: Duration::from_secs(2),
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            max_connection_duration: Duration::ZERO,
            max_connections: 0,
            max_connections_per_service: 0,
            max_udp_sessions: DEFAULT_MAX_UDP_SESSIONS,
            workers: 0,
            node_name: String::new(),
            transparent: Transparent::Off,
            upstream_mark: None,
        }
    }
}

/// Live counters. The agent's `/readyz` reads `applied_generation`; the
/// others are for tests and diagnostics (`/metrics` exports the proxy's
/// [`ProxyMetrics`], per service and port, instead).
#[derive(Debug, Default)]
pub struct ProxyStatus {
    /// Generation of the last snapshot whose listeners are reconciled.
    pub applied_generation: AtomicU64,
    /// Service listeners currently bound (a TCP listener is one socket, a
    /// socket per worker once it has had a connection).
    pub listeners: AtomicUsize,
    /// Connections being connected or forwarded.
    pub active_connections: AtomicUsize,
    /// Connections accepted since start (including failed ones).
    pub total_connections: AtomicU64,
    /// Accepted connections that could not be forwarded (no ready endpoint,
    /// every endpoint failed, or over the connection limit).
    pub failed_connections: AtomicU64,
    /// Of the failed connections, those reset because `max_connections` was
    /// reached.
    pub rejected_connections: AtomicU64,
    /// Listeners that could not be bound and are being retried.
    pub bind_failures: AtomicUsize,
    /// UDP sessions open now.
    pub udp_sessions: AtomicUsize,
    /// UDP sessions opened since start.
    pub total_udp_sessions: AtomicU64,
    /// UDP datagrams dropped (no endpoint, session limit, full buffers).
    pub dropped_datagrams: AtomicU64,
    /// Intercepted connections whose original destination was no service
    /// port (reset).
    pub unrouted_connections: AtomicU64,
    /// Each service's pools, to read their endpoints' passive health
    /// ([`pools::PoolIndex::service_health`]).
    pub pools: pools::PoolIndex,
    /// Signalled whenever `applied_generation` moves.
    applied: tokio::sync::Notify,
}

impl ProxyStatus {
    /// Ready once the proxy has applied `generation` (e.g. the first synced
    /// snapshot).
    pub fn has_applied(&self, generation: u64) -> bool {
        self.applied_generation.load(Ordering::Acquire) >= generation
    }

    /// Waits until the proxy has applied `generation` (so that, say,
    /// interception rules for a new service are installed only once the
    /// proxy knows the service).
    pub async fn wait_applied(&self, generation: u64) {
        loop {
            let notified = self.applied.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.has_applied(generation) {
                return;
            }
            notified.await;
        }
    }

    fn set_applied(&self, generation: u64) {
        self.applied_generation.store(generation, Ordering::Release);
        self.applied.notify_waiters();
    }
}

/// The proxy: owns listeners; see the crate docs.
pub struct Proxy {
    config: ProxyConfig,
    status: Arc<ProxyStatus>,
    snapshots: watch::Receiver<Arc<Snapshot>>,
    transparent: Option<TransparentListeners>,
    /// Where intercepted connections were sent (transparent listener only).
    original_dst: Arc<dyn OriginalDst>,
    reach: Reach,
    metrics: Arc<ProxyMetrics>,
    /// The settings a reload changes (see [`live`]).
    live: Arc<LiveSettings>,
    /// Cancelled when the agent starts draining (see [`Proxy::with_drain`]).
    drain: Option<CancellationToken>,
    /// Serves connections to HTTP ports per request (see [`Proxy::with_http`]).
    http: Option<Arc<dyn HttpServe>>,
}

/// How often listeners that failed to bind are retried when no new snapshot
/// arrives.
const BIND_RETRY: Duration = Duration::from_secs(2);

impl Proxy {
    /// A proxy with `config` ([`ProxyConfig::resolved`]).
    pub fn new(config: ProxyConfig, snapshots: watch::Receiver<Arc<Snapshot>>) -> Self {
        let config = config.resolved();
        let (status, original_dst) = (Arc::new(ProxyStatus::default()), Arc::new(SocketOriginalDst));
        let live = Arc::new(LiveSettings::new(&config));
        let metrics = Arc::new(ProxyMetrics::unregistered());
        let reach = Reach::direct();
        Self {
            config,
            status,
            snapshots,
            transparent: None,
            original_dst,
            reach,
            metrics,
            live,
            drain: None,
            http: None,
        }
    }

    /// Registers the proxy's metrics into `registry` (the agent's
    /// `edgemesh_` registry), with at most `max_services` distinct
    /// `service` labels (`metrics.maxServices`).
    pub fn with_metrics(mut self, registry: &mut edgemesh_metrics::Registry, max_services: usize) -> Self {
        self.metrics = Arc::new(ProxyMetrics::register(registry, max_services));
        self
    }

    /// Binds the transparent listener on `port` (all addresses, IPv4 and,
    /// when available, IPv6); call before [`Proxy::run`] with
    /// `config.transparent` set. Returns the bound addresses.
    pub fn bind_transparent(&mut self, port: u16) -> std::io::Result<Vec<std::net::SocketAddr>> {
        let listeners = TransparentListeners::bind(port, self.config.workers.max(1))?;
        let addrs = listeners.local_addrs();
        self.transparent = Some(listeners);
        Ok(addrs)
    }

    /// Sends connections to endpoints on other nodes through `remote` (the
    /// tunnel) instead of dialling them directly, each open allowed `timeout`.
    pub fn with_remote(mut self, remote: Arc<dyn Remote>, timeout: Duration) -> Self {
        self.reach = Reach::through(&self.config.node_name, remote, timeout);
        self
    }

    /// How this proxy reaches endpoints (directly, or other nodes' through
    /// the tunnel), for a component that sends to its pools (the gateway).
    pub fn reach(&self) -> Reach {
        self.reach.clone()
    }

    /// Hands connections to HTTP service ports (`Targets::app_protocol`)
    /// to `http`, which proxies them per request; without it they are
    /// proxied per connection like any port.
    pub fn with_http(mut self, http: Arc<dyn HttpServe>) -> Self {
        self.http = Some(http);
        self
    }

    /// Reads intercepted connections' original destinations through
    /// `lookup` instead of `SO_ORIGINAL_DST`.
    pub fn with_original_dst(mut self, lookup: Arc<dyn OriginalDst>) -> Self {
        self.original_dst = lookup;
        self
    }

    pub fn status(&self) -> Arc<ProxyStatus> {
        self.status.clone()
    }

    /// The settings a config reload may change while the proxy runs.
    pub fn live_settings(&self) -> Arc<LiveSettings> {
        self.live.clone()
    }

    /// Drains when `drain` is cancelled: every listener closes (new
    /// connections are refused, UDP service ports close with their
    /// sessions) while established TCP connections go on until they end or
    /// until the `shutdown` token of [`Proxy::run`] closes them (HTTP
    /// connections are told to end after their requests in flight). Without
    /// it, shutdown does both at once.
    pub fn with_drain(mut self, drain: CancellationToken) -> Self {
        self.drain = Some(drain);
        self
    }

    /// Reconciles listeners against every new snapshot until shutdown;
    /// established connections are left to finish (listener and backend
    /// changes never touch them) and are dropped at shutdown, before this
    /// returns.
    pub async fn run(self, shutdown: CancellationToken) {
        let Proxy { config, status, mut snapshots, transparent, original_dst, reach, metrics, live, drain, http } =
            self;
        let drain = drain.unwrap_or_else(|| shutdown.clone());
        tracing::debug!(?config, "proxy starting");
        let workers = match workers::Workers::start(config.workers) {
            Ok(workers) => workers,
            Err(e) => {
                tracing::error!(error = %e, workers = config.workers, "cannot start the proxy's worker threads");
                return;
            }
        };
        let shared = Arc::new(connection::Shared {
            config,
            live,
            workers,
            status: status.clone(),
            tracker: TaskTracker::new(),
            stop: shutdown.child_token(),
            drain: drain.child_token(),
            routes: routes::Routes::default(),
            reach,
            metrics,
            http,
        });
        // Each worker accepts on its socket of each transparent group.
        let handles = shared.workers.handles();
        let accept_loops: Vec<_> = transparent
            .into_iter()
            .flat_map(|t| t.groups)
            .flat_map(|group| group.into_iter().enumerate())
            .map(|(i, socket)| {
                let accept = transparent::accept_loop(socket, shared.clone(), original_dst.clone());
                handles[i % handles.len()].spawn(accept)
            })
            .collect();
        let mut reconciler = listeners::Reconciler::new(shared.clone());
        let mut registry_open = true;
        loop {
            let snapshot = snapshots.borrow_and_update().clone();
            let since = status.applied_generation.load(Ordering::Acquire);
            reconciler.reconcile(&snapshot, since);
            status.set_applied(snapshot.generation);
            loop {
                let retry = reconciler.has_failed_binds();
                tokio::select! {
                    biased;
                    _ = drain.cancelled() => {
                        for task in &accept_loops {
                            task.abort();
                        }
                        Self::stop(reconciler, &shared, &shutdown).await;
                        return;
                    }
                    changed = snapshots.changed(), if registry_open => {
                        if changed.is_err() {
                            // The registry is gone (agent shutting down): keep
                            // serving the last snapshot until told to stop.
                            registry_open = false;
                            continue;
                        }
                        break;
                    }
                    _ = tokio::time::sleep(BIND_RETRY), if retry => reconciler.retry_failed_binds(),
                }
            }
        }
    }

    /// Closes the listeners, lets connections run until they end or
    /// `shutdown`, then closes what is left and waits for it.
    async fn stop(reconciler: listeners::Reconciler, shared: &connection::Shared, shutdown: &CancellationToken) {
        reconciler.close_all().await;
        shared.tracker.close();
        tokio::select! {
            () = shared.tracker.wait() => {}
            () = shutdown.cancelled() => {}
        }
        shared.stop.cancel();
        shared.tracker.wait().await;
        tracing::debug!("proxy stopped");
    }
}

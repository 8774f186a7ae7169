//! The admin endpoint: health, readiness and a dump of what the agent serves.
//!
//! - `/healthz`: 200 while the process runs.
//! - `/readyz`: 200 once every source has been read in full (or the cached
//!   state replayed) and the proxy has applied that state; 503 with the
//!   reason otherwise. The body says whether the state is live or from the
//!   cache, and how old; and `stale` when the source has lost its API (or
//!   its directory) since (still 200: serving the last known state is the
//!   point of autonomy); and a warning while the cache cannot be written.
//! - `/services`: the current snapshot as JSON, with the state's origin and
//!   the source's connection.
//! - `/services/<namespace>/<name>`: one service, with each endpoint's
//!   passive health in the proxy (failures, ejection); see [`service`].
//! - `/nodes`: the Node objects known (name, peer ID, addresses).
//! - `/peers`: with the tunnel on, this node's peer ID and the connected
//!   agents: node name, peer ID, addresses, direct or relayed, RTT, open
//!   streams.
//! - `/gateway`: with the edge gateway on, its ports and every Gateway's
//!   and route's status conditions (`edgemesh status gateway`).
//! - `/config`: the configuration in force as JSON (after reloads).
//! - `/reload`: the last config reload: when, what triggered it, its
//!   result, its errors, and the settings waiting for a restart.
//! - `/logging`: the log filter in force; `PUT` (or `POST`)
//!   `/logging?level=<filter>` replaces it. Anyone who reaches the endpoint
//!   can do so: it listens on loopback by default and must stay there (or
//!   behind something that authenticates).
//! - `/metrics`: every metric, in the Prometheus text format (OpenMetrics
//!   when the scraper asks for it); see `edgemesh-metrics`.
//! - `/topology`: the known nodes and this node's link to each (see
//!   [`topology`]), for `/ui`.
//! - `/ui`: the live topology page (see [`ui`]).
//!
//! The endpoint runs on a runtime of its own, on its own thread
//! ([`AdminServer::spawn`]): a scrape, a slow client or a big JSON dump
//! never takes a worker from the data path, and a busy data path never
//! starves a health probe.
//!
//! Routes are in [`routes`].

mod logging;
mod reload;
mod routes;
mod service;
mod topology;
mod ui;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use anyhow::Context;
use edgemesh_cache::{CacheStatus, StateReport};
use edgemesh_core::{RegistryHandle, SourceHealth};
use edgemesh_intercept::InterceptStatus;
use edgemesh_metrics::AgentRegistry;
use edgemesh_proxy::ProxyStatus;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::Config;

/// The `admin` section of the agent's config (keys in camelCase).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct AdminConfig {
    /// Address of the admin endpoint (`/healthz`, `/readyz`, `/services`, `/config`).
    pub listen: SocketAddr,
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self { listen: SocketAddr::from(([127, 0, 0, 1], 15020)) }
    }
}

/// What the admin endpoint reads; it owns none of it.
#[derive(Clone)]
pub struct AdminState {
    pub config: Arc<Config>,
    pub snapshots: RegistryHandle,
    pub proxy: Arc<ProxyStatus>,
    /// The nftables interceptor (or the eBPF fast path's map writer), when
    /// interception is on.
    pub intercept: Option<Arc<InterceptStatus>>,
    /// Why `intercept.mode: ebpf` runs nftables mode instead
    /// (`intercept.fallback: nftables`), shown in `/readyz`.
    pub intercept_fallback: Option<String>,
    /// Whether the state is live or from the persistent cache.
    pub cache: Arc<CacheStatus>,
    /// Whether the source is connected, when it reports it.
    pub source: Option<Arc<SourceHealth>>,
    /// The cross-node tunnel, when enabled.
    pub tunnel: Option<edgemesh_tunnel::Tunnel>,
    /// The edge gateway's last compile, when it runs (`gateway.enabled`).
    pub gateway: Option<crate::agent::GatewayReports>,
    /// Every component's metrics (registered during `Agent::build`).
    pub metrics: Arc<AgentRegistry>,
    /// The config in force (`config` is the one the agent started with),
    /// the reload status and the log filter.
    pub lifecycle: Arc<crate::lifecycle::Lifecycle>,
}

impl AdminState {
    /// The state's origin, age and the source's connection.
    pub fn state_report(&self) -> StateReport {
        let report = self.cache.report();
        match &self.source {
            Some(source) => report.with_source(source.report()),
            None => report,
        }
    }

    /// `None` when ready, else why not.
    pub fn not_ready_reason(&self) -> Option<String> {
        let snap = self.snapshots.borrow();
        if !snap.synced {
            let why = "waiting for the first full read of the service source";
            // Say why the source has not answered, when it knows.
            return Some(match self.source.as_ref().and_then(|s| s.report().describe_outage()) {
                Some(outage) => format!("{why} ({outage})"),
                None => why.into(),
            });
        }
        let applied = self.proxy.applied_generation.load(Ordering::Acquire);
        if applied < snap.generation {
            return Some(format!("proxy has applied generation {applied} of {}", snap.generation));
        }
        if let Some(intercept) = &self.intercept {
            let applied = intercept.applied_generation.load(Ordering::Acquire);
            if applied < snap.generation {
                let failures = intercept.failures.load(Ordering::Relaxed);
                return Some(format!(
                    "nftables table has generation {applied} of {} ({failures} failed transactions; see the log)",
                    snap.generation
                ));
            }
        }
        None
    }
}

pub struct AdminServer {
    /// Bound on the agent's runtime, served on the admin runtime: a std
    /// listener, registered with a reactor only once it is there.
    listener: std::net::TcpListener,
    state: AdminState,
}

impl AdminServer {
    pub fn bind(addr: SocketAddr, state: AdminState) -> std::io::Result<Self> {
        let listener = std::net::TcpListener::bind(addr)?;
        listener.set_nonblocking(true)?;
        Ok(Self { listener, state })
    }

    /// The bound address (the port the kernel picked for port 0).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves on a single-threaded runtime on a thread of its own until
    /// `shutdown`. The returned future (for the agent's runtime) resolves
    /// when the endpoint has stopped; the thread handle lets the agent wait
    /// for it in real time (its port is free once the thread has ended),
    /// whatever its own runtime's clock says.
    pub fn spawn(
        self,
        shutdown: CancellationToken,
    ) -> anyhow::Result<(impl Future<Output = anyhow::Result<()>> + Send + 'static, std::thread::JoinHandle<()>)> {
        let (done_tx, done) = tokio::sync::oneshot::channel();
        let thread = std::thread::Builder::new()
            .name("edgemesh-admin".into())
            .spawn(move || {
                let served = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .context("cannot build the admin endpoint's runtime")
                    .and_then(|runtime| runtime.block_on(self.run(shutdown)));
                let _ = done_tx.send(served);
            })
            .context("cannot start the admin endpoint's thread")?;
        let ended = async move { done.await.context("the admin endpoint's thread ended without a result")? };
        Ok((ended, thread))
    }

    async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let listener = TcpListener::from_std(self.listener).context("cannot register the admin listener")?;
        loop {
            let (stream, _) = tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                accepted = listener.accept() => match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::warn!(error = %e, "admin accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let state = self.state.clone();
            let shutdown = shutdown.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req| {
                    let state = state.clone();
                    async move { Ok::<_, Infallible>(routes::route(&state, req)) }
                });
                let conn = http1::Builder::new().serve_connection(TokioIo::new(stream), svc);
                tokio::select! {
                    _ = shutdown.cancelled() => {}
                    res = conn => if let Err(e) = res { tracing::debug!(error = %e, "admin connection ended") },
                }
            });
        }
    }
}

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
//! - `/nodes`: the Node objects known (name, peer ID, addresses).
//! - `/peers`: with the tunnel on, this node's peer ID and the connected
//!   agents: node name, peer ID, addresses, direct or relayed, RTT, open
//!   streams.
//! - `/config`: the effective configuration as JSON.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use edgemesh_cache::{CacheStatus, StateReport};
use edgemesh_core::{NodeEntry, RegistryHandle, ServiceEntry, SourceHealth};
use edgemesh_intercept::InterceptStatus;
use edgemesh_proxy::ProxyStatus;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::CONTENT_TYPE;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
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
    /// The nftables interceptor, when interception is on.
    pub intercept: Option<Arc<InterceptStatus>>,
    /// Whether the state is live or from the persistent cache.
    pub cache: Arc<CacheStatus>,
    /// Whether the source is connected, when it reports it.
    pub source: Option<Arc<SourceHealth>>,
    /// The cross-node tunnel, when enabled.
    pub tunnel: Option<edgemesh_tunnel::Tunnel>,
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
    listener: TcpListener,
    state: AdminState,
}

impl AdminServer {
    pub async fn bind(addr: SocketAddr, state: AdminState) -> std::io::Result<Self> {
        let listener = TcpListener::bind(addr).await?;
        Ok(Self { listener, state })
    }

    /// The bound address (the port the kernel picked for port 0).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    pub async fn run(self, shutdown: CancellationToken) {
        loop {
            let (stream, _) = tokio::select! {
                _ = shutdown.cancelled() => return,
                accepted = self.listener.accept() => match accepted {
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
                    async move { Ok::<_, Infallible>(route(&state, req)) }
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

#[derive(Serialize)]
struct ServicesDump<'a> {
    /// Live or from cache, and how old.
    state: StateReport,
    generation: u64,
    synced: bool,
    count: usize,
    services: Vec<&'a ServiceEntry>,
}

#[derive(Serialize)]
struct NodesDump<'a> {
    generation: u64,
    nodes: Vec<&'a NodeEntry>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct PeersDump {
    /// This node's own peer ID.
    peer_id: String,
    peers: Vec<edgemesh_tunnel::PeerStatus>,
}

fn route(state: &AdminState, req: Request<Incoming>) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "only GET\n");
    }
    match req.uri().path() {
        "/healthz" => text(StatusCode::OK, "ok\n"),
        "/readyz" => match state.not_ready_reason() {
            None => text(StatusCode::OK, &format!("ready ({})\n", state.state_report().describe())),
            Some(why) => text(StatusCode::SERVICE_UNAVAILABLE, &format!("not ready: {why}\n")),
        },
        "/services" => {
            let snap = state.snapshots.borrow().clone();
            let dump = ServicesDump {
                state: state.state_report(),
                generation: snap.generation,
                synced: snap.synced,
                count: snap.len(),
                services: snap.services().map(|s| &**s).collect(),
            };
            json(&dump)
        }
        "/nodes" => {
            let snap = state.snapshots.borrow().clone();
            json(&NodesDump { generation: snap.generation, nodes: snap.nodes().map(|n| &**n).collect() })
        }
        "/peers" => match &state.tunnel {
            Some(tunnel) => json(&PeersDump { peer_id: tunnel.peer_id().to_string(), peers: tunnel.peers() }),
            None => text(StatusCode::NOT_FOUND, "the tunnel is off (tunnel.enabled)\n"),
        },
        "/config" => json(&*state.config),
        _ => text(StatusCode::NOT_FOUND, "not found; try /healthz, /readyz, /services, /nodes, /peers, /config\n"),
    }
}

fn text(status: StatusCode, body: &str) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body.to_owned())));
    *resp.status_mut() = status;
    resp.headers_mut().insert(CONTENT_TYPE, "text/plain; charset=utf-8".parse().expect("static header"));
    resp
}

fn json<T: Serialize>(value: &T) -> Response<Full<Bytes>> {
    match serde_json::to_vec_pretty(value) {
        Ok(mut body) => {
            body.push(b'\n');
            let mut resp = Response::new(Full::new(Bytes::from(body)));
            resp.headers_mut().insert(CONTENT_TYPE, "application/json".parse().expect("static header"));
            resp
        }
        Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, &format!("cannot encode JSON: {e}\n")),
    }
}

//! The gateway's listening sockets, reconciled against the compiled
//! objects: a port a served listener names is bound once and kept while
//! any listener names it (route and filter changes only swap the tables
//! its requests read, so no connection notices); a port no listener names
//! any more stops accepting and its connections drain (HTTP: after their
//! requests in flight; TLS passthrough and TCP: see [`crate::l4`], as for
//! connections whose route went: a grace, then closed).
//!
//! A port that cannot be bound (in use, or privileged without
//! `CAP_NET_BIND_SERVICE`) is reported with the reason, for the listener's
//! `Programmed` condition, and tried again at the next reconcile (the agent
//! reconciles every few seconds while a port is unbound); the warning is
//! logged when a port's reason changes, not at every try.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use edgemesh_proxy::HttpServe;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::compile::ObjectRef;
use crate::l4::L4Connections;
use crate::metrics::{GatewayTlsMetrics, PortTls};

/// The default grace of L4 connections whose route went: the agent's
/// default `drainTimeout`.
pub const DEFAULT_L4_DRAIN: Duration = Duration::from_secs(20);
use crate::serve::{GatewayRouting, ListenerContext, listener_pool, serve_gateway_listener};
use crate::{Compiled, ServicePools};

/// Settings every listener's connections share.
#[derive(Clone, Debug)]
pub struct ListenerSettings {
    /// Where listeners bind (`gateway.listenAddress`).
    pub ip: IpAddr,
    pub connect_timeout: Duration,
    pub upstream_mark: Option<u32>,
    /// Worker threads the connections run on ([`crate::workers`]; the
    /// agent's `proxy.workers`); 0: the runtime that accepts them.
    pub workers: usize,
}

struct Running {
    addr: SocketAddr,
    /// Its connections now (with routing).
    connections: Option<Arc<std::sync::atomic::AtomicUsize>>,
    drain: CancellationToken,
    /// The accept loop; it owns the socket.
    accept: tokio::task::JoinHandle<()>,
    /// Its TLS handshakes' series (with routing), removed with it.
    tls_metrics: Option<Arc<PortTls>>,
    /// Its open L4 connections (with routing), drained when their route goes.
    l4: Option<Arc<L4Connections>>,
}

/// The compiled objects and the Services' pools.
type Routing = (Arc<ArcSwap<Compiled>>, Arc<dyn ServicePools>);

/// The bound ports.
pub struct GatewayListeners {
    settings: ListenerSettings,
    front: Arc<dyn HttpServe>,
    /// The compiled objects and the Services' pools, for HTTPS, TLS
    /// passthrough and TCP listeners; None: every port is served as HTTP.
    routing: Option<Routing>,
    handshake_timeout: Duration,
    max_connections: usize,
    tls_metrics: GatewayTlsMetrics,
    /// The grace of L4 connections whose route went, read at each drain.
    l4_drain: Arc<dyn Fn() -> Duration + Send + Sync>,
    /// Connections of every port open now (with routing).
    all_connections: Arc<std::sync::atomic::AtomicUsize>,
    running: BTreeMap<u16, Running>,
    /// Ports that could not be bound at the last try, with why.
    failing: BTreeMap<u16, String>,
}

impl GatewayListeners {
    /// Listeners whose connections `front` serves (the agent's HTTP front
    /// over a [`crate::GatewayUpstream`]).
    pub fn new(settings: ListenerSettings, front: Arc<dyn HttpServe>) -> Self {
        Self {
            settings,
            front,
            routing: None,
            handshake_timeout: crate::tls::HANDSHAKE_TIMEOUT,
            max_connections: 0,
            tls_metrics: GatewayTlsMetrics::unregistered(),
            l4_drain: Arc::new(|| DEFAULT_L4_DRAIN),
            all_connections: Arc::default(),
            running: BTreeMap::new(),
            failing: BTreeMap::new(),
        }
    }

    /// Serves each port by its protocol in the current `routes` (the ones
    /// the front's [`crate::GatewayUpstream`] reads): HTTP, HTTPS (TLS
    /// terminated with the certificates compiled in), TLS passthrough and
    /// TCP (forwarded to `pools`' Services at L4). Without this, every
    /// port is served as HTTP.
    pub fn with_routes(mut self, routes: Arc<ArcSwap<Compiled>>, pools: Arc<dyn ServicePools>) -> Self {
        self.routing = Some((routes, pools));
        self
    }

    /// How long a client of a TLS listener (HTTPS or passthrough) may take
    /// to complete its handshake or send its ClientHello before it is
    /// dropped (default [`crate::tls::HANDSHAKE_TIMEOUT`]); for listeners
    /// bound from now on.
    pub fn with_handshake_timeout(mut self, timeout: Duration) -> Self {
        self.handshake_timeout = timeout;
        self
    }

    /// At most `max` connections at once per listening port, of any
    /// protocol (TLS handshakes in progress and L4 connections included);
    /// one more is reset. 0 (the default): no bound of its own (HTTP and
    /// HTTPS connections still count against the front's). For listeners
    /// bound from now on; needs [`GatewayListeners::with_routes`].
    pub fn with_max_connections(mut self, max: usize) -> Self {
        self.max_connections = max;
        self
    }

    /// Counts HTTPS listeners' TLS handshakes into `metrics` (the
    /// registered [`GatewayTlsMetrics`]); for listeners bound from now on.
    pub fn with_metrics(mut self, metrics: GatewayTlsMetrics) -> Self {
        self.tls_metrics = metrics;
        self
    }

    /// How long an L4 connection (TLS passthrough, TCP) whose route went
    /// may go on before it is closed (see [`crate::l4`]): `grace()` at each
    /// drain (the agent's live `drainTimeout`); default [`DEFAULT_L4_DRAIN`].
    pub fn with_l4_drain(mut self, grace: impl Fn() -> Duration + Send + Sync + 'static) -> Self {
        self.l4_drain = Arc::new(grace);
        self
    }

    /// Binds every port of `ports` (port -> its Gateway) not bound yet and
    /// stops those no longer in it (their sockets are closed when this
    /// returns); returns the ports that could not be bound, with why. Runs
    /// on the tokio runtime that serves.
    /// `ports` is owned: a caller holding the compiled objects' guard across
    /// this await would keep an old generation alive.
    pub async fn reconcile(&mut self, ports: BTreeMap<u16, ObjectRef>) -> BTreeMap<u16, String> {
        self.drain_l4(&ports);
        let gone: Vec<u16> = self.running.keys().filter(|p| !ports.contains_key(p)).copied().collect();
        for port in gone {
            if let Some(running) = self.running.remove(&port) {
                running.drain.cancel();
                // The accept loop returns at once when drained; its end closes the socket.
                let _ = running.accept.await;
                if let Some(metrics) = &running.tls_metrics {
                    metrics.remove();
                }
                tracing::info!(port, "gateway listener stopped: no listener names its port any more");
            }
        }
        let mut failed = BTreeMap::new();
        for (port, gateway) in &ports {
            if self.running.contains_key(port) {
                continue;
            }
            match self.bind(*port, gateway) {
                Ok(running) => {
                    tracing::info!(port, addr = %running.addr, %gateway, "gateway listener serving");
                    self.running.insert(*port, running);
                }
                Err(why) => {
                    if self.failing.get(port) != Some(&why) {
                        tracing::warn!(port, %gateway, error = %why, "gateway listener cannot bind; retried");
                    }
                    failed.insert(*port, why);
                }
            }
        }
        self.failing.clone_from(&failed);
        failed
    }

    /// Starts the drain of the L4 connections whose route the current
    /// compile no longer has (every one of a port not in `ports`).
    fn drain_l4(&self, ports: &BTreeMap<u16, ObjectRef>) {
        let Some((routes, _)) = &self.routing else { return };
        let compiled = routes.load();
        let mut grace = None;
        for (port, running) in &self.running {
            let Some(l4) = running.l4.as_ref().filter(|l4| !l4.is_empty()) else { continue };
            let grace = *grace.get_or_insert_with(|| (self.l4_drain)());
            let table = if ports.contains_key(port) { compiled.l4.get(port) } else { None };
            l4.sweep(table, grace);
        }
    }

    fn bind(&self, port: u16, gateway: &ObjectRef) -> Result<Running, String> {
        let addr = SocketAddr::new(self.settings.ip, port);
        let std = std::net::TcpListener::bind(addr).map_err(|e| match e.kind() {
            std::io::ErrorKind::PermissionDenied => {
                format!("bind {addr}: {e} (ports below 1024 need CAP_NET_BIND_SERVICE)")
            }
            _ => format!("bind {addr}: {e}"),
        })?;
        std.set_nonblocking(true).map_err(|e| format!("{addr}: {e}"))?;
        let listener = TcpListener::from_std(std).map_err(|e| format!("{addr}: {e}"))?;
        let drain = CancellationToken::new();
        let ctx = ListenerContext {
            pool: listener_pool(gateway, self.settings.ip, port),
            connect_timeout: self.settings.connect_timeout,
            upstream_mark: self.settings.upstream_mark,
            drain: drain.clone(),
            workers: if self.settings.workers == 0 { &[] } else { crate::workers::workers(self.settings.workers) },
        };
        let connections: Arc<std::sync::atomic::AtomicUsize> = Arc::default();
        let tls_metrics =
            Arc::new(PortTls::new(self.tls_metrics.clone(), format!("{}/{}:{port}", gateway.namespace, gateway.name)));
        let l4 = Arc::new(L4Connections::new(port));
        let routing = match &self.routing {
            None => None,
            Some((routes, pools)) => Some(GatewayRouting {
                routes: routes.clone(),
                pools: pools.clone(),
                tls: crate::tls::server_config(routes.clone(), port)?,
                handshake_timeout: self.handshake_timeout,
                max_connections: self.max_connections,
                connections: connections.clone(),
                all_connections: self.all_connections.clone(),
                tls_metrics: tls_metrics.clone(),
                l4: l4.clone(),
            }),
        };
        let connections = routing.is_some().then_some(connections);
        let tls_metrics = routing.is_some().then_some(tls_metrics);
        let l4 = routing.is_some().then_some(l4);
        let accept = tokio::spawn(serve_gateway_listener(listener, self.front.clone(), ctx, routing));
        Ok(Running { addr, connections, drain, accept, tls_metrics, l4 })
    }

    /// The bound ports, and where.
    pub fn bound(&self) -> BTreeMap<u16, SocketAddr> {
        self.running.iter().map(|(port, r)| (*port, r.addr)).collect()
    }

    /// The connections each port serves now (ports bound with routing:
    /// see [`GatewayListeners::with_routes`]).
    pub fn connections(&self) -> BTreeMap<u16, usize> {
        self.running
            .iter()
            .filter_map(|(port, r)| Some((*port, r.connections.as_ref()?.load(std::sync::atomic::Ordering::Relaxed))))
            .collect()
    }

    /// The connections every port serves now, stopped ports' included
    /// (with routing): what a drain waits for.
    pub fn open_connections(&self) -> Arc<std::sync::atomic::AtomicUsize> {
        self.all_connections.clone()
    }

    /// Stops every listener; their connections drain.
    pub fn stop(&mut self) {
        for running in self.running.values() {
            running.drain.cancel();
        }
        self.running.clear();
    }
}

impl Drop for GatewayListeners {
    fn drop(&mut self) {
        self.stop();
    }
}

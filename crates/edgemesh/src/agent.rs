//! The agent: [`Agent::build`] binds every socket and sets every component
//! up, so that a taken port or a bad setting is a start-up error rather
//! than a half-running agent; [`Agent::run`] then runs the components until
//! told to stop or until one of them fails, and drains them.
//!
//! ```text
//! manifests dir -> ManifestSource ┐
//! Kubernetes API -> KubeSource ───┴> cache relay -> Registry -> snapshots -> DnsServer
//!                                      (state-dir)                        -> Proxy -> Remote (other nodes:
//!                                                                              the tunnel, or Deps::remote)
//!                                                                         -> Tunnel (node bindings,
//!                                                                              endpoints it serves)
//!                                                                         -> Interceptor (node mode:
//!                                                                            nftables table (node ports
//!                                                                            only in mode ebpf), VIP device)
//!                                                                         -> FastPathTask (mode ebpf:
//!                                                                            the BPF maps)
//!                                                                         -> SocksServer (SOCKS5 entry:
//!                                                                              hosts, services)
//!                                                                         -> GatewayTask (gateway.enabled:
//!                                                                              routes, listeners)
//!                                                                         -> AdminServer
//! ```

mod deps;
mod fastpath;
mod gateway;
mod interception;

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use edgemesh_cache::CacheStatus;
use edgemesh_core::metrics::SourceMetrics;
use edgemesh_core::{
    EventSink, EventStream, Registry, RegistryConfig, RegistryHandle, Snapshot, SourceHealth, VipPolicy,
};
use edgemesh_dns::DnsServer;
use edgemesh_http::{HttpProxy, Upstream};
use edgemesh_intercept::Interceptor;
use edgemesh_kube::{KubeSource, KubeSourceConfig};
use edgemesh_manifests::ManifestSource;
use edgemesh_metrics::AgentRegistry;
use edgemesh_proxy::{Proxy, ProxyConfig};
use edgemesh_socks::{NodeHosts, SocksEnv, SocksServer};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

pub use self::deps::Deps;
pub use self::gateway::GatewayReports;
use crate::admin::{AdminServer, AdminState};
use crate::config::{Config, SourceKind};
use crate::host::Host;
use crate::lifecycle::drain::{self, DrainEnd};
use crate::lifecycle::reload::{self, Reloader};
use crate::lifecycle::{Lifecycle, LogControl, ReloadSource};
use crate::limits;

/// How long components get to stop once told to (after the drain, see
/// [`crate::lifecycle::drain`]), and node mode's table and device to go.
pub const DRAIN_DEADLINE: Duration = Duration::from_secs(5);

/// An agent whose sockets are bound and components set up, not yet running.
pub struct Agent {
    config: Arc<Config>,
    registry: Registry,
    snapshots: RegistryHandle,
    /// Source -> cache relay -> registry.
    source: Source,
    source_sink: EventSink,
    upstream: EventStream,
    registry_sink: EventSink,
    cache: Arc<CacheStatus>,
    dns: DnsServer,
    proxy: Proxy,
    admin: AdminServer,
    admin_addr: SocketAddr,
    /// The SOCKS5 entry (`socks.enabled`).
    socks: Option<SocksServer>,
    tunnel: Option<tokio::task::JoinHandle<()>>,
    /// Node mode's table and device, from their creation until `run` hands
    /// them to their task.
    interceptor: Option<Interceptor>,
    /// Mode `ebpf`: the kernel fast path's map writer.
    fast_path: Option<fastpath::FastPathTask>,
    /// The edge gateway (`gateway.enabled`).
    gateway: Option<gateway::GatewayTask>,
    /// Cancelled to stop every component (the tunnel's swarm task has it
    /// from the start).
    shutdown: CancellationToken,
    /// The config in force, reload status and log filter.
    lifecycle: Arc<Lifecycle>,
    /// The settings of the proxy and DNS that reloads change.
    live: reload::Components,
    host: Arc<dyn Host>,
    /// Where reloads read the config from; `None`: no reloads.
    reload: Option<ReloadSource>,
}

enum Source {
    Manifests(ManifestSource),
    Kube(KubeSource),
}

impl Agent {
    /// Completes and validates `config` (see [`Config::complete`]), binds
    /// every socket and sets up every component. Nothing serves until
    /// [`Agent::run`]. A failure after node mode's table and device were
    /// made removes them again; an agent dropped without running leaves
    /// them (the next start replaces them).
    pub async fn build(mut config: Config, deps: Deps) -> anyhow::Result<Agent> {
        config.complete(&*deps.host);
        config.validate()?;
        let mut interceptor = None;
        let built = Self::build_with(config, deps, &mut interceptor).await;
        if built.is_err()
            && let Some(interceptor) = interceptor
            && let Err(error) = interceptor.remove().await
        {
            tracing::warn!(%error, "cannot remove the nftables table or the VIP device after a failed start");
        }
        built
    }

    async fn build_with(
        mut config: Config,
        deps: Deps,
        interceptor: &mut Option<Interceptor>,
    ) -> anyhow::Result<Agent> {
        // Both rustls providers may be compiled in; kube panics unless one is the default.
        edgemesh_kube::install_crypto_provider();
        limits::raise_nofile_limit();
        // First: without support it may fall back to nftables mode.
        let configured_mode = config.intercept.mode;
        let fast = fastpath::start(&mut config.intercept)?;
        let intercepting = config.intercept.enabled();
        let proxy_config = ProxyConfig { node_name: config.node_name.clone(), ..config.proxy.clone() }.resolved();
        tracing::info!(
            node = %config.node_name,
            source = ?config.source,
            manifests = %config.manifests.dir.display(),
            state_dir = %config.state_dir.display(),
            dns = %config.dns_listen(),
            admin = %config.admin.listen,
            vip_cidr = %config.vip_cidr(),
            vip_cidr6 = ?config.vip_cidr6(),
            upstreams = ?config.dns.upstreams,
            max_connections = proxy_config.max_connections,
            proxy_workers = proxy_config.workers,
            "starting edgemesh agent"
        );
        tracing::debug!(config = ?config, "effective configuration");

        // Every component registers its metrics here as it is built; the
        // admin endpoint serves them.
        let mut metrics = AgentRegistry::new(env!("CARGO_PKG_VERSION"));
        let registry = Registry::new(RegistryConfig {
            vip_cidr: config.vip_cidr(),
            vip_cidr6: config.vip_cidr6(),
            default_strategy: config.proxy.default_strategy,
            node_name: config.node_name.clone(),
            // With interception cluster IPs are served where they are.
            vips: if intercepting { VipPolicy::WhereNeeded } else { VipPolicy::Every },
        });
        let (strategy, strategy_changes) = watch::channel(config.proxy.default_strategy);
        let mut registry = registry.with_default_strategy(strategy_changes);
        let registry_sink = registry.source();
        let (source_sink, upstream) = EventSink::detached(1024);
        let cache = CacheStatus::with_clock(deps.clock.clone());
        let snapshots = registry.subscribe();

        // Node mode: the table, and the VIP device with the DNS address on
        // it, before the DNS server binds that address.
        if config.intercept.node_mode() {
            *interceptor = Some(interception::start(&config).await?);
        }
        let proxy_config = interception::with_transparent(proxy_config, interceptor.as_ref(), &config.intercept);
        let transparent = proxy_config.transparent;
        let upstream_mark = proxy_config.upstream_mark;
        let dns_listen = config.dns_listen();
        let dns_config = edgemesh_dns::DnsConfig {
            listen: Some(dns_listen),
            cluster_ips_first: config.intercept.node_mode(),
            ..config.dns.clone()
        };
        let dns = DnsServer::bind(dns_config, snapshots.clone())
            .await
            .with_context(|| format!("cannot start DNS on {dns_listen}"))?;
        dns.register_metrics(metrics.edgemesh());
        let shutdown = CancellationToken::new();
        let mut proxy = Proxy::new(proxy_config, snapshots.clone())
            .with_original_dst(deps.original_dst.clone())
            .with_metrics(metrics.edgemesh(), config.metrics.max_services);
        let mut tunnel = None;
        let remote = match (&deps.remote, config.tunnel.enabled) {
            (Some(remote), _) => Some(remote.clone()),
            (None, true) => {
                let (handle, task, directory) =
                    crate::tunnel::start(&config, snapshots.clone(), metrics.edgemesh(), shutdown.clone()).await?;
                tunnel = Some((handle.clone(), task, directory));
                Some(Arc::new(crate::tunnel::TunnelRemote(handle)) as Arc<dyn edgemesh_proxy::Remote>)
            }
            (None, false) => None,
        };
        if let Some(remote) = remote {
            proxy = proxy.with_remote(remote, config.tunnel.connect_timeout);
        }
        // One dispatcher (upstream connections, balancing) for the HTTP
        // ports and the gateway.
        let dispatcher = (config.http.enabled || config.gateway.enabled)
            .then(|| Arc::new(edgemesh_http::Dispatcher::new(&config.http, metrics.edgemesh())) as Arc<dyn Upstream>);
        if config.http.enabled
            && let Some(dispatcher) = &dispatcher
        {
            let front = HttpProxy::with_metrics(dispatcher.clone(), config.http.clone(), metrics.edgemesh());
            proxy = proxy.with_http(Arc::new(front));
        }
        let mut gateway = match (config.gateway.enabled, dispatcher) {
            (true, Some(dispatcher)) => Some(gateway::GatewayTask::new(
                &config,
                snapshots.clone(),
                proxy.status(),
                proxy.reach(),
                upstream_mark,
                dispatcher,
                metrics.edgemesh(),
            )),
            _ => None,
        };
        let socks = match config.socks.enabled {
            true => Some(bind_socks(&config, &snapshots, &tunnel).await?.with_metrics(metrics.edgemesh())),
            false => None,
        };
        interception::bind_transparent(&mut proxy, transparent, &config.intercept)?;
        // Whether the source is connected (kube) or its directory readable (manifests).
        let source_health = SourceHealth::with_clock(deps.clock.clone());
        // What the source sends, counted by the sink it sends through; the
        // cache's writes and the registry's snapshots.
        let source_name = match config.source {
            SourceKind::Manifests => "manifests",
            SourceKind::Kube => "kube",
        };
        let source_metrics =
            SourceMetrics::register(source_name, source_health.clone(), deps.clock.clone(), metrics.edgemesh());
        let source_sink = source_sink.counted(source_metrics);
        cache.register_metrics(metrics.edgemesh());
        edgemesh_core::metrics::register_registry(snapshots.clone(), metrics.edgemesh());
        let source = match config.source {
            SourceKind::Manifests => {
                Source::Manifests(ManifestSource::from_config(&config.manifests).with_health(source_health.clone()))
            }
            SourceKind::Kube => {
                let mut kube = KubeSourceConfig::new(config.kube.endpoint());
                kube.routing = config.gateway.enabled;
                kube.health = source_health.clone();
                let source = KubeSource::new(kube).await.context("cannot set up the Kubernetes source")?;
                gateway = gateway.map(|g| {
                    let (secrets, watch) = source.tls_secrets(shutdown.clone());
                    g.with_status_writer(source.status_writer()).with_tls_secrets(secrets, watch)
                });
                Source::Kube(source)
            }
        };
        let (fast_path, intercept_fallback) = match fast {
            fastpath::Start::Running(fast) => {
                (Some(fastpath::FastPathTask::new(fast, &config.intercept, &config.node_name, proxy.status())), None)
            }
            fastpath::Start::FellBack(why) => (None, Some(why)),
            fastpath::Start::Off => (None, None),
        };
        let config = Arc::new(config);
        let logging = deps.logging.clone().unwrap_or_else(|| LogControl::detached(&config.log_level));
        let lifecycle = Lifecycle::new(config.clone(), configured_mode, logging);
        let gateway = gateway.map(|g| {
            let lifecycle = lifecycle.clone();
            g.with_drain_timeout(move || lifecycle.config().drain_timeout)
        });
        let admin = AdminServer::bind(
            config.admin.listen,
            AdminState {
                config: config.clone(),
                snapshots: snapshots.clone(),
                proxy: proxy.status(),
                intercept: fast_path
                    .as_ref()
                    .map(fastpath::FastPathTask::status)
                    .or_else(|| interceptor.as_ref().map(Interceptor::status)),
                intercept_fallback,
                cache: cache.clone(),
                source: Some(source_health),
                tunnel: tunnel.as_ref().map(|(t, _, _)| t.clone()),
                gateway: gateway.as_ref().map(gateway::GatewayTask::reports),
                metrics: Arc::new(metrics),
                lifecycle: lifecycle.clone(),
            },
        )
        .with_context(|| {
            format!("cannot listen for the admin endpoint on {}; is another agent running?", config.admin.listen)
        })?;
        let admin_addr = admin.local_addr().context("the admin endpoint's address")?;
        let live = reload::Components { proxy: proxy.live_settings(), dns: Some(dns.live_settings()), strategy };
        Ok(Agent {
            config,
            registry,
            snapshots,
            source,
            source_sink,
            upstream,
            registry_sink,
            cache,
            dns,
            proxy,
            admin,
            admin_addr,
            socks,
            tunnel: tunnel.map(|(_, task, _)| task),
            interceptor: interceptor.take(),
            fast_path,
            gateway,
            shutdown,
            lifecycle,
            live,
            host: deps.host,
            reload: None,
        })
    }

    /// Reloads the config from `source` on SIGHUP and when its file
    /// changes (see [`crate::lifecycle::reload`]).
    pub fn with_reload(mut self, source: ReloadSource) -> Self {
        self.reload = Some(source);
        self
    }

    /// The effective configuration.
    pub fn config(&self) -> &Arc<Config> {
        &self.config
    }

    /// The DNS server's address (the port the kernel picked for port 0).
    pub fn dns_addr(&self) -> SocketAddr {
        self.dns.local_addr()
    }

    /// The admin endpoint's address.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    /// The SOCKS5 entry's address, when it is enabled.
    pub fn socks_addr(&self) -> Option<SocketAddr> {
        self.socks.as_ref().and_then(|s| s.local_addr().ok())
    }

    /// The registry's snapshots, as every component sees them.
    pub fn snapshots(&self) -> RegistryHandle {
        self.snapshots.clone()
    }

    /// Runs every component until `stop` resolves (Ok) or one of them ends
    /// or fails (an error naming it); see [`Agent::run_until`].
    pub async fn run(self, stop: impl Future<Output = ()>) -> anyhow::Result<()> {
        self.run_until(stop, std::future::pending()).await
    }

    /// Runs every component until `stop` resolves or one of them ends or
    /// fails (an error naming it). A stop drains (see
    /// [`crate::lifecycle::drain`]: listeners close, connections get
    /// `drainTimeout`, or until `force` resolves); a failure stops
    /// everything at once. Either way node mode's table and device go last.
    pub async fn run_until(
        self,
        stop: impl Future<Output = ()>,
        force: impl Future<Output = ()>,
    ) -> anyhow::Result<()> {
        let (config, snapshots, shutdown) = (self.config, self.snapshots, self.shutdown);
        let drain = CancellationToken::new();
        let mut components = Components::default();
        // First: the one start that can fail here, before anything runs.
        let (admin, admin_thread) = self.admin.spawn(shutdown.clone())?;
        components.spawn("the admin endpoint", admin);
        let registry_task = tokio::spawn(self.registry.run());
        {
            let shutdown = shutdown.clone();
            let dns = self.dns;
            components.spawn("the DNS server", async move { dns.run(shutdown).await.map_err(Into::into) });
        }
        let proxy_status = self.proxy.status();
        // Apart from the other components: its end is the end of a drain.
        let mut proxy_task = tokio::spawn(self.proxy.with_drain(drain.clone()).run(shutdown.clone()));
        if let Some(task) = self.tunnel {
            components.spawn("the tunnel", async move { task.await.map_err(Into::into) });
        }
        if let Some(socks) = self.socks {
            components.spawn("the SOCKS5 entry", ok(socks.run(shutdown.clone())));
        }
        // Drained with the proxy (SIGTERM); its connections are waited for too.
        let gateway_open = self.gateway.as_ref().map(gateway::GatewayTask::open_connections);
        if let Some(gateway) = self.gateway {
            components.spawn("the edge gateway", ok(gateway.with_drain(drain.clone()).run(shutdown.clone())));
        }
        if let Some(source) = self.reload {
            let reloader = Reloader::new(source, self.host, self.lifecycle.clone(), self.live);
            components.spawn("the config reloader", ok(reloader.run(shutdown.clone())));
        }
        let identity = source_identity(&config);
        let (dir, stop_relay) = (config.state_dir.clone(), shutdown.clone());
        let (upstream, registry_sink, cache) = (self.upstream, self.registry_sink, self.cache);
        components.spawn(
            "the cache relay",
            ok(async move { edgemesh_cache::relay(&dir, &identity, upstream, registry_sink, cache, stop_relay).await }),
        );
        match self.source {
            Source::Manifests(source) => {
                components.spawn("the manifests source", ok(source.run(self.source_sink, shutdown.clone())))
            }
            Source::Kube(source) => {
                components.spawn("the Kubernetes source", ok(source.run(self.source_sink, shutdown.clone())))
            }
        }
        // Last: until here a start-up failure leaves the table and device
        // to `build`'s clean-up. Removed after every other component stopped.
        let release = CancellationToken::new();
        let gated = (self.interceptor.is_some() || self.fast_path.is_some()).then(|| {
            let (gated_tx, gated) = watch::channel(Arc::new(Snapshot::default()));
            let (source, stop) = (snapshots.clone(), shutdown.clone());
            components.spawn(
                "the interception gate",
                ok(interception::gate_on_proxy(source, proxy_status.clone(), gated_tx, stop)),
            );
            gated
        });
        let interceptor = self.interceptor.zip(gated.clone()).map(|(i, g)| tokio::spawn(i.run(g, release.clone())));
        let fast_path = self.fast_path.zip(gated).map(|(f, g)| tokio::spawn(f.run(g, release.clone())));

        let outcome = tokio::select! {
            () = stop => Ok(()),
            failed = components.first_end() => Err(failed),
            ended = &mut proxy_task => Err(anyhow::anyhow!("the proxy stopped unexpectedly ({ended:?})")),
        };
        let proxy_done = match &outcome {
            Ok(()) => {
                let grace = self.lifecycle.config().drain_timeout;
                let gateway = gateway_open.as_deref();
                let end = drain::connections(&proxy_status, gateway, &mut proxy_task, &drain, grace, force).await;
                // (The proxy may have ended while the gateway's connections
                // had not: its handle is then joined already.)
                end == DrainEnd::Finished || proxy_task.is_finished()
            }
            Err(_) => proxy_task.is_finished(),
        };
        drain.cancel();
        shutdown.cancel();
        let stopped = tokio::time::timeout(DRAIN_DEADLINE, async {
            let proxy = async {
                if !proxy_done {
                    let _ = proxy_task.await;
                }
            };
            let _ = tokio::join!(proxy, components.drain(), registry_task);
        })
        .await;
        if stopped.is_err() {
            tracing::warn!("components did not stop within {DRAIN_DEADLINE:?}; exiting anyway");
        }
        release.cancel();
        if let Some(task) = fast_path
            && tokio::time::timeout(DRAIN_DEADLINE, task).await.is_err()
        {
            tracing::warn!("the kernel fast path was not released within {DRAIN_DEADLINE:?}");
        }
        if let Some(task) = interceptor
            && tokio::time::timeout(DRAIN_DEADLINE, task).await.is_err()
        {
            tracing::warn!("the nftables table and VIP device were not removed within {DRAIN_DEADLINE:?}");
        }
        // The admin endpoint stops at once when told to; wait for its
        // thread in real time, so its port is free when `run` returns even
        // if this runtime's clock (paused in tests) ran past the deadline.
        let _ = tokio::task::spawn_blocking(move || admin_thread.join()).await;
        outcome
    }
}

/// The running tunnel: its handle, its task, the directory it asks.
type RunningTunnel = (edgemesh_tunnel::Tunnel, tokio::task::JoinHandle<()>, Arc<crate::tunnel::AgentDirectory>);

/// Binds the SOCKS5 entry (`socks.listen`, or its default for the mode);
/// with the tunnel, other nodes' hosts are reachable through it.
async fn bind_socks(
    config: &Config,
    snapshots: &RegistryHandle,
    tunnel: &Option<RunningTunnel>,
) -> anyhow::Result<SocksServer> {
    let hosts = tunnel.as_ref().map(|(tunnel, _, directory)| {
        Arc::new(crate::tunnel::TunnelHosts { tunnel: tunnel.clone(), directory: directory.clone() })
            as Arc<dyn NodeHosts>
    });
    let env = SocksEnv {
        node_name: config.node_name.clone(),
        cluster_domain: config.dns.cluster_domain.clone(),
        snapshots: snapshots.clone(),
        hosts,
        connect_timeout: config.proxy.connect_timeout,
    };
    let listen = config.socks_listen();
    SocksServer::bind(config.socks.clone(), listen, env).await.context("cannot start the SOCKS5 entry")
}

/// The running components, by name: the first to end stops the agent.
#[derive(Default)]
struct Components {
    tasks: JoinSet<anyhow::Result<()>>,
    names: HashMap<tokio::task::Id, &'static str>,
}

impl Components {
    fn spawn(&mut self, name: &'static str, task: impl Future<Output = anyhow::Result<()>> + Send + 'static) {
        let id = self.tasks.spawn(task).id();
        self.names.insert(id, name);
    }

    /// Why the first component to end ended: components run until shutdown,
    /// so ending at all is a failure.
    async fn first_end(&mut self) -> anyhow::Error {
        let name = |id| self.names.get(&id).copied().unwrap_or("a component");
        match self.tasks.join_next_with_id().await {
            Some(Ok((id, Ok(())))) => anyhow::anyhow!("{} stopped unexpectedly", name(id)),
            Some(Ok((id, Err(e)))) => e.context(format!("{} failed", name(id))),
            Some(Err(e)) if e.is_panic() => anyhow::anyhow!("{} panicked: {e}", name(e.id())),
            Some(Err(e)) => anyhow::anyhow!("{} was cancelled: {e}", name(e.id())),
            None => anyhow::anyhow!("no component is running"),
        }
    }

    async fn drain(&mut self) {
        while self.tasks.join_next().await.is_some() {}
    }
}

/// A component that ends without a result.
async fn ok(component: impl Future<Output = ()>) -> anyhow::Result<()> {
    component.await;
    Ok(())
}

/// Names the source feeding this agent, so the cache never serves state
/// that another source (another manifests directory, another API) wrote.
fn source_identity(config: &Config) -> String {
    match config.source {
        SourceKind::Manifests => {
            let dir = std::path::absolute(&config.manifests.dir).unwrap_or_else(|_| config.manifests.dir.clone());
            format!("manifests:{}", dir.display())
        }
        SourceKind::Kube => config.kube.identity(),
    }
}

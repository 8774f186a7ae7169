//! `edgemesh agent`: wires the source, the registry and its consumers
//! together, and stops them cleanly on SIGTERM or Ctrl-C.
//!
//! ```text
//! manifests dir -> ManifestSource ┐
//! Kubernetes API -> KubeSource ───┴> cache relay -> Registry -> snapshots -> DnsServer
//!                                      (state-dir)                        -> Proxy -> Tunnel (other nodes)
//!                                                                         -> Tunnel (node bindings,
//!                                                                              endpoints it serves)
//!                                                                         -> Interceptor (node mode:
//!                                                                            nftables table, VIP device)
//!                                                                         -> AdminServer
//! ```

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use edgemesh_cache::CacheStatus;
use edgemesh_core::{EventSink, Registry, RegistryConfig, RegistryHandle, Snapshot, SourceHealth, VipPolicy};
use edgemesh_dns::{DnsConfig, DnsServer};
use edgemesh_intercept::{DeviceSpec, InterceptConfig, Interceptor, Nft, TableSpec};
use edgemesh_kube::{ApiEndpoint, KubeSource, KubeSourceConfig};
use edgemesh_manifests::ManifestSource;
use edgemesh_proxy::{Proxy, ProxyConfig, ProxyStatus};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::admin::{AdminServer, AdminState};
use crate::config::{Config, InterceptMode, SourceKind};
use crate::limits;

/// How long components get to finish after a stop signal.
const DRAIN_DEADLINE: Duration = Duration::from_secs(5);

pub async fn run(config: Config) -> anyhow::Result<()> {
    // Node mode's table and VIP device, from their creation until their
    // task takes them: a start-up failure in between removes them.
    let mut starting: Option<Interceptor> = None;
    let result = serve(config, &mut starting).await;
    if let Some(interceptor) = starting.take()
        && let Err(error) = interceptor.remove().await
    {
        tracing::warn!(%error, "cannot remove the nftables table or the VIP device after a failed start");
    }
    result
}

async fn serve(config: Config, starting: &mut Option<Interceptor>) -> anyhow::Result<()> {
    // Both rustls providers may be compiled in; kube panics unless one is the default.
    edgemesh_kube::install_crypto_provider();
    let nofile = limits::raise_nofile_limit();
    let max_connections = match config.proxy.max_connections {
        0 => ProxyConfig::max_connections_for_fd_limit(nofile),
        n => n,
    };
    let proxy_workers = match config.proxy.workers {
        0 => edgemesh_proxy::default_workers(),
        n => n,
    };
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
        max_connections,
        proxy_workers,
        "starting edgemesh agent"
    );
    tracing::debug!(config = ?config, "effective configuration");

    let intercepting = config.intercept.mode == InterceptMode::Nftables;
    let mut registry = Registry::new(RegistryConfig {
        vip_cidr: config.vip_cidr(),
        vip_cidr6: config.vip_cidr6(),
        default_strategy: config.proxy.default_strategy,
        node_name: config.node_name.clone(),
        // With interception cluster IPs are served where they are.
        vips: if intercepting { VipPolicy::WhereNeeded } else { VipPolicy::Every },
    });
    // source -> cache relay (write-through, replay at start) -> registry
    let registry_sink = registry.source();
    let (source_sink, upstream) = EventSink::detached(1024);
    let cache = CacheStatus::new();
    // Whether the source is connected (kube) or its directory readable (manifests).
    let source_health = SourceHealth::new();
    let snapshots = registry.subscribe();

    // Node mode: the table, and the VIP device with the DNS address on it,
    // before the DNS server binds that address.
    if intercepting {
        *starting = Some(start_interception(&config).await?);
    }
    // Bind everything before starting anything, so a taken port is a clear
    // start-up error rather than a half-running agent.
    let dns_listen = config.dns_listen();
    let dns = DnsServer::bind(
        DnsConfig {
            listen: dns_listen,
            upstreams: config.dns.upstreams.clone(),
            cluster_domain: config.dns.cluster_domain.clone(),
            service_ttl: config.dns.service_ttl,
            upstream_timeout: config.dns.upstream_timeout,
            cache_size: config.dns.cache_size,
            cluster_ips_first: intercepting,
        },
        snapshots.clone(),
    )
    .await
    .with_context(|| format!("cannot start DNS on {dns_listen}"))?;
    // Cancelled to stop every component; the tunnel's swarm task takes it
    // as it starts.
    let shutdown = CancellationToken::new();
    let tunnel = if config.tunnel.enabled {
        let (tunnel, task) = crate::tunnel::start(&config, snapshots.clone(), shutdown.clone()).await?;
        Some((tunnel, task))
    } else {
        None
    };
    let mut proxy = Proxy::new(
        ProxyConfig {
            connect_timeout: config.proxy.connect_timeout,
            max_connections,
            node_name: config.node_name.clone(),
            max_udp_sessions: config.proxy.max_udp_sessions,
            transparent: intercepting,
            upstream_mark: intercepting.then_some(config.intercept.mark),
            workers: proxy_workers,
        },
        snapshots.clone(),
    );
    if let Some((tunnel, _)) = &tunnel {
        proxy = proxy.with_remote(Arc::new(crate::tunnel::TunnelRemote(tunnel.clone())), config.tunnel.connect_timeout);
    }
    if intercepting {
        let port = config.intercept.port;
        let addrs = proxy.bind_transparent(port).with_context(|| {
            format!("cannot listen on the transparent port {port} (intercept.port); is another agent running?")
        })?;
        tracing::info!(listen = ?addrs, table = %config.intercept.table, "intercepting service addresses with nftables");
    }
    let intercept_status = starting.as_ref().map(Interceptor::status);
    let config = Arc::new(config);
    let admin = AdminServer::bind(
        config.admin.listen,
        AdminState {
            config: config.clone(),
            snapshots: snapshots.clone(),
            proxy: proxy.status(),
            intercept: intercept_status,
            cache: cache.clone(),
            source: Some(source_health.clone()),
            tunnel: tunnel.as_ref().map(|(t, _)| t.clone()),
        },
    )
    .await
    .with_context(|| {
        format!("cannot listen for the admin endpoint on {}; is another agent running?", config.admin.listen)
    })?;

    let registry_task = tokio::spawn(registry.run());
    let mut tasks = JoinSet::new();
    {
        let shutdown = shutdown.clone();
        tasks.spawn(async move { dns.run(shutdown).await.context("DNS server failed") });
    }
    let proxy_status = proxy.status();
    tasks.spawn(proxy.run(shutdown.clone()).map_ok());
    if let Some((_, task)) = tunnel {
        tasks.spawn(async move { task.await.context("the tunnel failed") });
    }
    tasks.spawn(admin.run(shutdown.clone()).map_ok());
    {
        let (dir, source, shutdown) = (config.state_dir.clone(), source_identity(&config), shutdown.clone());
        tasks.spawn(
            async move { edgemesh_cache::relay(&dir, &source, upstream, registry_sink, cache, shutdown).await }
                .map_ok(),
        );
    }
    match config.source {
        SourceKind::Manifests => {
            let source = ManifestSource::new(config.manifests.dir.clone(), config.manifests.poll_interval)
                .with_health(source_health);
            tasks.spawn(source.run(source_sink, shutdown.clone()).map_ok());
        }
        SourceKind::Kube => {
            let endpoint = match (&config.kube.api, &config.kube.kubeconfig) {
                (Some(url), _) => ApiEndpoint::Url(url.clone()),
                (None, Some(path)) => ApiEndpoint::Kubeconfig(path.clone()),
                (None, None) => ApiEndpoint::Infer,
            };
            let mut kube = KubeSourceConfig::new(endpoint);
            kube.health = source_health;
            let source = KubeSource::new(kube).await.context("cannot set up the Kubernetes source")?;
            tasks.spawn(source.run(source_sink, shutdown.clone()).map_ok());
        }
    }

    // Last: until here a start-up failure leaves `starting` to remove it.
    if let Some(interceptor) = starting.take() {
        let (gated_tx, gated) = watch::channel(Arc::new(Snapshot::default()));
        let (source, stop) = (snapshots.clone(), shutdown.clone());
        tasks.spawn(gate_on_proxy(source, proxy_status, gated_tx, stop).map_ok());
        tasks.spawn(interceptor.run(gated, shutdown.clone()).map_ok());
    }

    let outcome = tokio::select! {
        signal = stop_signal() => {
            tracing::info!(signal, "stopping");
            Ok(())
        }
        Some(done) = tasks.join_next() => match done {
            Ok(Ok(())) => Err(anyhow::anyhow!("a component stopped unexpectedly")),
            Ok(Err(e)) => Err(e),
            Err(e) => Err(anyhow::anyhow!("a component panicked: {e}")),
        },
    };

    shutdown.cancel();
    let drained = tokio::time::timeout(DRAIN_DEADLINE, async {
        while tasks.join_next().await.is_some() {}
        let _ = registry_task.await;
    })
    .await;
    if drained.is_err() {
        tracing::warn!("components did not stop within {DRAIN_DEADLINE:?}; exiting anyway");
    }
    outcome
}

/// Makes node mode's nftables table and VIP device (holding the DNS
/// address), or says why it cannot.
async fn start_interception(config: &Config) -> anyhow::Result<Interceptor> {
    let vip_cidr = config.vip_cidr();
    let device = &config.intercept.vip_device;
    if device.is_empty() && !vip_cidr.network().is_loopback() {
        tracing::warn!(%vip_cidr,
            "no VIP device (intercept.vipDevice is empty): VIPs outside 127.0.0.0/8 are reachable only if something routes them here");
    }
    if vip_cidr.network().is_loopback() {
        tracing::info!(%vip_cidr,
            "UDP to cluster IPs is intercepted for local processes only: pods need a vipCidr outside 127.0.0.0/8 (e.g. 9.251.0.0/16)");
    }
    let interceptor = Interceptor::start(InterceptConfig {
        table: TableSpec {
            name: config.intercept.table.clone(),
            port: config.intercept.port,
            mark: config.intercept.mark,
        },
        nft: Nft::default(),
        device: (!device.is_empty())
            .then(|| DeviceSpec { name: device.clone(), fixed: vec![config.dns_listen().ip()] }),
    })
    .await
    .with_context(|| {
        if device.is_empty() {
            "cannot set up interception with nftables".to_owned()
        } else {
            format!("cannot set up interception with nftables and the VIP device {device} (intercept.vipDevice)")
        }
    })?;
    Ok(interceptor)
}

/// Passes each snapshot on once the proxy has applied it.
async fn gate_on_proxy(
    mut source: RegistryHandle,
    proxy: Arc<ProxyStatus>,
    gated: watch::Sender<Arc<Snapshot>>,
    shutdown: CancellationToken,
) {
    loop {
        let snapshot = source.borrow_and_update().clone();
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = proxy.wait_applied(snapshot.generation) => {}
        }
        gated.send_replace(snapshot);
        tokio::select! {
            _ = shutdown.cancelled() => return,
            changed = source.changed() => if changed.is_err() {
                // The registry is gone: the agent is stopping.
                shutdown.cancelled().await;
                return;
            },
        }
    }
}

/// Names the source feeding this agent, so the cache never serves state
/// that another source (another manifests directory, another API) wrote.
fn source_identity(config: &Config) -> String {
    match config.source {
        SourceKind::Manifests => {
            let dir = std::path::absolute(&config.manifests.dir).unwrap_or_else(|_| config.manifests.dir.clone());
            format!("manifests:{}", dir.display())
        }
        SourceKind::Kube => match (&config.kube.api, &config.kube.kubeconfig) {
            (Some(url), _) => format!("kube:{url}"),
            (None, Some(path)) => format!("kube:kubeconfig:{}", path.display()),
            (None, None) => "kube:in-cluster".to_string(),
        },
    }
}

/// Lets unit-returning component futures share the JoinSet with fallible ones.
trait MapOk: std::future::Future<Output = ()> + Sized {
    fn map_ok(self) -> impl std::future::Future<Output = anyhow::Result<()>> {
        async move {
            self.await;
            Ok(())
        }
    }
}

impl<F: std::future::Future<Output = ()>> MapOk for F {}

/// Resolves on SIGTERM or SIGINT (Ctrl-C) with the signal's name.
async fn stop_signal() -> &'static str {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    }
}

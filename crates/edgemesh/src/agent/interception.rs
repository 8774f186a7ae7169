//! Node mode: the nftables table (every service address in nftables mode,
//! node ports only beside the kernel fast path) and the VIP device, what
//! the proxy's transparent listener serves in each mode, and the gate that
//! installs a service's rules only once the proxy serves it.

use std::sync::Arc;

use anyhow::Context;
use edgemesh_core::{RegistryHandle, Snapshot};
use edgemesh_intercept::{InterceptConfig, InterceptError, InterceptMode, Interceptor};
use edgemesh_proxy::{Proxy, ProxyConfig, ProxyStatus, Transparent};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::config::Config;

/// `proxy` with what its transparent listener serves: every intercepted
/// service address (nftables), node ports (ebpf: the programs send cluster
/// IPs to the VIP listeners, and the node-port table redirects node ports
/// there), or nothing (mode none, or no table: ebpf without nft); and with
/// the mark that keeps its own upstream connections out of the table.
pub(super) fn with_transparent(
    proxy: ProxyConfig,
    interceptor: Option<&Interceptor>,
    intercept: &InterceptConfig,
) -> ProxyConfig {
    let transparent = match (intercept.mode, interceptor.is_some_and(Interceptor::has_table)) {
        (_, false) | (InterceptMode::None, _) => Transparent::Off,
        (InterceptMode::Nftables, true) => Transparent::Every,
        (InterceptMode::Ebpf, true) => Transparent::NodePorts,
    };
    let upstream_mark = (transparent != Transparent::Off).then_some(intercept.mark);
    ProxyConfig { transparent, upstream_mark, ..proxy }
}

/// Binds the proxy's transparent listener on `intercept.port`, unless
/// `transparent` is off.
pub(super) fn bind_transparent(
    proxy: &mut Proxy,
    transparent: Transparent,
    intercept: &InterceptConfig,
) -> anyhow::Result<()> {
    if transparent == Transparent::Off {
        return Ok(());
    }
    let port = intercept.port;
    let addrs = proxy.bind_transparent(port).with_context(|| {
        format!("cannot listen on the transparent port {port} (intercept.port); is another agent running?")
    })?;
    match transparent {
        Transparent::NodePorts => tracing::info!(listen = ?addrs, table = %intercept.node_port_table(),
            "serving node ports with nftables beside the kernel fast path"),
        _ => tracing::info!(listen = ?addrs, table = %intercept.table, "intercepting service addresses with nftables"),
    }
    Ok(())
}

/// Makes node mode's nftables table (node ports only in mode `ebpf`, where
/// a missing `nft` leaves node ports unserved, with a warning) and VIP
/// device (holding the DNS address), or says why it cannot.
pub(super) async fn start(config: &Config) -> anyhow::Result<Interceptor> {
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
    let mut setup = config.intercept.setup(vec![config.dns_listen().ip()]);
    let started = match Interceptor::start(setup.clone()).await {
        // Beside the fast path only node ports need nft, which the default
        // image lacks: the rest works without it.
        Err(InterceptError::NftMissing { program }) if config.intercept.mode == InterceptMode::Ebpf => {
            tracing::warn!(%program,
                "node ports are not served: nft is not installed (install nftables, e.g. an image with nft in it); cluster IPs and VIPs are, through the kernel fast path");
            (setup.table, setup.other_mode_table) = (None, None);
            Interceptor::start(setup).await
        }
        started => started,
    };
    let interceptor = started.with_context(|| {
        let what = match config.intercept.mode {
            InterceptMode::Ebpf => format!(
                "cannot set up the nftables table inet {} for node ports (intercept.mode ebpf)",
                config.intercept.node_port_table()
            ),
            _ => "cannot set up interception with nftables".to_owned(),
        };
        match device.is_empty() {
            true => what,
            false => format!("{what} and the VIP device {device} (intercept.vipDevice)"),
        }
    })?;
    Ok(interceptor)
}

/// Passes each snapshot on once the proxy has applied it.
pub(super) async fn gate_on_proxy(
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

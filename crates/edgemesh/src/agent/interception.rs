//! Node mode: the nftables table (every service address in nftables mode,
//! node ports only beside the kernel fast path) and the VIP device, what
//! the proxy's transparent listener serves in each mode, and the gate that
//! installs a service's rules only once the proxy serves it.

use std::sync::Arc;

use anyhow::Context;
use edgemesh_core::{RegistryHandle, Snapshot};
use edgemesh_intercept::{InterceptMode, Interceptor};
use edgemesh_proxy::{ProxyStatus, Transparent};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::config::Config;

/// What the transparent listener serves in `mode`: every intercepted
/// service address (nftables), node ports (ebpf: the programs send cluster
/// IPs to the VIP listeners, and the node-port table redirects node ports
/// here), or nothing.
pub(super) fn transparent(mode: InterceptMode) -> Transparent {
    match mode {
        InterceptMode::None => Transparent::Off,
        InterceptMode::Nftables => Transparent::Every,
        InterceptMode::Ebpf => Transparent::NodePorts,
    }
}

/// Makes node mode's nftables table (node ports only in mode `ebpf`) and
/// VIP device (holding the DNS address), or says why it cannot.
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
    let interceptor =
        Interceptor::start(config.intercept.setup(vec![config.dns_listen().ip()])).await.with_context(|| {
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

//! Node mode: the nftables table and the VIP device, and the gate that
//! installs a service's rules only once the proxy serves it.

use std::sync::Arc;

use anyhow::Context;
use edgemesh_core::{RegistryHandle, Snapshot};
use edgemesh_intercept::Interceptor;
use edgemesh_proxy::ProxyStatus;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::config::Config;

/// Makes node mode's nftables table (not in mode `ebpf`) and VIP device
/// (holding the DNS address), or says why it cannot.
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
            match (config.intercept.enabled(), device.is_empty()) {
                (true, true) => "cannot set up interception with nftables".to_owned(),
                (true, false) => format!(
                    "cannot set up interception with nftables and the VIP device {device} (intercept.vipDevice)"
                ),
                (false, _) => format!("cannot set up the VIP device {device} (intercept.vipDevice)"),
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

//! A registry task on the test's runtime: where a source sends, and the
//! snapshots it publishes.

use edgemesh_core::{EventSink, Registry, RegistryConfig, RegistryHandle};
use tokio::task::JoinHandle;

/// A running registry.
pub struct RunningRegistry {
    /// Where a source sends its events.
    pub sink: EventSink,
    /// The snapshots it publishes.
    pub snapshots: RegistryHandle,
    /// The task; it ends when every sink is dropped.
    pub task: JoinHandle<()>,
}

/// A registry giving VIPs from `vip_cidr` (a range of the test's own, so
/// that tests running at once do not share addresses), otherwise with the
/// defaults (round robin), running.
pub fn start_registry(vip_cidr: &str) -> RunningRegistry {
    let vip_cidr = vip_cidr.parse().unwrap_or_else(|e| panic!("VIP range {vip_cidr:?}: {e}"));
    start_registry_with(RegistryConfig { vip_cidr, ..Default::default() })
}

/// A registry with `config`, running.
pub fn start_registry_with(config: RegistryConfig) -> RunningRegistry {
    let mut registry = Registry::new(config);
    let sink = registry.source();
    let snapshots = registry.subscribe();
    let task = tokio::spawn(registry.run());
    RunningRegistry { sink, snapshots, task }
}

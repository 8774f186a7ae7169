//! Transparent interception of service addresses with nftables.
//!
//! The agent owns exactly one nftables table (`inet edgemesh` by default)
//! and, when asked, one VIP device (`edge0`, [`device`]), and touches
//! nothing else. The table redirects TCP connections to a service's
//! cluster IP or VIP and port, or to a node port on any of the node's
//! addresses, from local processes (`output` hook) and from containers
//! routed through the node (`prerouting`), to the proxy's transparent
//! listener, which recovers the original destination with
//! `SO_ORIGINAL_DST`; it DNATs UDP datagrams to a cluster IP and port to
//! the service's VIP and port, where the proxy's UDP listener serves them
//! (see [`rules`] for why DNAT rather than TPROXY).
//!
//! # Layout
//!
//! - [`rules`]: pure: the elements of a service, the script that creates
//!   the table, the script of one change.
//! - [`device`]: the VIP device (`edge0`): a local route for the VIP range
//!   so that VIPs outside `127.0.0.0/8` are addresses of this node.
//! - [`nft`]: runs `nft -f -` (one script = one atomic transaction) and
//!   words its failures for the operator (not installed, no permission).
//! - [`Interceptor`]: follows snapshots through `Snapshot::changes_since`;
//!   each new snapshot is one transaction adding and deleting only the
//!   elements that changed. On start it replaces a table left behind by an
//!   earlier run; on clean stop it deletes its table.
//!
//! After a failed transaction (someone deleted the table, say) the next
//! attempt rebuilds the whole table from the snapshot, atomically, and is
//! retried every [`RETRY`] until it succeeds.
#![forbid(unsafe_code)]

pub mod device;
pub mod nft;
pub mod rules;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use edgemesh_core::{ServiceKey, Snapshot};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

pub use device::{DeviceError, Ip, Range, VipDevice};
pub use nft::{InterceptError, Nft};
pub use rules::{Element, L4, TableSpec};

/// Default table name (family `inet`).
pub const DEFAULT_TABLE: &str = "edgemesh";
/// Default name of the VIP device.
pub const DEFAULT_VIP_DEVICE: &str = "edge0";
/// Default port of the transparent listener.
pub const DEFAULT_PORT: u16 = 15006;
/// Default mark of the agent's own upstream connections ("EM").
pub const DEFAULT_MARK: u32 = 0x454d;
/// Pause before retrying after a failed transaction.
pub const RETRY: Duration = Duration::from_secs(2);

/// Interception settings.
#[derive(Clone, Debug)]
pub struct InterceptConfig {
    pub table: TableSpec,
    pub nft: Nft,
}

/// Live counters for readiness and the admin endpoint.
#[derive(Debug, Default)]
pub struct InterceptStatus {
    /// Generation of the last snapshot whose elements are in the table.
    pub applied_generation: AtomicU64,
    /// Elements in the table.
    pub elements: AtomicUsize,
    /// Transactions applied since start.
    pub transactions: AtomicU64,
    /// Transactions that failed.
    pub failures: AtomicU64,
}

/// What is in the kernel table, per service, with a count per element (two
/// services may claim one address for a moment; it stays until both let go).
#[derive(Debug, Default)]
struct Installed {
    by_service: HashMap<ServiceKey, Vec<Element>>,
    count: HashMap<Element, u32>,
}

/// Owns the table; see the crate docs.
pub struct Interceptor {
    config: InterceptConfig,
    status: Arc<InterceptStatus>,
    installed: Installed,
    /// The kernel table may differ from `installed`: rebuild it whole.
    dirty: bool,
}

impl Interceptor {
    /// Replaces any table of this name (left by an earlier run) with an
    /// empty one. An error here means interception cannot work at all
    /// (nft missing, no permission, no nat support).
    pub async fn start(config: InterceptConfig) -> Result<Self, InterceptError> {
        config.nft.apply(&config.table.replace_script(&[])).await?;
        tracing::info!(table = %config.table.name, port = config.table.port, mark = format_args!("{:#x}", config.table.mark),
            "nftables table inet {} in place", config.table.name);
        Ok(Self { config, status: Arc::new(InterceptStatus::default()), installed: Installed::default(), dirty: false })
    }

    pub fn status(&self) -> Arc<InterceptStatus> {
        self.status.clone()
    }

    /// Brings the table in line with `snapshot`: one transaction with the
    /// elements that changed since the last applied generation, or a full
    /// atomic rebuild after a failure.
    pub async fn reconcile(&mut self, snapshot: &Snapshot) -> Result<(), InterceptError> {
        let since = self.status.applied_generation.load(Ordering::Acquire);
        let keys = if self.dirty { None } else { snapshot.changes_since(since) };
        let result = match keys {
            Some(keys) => self.apply_changes(snapshot, keys).await,
            None => self.rebuild(snapshot).await,
        };
        match &result {
            Ok(()) => {
                self.dirty = false;
                self.status.applied_generation.store(snapshot.generation, Ordering::Release);
                self.status.elements.store(self.installed.count.len(), Ordering::Relaxed);
            }
            Err(_) => {
                self.dirty = true;
                self.status.failures.fetch_add(1, Ordering::Relaxed);
            }
        }
        result
    }

    async fn apply_changes(&mut self, snapshot: &Snapshot, mut keys: Vec<ServiceKey>) -> Result<(), InterceptError> {
        keys.sort_unstable();
        keys.dedup();
        let mut desired: Vec<(ServiceKey, Vec<Element>)> = Vec::with_capacity(keys.len());
        let mut delta: HashMap<Element, i64> = HashMap::new();
        for key in keys {
            let new = snapshot.service(&key).map(|e| rules::service_elements(e)).unwrap_or_default();
            for e in self.installed.by_service.get(&key).into_iter().flatten() {
                *delta.entry(*e).or_default() -= 1;
            }
            for e in &new {
                *delta.entry(*e).or_default() += 1;
            }
            desired.push((key, new));
        }
        let (mut removed, mut added) = (Vec::new(), Vec::new());
        for (e, d) in &delta {
            let before = i64::from(self.installed.count.get(e).copied().unwrap_or(0));
            let after = before + d;
            if before == 0 && after > 0 {
                added.push(*e);
            } else if before > 0 && after <= 0 {
                removed.push(*e);
            }
        }
        removed.sort_unstable();
        added.sort_unstable();
        let script = self.config.table.change_script(&removed, &added);
        if !script.is_empty() {
            self.config.nft.apply(&script).await?;
            self.status.transactions.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(
                generation = snapshot.generation,
                added = added.len(),
                removed = removed.len(),
                "nftables elements updated"
            );
        }
        for (e, d) in delta {
            let count = self.installed.count.entry(e).or_default();
            *count = u32::try_from(i64::from(*count) + d).unwrap_or(0);
            if *count == 0 {
                self.installed.count.remove(&e);
            }
        }
        for (key, new) in desired {
            if new.is_empty() {
                self.installed.by_service.remove(&key);
            } else {
                self.installed.by_service.insert(key, new);
            }
        }
        Ok(())
    }

    /// Replaces the table with one holding every element of `snapshot`.
    async fn rebuild(&mut self, snapshot: &Snapshot) -> Result<(), InterceptError> {
        let mut next = Installed::default();
        for entry in snapshot.services() {
            let elements = rules::service_elements(entry);
            for e in &elements {
                *next.count.entry(*e).or_default() += 1;
            }
            if !elements.is_empty() {
                next.by_service.insert(entry.key.clone(), elements);
            }
        }
        let mut all: Vec<&Element> = next.count.keys().collect();
        all.sort_unstable();
        self.config.nft.apply(&self.config.table.replace_script(all)).await?;
        self.status.transactions.fetch_add(1, Ordering::Relaxed);
        tracing::info!(generation = snapshot.generation, elements = next.count.len(), "nftables table rebuilt");
        self.installed = next;
        Ok(())
    }

    /// Deletes the table (clean stop).
    pub async fn remove(self) -> Result<(), InterceptError> {
        self.config.nft.apply(&self.config.table.delete_script()).await?;
        tracing::info!(table = %self.config.table.name, "nftables table removed");
        Ok(())
    }

    /// Follows `snapshots` until `shutdown`, then deletes the table.
    pub async fn run(mut self, mut snapshots: watch::Receiver<Arc<Snapshot>>, shutdown: CancellationToken) {
        let mut open = true;
        loop {
            let snapshot = snapshots.borrow_and_update().clone();
            if let Err(error) = self.reconcile(&snapshot).await {
                tracing::warn!(%error, "cannot update the nftables table; rebuilding it in {RETRY:?}");
            }
            loop {
                tokio::select! {
                    biased;
                    _ = shutdown.cancelled() => {
                        if let Err(error) = self.remove().await {
                            tracing::warn!(%error, "cannot remove the nftables table");
                        }
                        return;
                    }
                    changed = snapshots.changed(), if open => {
                        if changed.is_err() {
                            open = false;
                            continue;
                        }
                        break;
                    }
                    _ = tokio::time::sleep(RETRY), if self.dirty => break,
                }
            }
        }
    }
}

//! Transparent interception of service addresses with nftables.
//!
//! The agent owns exactly one nftables table (`inet edgemesh` by default;
//! `inet edgemesh_nodeports`, node ports only, in mode `ebpf`) and, when
//! asked, one VIP device (`edge0`, [`device`]), and touches nothing else. The table redirects TCP connections to a service's
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
//! - [`config`]: the `intercept` section of the agent's config, and the
//!   [`InterceptSetup`] made from it.
//! - [`rules`]: pure: the elements of a service, the script that creates
//!   the table, the script of one change.
//! - [`nft`]: runs `nft -f -` (one script = one atomic transaction) and
//!   words its failures for the operator (not installed, no permission).
//! - [`device`]: the VIP device (`edge0`) over rtnetlink: the node-local
//!   DNS address and the VIPs as host addresses of this node.
//! - `claims`: what is in the kernel per service (elements, addresses),
//!   counted, so one change touches only what it changes.
//! - [`Interceptor`]: follows snapshots through `Snapshot::changes_since`;
//!   each new snapshot adds the device addresses that appeared, applies one
//!   transaction adding and deleting only the elements that changed, then
//!   deletes the addresses that went. On start it replaces a table and a
//!   device left behind by an earlier run, and deletes the table of the
//!   other mode's name if an earlier run in that mode left it; on clean
//!   stop it deletes both.
//!
//! After a failed step (someone deleted the table or the device, say) the
//! next attempt rebuilds the whole table from the snapshot, atomically,
//! resynchronises the device's addresses, and is retried every [`RETRY`]
//! until it succeeds.
#![forbid(unsafe_code)]
#![warn(clippy::unwrap_used)] // outside tests: an error with context, or an `expect` naming the invariant

mod claims;
pub mod config;
pub mod device;
pub mod nft;
pub mod rules;

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use edgemesh_core::{ServiceKey, Snapshot};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::claims::Claims;
pub use config::{InterceptConfig, InterceptMode, InterceptSetup};
pub use device::{DeviceError, VipDevice};
pub use nft::{InterceptError, Nft};
pub use rules::{Element, L4, TableScope, TableSpec};

/// Default table name (family `inet`).
pub const DEFAULT_TABLE: &str = "edgemesh";
/// Default name of the VIP device.
pub const DEFAULT_VIP_DEVICE: &str = "edge0";
/// Default port of the transparent listener.
pub const DEFAULT_PORT: u16 = 15006;
/// Default mark of the agent's own upstream connections ("EM").
pub const DEFAULT_MARK: u32 = 0x454d;
/// Default node-local DNS address, held by the VIP device in node mode.
pub const DEFAULT_DNS_ADDRESS: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(169, 254, 96, 16));
/// Pause before retrying after a failed transaction.
pub const RETRY: Duration = Duration::from_secs(2);

/// The VIP device's settings.
#[derive(Clone, Debug)]
pub struct DeviceSpec {
    pub name: String,
    /// Addresses the device holds whatever the services (the node-local
    /// DNS address), unless another device of the node has them.
    pub fixed: Vec<IpAddr>,
}

/// Live counters for readiness and the admin endpoint.
#[derive(Debug, Default)]
pub struct InterceptStatus {
    /// Generation of the last snapshot whose elements are in the table.
    pub applied_generation: AtomicU64,
    /// Elements in the table.
    pub elements: AtomicUsize,
    /// Addresses on the VIP device.
    pub addresses: AtomicUsize,
    /// Transactions applied since start.
    pub transactions: AtomicU64,
    /// Transactions that failed.
    pub failures: AtomicU64,
}

/// Owns the table (all service addresses in nftables mode, node ports only
/// beside the eBPF fast path) and the VIP device; see the crate docs.
pub struct Interceptor {
    config: InterceptSetup,
    status: Arc<InterceptStatus>,
    elements: Claims<Element>,
    device: Option<Device>,
    /// The table is in the kernel: always, but for a table not
    /// [kept empty](TableScope::kept_empty) that holds nothing.
    table_present: bool,
    /// The kernel state may differ from what is recorded: rebuild it whole.
    dirty: bool,
}

/// The VIP device with what is on it.
struct Device {
    link: VipDevice,
    /// The fixed addresses the device holds (those no other device had).
    fixed: Vec<IpAddr>,
    addresses: Claims<IpAddr>,
}

impl Interceptor {
    /// Replaces any table of this name (left by an earlier run) with an
    /// empty one, then makes the VIP device with its fixed addresses. An
    /// error here means interception cannot work at all (nft missing, no
    /// permission, no nat support, a foreign device of that name), and
    /// leaves neither table nor device behind.
    pub async fn start(config: InterceptSetup) -> Result<Self, InterceptError> {
        if let Some(table) = &config.table {
            // One transaction: the other mode's leftover goes as this one comes.
            let mut script = String::new();
            if let Some(other) = config.other_mode_table.as_deref().filter(|other| *other != table.name) {
                script = rules::TableSpec::delete_if_present_script(other);
            }
            script.push_str(&table.replace_script(&[]));
            if !table.scope.kept_empty() {
                // Made and deleted in one transaction: nft, the permission
                // and nat support are checked, and no table stays until a
                // node port needs it (see `table_present`).
                script.push_str(&table.delete_script());
            }
            config.nft.apply(&script).await?;
            tracing::info!(table = %table.name, scope = ?table.scope, port = table.port,
                mark = format_args!("{:#x}", table.mark), "nftables table inet {} in place", table.name);
        }
        let device = match &config.device {
            None => None,
            Some(spec) => match Device::create(spec).await {
                Ok(device) => Some(device),
                Err(e) => {
                    if let Some(table) = &config.table
                        && let Err(error) = config.nft.apply(&table.delete_script()).await
                    {
                        tracing::warn!(%error, "cannot remove the nftables table after a failed start");
                    }
                    return Err(e.into());
                }
            },
        };
        let status = Arc::new(InterceptStatus::default());
        if let Some(d) = &device {
            status.addresses.store(d.fixed.len(), Ordering::Relaxed);
        }
        let table_present = config.table.as_ref().is_some_and(|t| t.scope.kept_empty());
        Ok(Self { config, status, elements: Claims::default(), device, table_present, dirty: false })
    }

    pub fn status(&self) -> Arc<InterceptStatus> {
        self.status.clone()
    }

    /// Whether it owns a table (else the VIP device only).
    pub fn has_table(&self) -> bool {
        self.config.table.is_some()
    }

    /// Brings the table and the device in line with `snapshot`: the
    /// elements and addresses that changed since the last applied
    /// generation, or a full rebuild after a failure.
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
                self.status.elements.store(self.elements.len(), Ordering::Relaxed);
                if let Some(d) = &self.device {
                    self.status.addresses.store(d.fixed.len() + d.addresses.len(), Ordering::Relaxed);
                }
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
        let service = |key: &ServiceKey| snapshot.service(key);
        let elements = self.elements.plan(
            keys.iter().map(|k| (k.clone(), service(k).map(|e| self.elements_of(e)).unwrap_or_default())).collect(),
        );
        let addresses = self.device.as_ref().map(|d| {
            d.addresses
                .plan(keys.iter().map(|k| (k.clone(), service(k).map(|e| d.wants(e)).unwrap_or_default())).collect())
        });
        // New addresses first: a new element may DNAT to a new VIP.
        if let (Some(d), Some(change)) = (&self.device, &addresses) {
            for ip in &change.added {
                d.link.add(*ip).await?;
            }
        }
        let after = (self.elements.len() + elements.added.len()).saturating_sub(elements.removed.len());
        let (script, present) = match &self.config.table {
            // A table not kept empty comes with its first element and goes
            // with its last (absent, it holds none: all it will hold is `added`).
            Some(table) if !self.table_present && after > 0 => {
                let mut added: Vec<&Element> = elements.added.iter().collect();
                added.sort_unstable();
                (table.replace_script(added), true)
            }
            Some(table) if self.table_present && after == 0 && !table.scope.kept_empty() => {
                (table.delete_script(), false)
            }
            Some(table) => (table.change_script(&elements.removed, &elements.added), self.table_present),
            None => (String::new(), false),
        };
        if !script.is_empty() {
            self.config.nft.apply(&script).await?;
            self.table_present = present;
            self.status.transactions.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(
                generation = snapshot.generation,
                added = elements.added.len(),
                removed = elements.removed.len(),
                "nftables elements updated"
            );
        }
        self.elements.commit(elements);
        if let (Some(d), Some(change)) = (&mut self.device, addresses) {
            for ip in &change.removed {
                d.link.delete(*ip).await?;
            }
            if !change.added.is_empty() || !change.removed.is_empty() {
                tracing::debug!(device = d.link.name(), added = ?change.added, removed = ?change.removed,
                    "VIP device addresses updated");
            }
            d.addresses.commit(change);
        }
        Ok(())
    }

    /// Replaces the table with one holding every element of `snapshot`,
    /// and puts exactly the addresses of `snapshot` on the device (making
    /// it again if it went).
    async fn rebuild(&mut self, snapshot: &Snapshot) -> Result<(), InterceptError> {
        let elements = Claims::of_all(snapshot.services().map(|e| (e.key.clone(), self.elements_of(e))));
        if let Some(spec) = &self.config.device {
            let d = self.device.as_mut().expect("a device spec means a device");
            let addresses = Claims::of_all(snapshot.services().map(|e| (e.key.clone(), d.wants(e))));
            d.resync(spec, addresses).await?;
        }
        if let Some(table) = &self.config.table {
            let mut all: Vec<&Element> = elements.items().collect();
            all.sort_unstable();
            let present = !all.is_empty() || table.scope.kept_empty();
            let script = if present {
                table.replace_script(all)
            } else {
                rules::TableSpec::delete_if_present_script(&table.name)
            };
            self.config.nft.apply(&script).await?;
            self.table_present = present;
            self.status.transactions.fetch_add(1, Ordering::Relaxed);
            tracing::info!(generation = snapshot.generation, elements = elements.len(), "nftables table rebuilt");
        }
        self.elements = elements;
        Ok(())
    }

    /// The elements of `entry` the table holds (none without a table).
    fn elements_of(&self, entry: &edgemesh_core::ServiceEntry) -> Vec<Element> {
        self.config.table.as_ref().map(|t| t.elements(entry)).unwrap_or_default()
    }

    /// Deletes the table, then the device (clean stop).
    pub async fn remove(self) -> Result<(), InterceptError> {
        let table = match &self.config.table {
            Some(table) if !self.table_present => {
                // A node-port table that never held a node port; one a
                // failed transaction may have left goes too.
                self.config.nft.apply(&rules::TableSpec::delete_if_present_script(&table.name)).await
            }
            Some(table) => self.config.nft.apply(&table.delete_script()).await.inspect(|()| {
                tracing::info!(table = %table.name, "nftables table removed");
            }),
            None => Ok(()),
        };
        if let Some(d) = self.device {
            d.link.remove().await?;
        }
        table
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
                            tracing::warn!(%error, "cannot remove the nftables table or the VIP device");
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

impl Device {
    /// Makes the device and puts the fixed addresses on it; removes it
    /// again if that fails.
    async fn create(spec: &DeviceSpec) -> Result<Self, DeviceError> {
        let link = VipDevice::create(&spec.name).await?;
        let mut device = Device { link, fixed: Vec::new(), addresses: Claims::default() };
        if let Err(e) = device.add_fixed(spec).await {
            if let Err(error) = device.link.remove().await {
                tracing::warn!(%error, "cannot remove the VIP device after a failed start");
            }
            return Err(e);
        }
        Ok(device)
    }

    /// The addresses of `entry` the device should hold.
    fn wants(&self, entry: &edgemesh_core::ServiceEntry) -> Vec<IpAddr> {
        let mut ips = device::service_addresses(entry);
        ips.retain(|ip| self.link.can_hold(*ip));
        ips
    }

    async fn add_fixed(&mut self, spec: &DeviceSpec) -> Result<(), DeviceError> {
        self.fixed.clear();
        let fixed: Vec<IpAddr> =
            spec.fixed.iter().copied().filter(|ip| !device::needs_no_device(*ip) && self.link.can_hold(*ip)).collect();
        for ip in fixed {
            if self.link.held_elsewhere(ip).await? {
                tracing::info!(device = %spec.name, address = %ip, "another device holds the address already");
                continue;
            }
            self.link.add(ip).await?;
            self.fixed.push(ip);
        }
        Ok(())
    }

    /// Makes the device's addresses exactly the fixed ones and
    /// `addresses`; makes the device again first if it is gone.
    async fn resync(&mut self, spec: &DeviceSpec, addresses: Claims<IpAddr>) -> Result<(), DeviceError> {
        if !self.link.is_present().await? {
            tracing::warn!(device = %spec.name, "the VIP device went away; making it again");
            self.link = VipDevice::create(&spec.name).await?;
            self.add_fixed(spec).await?;
        }
        let want: std::collections::HashSet<IpAddr> = addresses.items().chain(&self.fixed).copied().collect();
        let have: std::collections::HashSet<IpAddr> = self.link.addresses().await?.into_iter().collect();
        for ip in want.difference(&have) {
            self.link.add(*ip).await?;
        }
        for ip in have.difference(&want) {
            self.link.delete(*ip).await?;
        }
        tracing::info!(device = %spec.name, addresses = want.len(), added = want.difference(&have).count(),
            removed = have.difference(&want).count(), "VIP device addresses resynchronised");
        self.addresses = addresses;
        Ok(())
    }
}

//! Mode `ebpf`: the kernel fast path (issue #15). BPF programs on the
//! cgroup's socket hooks connect clients of a service straight to an
//! endpoint on this node; what the kernel cannot decide goes to the
//! service's VIP, where the proxy listens as in mode `none` (the VIP
//! device holds the VIPs, as in nftables mode, so pods reach them).
//!
//! - [`start`]: checks support and loads or adopts the pinned programs;
//!   without support, says what is missing and either fails or, with
//!   `intercept.fallback: nftables`, switches the agent to nftables mode.
//! - [`routes`]: pure: a service's map entries.
//! - [`FastPathTask`]: follows the snapshots (once the proxy serves them,
//!   so the VIP a route falls back to is listened on), per changed service,
//!   and the proxy's ejections; on stop, leaves the pinned state
//!   (`keepOnExit`) or removes it.
//!
//! Node ports stay on nftables: a table of node ports only redirects them
//! to the proxy's transparent listener (see `interception`).

mod routes;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::Context;
use edgemesh_core::{ServiceKey, Snapshot};
use edgemesh_ebpf::{FastPath, Options, ServicePort};
use edgemesh_intercept::config::Fallback;
use edgemesh_intercept::{InterceptConfig, InterceptMode, InterceptStatus};
use edgemesh_proxy::ProxyStatus;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use self::routes::{Route, ViaAgent, routes};

/// How often services held on the agent by ejections are looked at again.
const EJECTION_CHECK: Duration = Duration::from_secs(1);
/// Pause before retrying after a failed map write.
const RETRY: Duration = edgemesh_intercept::RETRY;

/// Loads (or adopts) the fast path when `intercept.mode` is `ebpf`. Without
/// the kernel support or capabilities, with `intercept.fallback: nftables`,
/// switches `intercept` to nftables mode and returns why; else fails
/// saying what is missing.
pub(super) fn start(intercept: &mut InterceptConfig) -> anyhow::Result<Start> {
    if intercept.mode != InterceptMode::Ebpf {
        return Ok(Start::Off);
    }
    // Capabilities and kernel first: every missing thing is named at once.
    let supported = edgemesh_ebpf::support::check().and_then(|()| check_cgroup(intercept.cgroup_path.as_deref()));
    let loaded = supported.and_then(|()| {
        // Host-only (loopback) endpoints are for clients in the agent's own
        // network namespace: the host's, where it runs with hostNetwork.
        let (cgroup, pin_dir) = (intercept.cgroup_path.clone(), intercept.bpf_pin_path.clone());
        FastPath::start(Options { cgroup, pin_dir, host_netns: None })
    });
    match loaded {
        Ok(fast) => {
            tracing::info!(cgroup = %fast.cgroup().display(), pins = %intercept.bpf_pin_path.display(),
                adopted = fast.adopted(), "kernel fast path attached");
            Ok(Start::Running(Box::new(fast)))
        }
        Err(e @ (edgemesh_ebpf::Error::Unsupported(_) | edgemesh_ebpf::Error::Cgroup { .. }))
            if intercept.fallback == Fallback::Nftables =>
        {
            let why = e.to_string();
            tracing::warn!(reason = %why, "intercept.mode ebpf is not possible here: running nftables mode instead (intercept.fallback: nftables)");
            intercept.mode = InterceptMode::Nftables;
            // Settings only nftables mode reads were not checked for ebpf
            // (the fallback key itself is fine: it brought us here).
            let problems = InterceptConfig { fallback: Fallback::None, ..intercept.clone() }.problems();
            if !problems.is_empty() {
                anyhow::bail!("cannot fall back to nftables mode: {}", problems.join("; "));
            }
            Ok(Start::FellBack(why))
        }
        Err(e @ (edgemesh_ebpf::Error::Unsupported(_) | edgemesh_ebpf::Error::Cgroup { .. })) => Err(e).context(
            "cannot start the kernel fast path (intercept.mode ebpf; with intercept.fallback: nftables the agent runs nftables mode instead)",
        ),
        Err(e) => Err(e).context("cannot start the kernel fast path (intercept.mode ebpf)"),
    }
}

/// What [`start`] did.
pub(super) enum Start {
    /// Not asked for.
    Off,
    Running(Box<FastPath>),
    /// Not supported here: nftables mode, for this reason.
    FellBack(String),
}

/// `intercept.cgroupPath`, if set, must be a directory of a cgroup v2
/// filesystem (a v1 controller's directory or any other path attaches
/// nothing useful; in a container the host's hierarchy is often mounted
/// elsewhere than the first cgroup2 mount).
fn check_cgroup(path: Option<&Path>) -> Result<(), edgemesh_ebpf::Error> {
    /// `CGROUP2_SUPER_MAGIC` of linux/magic.h.
    const CGROUP2: u64 = 0x6367_7270;
    let Some(path) = path else { return Ok(()) };
    let not_v2 = |why: String| edgemesh_ebpf::Error::Cgroup {
        path: path.into(),
        error: std::io::Error::new(std::io::ErrorKind::InvalidInput, why),
    };
    let fs = rustix::fs::statfs(path).map_err(|e| not_v2(format!("intercept.cgroupPath: {e}")))?;
    // f_type is i64 or u64 by target.
    #[allow(clippy::useless_conversion, clippy::unnecessary_fallible_conversions)]
    if u64::try_from(fs.f_type).ok() != Some(CGROUP2) || !path.is_dir() {
        return Err(not_v2("intercept.cgroupPath is not a directory of a cgroup v2 filesystem (cgroup2)".into()));
    }
    Ok(())
}

/// Keeps the maps in line with the snapshots; see the module docs.
pub(super) struct FastPathTask {
    fast: Box<FastPath>,
    node: String,
    keep_on_exit: bool,
    pins: PathBuf,
    proxy: Arc<ProxyStatus>,
    status: Arc<InterceptStatus>,
    /// The routes each service has in the maps.
    written: HashMap<ServiceKey, Vec<Route>>,
    /// Services on the agent because of ejections: looked at again every
    /// [`EJECTION_CHECK`], to go back to the kernel once the proxy lets
    /// the endpoints in again.
    held: HashSet<ServiceKey>,
    /// Rebuild from the whole snapshot (at start, after a failure).
    dirty: bool,
    /// Whether the entries no service wants (left by an earlier run) were
    /// removed: after the first synced snapshot.
    swept: bool,
}

impl FastPathTask {
    pub(super) fn new(fast: Box<FastPath>, config: &InterceptConfig, node: &str, proxy: Arc<ProxyStatus>) -> Self {
        Self {
            fast,
            node: node.to_owned(),
            keep_on_exit: config.keep_on_exit,
            pins: config.bpf_pin_path.clone(),
            proxy,
            status: Arc::new(InterceptStatus::default()),
            written: HashMap::new(),
            held: HashSet::new(),
            dirty: true,
            swept: false,
        }
    }

    /// Map entries written and the generation they are of, for `/readyz`.
    pub(super) fn status(&self) -> Arc<InterceptStatus> {
        self.status.clone()
    }

    /// Follows `snapshots` (gated on the proxy) until `release`, then
    /// leaves or removes the pinned state.
    pub(super) async fn run(mut self, mut snapshots: watch::Receiver<Arc<Snapshot>>, release: CancellationToken) {
        let mut open = true;
        let mut check = tokio::time::interval(EJECTION_CHECK);
        check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let snapshot = snapshots.borrow_and_update().clone();
            self.reconcile(&snapshot);
            loop {
                tokio::select! {
                    biased;
                    _ = release.cancelled() => return self.stop(),
                    changed = snapshots.changed(), if open => {
                        if changed.is_err() {
                            open = false;
                            continue;
                        }
                        break;
                    }
                    _ = tokio::time::sleep(RETRY), if self.dirty => break,
                    _ = check.tick(), if !self.held.is_empty() => {
                        let snapshot = snapshots.borrow().clone();
                        let held: Vec<ServiceKey> = self.held.iter().cloned().collect();
                        if let Err(error) = held.iter().try_for_each(|key| self.apply_service(&snapshot, key)) {
                            self.failed(&error);
                        }
                    }
                }
            }
        }
    }

    fn reconcile(&mut self, snapshot: &Snapshot) {
        let since = self.status.applied_generation.load(Ordering::Acquire);
        let keys = if self.dirty || !self.swept { None } else { snapshot.changes_since(since) };
        let result = match keys {
            Some(keys) => {
                let keys: HashSet<ServiceKey> = keys.into_iter().collect();
                keys.iter().try_for_each(|key| self.apply_service(snapshot, key))
            }
            None => self.rebuild(snapshot),
        };
        match result {
            Ok(()) => {
                self.dirty = false;
                self.status.elements.store(self.fast.writer().ports().len(), Ordering::Relaxed);
                self.status.applied_generation.store(snapshot.generation, Ordering::Release);
            }
            Err(error) => self.failed(&error),
        }
    }

    fn failed(&mut self, error: &edgemesh_ebpf::Error) {
        tracing::warn!(%error, "cannot update the fast path's maps; rewriting them in {RETRY:?}");
        self.dirty = true;
        self.status.failures.fetch_add(1, Ordering::Relaxed);
    }

    /// Every service of `snapshot`; once it is synced, also removes what
    /// no service wants (entries of services that went while the agent
    /// was down, or that a failure left).
    fn rebuild(&mut self, snapshot: &Snapshot) -> Result<(), edgemesh_ebpf::Error> {
        for entry in snapshot.services() {
            self.apply_service(snapshot, &entry.key)?;
        }
        let gone: Vec<ServiceKey> = self.written.keys().filter(|k| snapshot.service(k).is_none()).cloned().collect();
        for key in &gone {
            self.apply_service(snapshot, key)?;
        }
        if !snapshot.synced {
            return Ok(());
        }
        let wanted: HashSet<ServicePort> = self.written.values().flatten().map(|r| r.port).collect();
        let stale: Vec<ServicePort> = self.fast.writer().ports().into_iter().filter(|p| !wanted.contains(p)).collect();
        for port in &stale {
            self.fast.writer().remove(*port)?;
        }
        if !stale.is_empty() {
            tracing::info!(removed = stale.len(), "removed fast path entries of services that are gone");
        }
        self.swept = true;
        tracing::debug!(generation = snapshot.generation, ports = wanted.len(), "fast path maps rewritten");
        Ok(())
    }

    /// Brings one service's entries in line with `snapshot`: new and
    /// changed routes written (slots before the count, by the writer),
    /// routes that went removed, and the connected UDP sockets to
    /// endpoints that left a UDP port destroyed.
    fn apply_service(&mut self, snapshot: &Snapshot, key: &ServiceKey) -> Result<(), edgemesh_ebpf::Error> {
        let entry = snapshot.service(key);
        let ejected = if entry.is_some() { self.ejected(key) } else { HashSet::new() };
        let new = entry.map(|e| routes(e, &self.node, &ejected)).unwrap_or_default();
        // Endpoints a connected UDP socket may keep: still ready, not ejected.
        let staying: HashSet<SocketAddr> = entry
            .iter()
            .flat_map(|e| e.ports.iter())
            .flat_map(|p| p.backends.iter().map(|b| b.addr))
            .filter(|a| !ejected.contains(a))
            .collect();
        let old = self.written.remove(key).unwrap_or_default();
        if new.iter().any(|r| r.via_agent == Some(ViaAgent::Ejected)) {
            self.held.insert(key.clone());
        } else {
            self.held.remove(key);
        }
        let writer = self.fast.writer();
        for route in new.iter().filter(|r| !old.contains(r)) {
            writer.set(route.port, &route.service)?;
        }
        let mut left: Vec<SocketAddr> = Vec::new();
        for route in &old {
            if !new.iter().any(|r| r.port == route.port) {
                writer.remove(route.port)?;
            }
            if route.port.protocol == edgemesh_ebpf::Protocol::Udp {
                left.extend(route.service.backends.iter().map(|b| b.addr).filter(|a| !staying.contains(a)));
            }
        }
        if old != new {
            tracing::debug!(service = %key, routes = ?new, "fast path entries updated");
        }
        if !new.is_empty() {
            self.written.insert(key.clone(), new);
        }
        left.sort_unstable();
        left.dedup();
        if !left.is_empty() {
            // Only the sockets the programs sent there (the agent's own,
            // and clients of the pod IP itself, are left alone).
            match self.fast.writer().destroy_udp_sockets_to(&left) {
                Ok(n) => {
                    tracing::debug!(service = %key, endpoints = ?left, sockets = n, "UDP sockets to removed endpoints destroyed")
                }
                Err(error) => {
                    tracing::warn!(service = %key, endpoints = ?left, %error, "cannot destroy the UDP sockets to removed endpoints")
                }
            }
        }
        Ok(())
    }

    /// The endpoints of `key` the proxy skips for now.
    fn ejected(&self, key: &ServiceKey) -> HashSet<SocketAddr> {
        let ports = self.proxy.pools.service_health(key).unwrap_or_default();
        ports.iter().flat_map(|p| &p.endpoints).filter(|e| e.ejected_for_seconds.is_some()).map(|e| e.address).collect()
    }

    /// Leaves the programs and maps pinned (`keepOnExit`), so local
    /// traffic flows while the agent is away, or removes them.
    fn stop(self) {
        if self.keep_on_exit {
            tracing::info!(pins = %self.pins.display(),
                "kernel fast path left in place (intercept.keepOnExit): local service traffic keeps flowing; the next start adopts it");
            return;
        }
        match (*self.fast).remove() {
            Ok(()) => tracing::info!(pins = %self.pins.display(), "kernel fast path detached and unpinned"),
            Err(error) => tracing::warn!(%error, "cannot remove the kernel fast path"),
        }
    }
}

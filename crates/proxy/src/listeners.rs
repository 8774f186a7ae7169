//! Listening sockets that follow the registry.
//!
//! The [`Reconciler`] keeps one listener per service VIP, port and protocol
//! (a TCP listening socket, or a UDP socket served by [`crate::udp`]). For
//! each new snapshot it visits only the services named by
//! `Snapshot::changes_since` (every service when the changelog no longer
//! reaches back far enough), so the work per update depends on what changed.
//!
//! - New VIP:port: bind (`SO_REUSEADDR`, `IP_FREEBIND` so the VIP need not
//!   be on a device yet) a TCP port as one socket that a group can join
//!   (`SO_REUSEPORT`, see `bind`), and add it to the [`Acceptor`], whose
//!   task on each worker accepts for every TCP listener: at its first
//!   connection the listener grows to a socket per worker (a UDP port gets
//!   a task of its own on the main runtime).
//! - Same VIP:port, new endpoints or strategy: swap the listener's targets in
//!   place; no re-bind, established connections untouched.
//! - Gone VIP:port: `shutdown(SHUT_RD)` on the listening sockets, which on
//!   Linux stops listening at once (queued and new connects are refused).
//!   Established connections are separate tasks and carry on. A UDP port's
//!   task owns its sessions: they end with it.
//! - With interception on (`ProxyConfig::transparent`), TCP ports are not
//!   bound: their pools are reached through [`crate::transparent`], under
//!   every address of the service (VIP and cluster IPs), and under its node
//!   port on any of the node's addresses. UDP ports keep their VIP
//!   listeners (nftables DNATs UDP to a cluster IP to them). Beside the
//!   kernel fast path (`Transparent::NodePorts`) every VIP listener is
//!   bound, and a TCP one is also found under its node port.
//! - A bind failure is retried on every later reconcile and on a timer;
//!   success after failures is logged at info. Failures are reported as one
//!   warning per reconcile pass with their count and the first error, at
//!   most once a minute (not one line per listener: 100,000 services would
//!   log 80,000 lines).
//! - Listening sockets are capped by a budget derived from the open-files
//!   limit ([`crate::ProxyConfig::max_listeners_for_fd_limit`]): beyond it a
//!   listener waits without trying `socket(2)`, so DNS, the admin endpoint,
//!   manifest reads and proxied connections keep their descriptors. Its
//!   service still resolves in DNS; interception (`--intercept nftables`)
//!   serves any number of services through one socket.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use edgemesh_core::{Protocol, ServiceEntry, ServiceKey, Snapshot};
use tokio::task::JoinHandle;

use crate::acceptor::{Acceptor, SocketBudget, Token};
use crate::bind::{bind_udp, tcp_joinable};
use crate::connection::Shared;
use crate::error::ProxyError;
use crate::pool::{Pool, Targets};
use crate::transparent::Transparent;

mod desired;
use desired::{changed_between, desired_listeners, routes_of};

/// One VIP:port/protocol of a service (its address is the pool's). One
/// per service port stays for as long as the service: 48 bytes.
struct Listener {
    protocol: Protocol,
    pool: Arc<Pool>,
    bound: Option<Bound>,
    /// Consecutive failed binds (0 while bound).
    bind_failures: u32,
    /// False for TCP ports served by the transparent listener.
    listen: bool,
    /// Addresses under which the transparent listener finds this pool.
    routes: Box<[SocketAddr]>,
}

impl Listener {
    fn addr(&self) -> SocketAddr {
        self.pool.addr
    }

    fn waiting_for_bind(&self) -> bool {
        self.listen && self.bound.is_none()
    }
}

enum Bound {
    /// A TCP listener's sockets in the acceptor (which counts them in the
    /// budget).
    Tcp(Token),
    /// A UDP socket's task (which owns its sessions).
    Udp(JoinHandle<()>),
}

impl Bound {
    /// Stops listening now, its sockets back in `budget`; a UDP task, with
    /// its sessions, ends shortly after (its handle is returned to wait for
    /// it).
    fn close(self, acceptor: Option<&Acceptor>, budget: &SocketBudget) -> Option<JoinHandle<()>> {
        match self {
            Bound::Tcp(token) => {
                acceptor.expect("TCP listeners are in the acceptor").remove(token);
                None
            }
            Bound::Udp(task) => {
                task.abort();
                budget.release(1);
                Some(task)
            }
        }
    }
}

/// Owns every listener; driven by [`crate::Proxy::run`].
pub(crate) struct Reconciler {
    shared: Arc<Shared>,
    /// Accepts for every bound TCP listener; started with the first.
    acceptor: Option<Acceptor>,
    services: HashMap<ServiceKey, Box<[Listener]>>,
    /// Services with at least one listener waiting to be bound.
    unbound: HashSet<ServiceKey>,
    /// Listeners waiting to be bound (kept as a count, so publishing it
    /// costs nothing per event however many are waiting).
    waiting: usize,
    /// Listening sockets open now and allowed at once: one per listener,
    /// and for a TCP listener that gets connections a socket per worker
    /// while they fit in half the budget (see `acceptor`).
    budget: Arc<SocketBudget>,
    /// The snapshot last reconciled (the one the proxy serves, so keeping
    /// it costs nothing): when the changelog does not reach back far
    /// enough, the services to visit are those whose entries differ from it.
    applied: Option<Arc<Snapshot>>,
    /// New bind failures of the current pass, reported once at its end.
    report: BindReport,
    /// When bind failures were last logged at warn: a load of 100,000
    /// services reconciles in many passes, and one warning says it all.
    last_warned: Option<std::time::Instant>,
}

/// How often bind failures are logged at warn at most (debug otherwise).
const BIND_WARN_INTERVAL: Duration = Duration::from_secs(60);

/// Bind failures of one reconcile pass, reported as a single warning.
#[derive(Default)]
struct BindReport {
    /// Listeners that failed for the first time.
    failed: usize,
    /// Of those, listeners that were over the budget (no socket tried).
    over_budget: usize,
    first: Option<String>,
}

impl Reconciler {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        let open_files = rustix::process::getrlimit(rustix::process::Resource::Nofile).current.unwrap_or(1 << 20);
        Self::with_max_listeners(shared, crate::ProxyConfig::max_listeners_for_fd_limit(open_files))
    }

    pub(crate) fn with_max_listeners(shared: Arc<Shared>, max_listeners: usize) -> Self {
        Self {
            shared,
            acceptor: None,
            services: HashMap::new(),
            unbound: HashSet::new(),
            waiting: 0,
            budget: Arc::new(SocketBudget::new(max_listeners)),
            applied: None,
            report: BindReport::default(),
            last_warned: None,
        }
    }

    /// Binds one listener within the budget, noting a failure for the report.
    fn bind_one(&mut self, listener: &mut Listener) -> bool {
        let first_failure = listener.bind_failures == 0;
        let over_budget = !self.budget.has_room();
        let error = if over_budget { None } else { self.try_bind(listener) };
        let Some(error) = error.or_else(|| over_budget.then(String::new)) else { return true };
        listener.bind_failures = listener.bind_failures.saturating_add(1);
        if first_failure {
            self.report.failed += 1;
            if over_budget {
                self.report.over_budget += 1;
            } else if self.report.first.is_none() {
                self.report.first = Some(error);
            }
        }
        false
    }

    /// Logs the bind failures of the pass that just ended, once.
    fn flush_report(&mut self) {
        let report = std::mem::take(&mut self.report);
        if report.failed == 0 {
            return;
        }
        let budget = self.budget.max();
        if self.last_warned.is_some_and(|t| t.elapsed() < BIND_WARN_INTERVAL) {
            tracing::debug!(failed = report.failed, waiting = self.waiting, budget, first = ?report.first,
                "more service listeners could not be bound; retrying");
            return;
        }
        self.last_warned = Some(std::time::Instant::now());
        match report.first {
            Some(first) => tracing::warn!(
                failed = report.failed,
                over_budget = report.over_budget,
                waiting = self.waiting,
                budget,
                "{} service listeners could not be bound (first: {first}); their services still resolve in DNS; \
                 retrying (further failures are logged at most once a minute)",
                report.failed
            ),
            None => tracing::warn!(
                failed = report.failed,
                waiting = self.waiting,
                budget,
                "{} service listeners wait for a socket: the budget of {budget} listening sockets (from the \
                 open-files limit) is used up; their services still resolve in DNS but are not proxied. Raise the \
                 open-files limit or use --intercept nftables (one socket for all services); further failures are \
                 logged at most once a minute",
                report.failed
            ),
        }
    }

    /// Brings listeners in line with `snapshot`, given that everything up to
    /// generation `since` is already applied.
    pub(crate) fn reconcile(&mut self, snapshot: &Arc<Snapshot>, since: u64) {
        let keys: Vec<ServiceKey> = match snapshot.changes_since(since) {
            Some(mut keys) => {
                keys.sort_unstable();
                keys.dedup();
                keys
            }
            None => {
                tracing::debug!(since, generation = snapshot.generation, "changelog too short; full reconcile");
                changed_between(self.applied.as_deref(), snapshot)
            }
        };
        self.applied = Some(snapshot.clone());
        // Earlier failures first, so a bind that fails below is not retried
        // (and logged) twice in one pass.
        self.retry_failed_binds();
        for key in &keys {
            self.reconcile_service(key, snapshot.service(key).map(|e| &**e));
        }
        self.publish_counts();
        self.flush_report();
        tracing::trace!(
            generation = snapshot.generation,
            changed = keys.len(),
            routes = self.shared.routes.len(),
            "listeners reconciled"
        );
    }

    pub(crate) fn has_failed_binds(&self) -> bool {
        !self.unbound.is_empty()
    }

    /// Tries again to bind every listener whose bind failed (none while the
    /// listener budget is used up: that costs nothing per waiting listener).
    pub(crate) fn retry_failed_binds(&mut self) {
        if self.unbound.is_empty() || !self.budget.has_room() {
            return;
        }
        for key in std::mem::take(&mut self.unbound) {
            let Some(mut listeners) = self.services.remove(&key) else { continue };
            let mut still_unbound = false;
            for l in listeners.iter_mut().filter(|l| l.waiting_for_bind()) {
                if self.bind_one(l) {
                    self.waiting = self.waiting.saturating_sub(1);
                } else {
                    still_unbound = true;
                }
            }
            self.services.insert(key.clone(), listeners);
            if still_unbound {
                self.unbound.insert(key);
            }
        }
        self.publish_counts();
        self.flush_report();
    }

    /// Closes every listener and waits for their tasks to end.
    pub(crate) async fn close_all(mut self) {
        let acceptor = self.acceptor.take();
        let tasks: Vec<JoinHandle<()>> = self
            .services
            .drain()
            .flat_map(|(_, listeners)| listeners)
            .filter_map(|l| l.bound.and_then(|b| b.close(acceptor.as_ref(), &self.budget)))
            .collect();
        if let Some(acceptor) = acceptor {
            acceptor.close().await;
        }
        for task in tasks {
            let _ = task.await;
        }
        self.unbound.clear();
        self.waiting = 0;
        self.shared.status.listeners.store(0, Ordering::Relaxed);
        self.shared.status.pools.clear();
        self.publish_counts();
    }

    fn reconcile_service(&mut self, key: &ServiceKey, entry: Option<&ServiceEntry>) {
        let scope = self.shared.config.transparent;
        let desired = desired_listeners(entry, scope == Transparent::Every);
        let current = self.services.remove(key).map(Vec::from).unwrap_or_default();
        self.waiting = self.waiting.saturating_sub(current.iter().filter(|l| l.waiting_for_bind()).count());
        let old_routes: Vec<SocketAddr> = current.iter().flat_map(|l| l.routes.iter().copied()).collect();
        // The label the service's pools count under, kept while it has any
        // (asked for when its first listener is made).
        let mut label = current.first().map(|l| l.pool.metrics.service.clone());
        // The service's connection count, which its pools share (proxy.maxConnectionsPerService).
        let service_connections = current.first().map_or_else(Default::default, |l| l.pool.service_connections.clone());
        let had_listeners = label.is_some();
        let mut next: Vec<Listener> = Vec::with_capacity(desired.len());
        let mut gone: Vec<Listener> = Vec::new();
        for listener in current {
            if desired.iter().any(|(addr, protocol, _)| *addr == listener.addr() && *protocol == listener.protocol) {
                next.push(listener);
            } else {
                gone.push(listener);
            }
        }
        for listener in &mut gone {
            if let Some(bound) = listener.bound.take() {
                tracing::debug!(service = %key, listener = %listener.pool.addr, protocol = ?listener.protocol,
                    "service port gone; closing listener");
                drop(bound.close(self.acceptor.as_ref(), &self.budget));
                self.shared.status.listeners.fetch_sub(1, Ordering::Relaxed);
            }
        }
        let shared = self.shared.clone();
        let node = &shared.config.node_name;
        let mut unbound = false;
        for (addr, protocol, port) in desired {
            let entry = entry.expect("desired listeners come from an entry");
            let targets = Targets::for_port(entry, port, addr.ip(), node);
            let tcp = protocol == Protocol::Tcp;
            let routes = if tcp { routes_of(entry, port, addr, scope) } else { Box::default() };
            // Served through the transparent listener only.
            let routed = tcp && scope == Transparent::Every;
            if let Some(existing) = next.iter_mut().find(|l| l.addr() == addr && l.protocol == protocol) {
                let backends = targets.backends.len();
                if existing.pool.update(targets) {
                    tracing::debug!(service = %key, listener = %addr, backends, "endpoints updated");
                }
                existing.routes = routes;
                unbound |= existing.waiting_for_bind();
                continue;
            }
            let service = label.get_or_insert_with(|| shared.metrics.service_label(key)).clone();
            let metrics = shared.metrics.port(service, port.port, protocol);
            let pool = Arc::new(
                Pool::new(key.clone(), addr, targets)
                    .with_metrics(metrics)
                    .with_service_connections(service_connections.clone()),
            );
            let mut listener = Listener { protocol, pool, bound: None, bind_failures: 0, listen: !routed, routes };
            if listener.listen {
                unbound |= !self.bind_one(&mut listener);
            } else {
                tracing::debug!(service = %key, addresses = ?listener.routes, "served through the transparent listener");
            }
            next.push(listener);
        }
        let new_routes: Vec<(SocketAddr, Arc<Pool>)> =
            next.iter().flat_map(|l| l.routes.iter().map(|a| (*a, l.pool.clone()))).collect();
        self.shared.routes.replace(&old_routes, &new_routes);
        self.shared.status.pools.set(key, next.iter().map(|l| (l.protocol, l.pool.clone())).collect());
        self.waiting += next.iter().filter(|l| l.waiting_for_bind()).count();
        if unbound {
            self.unbound.insert(key.clone());
        } else {
            self.unbound.remove(key);
        }
        self.remove_series(&gone, &next);
        if next.is_empty() && had_listeners {
            self.shared.metrics.release_service(key);
        }
        if !next.is_empty() {
            self.services.insert(key.clone(), next.into_boxed_slice());
        }
    }

    /// Removes the series of the service ports whose last listener is in
    /// `gone` (a port served in both families keeps them while one is left).
    fn remove_series(&self, gone: &[Listener], next: &[Listener]) {
        for (i, listener) in gone.iter().enumerate() {
            let (port, protocol) = (listener.pool.port, listener.protocol);
            let same = |l: &Listener| l.pool.port == port && l.protocol == protocol;
            if next.iter().any(same) || gone[..i].iter().any(same) {
                continue;
            }
            let port_gone = !next.iter().any(|l| l.pool.port == port);
            self.shared.metrics.remove_port(&listener.pool.metrics.service, port, protocol, port_gone);
            if let (Some(http), Protocol::Tcp) = (&self.shared.http, protocol) {
                http.port_removed(&listener.pool.metrics.service, port);
            }
        }
    }

    /// Binds `listener` and hands it to the acceptor (TCP) or its own task
    /// (UDP); the error (for the pass's report) if the bind failed.
    fn try_bind(&mut self, listener: &mut Listener) -> Option<String> {
        let shared = &self.shared;
        let bound = match listener.protocol {
            Protocol::Udp => bind_udp(listener.addr()).map(|socket| {
                self.budget.charge(1);
                Bound::Udp(tokio::spawn(crate::udp::serve(Arc::new(socket), listener.pool.clone(), shared.clone())))
            }),
            _ => {
                if self.acceptor.is_none() {
                    match Acceptor::start(shared.clone(), self.budget.clone()) {
                        Ok(acceptor) => self.acceptor = Some(acceptor),
                        Err(e) => return Some(format!("cannot start accepting connections: {e}")),
                    }
                }
                let acceptor = self.acceptor.as_ref().expect("started above");
                // One socket, joinable: the acceptor adds a socket per
                // worker when the first connection comes.
                let grow = acceptor.workers() > 1;
                tcp_joinable(listener.addr(), grow)
                    .and_then(|socket| acceptor.add(vec![socket], listener.pool.clone(), grow))
                    .map(Bound::Tcp)
            }
        };
        match bound {
            Ok(bound) => {
                if listener.bind_failures > 0 {
                    tracing::info!(service = %listener.pool.service, listener = %listener.addr(), protocol = ?listener.protocol,
                        "listening after {} failed attempts", listener.bind_failures);
                } else {
                    tracing::debug!(service = %listener.pool.service, listener = %listener.addr(), protocol = ?listener.protocol, "listening");
                }
                listener.bind_failures = 0;
                listener.bound = Some(bound);
                shared.status.listeners.fetch_add(1, Ordering::Relaxed);
                None
            }
            Err(source) => {
                let error = ProxyError::Bind { service: listener.pool.service.clone(), addr: listener.addr(), source };
                tracing::debug!("{error}; retrying");
                Some(error.to_string())
            }
        }
    }

    /// Publishes the number of listeners waiting for a bind (the number
    /// bound is counted as sockets are bound and closed).
    fn publish_counts(&self) {
        self.shared.status.bind_failures.store(self.waiting, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A listener lives as long as its service port (10,000 at 10,000
    /// services): its address is the pool's, not a second copy.
    #[test]
    fn a_listener_stays_small() {
        assert!(std::mem::size_of::<Listener>() <= 48, "{} bytes", std::mem::size_of::<Listener>());
    }
}

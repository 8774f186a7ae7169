//! What the dispatcher keeps per service port: its counters, its retry
//! budget, and per endpoint the load figures of `LeastRequest` and the
//! pooled connections. Kept in the port's [`Pool`] (its extension slot),
//! so it lives exactly as long as the port's listener and its
//! connections, and a request finds it without a lookup.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::ThreadId;
use std::time::Duration;

use edgemesh_core::LbStrategy;
use edgemesh_proxy::balance::ewma::PeakEwma;
use edgemesh_proxy::pool::{Pool, Targets};
use tokio::time::Instant;

use super::lean::LeanIdle;
use super::metrics::{DispatchMetrics, PortCounters};
use super::retry::Budget;
use super::upstream::{Idle, Protocol, Sender};
use crate::HttpConfig;

/// A service port's dispatch state.
pub struct PortState {
    pub counters: PortCounters,
    budget: Mutex<Budget>,
    /// Start of the budget's seconds.
    epoch: Instant,
    endpoints: Mutex<Endpoints>,
    /// The random stream of `LeastRequest`'s draws.
    rng: AtomicU64,
}

#[derive(Default)]
struct Endpoints {
    by_addr: HashMap<SocketAddr, Endpoint, BuildHasherDefault<AddrHasher>>,
    /// The targets the map was last pruned against (by address).
    pruned_for: usize,
}

struct Endpoint {
    load: PeakEwma,
    idle: Idle,
    /// Idle connections of the lean exchange.
    lean: Arc<LeanIdle>,
    /// Held while a connection that others will share (HTTP/2) is opened.
    opening: Arc<tokio::sync::Mutex<()>>,
}

impl PortState {
    /// The state of `pool`'s port, made on its first request.
    pub fn of<'p>(pool: &'p Pool, config: &HttpConfig, metrics: &Arc<DispatchMetrics>) -> &'p PortState {
        let make = || {
            let service = pool.service_label().unwrap_or_else(|| pool.service.to_string().into());
            PortState {
                counters: metrics.port(service, pool.port),
                budget: Mutex::new(Budget::new(config.retry_budget_ratio, config.retry_budget_min_per_second)),
                epoch: Instant::now(),
                endpoints: Mutex::default(),
                rng: AtomicU64::new(rand::random()),
            }
        };
        pool.extension(make).expect("a pool's extension slot holds the HTTP dispatcher's state only")
    }

    /// A request arrived: it adds to the retry budget.
    pub fn deposit(&self) {
        let second = self.second();
        lock(&self.budget).deposit(second);
    }

    /// Whether a retry may be sent now (counted if so).
    pub fn withdraw(&self) -> bool {
        let second = self.second();
        lock(&self.budget).withdraw(second)
    }

    fn second(&self) -> u64 {
        self.epoch.elapsed().as_secs()
    }

    /// A random draw for `LeastRequest`.
    pub fn random(&self) -> u64 {
        let state = self.rng.fetch_add(0x9e37_79b9_7f4a_7c15, Ordering::Relaxed);
        edgemesh_proxy::balance::mix(state)
    }

    /// The cost of sending one more request to each of `addrs`.
    pub fn costs(&self, targets: &Targets, addrs: impl Iterator<Item = SocketAddr>) -> Vec<f64> {
        let now = Instant::now();
        let mut endpoints = self.endpoints(targets);
        addrs.map(|a| endpoints.entry(a, now).load.cost(now)).collect()
    }

    /// A request is being sent to `addr`: for `LeastRequest`, counted in
    /// flight until the returned guard is dropped (other strategies keep no
    /// load figures).
    pub fn start<'s>(&'s self, targets: &Targets, addr: SocketAddr) -> InFlight<'s> {
        let counted = targets.strategy == LbStrategy::LeastRequest;
        let sent = counted.then(|| {
            let now = Instant::now();
            self.endpoints(targets).entry(addr, now).load.start();
            now
        });
        InFlight { port: self, addr, sent }
    }

    /// A pooled connection to `addr` ready for a request on this thread.
    pub fn checkout(
        &self,
        targets: &Targets,
        addr: SocketAddr,
        protocol: Protocol,
        thread: ThreadId,
    ) -> Option<Sender> {
        let mut endpoints = self.endpoints(targets);
        endpoints.0.by_addr.get_mut(&addr)?.idle.checkout(protocol, thread)
    }

    /// Pools `sender` (to `addr`) for the next request of this thread.
    pub fn checkin(&self, targets: &Targets, addr: SocketAddr, sender: Sender, thread: ThreadId, max: usize) {
        let now = Instant::now();
        self.endpoints(targets).entry(addr, now).idle.checkin(sender, thread, max);
    }

    /// `addr`'s idle lean connections.
    pub fn lean_idle(&self, targets: &Targets, addr: SocketAddr) -> Arc<LeanIdle> {
        let mut endpoints = self.endpoints(targets);
        if let Some(endpoint) = endpoints.0.by_addr.get(&addr) {
            return endpoint.lean.clone();
        }
        endpoints.entry(addr, Instant::now()).lean.clone()
    }

    /// The lock held while a shared connection to `addr` is opened.
    pub fn opening(&self, targets: &Targets, addr: SocketAddr) -> Arc<tokio::sync::Mutex<()>> {
        let now = Instant::now();
        self.endpoints(targets).entry(addr, now).opening.clone()
    }

    /// The endpoint table, first forgetting endpoints `targets` no longer
    /// lists (their pooled connections close).
    fn endpoints(&self, targets: &Targets) -> Guard<'_> {
        let mut endpoints = lock(&self.endpoints);
        let id = std::ptr::from_ref(targets) as usize;
        if endpoints.pruned_for != id {
            endpoints.pruned_for = id;
            endpoints.by_addr.retain(|a, _| targets.backends.iter().any(|b| b.addr == *a));
        }
        Guard(endpoints)
    }
}

struct Guard<'a>(MutexGuard<'a, Endpoints>);

impl Guard<'_> {
    fn entry(&mut self, addr: SocketAddr, now: Instant) -> &mut Endpoint {
        self.0.by_addr.entry(addr).or_insert_with(|| Endpoint {
            load: PeakEwma::new(now),
            idle: Idle::default(),
            lean: Arc::default(),
            opening: Arc::default(),
        })
    }
}

/// A request in flight to one endpoint, for `LeastRequest`'s load figures.
/// However it ends (response head, failure, timeout, cancelled by its
/// client), the time it took is observed when the guard goes, as tower's
/// and linkerd's peak-EWMA do: an endpoint that hangs until the per-try
/// timeout counts as that slow.
pub struct InFlight<'s> {
    port: &'s PortState,
    addr: SocketAddr,
    /// When it was sent, if counted (`LeastRequest`).
    sent: Option<Instant>,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        let Some(sent) = self.sent else { return };
        let now = Instant::now();
        let rtt: Duration = now.saturating_duration_since(sent);
        if let Some(e) = lock(&self.port.endpoints).by_addr.get_mut(&self.addr) {
            e.load.finish(rtt, now);
        }
    }
}

/// The endpoint table's hasher: endpoint addresses come from the control
/// plane, not from clients, so a fast multiplicative mix (in the manner of
/// rustc's FxHash) needs no SipHash's defence against chosen keys; the
/// table is looked up for every request.
#[derive(Default)]
struct AddrHasher(u64);

impl Hasher for AddrHasher {
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.add(u64::from_le_bytes(word));
        }
    }

    fn write_u8(&mut self, n: u8) {
        self.add(u64::from(n));
    }

    fn write_u16(&mut self, n: u16) {
        self.add(u64::from(n));
    }

    fn write_u32(&mut self, n: u32) {
        self.add(u64::from(n));
    }

    fn write_u64(&mut self, n: u64) {
        self.add(n);
    }

    fn write_usize(&mut self, n: usize) {
        self.add(n as u64);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

impl AddrHasher {
    fn add(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

//! Endpoint choice, without I/O: every function here is pure (time is an
//! argument), so it is property-tested and paused-time-tested on its own.
//!
//! A new connection (or UDP session) gets an *attempt plan*: every endpoint
//! once, best first. The proxy connects to the first and moves down the plan
//! when one refuses or times out, so a dead endpoint costs a retry, never a
//! failed client.
//!
//! - [`same_family`]: a frontend uses the endpoints of its own family only.
//! - [`topology`]: which endpoints a service port uses and which it prefers
//!   (`internalTrafficPolicy: Local`, `trafficDistribution: PreferClose`).
//! - [`Balancer`]: `RoundRobin` (a shared counter: an exact even spread over
//!   any `n * k` consecutive picks) and `Random` (a lock-free SplitMix64
//!   stream mapped to `0..n` by a multiply-shift).
//! - [`Ring`]: `ConsistentHash`, a hash ring with [`VNODES`] virtual nodes per
//!   endpoint, placed by a hash of the endpoint's address (not its index), so
//!   removing one of N endpoints moves only the keys it owned (about 1/N) and
//!   adding one moves keys only to it. The hash is FNV-1a with a SplitMix
//!   finaliser: stable across processes and versions, so every agent maps a
//!   key to the same endpoint.
//! - [`Health`]: passive health. An endpoint whose connect fails is ejected
//!   for [`EJECT_BASE`], doubling on each failure after a back-off up to
//!   [`EJECT_MAX`]; a success clears it.
//! - [`Affinity`]: `sessionAffinity: ClientIP`, client IP -> endpoint,
//!   expiring `timeoutSeconds` after its last use, bounded in size.
//! - [`ewma`]: `LeastRequest` per HTTP request: P2C over a peak-EWMA of
//!   latency weighted by requests in flight (linkerd's model).
//! - [`plan`]: puts it together. Endpoints are ranked: healthy and preferred,
//!   healthy, ejected and preferred, ejected. The strategy's choice leads
//!   among the best rank present, and an affinity entry leads if its
//!   endpoint has that rank. Ejected endpoints stay in the plan, last: when
//!   every endpoint is ejected they are tried anyway rather than refusing.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use edgemesh_core::{Backend, InternalTrafficPolicy, LbStrategy, TrafficDistribution};
use tokio::time::Instant;

pub mod ewma;

/// SplitMix64's increment (the golden ratio).
const GOLDEN_GAMMA: u64 = 0x9e37_79b9_7f4a_7c15;

/// Per-listener balancing state; cheap to share between connection tasks.
#[derive(Debug)]
pub struct Balancer {
    counter: AtomicU64,
    rng: AtomicU64,
}

impl Balancer {
    /// A balancer whose random stream starts at `seed`.
    pub fn with_seed(seed: u64) -> Self {
        Self { counter: AtomicU64::new(0), rng: AtomicU64::new(seed) }
    }

    /// A balancer with a random seed, so listeners do not move in lockstep.
    pub fn new() -> Self {
        Self::with_seed(rand::random())
    }

    /// The index of the first endpoint to try among `n` (`n > 0`).
    pub fn pick(&self, strategy: LbStrategy, n: usize) -> usize {
        debug_assert!(n > 0);
        match strategy {
            // ConsistentHash picks through its ring; round robin is only its
            // fallback should a ring be missing. LeastRequest needs load
            // figures: the HTTP dispatcher keeps them per request (see
            // [`ewma`]); connections (the L4 path), whose per-endpoint count
            // the pool does not keep, are spread round robin.
            LbStrategy::RoundRobin | LbStrategy::ConsistentHash | LbStrategy::LeastRequest => {
                round_robin(self.counter.fetch_add(1, Ordering::Relaxed), n)
            }
            LbStrategy::Random => {
                let state = self.rng.fetch_add(GOLDEN_GAMMA, Ordering::Relaxed).wrapping_add(GOLDEN_GAMMA);
                scale(mix(state), n)
            }
        }
    }
}

impl Default for Balancer {
    fn default() -> Self {
        Self::new()
    }
}

/// Round robin: the `counter`-th connection goes to endpoint `counter mod n`.
pub fn round_robin(counter: u64, n: usize) -> usize {
    // Below n once reduced, so it fits.
    usize::try_from(counter % n as u64).expect("below n")
}

/// SplitMix64's output function.
pub fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Maps a uniform 64-bit value to `0..n` (Lemire's multiply-shift; bias is
/// at most `n / 2^64`).
pub fn scale(x: u64, n: usize) -> usize {
    usize::try_from((u128::from(x) * n as u128) >> 64).expect("below n")
}

/// Every index of `0..n` once, starting at `start` and wrapping around.
pub fn attempt_order(start: usize, n: usize) -> impl Iterator<Item = usize> {
    (0..n).map(move |i| (start + i) % n)
}

// ---------------------------------------------------------------------------
// Family and topology

/// The endpoints of one family (IPv6 or IPv4), as kube-proxy chooses them:
/// a frontend (VIP, cluster IP, node port reached over IPv4 or IPv6) uses
/// only endpoints of its own family, never the other one. A family with no
/// endpoint gives none: the connection is refused, not sent across.
///
/// An endpoint's family is its address': a slice's `addressType` is checked
/// against every address when the slice is read (`FQDN` slices are
/// skipped), and legacy Endpoints have no `addressType`.
///
/// The list is shared when it is all of one family (the usual
/// single-stack service): nothing is copied.
pub fn same_family(backends: &Arc<[Backend]>, ipv6: bool) -> Arc<[Backend]> {
    if backends.iter().all(|b| b.addr.is_ipv6() == ipv6) {
        return backends.clone();
    }
    backends.iter().filter(|b| b.addr.is_ipv6() == ipv6).cloned().collect()
}

/// The endpoints a service port uses, preferred ones first, and how many are
/// preferred (`backends[..preferred]`; all of them when nothing is).
///
/// - `internalTrafficPolicy: Local`: only endpoints on `node`; none left means
///   the port has no endpoints (connections are closed).
/// - `trafficDistribution: PreferClose`: endpoints on `node` first; the plan
///   uses the others only while none of these is healthy.
///
/// Order within each group is the registry's (by address).
pub fn topology(
    backends: &Arc<[Backend]>,
    policy: InternalTrafficPolicy,
    distribution: Option<TrafficDistribution>,
    node: &str,
) -> (Arc<[Backend]>, usize) {
    let local = |b: &Backend| b.node_name.as_deref() == Some(node);
    match (policy, distribution) {
        (InternalTrafficPolicy::Local, _) => {
            if backends.iter().all(local) {
                return (backends.clone(), backends.len());
            }
            let only: Arc<[Backend]> = backends.iter().filter(|b| local(b)).cloned().collect();
            let n = only.len();
            (only, n)
        }
        (InternalTrafficPolicy::Cluster, Some(TrafficDistribution::PreferClose)) => {
            let near = backends.iter().filter(|b| local(b)).count();
            if near == 0 || near == backends.len() {
                return (backends.clone(), backends.len());
            }
            let mut sorted: Vec<Backend> = backends.iter().filter(|b| local(b)).cloned().collect();
            sorted.extend(backends.iter().filter(|b| !local(b)).cloned());
            (sorted.into(), near)
        }
        (InternalTrafficPolicy::Cluster, None) => (backends.clone(), backends.len()),
    }
}

// ---------------------------------------------------------------------------
// Hashing and the ring

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

fn fnv(mut h: u64, data: &[u8]) -> u64 {
    for &b in data {
        h ^= u64::from(b);
        h = h.wrapping_mul(FNV_PRIME);
    }
    h
}

/// A stable 64-bit hash of `data` (FNV-1a, then SplitMix's finaliser so
/// nearby inputs spread over the whole ring).
pub fn hash_bytes(data: &[u8]) -> u64 {
    mix(fnv(FNV_OFFSET, data))
}

/// The hash key of a client IP address.
pub fn hash_ip(ip: IpAddr) -> u64 {
    match ip {
        IpAddr::V4(v4) => hash_bytes(&v4.octets()),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => hash_bytes(&v4.octets()),
            None => hash_bytes(&v6.octets()),
        },
    }
}

fn point(addr: SocketAddr, vnode: u32) -> u64 {
    let h = match addr.ip() {
        IpAddr::V4(v4) => fnv(FNV_OFFSET, &v4.octets()),
        IpAddr::V6(v6) => fnv(FNV_OFFSET, &v6.octets()),
    };
    let h = fnv(h, &addr.port().to_be_bytes());
    mix(fnv(h, &vnode.to_le_bytes()))
}

/// Virtual nodes per endpoint: with 160 (ketama's number) each endpoint's
/// share stays within about ±25% of 1/N.
pub const VNODES: u32 = 160;

/// How many distinct endpoints [`Ring::order`] walks the ring for; the rest
/// of a plan follows in index order (only reached when this many failed).
pub const RING_WALK: usize = 8;

/// A consistent-hash ring over a list of endpoints.
#[derive(Debug, Clone)]
pub struct Ring {
    /// (position, endpoint index), sorted by position.
    points: Vec<(u64, u32)>,
    endpoints: usize,
}

impl Ring {
    pub fn new(addrs: &[SocketAddr]) -> Ring {
        let mut points = Vec::with_capacity(addrs.len() * VNODES as usize);
        for (i, addr) in addrs.iter().enumerate() {
            let i = u32::try_from(i).unwrap_or(u32::MAX);
            points.extend((0..VNODES).map(|v| (point(*addr, v), i)));
        }
        points.sort_unstable();
        Ring { points, endpoints: addrs.len() }
    }

    /// The endpoint that owns `key`.
    pub fn owner(&self, key: u64) -> Option<usize> {
        let at = self.points.partition_point(|(p, _)| *p < key);
        self.points.get(at).or(self.points.first()).map(|(_, i)| *i as usize)
    }

    /// Endpoint indices in ring order from `key`: the owner first, then the
    /// next distinct ones clockwise, up to `limit`.
    pub fn order(&self, key: u64, limit: usize) -> Vec<usize> {
        let limit = limit.min(self.endpoints);
        let mut out: Vec<usize> = Vec::with_capacity(limit);
        if limit == 0 {
            return out;
        }
        let start = self.points.partition_point(|(p, _)| *p < key);
        let len = self.points.len();
        for k in 0..len {
            let i = self.points[(start + k) % len].1 as usize;
            if !out.contains(&i) {
                out.push(i);
                if out.len() == limit {
                    break;
                }
            }
        }
        out
    }
}

// ---------------------------------------------------------------------------
// Passive health

/// First ejection of an endpoint whose connect failed.
pub const EJECT_BASE: Duration = Duration::from_secs(1);
/// Longest ejection; the back-off doubles up to this.
pub const EJECT_MAX: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, Copy)]
struct Ejection {
    /// Failures since the last success.
    failures: u32,
    until: Instant,
}

/// Endpoints whose connects failed, and until when they are skipped.
#[derive(Debug, Default)]
pub struct Health {
    ejected: HashMap<SocketAddr, Ejection>,
}

impl Health {
    /// The back-off after `failures` consecutive failures (1 -> base).
    pub fn backoff(failures: u32) -> Duration {
        let shift = failures.saturating_sub(1).min(16);
        EJECT_BASE.saturating_mul(1 << shift).min(EJECT_MAX)
    }

    pub fn is_ejected(&self, addr: &SocketAddr, now: Instant) -> bool {
        self.ejected.get(addr).is_some_and(|e| now < e.until)
    }

    /// Records a failed connect; returns how long the endpoint is ejected.
    /// Failures while already ejected (connections that raced the first
    /// failure) do not lengthen the back-off: only a failed retry after it
    /// does.
    pub fn failure(&mut self, addr: SocketAddr, now: Instant) -> Duration {
        let e = self.ejected.entry(addr).or_insert(Ejection { failures: 0, until: now });
        if now < e.until {
            return e.until - now;
        }
        e.failures = e.failures.saturating_add(1);
        let backoff = Self::backoff(e.failures);
        e.until = now + backoff;
        backoff
    }

    /// Records a successful connect: the endpoint is healthy again.
    pub fn success(&mut self, addr: &SocketAddr) {
        if !self.ejected.is_empty() {
            self.ejected.remove(addr);
        }
    }

    /// Forgets endpoints that are no longer listed.
    pub fn retain(&mut self, live: impl Fn(&SocketAddr) -> bool) {
        self.ejected.retain(|a, _| live(a));
    }

    pub fn is_empty(&self) -> bool {
        self.ejected.is_empty()
    }

    /// What is on record for `addr`: its failures since the last success
    /// and, while it is ejected, for how long still (`None` once the
    /// ejection is over and the next connection tries it again). `None`
    /// when it has not failed since its last success.
    pub fn state(&self, addr: &SocketAddr, now: Instant) -> Option<(u32, Option<Duration>)> {
        let e = self.ejected.get(addr)?;
        Some((e.failures, (now < e.until).then(|| e.until - now)))
    }
}

// ---------------------------------------------------------------------------
// Session affinity

/// Default bound of an affinity table (per service port).
pub const AFFINITY_CAPACITY: usize = 65_536;

/// `sessionAffinity: ClientIP`: which endpoint each client IP last used.
#[derive(Debug)]
pub struct Affinity {
    capacity: usize,
    entries: HashMap<IpAddr, (SocketAddr, Instant)>,
}

impl Affinity {
    pub fn new(capacity: usize) -> Self {
        Self { capacity: capacity.max(1), entries: HashMap::new() }
    }

    /// The endpoint `client` used last, if it did so less than `timeout` ago.
    pub fn get(&self, client: IpAddr, timeout: Duration, now: Instant) -> Option<SocketAddr> {
        self.entries.get(&client).filter(|(_, last)| now.saturating_duration_since(*last) < timeout).map(|(a, _)| *a)
    }

    /// `client` is now using `backend` (a connection or session was made).
    pub fn record(&mut self, client: IpAddr, backend: SocketAddr, timeout: Duration, now: Instant) {
        if self.entries.len() >= self.capacity && !self.entries.contains_key(&client) {
            self.evict(timeout, now);
        }
        self.entries.insert(client, (backend, now));
    }

    /// Drops expired entries; if still full, the oldest eighth.
    fn evict(&mut self, timeout: Duration, now: Instant) {
        self.entries.retain(|_, (_, last)| now.saturating_duration_since(*last) < timeout);
        if self.entries.len() < self.capacity {
            return;
        }
        let mut ages: Vec<Instant> = self.entries.values().map(|(_, last)| *last).collect();
        let cut = (ages.len() / 8).max(1);
        let (_, nth, _) = ages.select_nth_unstable(cut - 1);
        let cutoff = *nth;
        self.entries.retain(|_, (_, last)| *last > cutoff);
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

// ---------------------------------------------------------------------------
// The attempt plan

/// Rank of an endpoint: lower is tried first.
fn rank(i: usize, preferred: usize, ejected: &impl Fn(usize) -> bool) -> u8 {
    u8::from(i >= preferred) + 2 * u8::from(ejected(i))
}

/// How the strategy chooses the leading endpoint.
pub enum Lead<'a> {
    /// Round robin or random: `pick(k)` chooses one of the `k` endpoints of
    /// the best rank present.
    Spread(&'a dyn Fn(usize) -> usize),
    /// Consistent hash: ring order from the key.
    Hash(&'a Ring, u64),
}

/// Every endpoint of `0..n` once, in the order a new connection tries them.
/// `preferred`: `0..preferred` are preferred (see [`topology`]); `ejected`
/// says which are ejected now; `sticky` is the client's affinity endpoint.
pub fn plan(
    n: usize,
    preferred: usize,
    lead: Lead<'_>,
    sticky: Option<usize>,
    ejected: impl Fn(usize) -> bool,
) -> Vec<usize> {
    if n == 0 {
        return Vec::new();
    }
    let ranks: Vec<u8> = (0..n).map(|i| rank(i, preferred, &ejected)).collect();
    let best = ranks.iter().copied().min().unwrap_or(0);
    let mut order: Vec<usize> = match lead {
        Lead::Spread(pick) => {
            let count = ranks.iter().filter(|&&r| r == best).count();
            let k = pick(count).min(count - 1);
            let start = (0..n).filter(|&i| ranks[i] == best).nth(k).unwrap_or(0);
            attempt_order(start, n).collect()
        }
        Lead::Hash(ring, key) => {
            let mut order = ring.order(key, RING_WALK);
            // The ring walk is bounded; whatever it did not reach follows.
            if order.len() < n {
                let mut seen = vec![false; n];
                for &i in &order {
                    seen[i] = true;
                }
                order.extend((0..n).filter(|&i| !seen[i]));
            }
            order
        }
    };
    // Stable: within a rank the strategy's order stands.
    order.sort_by_key(|&i| ranks[i]);
    if let Some(s) = sticky.filter(|&s| s < n && ranks[s] == best)
        && let Some(pos) = order.iter().position(|&i| i == s)
    {
        order[..=pos].rotate_right(1);
    }
    order
}
#[cfg(test)]
mod tests;

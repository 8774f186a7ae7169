//! One client connection: admission -> pick -> connect (with retry) ->
//! forward.
//!
//! A connection that cannot be forwarded (no ready endpoint, every endpoint
//! failed, over the connection limit) is closed with `SO_LINGER 0`, so the
//! client sees a reset at once, as it would from a closed port, rather than
//! an orderly EOF that looks like an empty reply.
//!
//! For `ConsistentHash` services keyed by an HTTP header, the first request
//! is read with `MSG_PEEK` (never consumed) for at most
//! [`HEADER_PEEK_WAIT`] and [`HEADER_PEEK_MAX`] bytes; a connection without
//! the header, or not speaking HTTP, is hashed by its source IP.
//!
//! The steady state of a connection is the future returned by [`serve`]:
//! the connect phase is boxed (its timer and retry state are freed once
//! connected) and forwarding holds only the two sockets and two small
//! direction states; `tests::connection_future_stays_small` bounds it.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use edgemesh_core::{Backend, HashKey, LbStrategy, ResolvedPort, ServiceEntry, ServiceKey, SessionAffinity};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::balance::{self, AFFINITY_CAPACITY, Affinity, Balancer, Health, Lead, Ring};
use crate::error::ProxyError;
use crate::remote::{Reach, RemoteStream};
use crate::{ProxyConfig, ProxyStatus, splice};

mod header;
use header::peek_header;
pub use header::{HEADER_PEEK_MAX, HEADER_PEEK_WAIT};
#[cfg(test)]
use header::{Header, find_header};

/// State shared by the proxy task, listeners and connections.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) config: ProxyConfig,
    pub(crate) status: Arc<ProxyStatus>,
    /// Every connection task, so shutdown can wait for them.
    pub(crate) tracker: TaskTracker,
    /// Cancelled at shutdown: connections close.
    pub(crate) stop: CancellationToken,
    /// Service addresses served through the transparent listener.
    pub(crate) routes: crate::transparent::Routes,
    /// Which endpoints are dialled directly and which through the tunnel.
    pub(crate) reach: Reach,
    /// The threads connections run on.
    pub(crate) workers: crate::workers::Workers,
}

/// What one listener forwards to; replaced in place when endpoints change.
#[derive(Debug)]
pub struct Targets {
    pub strategy: LbStrategy,
    pub hash_key: HashKey,
    /// `sessionAffinity: ClientIP` timeout, if set.
    pub affinity: Option<Duration>,
    /// Idle timeout of UDP sessions.
    pub udp_idle_timeout: Duration,
    /// The endpoints in use after topology, preferred first.
    pub backends: Arc<[Backend]>,
    /// `backends[..preferred]` are preferred (on this node).
    pub preferred: usize,
    /// The hash ring, for `ConsistentHash` (boxed: most services have none,
    /// and every service port keeps its targets).
    pub ring: Option<Box<Ring>>,
    /// The registry's endpoint list and topology fields, to tell changes.
    source: (Arc<[Backend]>, edgemesh_core::InternalTrafficPolicy, Option<edgemesh_core::TrafficDistribution>),
}

impl Targets {
    /// Every endpoint, no topology, no affinity: the plain strategies.
    pub fn new(strategy: LbStrategy, backends: Arc<[Backend]>) -> Self {
        let preferred = backends.len();
        let source = (backends.clone(), Default::default(), None);
        let ring = (strategy == LbStrategy::ConsistentHash).then(|| ring_of(&backends));
        Self {
            strategy,
            hash_key: HashKey::SourceIp,
            affinity: None,
            udp_idle_timeout: edgemesh_core::DEFAULT_UDP_IDLE_TIMEOUT,
            backends,
            preferred,
            ring,
            source,
        }
    }

    /// What a service port forwards to, as seen from node `node`.
    pub fn for_port(entry: &ServiceEntry, port: &ResolvedPort, node: &str) -> Self {
        let (backends, preferred) =
            balance::topology(&port.backends, entry.internal_traffic_policy, entry.traffic_distribution, node);
        let ring = (entry.strategy == LbStrategy::ConsistentHash).then(|| ring_of(&backends));
        Self {
            strategy: entry.strategy,
            hash_key: entry.hash_key.clone(),
            affinity: match entry.session_affinity {
                SessionAffinity::None => None,
                SessionAffinity::ClientIp { timeout_seconds } => Some(Duration::from_secs(timeout_seconds.into())),
            },
            udp_idle_timeout: entry.udp_idle_timeout,
            backends,
            preferred,
            ring,
            source: (port.backends.clone(), entry.internal_traffic_policy, entry.traffic_distribution),
        }
    }

    /// Whether `other` forwards the same way (the ring follows the rest).
    fn same_as(&self, other: &Targets) -> bool {
        self.strategy == other.strategy
            && self.hash_key == other.hash_key
            && self.affinity == other.affinity
            && self.udp_idle_timeout == other.udp_idle_timeout
            && self.source.1 == other.source.1
            && self.source.2 == other.source.2
            && (Arc::ptr_eq(&self.source.0, &other.source.0) || self.source.0 == other.source.0)
    }
}

fn ring_of(backends: &[Backend]) -> Box<Ring> {
    Box::new(Ring::new(&backends.iter().map(|b| b.addr).collect::<Vec<_>>()))
}

/// A listener's view of its service port, shared with its connections.
#[derive(Debug)]
pub struct Pool {
    pub service: ServiceKey,
    /// The service port.
    pub port: u16,
    /// The VIP:port listened on.
    pub addr: SocketAddr,
    targets: ArcSwap<Targets>,
    balancer: Balancer,
    /// Passive health and session affinity, allocated on first use. A std
    /// mutex: held for a few map operations, never across an await.
    state: Mutex<Option<Box<PoolState>>>,
    warnings: LogLimiter,
}

/// What a pool learns from its connections. Most pools never see a failed
/// connect or a `ClientIP` service: unallocated, the two tables cost a
/// pointer instead of ~110 bytes per service port (a megabyte at 10,000).
#[derive(Debug)]
struct PoolState {
    health: Health,
    affinity: Affinity,
}

impl PoolState {
    fn new() -> Box<Self> {
        Box::new(Self { health: Health::default(), affinity: Affinity::new(AFFINITY_CAPACITY) })
    }

    fn is_empty(&self) -> bool {
        self.health.is_empty() && self.affinity.is_empty()
    }
}

impl Pool {
    pub fn new(service: ServiceKey, addr: SocketAddr, targets: Targets) -> Self {
        Self {
            service,
            port: addr.port(),
            addr,
            targets: ArcSwap::from_pointee(targets),
            balancer: Balancer::new(),
            state: Mutex::new(None),
            warnings: LogLimiter::default(),
        }
    }

    /// Points new connections at `next`; established ones keep theirs.
    /// Returns whether anything changed.
    pub fn update(&self, next: Targets) -> bool {
        let current = self.targets.load();
        if current.same_as(&next) {
            return false;
        }
        {
            let mut state = lock(&self.state);
            if let Some(s) = state.as_mut() {
                if !s.health.is_empty() {
                    s.health.retain(|a| next.backends.iter().any(|b| b.addr == *a));
                }
                if next.affinity.is_none() && !s.affinity.is_empty() {
                    s.affinity = Affinity::new(AFFINITY_CAPACITY);
                }
                if s.is_empty() {
                    *state = None;
                }
            }
        }
        self.targets.store(Arc::new(next));
        true
    }

    pub fn targets(&self) -> Arc<Targets> {
        self.targets.load_full()
    }

    /// The order in which a new connection from `client` tries `targets`'
    /// endpoints; `key` is the consistent-hash key (ignored otherwise).
    pub fn plan(&self, targets: &Targets, client: IpAddr, key: u64) -> Vec<usize> {
        let now = tokio::time::Instant::now();
        let n = targets.backends.len();
        let state = lock(&self.state);
        let sticky = targets.affinity.and_then(|timeout| {
            let addr = state.as_ref()?.affinity.get(client, timeout, now)?;
            targets.backends.iter().position(|b| b.addr == addr)
        });
        let pick = |k: usize| self.balancer.pick(targets.strategy, k);
        let lead = match (&targets.ring, targets.strategy) {
            (Some(ring), LbStrategy::ConsistentHash) => Lead::Hash(ring, key),
            _ => Lead::Spread(&pick),
        };
        match state.as_deref() {
            Some(s) if !s.health.is_empty() => balance::plan(n, targets.preferred, lead, sticky, |i| {
                s.health.is_ejected(&targets.backends[i].addr, now)
            }),
            _ => balance::plan(n, targets.preferred, lead, sticky, |_| false),
        }
    }

    /// `client` reached `backend`: it is healthy, and the client sticks to
    /// it when the service asks for affinity.
    pub fn connected(&self, targets: &Targets, client: IpAddr, backend: SocketAddr) {
        let mut state = lock(&self.state);
        if let Some(s) = state.as_mut()
            && !s.health.is_empty()
        {
            s.health.success(&backend);
        }
        if let Some(timeout) = targets.affinity {
            let s = state.get_or_insert_with(PoolState::new);
            s.affinity.record(client, backend, timeout, tokio::time::Instant::now());
        }
    }

    /// `backend` answered (a UDP reply): it is healthy.
    pub fn healthy(&self, backend: &SocketAddr) {
        let mut state = lock(&self.state);
        if let Some(s) = state.as_mut()
            && !s.health.is_empty()
        {
            s.health.success(backend);
        }
    }

    /// A connect to `backend` failed: eject it for a while.
    pub fn failed(&self, backend: SocketAddr) {
        let backoff =
            lock(&self.state).get_or_insert_with(PoolState::new).health.failure(backend, tokio::time::Instant::now());
        tracing::debug!(service = %self.service, endpoint = %backend, ?backoff, "endpoint ejected");
    }

    /// Logs a connection problem at warn, at most once per interval per
    /// listener, and at debug otherwise.
    pub(crate) fn report(&self, error: &ProxyError) {
        if self.warnings.allow() {
            tracing::warn!(service = %self.service, listener = %self.addr, kind = error.kind(), "{error}");
        } else {
            tracing::debug!(service = %self.service, listener = %self.addr, kind = error.kind(), "{error}");
        }
    }
}

/// Locks a mutex, recovering from poisoning: the guarded tables stay
/// consistent after any panic (each operation is a few map updates).
pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Lets one message through per [`LogLimiter::INTERVAL`].
#[derive(Debug, Default)]
pub(crate) struct LogLimiter {
    /// Milliseconds since [`epoch`] of the last allowed message, plus one
    /// (0: never).
    last: AtomicU64,
}

fn epoch() -> Instant {
    static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

impl LogLimiter {
    const INTERVAL: Duration = Duration::from_secs(10);

    pub(crate) fn allow(&self) -> bool {
        let now = epoch().elapsed().as_millis() as u64 + 1;
        let last = self.last.load(Ordering::Relaxed);
        if last != 0 && now.saturating_sub(last) < Self::INTERVAL.as_millis() as u64 {
            return false;
        }
        self.last.compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed).is_ok()
    }
}

/// Counts a connection as active until dropped.
struct Active(Arc<Shared>);

impl Drop for Active {
    fn drop(&mut self) {
        self.0.status.active_connections.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Takes a freshly accepted connection: resets it at once when over the
/// limit, otherwise registers and serves it on the current runtime: the
/// worker that accepted it (see `workers`).
pub(crate) fn admit(shared: &Arc<Shared>, pool: &Arc<Pool>, client: std::net::TcpStream, peer: SocketAddr) {
    let status = &shared.status;
    status.total_connections.fetch_add(1, Ordering::Relaxed);
    let max = shared.config.max_connections;
    if status.active_connections.fetch_add(1, Ordering::AcqRel) >= max {
        status.active_connections.fetch_sub(1, Ordering::AcqRel);
        status.failed_connections.fetch_add(1, Ordering::Relaxed);
        status.rejected_connections.fetch_add(1, Ordering::Relaxed);
        pool.report(&ProxyError::OverLimit { addr: pool.addr, max });
        reset(client);
        return;
    }
    let active = Active(shared.clone());
    let pool = pool.clone();
    tokio::spawn(shared.tracker.track_future(async move {
        match TcpStream::from_std(client) {
            Ok(client) => serve(client, peer.ip(), pool, active).await,
            Err(e) => {
                active.0.status.failed_connections.fetch_add(1, Ordering::Relaxed);
                if pool.warnings.allow() {
                    tracing::warn!(service = %pool.service, listener = %pool.addr, error = %e,
                        "cannot register an accepted connection");
                }
            }
        }
    }));
}

/// Closes `stream` with a reset (`SO_LINGER 0`).
fn reset(stream: impl std::os::fd::AsFd) {
    let _ = socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO));
    drop(stream);
}

/// The whole life of one connection; ends early at shutdown.
///
/// The shutdown signal is polled once, which registers the task's waker
/// with it; later wake-ups only read its flag. (Polling a registered
/// `cancelled()` future again takes the lock of the token's waiter list,
/// which every connection shares: one contended lock per wake-up.)
async fn serve(client: TcpStream, peer: IpAddr, pool: Arc<Pool>, active: Active) {
    let shared = &active.0;
    let stop = shared.stop.cancelled();
    let work = proxy(client, peer, &pool, shared);
    tokio::pin!(stop, work);
    let mut registered = false;
    std::future::poll_fn(|cx| {
        if !registered {
            registered = true;
            if stop.as_mut().poll(cx).is_ready() {
                return std::task::Poll::Ready(());
            }
        } else if shared.stop.is_cancelled() {
            return std::task::Poll::Ready(());
        }
        work.as_mut().poll(cx)
    })
    .await;
}

async fn proxy(client: TcpStream, peer: IpAddr, pool: &Pool, shared: &Shared) {
    // `client` has TCP_NODELAY from its listening socket.
    // Boxed: the connect phase (header peek, timer, retry loop) is larger
    // than the forwarding phase and is over in a moment.
    let upstream = match Box::pin(connect(pool, &client, peer, shared)).await {
        Ok(upstream) => upstream,
        Err(error) => {
            shared.status.failed_connections.fetch_add(1, Ordering::Relaxed);
            if !matches!(error, ProxyError::AllBackendsFailed { .. }) {
                // Each endpoint failure was reported already.
                pool.report(&error);
            }
            reset(client);
            return;
        }
    };
    let result = match upstream {
        Upstream::Local(backend) => splice::forward(&client, &backend).await,
        // Boxed: copying to the tunnel needs buffers and a larger future;
        // keep the common, local connection's future small.
        Upstream::Remote(stream) => Box::pin(forward_remote(client, stream)).await,
    };
    match result {
        Ok(moved) => tracing::trace!(service = %pool.service, ?moved, "connection closed"),
        Err(error) => tracing::debug!(service = %pool.service, %error, "connection ended with an error"),
    }
}

/// Where a connection goes once connected.
enum Upstream {
    /// An endpoint dialled directly: forwarded with `splice(2)`.
    Local(TcpStream),
    /// An endpoint on another node, through the tunnel.
    Remote(RemoteStream),
}

/// Buffer per direction when copying to and from the tunnel.
const REMOTE_COPY_BUF: usize = 16 * 1024;

/// Copies between the client and a tunnel stream; EOF on either side
/// half-closes the other. An error (the tunnel connection was lost, the
/// remote agent reset the stream) resets the client: a FIN would look like
/// a complete response.
async fn forward_remote(mut client: TcpStream, mut stream: RemoteStream) -> std::io::Result<splice::Transferred> {
    match tokio::io::copy_bidirectional_with_sizes(&mut client, &mut stream, REMOTE_COPY_BUF, REMOTE_COPY_BUF).await {
        Ok((a_to_b, b_to_a)) => Ok(splice::Transferred { a_to_b, b_to_a }),
        Err(e) => {
            reset(client);
            Err(e)
        }
    }
}

/// Connects to the chosen endpoint, or to the next ones in the plan when it
/// refuses or times out; each endpoint is tried at most once, and each
/// failure ejects the endpoint for a while (see [`balance::Health`]).
/// Endpoints on other nodes are opened through the tunnel, if there is one.
async fn connect(pool: &Pool, client: &TcpStream, peer: IpAddr, shared: &Shared) -> Result<Upstream, ProxyError> {
    let config = &shared.config;
    let timeout = config.connect_timeout;
    let targets = pool.targets.load_full();
    let n = targets.backends.len();
    if n == 0 {
        return Err(ProxyError::NoBackends { service: pool.service.clone(), port: pool.port });
    }
    let key = match (&targets.strategy, &targets.hash_key) {
        (LbStrategy::ConsistentHash, HashKey::Header(name)) => match peek_header(client, name).await {
            Some(value) => balance::hash_bytes(&value),
            None => balance::hash_ip(peer),
        },
        (LbStrategy::ConsistentHash, HashKey::SourceIp) => balance::hash_ip(peer),
        _ => 0,
    };
    let mut last = None;
    for i in pool.plan(&targets, peer, key) {
        let backend = &targets.backends[i];
        let addr = backend.addr;
        let error = if let Some((node, remote)) = shared.reach.remote_for(backend) {
            let timeout = shared.reach.timeout();
            match tokio::time::timeout(timeout, remote.open_tcp(node, addr, &pool.service)).await {
                Ok(Ok(stream)) => {
                    pool.connected(&targets, peer, addr);
                    return Ok(Upstream::Remote(stream));
                }
                Ok(Err(e)) => ProxyError::remote(node, addr, e),
                Err(_) => ProxyError::RemoteTimedOut { node: node.to_owned(), addr, timeout },
            }
        } else {
            match tokio::time::timeout(timeout, connect_one(addr, config.upstream_mark)).await {
                Ok(Ok(stream)) => {
                    pool.connected(&targets, peer, addr);
                    return Ok(Upstream::Local(stream));
                }
                Ok(Err(e)) => ProxyError::connect(addr, e, timeout),
                Err(_) => ProxyError::TimedOut { addr, timeout },
            }
        };
        if error.ejects() {
            pool.failed(addr);
        }
        pool.report(&error);
        last = Some(error);
    }
    let last = Box::new(last.expect("at least one endpoint was tried"));
    Err(ProxyError::AllBackendsFailed { service: pool.service.clone(), port: pool.port, tried: n, last })
}

/// Connects to a local endpoint with `TCP_NODELAY` (and the mark, if any).
///
/// Written out rather than `TcpSocket::connect`, which asks the socket for
/// its error (`getsockopt`) after every connect: here that is asked only
/// when the writable event says the connect failed (a failed connect also
/// reports `EPOLLHUP`, seen as write-closed), one system call fewer per
/// connection.
async fn connect_one(addr: SocketAddr, mark: Option<u32>) -> std::io::Result<TcpStream> {
    use rustix::net::{AddressFamily, SocketFlags, SocketType, ipproto};
    let family = if addr.is_ipv4() { AddressFamily::INET } else { AddressFamily::INET6 };
    let socket = rustix::net::socket_with(
        family,
        SocketType::STREAM,
        SocketFlags::NONBLOCK | SocketFlags::CLOEXEC,
        Some(ipproto::TCP),
    )?;
    if let Some(mark) = mark {
        // Interception rules let marked packets pass: the agent's own
        // connections are never redirected back to it.
        socket2::SockRef::from(&socket).set_mark(mark)?;
    }
    rustix::net::sockopt::set_tcp_nodelay(&socket, true)?;
    match rustix::net::connect(&socket, &addr) {
        Ok(()) | Err(rustix::io::Errno::INPROGRESS) => {}
        Err(e) => return Err(e.into()),
    }
    let stream = TcpStream::from_std(std::net::TcpStream::from(socket))?;
    let ready = stream.ready(tokio::io::Interest::WRITABLE).await?;
    if ready.is_write_closed() || !ready.is_writable() {
        return Err(stream.take_error()?.unwrap_or_else(|| std::io::ErrorKind::NotConnected.into()));
    }
    Ok(stream)
}

#[cfg(test)]
pub(crate) mod tests;

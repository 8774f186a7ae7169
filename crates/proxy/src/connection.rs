//! One client connection: admission -> pick -> connect (with retry) ->
//! forward.
//!
//! A connection that cannot be forwarded (no ready endpoint, every endpoint
//! failed, over the connection limit) is closed with `SO_LINGER 0`, so the
//! client sees a reset at once, as it would from a closed port, rather than
//! an orderly EOF that looks like an empty reply.
//!
//! The steady state of a connection is the future returned by [`serve`]:
//! the connect phase is boxed (its timer and retry state are freed once
//! connected) and forwarding holds only the two sockets and two small
//! direction states; `tests::connection_future_stays_small` bounds it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use edgemesh_core::{Backend, LbStrategy, ServiceKey};
use tokio::net::{TcpSocket, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::balance::{Balancer, attempt_order};
use crate::error::ProxyError;
use crate::{ProxyConfig, ProxyStatus, splice};

/// State shared by the proxy task, listeners and connections.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) config: ProxyConfig,
    pub(crate) status: Arc<ProxyStatus>,
    /// Every connection task, so shutdown can wait for them.
    pub(crate) tracker: TaskTracker,
    /// Cancelled at shutdown: connections close.
    pub(crate) stop: CancellationToken,
}

/// What one listener forwards to; replaced in place when endpoints change.
#[derive(Debug)]
pub struct Targets {
    pub strategy: LbStrategy,
    pub backends: Arc<[Backend]>,
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
    warnings: LogLimiter,
}

impl Pool {
    pub fn new(service: ServiceKey, addr: SocketAddr, strategy: LbStrategy, backends: Arc<[Backend]>) -> Self {
        Self {
            service,
            port: addr.port(),
            addr,
            targets: ArcSwap::from_pointee(Targets { strategy, backends }),
            balancer: Balancer::new(),
            warnings: LogLimiter::default(),
        }
    }

    /// Points new connections at `backends`; established ones keep theirs.
    /// Returns whether anything changed.
    pub fn update(&self, strategy: LbStrategy, backends: &Arc<[Backend]>) -> bool {
        let current = self.targets.load();
        let same_backends = Arc::ptr_eq(&current.backends, backends) || current.backends == *backends;
        if current.strategy == strategy && same_backends {
            return false;
        }
        self.targets.store(Arc::new(Targets { strategy, backends: backends.clone() }));
        true
    }

    pub fn targets(&self) -> Arc<Targets> {
        self.targets.load_full()
    }

    /// Logs a connection problem at warn, at most once per interval per
    /// listener, and at debug otherwise.
    fn report(&self, error: &ProxyError) {
        if self.warnings.allow() {
            tracing::warn!(service = %self.service, listener = %self.addr, kind = error.kind(), "{error}");
        } else {
            tracing::debug!(service = %self.service, listener = %self.addr, kind = error.kind(), "{error}");
        }
    }
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
/// limit, otherwise spawns its task.
pub(crate) fn admit(shared: &Arc<Shared>, pool: &Arc<Pool>, client: TcpStream) {
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
    shared.tracker.spawn(serve(client, pool.clone(), active));
}

/// Closes `stream` with a reset (`SO_LINGER 0`).
fn reset(stream: TcpStream) {
    let _ = socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO));
    drop(stream);
}

/// The whole life of one connection; ends early at shutdown.
async fn serve(client: TcpStream, pool: Arc<Pool>, active: Active) {
    let shared = &active.0;
    tokio::select! {
        biased;
        () = shared.stop.cancelled() => {}
        () = proxy(client, &pool, shared) => {}
    }
}

async fn proxy(client: TcpStream, pool: &Pool, shared: &Shared) {
    let _ = client.set_nodelay(true);
    // Boxed: the connect phase (timer, retry loop) is larger than the
    // forwarding phase and is over in a moment.
    let backend = match Box::pin(connect(pool, shared.config.connect_timeout)).await {
        Ok(backend) => backend,
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
    match splice::forward(&client, &backend).await {
        Ok(moved) => tracing::trace!(service = %pool.service, ?moved, "connection closed"),
        Err(error) => tracing::debug!(service = %pool.service, %error, "connection ended with an error"),
    }
}

/// Connects to the chosen endpoint, or to the next ones in turn when it
/// refuses or times out; each endpoint is tried at most once.
async fn connect(pool: &Pool, timeout: Duration) -> Result<TcpStream, ProxyError> {
    let targets = pool.targets.load_full();
    let n = targets.backends.len();
    if n == 0 {
        return Err(ProxyError::NoBackends { service: pool.service.clone(), port: pool.port });
    }
    let start = pool.balancer.pick(targets.strategy, n);
    let mut last = None;
    for i in attempt_order(start, n) {
        let addr = targets.backends[i].addr;
        let error = match tokio::time::timeout(timeout, connect_one(addr)).await {
            Ok(Ok(stream)) => return Ok(stream),
            Ok(Err(e)) => ProxyError::connect(addr, e, timeout),
            Err(_) => ProxyError::TimedOut { addr, timeout },
        };
        pool.report(&error);
        last = Some(error);
    }
    let last = Box::new(last.expect("at least one endpoint was tried"));
    Err(ProxyError::AllBackendsFailed { service: pool.service.clone(), port: pool.port, tried: n, last })
}

async fn connect_one(addr: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = if addr.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
    socket.set_nodelay(true)?;
    socket.connect(addr).await
}

#[cfg(test)]
mod tests;

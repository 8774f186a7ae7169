//! One client connection: admission -> pick -> connect (with retry) ->
//! forward; or, for an HTTP port when the agent has an HTTP layer,
//! admission -> [`HttpServe::serve`] (still counted active, still dropped
//! at shutdown).
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
//! A forwarded connection lives within `proxy.idleTimeout` and
//! `proxy.maxConnectionDuration` (see `lifetime`).
//!
//! The steady state of a connection is the future returned by [`serve`]:
//! the connect phase is boxed (its timer and retry state are freed once
//! connected) and forwarding holds only the two sockets and two small
//! direction states; `tests::connection_future_stays_small` bounds it.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use edgemesh_core::{HashKey, LbStrategy};
use edgemesh_metrics::Counter;
use tokio::net::TcpStream;
use tokio_util::either::Either;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::balance;
use crate::error::ProxyError;
use crate::http::{ClientStream, HttpConnection, HttpServe};
use crate::metrics::{FailReason, ProxyMetrics};
use crate::pool::Pool;
use crate::remote::{Reach, RemoteStream};
use crate::routes::Routes;
use crate::{ProxyConfig, ProxyStatus, splice};

mod counted;
mod header;
mod lifetime;
use counted::Counted;
use header::peek_header;
pub use header::{HEADER_PEEK_MAX, HEADER_PEEK_WAIT};
#[cfg(test)]
use header::{Header, find_header};
pub(crate) use lifetime::{Cut, Lifetime};

/// State shared by the proxy task, listeners and connections.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) config: ProxyConfig,
    /// The settings a reload changes; read these, not `config`'s copies.
    pub(crate) live: Arc<crate::LiveSettings>,
    pub(crate) status: Arc<ProxyStatus>,
    /// Every connection task, so shutdown can wait for them.
    pub(crate) tracker: TaskTracker,
    /// Cancelled at shutdown: connections close.
    pub(crate) stop: CancellationToken,
    /// Cancelled when the drain starts: HTTP connections end after the
    /// requests in flight.
    pub(crate) drain: CancellationToken,
    /// Service addresses served through the transparent listener.
    pub(crate) routes: Routes,
    /// Which endpoints are dialled directly and which through the tunnel.
    pub(crate) reach: Reach,
    /// The threads connections run on.
    pub(crate) workers: crate::workers::Workers,
    /// The families the listeners take their ports' series from.
    pub(crate) metrics: Arc<ProxyMetrics>,
    /// Serves connections to HTTP ports per request, when the agent has
    /// an HTTP layer (`http.enabled`).
    pub(crate) http: Option<Arc<dyn HttpServe>>,
}

/// A connection admitted to its pool: counted as active (in the proxy's
/// status and its port's gauge) until dropped.
struct Active {
    shared: Arc<Shared>,
    pool: Arc<Pool>,
}

impl Active {
    fn new(shared: &Arc<Shared>, pool: &Arc<Pool>) -> Self {
        pool.metrics.tcp().active.inc();
        Self { shared: shared.clone(), pool: pool.clone() }
    }
}

impl Drop for Active {
    fn drop(&mut self) {
        self.shared.status.active_connections.fetch_sub(1, Ordering::AcqRel);
        self.pool.service_connections.fetch_sub(1, Ordering::AcqRel);
        self.pool.metrics.tcp().active.dec();
    }
}

/// Takes a freshly accepted connection: resets it at once when over the
/// limit, otherwise registers and serves it on the current runtime: the
/// worker that accepted it (see `workers`).
pub(crate) fn admit(shared: &Arc<Shared>, pool: &Arc<Pool>, client: std::net::TcpStream, peer: SocketAddr) {
    let status = &shared.status;
    status.total_connections.fetch_add(1, Ordering::Relaxed);
    let metrics = pool.metrics.tcp();
    metrics.opened.inc();
    let max = shared.live.max_connections();
    if status.active_connections.fetch_add(1, Ordering::AcqRel) >= max {
        status.active_connections.fetch_sub(1, Ordering::AcqRel);
        status.failed_connections.fetch_add(1, Ordering::Relaxed);
        status.rejected_connections.fetch_add(1, Ordering::Relaxed);
        metrics.failed(FailReason::Limit).inc();
        pool.report(&ProxyError::OverLimit { addr: pool.addr, max });
        reset(client);
        return;
    }
    let per_service = shared.live.max_connections_per_service();
    if pool.service_connections.fetch_add(1, Ordering::AcqRel) >= per_service && per_service > 0 {
        pool.service_connections.fetch_sub(1, Ordering::AcqRel);
        status.active_connections.fetch_sub(1, Ordering::AcqRel);
        status.failed_connections.fetch_add(1, Ordering::Relaxed);
        metrics.failed(FailReason::Limit).inc();
        let error = ProxyError::ServiceOverLimit { service: pool.service.clone(), addr: pool.addr, max: per_service };
        pool.report(&error);
        reset(client);
        return;
    }
    let active = Active::new(shared, pool);
    tokio::spawn(shared.tracker.track_future(async move {
        match TcpStream::from_std(client) {
            Ok(client) => serve(client, peer.ip(), active).await,
            Err(e) => {
                active.shared.status.failed_connections.fetch_add(1, Ordering::Relaxed);
                // Out of kernel resources (epoll watches, memory): a limit.
                active.pool.metrics.tcp().failed(FailReason::Limit).inc();
                if active.pool.warnings.allow() {
                    tracing::warn!(service = %active.pool.service, listener = %active.pool.addr, error = %e,
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
async fn serve(client: TcpStream, peer: IpAddr, active: Active) {
    let (shared, pool) = (&active.shared, &active.pool);
    let stop = shared.stop.cancelled();
    let work = proxy(client, peer, pool, shared);
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

/// The connection's work: the HTTP layer's, or forwarding. A plain
/// function choosing between two futures, so that the forwarding future is
/// not nested in another one (each level would keep its own copy of the
/// arguments in the connection's task).
fn proxy<'a>(
    client: TcpStream,
    peer: IpAddr,
    pool: &'a Arc<Pool>,
    shared: &'a Shared,
) -> impl Future<Output = ()> + Send + 'a {
    if let Some(http) = &shared.http
        && pool.targets().app_protocol.is_http()
    {
        // `serve` is boxed already: the L4 future does not grow.
        return Either::Left(http.serve(http_connection(client, peer, pool, shared)));
    }
    Either::Right(forward_to(client, peer, pool, shared))
}

/// Where a connection's dial settings come from: the proxy's live
/// settings ([`Shared`]) or a caller outside the proxy ([`L4Dial`]).
/// Generic, so that the proxy's own connections hold one reference for
/// them, read when needed.
trait Dial: Sync {
    fn reach(&self) -> &Reach;
    fn connect_timeout(&self) -> Duration;
    fn upstream_mark(&self) -> Option<u32>;
    fn lifetime(&self) -> Lifetime;
    /// A connection could not be forwarded.
    fn failed(&self) {}
}

impl Dial for Shared {
    fn reach(&self) -> &Reach {
        &self.reach
    }

    fn connect_timeout(&self) -> Duration {
        self.live.connect_timeout()
    }

    fn upstream_mark(&self) -> Option<u32> {
        self.config.upstream_mark
    }

    fn lifetime(&self) -> Lifetime {
        self.live.lifetime()
    }

    fn failed(&self) {
        self.status.failed_connections.fetch_add(1, Ordering::Relaxed);
    }
}

impl Dial for L4Dial {
    fn reach(&self) -> &Reach {
        &self.reach
    }

    fn connect_timeout(&self) -> Duration {
        self.connect_timeout
    }

    fn upstream_mark(&self) -> Option<u32> {
        self.upstream_mark
    }

    fn lifetime(&self) -> Lifetime {
        Lifetime { idle: self.idle_timeout, max: self.max_duration }
    }
}

/// How a connection accepted outside the proxy (the gateway's TCP and TLS
/// passthrough listeners) reaches a pool's endpoints: what the proxy's
/// own connections read from its settings.
#[derive(Clone)]
pub struct L4Dial {
    /// Which endpoints are dialled directly and which through the tunnel.
    pub reach: Reach,
    /// How long one direct connect may take.
    pub connect_timeout: Duration,
    /// Mark for upstream sockets (`intercept.mark`).
    pub upstream_mark: Option<u32>,
    /// No byte either way for this long closes the connection (0: never).
    pub idle_timeout: Duration,
    /// Open this long resets the connection (0: never).
    pub max_duration: Duration,
}

/// Forwards `client` to one of `pool`'s endpoints as the proxy forwards its
/// own connections: the pool's pick and passive health, connect with retry
/// on the next endpoint, local endpoints spliced and remote ones through
/// the tunnel, the pool's metrics, the lifetime bounds. Bytes the caller
/// only peeked at (`MSG_PEEK`) are forwarded too. When no endpoint can be
/// reached, the client is reset and the pool says why. Dropping the future
/// closes both sides (the gateway's drain does) and still counts the
/// connection out of the active gauge.
pub async fn forward(client: TcpStream, peer: IpAddr, pool: &Arc<Pool>, dial: &L4Dial) {
    struct Open<'a>(&'a Pool);
    impl Drop for Open<'_> {
        fn drop(&mut self) {
            self.0.metrics.tcp().active.dec();
        }
    }
    pool.metrics.tcp().opened.inc();
    pool.metrics.tcp().active.inc();
    let _open = Open(pool);
    forward_to(client, peer, pool, dial).await;
}

/// The forwarding of one admitted connection; one that cannot be
/// connected is counted, reported, and the client reset.
async fn forward_to<D: Dial>(client: TcpStream, peer: IpAddr, pool: &Arc<Pool>, dial: &D) {
    let accepted = tokio::time::Instant::now();
    // `client` has TCP_NODELAY from its listening socket.
    // Boxed: the connect phase (header peek, timer, retry loop) is larger
    // than the forwarding phase and is over in a moment.
    let upstream = match Box::pin(connect(pool, &client, peer, dial)).await {
        Ok(upstream) => upstream,
        Err(error) => {
            dial.failed();
            pool.metrics.tcp().failed(FailReason::of(&error)).inc();
            if !matches!(error, ProxyError::AllBackendsFailed { .. }) {
                // Each endpoint failure was reported already.
                pool.report(&error);
            }
            reset(client);
            return;
        }
    };
    let counters = &pool.metrics.tcp().bytes;
    let result = match upstream {
        Upstream::Local(backend) => {
            let forward = splice::forward_counting(&client, &backend, counters);
            let result = lifetime::within(forward, splice::Forward::moved, accepted, dial.lifetime()).await;
            if matches!(result, Err(Cut::MaxDuration)) {
                // Cut mid-stream: a FIN would pass for a complete reply.
                reset(backend);
                reset(client);
            }
            result
        }
        // Boxed: copying to the tunnel needs buffers and a larger future;
        // keep the common, local connection's future small.
        Upstream::Remote(stream) => Box::pin(forward_remote(client, stream, counters, accepted, dial.lifetime())).await,
    };
    pool.metrics.tcp().duration.observe(accepted.elapsed().as_secs_f64());
    match result {
        Ok(Ok(moved)) => tracing::trace!(service = %pool.service, ?moved, "connection closed"),
        Ok(Err(error)) => tracing::debug!(service = %pool.service, %error, "connection ended with an error"),
        Err(cut) => {
            pool.metrics.tcp().cut(cut).inc();
            if pool.time_limits.allow() {
                let lifetime = dial.lifetime();
                let (setting, after) = match cut {
                    Cut::Idle => ("proxy.idleTimeout", lifetime.idle),
                    Cut::MaxDuration => ("proxy.maxConnectionDuration", lifetime.max),
                };
                tracing::info!(service = %pool.service, listener = %pool.addr, setting, ?after,
                    "closed a connection at its time limit");
            }
        }
    }
}

/// What the HTTP layer needs to serve `client`, a connection to `pool`'s
/// HTTP port.
fn http_connection(client: TcpStream, peer: IpAddr, pool: &Arc<Pool>, shared: &Shared) -> HttpConnection {
    let peer = client.peer_addr().unwrap_or(SocketAddr::new(peer, 0));
    HttpConnection {
        client: ClientStream::Tcp(client),
        peer,
        pool: pool.clone(),
        reach: shared.reach.clone(),
        connect_timeout: shared.live.connect_timeout(),
        upstream_mark: shared.config.upstream_mark,
        drain: shared.drain.clone(),
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
/// a complete response. `[sent, received]` count the bytes written each
/// way as they are written; `lifetime` bounds it as a local connection.
async fn forward_remote(
    client: TcpStream,
    stream: RemoteStream,
    [sent, received]: &[Counter; 2],
    accepted: tokio::time::Instant,
    lifetime: Lifetime,
) -> Result<std::io::Result<splice::Transferred>, Cut> {
    let moved = AtomicU64::new(0);
    let mut client = Counted::new(client, received, &moved);
    let mut stream = Counted::new(stream, sent, &moved);
    let copy = tokio::io::copy_bidirectional_with_sizes(&mut client, &mut stream, REMOTE_COPY_BUF, REMOTE_COPY_BUF);
    let result = lifetime::within(Box::pin(copy), |_| moved.load(Ordering::Relaxed), accepted, lifetime).await;
    match result {
        Ok(Ok((a_to_b, b_to_a))) => Ok(Ok(splice::Transferred { a_to_b, b_to_a })),
        Ok(Err(e)) => {
            reset(client.into_inner());
            Ok(Err(e))
        }
        Err(cut) => {
            if cut == Cut::MaxDuration {
                reset(client.into_inner());
            }
            Err(cut)
        }
    }
}

/// Connects to the chosen endpoint, or to the next ones in the plan when it
/// refuses or times out; each endpoint is tried at most once, and each
/// failure ejects the endpoint for a while (see [`balance::Health`]).
/// Endpoints on other nodes are opened through the tunnel, if there is one.
async fn connect<D: Dial>(pool: &Pool, client: &TcpStream, peer: IpAddr, dial: &D) -> Result<Upstream, ProxyError> {
    let timeout = dial.connect_timeout();
    let targets = pool.targets();
    let n = targets.backends.len();
    if n == 0 {
        return Err(pool.no_backends(&targets));
    }
    let key = match (&targets.strategy, &targets.hash_key) {
        (LbStrategy::ConsistentHash, HashKey::Header(name)) => match peek_header(client, name).await {
            Some(value) => balance::hash_bytes(&value),
            None => balance::hash_ip(peer),
        },
        (LbStrategy::ConsistentHash, HashKey::SourceIp | HashKey::Cookie(_)) => balance::hash_ip(peer),
        _ => 0,
    };
    let started = Instant::now();
    let connected = |upstream| {
        pool.metrics.tcp().connect.observe(started.elapsed().as_secs_f64());
        Ok(upstream)
    };
    let mut last = None;
    for i in pool.plan(&targets, peer, key) {
        let backend = &targets.backends[i];
        let addr = backend.addr;
        let error = if let Some((node, remote)) = dial.reach().remote_for(backend) {
            let timeout = dial.reach().timeout();
            match tokio::time::timeout(timeout, remote.open_tcp(node, addr, &pool.service)).await {
                Ok(Ok(stream)) => {
                    pool.connected(&targets, peer, addr);
                    return connected(Upstream::Remote(stream));
                }
                Ok(Err(e)) => ProxyError::remote(node, addr, e),
                Err(_) => ProxyError::RemoteTimedOut { node: node.to_owned(), addr, timeout },
            }
        } else {
            match tokio::time::timeout(timeout, connect_one(addr, dial.upstream_mark())).await {
                Ok(Ok(stream)) => {
                    pool.connected(&targets, peer, addr);
                    return connected(Upstream::Local(stream));
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

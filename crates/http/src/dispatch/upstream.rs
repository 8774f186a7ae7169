//! Connections to endpoints: dialled directly (local endpoints) or opened
//! through the tunnel (endpoints on other nodes), spoken HTTP/1.1 or
//! HTTP/2 (prior knowledge) as the port says, and pooled.
//!
//! # Pooling
//!
//! Connections are kept per endpoint *and per worker thread*: the proxy
//! runs client connections on several single-threaded runtimes, and a
//! hyper connection is driven by a task on the runtime that opened it. A
//! request served on another worker would wake that task's thread for
//! every read and write; kept per thread, a request and its upstream
//! connection share one event loop, as the L4 path's splice does.
//!
//! - HTTP/1.1: one request at a time per connection. A connection goes back
//!   to its endpoint's list when the response head arrives; it is taken
//!   again only once hyper says it is ready (the previous response was
//!   read to its end) and never once it is closed (the endpoint hung up).
//!   At most `maxIdlePerEndpoint` are kept per worker thread (each thread
//!   serves its own clients: a limit shared by the threads would close
//!   connections one thread's clients still need whenever the others
//!   hold many); an upgrade (WebSocket) gets a
//!   connection of its own that is never pooled.
//! - HTTP/2: one multiplexed connection per endpoint and thread.
//! - Either way, a connection that moved no byte for
//!   `upstreamIdleTimeout` is closed by the task that drives it.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::thread::ThreadId;
use std::time::Duration;

use edgemesh_core::{AppProtocol, Backend};
use edgemesh_proxy::RemoteStream;
use hyper::body::Incoming;
use hyper::client::conn::{TrySendError, http1, http2};
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

use super::RequestContext;
use super::retry::ReplayBody;

/// How requests reach one endpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    Http1,
    Http2,
    /// HTTP/1.1 on a connection of its own that may be upgraded.
    Upgrade,
}

impl Protocol {
    pub fn of(app: AppProtocol, upgrade: bool) -> Self {
        match (app, upgrade) {
            (_, true) => Protocol::Upgrade,
            (AppProtocol::Http2, false) => Protocol::Http2,
            _ => Protocol::Http1,
        }
    }
}

/// A connection's request handle.
pub enum Sender {
    Http1(http1::SendRequest<ReplayBody>),
    Http2(http2::SendRequest<ReplayBody>),
}

impl Sender {
    /// Sends `req`; on failure, the request comes back with the error when
    /// none of it was written.
    pub async fn send(
        &mut self,
        req: Request<ReplayBody>,
    ) -> Result<Response<Incoming>, TrySendError<Request<ReplayBody>>> {
        match self {
            Sender::Http1(s) => s.try_send_request(req).await,
            Sender::Http2(s) => s.try_send_request(req).await,
        }
    }
}

/// Why no connection to an endpoint could be had.
#[derive(Debug)]
pub enum OpenError {
    /// The connect (or tunnel open) failed or timed out: nothing was sent.
    Connect(String),
    /// Connected, but the HTTP handshake failed.
    Handshake(String),
}

impl std::fmt::Display for OpenError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OpenError::Connect(e) | OpenError::Handshake(e) => f.write_str(e),
        }
    }
}

/// Opens a connection to `backend` and starts the task that drives it (on
/// the current runtime).
pub async fn open(
    ctx: &RequestContext,
    backend: &Backend,
    protocol: Protocol,
    idle_timeout: Duration,
) -> Result<Sender, OpenError> {
    let stream = connect(ctx, backend).await.map_err(OpenError::Connect)?;
    let activity = Arc::new(Activity::default());
    let io = TokioIo::new(Stamped { inner: stream, activity: activity.clone() });
    let handshake = |e: hyper::Error| OpenError::Handshake(format!("HTTP handshake with {}: {e}", backend.addr));
    match protocol {
        Protocol::Http1 => {
            let (sender, conn) = http1::handshake(io).await.map_err(handshake)?;
            tokio::spawn(drive(conn, activity, idle_timeout));
            Ok(Sender::Http1(sender))
        }
        Protocol::Upgrade => {
            let (sender, conn) = http1::handshake(io).await.map_err(handshake)?;
            // Upgraded, the connection is the client's: no idle limit.
            tokio::spawn(drive(conn.with_upgrades(), activity, Duration::ZERO));
            Ok(Sender::Http1(sender))
        }
        Protocol::Http2 => {
            let (sender, conn) = http2::handshake(TokioExecutor::new(), io).await.map_err(handshake)?;
            tokio::spawn(drive(conn, activity, idle_timeout));
            Ok(Sender::Http2(sender))
        }
    }
}

/// A byte stream to `backend`: through the tunnel when it is on another
/// node, else a direct connect (`TCP_NODELAY`, the upstream mark).
pub async fn connect(ctx: &RequestContext, backend: &Backend) -> Result<RemoteStream, String> {
    let addr = backend.addr;
    if let Some((node, remote)) = ctx.reach.remote_for(backend) {
        let timeout = ctx.reach.timeout();
        return match tokio::time::timeout(timeout, remote.open_tcp(node, addr, &ctx.pool.service)).await {
            Ok(Ok(stream)) => Ok(stream),
            Ok(Err(e)) => Err(format!("endpoint {addr} on node {node}, through the tunnel: {e}")),
            Err(_) => Err(format!("endpoint {addr} on node {node}: no tunnel stream within {timeout:?}")),
        };
    }
    let timeout = ctx.connect_timeout;
    match tokio::time::timeout(timeout, connect_direct(addr, ctx.upstream_mark)).await {
        Ok(Ok(stream)) => Ok(Box::new(stream)),
        Ok(Err(e)) if e.kind() == io::ErrorKind::ConnectionRefused => {
            Err(format!("endpoint {addr} refused the connection; is the pod listening on its targetPort?"))
        }
        Ok(Err(e)) => Err(format!("connect to endpoint {addr}: {e}")),
        Err(_) => Err(format!("endpoint {addr} did not accept within {timeout:?}")),
    }
}

async fn connect_direct(addr: SocketAddr, mark: Option<u32>) -> io::Result<tokio::net::TcpStream> {
    let socket = if addr.is_ipv4() { tokio::net::TcpSocket::new_v4()? } else { tokio::net::TcpSocket::new_v6()? };
    if let Some(mark) = mark {
        // Interception lets marked packets pass: never redirected back here.
        socket2::SockRef::from(&socket).set_mark(mark)?;
    }
    socket.set_nodelay(true)?;
    socket.connect(addr).await
}

/// Idle connections are found by looking this many times per
/// `upstreamIdleTimeout` whether bytes moved since the last look.
const IDLE_LOOKS: u32 = 4;

/// Drives a connection until it ends, or until it moved no byte for
/// `idle` (zero: no limit); closed between `idle` and `idle` and a
/// quarter after its last byte. The stream only raises a flag per I/O: a
/// clock read per read and write cost more than the idle check is worth.
async fn drive<F>(conn: F, activity: Arc<Activity>, idle: Duration)
where
    F: std::future::Future<Output = hyper::Result<()>>,
{
    tokio::pin!(conn);
    let look = idle / IDLE_LOOKS;
    let mut looks = tokio::time::interval_at(Instant::now() + look, look.max(Duration::from_millis(1)));
    // After a stall, one look, not a burst of them that would find the
    // connection quiet at once.
    looks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut quiet = 0;
    loop {
        tokio::select! {
            ended = &mut conn => {
                if let Err(error) = ended {
                    tracing::debug!(%error, "upstream connection ended with an error");
                }
                return;
            }
            _ = looks.tick(), if !idle.is_zero() => {
                if activity.moved.swap(false, Ordering::Relaxed) {
                    quiet = 0;
                } else {
                    quiet += 1;
                    if quiet >= IDLE_LOOKS {
                        tracing::trace!(?idle, "idle upstream connection closed");
                        return;
                    }
                }
            }
        }
    }
}

/// Whether a connection moved bytes since its driver last looked.
#[derive(Default)]
struct Activity {
    moved: AtomicBool,
}

impl Activity {
    fn touch(&self) {
        self.moved.store(true, Ordering::Relaxed);
    }
}

/// A stream that tells its [`Activity`] when it moves bytes.
struct Stamped {
    inner: RemoteStream,
    activity: Arc<Activity>,
}

impl AsyncRead for Stamped {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if polled.is_ready() {
            self.activity.touch();
        }
        polled
    }
}

impl AsyncWrite for Stamped {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        if polled.is_ready() {
            self.activity.touch();
        }
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if polled.is_ready() {
            self.activity.touch();
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// One endpoint's pooled connections, per worker thread.
#[derive(Default)]
pub struct Idle {
    http1: Vec<(ThreadId, http1::SendRequest<ReplayBody>)>,
    http2: Vec<(ThreadId, http2::SendRequest<ReplayBody>)>,
}

impl Idle {
    /// A pooled connection of this thread ready for a request, if any;
    /// closed ones are dropped on the way.
    pub fn checkout(&mut self, protocol: Protocol, thread: ThreadId) -> Option<Sender> {
        match protocol {
            Protocol::Upgrade => None,
            Protocol::Http1 => {
                self.http1.retain(|(_, s)| !s.is_closed());
                // The most recently used first: the others may go idle and
                // be closed.
                let at = self.http1.iter().rposition(|(t, s)| *t == thread && s.is_ready())?;
                Some(Sender::Http1(self.http1.swap_remove(at).1))
            }
            Protocol::Http2 => {
                self.http2.retain(|(_, s)| !s.is_closed());
                let (_, s) = self.http2.iter().find(|(t, s)| *t == thread && s.is_ready())?;
                Some(Sender::Http2(s.clone()))
            }
        }
    }

    /// Keeps `sender` (its response head just arrived, or, HTTP/2, it was
    /// just opened) for the next requests of this thread; HTTP/1.1 unless
    /// `max` of this thread are kept already.
    pub fn checkin(&mut self, sender: Sender, thread: ThreadId, max: usize) {
        match sender {
            Sender::Http1(s) => {
                let kept = |idle: &Self| idle.http1.iter().filter(|(t, _)| *t == thread).count();
                if kept(self) >= max {
                    self.http1.retain(|(_, s)| !s.is_closed());
                }
                if kept(self) < max && !s.is_closed() {
                    self.http1.push((thread, s));
                }
            }
            // The thread's connection is the one that last served (one
            // found dead was replaced by a new one).
            Sender::Http2(s) => {
                self.http2.retain(|(t, old)| *t != thread && !old.is_closed());
                if !s.is_closed() {
                    self.http2.push((thread, s));
                }
            }
        }
    }
}

//! One client connection, from the hand-off to its close: hyper serves it;
//! this module adds what hyper does not do (the idle timeout, a deadline
//! for the HTTP/2 preface, the HTTP/1.1 request-head timeout), tells which
//! limit ended a connection from hyper's error, and handles each request
//! (headers, upgrades, errors).
//!
//! The head timeout is timed here rather than by hyper's
//! `header_read_timeout`: hyper starts that clock as soon as the previous
//! response is written, so a keep-alive connection idle for longer than the
//! head timeout (a pooled client's usual state) was closed as a slowloris,
//! and its timer was re-armed for every request. Here the clock starts at
//! the first byte of a head, and an idle connection only waits for its
//! idle timeout.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use bytes::{Buf, Bytes};
use edgemesh_proxy::{ClientStream, HttpConnection, HttpFuture};
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::service::service_fn;
use hyper::upgrade::OnUpgrade;
use hyper::{Request, Response, StatusCode, Version};
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::GracefulConnection;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::metrics::PortHandles;
use super::respond::{self, FrontBody};
use super::{Limit, MIN_HEADER_BYTES, Shared, Slot, headers, lean};
use crate::{RequestBody, RequestContext};

/// Length of the HTTP/2 connection preface (RFC 9113 §3.4).
const PREFACE_LEN: u64 = 24;

/// The start of the HTTP/2 connection preface (RFC 9113 §3.4); no HTTP/1.1
/// method is `PRI`.
const HTTP2_PREFACE_START: &[u8] = b"PRI * HTTP/2.0";

/// Whether a connection's first bytes may be the HTTP/2 preface.
pub(super) fn is_http2_preface_start(bytes: &[u8]) -> bool {
    let n = bytes.len().min(HTTP2_PREFACE_START.len());
    n > 0 && bytes[..n] == HTTP2_PREFACE_START[..n]
}

/// How often the timers look again when nothing is due.
const NOTHING_DUE: Duration = Duration::from_secs(3600);

/// How long an idle connection's graceful close may take before it is
/// dropped: HTTP/2's waits for the client to acknowledge the GOAWAY's PING,
/// which a silent client never does.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

type Tunnel = Pin<Box<dyn Future<Output = ()> + Send>>;

/// What the requests of one connection and its timers share.
pub(super) struct ConnState {
    peer: SocketAddr,
    /// The client's forwarding header values.
    forwarding: headers::Forwarding,
    accepted: Instant,
    /// Bytes read from the client so far.
    read: AtomicU64,
    /// No request in flight (mirrors `Flight::in_flight == 0` for the reader).
    idle: AtomicBool,
    /// When the first byte of the next request head arrived, in nanoseconds
    /// since `accepted` plus one; 0 while none has.
    head_started: AtomicU64,
    /// The client spoke the HTTP/2 preface: no head timeout between streams.
    http2: AtomicBool,
    flight: Mutex<Flight>,
    /// The upgraded connection's copy, run once hyper lets go of the
    /// connection (an HTTP/1.1 connection upgrades at most once).
    upgrade: Mutex<Option<Tunnel>>,
    /// The lean front is to close the connection once no request is in
    /// flight (drain, idle timeout).
    stop_lean: AtomicBool,
}

/// Requests in flight, and since when and from which byte there was none.
struct Flight {
    requests: u64,
    in_flight: usize,
    idle_since: Instant,
    read_at_idle: u64,
}

impl ConnState {
    /// A connection from `peer` (over TLS if `tls`) accepted at `now`.
    fn new(peer: SocketAddr, tls: bool, now: Instant) -> Self {
        Self {
            peer,
            forwarding: headers::Forwarding::with_tls(peer.ip(), tls),
            accepted: now,
            read: AtomicU64::new(0),
            idle: AtomicBool::new(true),
            head_started: AtomicU64::new(0),
            http2: AtomicBool::new(false),
            flight: Mutex::new(Flight { requests: 0, in_flight: 0, idle_since: now, read_at_idle: 0 }),
            upgrade: Mutex::new(None),
            stop_lean: AtomicBool::new(false),
        }
    }

    fn flight(&self) -> MutexGuard<'_, Flight> {
        self.flight.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A request started; returns how many are in flight now.
    fn start(&self) -> usize {
        let mut flight = self.flight();
        flight.requests += 1;
        flight.in_flight += 1;
        self.idle.store(false, Ordering::Relaxed);
        self.head_started.store(0, Ordering::Relaxed);
        flight.in_flight
    }

    fn finish(&self) {
        let mut flight = self.flight();
        flight.in_flight -= 1;
        if flight.in_flight == 0 {
            flight.idle_since = Instant::now();
            flight.read_at_idle = self.read.load(Ordering::Relaxed);
            self.head_started.store(0, Ordering::Relaxed);
            self.idle.store(true, Ordering::Relaxed);
        }
    }

    /// `bytes` were read from the client (its first bytes if `first`).
    fn received(&self, bytes: &[u8], first: bool) {
        if first && is_http2_preface_start(bytes) {
            self.http2.store(true, Ordering::Relaxed);
        }
        if self.idle.load(Ordering::Relaxed) && self.head_started.load(Ordering::Relaxed) == 0 {
            let since = u64::try_from(self.accepted.elapsed().as_nanos()).unwrap_or(u64::MAX - 1);
            self.head_started.store(since + 1, Ordering::Relaxed);
        }
    }

    /// Whether the lean front is to close the connection.
    pub(super) fn stopping(&self) -> bool {
        self.stop_lean.load(Ordering::Relaxed)
    }

    /// When the head being read began, if one is.
    fn head_started(&self) -> Option<Instant> {
        match self.head_started.load(Ordering::Relaxed) {
            0 => None,
            since => Some(self.accepted + Duration::from_nanos(since - 1)),
        }
    }

    /// Bytes the client sent since its last request ended (a partial head).
    fn read_since_idle(&self) -> u64 {
        self.read.load(Ordering::Relaxed).saturating_sub(self.flight().read_at_idle)
    }

    /// What the timers do at `now`.
    fn check(&self, head_timeout: Duration, idle_timeout: Duration, now: Instant) -> Check {
        let flight = self.flight();
        let mut next = now + NOTHING_DUE;
        // The wait for the preface that tells HTTP/2 from HTTP/1.1.
        if !head_timeout.is_zero() && flight.requests == 0 && self.read.load(Ordering::Relaxed) < PREFACE_LEN {
            let deadline = self.accepted + head_timeout;
            if now >= deadline {
                return Check::Preface;
            }
            next = next.min(deadline);
        }
        // An HTTP/1.1 head, from its first byte. While none has begun, look
        // again a head timeout later (the reader cannot re-arm this timer),
        // so a head is cut at its deadline however late it began.
        // A request in flight: look again a head timeout later all the same,
        // or a check that fell in a request would leave the next head
        // unwatched until the idle timeout.
        if !head_timeout.is_zero() && !self.http2.load(Ordering::Relaxed) {
            match self.head_started().filter(|_| flight.in_flight == 0) {
                Some(started) if now >= started + head_timeout => return Check::Head,
                Some(started) => next = next.min(started + head_timeout),
                None => next = next.min(now + head_timeout),
            }
        }
        if !idle_timeout.is_zero() {
            if flight.in_flight == 0 {
                let deadline = flight.idle_since + idle_timeout;
                if now >= deadline {
                    return Check::Idle;
                }
                next = next.min(deadline);
            } else {
                next = next.min(now + idle_timeout);
            }
        }
        Check::Wait(next)
    }
}

enum Check {
    Wait(Instant),
    /// No preface (nor HTTP/1.1 request line) within the head timeout.
    Preface,
    /// An HTTP/1.1 request head not complete within the head timeout.
    Head,
    /// No request in flight for the idle timeout.
    Idle,
}

/// Serves `conn` until the client closes it, a limit closes it, or the
/// proxy drops this future at shutdown. Each kind of client stream is
/// served by its own instance of [`serve_stream`]: a plain socket is read
/// without indirection.
pub(super) fn serve(front: Arc<Shared>, conn: HttpConnection, slot: Slot) -> HttpFuture {
    let HttpConnection { client, peer, pool, reach, connect_timeout, upstream_mark, drain } = conn;
    let ctx =
        RequestContext { pool, reach, connect_timeout, upstream_mark, client: peer, timeouts: Default::default() };
    match client {
        ClientStream::Tcp(client) => Box::pin(serve_stream(front, client, ctx, drain, slot, Scheme::Http)),
        ClientStream::Tls(client) => Box::pin(serve_stream(front, client, ctx, drain, slot, Scheme::Https)),
    }
}

/// What the client's requests arrived over, for the forwarding headers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Scheme {
    Http,
    /// A TLS session the gateway terminated.
    Https,
}

/// [`serve`] over any byte stream from the client (a TCP socket, a TLS
/// session, or an in-memory one in the fuzz target); `ctx.client` is its
/// peer.
pub(super) async fn serve_stream<S>(
    front: Arc<Shared>,
    client: S,
    ctx: RequestContext,
    drain: CancellationToken,
    _slot: Slot,
    scheme: Scheme,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let peer = ctx.client;
    // The proxy's label for the port (bounded by `metrics.maxServices`).
    let label = ctx.pool.service_label().unwrap_or_else(|| Arc::from(ctx.pool.service.to_string()));
    let handles = Arc::new(front.metrics.port(label, ctx.pool.port));
    handles.active.inc();
    let _active = scopeguard(handles.clone());
    let ctx = Arc::new(ctx);
    let now = Instant::now();
    let state = Arc::new(ConnState::new(peer, scheme == Scheme::Https, now));
    let io = Counting { inner: client, state: state.clone(), unread: Bytes::new() };
    let service = {
        let (front, ctx, state, handles) = (front.clone(), ctx.clone(), state.clone(), handles.clone());
        service_fn(move |req: Request<Incoming>| {
            handle(front.clone(), ctx.clone(), state.clone(), handles.clone(), req.map(RequestBody::Hyper))
        })
    };
    // The lean front first; hyper from the first request it does not take.
    let lean = lean::serve(io, front.clone(), ctx, state.clone(), handles);
    let mut phase = Phase::Lean(Box::pin(lean));
    let (head_timeout, idle_timeout) = (front.config.request_head_timeout, front.config.idle_timeout);
    let timer = tokio::time::sleep(NOTHING_DUE);
    tokio::pin!(timer);
    timer.as_mut().reset(now);
    let mut closing = false;
    // Closing for idleness: the connection is dropped if it lingers.
    let mut idle_closing = false;
    let limits = &front.metrics.limits;
    let draining = drain.cancelled();
    tokio::pin!(draining);
    // The timer and the drain are polled only when one of them woke the
    // task (and after either was handled): a wake-up for the connection,
    // the usual one, costs no poll of them.
    let side = Arc::new(SideWake::default());
    let side_waker = Waker::from(side.clone());
    let result = loop {
        let event = std::future::poll_fn(|cx| {
            if let Poll::Ready(step) = phase.poll_step(cx) {
                return Poll::Ready(Event::Step(step));
            }
            if side.take(cx.waker()) {
                let mut side_cx = Context::from_waker(&side_waker);
                if !closing && draining.as_mut().poll(&mut side_cx).is_ready() {
                    return Poll::Ready(Event::Drain);
                }
                if (!closing || idle_closing) && timer.as_mut().poll(&mut side_cx).is_ready() {
                    return Poll::Ready(Event::Timer);
                }
            }
            Poll::Pending
        })
        .await;
        match event {
            Event::Step(Step::Handoff(mut io, unread)) => {
                io.unread = unread;
                let mut conn =
                    Box::pin(front.builder.serve_connection_with_upgrades(TokioIo::new(io), service.clone()));
                if closing {
                    conn.as_mut().graceful_shutdown();
                }
                phase = Phase::Hyper(conn);
                continue;
            }
            Event::Step(Step::Ended(result)) => break result,
            Event::Drain => {
                // HTTP/1.1: close once the response in flight is sent;
                // HTTP/2: GOAWAY, the open streams finish.
                closing = true;
                phase.graceful_shutdown(&state);
            }
            Event::Timer if idle_closing => {
                // A request that came in meanwhile (HTTP/2) is let finish.
                if state.flight().in_flight == 0 {
                    break Ok(());
                }
                timer.as_mut().reset(Instant::now() + CLOSE_GRACE);
            }
            Event::Timer => match state.check(head_timeout, idle_timeout, Instant::now()) {
                Check::Wait(at) => timer.as_mut().reset(at),
                Check::Preface | Check::Head => {
                    limits.hit(Limit::HeadTimeout, Some(peer));
                    break Ok(());
                }
                Check::Idle => {
                    limits.hit(Limit::IdleTimeout, Some(peer));
                    closing = true;
                    idle_closing = true;
                    phase.graceful_shutdown(&state);
                    timer.as_mut().reset(Instant::now() + CLOSE_GRACE);
                }
            },
        }
        // What was handled may have re-armed the timer or ended the drain's
        // branch: look at both again.
        side.woken.store(true, Ordering::Relaxed);
    };
    if let Err(error) = result {
        match error.downcast_ref::<hyper::Error>() {
            Some(e) if e.is_parse_too_large() => {
                let max = front.config.max_header_bytes.max(MIN_HEADER_BYTES) as u64;
                let limit = if state.read_since_idle() >= max { Limit::HeaderSize } else { Limit::HeaderCount };
                limits.hit(limit, Some(peer));
            }
            _ => tracing::debug!(%peer, %error, "client connection ended with an error"),
        }
    }
    let upgrade = state.upgrade.lock().unwrap_or_else(PoisonError::into_inner).take();
    if let Some(tunnel) = upgrade {
        tunnel.await;
    }
}

/// What serves a connection now: the lean front ([`lean`]), then hyper.
enum Phase<L, H> {
    Lean(Pin<Box<L>>),
    Hyper(Pin<Box<H>>),
}

/// What woke the connection's loop.
enum Event<S> {
    Step(Step<S>),
    Drain,
    Timer,
}

/// The waker handed to the timer and the drain: notes that one of them
/// woke the task, then wakes it.
struct SideWake {
    woken: AtomicBool,
    task: Mutex<Option<Waker>>,
}

impl Default for SideWake {
    fn default() -> Self {
        // Woken at first: both are polled once, to register.
        Self { woken: AtomicBool::new(true), task: Mutex::new(None) }
    }
}

impl SideWake {
    /// Whether the timer or the drain woke the task since the last call;
    /// `task` is the waker to wake next time. (It is taken only then: the
    /// connection's future is spawned once, and its task's waker wakes
    /// that task whichever poll it came from.)
    fn take(&self, task: &Waker) -> bool {
        if !self.woken.load(Ordering::Acquire) {
            return false;
        }
        let mut held = self.task.lock().unwrap_or_else(PoisonError::into_inner);
        if !held.as_ref().is_some_and(|held| held.will_wake(task)) {
            *held = Some(task.clone());
        }
        drop(held);
        self.woken.swap(false, Ordering::AcqRel)
    }
}

impl Wake for SideWake {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        if let Some(task) = self.task.lock().unwrap_or_else(PoisonError::into_inner).as_ref() {
            task.wake_by_ref();
        }
    }
}

/// What a phase came to.
enum Step<S> {
    /// The lean front handed the connection to hyper, with the bytes it
    /// read and did not serve.
    Handoff(S, Bytes),
    /// The connection is over.
    Ended(Result<(), BoxError>),
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl<L, H, S> Phase<L, H>
where
    L: Future<Output = io::Result<lean::LeanEnd<S>>>,
    H: GracefulConnection<Error = BoxError>,
{
    fn poll_step(&mut self, cx: &mut Context<'_>) -> Poll<Step<S>> {
        match self {
            Phase::Lean(lean) => Poll::Ready(match std::task::ready!(lean.as_mut().poll(cx)) {
                Ok(lean::LeanEnd::Closed) => Step::Ended(Ok(())),
                Ok(lean::LeanEnd::Handoff(io, unread)) => Step::Handoff(io, unread),
                Err(e) => Step::Ended(Err(e.into())),
            }),
            Phase::Hyper(conn) => conn.as_mut().poll(cx).map(Step::Ended),
        }
    }

    /// HTTP/1.1: close once the response in flight is sent; HTTP/2:
    /// GOAWAY, the open streams finish.
    fn graceful_shutdown(&mut self, state: &ConnState) {
        match self {
            Phase::Lean(_) => state.stop_lean.store(true, Ordering::Relaxed),
            Phase::Hyper(conn) => conn.as_mut().graceful_shutdown(),
        }
    }
}

/// Decrements the connection gauge when the connection ends.
fn scopeguard(handles: Arc<PortHandles>) -> impl Drop {
    struct Guard(Arc<PortHandles>);
    impl Drop for Guard {
        fn drop(&mut self) {
            self.0.active.dec();
        }
    }
    Guard(handles)
}

/// Ends a request when its response body ends: its duration, and its
/// connection's time in flight.
pub(super) struct RequestDone {
    state: Arc<ConnState>,
    handles: Arc<PortHandles>,
    started: Instant,
}

impl Drop for RequestDone {
    fn drop(&mut self) {
        self.handles.duration.observe(self.started.elapsed().as_secs_f64());
        self.state.finish();
    }
}

pub(super) type FrontResponse = Response<FrontBody<RequestDone>>;

/// One request: headers cleaned and extended, sent through the upstream,
/// and its response (or the error's) cleaned in turn.
pub(super) async fn handle(
    front: Arc<Shared>,
    ctx: Arc<RequestContext>,
    state: Arc<ConnState>,
    handles: Arc<PortHandles>,
    mut req: Request<RequestBody>,
) -> Result<FrontResponse, Infallible> {
    let in_flight = state.start();
    let done = RequestDone { state: state.clone(), handles: handles.clone(), started: Instant::now() };
    if req.version() == Version::HTTP_2 && in_flight >= front.config.max_concurrent_streams as usize {
        front.metrics.limits.hit(Limit::Streams, Some(state.peer));
    }
    let grpc = headers::is_grpc(req.headers());
    let upgrade = if req.version() == Version::HTTP_11 { headers::upgrade(req.headers()) } else { None };
    headers::strip_hop_by_hop(req.headers_mut(), upgrade.as_ref());
    headers::add_forwarding(req.headers_mut(), &state.forwarding);
    let client_side = upgrade.is_some().then(|| hyper::upgrade::on(&mut req));
    let response = match front.upstream.send(req, ctx.clone()).await {
        Ok(mut response) => {
            let switched = response.status() == StatusCode::SWITCHING_PROTOCOLS;
            let protocol: Option<HeaderValue> = match (&client_side, switched) {
                (Some(_), true) => response.headers().get(header::UPGRADE).cloned(),
                _ => None,
            };
            headers::strip_hop_by_hop(response.headers_mut(), protocol.as_ref());
            if let (Some(client_side), true) = (client_side, switched) {
                let endpoint_side = hyper::upgrade::on(&mut response);
                let tunnel = Box::pin(tunnel(client_side, endpoint_side, state.peer));
                *state.upgrade.lock().unwrap_or_else(PoisonError::into_inner) = Some(tunnel);
            }
            response.map(|body| FrontBody::upstream(body, done))
        }
        Err(error) => {
            tracing::debug!(service = %ctx.pool.service, port = ctx.pool.port, %error, "request answered by the agent");
            let (parts, text) = respond::error_response(&error, &ctx.pool.service, ctx.pool.port, grpc);
            parts.map(|()| FrontBody::local(text, done))
        }
    };
    handles.answered(response.status());
    Ok(response)
}

/// Copies between the client's and the endpoint's upgraded connections
/// (WebSocket and the like) until both are done.
async fn tunnel(client: OnUpgrade, endpoint: OnUpgrade, peer: SocketAddr) {
    let (client, endpoint) = match tokio::try_join!(client, endpoint) {
        Ok(both) => both,
        Err(error) => {
            tracing::debug!(%peer, %error, "upgrade did not complete");
            return;
        }
    };
    let (mut client, mut endpoint) = (TokioIo::new(client), TokioIo::new(endpoint));
    match tokio::io::copy_bidirectional(&mut client, &mut endpoint).await {
        Ok(moved) => tracing::trace!(%peer, ?moved, "upgraded connection closed"),
        Err(error) => tracing::debug!(%peer, %error, "upgraded connection ended with an error"),
    }
}

/// The client's socket, counting the bytes read (to tell a partial head
/// from an idle connection). When the lean front hands the connection to
/// hyper, the bytes it read and did not serve are `unread`: they are read
/// again first (counted once, when they came from the socket).
struct Counting<S> {
    inner: S,
    state: Arc<ConnState>,
    unread: Bytes,
}

impl<S: AsyncRead + Unpin> AsyncRead for Counting<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        if !self.unread.is_empty() {
            let n = self.unread.len().min(buf.remaining());
            buf.put_slice(&self.unread[..n]);
            self.unread.advance(n);
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        let bytes = &buf.filled()[before..];
        if !bytes.is_empty() {
            let first = self.state.read.fetch_add(bytes.len() as u64, Ordering::Relaxed) == 0;
            self.state.received(bytes, first);
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Counting<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
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

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    #[tokio::test]
    async fn bytes_handed_back_unread_are_read_first_and_counted_once() {
        let (mut near, far) = tokio::io::duplex(64);
        let state = Arc::new(ConnState::new("127.0.0.1:40000".parse().unwrap(), false, Instant::now()));
        let mut io = Counting { inner: far, state: state.clone(), unread: Bytes::from_static(b"GET ") };
        near.write_all(b"/ HTTP/1.1").await.unwrap();
        drop(near);
        let mut all = Vec::new();
        io.read_to_end(&mut all).await.unwrap();
        assert_eq!(all, b"GET / HTTP/1.1");
        assert_eq!(state.read.load(Ordering::Relaxed), 10, "only the socket's bytes are counted");
    }
}

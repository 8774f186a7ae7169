//! yamux as a libp2p stream muxer, with the limits we need.
//!
//! Adapted from libp2p-yamux 0.48 (MIT). libp2p-yamux exposes only `set_max_num_streams` and
//! keeps yamux's fixed 1 GiB connection window, which must be at least 256 KiB per stream: so
//! at most 4096 streams. Worse, yamux counts the streams of *both* directions against that
//! limit and, when it is reached, fails the whole connection: opening one stream too many
//! kills every stream on it (the "UDP breaks on stream limits" failure of EdgeMesh). Here the
//! yamux limit is set to twice the per-direction limit plus a margin (the tunnel never opens
//! more than its per-direction limit on one connection, see `streams::Control`, and peers run
//! the same code), with the window sized to match.
//!
//! A stream whose connection is lost must not look like one the peer ended: yamux ends the
//! reads of a lost connection's streams with a plain end of file (or never, when the connection
//! is closed gracefully by us), and the proxy would hand the client a clean FIN, which looks
//! like success. So each [`Stream`] shares its connection's fate: once the connection failed or
//! is being closed, a read ends with `ConnectionReset` ([`StreamReset::ConnectionLost`]), and
//! a stream reset by the peer reads as [`StreamReset::ByPeer`].

use std::{
    collections::VecDeque,
    io, iter,
    pin::Pin,
    sync::{
        Arc, Mutex, Weak,
        atomic::{AtomicBool, Ordering},
    },
    task::{Context, Poll, Waker},
};

use futures::{AsyncRead, AsyncWrite, future, ready, task::AtomicWaker};
use libp2p::core::{
    muxing::{StreamMuxer, StreamMuxerEvent},
    upgrade::{InboundConnectionUpgrade, OutboundConnectionUpgrade, UpgradeInfo},
};

/// Streams besides the proxy streams (identify, ping, hello, relay, ...) and streams being torn
/// down.
const MARGIN: usize = 256;
/// yamux's initial (and minimum) per-stream window.
const STREAM_WINDOW: usize = 256 * 1024;
const MAX_BUFFERED_INBOUND_STREAMS: usize = 1024;

#[derive(Clone)]
pub(crate) struct Config(yamux::Config);

impl Config {
    /// A yamux configuration for `per_direction` proxy streams each way.
    pub(crate) fn new(per_direction: usize) -> Config {
        let max = per_direction * 2 + MARGIN;
        let mut c = yamux::Config::default();
        // Window first (never below yamux's default of 1 GiB, which covers 512 streams, the
        // default limit): both setters assert that the window covers the streams.
        c.set_max_connection_receive_window(Some((max * STREAM_WINDOW).max(1 << 30)));
        c.set_max_num_streams(max);
        Config(c)
    }
}

impl UpgradeInfo for Config {
    type Info = &'static str;
    type InfoIter = iter::Once<Self::Info>;

    fn protocol_info(&self) -> Self::InfoIter {
        iter::once("/yamux/1.0.0")
    }
}

impl<C> InboundConnectionUpgrade<C> for Config
where
    C: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    type Output = Muxer<C>;
    type Error = io::Error;
    type Future = future::Ready<Result<Muxer<C>, io::Error>>;

    fn upgrade_inbound(self, io: C, _: Self::Info) -> Self::Future {
        future::ready(Ok(Muxer::new(yamux::Connection::new(io, self.0, yamux::Mode::Server))))
    }
}

impl<C> OutboundConnectionUpgrade<C> for Config
where
    C: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    type Output = Muxer<C>;
    type Error = io::Error;
    type Future = future::Ready<Result<Muxer<C>, io::Error>>;

    fn upgrade_outbound(self, io: C, _: Self::Info) -> Self::Future {
        future::ready(Ok(Muxer::new(yamux::Connection::new(io, self.0, yamux::Mode::Client))))
    }
}

pub(crate) struct Muxer<C> {
    connection: yamux::Connection<C>,
    /// Inbound streams that arrived while `poll` drove the connection.
    inbound: VecDeque<yamux::Stream>,
    inbound_waker: Option<Waker>,
    fate: Arc<Fate>,
}

impl<C> Muxer<C> {
    fn new(connection: yamux::Connection<C>) -> Self {
        Muxer { connection, inbound: VecDeque::new(), inbound_waker: None, fate: Arc::new(Fate::default()) }
    }

    fn stream(&self, inner: yamux::Stream) -> Stream {
        Stream::new(inner, &self.fate)
    }
}

impl<C> Drop for Muxer<C> {
    fn drop(&mut self) {
        self.fate.lose();
    }
}

/// Whether a connection is lost (failed, being closed or gone), shared with its streams.
#[derive(Default)]
struct Fate {
    lost: AtomicBool,
    /// The readers of the connection's streams, woken when it is lost.
    readers: Mutex<Vec<Weak<AtomicWaker>>>,
}

impl Fate {
    fn lose(&self) {
        if self.lost.swap(true, Ordering::AcqRel) {
            return;
        }
        let readers = std::mem::take(&mut *self.readers.lock().unwrap_or_else(|e| e.into_inner()));
        for r in readers.iter().filter_map(Weak::upgrade) {
            r.wake();
        }
    }

    fn register(&self, reader: &Arc<AtomicWaker>) {
        let mut readers = self.readers.lock().unwrap_or_else(|e| e.into_inner());
        // Drop the entries of ended streams now and then (amortised).
        if readers.len() >= 64 && readers.len().is_power_of_two() {
            readers.retain(|r| r.strong_count() > 0);
        }
        readers.push(Arc::downgrade(reader));
    }
}

/// Why a stream's reads ended with `ConnectionReset` (the error's payload).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum StreamReset {
    #[error("the tunnel connection carrying this stream was lost")]
    ConnectionLost,
    #[error("the peer reset the stream")]
    ByPeer,
}

impl StreamReset {
    /// The reason of an error a tunnel stream returned, if it is a reset.
    pub(crate) fn of(e: &io::Error) -> Option<StreamReset> {
        e.get_ref().and_then(|r| r.downcast_ref::<StreamReset>()).copied()
    }
}

/// A yamux stream that reads as reset, not ended, when its connection is lost.
pub(crate) struct Stream {
    inner: yamux::Stream,
    fate: Arc<Fate>,
    reader: Arc<AtomicWaker>,
    /// We closed our side (then the peer's FIN closes the stream for good: a normal end).
    closed: bool,
}

impl Stream {
    fn new(inner: yamux::Stream, fate: &Arc<Fate>) -> Self {
        let reader = Arc::new(AtomicWaker::new());
        fate.register(&reader);
        Stream { inner, fate: fate.clone(), reader, closed: false }
    }

    fn reset(why: StreamReset) -> io::Error {
        io::Error::new(io::ErrorKind::ConnectionReset, why)
    }
}

impl AsyncRead for Stream {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        this.reader.register(cx.waker());
        if this.fate.lost.load(Ordering::Acquire) {
            return Poll::Ready(Err(Self::reset(StreamReset::ConnectionLost)));
        }
        let n = ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
        if n == 0 && !buf.is_empty() && !this.closed && this.inner.is_closed() {
            // Closed without the peer's FIN (that leaves the write side open): a reset, by the
            // peer or because the connection failed.
            let why = match this.fate.lost.load(Ordering::Acquire) {
                true => StreamReset::ConnectionLost,
                false => StreamReset::ByPeer,
            };
            return Poll::Ready(Err(Self::reset(why)));
        }
        Poll::Ready(Ok(n))
    }
}

impl AsyncWrite for Stream {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.closed = true;
        Pin::new(&mut self.inner).poll_close(cx)
    }
}

fn to_io(e: yamux::ConnectionError) -> io::Error {
    match e {
        yamux::ConnectionError::Io(e) => e,
        e => io::Error::other(e),
    }
}

impl<C> Muxer<C>
where
    C: AsyncRead + AsyncWrite + Unpin + 'static,
{
    fn poll_inner(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<yamux::Stream>> {
        let result = match ready!(self.connection.poll_next_inbound(cx)) {
            Some(Ok(s)) => return Poll::Ready(Ok(s)),
            Some(Err(e)) => to_io(e),
            None => to_io(yamux::ConnectionError::Closed),
        };
        self.fate.lose();
        Poll::Ready(Err(result))
    }
}

impl<C> StreamMuxer for Muxer<C>
where
    C: AsyncRead + AsyncWrite + Unpin + 'static,
{
    type Substream = Stream;
    type Error = io::Error;

    fn poll_inbound(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<Stream>> {
        if let Some(s) = self.inbound.pop_front() {
            return Poll::Ready(Ok(self.stream(s)));
        }
        if let Poll::Ready(r) = self.poll_inner(cx) {
            return Poll::Ready(r.map(|s| self.stream(s)));
        }
        self.inbound_waker = Some(cx.waker().clone());
        Poll::Pending
    }

    fn poll_outbound(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<Stream>> {
        let s = ready!(self.connection.poll_new_outbound(cx)).map_err(to_io)?;
        Poll::Ready(Ok(self.stream(s)))
    }

    /// Closing a connection (it answers no pings, or is idle, or the swarm stops) ends its
    /// streams at once, as reset: a graceful yamux close leaves their reads waiting forever.
    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.fate.lose();
        self.connection.poll_close(cx).map_err(to_io)
    }

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<StreamMuxerEvent>> {
        let this = self.get_mut();
        let stream = ready!(this.poll_inner(cx))?;
        if this.inbound.len() >= MAX_BUFFERED_INBOUND_STREAMS {
            tracing::warn!("dropping an inbound stream: too many waiting to be accepted");
            drop(stream);
        } else {
            this.inbound.push_back(stream);
            if let Some(w) = this.inbound_waker.take() {
                w.wake();
            }
        }
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

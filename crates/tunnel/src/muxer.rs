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

use std::{
    collections::VecDeque,
    io, iter,
    pin::Pin,
    task::{Context, Poll, Waker},
};

use futures::{AsyncRead, AsyncWrite, future, ready};
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
}

impl<C> Muxer<C> {
    fn new(connection: yamux::Connection<C>) -> Self {
        Muxer { connection, inbound: VecDeque::new(), inbound_waker: None }
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
        match ready!(self.connection.poll_next_inbound(cx)) {
            Some(Ok(s)) => Poll::Ready(Ok(s)),
            Some(Err(e)) => Poll::Ready(Err(to_io(e))),
            None => Poll::Ready(Err(to_io(yamux::ConnectionError::Closed))),
        }
    }
}

impl<C> StreamMuxer for Muxer<C>
where
    C: AsyncRead + AsyncWrite + Unpin + 'static,
{
    type Substream = yamux::Stream;
    type Error = io::Error;

    fn poll_inbound(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<yamux::Stream>> {
        if let Some(s) = self.inbound.pop_front() {
            return Poll::Ready(Ok(s));
        }
        if let Poll::Ready(r) = self.poll_inner(cx) {
            return Poll::Ready(r);
        }
        self.inbound_waker = Some(cx.waker().clone());
        Poll::Pending
    }

    fn poll_outbound(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<yamux::Stream>> {
        self.connection.poll_new_outbound(cx).map_err(to_io)
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
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

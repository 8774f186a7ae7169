//! A stream that counts the bytes written to it, for the copy to and from
//! the tunnel: `copy_bidirectional` reports its totals only when it ends
//! well, and a long-lived connection should show its traffic as it flows
//! (in the port's counter) and its idle timeout must see it (in the
//! connection's own total).

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, ready};

use edgemesh_metrics::Counter;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// `inner`, adding every byte it accepts in a write to `written` and to
/// `connection`.
pub(super) struct Counted<'a, S> {
    inner: S,
    written: &'a Counter,
    connection: &'a AtomicU64,
}

impl<'a, S> Counted<'a, S> {
    pub(super) fn new(inner: S, written: &'a Counter, connection: &'a AtomicU64) -> Self {
        Self { inner, written, connection }
    }

    pub(super) fn into_inner(self) -> S {
        self.inner
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Counted<'_, S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Counted<'_, S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let n = ready!(Pin::new(&mut self.inner).poll_write(cx, buf))?;
        self.written.inc_by(n as u64);
        self.connection.fetch_add(n as u64, Ordering::Relaxed);
        Poll::Ready(Ok(n))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

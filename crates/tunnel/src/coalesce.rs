//! Holds yamux's small writes (frame headers, window updates) back until the next larger write
//! or flush, and hands both to the layer below in one vectored write.
//!
//! yamux writes each frame's 12-byte header and its body separately, and rustls seals every
//! write as its own record and sends it at once: without this, each frame costs two records
//! (two seals, 22 bytes of overhead each) and two `sendmsg` calls. libp2p-noise buffers its own
//! frames, so only TLS needs this.
//!
//! yamux also flushes after every frame, even when other streams have frames ready: under many
//! concurrent request/response streams that is one record and one `writev` per request. So a
//! flush that finds a frame body held back is put off once: it returns `Pending` after waking
//! the task, yamux goes on to take the other streams' ready frames (held back too), and the next
//! flush call with nothing new written sends them all in one record. A flush of bare headers
//! (window updates, the bulk case) goes at once: there is nothing to gain by waiting.

use std::{
    io::{self, IoSlice},
    pin::Pin,
    task::{Context, Poll, ready},
};

use futures::{AsyncRead, AsyncWrite};

/// Writes up to this size are held back: yamux headers (12 bytes), window updates, small bodies.
const SMALL: usize = 2048;
/// At most this many bytes are held back: one full TLS record.
const HELD: usize = 16 * 1024;
/// The size of a yamux frame header: what yamux writes alone for a window update or ping.
const HEADER: usize = 12;

#[derive(Debug)]
pub(crate) struct Coalesce<T> {
    inner: T,
    held: Vec<u8>,
    /// Whether `held` has more than frame headers (a frame body worth batching).
    body_held: bool,
    /// Writes so far, and their count when the last flush was put off.
    writes: u64,
    deferred_at: Option<u64>,
}

impl<T> Coalesce<T> {
    pub(crate) fn new(inner: T) -> Self {
        Coalesce { inner, held: Vec::new(), body_held: false, writes: 0, deferred_at: None }
    }

    #[cfg(test)]
    pub(crate) fn get_ref(&self) -> &T {
        &self.inner
    }
}

impl<T: AsyncWrite + Unpin> Coalesce<T> {
    /// Writes out what is held back.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.held.is_empty() {
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &self.held))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.held.drain(..n);
        }
        self.body_held = false;
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Coalesce<T> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.writes += 1;
        if buf.len() <= SMALL && this.held.len() + buf.len() <= HELD {
            this.held.extend_from_slice(buf);
            this.body_held |= buf.len() != HEADER;
            return Poll::Ready(Ok(buf.len()));
        }
        while !this.held.is_empty() {
            let slices = [IoSlice::new(&this.held), IoSlice::new(buf)];
            let n = ready!(Pin::new(&mut this.inner).poll_write_vectored(cx, &slices))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            if n >= this.held.len() {
                let of_buf = n - this.held.len();
                this.held.clear();
                this.body_held = false;
                if of_buf > 0 {
                    return Poll::Ready(Ok(of_buf));
                }
            } else {
                this.held.drain(..n);
            }
        }
        Pin::new(&mut this.inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.body_held && this.deferred_at != Some(this.writes) {
            // Put off once: the caller is polled again at once and may write more first.
            this.deferred_at = Some(this.writes);
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        this.deferred_at = None;
        ready!(this.poll_drain(cx))?;
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_drain(cx))?;
        Pin::new(&mut this.inner).poll_close(cx)
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Coalesce<T> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

#[cfg(test)]
mod tests {
    use futures::{AsyncWriteExt, io::Cursor};

    use super::*;

    /// Records each write the layer below receives.
    #[derive(Default)]
    struct Writes(Vec<Vec<u8>>);

    impl AsyncWrite for Writes {
        fn poll_write(self: Pin<&mut Self>, _: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
            self.get_mut().0.push(buf.to_vec());
            Poll::Ready(Ok(buf.len()))
        }
        fn poll_write_vectored(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            bufs: &[IoSlice<'_>],
        ) -> Poll<io::Result<usize>> {
            // Takes only 5 bytes at a time, to exercise partial writes.
            let all: Vec<u8> = bufs.iter().flat_map(|b| b.iter().copied()).take(5).collect();
            let n = all.len();
            self.get_mut().0.push(all);
            Poll::Ready(Ok(n))
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn small_writes_ride_with_the_next_large_one_or_the_flush_in_order() {
        let mut c = Coalesce::new(Writes::default());
        c.write_all(b"head").await.unwrap();
        assert!(c.inner.0.is_empty(), "a header alone is held back");
        let body = vec![9u8; SMALL + 1];
        c.write_all(&body).await.unwrap();
        c.write_all(b"tail").await.unwrap();
        c.flush().await.unwrap();
        let sent: Vec<u8> = c.inner.0.concat();
        assert_eq!(sent, [&b"head"[..], &body, b"tail"].concat());
        assert_eq!(c.inner.0.first().map(Vec::len), Some(5), "header and body went down together");
    }

    #[test]
    fn a_flush_with_a_body_held_waits_one_poll_for_more_frames_and_sends_them_together() {
        let waker = futures::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        let mut c = Coalesce::new(Writes::default());
        let mut write = |c: &mut Coalesce<Writes>, b: &[u8]| {
            assert!(matches!(Pin::new(c).poll_write(&mut cx, b), Poll::Ready(Ok(n)) if n == b.len()));
        };
        write(&mut c, &[1; HEADER]);
        write(&mut c, b"GET / HTTP/1.1");
        let flush = |c: &mut Coalesce<Writes>| Pin::new(c).poll_flush(&mut Context::from_waker(&waker));
        assert!(flush(&mut c).is_pending(), "the first flush is put off");
        write(&mut c, &[2; HEADER]);
        write(&mut c, b"HTTP/1.1 200 OK");
        assert!(flush(&mut c).is_pending(), "put off again: more was written meanwhile");
        assert!(c.inner.0.is_empty());
        assert!(matches!(flush(&mut c), Poll::Ready(Ok(()))), "nothing new: sent");
        let sent = c.inner.0.concat();
        assert_eq!(sent, [&[1; HEADER][..], b"GET / HTTP/1.1", &[2; HEADER], b"HTTP/1.1 200 OK"].concat());
        assert_eq!(c.inner.0.len(), 1, "both frames in one write (one record)");
    }

    #[test]
    fn a_flush_of_bare_headers_is_not_put_off() {
        let waker = futures::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        let mut c = Coalesce::new(Writes::default());
        assert!(Pin::new(&mut c).poll_write(&mut cx, &[3; HEADER]).is_ready());
        assert!(matches!(Pin::new(&mut c).poll_flush(&mut cx), Poll::Ready(Ok(()))));
        assert_eq!(c.inner.0.concat(), [3; HEADER]);
    }

    #[tokio::test]
    async fn reads_pass_through() {
        let mut c = Coalesce::new(Cursor::new(b"abc".to_vec()));
        let mut out = Vec::new();
        futures::AsyncReadExt::read_to_end(&mut c, &mut out).await.unwrap();
        assert_eq!(out, b"abc");
    }
}

//! Holds yamux's small writes (frame headers, window updates) back until the next larger write
//! or flush, and hands both to the layer below in one vectored write.
//!
//! yamux writes each frame's 12-byte header and its body separately, and rustls seals every
//! write as its own record and sends it at once: without this, each frame costs two records
//! (two seals, 22 bytes of overhead each) and two `sendmsg` calls. libp2p-noise buffers its own
//! frames, so only TLS needs this.

use std::{
    io::{self, IoSlice},
    pin::Pin,
    task::{Context, Poll, ready},
};

use futures::{AsyncRead, AsyncWrite};

/// Writes up to this size are held back (a yamux header is 12 bytes).
const SMALL: usize = 64;
/// At most this many bytes are held back.
const HELD: usize = 256;

#[derive(Debug)]
pub(crate) struct Coalesce<T> {
    inner: T,
    held: Vec<u8>,
}

impl<T> Coalesce<T> {
    pub(crate) fn new(inner: T) -> Self {
        Coalesce { inner, held: Vec::with_capacity(HELD) }
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
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Coalesce<T> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if buf.len() <= SMALL && this.held.len() + buf.len() <= HELD {
            this.held.extend_from_slice(buf);
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
        let body = vec![9u8; 100];
        c.write_all(&body).await.unwrap();
        c.write_all(b"tail").await.unwrap();
        c.flush().await.unwrap();
        let sent: Vec<u8> = c.inner.0.concat();
        assert_eq!(sent, [&b"head"[..], &body, b"tail"].concat());
        assert_eq!(c.inner.0.first().map(Vec::len), Some(5), "header and body went down together");
    }

    #[tokio::test]
    async fn reads_pass_through() {
        let mut c = Coalesce::new(Cursor::new(b"abc".to_vec()));
        let mut out = Vec::new();
        futures::AsyncReadExt::read_to_end(&mut c, &mut out).await.unwrap();
        assert_eq!(out, b"abc");
    }
}

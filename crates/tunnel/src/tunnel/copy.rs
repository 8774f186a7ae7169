//! Copying between a proxy stream and its TCP connection, with a buffer only while bytes wait.
//!
//! `tokio::io::copy_bidirectional` gives each direction a buffer of its own for the
//! connection's whole life. Behind an HTTP client's connection pool most proxy streams are idle
//! keep-alive connections, so those buffers were most of a serving node's memory after load:
//! 77 pooled streams held 2 x 64 KiB each, 10 of its 31 MiB (`bench/tunnel.sh`, rss rows).
//!
//! Here each direction reads into a per-thread scratch buffer and writes the bytes on at once;
//! only what the writer cannot take yet is kept, in a buffer of the direction's own. While that
//! buffer exists (the writer is slower than the reader: bulk), reads go straight into it, as
//! tokio's copy would; it is freed once everything in it is written and the reader has nothing
//! more. So an idle stream holds no buffer, and a busy one at most one per direction.
//!
//! Otherwise as tokio's copy: the writer is flushed whenever the reader has nothing to give
//! (the tunnel's TLS layer holds small writes back until a flush), EOF on one side shuts the
//! other side's writing down and the other direction goes on (half-close), and the first error
//! ends both.

use std::{
    cell::RefCell,
    future::Future,
    io,
    pin::Pin,
    task::{Context, Poll, ready},
};

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The scratch buffer's size, and the most one direction keeps.
pub(super) const COPY_BUFFER: usize = 64 * 1024;

thread_local! {
    /// Where a direction without a buffer of its own reads; borrowed only inside one poll.
    static SCRATCH: RefCell<Box<[u8]>> = RefCell::new(vec![0; COPY_BUFFER].into_boxed_slice());
}

/// Copies `a` <-> `b` until both directions have reached EOF (and shut the other side's
/// writing down) or one fails; returns the bytes moved `(a to b, b to a)`.
pub(super) fn copy_bidirectional<'a, A, B>(a: &'a mut A, b: &'a mut B) -> CopyBidirectional<'a, A, B>
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    CopyBidirectional { a, b, a_to_b: Half::default(), b_to_a: Half::default() }
}

/// The future of [`copy_bidirectional`].
pub(super) struct CopyBidirectional<'a, A, B> {
    a: &'a mut A,
    b: &'a mut B,
    a_to_b: Half,
    b_to_a: Half,
}

impl<A, B> CopyBidirectional<'_, A, B> {
    /// Whether either direction holds a buffer (for tests).
    #[cfg(test)]
    fn holds_buffers(&self) -> (bool, bool) {
        (self.a_to_b.buf.is_some(), self.b_to_a.buf.is_some())
    }
}

impl<A, B> Future for CopyBidirectional<'_, A, B>
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    type Output = io::Result<(u64, u64)>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let a_to_b = this.a_to_b.poll_copy(cx, &mut *this.a, &mut *this.b)?;
        let b_to_a = this.b_to_a.poll_copy(cx, &mut *this.b, &mut *this.a)?;
        match (a_to_b, b_to_a) {
            (Poll::Ready(x), Poll::Ready(y)) => Poll::Ready(Ok((x, y))),
            _ => Poll::Pending,
        }
    }
}

/// One direction.
#[derive(Debug, Default)]
struct Half {
    /// Bytes read and not written yet; `None` when there are none and the reader is idle.
    buf: Option<BytesMut>,
    /// Bytes written since the last flush.
    need_flush: bool,
    read_done: bool,
    /// The writer has been shut down: this direction is over.
    done: bool,
    moved: u64,
}

/// What a read into the scratch buffer came to.
enum Scratch {
    /// Read and written (some bytes may have been kept in a buffer of our own): go on.
    Moved,
    Eof,
    Idle,
}

impl Half {
    fn poll_copy<R, W>(&mut self, cx: &mut Context<'_>, reader: &mut R, writer: &mut W) -> Poll<io::Result<u64>>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        if self.done {
            return Poll::Ready(Ok(self.moved));
        }
        loop {
            if let Some(buf) = &mut self.buf {
                while buf.has_remaining() {
                    let n = ready!(Pin::new(&mut *writer).poll_write(cx, buf.chunk()))?;
                    if n == 0 {
                        return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                    }
                    buf.advance(n);
                    self.moved += n as u64;
                    self.need_flush = true;
                }
            }
            if self.read_done {
                if self.need_flush {
                    ready!(Pin::new(&mut *writer).poll_flush(cx))?;
                    self.need_flush = false;
                }
                ready!(Pin::new(&mut *writer).poll_shutdown(cx))?;
                self.done = true;
                self.buf = None;
                return Poll::Ready(Ok(self.moved));
            }
            let idle = match &mut self.buf {
                Some(buf) => {
                    // Empty here: reuse its whole capacity from the start.
                    buf.clear();
                    buf.reserve(COPY_BUFFER);
                    match tokio_util::io::poll_read_buf(Pin::new(&mut *reader), cx, buf)? {
                        Poll::Ready(0) => {
                            self.read_done = true;
                            false
                        }
                        Poll::Ready(_) => false,
                        Poll::Pending => true,
                    }
                }
                None => match self.through_scratch(cx, reader, writer)? {
                    Scratch::Moved => false,
                    Scratch::Eof => {
                        self.read_done = true;
                        false
                    }
                    Scratch::Idle => true,
                },
            };
            if idle {
                // Nothing to read and nothing waiting: give the buffer back, pass on what was
                // written, and wait for the reader.
                self.buf = None;
                if self.need_flush {
                    ready!(Pin::new(&mut *writer).poll_flush(cx))?;
                    self.need_flush = false;
                }
                return Poll::Pending;
            }
        }
    }

    /// Reads into the thread's scratch buffer and writes on what was read; keeps what the
    /// writer did not take in a buffer of our own.
    fn through_scratch<R, W>(&mut self, cx: &mut Context<'_>, reader: &mut R, writer: &mut W) -> io::Result<Scratch>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        SCRATCH.with(|scratch| {
            // Only a reader or writer that polled another copy from inside its own poll could
            // find the scratch buffer taken; then this direction reads into a buffer of its own.
            let Ok(mut scratch) = scratch.try_borrow_mut() else {
                self.buf = Some(BytesMut::with_capacity(COPY_BUFFER));
                return Ok(Scratch::Moved);
            };
            let mut read = ReadBuf::new(&mut scratch[..]);
            match Pin::new(&mut *reader).poll_read(cx, &mut read) {
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(e)) => return Err(e),
                Poll::Pending => return Ok(Scratch::Idle),
            }
            let n = read.filled().len();
            if n == 0 {
                return Ok(Scratch::Eof);
            }
            let mut written = 0;
            while written < n {
                match Pin::new(&mut *writer).poll_write(cx, &scratch[written..n]) {
                    Poll::Ready(Ok(0)) => return Err(io::ErrorKind::WriteZero.into()),
                    Poll::Ready(Ok(w)) => written += w,
                    Poll::Ready(Err(e)) => return Err(e),
                    Poll::Pending => break,
                }
            }
            self.moved += written as u64;
            self.need_flush |= written > 0;
            if written < n {
                let mut kept = BytesMut::with_capacity(COPY_BUFFER);
                kept.extend_from_slice(&scratch[written..n]);
                self.buf = Some(kept);
            }
            Ok(Scratch::Moved)
        })
    }
}

#[cfg(test)]
mod tests;

//! Forwarding between two TCP sockets.
//!
//! Each direction moves data socket -> pipe -> socket with `splice(2)`, so
//! the bytes never enter userspace. A direction drains its pipe completely
//! before reading again, so a `WouldBlock` from a read always means "the
//! socket has no data", never "the pipe is full", and tokio's readiness
//! stays accurate.
//!
//! Pipes are held only while data moves: a direction takes one when its
//! socket turns readable and gives it back, empty, as soon as the socket has
//! nothing more to read. Idle pipes wait in a small process-wide pool, so an
//! idle connection holds two descriptors (its sockets), a busy one six, and
//! bursts do not pay for creating pipes. This also keeps the kernel's
//! per-user pipe accounting (`fs.pipe-user-pages-soft`, past which
//! unprivileged pipes shrink to two pages) proportional to active transfers.
//!
//! Small messages take a shorter path. Request/response traffic moves a few
//! hundred bytes per wake-up, and for those a pipe costs a third system
//! call (the empty splice that proves the socket drained) and two pool
//! operations. So each wake-up first reads into a per-thread scratch buffer
//! and writes it straight on: a read shorter than the buffer proves the
//! socket drained (the kernel's `read(2)` returns early only when the queue
//! is empty, which is also how tokio's own reads clear readiness), so a
//! message costs one read and one write. A read that fills the buffer means
//! bulk: the rest of that wake-up goes through the pipe, and so does the
//! start of the next one if this one spliced a buffer's worth or more at
//! once (in a bulk transfer the scratch read would only fill up again, one
//! read, one write and a 16 KiB copy per wake-up for nothing). A wake-up
//! that splices less goes back to the small-message path. Bytes the peer
//! could not take at once wait in a buffer of the connection's own, freed
//! once written. (A short *splice* proves nothing, as a pipe can run out
//! of slots first, so the pipe path always reads until `WouldBlock`.)
//!
//! When splice or a pipe is unavailable (old kernel, a socket type splice
//! does not support, or no descriptor left for a pipe) the direction falls
//! back to copying through a small userspace buffer.
//!
//! EOF on one side becomes `shutdown(Write)` on the other, and the other
//! direction keeps flowing (half-close). The last EOF is passed on by the
//! caller dropping both sockets once [`forward`] completes (close sends the
//! FIN; a `shutdown` first would be one more system call per connection).
//! Any error ends both directions; dropping the sockets closes them.

use std::future::Future;
use std::io;
use std::net::Shutdown;
use std::os::fd::{AsFd, OwnedFd};
use std::pin::Pin;
use std::sync::{Mutex, PoisonError};
use std::task::{Context, Poll, ready};

use edgemesh_metrics::Counter;
use rustix::io::Errno;
use rustix::pipe::{PipeFlags, SpliceFlags};
use tokio::io::Interest;
use tokio::net::TcpStream;

/// How much one splice call may move: no limit in practice, the pipe's
/// capacity bounds it.
const SPLICE_CHUNK: usize = 1 << 30;

/// Pipe capacities asked for, largest first. A splice moves at most a
/// pipe's worth, so a larger pipe means fewer splice calls and wake-ups per
/// megabyte of bulk data. 1 MiB is the default `/proc/sys/fs/pipe-max-size`
/// (unprivileged processes may not exceed it; root may); 256 KiB, the
/// fallback, moved bulk data about 30% faster than the default 64 KiB.
/// Either way the kernel only references the sockets' pages (nothing is
/// copied or allocated per byte): a pipe costs its slot array (40 bytes a
/// page, 10 KiB at 1 MiB), and only while in use or pooled.
const PIPE_SIZES: [usize; 2] = [1 << 20, 256 * 1024];

/// Idle pipes kept for reuse; beyond this they are closed.
const POOL_MAX: usize = 64;

static POOL: Mutex<Vec<Pipe>> = Mutex::new(Vec::new());

/// Buffer size of the copy fallback, per direction, and of the per-thread
/// scratch buffer of the small-message path.
const COPY_BUF: usize = 16 * 1024;

thread_local! {
    /// Where the small-message path reads; used only in synchronous code.
    static SCRATCH: std::cell::RefCell<Box<[u8; COPY_BUF]>> = std::cell::RefCell::new(Box::new([0; COPY_BUF]));
}

/// Bytes moved in each direction.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Transferred {
    pub a_to_b: u64,
    pub b_to_a: u64,
}

/// Forwards `a` <-> `b` until both directions reach EOF or one fails; the
/// caller then drops both sockets, which passes the last EOF on.
pub fn forward<'a>(a: &'a TcpStream, b: &'a TcpStream) -> Forward<'a> {
    Forward { a, b, counters: None, a_to_b: Half::default(), b_to_a: Half::default() }
}

/// Forwards like [`forward`], adding the bytes written each way to
/// `counters` (`[a_to_b, b_to_a]`) as they are written (so a long-lived
/// connection's traffic shows while it lasts): one atomic addition per
/// write.
pub fn forward_counting<'a>(a: &'a TcpStream, b: &'a TcpStream, counters: &'a [Counter; 2]) -> Forward<'a> {
    Forward { counters: Some(counters), ..forward(a, b) }
}

/// Forwards like [`forward`] but always through the copy fallback; for
/// tests and comparisons.
pub fn forward_copy<'a>(a: &'a TcpStream, b: &'a TcpStream) -> Forward<'a> {
    Forward { a_to_b: Half::copying(), b_to_a: Half::copying(), ..forward(a, b) }
}

/// The future returned by [`forward`]: a plain struct rather than an
/// `async fn`, so its size is exactly its state (three references and two
/// [`Half`]s).
#[derive(Debug)]
pub struct Forward<'a> {
    a: &'a TcpStream,
    b: &'a TcpStream,
    /// Where the bytes written each way are counted, if anywhere.
    counters: Option<&'a [Counter; 2]>,
    a_to_b: Half,
    b_to_a: Half,
}

impl Forward<'_> {
    /// Bytes written so far, both ways: what an idle timeout watches.
    pub fn moved(&self) -> u64 {
        self.a_to_b.moved + self.b_to_a.moved
    }
}

impl Future for Forward<'_> {
    type Output = io::Result<Transferred>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let (to_b, to_a) = (this.counters.map(|c| &c[0]), this.counters.map(|c| &c[1]));
        if !this.a_to_b.done
            && let Poll::Ready(Err(e)) = this.a_to_b.poll(cx, (this.a, this.b, to_b), this.b_to_a.done)
        {
            return Poll::Ready(Err(e));
        }
        if !this.b_to_a.done
            && let Poll::Ready(Err(e)) = this.b_to_a.poll(cx, (this.b, this.a, to_a), this.a_to_b.done)
        {
            return Poll::Ready(Err(e));
        }
        if this.a_to_b.done && this.b_to_a.done {
            Poll::Ready(Ok(Transferred { a_to_b: this.a_to_b.moved, b_to_a: this.b_to_a.moved }))
        } else {
            Poll::Pending
        }
    }
}

/// An empty pipe: read end, write end.
#[derive(Debug)]
struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
}

impl Pipe {
    /// A pipe from the pool, or a new one.
    fn take() -> io::Result<Pipe> {
        if let Some(pipe) = POOL.lock().unwrap_or_else(PoisonError::into_inner).pop() {
            return Ok(pipe);
        }
        let (read, write) = rustix::pipe::pipe_with(PipeFlags::CLOEXEC | PipeFlags::NONBLOCK)?;
        // Best effort: the kernel may refuse (pipe-max-size, per-user
        // limits); the default capacity still works.
        for size in PIPE_SIZES {
            if rustix::pipe::fcntl_setpipe_size(&write, size).is_ok() {
                break;
            }
        }
        Ok(Pipe { read, write })
    }

    /// Returns an empty pipe to the pool (or closes it when the pool is full).
    fn give_back(self) {
        let mut pool = POOL.lock().unwrap_or_else(PoisonError::into_inner);
        if pool.len() < POOL_MAX {
            pool.push(self);
        }
    }
}

/// How a direction moves its bytes.
#[derive(Debug, Default)]
enum Stage {
    /// Nothing in flight: no pipe held.
    #[default]
    Idle,
    /// Zero-copy through a pipe.
    Pipe(Pipe),
    /// Userspace copy; `pending` bytes wait at `buf[start..]`.
    Copy { buf: Box<[u8; COPY_BUF]>, start: u32 },
}

/// How a direction reads at its next wake-up.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum Mode {
    /// Scratch read first; the pipe only if the read fills the buffer.
    #[default]
    Small,
    /// This wake-up brought bulk data: splice until the socket drains.
    /// The next wake-up starts here too if this one spliced at least
    /// `COPY_BUF` bytes at once ([`Half::burst`]).
    Bulk,
    /// Splice is unavailable: always copy through the direction's buffer.
    CopyOnly,
}

impl Stage {
    fn copy() -> Self {
        Stage::Copy { buf: Box::new([0; COPY_BUF]), start: 0 }
    }

    fn pipe() -> Self {
        match Pipe::take() {
            Ok(pipe) => Stage::Pipe(pipe),
            Err(e) => {
                tracing::debug!(error = %e, "cannot create a pipe for splice; copying through a buffer instead");
                Stage::copy()
            }
        }
    }
}

/// One direction of a connection.
#[derive(Debug, Default)]
struct Half {
    stage: Stage,
    mode: Mode,
    /// Bytes read but not yet written (in the pipe or the buffer); at most
    /// a pipe's capacity.
    pending: u32,
    /// The source reached EOF.
    eof: bool,
    /// EOF was passed on; nothing more to do.
    done: bool,
    /// This wake-up spliced at least `COPY_BUF` bytes in one call: the
    /// next one starts in [`Mode::Bulk`].
    burst: bool,
    moved: u64,
}

const SPLICE_FLAGS: SpliceFlags = SpliceFlags::NONBLOCK.union(SpliceFlags::MOVE);

/// Splice cannot be used on this pair of descriptors.
fn splice_unsupported(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(code) if code == Errno::INVAL.raw_os_error()
        || code == Errno::NOSYS.raw_os_error()
        || code == Errno::OPNOTSUPP.raw_os_error())
}

impl Half {
    fn copying() -> Self {
        Half { stage: Stage::copy(), mode: Mode::CopyOnly, ..Half::default() }
    }

    /// Nothing in flight: gives the (empty) pipe back, and frees a buffer
    /// that only held leftovers of the small-message path.
    fn go_idle(&mut self) {
        debug_assert_eq!(self.pending, 0);
        match std::mem::take(&mut self.stage) {
            Stage::Pipe(pipe) => pipe.give_back(),
            Stage::Copy { buf, .. } if self.mode == Mode::CopyOnly => self.stage = Stage::Copy { buf, start: 0 },
            _ => {}
        }
        if self.mode == Mode::Bulk && !self.burst {
            self.mode = Mode::Small;
        }
        self.burst = false;
    }

    /// The small-message path: one read into the thread's scratch buffer,
    /// written on at once. Returns the bytes read (0 at EOF), or
    /// `WouldBlock` when there was nothing to read. Bytes `to` cannot take
    /// now are kept in a buffer of this direction's (`pending`).
    fn read_small(&mut self, from: &TcpStream, to: &TcpStream, counter: Option<&Counter>) -> io::Result<usize> {
        SCRATCH.with_borrow_mut(|scratch| {
            let mut drained = None;
            let read = from.try_io(Interest::READABLE, || {
                let n = rustix::io::read(from.as_fd(), &mut scratch[..]).map_err(io::Error::from)?;
                if n > 0 && n < scratch.len() {
                    // Short: the socket is drained. Report WouldBlock so that
                    // tokio clears its readiness (unless an event came since)
                    // and no second read is needed to learn it.
                    drained = Some(n);
                    return Err(io::ErrorKind::WouldBlock.into());
                }
                Ok(n)
            });
            let n = match (read, drained) {
                (_, Some(n)) => n,
                (Ok(n), None) => n,
                (Err(e), None) => return Err(e),
            };
            if n == 0 {
                return Ok(0);
            }
            let written = match to.try_write(&scratch[..n]) {
                Ok(w) => w,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
                Err(e) => return Err(e),
            };
            self.wrote(written, counter);
            if written < n {
                let mut buf = Box::new([0; COPY_BUF]);
                buf[..n - written].copy_from_slice(&scratch[written..n]);
                self.stage = Stage::Copy { buf, start: 0 };
                self.pending = u32::try_from(n - written).expect("n <= COPY_BUF, which fits in u32");
            }
            if n == scratch.len() {
                self.mode = Mode::Bulk;
            }
            Ok(n)
        })
    }

    /// `n` bytes were written on: counted here and in `counter`, if any.
    fn wrote(&mut self, n: usize, counter: Option<&Counter>) {
        self.moved += n as u64;
        if let Some(counter) = counter {
            counter.inc_by(n as u64);
        }
    }

    /// Moves bytes from `from` to `to` (counting them in `counter`) until
    /// `from` is drained or at EOF; `reverse_done`: the other direction has
    /// finished, so this EOF is the connection's last.
    fn poll(
        &mut self,
        cx: &mut Context<'_>,
        (from, to, counter): (&TcpStream, &TcpStream, Option<&Counter>),
        reverse_done: bool,
    ) -> Poll<io::Result<()>> {
        loop {
            // Drain first: never read while the pipe holds data.
            while self.pending > 0 {
                ready!(to.poll_write_ready(cx))?;
                let written = match &mut self.stage {
                    Stage::Pipe(pipe) => to.try_io(Interest::WRITABLE, || {
                        rustix::pipe::splice(&pipe.read, None, to.as_fd(), None, self.pending as usize, SPLICE_FLAGS)
                            .map_err(io::Error::from)
                    }),
                    Stage::Copy { buf, start } => {
                        let start = *start as usize;
                        to.try_write(&buf[start..start + self.pending as usize])
                    }
                    Stage::Idle => unreachable!("pending data without a pipe or buffer"),
                };
                match written {
                    Ok(0) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                    Ok(n) => {
                        let n32 = u32::try_from(n).expect("n <= pending, which fits in u32");
                        self.pending -= n32;
                        self.wrote(n, counter);
                        if let Stage::Copy { start, .. } = &mut self.stage {
                            *start += n32;
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => return Poll::Ready(Err(e)),
                }
            }
            if self.eof {
                // Pass the half-close on (the peer may already be gone),
                // unless closing both sockets next does it.
                if !reverse_done {
                    let _ = socket2::SockRef::from(to).shutdown(Shutdown::Write);
                }
                self.go_idle();
                self.done = true;
                return Poll::Ready(Ok(()));
            }
            if matches!(self.stage, Stage::Copy { .. }) && self.mode != Mode::CopyOnly {
                // Leftovers of the small-message path are written.
                self.go_idle();
            }
            ready!(from.poll_read_ready(cx))?;
            if self.mode == Mode::Small {
                match self.read_small(from, to, counter) {
                    Ok(0) => self.eof = true,
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => return Poll::Ready(Err(e)),
                }
                continue;
            }
            if matches!(self.stage, Stage::Idle) {
                self.stage = Stage::pipe();
            }
            let read = match &mut self.stage {
                Stage::Pipe(pipe) => from.try_io(Interest::READABLE, || {
                    rustix::pipe::splice(from.as_fd(), None, &pipe.write, None, SPLICE_CHUNK, SPLICE_FLAGS)
                        .map_err(io::Error::from)
                }),
                Stage::Copy { buf, start } => {
                    *start = 0;
                    from.try_read(&mut buf[..])
                }
                Stage::Idle => unreachable!("stage set above"),
            };
            match read {
                Ok(0) => self.eof = true,
                // A splice moves at most a pipe's capacity (<= 1 MiB by
                // default, `/proc/sys/fs/pipe-max-size`), a read COPY_BUF.
                Ok(n) => {
                    self.pending = u32::try_from(n).unwrap_or(u32::MAX);
                    self.burst |= n >= COPY_BUF;
                }
                // Nothing to read and the pipe is empty: go idle.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.go_idle(),
                Err(e) if matches!(self.stage, Stage::Pipe(_)) && splice_unsupported(&e) => {
                    // The pipe is empty here, so switching loses nothing.
                    tracing::debug!(error = %e, "splice unsupported on this socket; copying through a buffer");
                    self.stage = Stage::copy();
                    self.mode = Mode::CopyOnly;
                }
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

#[cfg(test)]
mod tests;

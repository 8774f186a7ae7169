//! One task accepting connections for every TCP service listener.
//!
//! A listening socket per service port costs the kernel little, but a tokio
//! task and an I/O registration per socket cost the agent about 750 bytes
//! each (7 MiB at 10,000 services). Instead, the listening sockets go into
//! one epoll set of the proxy's own: its descriptor is registered with
//! tokio once, and one task accepts on the sockets the set reports ready.
//! The set is level-triggered: a socket with connections left in its queue
//! after a round is reported again, so a busy socket cannot starve the
//! others (each gets at most [`ACCEPTS_PER_ROUND`] per round). Work per
//! round depends on the sockets that are ready, never on how many exist.
//!
//! Removing a socket takes it out of the set and shuts it down
//! (`SHUT_RD`): on Linux it stops listening at once, and connections still
//! queued are refused.

use std::io;
use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustix::event::epoll;
use rustix::io::Errno;
use rustix::net::SocketFlags;
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;
use tokio::task::JoinHandle;

use crate::connection::{self, LogLimiter, Pool, Shared, lock};

/// Connections accepted from one socket before the others get their turn.
const ACCEPTS_PER_ROUND: usize = 32;
/// Ready sockets taken from the set per round.
const EVENTS_PER_ROUND: usize = 256;
/// Pause after an accept error (e.g. out of descriptors) so the loop does not
/// spin while the condition lasts.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// The set of listening sockets and the task accepting on them. Dropping it
/// stops the task; call [`Acceptor::close`] to wait for it too.
pub(crate) struct Acceptor {
    set: Arc<Set>,
    task: JoinHandle<()>,
}

/// Which socket of the set: a slot and the generation of its occupant (so
/// an event fetched just before a socket was removed cannot be taken for a
/// socket added to the same slot later).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Token(u64);

struct Set {
    epoll: AsyncFd<OwnedFd>,
    slots: Mutex<Slots>,
}

#[derive(Default)]
struct Slots {
    /// Generation and occupant of each slot.
    entries: Vec<(u32, Option<Arc<Entry>>)>,
    free: Vec<u32>,
}

/// One listening socket and the pool its connections go to.
struct Entry {
    socket: OwnedFd,
    pool: Arc<Pool>,
}

impl Acceptor {
    /// Creates the set and starts its task (on the current tokio runtime).
    pub(crate) fn start(shared: Arc<Shared>) -> io::Result<Self> {
        let epoll = epoll::create(epoll::CreateFlags::CLOEXEC)?;
        // `with_interest` is deprecated because a generic `AsRawFd` may change
        // its descriptor; an `OwnedFd` owned by the `AsyncFd` cannot, which
        // is the contract of the (unsafe) replacement.
        #[allow(deprecated)]
        let epoll = AsyncFd::with_interest(epoll, Interest::READABLE)?;
        let set = Arc::new(Set { epoll, slots: Mutex::default() });
        let task = tokio::spawn(accept_loop(set.clone(), shared));
        Ok(Self { set, task })
    }

    /// Adds a bound, listening, non-blocking socket; its connections go to
    /// `pool`.
    pub(crate) fn add(&self, socket: OwnedFd, pool: Arc<Pool>) -> io::Result<Token> {
        let mut slots = lock(&self.set.slots);
        let index = match slots.free.pop() {
            Some(index) => index,
            None => {
                let index = u32::try_from(slots.entries.len()).map_err(|_| io::Error::other("too many listeners"))?;
                slots.entries.push((0, None));
                index
            }
        };
        let slot = &mut slots.entries[index as usize];
        slot.0 = slot.0.wrapping_add(1);
        let token = Token(u64::from(slot.0) << 32 | u64::from(index));
        let data = epoll::EventData::new_u64(token.0);
        if let Err(e) = epoll::add(self.set.epoll.get_ref(), &socket, data, epoll::EventFlags::IN) {
            slots.free.push(index);
            return Err(e.into());
        }
        slot.1 = Some(Arc::new(Entry { socket, pool }));
        Ok(token)
    }

    /// Stops listening on the socket of `token` now and forgets it.
    pub(crate) fn remove(&self, token: Token) {
        let Some(entry) = lock(&self.set.slots).take(token) else { return };
        let _ = epoll::delete(self.set.epoll.get_ref(), &entry.socket);
        // Out of LISTEN at once; the descriptor closes with the last reference.
        let _ = rustix::net::shutdown(&entry.socket, rustix::net::Shutdown::Read);
    }

    /// Stops the task and waits for it (sockets still in the set close).
    pub(crate) async fn close(mut self) {
        self.task.abort();
        let _ = (&mut self.task).await;
        let slots = std::mem::take(&mut *lock(&self.set.slots));
        for entry in slots.entries.into_iter().filter_map(|(_, e)| e) {
            let _ = rustix::net::shutdown(&entry.socket, rustix::net::Shutdown::Read);
        }
    }
}

impl Drop for Acceptor {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Slots {
    fn get(&self, token: u64) -> Option<Arc<Entry>> {
        let (generation, occupant) = self.entries.get((token & u64::from(u32::MAX)) as usize)?;
        occupant.as_ref().filter(|_| u64::from(*generation) == token >> 32).cloned()
    }

    fn take(&mut self, token: Token) -> Option<Arc<Entry>> {
        let index = (token.0 & u64::from(u32::MAX)) as u32;
        let (generation, occupant) = self.entries.get_mut(index as usize)?;
        if u64::from(*generation) != token.0 >> 32 {
            return None;
        }
        let entry = occupant.take()?;
        self.free.push(index);
        Some(entry)
    }
}

async fn accept_loop(set: Arc<Set>, shared: Arc<Shared>) {
    let mut ready_tokens: Vec<u64> = Vec::with_capacity(EVENTS_PER_ROUND);
    let errors = LogLimiter::default();
    loop {
        let mut ready = match set.epoll.readable().await {
            Ok(ready) => ready,
            Err(e) => {
                tracing::error!(error = %e, "the service listeners' event set failed; no more connections are accepted");
                return;
            }
        };
        match poll_set(&set, &mut ready_tokens) {
            Ok(0) => {
                ready.clear_ready();
                continue;
            }
            Ok(_) => {}
            Err(Errno::INTR) => continue,
            Err(e) => {
                if errors.allow() {
                    tracing::warn!(error = %e, "waiting for connections failed");
                }
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        }
        // Readiness is kept: sockets still ready are reported again next round.
        drop(ready);
        let mut failed = false;
        for token in &ready_tokens {
            let Some(entry) = lock(&set.slots).get(*token) else { continue };
            failed |= accept_some(&entry, &shared, &errors);
        }
        if failed {
            tokio::time::sleep(ACCEPT_BACKOFF).await;
        } else {
            // Let the connections just admitted (and everything else) run.
            tokio::task::yield_now().await;
        }
    }
}

/// The tokens of the sockets ready now (without waiting), into `tokens`.
fn poll_set(set: &Set, tokens: &mut Vec<u64>) -> Result<usize, Errno> {
    let mut events = [std::mem::MaybeUninit::<epoll::Event>::uninit(); EVENTS_PER_ROUND];
    let zero = rustix::event::Timespec { tv_sec: 0, tv_nsec: 0 };
    let (ready, _) = epoll::wait(set.epoll.get_ref(), &mut events[..], Some(&zero))?;
    tokens.clear();
    tokens.extend(ready.iter().map(|e| e.data.u64()));
    Ok(tokens.len())
}

/// Accepts up to [`ACCEPTS_PER_ROUND`] connections from one socket; true
/// if accepting failed for a reason that calls for a pause.
fn accept_some(entry: &Entry, shared: &Arc<Shared>, errors: &LogLimiter) -> bool {
    for _ in 0..ACCEPTS_PER_ROUND {
        match rustix::net::acceptfrom_with(&entry.socket, SocketFlags::NONBLOCK | SocketFlags::CLOEXEC) {
            Ok((socket, peer)) => {
                let stream = std::net::TcpStream::from(socket);
                // No peer address: reset by the client before we saw it.
                if let Some(peer) = peer.and_then(|p| SocketAddr::try_from(p).ok()).or_else(|| stream.peer_addr().ok())
                {
                    connection::admit(shared, &entry.pool, stream, peer);
                }
            }
            // Drained, or shut down by `remove` meanwhile.
            Err(Errno::AGAIN | Errno::INVAL) => return false,
            Err(Errno::INTR | Errno::CONNABORTED) => {}
            Err(e) => {
                if errors.allow() {
                    tracing::warn!(service = %entry.pool.service, listener = %entry.pool.addr, error = %e,
                        "accept failed (out of file descriptors? raise the open-files limit or lower max connections)");
                }
                return true;
            }
        }
    }
    false
}

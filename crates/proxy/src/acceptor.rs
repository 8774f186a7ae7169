//! Per-worker tasks accepting connections for every TCP service listener.
//!
//! A listening socket per service port costs the kernel little, but a tokio
//! task and an I/O registration per socket cost the agent about 750 bytes
//! each (7 MiB at 10,000 services). Instead, each worker has one epoll set
//! of the proxy's own holding its socket of every listening group (see
//! `bind`): the set's descriptor is registered with the worker's runtime
//! once, and one task on the worker accepts on the sockets the set reports
//! ready and serves their connections right there. The set is
//! level-triggered: a socket with connections left in its queue after a
//! round is reported again, so a busy socket cannot starve the others
//! (each gets at most [`ACCEPTS_PER_ROUND`] per round). Work per round
//! depends on the sockets that are ready, never on how many exist.
//!
//! The listeners (a group of sockets and the pool they serve) are in one
//! slot table shared by the workers. A full group has a socket per worker;
//! a smaller one (see `listeners`) has its sockets on the workers from
//! `first` on, so single sockets are spread over the workers.
//!
//! Removing a listener takes its sockets out of the sets and shuts them
//! down (`SHUT_RD`): on Linux they stop listening at once, and connections
//! still queued are refused.

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

use crate::connection::{self, Shared};
use crate::pool::{LogLimiter, Pool, lock};

/// Connections accepted from one socket before the others get their turn.
const ACCEPTS_PER_ROUND: usize = 32;
/// Ready sockets taken from the set per round.
const EVENTS_PER_ROUND: usize = 256;
/// Pause after an accept error (e.g. out of descriptors) so the loop does not
/// spin while the condition lasts.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// The listeners and the per-worker tasks accepting on them. Dropping it
/// stops the tasks; call [`Acceptor::close`] to wait for them too.
pub(crate) struct Acceptor {
    slots: Arc<Mutex<Slots>>,
    /// One per worker, in the workers' order.
    loops: Vec<Loop>,
}

/// A worker's epoll set and the task accepting on it.
struct Loop {
    epoll: Arc<AsyncFd<OwnedFd>>,
    task: JoinHandle<()>,
}

/// Which listener: a slot and the generation of its occupant (so an event
/// fetched just before a listener was removed cannot be taken for one
/// added to the same slot later).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Token(u64);

#[derive(Default)]
struct Slots {
    /// Generation and occupant of each slot.
    entries: Vec<(u32, Option<Arc<Entry>>)>,
    free: Vec<u32>,
}

/// One listener: its listening sockets, socket `j` on worker
/// `(first + j) % workers`, and the pool their connections go to.
struct Entry {
    sockets: Box<[OwnedFd]>,
    first: usize,
    pool: Arc<Pool>,
}

impl Acceptor {
    /// Creates each worker's set and starts its task on the worker.
    pub(crate) fn start(shared: Arc<Shared>) -> io::Result<Self> {
        let slots = Arc::new(Mutex::new(Slots::default()));
        let mut loops = Vec::with_capacity(shared.workers.handles().len());
        for (worker, handle) in shared.workers.handles().iter().enumerate() {
            let epoll = epoll::create(epoll::CreateFlags::CLOEXEC)?;
            // Registered with the worker's event loop, where its task runs.
            let _runtime = handle.enter();
            // `with_interest` is deprecated because a generic `AsRawFd` may
            // change its descriptor; an `OwnedFd` owned by the `AsyncFd`
            // cannot, which is the contract of the (unsafe) replacement.
            #[allow(deprecated)]
            let epoll = Arc::new(AsyncFd::with_interest(epoll, Interest::READABLE)?);
            let task = handle.spawn(accept_loop(epoll.clone(), slots.clone(), shared.clone(), worker));
            loops.push(Loop { epoll, task });
        }
        Ok(Self { slots, loops })
    }

    /// How many workers accept: the most sockets a listener can have.
    pub(crate) fn workers(&self) -> usize {
        self.loops.len()
    }

    /// Adds a listener: bound, listening, non-blocking sockets of one
    /// group, one per worker at most; its connections go to `pool`.
    pub(crate) fn add(&self, sockets: Vec<OwnedFd>, pool: Arc<Pool>) -> io::Result<Token> {
        if sockets.is_empty() || sockets.len() > self.loops.len() {
            return Err(io::Error::other("a listener needs one socket per worker at most"));
        }
        let mut slots = lock(&self.slots);
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
        let first = index as usize % self.loops.len();
        for (j, socket) in sockets.iter().enumerate() {
            if let Err(e) = epoll::add(self.epoll_of(first, j), socket, data, epoll::EventFlags::IN) {
                for (k, s) in sockets.iter().enumerate().take(j) {
                    let _ = epoll::delete(self.epoll_of(first, k), s);
                }
                slots.free.push(index);
                return Err(e.into());
            }
        }
        slot.1 = Some(Arc::new(Entry { sockets: sockets.into_boxed_slice(), first, pool }));
        Ok(token)
    }

    /// Stops listening on the sockets of `token` now and forgets them.
    pub(crate) fn remove(&self, token: Token) {
        let Some(entry) = lock(&self.slots).take(token) else { return };
        for (j, socket) in entry.sockets.iter().enumerate() {
            let _ = epoll::delete(self.epoll_of(entry.first, j), socket);
        }
        entry.shut_down();
    }

    /// The epoll set of the worker that socket `j` of a group starting at
    /// worker `first` belongs to.
    fn epoll_of(&self, first: usize, j: usize) -> &OwnedFd {
        self.loops[(first + j) % self.loops.len()].epoll.get_ref()
    }

    /// Stops the tasks and waits for them (sockets still in the sets close).
    pub(crate) async fn close(mut self) {
        for l in &self.loops {
            l.task.abort();
        }
        for l in &mut self.loops {
            let _ = (&mut l.task).await;
        }
        let slots = std::mem::take(&mut *lock(&self.slots));
        for entry in slots.entries.into_iter().filter_map(|(_, e)| e) {
            entry.shut_down();
        }
    }
}

impl Drop for Acceptor {
    fn drop(&mut self) {
        for l in &self.loops {
            l.task.abort();
        }
    }
}

impl Entry {
    /// Out of LISTEN at once; the descriptors close with the last reference.
    fn shut_down(&self) {
        for socket in &self.sockets {
            let _ = rustix::net::shutdown(socket, rustix::net::Shutdown::Read);
        }
    }
}

/// The slot index of a token: its low 32 bits.
fn slot_index(token: u64) -> u32 {
    let [low @ .., _, _, _, _] = token.to_le_bytes();
    u32::from_le_bytes(low)
}

impl Slots {
    fn get(&self, token: u64) -> Option<Arc<Entry>> {
        let (generation, occupant) = self.entries.get(usize::try_from(slot_index(token)).ok()?)?;
        occupant.as_ref().filter(|_| u64::from(*generation) == token >> 32).cloned()
    }

    fn take(&mut self, token: Token) -> Option<Arc<Entry>> {
        let index = slot_index(token.0);
        let (generation, occupant) = self.entries.get_mut(usize::try_from(index).ok()?)?;
        if u64::from(*generation) != token.0 >> 32 {
            return None;
        }
        let entry = occupant.take()?;
        self.free.push(index);
        Some(entry)
    }
}

/// Worker `worker`'s accept task: accepts on its socket of each ready
/// listener and serves the connections on this worker.
async fn accept_loop(epoll: Arc<AsyncFd<OwnedFd>>, slots: Arc<Mutex<Slots>>, shared: Arc<Shared>, worker: usize) {
    let mut ready_tokens: Vec<u64> = Vec::with_capacity(EVENTS_PER_ROUND);
    let errors = LogLimiter::default();
    loop {
        let mut ready = match epoll.readable().await {
            Ok(ready) => ready,
            Err(e) => {
                tracing::error!(error = %e, "the service listeners' event set failed; no more connections are accepted");
                return;
            }
        };
        match poll_set(epoll.get_ref(), &mut ready_tokens) {
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
            let Some(entry) = lock(&slots).get(*token) else { continue };
            failed |= accept_some(&entry, worker, &shared, &errors);
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
fn poll_set(epoll: &OwnedFd, tokens: &mut Vec<u64>) -> Result<usize, Errno> {
    let mut events = [std::mem::MaybeUninit::<epoll::Event>::uninit(); EVENTS_PER_ROUND];
    let zero = rustix::event::Timespec { tv_sec: 0, tv_nsec: 0 };
    let (ready, _) = epoll::wait(epoll, &mut events[..], Some(&zero))?;
    tokens.clear();
    tokens.extend(ready.iter().map(|e| e.data.u64()));
    Ok(tokens.len())
}

/// Accepts up to [`ACCEPTS_PER_ROUND`] connections from `worker`'s socket
/// of a listener; true if accepting failed for a reason that calls for a
/// pause.
fn accept_some(entry: &Entry, worker: usize, shared: &Arc<Shared>, errors: &LogLimiter) -> bool {
    let workers = shared.workers.handles().len();
    let Some(socket) = entry.sockets.get((worker + workers - entry.first) % workers) else { return false };
    for _ in 0..ACCEPTS_PER_ROUND {
        match rustix::net::acceptfrom_with(socket, SocketFlags::NONBLOCK | SocketFlags::CLOEXEC) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pool::Targets;
    use edgemesh_core::{LbStrategy, ServiceKey};
    use std::sync::atomic::Ordering;

    fn local(fd: &OwnedFd) -> SocketAddr {
        socket2::SockRef::from(fd).local_addr().unwrap().as_socket().unwrap()
    }

    async fn accepted(shared: &Shared, n: u64) {
        for _ in 0..500 {
            if shared.status.total_connections.load(Ordering::Relaxed) >= n {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("{n} connections not accepted within 5 s");
    }

    /// A full group (a socket per worker) and single sockets (one worker
    /// each) are accepted on; removing a listener refuses at once.
    #[tokio::test]
    async fn full_groups_and_single_sockets_are_accepted_on() {
        let shared = crate::connection::tests::shared_with_workers(2);
        let acceptor = Acceptor::start(shared.clone()).unwrap();
        assert_eq!(acceptor.workers(), 2);
        let pool = Arc::new(Pool::new(
            ServiceKey::new("default", "web"),
            "127.0.0.1:80".parse().unwrap(),
            Targets::new(LbStrategy::RoundRobin, Arc::from(Vec::new())),
        ));
        let localhost: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let mut listeners = Vec::new();
        for size in [2, 1, 1] {
            let group = crate::bind::tcp_group(localhost, size).unwrap();
            let addr = local(&group[0]);
            listeners.push((acceptor.add(group, pool.clone()).unwrap(), addr));
        }
        let mut clients = Vec::new();
        for (_, addr) in &listeners {
            for _ in 0..20 {
                clients.push(std::net::TcpStream::connect(addr).unwrap());
            }
        }
        accepted(&shared, 60).await;
        for (token, addr) in listeners {
            acceptor.remove(token);
            let refused = std::net::TcpStream::connect(addr).unwrap_err();
            assert_eq!(refused.kind(), io::ErrorKind::ConnectionRefused);
        }
        acceptor.close().await;
    }
}

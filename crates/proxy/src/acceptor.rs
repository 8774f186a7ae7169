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
//! a smaller one has its sockets on the workers from `first` on, so single
//! sockets are spread over the workers. A growable listener (one joinable
//! socket, as `listeners` binds them) becomes a full group when its first
//! connection is accepted, while the [`SocketBudget`] allows: most of a
//! node's services are never connected to, and each costs one socket (and
//! its `setsockopt`s at load) instead of a socket per worker.
//!
//! Removing a listener takes its sockets out of the sets and shuts them
//! down (`SHUT_RD`): on Linux they stop listening at once, and connections
//! still queued are refused.

use std::io;
use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
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

/// The listening sockets open, against the budget derived from the
/// open-files limit (see `listeners`): counted where sockets are bound and
/// given back when they close.
#[derive(Debug)]
pub(crate) struct SocketBudget {
    open: AtomicUsize,
    max: usize,
}

impl SocketBudget {
    pub(crate) fn new(max: usize) -> Self {
        Self { open: AtomicUsize::new(0), max }
    }

    pub(crate) fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    pub(crate) fn max(&self) -> usize {
        self.max
    }

    /// Whether another listener may be bound now.
    pub(crate) fn has_room(&self) -> bool {
        self.open() < self.max
    }

    pub(crate) fn charge(&self, sockets: usize) {
        self.open.fetch_add(sockets, Ordering::Relaxed);
    }

    pub(crate) fn release(&self, sockets: usize) {
        let _ = self.open.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| Some(n.saturating_sub(sockets)));
    }

    /// Takes `sockets` more for a growing group, only while the open ones
    /// stay within half the budget: the other half keeps a single socket
    /// for as many services as possible.
    fn take_for_growth(&self, sockets: usize) -> bool {
        self.open
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                (n + sockets <= self.max / 2).then_some(n + sockets)
            })
            .is_ok()
    }
}

/// The listeners and the per-worker tasks accepting on them. Dropping it
/// stops the tasks; call [`Acceptor::close`] to wait for them too.
pub(crate) struct Acceptor {
    common: Arc<Common>,
    /// One per worker, in the workers' order.
    tasks: Vec<JoinHandle<()>>,
}

/// What the accept tasks share: the listeners, every worker's epoll set (a
/// growing listener adds its sockets to the others'), and the budget.
struct Common {
    slots: Mutex<Slots>,
    sets: Box<[Arc<AsyncFd<OwnedFd>>]>,
    budget: Arc<SocketBudget>,
}

impl Common {
    /// The epoll set of the worker that socket `j` of a group starting at
    /// worker `first` belongs to.
    fn set_of(&self, first: usize, j: usize) -> &OwnedFd {
        self.sets[(first + j) % self.sets.len()].get_ref()
    }
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
    /// A slot per worker; those of a growable listener after the first are
    /// set when it grows.
    sockets: Box<[OnceLock<OwnedFd>]>,
    first: usize,
    pool: Arc<Pool>,
    /// Set until a growable listener has grown (or tried to).
    grow: AtomicBool,
    /// Given back its sockets when the entry goes (the last accept task
    /// holding it let go, so its sockets are closed).
    budget: Arc<SocketBudget>,
}

impl Drop for Entry {
    fn drop(&mut self) {
        self.budget.release(self.sockets.iter().filter(|s| s.get().is_some()).count());
    }
}

impl Acceptor {
    /// Creates each worker's set and starts its task on the worker; the
    /// listeners' sockets are counted in `budget`.
    pub(crate) fn start(shared: Arc<Shared>, budget: Arc<SocketBudget>) -> io::Result<Self> {
        let handles = shared.workers.handles();
        let mut sets = Vec::with_capacity(handles.len());
        for handle in handles {
            let epoll = epoll::create(epoll::CreateFlags::CLOEXEC)?;
            // Registered with the worker's event loop, where its task runs.
            let _runtime = handle.enter();
            // `with_interest` is deprecated because a generic `AsRawFd` may
            // change its descriptor; an `OwnedFd` owned by the `AsyncFd`
            // cannot, which is the contract of the (unsafe) replacement.
            #[allow(deprecated)]
            sets.push(Arc::new(AsyncFd::with_interest(epoll, Interest::READABLE)?));
        }
        let common = Arc::new(Common { slots: Mutex::new(Slots::default()), sets: sets.into_boxed_slice(), budget });
        let tasks = handles
            .iter()
            .enumerate()
            .map(|(worker, handle)| handle.spawn(accept_loop(common.clone(), shared.clone(), worker)))
            .collect();
        Ok(Self { common, tasks })
    }

    /// How many workers accept: the most sockets a listener can have.
    pub(crate) fn workers(&self) -> usize {
        self.common.sets.len()
    }

    /// Adds a listener: bound, listening, non-blocking sockets of one
    /// group, one per worker at most (charged to the budget until the
    /// listener is removed); its connections go to `pool`. With `grow`, a
    /// single joinable socket (`bind::tcp_joinable`) becomes a full group
    /// at its first connection.
    pub(crate) fn add(&self, sockets: Vec<OwnedFd>, pool: Arc<Pool>, grow: bool) -> io::Result<Token> {
        let workers = self.workers();
        if sockets.is_empty() || sockets.len() > workers {
            return Err(io::Error::other("a listener needs one socket per worker at most"));
        }
        let mut slots = lock(&self.common.slots);
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
        let first = index as usize % workers;
        for (j, socket) in sockets.iter().enumerate() {
            if let Err(e) = epoll::add(self.common.set_of(first, j), socket, data, epoll::EventFlags::IN) {
                for (k, s) in sockets.iter().enumerate().take(j) {
                    let _ = epoll::delete(self.common.set_of(first, k), s);
                }
                slots.free.push(index);
                return Err(e.into());
            }
        }
        self.common.budget.charge(sockets.len());
        let grow = grow && sockets.len() == 1 && workers > 1;
        let mut given = sockets.into_iter();
        let sockets = (0..workers).map(|_| given.next().map_or_else(OnceLock::new, OnceLock::from)).collect();
        let budget = self.common.budget.clone();
        slot.1 = Some(Arc::new(Entry { sockets, first, pool, grow: AtomicBool::new(grow), budget }));
        Ok(token)
    }

    /// Stops listening on the sockets of `token` now and forgets them (the
    /// budget has them back once no accept task holds the listener).
    pub(crate) fn remove(&self, token: Token) {
        let Some(entry) = lock(&self.common.slots).take(token) else { return };
        // A listener growing meanwhile grows no more.
        entry.grow.store(false, Ordering::Relaxed);
        for (j, socket) in entry.bound() {
            let _ = epoll::delete(self.common.set_of(entry.first, j), socket);
        }
        entry.shut_down();
    }

    /// The sockets of `token`'s listener now (tests: whether it grew).
    #[cfg(test)]
    fn sockets(&self, token: Token) -> usize {
        lock(&self.common.slots).get(token.0).map_or(0, |e| e.bound().count())
    }

    /// Stops the tasks and waits for them (sockets still in the sets close).
    pub(crate) async fn close(mut self) {
        for task in &self.tasks {
            task.abort();
        }
        for task in &mut self.tasks {
            let _ = task.await;
        }
        let slots = std::mem::take(&mut *lock(&self.common.slots));
        for entry in slots.entries.into_iter().filter_map(|(_, e)| e) {
            entry.grow.store(false, Ordering::Relaxed);
            entry.shut_down();
        }
    }
}

impl Drop for Acceptor {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl Entry {
    /// The sockets it has, with their index in the group.
    fn bound(&self) -> impl Iterator<Item = (usize, &OwnedFd)> {
        self.sockets.iter().enumerate().filter_map(|(j, s)| Some((j, s.get()?)))
    }

    /// Out of LISTEN at once; the descriptors close with the last reference.
    fn shut_down(&self) {
        for (_, socket) in self.bound() {
            let _ = rustix::net::shutdown(socket, rustix::net::Shutdown::Read);
        }
    }

    /// Adds a socket per other worker to a growable listener (once): each
    /// joins the group on the first socket's address and goes into its
    /// worker's set under the listener's `token`, while the budget allows.
    fn grow(&self, common: &Common, token: u64) {
        if !self.grow.swap(false, Ordering::Relaxed) {
            return;
        }
        let Some(addr) = self.sockets[0].get().and_then(|s| socket2::SockRef::from(s).local_addr().ok()?.as_socket())
        else {
            return;
        };
        let mut added = 0;
        for (j, slot) in self.sockets.iter().enumerate().skip(1) {
            if !common.budget.take_for_growth(1) {
                break;
            }
            let joined = crate::bind::tcp_join(addr).and_then(|socket| {
                epoll::add(
                    common.set_of(self.first, j),
                    &socket,
                    epoll::EventData::new_u64(token),
                    epoll::EventFlags::IN,
                )?;
                Ok(socket)
            });
            match joined {
                Ok(socket) => {
                    if let Err(socket) = slot.set(socket) {
                        let _ = epoll::delete(common.set_of(self.first, j), &socket);
                        common.budget.release(1);
                    } else {
                        added += 1;
                    }
                }
                Err(e) => {
                    common.budget.release(1);
                    tracing::debug!(service = %self.pool.service, listener = %addr, error = %e,
                        "listener stays on fewer workers: cannot add a socket to its group");
                    break;
                }
            }
        }
        // Removed while growing: the new sockets stop listening too.
        if lock(&common.slots).get(token).is_none() {
            self.shut_down();
            return;
        }
        tracing::debug!(service = %self.pool.service, listener = %addr, added, "listener grew to more workers at its first connection");
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
async fn accept_loop(common: Arc<Common>, shared: Arc<Shared>, worker: usize) {
    let epoll = &common.sets[worker];
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
            let Some(entry) = lock(&common.slots).get(*token) else { continue };
            let (accepted, pause) = accept_some(&entry, worker, &shared, &errors);
            failed |= pause;
            if accepted > 0 && entry.grow.load(Ordering::Relaxed) {
                entry.grow(&common, *token);
            }
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
/// of a listener: how many, and whether accepting failed for a reason that
/// calls for a pause.
fn accept_some(entry: &Entry, worker: usize, shared: &Arc<Shared>, errors: &LogLimiter) -> (usize, bool) {
    let workers = shared.workers.handles().len();
    let Some(socket) = entry.sockets.get((worker + workers - entry.first) % workers).and_then(OnceLock::get) else {
        return (0, false);
    };
    let mut accepted = 0;
    for _ in 0..ACCEPTS_PER_ROUND {
        match rustix::net::acceptfrom_with(socket, SocketFlags::NONBLOCK | SocketFlags::CLOEXEC) {
            Ok((socket, peer)) => {
                let stream = std::net::TcpStream::from(socket);
                // No peer address: reset by the client before we saw it.
                if let Some(peer) = peer.and_then(|p| SocketAddr::try_from(p).ok()).or_else(|| stream.peer_addr().ok())
                {
                    connection::admit(shared, &entry.pool, stream, peer);
                    accepted += 1;
                }
            }
            // Drained, or shut down by `remove` meanwhile.
            Err(Errno::AGAIN | Errno::INVAL) => return (accepted, false),
            Err(Errno::INTR | Errno::CONNABORTED) => {}
            Err(e) => {
                if errors.allow() {
                    tracing::warn!(service = %entry.pool.service, listener = %entry.pool.addr, error = %e,
                        "accept failed (out of file descriptors? raise the open-files limit or lower max connections)");
                }
                return (accepted, true);
            }
        }
    }
    (accepted, false)
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
        let acceptor = Acceptor::start(shared.clone(), Arc::new(SocketBudget::new(100))).unwrap();
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
            listeners.push((acceptor.add(group, pool.clone(), false).unwrap(), addr));
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

    fn web() -> Arc<Pool> {
        Arc::new(Pool::new(
            ServiceKey::new("default", "web"),
            "127.0.0.1:80".parse().unwrap(),
            Targets::new(LbStrategy::RoundRobin, Arc::from(Vec::new())),
        ))
    }

    /// A growable listener is one socket until its first connection, then
    /// one per worker, each accepting (the kernel spreads connections over
    /// the group); the budget counts them and has them back at removal.
    #[tokio::test]
    async fn a_growable_listener_gets_a_socket_per_worker_at_its_first_connection() {
        let shared = crate::connection::tests::shared_with_workers(2);
        let budget = Arc::new(SocketBudget::new(100));
        let acceptor = Acceptor::start(shared.clone(), budget.clone()).unwrap();
        let socket = crate::bind::tcp_joinable("127.0.0.1:0".parse().unwrap(), true).unwrap();
        let addr = local(&socket);
        let token = acceptor.add(vec![socket], web(), true).unwrap();
        assert_eq!((acceptor.sockets(token), budget.open()), (1, 1), "one socket until a connection comes");

        let mut clients = vec![std::net::TcpStream::connect(addr).unwrap()];
        accepted(&shared, 1).await;
        for _ in 0..200 {
            if acceptor.sockets(token) == 2 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!((acceptor.sockets(token), budget.open()), (2, 2), "grown to a socket per worker");
        // Both sockets are accepted on: the kernel hashes about half of these
        // connections to the new socket, and all of them are admitted.
        for _ in 0..64 {
            clients.push(std::net::TcpStream::connect(addr).unwrap());
        }
        accepted(&shared, 65).await;

        acceptor.remove(token);
        assert_eq!(std::net::TcpStream::connect(addr).unwrap_err().kind(), io::ErrorKind::ConnectionRefused);
        for _ in 0..200 {
            if budget.open() == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(budget.open(), 0, "the budget has the sockets back");
        acceptor.close().await;
    }

    /// Growth stays within half the budget: beyond it a listener stays a
    /// single socket (and serves all the same).
    #[tokio::test]
    async fn a_listener_does_not_grow_past_half_the_budget() {
        let shared = crate::connection::tests::shared_with_workers(2);
        let budget = Arc::new(SocketBudget::new(3));
        let acceptor = Acceptor::start(shared.clone(), budget.clone()).unwrap();
        let mut tokens = Vec::new();
        for n in 1..=2u64 {
            let socket = crate::bind::tcp_joinable("127.0.0.1:0".parse().unwrap(), true).unwrap();
            let addr = local(&socket);
            tokens.push(acceptor.add(vec![socket], web(), true).unwrap());
            let _client = std::net::TcpStream::connect(addr).unwrap();
            accepted(&shared, n).await;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(tokens.iter().map(|t| acceptor.sockets(*t)).collect::<Vec<_>>(), [1, 1], "3 / 2: no room to grow");
        assert_eq!(budget.open(), 2);
        acceptor.close().await;
    }
}

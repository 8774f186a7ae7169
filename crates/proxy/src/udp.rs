//! UDP service ports: one socket on VIP:port, a session per client.
//!
//! Each client address (IP and port) gets a *session*: an endpoint chosen
//! by the service's strategy (affinity, consistent hash by source IP,
//! topology and passive health apply as for TCP) and a socket connected to
//! it. Datagrams from the client go out on that socket; datagrams the
//! endpoint sends back are relayed to the client from the service socket,
//! so the client sees its replies come from the address it sent to.
//!
//! - A session ends after `udp_idle_timeout` without a datagram in either
//!   direction (per service: annotation `edgemesh.io/udp-idle-timeout`,
//!   default 60 s), when its endpoint refuses (an ICMP port unreachable
//!   surfaces as `ECONNREFUSED` on the connected socket: the endpoint is
//!   ejected and the client's next datagram opens a session elsewhere), or
//!   when the service port goes away.
//! - Sessions are bounded by `ProxyConfig::max_udp_sessions`: at the limit
//!   a new client takes the place of the port's longest-idle session
//!   (counted in `edgemesh_udp_sessions_evicted_total`, logged at warn at
//!   most once per interval per listener).
//! - Datagrams are never parsed, so no content can upset the proxy. The
//!   receive buffer holds the largest possible datagram, so none is
//!   truncated; it is one per worker thread (sessions hold no buffer), and
//!   every send is non-blocking: when a kernel buffer is full the datagram
//!   is dropped, as the network itself would.
//!
//! - An endpoint on another node is reached through the tunnel (see
//!   [`crate::remote`]): the session's datagrams go, in order, to a task
//!   that opens the tunnel's datagram session (one stream for the whole
//!   session, never one per datagram) and relays both ways (`remote`); if the tunnel
//!   cannot reach the endpoint, it is ejected and the client's next datagram
//!   opens a session elsewhere.
//!
//! The port's task owns its session table (no lock); each session has a
//! small task that waits for replies and for its idle deadline, and reports
//! its end on a channel.

use std::cell::RefCell;
use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use edgemesh_metrics::{Counter, Gauge};
use tokio::io::Interest;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::task::AbortHandle;
use tokio::time::Instant;

use crate::balance;
use crate::connection::Shared;
use crate::error::ProxyError;
use crate::pool::Pool;

/// Larger than any UDP payload (65,507 bytes over IPv4, 65,527 over IPv6).
const MAX_DATAGRAM: usize = 65_536;

/// Datagrams handled per wake-up before yielding to other tasks.
const BATCH: usize = 64;

thread_local! {
    /// One receive buffer per worker thread, used only in synchronous code.
    static BUF: RefCell<Box<[u8]>> = RefCell::new(vec![0u8; MAX_DATAGRAM].into_boxed_slice());
}

/// Datagrams queued for a session to another node while its tunnel opens
/// or is busy; beyond this they are dropped.
const REMOTE_QUEUE: usize = 256;

mod remote;

/// One client's session.
struct Session {
    id: u64,
    backend: SocketAddr,
    link: Link,
    /// Milliseconds since the port's epoch of the last datagram either way.
    last: Arc<AtomicU64>,
    task: AbortHandle,
    shared: Arc<Shared>,
    /// The port's `sessions_active` gauge.
    active: Gauge,
}

/// How a session's datagrams reach its endpoint.
enum Link {
    /// A socket connected to an endpoint on this node (or one routed to).
    Local(Arc<UdpSocket>),
    /// The queue of the task that relays through the tunnel.
    Remote(mpsc::Sender<Vec<u8>>),
}

impl Link {
    /// Sends now or fails: `WouldBlock` when full, `BrokenPipe` when the
    /// tunnel session has ended. A datagram sent to a local endpoint is
    /// counted in `sent`; one queued for the tunnel is counted by its task,
    /// once handed to the tunnel.
    fn send(&self, data: &[u8], sent: &Counter) -> io::Result<()> {
        match self {
            Link::Local(socket) => send(socket, data).map(|n| {
                sent.inc_by(n as u64);
            }),
            Link::Remote(queue) => queue.try_send(data.to_vec()).map_err(|e| match e {
                mpsc::error::TrySendError::Full(_) => io::ErrorKind::WouldBlock.into(),
                mpsc::error::TrySendError::Closed(_) => io::ErrorKind::BrokenPipe.into(),
            }),
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.task.abort();
        self.shared.status.udp_sessions.fetch_sub(1, Ordering::Relaxed);
        self.active.dec();
    }
}

/// Clock of one port: milliseconds since it started.
#[derive(Clone, Copy)]
struct Clock(Instant);

impl Clock {
    fn now_ms(self) -> u64 {
        u64::try_from(self.0.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn at(self, ms: u64) -> Instant {
        self.0 + Duration::from_millis(ms)
    }
}

/// Serves one UDP service port until the task is aborted (port removed) or
/// the proxy stops.
pub(crate) async fn serve(socket: Arc<UdpSocket>, pool: Arc<Pool>, shared: Arc<Shared>) {
    let (ended_tx, mut ended_rx) = mpsc::unbounded_channel::<(SocketAddr, u64)>();
    let mut port =
        Port { socket, pool, shared, sessions: HashMap::new(), next_id: 0, clock: Clock(Instant::now()), ended_tx };
    loop {
        tokio::select! {
            biased;
            () = port.shared.stop.cancelled() => return,
            Some((client, id)) = ended_rx.recv() => {
                if port.sessions.get(&client).is_some_and(|s| s.id == id) {
                    port.sessions.remove(&client);
                }
            }
            ready = port.socket.readable() => {
                if ready.is_err() {
                    return;
                }
                port.drain();
                tokio::task::yield_now().await;
            }
        }
    }
}

struct Port {
    socket: Arc<UdpSocket>,
    pool: Arc<Pool>,
    shared: Arc<Shared>,
    sessions: HashMap<SocketAddr, Session>,
    next_id: u64,
    clock: Clock,
    ended_tx: mpsc::UnboundedSender<(SocketAddr, u64)>,
}

impl Port {
    /// Handles up to [`BATCH`] queued datagrams.
    fn drain(&mut self) {
        BUF.with_borrow_mut(|buf| {
            for _ in 0..BATCH {
                match self.socket.try_recv_from(buf) {
                    Ok((n, client)) => self.datagram(&buf[..n], client),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                    // E.g. an ICMP error queued on the socket: nothing to do
                    // for the service socket; go on reading.
                    Err(e) => tracing::trace!(listener = %self.pool.addr, error = %e, "UDP receive error"),
                }
            }
        });
    }

    fn datagram(&mut self, data: &[u8], client: SocketAddr) {
        if let Some(session) = self.sessions.get(&client) {
            session.last.store(self.clock.now_ms(), Ordering::Relaxed);
            match session.link.send(data, &self.pool.metrics.udp().sent) {
                Ok(()) => return,
                Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                    // The endpoint went away since the last datagram: eject it
                    // and open a session elsewhere for this one.
                    self.pool.failed(session.backend);
                    self.sessions.remove(&client);
                }
                Err(e) if e.kind() == io::ErrorKind::BrokenPipe => {
                    // The tunnel session ended (its task has reported why).
                    self.sessions.remove(&client);
                }
                Err(_) => {
                    self.drop_datagram();
                    return;
                }
            }
        }
        let pool = self.pool.clone();
        let Some(session) = self.open(client) else {
            self.drop_datagram();
            return;
        };
        if session.link.send(data, &pool.metrics.udp().sent).is_err() {
            self.drop_datagram();
        }
    }

    /// Opens a session for `client`, evicting the longest-idle session of
    /// this port at the limit; `None` when no session can be had.
    fn open(&mut self, client: SocketAddr) -> Option<&Session> {
        let status = &self.shared.status;
        let max = self.shared.live.max_udp_sessions();
        if status.udp_sessions.load(Ordering::Relaxed) >= max {
            let oldest = self.sessions.iter().min_by_key(|(_, s)| s.last.load(Ordering::Relaxed)).map(|(c, _)| *c);
            match oldest {
                Some(c) => {
                    self.pool.metrics.udp().evicted.inc();
                    let (service, listener) = (&self.pool.service, self.pool.addr);
                    if self.pool.warnings.allow() {
                        tracing::warn!(%service, %listener, evicted = %c, max,
                            "UDP session limit reached (proxy.maxUdpSessions): closing the port's longest-idle session \
                             for a new client; raise the limit or shorten edgemesh.io/udp-idle-timeout");
                    } else {
                        tracing::debug!(%service, %listener, evicted = %c, "UDP session limit reached; closing the longest-idle session");
                    }
                    self.sessions.remove(&c);
                }
                None => {
                    self.pool.report(&ProxyError::UdpSessionLimit { max });
                    return None;
                }
            }
        }
        let targets = self.pool.targets();
        if targets.backends.is_empty() {
            self.pool.report(&self.pool.no_backends(&targets));
            return None;
        }
        let key = balance::hash_ip(client.ip());
        let mut last_error = None;
        for i in self.pool.plan(&targets, client.ip(), key) {
            let backend = targets.backends[i].addr;
            let remote = self.shared.reach.remote_for(&targets.backends[i]);
            let local = match remote {
                Some(_) => None,
                None => match connect(backend) {
                    Ok(s) => Some(Arc::new(s)),
                    Err(source) => {
                        last_error = Some(ProxyError::Connect { addr: backend, source });
                        continue;
                    }
                },
            };
            self.next_id += 1;
            let id = self.next_id;
            let last = Arc::new(AtomicU64::new(self.clock.now_ms()));
            let ends = SessionEnds {
                service_socket: self.socket.clone(),
                client,
                backend,
                last: last.clone(),
                clock: self.clock,
                idle: targets.udp_idle_timeout,
                pool: self.pool.clone(),
                shared: self.shared.clone(),
                ended: (self.ended_tx.clone(), id),
            };
            let (link, task) = match (local, remote) {
                (Some(socket), _) => {
                    // Connected, but not known to be listening: the first reply
                    // clears an ejection, a refusal (ICMP port unreachable)
                    // ejects it again for longer.
                    self.pool.session_opened(&targets, client.ip(), backend);
                    let task = tokio::spawn(relay_replies(Relay { backend_socket: socket.clone(), ends }));
                    (Link::Local(socket), task)
                }
                (None, Some((node, remote))) => {
                    let (queue, queued) = mpsc::channel(REMOTE_QUEUE);
                    let open = remote.open_udp(node, backend, &self.pool.service);
                    let node: Arc<str> = Arc::from(node);
                    let affinity = (targets.clone(), client.ip());
                    (Link::Remote(queue), tokio::spawn(remote::relay_remote(open, node, queued, affinity, ends)))
                }
                (None, None) => unreachable!("a local endpoint has its socket"),
            };
            status.udp_sessions.fetch_add(1, Ordering::Relaxed);
            status.total_udp_sessions.fetch_add(1, Ordering::Relaxed);
            let metrics = self.pool.metrics.udp();
            metrics.opened.inc();
            metrics.active.inc();
            tracing::trace!(service = %self.pool.service, %client, %backend, "UDP session opened");
            let (task, shared, active) = (task.abort_handle(), self.shared.clone(), metrics.active.clone());
            let session = Session { id, backend, link, last, task, shared, active };
            self.sessions.insert(client, session);
            return self.sessions.get(&client);
        }
        if let Some(e) = last_error {
            self.pool.report(&e);
        }
        None
    }

    fn drop_datagram(&self) {
        self.shared.status.dropped_datagrams.fetch_add(1, Ordering::Relaxed);
        self.pool.metrics.udp().dropped.inc();
    }
}

/// Sends one datagram now, or fails (`WouldBlock` when the socket buffer is
/// full). A plain non-blocking `send(2)`: tokio's `try_send` would refuse
/// until the reactor has reported the socket writable once, which a fresh
/// session socket has not.
fn send(socket: &UdpSocket, data: &[u8]) -> io::Result<usize> {
    socket2::SockRef::from(socket).send(data)
}

/// [`send`] to `to`, on an unconnected socket.
fn send_to(socket: &UdpSocket, data: &[u8], to: SocketAddr) -> io::Result<usize> {
    socket2::SockRef::from(socket).send_to(data, &to.into())
}

/// A UDP socket connected to `backend`, on an ephemeral port.
fn connect(backend: SocketAddr) -> io::Result<UdpSocket> {
    let local: SocketAddr = match backend.ip() {
        IpAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        IpAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let socket = std::net::UdpSocket::bind(local)?;
    socket.connect(backend)?;
    socket.set_nonblocking(true)?;
    UdpSocket::from_std(socket)
}

/// What every session's task needs to relay replies and to end.
struct SessionEnds {
    service_socket: Arc<UdpSocket>,
    client: SocketAddr,
    backend: SocketAddr,
    last: Arc<AtomicU64>,
    clock: Clock,
    idle: Duration,
    pool: Arc<Pool>,
    shared: Arc<Shared>,
    ended: (mpsc::UnboundedSender<(SocketAddr, u64)>, u64),
}

impl SessionEnds {
    /// When the session expires unless a datagram moves.
    fn deadline(&self) -> Instant {
        self.clock.at(self.last.load(Ordering::Relaxed)) + self.idle
    }

    /// Whether the session has been idle for its whole timeout (the client
    /// may have sent since a deadline was computed).
    fn expired(&self) -> bool {
        Instant::now() >= self.deadline()
    }

    fn touch(&self) {
        self.last.store(self.clock.now_ms(), Ordering::Relaxed);
    }

    /// Tells the port the session is over.
    fn end(&self) {
        let _ = self.ended.0.send((self.client, self.ended.1));
    }

    /// Sends the endpoint's `reply` to the client from the service address,
    /// counting it as received or dropped.
    fn reply(&self, reply: &[u8]) {
        match send_to(&self.service_socket, reply, self.client) {
            Ok(n) => {
                self.pool.metrics.udp().received.inc_by(n as u64);
            }
            Err(_) => self.dropped(),
        }
    }

    fn dropped(&self) {
        self.shared.status.dropped_datagrams.fetch_add(1, Ordering::Relaxed);
        self.pool.metrics.udp().dropped.inc();
    }
}

/// What a local session's reply task needs.
struct Relay {
    backend_socket: Arc<UdpSocket>,
    ends: SessionEnds,
}

/// Relays the endpoint's datagrams to the client until the session has
/// been idle for `idle` or the endpoint refuses; then reports its end.
async fn relay_replies(r: Relay) {
    let e = &r.ends;
    let mut answered = false;
    loop {
        tokio::select! {
            // ERROR too: an ICMP error (port unreachable) makes the socket
            // report an error, not readability, and a session whose client
            // sends once (a DNS query) would never see it otherwise.
            ready = r.backend_socket.ready(Interest::READABLE | Interest::ERROR) => {
                let Ok(ready) = ready else { break };
                let pending = if ready.is_error() { r.pending_error() } else { None };
                match pending.map_or_else(|| r.relay_batch(), Err) {
                    Ok(0) => {}
                    Ok(_) => {
                        if !answered {
                            answered = true;
                            e.pool.healthy(&e.backend);
                        }
                        e.touch();
                    }
                    Err(err) if err.kind() == io::ErrorKind::ConnectionRefused => {
                        e.pool.failed(e.backend);
                        e.pool.report(&ProxyError::Refused { addr: e.backend });
                        break;
                    }
                    Err(err) => {
                        tracing::debug!(service = %e.pool.service, backend = %e.backend, error = %err, "UDP session ended");
                        break;
                    }
                }
            }
            () = tokio::time::sleep_until(e.deadline()) => {
                if e.expired() {
                    tracing::trace!(service = %e.pool.service, client = %e.client, "UDP session idle; closing");
                    break;
                }
            }
        }
    }
    e.end();
}

impl Relay {
    /// The error an ICMP message left on the socket (port unreachable:
    /// `ECONNREFUSED`), taken off it; `None`, with the error readiness
    /// cleared, when there is none.
    fn pending_error(&self) -> Option<io::Error> {
        let socket = &self.backend_socket;
        let taken = socket.try_io(Interest::ERROR, || match socket.take_error()? {
            Some(error) => Ok(error),
            None => Err(io::ErrorKind::WouldBlock.into()),
        });
        taken.ok()
    }

    /// Moves up to [`BATCH`] queued replies to the client; the number moved.
    fn relay_batch(&self) -> io::Result<usize> {
        BUF.with_borrow_mut(|buf| {
            let mut moved = 0;
            for _ in 0..BATCH {
                match self.backend_socket.try_recv(buf) {
                    Ok(n) => {
                        moved += 1;
                        self.ends.reply(&buf[..n]);
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if moved > 0 => {
                        tracing::trace!(error = %e, "UDP receive error after replies");
                        break;
                    }
                    Err(e) => return Err(e),
                }
            }
            Ok(moved)
        })
    }
}

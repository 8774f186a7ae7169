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
//!   a new client takes the place of the port's longest-idle session.
//! - Datagrams are never parsed, so no content can upset the proxy. The
//!   receive buffer holds the largest possible datagram, so none is
//!   truncated; it is one per worker thread (sessions hold no buffer), and
//!   every send is non-blocking: when a kernel buffer is full the datagram
//!   is dropped, as the network itself would.
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

use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::task::AbortHandle;
use tokio::time::Instant;

use crate::balance;
use crate::connection::{Pool, Shared};
use crate::error::ProxyError;

/// Larger than any UDP payload (65,507 bytes over IPv4, 65,527 over IPv6).
const MAX_DATAGRAM: usize = 65_536;

/// Datagrams handled per wake-up before yielding to other tasks.
const BATCH: usize = 64;

thread_local! {
    /// One receive buffer per worker thread, used only in synchronous code.
    static BUF: RefCell<Box<[u8]>> = RefCell::new(vec![0u8; MAX_DATAGRAM].into_boxed_slice());
}

/// One client's session.
struct Session {
    id: u64,
    backend: SocketAddr,
    socket: Arc<UdpSocket>,
    /// Milliseconds since the port's epoch of the last datagram either way.
    last: Arc<AtomicU64>,
    task: AbortHandle,
    shared: Arc<Shared>,
}

impl Drop for Session {
    fn drop(&mut self) {
        self.task.abort();
        self.shared.status.udp_sessions.fetch_sub(1, Ordering::Relaxed);
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
            match send(&session.socket, data) {
                Ok(_) => return,
                Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                    // The endpoint went away since the last datagram: eject it
                    // and open a session elsewhere for this one.
                    self.pool.failed(session.backend);
                    self.sessions.remove(&client);
                }
                Err(_) => {
                    self.drop_datagram();
                    return;
                }
            }
        }
        let Some(session) = self.open(client) else {
            self.drop_datagram();
            return;
        };
        if send(&session.socket, data).is_err() {
            self.drop_datagram();
        }
    }

    /// Opens a session for `client`, evicting the longest-idle session of
    /// this port at the limit; `None` when no session can be had.
    fn open(&mut self, client: SocketAddr) -> Option<&Session> {
        let status = &self.shared.status;
        if status.udp_sessions.load(Ordering::Relaxed) >= self.shared.config.max_udp_sessions {
            let oldest = self.sessions.iter().min_by_key(|(_, s)| s.last.load(Ordering::Relaxed)).map(|(c, _)| *c);
            match oldest {
                Some(c) => {
                    tracing::debug!(service = %self.pool.service, evicted = %c, "UDP session limit reached; closing the longest-idle session");
                    self.sessions.remove(&c);
                }
                None => {
                    self.pool.report(&ProxyError::UdpSessionLimit { max: self.shared.config.max_udp_sessions });
                    return None;
                }
            }
        }
        let targets = self.pool.targets();
        if targets.backends.is_empty() {
            self.pool.report(&ProxyError::NoBackends { service: self.pool.service.clone(), port: self.pool.port });
            return None;
        }
        let key = balance::hash_ip(client.ip());
        let mut last_error = None;
        for i in self.pool.plan(&targets, client.ip(), key) {
            let backend = targets.backends[i].addr;
            let socket = match connect(backend) {
                Ok(s) => Arc::new(s),
                Err(source) => {
                    last_error = Some(ProxyError::Connect { addr: backend, source });
                    continue;
                }
            };
            self.pool.connected(&targets, client.ip(), backend);
            self.next_id += 1;
            let id = self.next_id;
            let last = Arc::new(AtomicU64::new(self.clock.now_ms()));
            let task = tokio::spawn(relay_replies(Relay {
                backend_socket: socket.clone(),
                service_socket: self.socket.clone(),
                client,
                backend,
                last: last.clone(),
                clock: self.clock,
                idle: targets.udp_idle_timeout,
                pool: self.pool.clone(),
                shared: self.shared.clone(),
                ended: (self.ended_tx.clone(), id),
            }))
            .abort_handle();
            status.udp_sessions.fetch_add(1, Ordering::Relaxed);
            status.total_udp_sessions.fetch_add(1, Ordering::Relaxed);
            tracing::trace!(service = %self.pool.service, %client, %backend, "UDP session opened");
            let session = Session { id, backend, socket, last, task, shared: self.shared.clone() };
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

/// What a session's reply task needs.
struct Relay {
    backend_socket: Arc<UdpSocket>,
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

/// Relays the endpoint's datagrams to the client until the session has
/// been idle for `idle` or the endpoint refuses; then reports its end.
async fn relay_replies(r: Relay) {
    let mut answered = false;
    loop {
        let deadline = r.clock.at(r.last.load(Ordering::Relaxed)) + r.idle;
        tokio::select! {
            ready = r.backend_socket.readable() => {
                if ready.is_err() {
                    break;
                }
                match r.relay_batch() {
                    Ok(0) => {}
                    Ok(_) => {
                        if !answered {
                            answered = true;
                            r.pool.healthy(&r.backend);
                        }
                        r.last.store(r.clock.now_ms(), Ordering::Relaxed);
                    }
                    Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                        r.pool.failed(r.backend);
                        r.pool.report(&ProxyError::Refused { addr: r.backend });
                        break;
                    }
                    Err(e) => {
                        tracing::debug!(service = %r.pool.service, backend = %r.backend, error = %e, "UDP session ended");
                        break;
                    }
                }
            }
            () = tokio::time::sleep_until(deadline) => {
                // The client may have sent since the deadline was computed.
                let last = r.clock.at(r.last.load(Ordering::Relaxed));
                if Instant::now() >= last + r.idle {
                    tracing::trace!(service = %r.pool.service, client = %r.client, "UDP session idle; closing");
                    break;
                }
            }
        }
    }
    let _ = r.ended.0.send((r.client, r.ended.1));
}

impl Relay {
    /// Moves up to [`BATCH`] queued replies to the client; the number moved.
    fn relay_batch(&self) -> io::Result<usize> {
        BUF.with_borrow_mut(|buf| {
            let mut moved = 0;
            for _ in 0..BATCH {
                match self.backend_socket.try_recv(buf) {
                    Ok(n) => {
                        moved += 1;
                        if send_to(&self.service_socket, &buf[..n], self.client).is_err() {
                            self.shared.status.dropped_datagrams.fetch_add(1, Ordering::Relaxed);
                        }
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

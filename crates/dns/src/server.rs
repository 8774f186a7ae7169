//! Sockets and serving loops.
//!
//! UDP: one socket per core on the same address (`SO_REUSEPORT`), each with
//! its own receive loop that answers cluster names and cache hits inline;
//! only upstream lookups get a task. TCP: one listener, a task per
//! connection, queries answered in order, idle connections closed.
//!
//! The TCP listener is bound first and without `SO_REUSEPORT`, so a second
//! agent (or any other DNS server) on the same address is a start-up error
//! rather than a silent split of the UDP traffic.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use edgemesh_core::Snapshot;
use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::{Semaphore, watch};
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::DnsConfig;
use crate::cache::Cache;
use crate::cluster::Zone;
use crate::error::DnsError;
use crate::forward::Forwarder;
use crate::handler::{Handler, MAX_UDP_PAYLOAD, Step, Transport};

/// Most upstream lookups in flight at once; beyond, clients get SERVFAIL.
const MAX_FORWARDS: usize = 2048;
/// Most open TCP connections; beyond, new ones are closed at once.
const MAX_TCP_CONNECTIONS: usize = 512;
/// A TCP connection with no complete query for this long is closed.
const TCP_IDLE: Duration = Duration::from_secs(10);
/// Most UDP sockets (receive loops), whatever the core count.
const MAX_UDP_SOCKETS: usize = 8;

/// The DNS server, bound and ready to [`run`](DnsServer::run).
#[derive(Debug)]
pub struct DnsServer {
    udp: Vec<UdpSocket>,
    tcp: TcpListener,
    local_addr: SocketAddr,
    handler: Arc<Handler>,
}

impl DnsServer {
    /// Binds UDP and TCP now so errors (address in use, permission) surface
    /// at start with the address in the message.
    pub async fn bind(config: DnsConfig, snapshots: watch::Receiver<Arc<Snapshot>>) -> Result<Self, DnsError> {
        if config.upstream_timeout.is_zero() {
            return Err(DnsError::Config { setting: "upstream_timeout", reason: "must be more than zero".into() });
        }
        let zone = Zone::new(&config.cluster_domain, config.service_ttl)?;
        let sockets = std::thread::available_parallelism().map_or(1, |n| n.get()).clamp(1, MAX_UDP_SOCKETS);
        let (tcp, udp) = bind_all(config.listen, sockets)?;
        let local_addr =
            tcp.local_addr().map_err(|source| DnsError::Bind { proto: "TCP", addr: config.listen, source })?;
        let forwarder =
            (!config.upstreams.is_empty()).then(|| Forwarder::new(config.upstreams.clone(), config.upstream_timeout));
        let handler = Arc::new(Handler::new(zone, snapshots, forwarder, Cache::new(config.cache_size)));
        tracing::info!(
            %local_addr,
            udp_sockets = udp.len(),
            domain = %config.cluster_domain,
            upstreams = ?config.upstreams,
            "DNS listening on UDP and TCP"
        );
        Ok(Self { udp, tcp, local_addr, handler })
    }

    /// The bound address (the real port when the configured one was 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Serves until `shutdown` is cancelled, then stops every loop and
    /// in-flight lookup.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), DnsError> {
        let tracker = TaskTracker::new();
        let forwards = Arc::new(Semaphore::new(MAX_FORWARDS));
        for socket in self.udp {
            let (handler, forwards, tracker2) = (self.handler.clone(), forwards.clone(), tracker.clone());
            let shutdown = shutdown.clone();
            tracker.spawn(async move {
                tokio::select! {
                    () = udp_loop(Arc::new(socket), handler, forwards, tracker2, shutdown.clone()) => {}
                    () = shutdown.cancelled() => {}
                }
            });
        }
        let tcp_task = {
            let (handler, tracker2, shutdown) = (self.handler.clone(), tracker.clone(), shutdown.clone());
            tracker.spawn(tcp_loop(self.tcp, handler, tracker2, shutdown))
        };
        shutdown.cancelled().await;
        tracker.close();
        tracker.wait().await;
        match tcp_task.await {
            Ok(Err(source)) => Err(DnsError::Socket { proto: "TCP", addr: self.local_addr, source }),
            _ => Ok(()),
        }
    }
}

/// Binds the TCP listener, then `count` UDP sockets on the same port. With
/// port 0, retries a few times in case the UDP port is taken.
fn bind_all(listen: SocketAddr, count: usize) -> Result<(TcpListener, Vec<UdpSocket>), DnsError> {
    let mut attempts = if listen.port() == 0 { 8 } else { 1 };
    loop {
        attempts -= 1;
        let tcp = tcp_listener(listen).map_err(|source| DnsError::Bind { proto: "TCP", addr: listen, source })?;
        let addr = tcp.local_addr().map_err(|source| DnsError::Bind { proto: "TCP", addr: listen, source })?;
        match (0..count).map(|_| udp_socket(addr)).collect::<io::Result<Vec<_>>>() {
            Ok(udp) => return Ok((tcp, udp)),
            Err(e) if attempts > 0 && e.kind() == io::ErrorKind::AddrInUse => continue,
            Err(source) => return Err(DnsError::Bind { proto: "UDP", addr, source }),
        }
    }
}

fn udp_socket(addr: SocketAddr) -> io::Result<UdpSocket> {
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    socket.set_reuse_port(true)?;
    // Room for bursts while a loop is busy; the kernel caps it, so best effort.
    let _ = socket.set_recv_buffer_size(1 << 20);
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    UdpSocket::from_std(socket.into())
}

fn tcp_listener(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    // Restarts must not wait for TIME_WAIT; SO_REUSEADDR never lets two
    // listeners share a port on Linux.
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    TcpListener::from_std(socket.into())
}

// ---- UDP ----

async fn udp_loop(
    socket: Arc<UdpSocket>,
    handler: Arc<Handler>,
    forwards: Arc<Semaphore>,
    tracker: TaskTracker,
    shutdown: CancellationToken,
) {
    let mut buf = vec![0u8; usize::from(MAX_UDP_PAYLOAD)];
    let mut out = Vec::with_capacity(512);
    loop {
        let (len, peer) = match socket.recv_from(&mut buf).await {
            Ok(received) => received,
            Err(error) => {
                // Transient (e.g. a reported ICMP error); never fatal for the loop.
                tracing::debug!(%error, "UDP receive failed");
                tokio::task::yield_now().await;
                continue;
            }
        };
        match handler.handle(&buf[..len], Transport::Udp, &mut out) {
            Step::Reply => send(&socket, &out, peer).await,
            Step::Drop => {}
            Step::Forward(pending) => match forwards.clone().try_acquire_owned() {
                Ok(permit) => {
                    let (socket, handler, shutdown) = (socket.clone(), handler.clone(), shutdown.clone());
                    tracker.spawn(async move {
                        let _permit = permit;
                        tokio::select! {
                            bytes = handler.forward(pending) => send(&socket, &bytes, peer).await,
                            () = shutdown.cancelled() => {}
                        }
                    });
                }
                Err(_) => {
                    tracing::debug!(%peer, "too many upstream lookups in flight; answering SERVFAIL");
                    send(&socket, &handler.servfail(pending), peer).await;
                }
            },
        }
    }
}

async fn send(socket: &UdpSocket, bytes: &[u8], peer: SocketAddr) {
    if let Err(error) = socket.send_to(bytes, peer).await {
        tracing::debug!(%peer, %error, "cannot send DNS response");
    }
}

// ---- TCP ----

async fn tcp_loop(
    listener: TcpListener,
    handler: Arc<Handler>,
    tracker: TaskTracker,
    shutdown: CancellationToken,
) -> io::Result<()> {
    let connections = Arc::new(Semaphore::new(MAX_TCP_CONNECTIONS));
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = shutdown.cancelled() => return Ok(()),
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(%error, "cannot accept a DNS TCP connection; is the open-files limit too low?");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = connections.clone().try_acquire_owned() else {
            tracing::debug!(%peer, "too many DNS TCP connections; closing the new one");
            continue;
        };
        let (handler, shutdown) = (handler.clone(), shutdown.clone());
        tracker.spawn(async move {
            let _permit = permit;
            tokio::select! {
                result = tcp_connection(stream, &handler) => {
                    if let Err(error) = result {
                        tracing::trace!(%peer, %error, "DNS TCP connection ended");
                    }
                }
                () = shutdown.cancelled() => {}
            }
        });
    }
}

/// Answers length-prefixed queries in order until the client closes, goes
/// idle, or sends garbage.
async fn tcp_connection(mut stream: TcpStream, handler: &Handler) -> io::Result<()> {
    stream.set_nodelay(true)?;
    let mut buf = Vec::new();
    let mut out = Vec::new();
    loop {
        let len = match timeout(TCP_IDLE, stream.read_u16()).await {
            Ok(Ok(len)) => usize::from(len),
            Ok(Err(e)) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(()),
            Ok(Err(e)) => return Err(e),
            Err(_) => return Ok(()),
        };
        buf.resize(len, 0);
        timeout(TCP_IDLE, stream.read_exact(&mut buf)).await.map_err(|_| io::ErrorKind::TimedOut)??;
        let response = match handler.handle(&buf, Transport::Tcp, &mut out) {
            Step::Reply => std::mem::take(&mut out),
            Step::Drop => return Ok(()),
            Step::Forward(pending) => handler.forward(pending).await,
        };
        let Ok(len) = u16::try_from(response.len()) else { return Ok(()) };
        let mut framed = Vec::with_capacity(response.len() + 2);
        framed.extend_from_slice(&len.to_be_bytes());
        framed.extend_from_slice(&response);
        stream.write_all(&framed).await?;
    }
}

//! Sockets and serving loops.
//!
//! UDP: our own loops. One socket per core on the same address
//! (`SO_REUSEPORT`), each with its own receive loop that answers cluster
//! names and cache hits inline, in place, without allocating (see
//! [`wire`](crate::wire)); only upstream lookups get a task. hickory-server's
//! `Server` would instead read each socket in one task, spawn a task per
//! packet and funnel every reply through one channel to one sending task,
//! and log every request at `info`: more than the whole answer costs on this
//! hot path, and it cannot spread one address over several sockets.
//!
//! TCP: hickory-server's [`Server`], with our [`HickoryHandler`]: a task per
//! connection, queries answered in order, a connection closed when no
//! complete query arrived for `TCP_IDLE` (10 s) after the previous one was
//! answered, and a graceful stop on shutdown. TCP carries few queries (large
//! answers, retries after TC), so there the standard server is worth more
//! than the last microsecond.
//!
//! Both sockets are bound in [`DnsServer::bind`], so a taken address fails
//! at start, naming it. The TCP listener is bound first and without
//! `SO_REUSEPORT`, so a second agent (or any other DNS server) on the same
//! address is a start-up error rather than a silent split of the UDP
//! traffic.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use edgemesh_core::Snapshot;
use hickory_server::Server;
use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::{Semaphore, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::DnsConfig;
use crate::access::ClientAccess;
use crate::cache::Cache;
use crate::cluster::Zone;
use crate::error::DnsError;
use crate::forward::Forwarder;
use crate::handler::{Handler, Step, Transport};
use crate::hickory::HickoryHandler;
use crate::metrics::DnsMetrics;
use crate::rate_limit::RateLimiter;

/// Largest query read over UDP (queries are small; larger ones are cut and
/// then fail to parse).
const MAX_UDP_QUERY: usize = 4096;

/// Most upstream lookups in flight at once; beyond, clients get SERVFAIL.
const MAX_FORWARDS: usize = 2048;
/// A TCP connection with no complete query for this long (after the
/// previous answer) is closed.
const TCP_IDLE: Duration = Duration::from_secs(10);
/// Responses queued per TCP connection; hickory-server answers the queries
/// of a connection one after the other, so one at a time is queued.
const TCP_RESPONSE_BUFFER: usize = 4;
/// Most UDP sockets (receive loops), whatever the core count.
const MAX_UDP_SOCKETS: usize = 8;

/// The DNS server, bound and ready to [`run`](DnsServer::run).
#[derive(Debug)]
pub struct DnsServer {
    udp: Vec<UdpSocket>,
    tcp: TcpListener,
    local_addr: SocketAddr,
    handler: Arc<Handler>,
    /// hickory-server's TCP timeout (see [`DnsServer::run`]).
    tcp_timeout: Duration,
}

impl DnsServer {
    /// Binds UDP and TCP now so errors (address in use, permission) surface
    /// at start with the address in the message.
    pub async fn bind(config: DnsConfig, snapshots: watch::Receiver<Arc<Snapshot>>) -> Result<Self, DnsError> {
        if config.upstream_timeout.is_zero() {
            return Err(DnsError::Config { setting: "upstream_timeout", reason: "must be more than zero".into() });
        }
        let zone = Zone::new(&config.cluster_domain, config.service_ttl)?
            .with_negative_ttl(config.negative_ttl)
            .with_cluster_ips_first(config.cluster_ips_first);
        let sockets = std::thread::available_parallelism().map_or(1, |n| n.get()).clamp(1, MAX_UDP_SOCKETS);
        let listen = config.listen();
        let (tcp, udp) = bind_all(listen, sockets)?;
        let local_addr = tcp.local_addr().map_err(|source| DnsError::Bind { proto: "TCP", addr: listen, source })?;
        let forwarder =
            (!config.upstreams.is_empty()).then(|| Forwarder::new(config.upstreams.clone(), config.upstream_timeout));
        let metrics = DnsMetrics::new(local_addr, &config.cluster_domain);
        let access = ClientAccess::new(local_addr.ip(), config.allowed_clients.clone());
        let limiter = (config.rate_limit > 0).then(|| RateLimiter::new(config.rate_limit, config.rate_limit_burst));
        let handler = Arc::new(
            Handler::new(zone, snapshots, forwarder, Cache::new(config.cache_size))
                .with_metrics(metrics)
                .with_clients(access, limiter),
        );
        tracing::info!(
            %local_addr,
            udp_sockets = udp.len(),
            domain = %config.cluster_domain,
            upstreams = ?config.upstreams,
            node_local = handler.access().node_local(),
            allowed_clients = ?config.allowed_clients,
            rate_limit = config.rate_limit,
            "DNS listening on UDP and TCP"
        );
        // hickory-server's timeout runs from one query read to the next
        // complete one, so it includes the time spent answering: allow for
        // the slowest upstream lookup on top of the idle time.
        let tcp_timeout = TCP_IDLE + config.upstream_timeout;
        Ok(Self { udp, tcp, local_addr, handler, tcp_timeout })
    }

    /// Exports the server's metrics (`dns_...`) from `registry` (the agent's
    /// `edgemesh_` one); they count from the bind on.
    pub fn register_metrics(&self, registry: &mut edgemesh_metrics::Registry) {
        self.handler.metrics().register(registry);
    }

    /// The bound address (the real port when the configured one was 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The settings a config reload may change while the server runs.
    pub fn live_settings(&self) -> crate::DnsLiveSettings {
        crate::DnsLiveSettings::new(self.handler.clone())
    }

    /// Serves until `shutdown` is cancelled, then stops every loop and
    /// in-flight lookup. Returns early with an error if hickory-server's TCP
    /// listener task gives up (it stops on some accept errors), so the agent
    /// fails loudly instead of silently serving UDP only.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), DnsError> {
        let stop = shutdown.child_token();
        let tracker = TaskTracker::new();
        let forwards = Arc::new(Semaphore::new(MAX_FORWARDS));
        for socket in self.udp {
            let (handler, forwards, tracker2) = (self.handler.clone(), forwards.clone(), tracker.clone());
            let stop = stop.clone();
            tracker.spawn(async move {
                tokio::select! {
                    () = udp_loop(Arc::new(socket), handler, forwards, tracker2, stop.clone()) => {}
                    () = stop.cancelled() => {}
                }
            });
        }
        let mut tcp = Server::new(HickoryHandler::new(self.handler.clone()));
        tcp.register_listener(self.tcp, self.tcp_timeout, TCP_RESPONSE_BUFFER);
        let tcp_result = tokio::select! {
            // Stops accepting, then drops the listener and aborts the
            // connections (and their lookups) once the accept task has ended.
            () = stop.cancelled() => tcp.shutdown_gracefully().await,
            ended = tcp.block_until_done() => {
                tracing::error!(addr = %self.local_addr, result = ?ended, "DNS over TCP stopped; stopping DNS");
                ended.and(Err("the TCP listener task ended".into()))
            }
        };
        stop.cancel();
        tracker.close();
        tracker.wait().await;
        tcp_result.map_err(|error| DnsError::Socket {
            proto: "TCP",
            addr: self.local_addr,
            source: io::Error::other(error),
        })
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
    let mut buf = vec![0u8; MAX_UDP_QUERY];
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
        match handler.handle(&buf[..len], Transport::Udp, peer.ip(), &mut out) {
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

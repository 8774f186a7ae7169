//! The transparent listener: one port for every intercepted service
//! address.
//!
//! With interception on, nftables (crate `edgemesh-intercept`) redirects
//! every TCP connection to a service's cluster IP or VIP and port to this
//! listener. The original destination (`SO_ORIGINAL_DST`, or
//! `IP6T_SO_ORIGINAL_DST` on the IPv6 socket) names the service port; the
//! connection then takes the same path as one accepted on a VIP listener
//! (admission, balancing, retries, splice).
//!
//! `crate::routes` maps each service address to its port's pool of that
//! address' family. A node port is found by its port alone (and the family
//! of the address it was sent to): nftables redirects it only when sent to
//! one of the node's own addresses (`fib daddr type local`).
//!
//! Beside the kernel fast path (mode `ebpf`, [`Transparent::NodePorts`])
//! only node ports are redirected here: the programs send cluster IPs to
//! the VIP listeners, which stay.
//!
//! A connection whose original destination is no known service (a race
//! with a removal) is reset: it is never forwarded to the listener again.
//! So is one to a node port of a service that has no address in the
//! family it came in on (logged at debug: kube-proxy does not serve it
//! either).
//! Connections to the listener's port itself, not redirected, never get
//! here: the interceptor's table drops them (`input` chain).

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use rustix::net::SocketFlags;
use socket2::SockRef;
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

use crate::connection::{self, Shared};
use crate::pool::LogLimiter;

/// Which TCP connections the transparent listener serves.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Transparent {
    /// None: a listener per VIP and port (no interception).
    #[default]
    Off,
    /// Every service address and node port (nftables mode); TCP ports get
    /// no VIP listener.
    Every,
    /// Node ports only, beside the VIP listeners (mode `ebpf`).
    NodePorts,
}

/// The bound transparent listening sockets: a group per family (IPv4, and
/// IPv6 when the host has it), a socket per worker (see `bind`).
#[derive(Debug)]
pub struct TransparentListeners {
    /// Accepted on directly by the worker owning each (not through tokio's
    /// `TcpListener`), each connection served by that worker.
    pub(crate) groups: Vec<Vec<std::net::TcpListener>>,
}

impl TransparentListeners {
    /// Binds `0.0.0.0:port` and `[::]:port` (all addresses: connections
    /// from containers are redirected to the address of the interface they
    /// came in on), `workers` sockets each. IPv6 being unavailable is not an
    /// error.
    pub fn bind(port: u16, workers: usize) -> io::Result<Self> {
        let group = |ip: IpAddr| {
            crate::bind::tcp_group(SocketAddr::new(ip, port), workers)
                .map(|g| g.into_iter().map(std::net::TcpListener::from).collect::<Vec<_>>())
        };
        let mut groups = vec![group(Ipv4Addr::UNSPECIFIED.into())?];
        match group(Ipv6Addr::UNSPECIFIED.into()) {
            Ok(g) => groups.push(g),
            Err(e) => {
                tracing::warn!(port, error = %e, "no IPv6 transparent listener; IPv6 services are not intercepted")
            }
        }
        Ok(Self { groups })
    }

    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.groups.iter().filter_map(|g| g.first()?.local_addr().ok()).collect()
    }
}

/// Finds the destination a redirected connection was sent to: the socket's
/// `SO_ORIGINAL_DST` in the agent ([`SocketOriginalDst`]); tests without
/// nftables hand in their own answer.
pub trait OriginalDst: Send + Sync + 'static {
    /// `ipv6`: the connection came in on the IPv6 listener.
    fn original_dst(&self, stream: &std::net::TcpStream, ipv6: bool) -> io::Result<SocketAddr>;
}

/// The kernel's record of a NATed connection (`SO_ORIGINAL_DST`,
/// `IP6T_SO_ORIGINAL_DST`).
#[derive(Clone, Copy, Debug, Default)]
pub struct SocketOriginalDst;

impl OriginalDst for SocketOriginalDst {
    fn original_dst(&self, stream: &std::net::TcpStream, ipv6: bool) -> io::Result<SocketAddr> {
        let sock = SockRef::from(stream);
        let addr = if ipv6 { sock.original_dst_v6()? } else { sock.original_dst_v4()? };
        addr.as_socket().ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "original destination is not IP"))
    }
}

/// Pause after an accept error so the loop does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// Accepts on one socket of a group and serves its connections on the
/// current runtime (the worker owning the socket).
pub(crate) async fn accept_loop(
    listener: std::net::TcpListener,
    shared: Arc<Shared>,
    original_dst: Arc<dyn OriginalDst>,
) {
    let ipv6 = listener.local_addr().map(|a| a.is_ipv6()).unwrap_or(false);
    // `with_interest` is deprecated because a generic `AsRawFd` may change
    // its descriptor; a `std::net::TcpListener` owned by the `AsyncFd`
    // cannot (as in `acceptor`).
    #[allow(deprecated)]
    let listener = match AsyncFd::with_interest(listener, Interest::READABLE) {
        Ok(listener) => listener,
        Err(e) => {
            tracing::error!(error = %e, "cannot register the transparent listener; its connections are not accepted");
            return;
        }
    };
    let errors = LogLimiter::default();
    let misses = LogLimiter::default();
    loop {
        let accepted = listener
            .async_io(Interest::READABLE, |l| {
                rustix::net::acceptfrom_with(l, SocketFlags::NONBLOCK | SocketFlags::CLOEXEC).map_err(io::Error::from)
            })
            .await;
        let (stream, peer) = match accepted {
            Ok((socket, peer)) => {
                let stream = std::net::TcpStream::from(socket);
                match peer.and_then(|p| SocketAddr::try_from(p).ok()).or_else(|| stream.peer_addr().ok()) {
                    Some(peer) => (stream, peer),
                    // Reset by the client before we saw it: nothing to serve.
                    None => continue,
                }
            }
            Err(e) if e.raw_os_error() == Some(rustix::io::Errno::CONNABORTED.raw_os_error()) => continue,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                if errors.allow() {
                    tracing::warn!(error = %e, "transparent accept failed (out of file descriptors?)");
                }
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        let dst = original_dst.original_dst(&stream, ipv6);
        match dst.as_ref().ok().and_then(|d| shared.routes.lookup(d)) {
            Some(pool) => connection::admit(&shared, &pool, stream, peer),
            None => {
                shared.status.total_connections.fetch_add(1, Ordering::Relaxed);
                shared.status.failed_connections.fetch_add(1, Ordering::Relaxed);
                shared.status.unrouted_connections.fetch_add(1, Ordering::Relaxed);
                shared.metrics.unrouted.inc();
                let message = match &dst {
                    Ok(d) => format!("intercepted connection from {peer} to {d}, which is no service port; reset"),
                    Err(e) => format!("connection from {peer} to the transparent port was not redirected ({e}); reset"),
                };
                let other_family = dst.as_ref().is_ok_and(|d| shared.routes.is_node_port_of_other_family(d));
                if other_family {
                    tracing::debug!("{message} (its service has no address of this family)");
                } else if misses.allow() {
                    tracing::warn!("{message}");
                } else {
                    tracing::debug!("{message}");
                }
                let _ = SockRef::from(&stream).set_linger(Some(Duration::ZERO));
            }
        }
    }
}

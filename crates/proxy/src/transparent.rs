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
//! [`Routes`] maps each service address to its port's pool. The listener
//! reconciler keeps it in step with the snapshots: one write lock per
//! changed service, held for a few map operations, so a resync never
//! stalls accepts for long.
//!
//! A node port is found by its port alone: nftables redirects it only when
//! sent to one of the node's own addresses (`fib daddr type local`).
//!
//! A connection whose original destination is no known service (a race
//! with a removal) is reset: it is never forwarded to the listener again.
//! Connections to the listener's port itself, not redirected, never get
//! here: the interceptor's table drops them (`input` chain).

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use rustix::net::SocketFlags;
use socket2::SockRef;
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

use crate::connection::{self, LogLimiter, Pool, Shared};

/// Service address (cluster IP or VIP, and port) -> the pool serving it.
#[derive(Debug, Default)]
pub(crate) struct Routes {
    map: RwLock<HashMap<SocketAddr, Arc<Pool>>>,
}

impl Routes {
    /// The pool for a connection originally sent to `dst`: the service
    /// address itself, else a node port (nftables redirects a node port
    /// only when sent to one of the node's own addresses, which are no
    /// service addresses).
    pub(crate) fn lookup(&self, dst: &SocketAddr) -> Option<Arc<Pool>> {
        let dst = normalize(*dst);
        let map = self.map.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        map.get(&dst).or_else(|| map.get(&node_port_route(dst.port()))).cloned()
    }

    /// Removes `old` and inserts `new` in one step (no moment where a
    /// kept address is missing).
    pub(crate) fn replace(&self, old: &[SocketAddr], new: &[(SocketAddr, Arc<Pool>)]) {
        if old.is_empty() && new.is_empty() {
            return;
        }
        let mut map = self.map.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        for addr in old {
            map.remove(addr);
        }
        for (addr, pool) in new {
            map.insert(*addr, pool.clone());
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.map.read().unwrap_or_else(std::sync::PoisonError::into_inner).len()
    }
}

/// The key under which the pool of a node port is found: the port on the
/// unspecified address (any address of the node).
pub(crate) fn node_port_route(port: u16) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::UNSPECIFIED, port))
}

/// An IPv4-mapped IPv6 address is the IPv4 address.
fn normalize(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(v4.into(), v6.port()),
            None => addr,
        },
        v4 => v4,
    }
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
                let message = match &dst {
                    Ok(d) => format!("intercepted connection from {peer} to {d}, which is no service port; reset"),
                    Err(e) => format!("connection from {peer} to the transparent port was not redirected ({e}); reset"),
                };
                if misses.allow() {
                    tracing::warn!("{message}");
                } else {
                    tracing::debug!("{message}");
                }
                let _ = SockRef::from(&stream).set_linger(Some(Duration::ZERO));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::connection::Targets;
    use edgemesh_core::{LbStrategy, ServiceKey};

    fn pool(addr: &str) -> Arc<Pool> {
        Arc::new(Pool::new(
            ServiceKey::new("default", "web"),
            addr.parse().unwrap(),
            Targets::new(LbStrategy::RoundRobin, Arc::from(Vec::new())),
        ))
    }

    #[test]
    fn routes_follow_replacements() {
        let routes = Routes::default();
        let vip: SocketAddr = "127.251.0.1:80".parse().unwrap();
        let cluster: SocketAddr = "10.96.0.10:80".parse().unwrap();
        let p = pool("127.251.0.1:80");
        routes.replace(&[], &[(vip, p.clone()), (cluster, p.clone())]);
        assert!(Arc::ptr_eq(&routes.lookup(&cluster).unwrap(), &p));
        assert!(routes.lookup(&"10.96.0.10:81".parse().unwrap()).is_none(), "another port is another service port");
        // The cluster IP changes: the old address goes, the kept one stays.
        let moved: SocketAddr = "10.96.0.11:80".parse().unwrap();
        routes.replace(&[vip, cluster], &[(vip, p.clone()), (moved, p.clone())]);
        assert!(routes.lookup(&cluster).is_none());
        assert!(routes.lookup(&moved).is_some() && routes.lookup(&vip).is_some());
        assert_eq!(routes.len(), 2);
        // An IPv4-mapped destination is the IPv4 one.
        assert!(routes.lookup(&"[::ffff:10.96.0.11]:80".parse().unwrap()).is_some());
        // A node port is found on any (node) address, IPv4 or IPv6; the
        // service's own addresses win.
        let np = pool("127.251.0.2:80");
        routes.replace(&[], &[(node_port_route(30080), np.clone())]);
        assert!(Arc::ptr_eq(&routes.lookup(&"192.0.2.1:30080".parse().unwrap()).unwrap(), &np));
        assert!(Arc::ptr_eq(&routes.lookup(&"[2001:db8::1]:30080".parse().unwrap()).unwrap(), &np));
        assert!(routes.lookup(&"192.0.2.1:30081".parse().unwrap()).is_none());
    }
}

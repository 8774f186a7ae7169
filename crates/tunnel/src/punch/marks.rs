//! The addresses marked for primed dials (shared by the behaviour and the transport), and
//! the TCP socket address a multiaddr names.

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use libp2p::{Multiaddr, multiaddr::Protocol};

/// A mark not taken by a dial within this long is dropped (the transport's dial follows the
/// behaviour's look at it at once).
pub(super) const MARK_LIFETIME: Duration = Duration::from_secs(5);
/// Bound on the marks held at once.
const MAX_MARKS: usize = 1024;

/// The IP address and TCP port of `/ip4|ip6/<ip>/tcp/<port>[/p2p/<peer>]`; None for any other
/// address (relayed, QUIC, DNS, WebSocket...).
pub(crate) fn tcp_socket_addr(addr: &Multiaddr) -> Option<SocketAddr> {
    let mut parts = addr.iter();
    let ip = match parts.next()? {
        Protocol::Ip4(ip) => IpAddr::V4(ip),
        Protocol::Ip6(ip) => IpAddr::V6(ip),
        _ => return None,
    };
    let Protocol::Tcp(port) = parts.next()? else { return None };
    match parts.next() {
        None => {}
        Some(Protocol::P2p(_)) if parts.next().is_none() => {}
        Some(_) => return None,
    }
    Some(SocketAddr::new(ip, port))
}

/// The addresses marked for a primed dial, shared by the behaviour (which marks) and the
/// transport (which takes a mark when it dials).
#[derive(Clone)]
pub(crate) struct Marks {
    /// The TTL (IPv6: hop limit) of a primed dial's first SYN; 0: priming off.
    pub(crate) ttl: u8,
    marked: Arc<Mutex<HashMap<SocketAddr, Instant>>>,
}

impl Marks {
    pub(crate) fn new(ttl: u8) -> Marks {
        Marks { ttl, marked: Arc::default() }
    }

    pub(super) fn mark(&self, targets: &[SocketAddr], now: Instant) {
        let mut marked = self.marked.lock().unwrap_or_else(|e| e.into_inner());
        marked.retain(|_, at| now.duration_since(*at) < MARK_LIFETIME);
        for t in targets {
            if marked.len() >= MAX_MARKS {
                break;
            }
            marked.insert(*t, now);
        }
    }

    /// Whether `target` was marked (lately); the mark is used up.
    pub(crate) fn take(&self, target: SocketAddr, now: Instant) -> bool {
        let mut marked = self.marked.lock().unwrap_or_else(|e| e.into_inner());
        marked.remove(&target).is_some_and(|at| now.duration_since(at) < MARK_LIFETIME)
    }
}

//! Listening sockets for service addresses.
//!
//! A TCP service address is listened on by a group of sockets, one per
//! connection worker, bound to the same address with `SO_REUSEPORT`: the
//! kernel spreads new connections over the group by a hash of their
//! addresses, and the worker owning the socket accepts and serves them, so
//! a connection never changes threads (no hand-off, no cross-thread
//! wake-up).
//!
//! The first socket of a group is bound *without* `SO_REUSEPORT` and has
//! it set just before `listen` (the kernel forms the group at `listen`).
//! A socket binds into a group only when both have the option and the same
//! owner, so that first bind still fails with `EADDRINUSE` when anything
//! (another agent, even with `SO_REUSEPORT`) holds the address: a second
//! agent cannot silently take half of the connections. The other sockets
//! join with the option set, at once ([`tcp_group`]) or later: a service
//! listener starts as one joinable socket ([`tcp_joinable`]) and the
//! acceptor adds the others ([`tcp_join`]) when its first connection
//! arrives, so the many services nobody connects to cost one socket each.
//!
//! A single socket registered in every worker's event loop would wake
//! every worker per connection (`EPOLLEXCLUSIVE` does not help through the
//! acceptor's nested epoll set, whose readiness reaches tokio's set by
//! polling), and all would contend on one accept queue.

use std::io;
use std::net::SocketAddr;
use std::os::fd::OwnedFd;

use socket2::{Domain, Socket, Type};
use tokio::net::UdpSocket;

/// Backlog of each listening socket (the kernel caps it at `somaxconn`).
const BACKLOG: i32 = 1024;

/// Receive buffer asked for on UDP service sockets (the kernel caps it at
/// `net.core.rmem_max`): room for bursts from many clients.
const UDP_RECV_BUFFER: usize = 4 << 20;

/// A socket for a service address: reusable, one family only, and bindable
/// before the VIP is on a device (freebind, best effort).
fn service_socket(addr: SocketAddr, ty: Type, protocol: socket2::Protocol) -> io::Result<Socket> {
    let socket = Socket::new(Domain::for_address(addr), ty, Some(protocol))?;
    socket.set_reuse_address(true)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
        let _ = socket.set_freebind_v6(true);
    } else {
        let _ = socket.set_freebind_v4(true);
    }
    Ok(socket)
}

/// `size` (at least one) listening, non-blocking TCP sockets on `addr` in
/// one `SO_REUSEPORT` group (see the module docs), with `TCP_NODELAY` set
/// for the connections they accept. Port 0 picks a port for the whole
/// group. All or none: on an error the sockets bound so far close.
pub(crate) fn tcp_group(addr: SocketAddr, size: usize) -> io::Result<Vec<OwnedFd>> {
    let first = tcp_joinable(addr, size > 1)?;
    let addr = socket2::SockRef::from(&first).local_addr()?.as_socket().unwrap_or(addr);
    let mut group = Vec::with_capacity(size.max(1));
    group.push(first);
    for _ in 1..size {
        group.push(tcp_join(addr)?);
    }
    Ok(group)
}

/// The first socket of a group on `addr`, listening; others may join it
/// later ([`tcp_join`]) if `joinable`. Its bind fails when anything holds
/// the address (see the module docs).
pub(crate) fn tcp_joinable(addr: SocketAddr, joinable: bool) -> io::Result<OwnedFd> {
    let first = tcp_socket(addr)?;
    first.bind(&addr.into())?;
    if joinable {
        first.set_reuse_port(true)?;
    }
    first.listen(BACKLOG)?;
    Ok(first.into())
}

/// Another socket of the group listening on `addr` (a bound address, not
/// port 0).
pub(crate) fn tcp_join(addr: SocketAddr) -> io::Result<OwnedFd> {
    let socket = tcp_socket(addr)?;
    socket.set_reuse_port(true)?;
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    Ok(socket.into())
}

fn tcp_socket(addr: SocketAddr) -> io::Result<Socket> {
    let socket = service_socket(addr, Type::STREAM, socket2::Protocol::TCP)?;
    // Accepted connections inherit it (Linux): no setsockopt per connection.
    socket.set_tcp_nodelay(true)?;
    socket.set_nonblocking(true)?;
    Ok(socket)
}

/// A UDP service socket on `addr` (one per address: UDP stays on the main
/// runtime).
pub(crate) fn bind_udp(addr: SocketAddr) -> io::Result<UdpSocket> {
    let socket = service_socket(addr, Type::DGRAM, socket2::Protocol::UDP)?;
    let _ = socket.set_recv_buffer_size(UDP_RECV_BUFFER);
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    UdpSocket::from_std(socket.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn connect(addr: SocketAddr) -> io::Result<std::net::TcpStream> {
        std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_secs(1))
    }

    fn local(fd: &OwnedFd) -> SocketAddr {
        socket2::SockRef::from(fd).local_addr().unwrap().as_socket().unwrap()
    }

    /// Connections are spread over the group; closing one socket leaves the
    /// others listening, closing all refuses.
    #[test]
    fn a_group_shares_one_address() {
        let mut group = tcp_group("127.0.0.1:0".parse().unwrap(), 2).unwrap();
        let addr = local(&group[0]);
        assert_ne!(addr.port(), 0);
        assert_eq!(local(&group[1]), addr, "one port for the group");
        let clients: Vec<_> = (0..64).map(|_| connect(addr).unwrap()).collect();
        let accepted: Vec<usize> =
            group.iter().map(|s| std::iter::from_fn(|| rustix::net::accept(s).ok()).count()).collect();
        assert_eq!(accepted.iter().sum::<usize>(), clients.len());
        assert!(accepted.iter().all(|&n| n > 0), "the kernel spreads connections over the group: {accepted:?}");
        drop(group.remove(0));
        connect(addr).expect("the rest of the group still listens");
        drop(group);
        assert_eq!(connect(addr).unwrap_err().kind(), io::ErrorKind::ConnectionRefused);
    }

    /// Another agent's group on a taken address fails to bind, even with
    /// `SO_REUSEPORT`; and nothing joins our group without it.
    #[test]
    fn a_taken_address_is_not_shared() {
        let group = tcp_group("127.0.0.1:0".parse().unwrap(), 2).unwrap();
        let addr = local(&group[0]);
        let err = tcp_group(addr, 2).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AddrInUse);
        let plain = tcp_socket(addr).unwrap();
        assert_eq!(plain.bind(&addr.into()).unwrap_err().kind(), io::ErrorKind::AddrInUse);
        // One worker: a plain socket, as before groups.
        let single = tcp_group("127.0.0.1:0".parse().unwrap(), 1).unwrap();
        assert_eq!(single.len(), 1);
        assert!(!socket2::SockRef::from(&single[0]).reuse_port().unwrap());
    }
}

//! Destroys the connected UDP sockets still pointing at a backend that
//! went away, as kube-proxy flushes conntrack for UDP: a sock_diag dump
//! (`NETLINK_SOCK_DIAG`, `SOCK_DIAG_BY_FAMILY`) of the connected UDP
//! sockets, IPv4 and IPv6, and `SOCK_DESTROY` for each whose destination
//! is one of the backends. The owner's next (or pending) receive fails
//! with `ECONNABORTED`, so a client that reconnects goes through the
//! connect hook again. Needs `CAP_NET_ADMIN` and a kernel with
//! `CONFIG_INET_DIAG_DESTROY`.
//!
//! sock_diag sees only the namespace of its socket, so the dump runs in
//! the caller's namespace and then, on a helper thread, in every other
//! namespace a process is in or that is named under `/run/netns` (pods).
//! A namespace that cannot be entered is logged and skipped.

use std::collections::HashSet;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use rustix::net::{AddressFamily, RecvFlags, SendFlags, SocketType, netlink};

use crate::netns;

const SOCK_DIAG_BY_FAMILY: u16 = 20;
const SOCK_DESTROY: u16 = 21;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_DUMP: u16 = 0x300;
const IPPROTO_UDP: u8 = 17;
/// UDP sockets with a destination are in `TCP_ESTABLISHED`.
const ESTABLISHED: u32 = 1;
const HEADER: usize = 16;
/// `struct inet_diag_sockid`: ports, addresses, interface, cookie.
const SOCKID: usize = 48;
/// `struct inet_diag_req_v2`.
const REQUEST: usize = 8 + SOCKID;
/// `struct inet_diag_msg` up to the end of its sockid.
const MSG_SOCKID_END: usize = 4 + SOCKID;

/// Destroys every connected UDP socket (in any network namespace this
/// process can enter) whose destination is one of `backends`, however it
/// got there; returns how many. Errors only if the caller's own namespace
/// cannot be dumped. [`crate::MapWriter::destroy_udp_sockets_to`] hits
/// only the sockets the fast path sent there.
pub fn destroy_udp_sockets_to(backends: &[SocketAddr]) -> io::Result<usize> {
    destroy_matching(backends, None)
}

/// Which sockets to destroy: those to one of `targets` and, if `cookies`
/// is given, with one of those cookies.
#[derive(Clone)]
struct Filter {
    targets: Arc<Vec<SocketAddr>>,
    cookies: Option<Arc<HashSet<u64>>>,
}

impl Filter {
    fn matches(&self, family: u8, sockid: &[u8; SOCKID]) -> bool {
        self.targets.contains(&destination(family, sockid))
            && self.cookies.as_ref().is_none_or(|c| c.contains(&cookie(sockid)))
    }
}

/// [`destroy_udp_sockets_to`], only for sockets with one of `cookies` if given.
pub(crate) fn destroy_matching(backends: &[SocketAddr], cookies: Option<HashSet<u64>>) -> io::Result<usize> {
    if backends.is_empty() {
        return Ok(0);
    }
    let filter = Filter { targets: Arc::new(backends.iter().map(canonical).collect()), cookies: cookies.map(Arc::new) };
    let mut destroyed = destroy_here(&filter)?;
    for ns in netns::others() {
        let f = filter.clone();
        match netns::in_netns(&ns, move || destroy_here(&f)) {
            Ok(n) => destroyed += n,
            Err(e) => tracing::debug!(netns = %ns.display(), error = %e, "UDP sockets of this namespace not checked"),
        }
    }
    Ok(destroyed)
}

/// The calling thread's namespace only.
fn destroy_here(filter: &Filter) -> io::Result<usize> {
    let socket = rustix::net::socket(AddressFamily::NETLINK, SocketType::DGRAM, Some(netlink::SOCK_DIAG))?;
    let mut destroyed = 0;
    for family in [AddressFamily::INET, AddressFamily::INET6] {
        let family = family_byte(family);
        let found = dump(&socket, family)?;
        for sockid in found.iter().filter(|id| filter.matches(family, id)) {
            match destroy(&socket, family, sockid) {
                Ok(()) => destroyed += 1,
                // Closed between the dump and now.
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
                Err(e) => return Err(io::Error::new(e.kind(), format!("SOCK_DESTROY of a UDP socket: {e}"))),
            }
        }
    }
    Ok(destroyed)
}

/// The sockids of the connected UDP sockets of `family`.
fn dump(socket: &impl rustix::fd::AsFd, family: u8) -> io::Result<Vec<[u8; SOCKID]>> {
    send(socket, SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST | NLM_F_DUMP, family, 1 << ESTABLISHED, &[0; SOCKID])?;
    let mut found = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let (_, n) = rustix::net::recv(socket, &mut buf[..], RecvFlags::empty())?;
        for (kind, payload) in messages(&buf[..n]) {
            match kind {
                NLMSG_DONE => return Ok(found),
                NLMSG_ERROR => error_of(payload)?,
                SOCK_DIAG_BY_FAMILY if payload.len() >= MSG_SOCKID_END => {
                    found.push(payload[4..MSG_SOCKID_END].try_into().expect("sized above"));
                }
                _ => {}
            }
        }
    }
}

/// `SOCK_DESTROY` of the socket `sockid` names (its cookie included, so
/// a socket that took its place is never hit) and the kernel's answer.
fn destroy(socket: &impl rustix::fd::AsFd, family: u8, sockid: &[u8; SOCKID]) -> io::Result<()> {
    send(socket, SOCK_DESTROY, NLM_F_REQUEST | NLM_F_ACK, family, 1 << ESTABLISHED, sockid)?;
    let mut buf = [0u8; 512];
    let (_, n) = rustix::net::recv(socket, &mut buf[..], RecvFlags::empty())?;
    for (kind, payload) in messages(&buf[..n]) {
        if kind == NLMSG_ERROR {
            return error_of(payload);
        }
    }
    Err(io::Error::other("SOCK_DESTROY: no acknowledgement from the kernel"))
}

fn send(
    socket: &impl rustix::fd::AsFd,
    kind: u16,
    flags: u16,
    family: u8,
    states: u32,
    sockid: &[u8],
) -> io::Result<()> {
    let mut msg = Vec::with_capacity(HEADER + REQUEST);
    msg.extend_from_slice(&u32::try_from(HEADER + REQUEST).expect("a fixed-size request").to_ne_bytes());
    msg.extend_from_slice(&kind.to_ne_bytes());
    msg.extend_from_slice(&flags.to_ne_bytes());
    msg.extend_from_slice(&[0; 8]); // sequence, port id
    msg.extend_from_slice(&[family, IPPROTO_UDP, 0, 0]);
    msg.extend_from_slice(&states.to_ne_bytes());
    msg.extend_from_slice(sockid);
    rustix::net::send(socket, &msg, SendFlags::empty())?;
    Ok(())
}

/// The (type, payload) of each netlink message in a datagram.
fn messages(mut buf: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        let len = u32::from_ne_bytes(buf.get(0..4)?.try_into().ok()?) as usize;
        if len < HEADER || len > buf.len() {
            return None;
        }
        let kind = u16::from_ne_bytes(buf[4..6].try_into().ok()?);
        let payload = &buf[HEADER..len];
        buf = &buf[len.next_multiple_of(4).min(buf.len())..];
        Some((kind, payload))
    })
}

/// An `NLMSG_ERROR` payload: 0 is an acknowledgement.
fn error_of(payload: &[u8]) -> io::Result<()> {
    let code = payload.get(0..4).map_or(0, |b| i32::from_ne_bytes(b.try_into().expect("4 bytes")));
    if code == 0 { Ok(()) } else { Err(io::Error::from_raw_os_error(-code)) }
}

/// The one-byte family of sock_diag requests.
fn family_byte(family: AddressFamily) -> u8 {
    u8::try_from(family.as_raw()).expect("AF_INET and AF_INET6 fit a byte")
}

/// The destination of a dumped socket (v4-mapped IPv6 as IPv4).
fn destination(family: u8, sockid: &[u8; SOCKID]) -> SocketAddr {
    let port = u16::from_be_bytes([sockid[2], sockid[3]]);
    let dst: [u8; 16] = sockid[20..36].try_into().expect("16 bytes");
    let ip = if u16::from(family) == AddressFamily::INET.as_raw() {
        IpAddr::V4(Ipv4Addr::new(dst[0], dst[1], dst[2], dst[3]))
    } else {
        Ipv6Addr::from(dst).to_canonical()
    };
    SocketAddr::new(ip, port)
}

/// The socket cookie of a dumped socket (two host-order u32 halves).
fn cookie(sockid: &[u8; SOCKID]) -> u64 {
    let half = |at: usize| u64::from(u32::from_ne_bytes(sockid[at..at + 4].try_into().expect("4 bytes")));
    half(40) | (half(44) << 32)
}

pub(crate) fn canonical(addr: &SocketAddr) -> SocketAddr {
    SocketAddr::new(addr.ip().to_canonical(), addr.port())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn destinations_are_read_from_the_sockid_v4_mapped_as_ipv4() {
        let mut id = [0u8; SOCKID];
        id[2..4].copy_from_slice(&5353u16.to_be_bytes());
        id[20..24].copy_from_slice(&[10, 0, 1, 2]);
        assert_eq!(destination(family_byte(AddressFamily::INET), &id), "10.0.1.2:5353".parse().unwrap());
        id[20..36].copy_from_slice(&"::ffff:10.0.1.2".parse::<Ipv6Addr>().unwrap().octets());
        assert_eq!(destination(family_byte(AddressFamily::INET6), &id), "10.0.1.2:5353".parse().unwrap());
    }

    #[test]
    fn a_truncated_or_lying_netlink_datagram_ends_the_walk() {
        let mut two = Vec::new();
        for kind in [SOCK_DIAG_BY_FAMILY, NLMSG_DONE] {
            two.extend_from_slice(&20u32.to_ne_bytes());
            two.extend_from_slice(&kind.to_ne_bytes());
            two.extend_from_slice(&[0; 14]);
        }
        let kinds: Vec<u16> = messages(&two).map(|(k, _)| k).collect();
        assert_eq!(kinds, vec![SOCK_DIAG_BY_FAMILY, NLMSG_DONE]);
        two[0..4].copy_from_slice(&4000u32.to_ne_bytes());
        assert_eq!(messages(&two).count(), 0, "a length past the end is not followed");
        assert_eq!(messages(&two[..10]).count(), 0);
    }
}

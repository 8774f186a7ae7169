//! The TCP transport with primed dials: a dial with port reuse to an address the behaviour
//! marked sends its first SYN with a small TTL (see the module above).

use std::{
    collections::HashMap,
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    pin::Pin,
    task::{Context, Poll},
    time::Instant,
};

use futures::{FutureExt, future::BoxFuture};
use libp2p::{
    Multiaddr, Transport,
    core::transport::{DialOpts, ListenerId, PortUse, TransportError, TransportEvent},
    tcp,
};
use socket2::{Domain, Socket, Type};
use tokio::io::Interest;

use super::marks::{Marks, tcp_socket_addr};

type Tcp = tcp::tokio::Transport;

/// `connect` on a non-blocking socket: the SYN is on its way (Linux's errno).
const EINPROGRESS: i32 = 115;

/// [`tcp::tokio::Transport`], whose marked dials are primed.
pub(crate) struct Primed {
    inner: Tcp,
    marks: Marks,
    /// The ports we listen on, by listener and address: a primed dial binds to one of them,
    /// as the inner transport's dials with port reuse do.
    listening: HashMap<(ListenerId, IpAddr), u16>,
}

impl Primed {
    pub(crate) fn new(inner: Tcp, marks: Marks) -> Primed {
        Primed { inner, marks, listening: HashMap::new() }
    }

    /// The local address a dial to `remote` with port reuse binds to: the unspecified address
    /// of its family and the port of a listener on that family (loopback to loopback), as
    /// libp2p-tcp chooses it.
    fn local_for(&self, remote: IpAddr) -> Option<SocketAddr> {
        let (_, port) = self
            .listening
            .iter()
            .find(|((_, ip), _)| ip.is_ipv4() == remote.is_ipv4() && ip.is_loopback() == remote.is_loopback())?;
        let unspecified = match remote {
            IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        };
        Some(SocketAddr::new(unspecified, *port))
    }

    fn track(&mut self, event: &TransportEvent<<Tcp as Transport>::ListenerUpgrade, io::Error>) {
        match event {
            TransportEvent::NewAddress { listener_id, listen_addr } => {
                if let Some(a) = tcp_socket_addr(listen_addr) {
                    self.listening.insert((*listener_id, a.ip()), a.port());
                }
            }
            TransportEvent::AddressExpired { listener_id, listen_addr } => {
                if let Some(a) = tcp_socket_addr(listen_addr) {
                    self.listening.remove(&(*listener_id, a.ip()));
                }
            }
            TransportEvent::ListenerClosed { listener_id, .. } => {
                self.listening.retain(|(id, _), _| id != listener_id);
            }
            _ => {}
        }
    }
}

impl Transport for Primed {
    type Output = tcp::tokio::TcpStream;
    type Error = io::Error;
    type ListenerUpgrade = <Tcp as Transport>::ListenerUpgrade;
    type Dial = BoxFuture<'static, io::Result<tcp::tokio::TcpStream>>;

    fn listen_on(&mut self, id: ListenerId, addr: Multiaddr) -> Result<(), TransportError<io::Error>> {
        self.inner.listen_on(id, addr)
    }

    fn remove_listener(&mut self, id: ListenerId) -> bool {
        self.inner.remove_listener(id)
    }

    fn dial(&mut self, addr: Multiaddr, opts: DialOpts) -> Result<Self::Dial, TransportError<io::Error>> {
        if self.marks.ttl > 0 && opts.port_use == PortUse::Reuse {
            let primed = tcp_socket_addr(&addr).and_then(|target| Some((self.local_for(target.ip())?, target)));
            if let Some((local, target)) = primed.filter(|(_, target)| self.marks.take(*target, Instant::now())) {
                let ttl = self.marks.ttl;
                return Ok(async move { primed_connect(local, target, ttl).await.map(tcp::tokio::TcpStream) }.boxed());
            }
        }
        Ok(self.inner.dial(addr, opts)?.boxed())
    }

    fn poll(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<TransportEvent<Self::ListenerUpgrade, Self::Error>> {
        let event = Pin::new(&mut self.inner).poll(cx);
        if let Poll::Ready(e) = &event {
            self.track(e);
        }
        event
    }
}

/// Connects from `local` (a listening port: SO_REUSEADDR and SO_REUSEPORT, as libp2p-tcp's
/// dials) to `target`, the first SYN with IP TTL `ttl`, later packets with the default.
pub(super) async fn primed_connect(
    local: SocketAddr,
    target: SocketAddr,
    ttl: u8,
) -> io::Result<tokio::net::TcpStream> {
    let socket = Socket::new(Domain::for_address(target), Type::STREAM, Some(socket2::Protocol::TCP))?;
    if target.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_tcp_nodelay(true)?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&local.into())?;
    let default = hops(&socket, target, None)?;
    hops(&socket, target, Some(u32::from(ttl)))?;
    match socket.connect(&target.into()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(EINPROGRESS) || e.kind() == io::ErrorKind::WouldBlock => {}
        Err(e) => return Err(e),
    }
    hops(&socket, target, Some(default))?;
    tracing::debug!(%target, ttl, "hole punch: primed SYN sent");
    let stream = tokio::net::TcpStream::from_std(socket.into())?;
    let both = Interest::READABLE | Interest::WRITABLE;
    loop {
        let ready = stream.ready(both).await?;
        if stream.peer_addr().is_ok() {
            // The ICMP time exceeded that answered the first SYN left a soft error.
            let _ = stream.take_error();
            return Ok(stream);
        }
        let error = stream.take_error()?;
        // A closed socket (reset, or given up) reads as hung up; a soft error alone does not.
        if ready.is_read_closed() {
            return Err(error.unwrap_or_else(|| io::Error::new(io::ErrorKind::NotConnected, "connection failed")));
        }
        // Still connecting (a soft error woke us): wait for the next change.
        let _ = stream.try_io(both, || Err::<(), _>(io::ErrorKind::WouldBlock.into()));
    }
}

/// Sets the socket's IP TTL (IPv6: unicast hop limit) when `set`; the value before.
fn hops(socket: &Socket, target: SocketAddr, set: Option<u32>) -> io::Result<u32> {
    let before = if target.is_ipv6() { socket.unicast_hops_v6()? } else { socket.ttl_v4()? };
    match (set, target.is_ipv6()) {
        (Some(v), true) => socket.set_unicast_hops_v6(v)?,
        (Some(v), false) => socket.set_ttl_v4(v)?,
        (None, _) => {}
    }
    Ok(before)
}

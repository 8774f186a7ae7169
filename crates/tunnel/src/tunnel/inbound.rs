//! Proxy streams opened by peers: each served by its own task, which checks the peer's node
//! name and the header, connects to the endpoint (only one this node serves) and copies.

use std::{io, net::SocketAddr, sync::Arc, time::Duration};

use libp2p::{PeerId, Stream, StreamProtocol};
use tokio::{
    io::AsyncWriteExt,
    net::{TcpStream, UdpSocket},
    sync::mpsc,
    time::timeout,
};
use tokio_util::compat::{Compat, FuturesAsyncReadCompatExt};

use super::{
    context::Context,
    copy, hello,
    inbound_limits::InboundPermit,
    proxied::{MAX_DATAGRAM, Metered, TunnelStream, datagram_pair},
};
use crate::{
    TunnelProtocol,
    messages::Connected,
    metrics::Direction,
    peer_table::{Claim, StreamGuard},
    streams::{HELLO, Inbound, TCP, UDP},
    wire::{self, HEADER_TIMEOUT, Header, Reply},
};

/// A UDP session (remote side) with no datagram either way for this long is closed.
pub const UDP_IDLE_TIMEOUT: Duration = Duration::from_secs(300);
/// How long an inbound proxy stream waits for the peer's hello to be verified.
const AUTHORIZE_WAIT: Duration = Duration::from_secs(10);

/// Hands each inbound stream to its own task, and starts our hello on each new connection the
/// swarm task reports.
pub(super) async fn dispatch(
    ctx: Arc<Context>,
    mut inbound: mpsc::UnboundedReceiver<Inbound>,
    mut connected: mpsc::UnboundedReceiver<Connected>,
) {
    loop {
        let s = tokio::select! {
            _ = ctx.stop.cancelled() => return,
            c = connected.recv() => match c {
                Some(c) => {
                    hello::spawn_hello(ctx.clone(), c);
                    continue;
                }
                None => return,
            },
            s = inbound.recv() => match s { Some(s) => s, None => return },
        };
        let ctx = ctx.clone();
        let protocol: StreamProtocol = s.protocol.clone();
        if protocol == HELLO {
            tokio::spawn(hello::serve_hello(ctx, s));
        } else if protocol == TCP {
            tokio::spawn(serve_tcp(ctx, s));
        } else if protocol == UDP {
            tokio::spawn(serve_udp(ctx, s));
        }
    }
}

/// The node name of an inbound stream's peer, if its claim was accepted and still holds.
async fn authorize(ctx: &Context, peer: PeerId) -> Option<String> {
    let mut rx = ctx.peers.subscribe();
    let deadline = tokio::time::Instant::now() + AUTHORIZE_WAIT;
    loop {
        rx.borrow_and_update();
        match ctx.peers.their_claim(peer) {
            Some(Claim::Accepted(name)) => {
                // Re-check: the directory may have changed since the hello.
                return (ctx.directory.peer_of(&name) == Some(peer)).then_some(name);
            }
            Some(Claim::Refused(_)) => return None,
            _ => {}
        }
        if tokio::time::timeout_at(deadline, rx.changed()).await.is_err() || ctx.stop.is_cancelled() {
            return None;
        }
    }
}

/// Reads and checks a proxy stream's header; replies and returns None when refused.
async fn accept_header(
    ctx: &Context,
    peer: PeerId,
    stream: &mut Compat<Stream>,
    protocol: TunnelProtocol,
) -> Option<(String, Header)> {
    let Some(node) = authorize(ctx, peer).await else {
        if ctx.peers.should_warn(peer, "untrusted-stream") {
            tracing::warn!(%peer, "proxy stream from a peer without an accepted node name: dropped");
        }
        return None;
    };
    let header = match timeout(HEADER_TIMEOUT, wire::read_header(stream)).await {
        Ok(Ok(h)) if h.protocol == protocol => h,
        other => {
            tracing::debug!(%peer, node = %node, result = ?other.map(|r| r.map(|_| "wrong protocol")), "bad proxy header");
            let _ = timeout(HEADER_TIMEOUT, stream.write_u8(Reply::BadRequest as u8)).await;
            return None;
        }
    };
    // A port of this host only as this node's `socks.allowedPorts` says; an endpoint only if served.
    let allowed = match header.to_host {
        true => protocol == TunnelProtocol::Tcp && ctx.directory.allows_host_port(header.target.port()),
        false => ctx.directory.serves(header.target, protocol),
    };
    if !allowed {
        if header.to_host && ctx.peers.should_warn(peer, "host-port") {
            tracing::warn!(%peer, node = %node, port = header.target.port(), ?protocol,
                "peer asked for a port of this host that socks.allowedPorts does not list: refused");
        } else if !header.to_host && ctx.peers.should_warn(peer, "not-served") {
            tracing::warn!(%peer, node = %node, target = %header.target, service = %header.service, ?protocol,
                "peer asked for an endpoint this node does not serve: refused");
        }
        let _ = timeout(HEADER_TIMEOUT, async {
            stream.write_u8(Reply::NotServed as u8).await?;
            stream.flush().await
        })
        .await;
        return None;
    }
    Some((node, header))
}

/// A slot for one more inbound stream from `peer`; at a limit, counts and (once per interval)
/// logs the refusal and replies `Busy`, leaving the peer's other streams untouched.
async fn admit(ctx: &Context, peer: PeerId, node: &str, stream: &mut Compat<Stream>) -> Option<InboundPermit> {
    let limit = match ctx.inbound.admit(peer) {
        Ok(permit) => return Some(permit),
        Err(limit) => limit,
    };
    if ctx.peers.metrics().limit_hit(limit) {
        tracing::warn!(%peer, node = %node, max = ctx.inbound.max(limit), setting = limit.setting(),
            "inbound tunnel stream refused at its limit (logged at most every 10 s; counted in \
             edgemesh_tunnel_limit_hits_total)");
    }
    let _ = timeout(HEADER_TIMEOUT, async {
        stream.write_u8(Reply::Busy as u8).await?;
        stream.flush().await
    })
    .await;
    None
}

fn reply_for(e: &io::Error) -> Reply {
    match e.kind() {
        io::ErrorKind::ConnectionRefused | io::ErrorKind::ConnectionReset => Reply::Refused,
        io::ErrorKind::TimedOut
        | io::ErrorKind::HostUnreachable
        | io::ErrorKind::NetworkUnreachable
        | io::ErrorKind::AddrNotAvailable
        | io::ErrorKind::NetworkDown => Reply::Unreachable,
        _ => Reply::Error,
    }
}

/// Connects to `target`; a port of this host is tried on IPv6 loopback too when IPv4
/// loopback refuses it (a server may listen on `::1` only).
async fn connect(target: SocketAddr, to_host: bool) -> io::Result<TcpStream> {
    match TcpStream::connect(target).await {
        Err(e) if to_host && e.kind() == io::ErrorKind::ConnectionRefused => {
            TcpStream::connect((std::net::Ipv6Addr::LOCALHOST, target.port())).await.map_err(|_| e)
        }
        result => result,
    }
}

async fn serve_tcp(ctx: Arc<Context>, s: Inbound) {
    let peer = s.peer;
    let mut stream = s.stream.compat();
    let Some((node, header)) = accept_header(&ctx, peer, &mut stream, TunnelProtocol::Tcp).await else { return };
    let Some(_permit) = admit(&ctx, peer, &node, &mut stream).await else { return };
    let target = header.target;
    let tcp = match timeout(ctx.settings.connect_timeout, connect(target, header.to_host)).await {
        Ok(Ok(t)) => t,
        Ok(Err(e)) => {
            tracing::debug!(%peer, node = %node, %target, service = %header.service, error = %e, "endpoint connect failed");
            let _ = stream.write_u8(reply_for(&e) as u8).await;
            let _ = stream.flush().await;
            return;
        }
        Err(_) => {
            tracing::debug!(%peer, node = %node, %target, service = %header.service, "endpoint connect timed out");
            let _ = stream.write_u8(Reply::Unreachable as u8).await;
            let _ = stream.flush().await;
            return;
        }
    };
    let _ = tcp.set_nodelay(true);
    let streams = ctx.peers.streams(peer, &node);
    let metered = Metered::new(StreamGuard::new(&streams, Direction::Inbound, None), &streams.meters);
    if stream.write_u8(Reply::Ok as u8).await.is_err() || stream.flush().await.is_err() {
        return;
    }
    // Counted from here: the payload, not the header and reply. (Whether the connection is
    // relayed is not asked of a stream served here.)
    let mut stream = TunnelStream::new(stream, peer, false, metered);
    let mut tcp = tcp;
    let result = tokio::select! {
        r = copy::copy_bidirectional(&mut stream, &mut tcp) => r,
        _ = ctx.stop.cancelled() => return,
    };
    match result {
        Ok((to_endpoint, from_endpoint)) => {
            tracing::trace!(%peer, %target, to_endpoint, from_endpoint, "proxied connection closed")
        }
        Err(e) => tracing::debug!(%peer, %target, error = %e, "proxied connection ended with an error"),
    }
}

async fn serve_udp(ctx: Arc<Context>, s: Inbound) {
    let peer = s.peer;
    let mut stream = s.stream.compat();
    let Some((node, header)) = accept_header(&ctx, peer, &mut stream, TunnelProtocol::Udp).await else { return };
    let Some(_permit) = admit(&ctx, peer, &node, &mut stream).await else { return };
    let target = header.target;
    let bind: SocketAddr =
        if target.is_ipv4() { "0.0.0.0:0".parse().expect("valid") } else { "[::]:0".parse().expect("valid") };
    let socket = match UdpSocket::bind(bind).await {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(%peer, error = %e, "cannot open a UDP socket");
            let _ = stream.write_u8(Reply::Error as u8).await;
            return;
        }
    };
    if let Err(e) = socket.connect(target).await {
        tracing::debug!(%peer, node = %node, %target, error = %e, "UDP connect failed");
        let _ = stream.write_u8(reply_for(&e) as u8).await;
        return;
    }
    if stream.write_u8(Reply::Ok as u8).await.is_err() || stream.flush().await.is_err() {
        return;
    }
    let streams = ctx.peers.streams(peer, &node);
    let metered = Metered::new(StreamGuard::new(&streams, Direction::Inbound, None), &streams.meters);
    let (mut tx, mut rx) = datagram_pair(stream, metered);
    let mut from_stream = vec![0u8; MAX_DATAGRAM];
    let mut from_socket = vec![0u8; MAX_DATAGRAM];
    let idle = tokio::time::sleep(UDP_IDLE_TIMEOUT);
    tokio::pin!(idle);
    loop {
        tokio::select! {
            r = rx.recv(&mut from_stream) => match r {
                Ok(n) => {
                    // Loss is UDP's nature: a failed send (e.g. ICMP port unreachable) is not fatal.
                    if let Err(e) = socket.send(&from_stream[..n]).await {
                        tracing::trace!(%target, error = %e, "UDP send failed");
                    }
                }
                Err(e) => {
                    if e.kind() != io::ErrorKind::UnexpectedEof {
                        tracing::debug!(%peer, %target, error = %e, "UDP session stream failed");
                    }
                    break;
                }
            },
            r = socket.recv(&mut from_socket) => match r {
                Ok(n) => {
                    if let Err(e) = tx.send(&from_socket[..n]).await {
                        tracing::debug!(%peer, %target, error = %e, "UDP session stream failed");
                        break;
                    }
                }
                Err(e) => tracing::trace!(%target, error = %e, "UDP recv failed"),
            },
            _ = &mut idle => {
                tracing::debug!(%peer, %target, "UDP session idle: closed");
                break;
            }
            _ = ctx.stop.cancelled() => break,
        }
        idle.as_mut().reset(tokio::time::Instant::now() + UDP_IDLE_TIMEOUT);
    }
    let _ = tx.close().await;
}

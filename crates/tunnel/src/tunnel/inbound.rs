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
    HEADER_TIMEOUT, MAX_DATAGRAM, hello,
    peers::{Inner, StreamGuard},
    proxied::datagram_pair,
};
use crate::{
    TunnelProtocol,
    streams::{HELLO, Inbound, TCP, UDP},
    wire::{self, Header, Reply},
};

/// A UDP session (remote side) with no datagram either way for this long is closed.
pub const UDP_IDLE_TIMEOUT: Duration = Duration::from_secs(300);
/// Copy buffer per direction of a proxied TCP connection.
const COPY_BUFFER: usize = 64 * 1024;

/// Hands each inbound stream to its own task.
pub(super) async fn dispatch(inner: Arc<Inner>, mut inbound: mpsc::UnboundedReceiver<Inbound>) {
    loop {
        let s = tokio::select! {
            _ = inner.stop.cancelled() => return,
            s = inbound.recv() => match s { Some(s) => s, None => return },
        };
        let inner = inner.clone();
        let protocol: StreamProtocol = s.protocol.clone();
        if protocol == HELLO {
            tokio::spawn(hello::serve_hello(inner, s));
        } else if protocol == TCP {
            tokio::spawn(serve_tcp(inner, s));
        } else if protocol == UDP {
            tokio::spawn(serve_udp(inner, s));
        }
    }
}

/// Reads and checks a proxy stream's header; replies and returns None when refused.
async fn accept_header(
    inner: &Inner,
    peer: PeerId,
    stream: &mut Compat<Stream>,
    protocol: TunnelProtocol,
) -> Option<(String, Header)> {
    let Some(node) = inner.authorize(peer).await else {
        if inner.should_warn(peer, "untrusted-stream") {
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
    if !inner.directory.serves(header.target, protocol) {
        if inner.should_warn(peer, "not-served") {
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

async fn serve_tcp(inner: Arc<Inner>, s: Inbound) {
    let peer = s.peer;
    let mut stream = s.stream.compat();
    let Some((node, header)) = accept_header(&inner, peer, &mut stream, TunnelProtocol::Tcp).await else { return };
    let target = header.target;
    let tcp = match timeout(inner.connect_timeout, TcpStream::connect(target)).await {
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
    let _guard = StreamGuard::new(inner.stream_counter(peer), None);
    if stream.write_u8(Reply::Ok as u8).await.is_err() || stream.flush().await.is_err() {
        return;
    }
    let mut tcp = tcp;
    let result = tokio::select! {
        r = tokio::io::copy_bidirectional_with_sizes(&mut stream, &mut tcp, COPY_BUFFER, COPY_BUFFER) => r,
        _ = inner.stop.cancelled() => return,
    };
    match result {
        Ok((to_endpoint, from_endpoint)) => {
            tracing::trace!(%peer, %target, to_endpoint, from_endpoint, "proxied connection closed")
        }
        Err(e) => tracing::debug!(%peer, %target, error = %e, "proxied connection ended with an error"),
    }
}

async fn serve_udp(inner: Arc<Inner>, s: Inbound) {
    let peer = s.peer;
    let mut stream = s.stream.compat();
    let Some((node, header)) = accept_header(&inner, peer, &mut stream, TunnelProtocol::Udp).await else { return };
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
    let _guard = StreamGuard::new(inner.stream_counter(peer), None);
    let (mut tx, mut rx) = datagram_pair(stream, None);
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
            _ = inner.stop.cancelled() => break,
        }
        idle.as_mut().reset(tokio::time::Instant::now() + UDP_IDLE_TIMEOUT);
    }
    let _ = tx.close().await;
}

//! Servers and dead ends on 127.0.0.1, on the test's Tokio runtime.

use std::net::SocketAddr;

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, UdpSocket};

/// A TCP echo server: every byte back, and its write side shut after the
/// client's EOF (half-close aware).
pub async fn tcp_echo() -> SocketAddr {
    tcp_echo_on("127.0.0.1:0").await
}

/// [`tcp_echo`] on `addr` (e.g. `[::1]:0`).
pub async fn tcp_echo_on(addr: &str) -> SocketAddr {
    let listener = TcpListener::bind(addr).await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = s.into_split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            });
        }
    });
    addr
}

/// A UDP echo server: every datagram back to its sender.
pub async fn udp_echo() -> SocketAddr {
    udp_echo_on("127.0.0.1:0").await
}

/// [`udp_echo`] on `addr` (e.g. `[::1]:0`).
pub async fn udp_echo_on(addr: &str) -> SocketAddr {
    let socket = UdpSocket::bind(addr).await.unwrap();
    let addr = socket.local_addr().unwrap();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 65536];
        while let Ok((n, from)) = socket.recv_from(&mut buf).await {
            let _ = socket.send_to(&buf[..n], from).await;
        }
    });
    addr
}

/// A 127.0.0.1 TCP address where nothing listens (bound, then released):
/// connects are refused.
pub fn closed_tcp_port() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap()
}

/// A 127.0.0.1 UDP address where nothing listens (bound, then released):
/// datagrams get ICMP port unreachable.
pub fn closed_udp_port() -> SocketAddr {
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    socket.local_addr().unwrap()
}

//! Connection workers on loopback: each worker owns a listening socket of
//! every TCP service address that gets connections (one `SO_REUSEPORT`
//! group, grown from one socket at the first connection), accepts on it and
//! serves what it accepts. Each test has its own VIP range
//! `127.77.<n>.0/24`.

mod common;

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use edgemesh_core::{LbStrategy, ObjectKind};
use edgemesh_proxy::ProxyConfig;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Sockets in LISTEN state on `addr` (IPv4), from `/proc/net/tcp`.
fn listening_sockets(addr: SocketAddr) -> usize {
    let SocketAddr::V4(v4) = addr else { panic!("IPv4 only") };
    let local = format!("{:08X}:{:04X}", u32::from_le_bytes(v4.ip().octets()), v4.port());
    std::fs::read_to_string("/proc/net/tcp")
        .unwrap()
        .lines()
        .skip(1)
        .filter(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            fields.get(1) == Some(&local.as_str()) && fields.get(3) == Some(&"0A")
        })
        .count()
}

/// 200 connections at once, each echoing its own payload through the proxy.
async fn many_concurrent_connections_complete(addr: SocketAddr) {
    let clients = (0..200u32).map(|i| {
        tokio::spawn(async move {
            let mut s = TcpStream::connect(addr).await?;
            let sent = format!("connection {i}");
            s.write_all(sent.as_bytes()).await?;
            s.shutdown().await?;
            let mut got = String::new();
            s.read_to_string(&mut got).await?;
            io::Result::Ok(got == sent)
        })
    });
    let results = join_all(clients.collect()).await;
    assert_eq!(results.iter().filter(|r| matches!(r, Ok(true))).count(), 200, "{results:?}");
}

async fn join_all(tasks: Vec<tokio::task::JoinHandle<io::Result<bool>>>) -> Vec<io::Result<bool>> {
    let mut out = Vec::with_capacity(tasks.len());
    for task in tasks {
        let result = tokio::time::timeout(Duration::from_secs(10), task).await.expect("connection completes");
        out.push(result.unwrap());
    }
    out
}

/// Waits until `count` sockets listen on `addr`.
async fn until_listening(addr: SocketAddr, count: usize, what: &str) {
    for _ in 0..200 {
        if listening_sockets(addr) == count {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(listening_sockets(addr), count, "{what}");
}

/// One connection, echoed.
async fn one_connection(addr: SocketAddr) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"first").await.unwrap();
    s.shutdown().await.unwrap();
    let mut got = Vec::new();
    s.read_to_end(&mut got).await.unwrap();
    assert_eq!(got, b"first");
}

/// With `workers` workers: one socket listens on a service address until
/// its first connection, then a socket per worker; concurrent connections
/// all complete, and deleting the service closes the whole group (connects
/// are refused, no socket left).
async fn served_by_each_worker_and_closed_as_a_group(net: u8, workers: usize) {
    let config = ProxyConfig { workers, max_connections: 1000, ..ProxyConfig::default() };
    let mut h = start_with(net, LbStrategy::RoundRobin, config).await;
    add_service(&mut h, "web", &[tcp_echo().await]).await;
    let addr = h.addr("web");
    assert_eq!(listening_sockets(addr), 1, "one socket until a connection comes");
    one_connection(addr).await;
    until_listening(addr, workers, "a listening socket per worker after the first connection").await;
    many_concurrent_connections_complete(addr).await;

    h.delete(ObjectKind::Service, "web", gone("web")).await;
    let err = TcpStream::connect(addr).await.expect_err("a deleted service refuses");
    assert_eq!(err.kind(), io::ErrorKind::ConnectionRefused);
    assert_eq!(listening_sockets(addr), 0, "every socket of the group is closed");

    // Back again: the group binds the same address again.
    add_service(&mut h, "web", &[tcp_echo().await]).await;
    assert_eq!(h.addr("web"), addr);
    assert_eq!(listening_sockets(addr), 1);
    many_concurrent_connections_complete(addr).await;
    until_listening(addr, workers, "grown again").await;
    h.stop().await;
    assert_eq!(listening_sockets(addr), 0, "shutdown closes every socket");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_each_accept_and_close_as_a_group() {
    served_by_each_worker_and_closed_as_a_group(49, 2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_worker_serves_alone() {
    served_by_each_worker_and_closed_as_a_group(50, 1).await;
}

//! `proxy.idleTimeout` and `proxy.maxConnectionDuration` on real proxied
//! connections: a silent connection is closed and counted, one that keeps
//! talking outlives the idle timeout, and the maximum cuts even a busy one
//! with a reset.

mod common;

use std::time::{Duration, Instant};

use common::*;
use edgemesh_core::LbStrategy;
use edgemesh_proxy::ProxyConfig;
use edgemesh_test_support::loopback::tcp_echo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const IDLE: Duration = Duration::from_millis(600);

fn timed_out(timeout: &str) -> String {
    format!("edgemesh_tcp_connections_timed_out_total{{service=\"{NS}/web\",port=\"{PORT}\",timeout=\"{timeout}\"}}")
}

/// A connection to `addr` that has had one byte echoed: forwarded, with
/// its endpoint connected.
async fn forwarded(addr: std::net::SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"x").await.unwrap();
    s.read_exact(&mut [0u8; 1]).await.unwrap();
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_connection_is_closed_at_the_idle_timeout_and_a_talking_one_is_not() {
    let mut h = start_registry(126, LbStrategy::RoundRobin);
    let config = ProxyConfig { idle_timeout: IDLE, max_connections: 100, ..ProxyConfig::default() };
    let registry = h.start_counted_proxy(config, None, 100);
    add_service(&mut h, "web", &[tcp_echo().await]).await;
    let mut silent = forwarded(h.addr("web")).await;
    let mut talking = forwarded(h.addr("web")).await;
    let since = Instant::now();
    // The talking one sends a byte every third of the idle timeout, for
    // three idle timeouts; the silent one is closed meanwhile.
    let talk = tokio::spawn(async move {
        for _ in 0..9 {
            tokio::time::sleep(IDLE / 3).await;
            talking.write_all(b"y").await.unwrap();
            talking.read_exact(&mut [0u8; 1]).await.unwrap();
        }
        talking
    });
    let read = tokio::time::timeout(IDLE * 4, silent.read(&mut [0u8; 8])).await.expect("closed in time");
    let after = since.elapsed();
    assert_eq!(read.unwrap(), 0, "an orderly close (FIN): nothing was in flight");
    assert!(after >= IDLE, "closed after {after:?}, before the idle timeout");
    let mut talking = talk.await.unwrap();
    talking.write_all(b"z").await.unwrap();
    talking.read_exact(&mut [0u8; 1]).await.expect("still open after three idle timeouts of talk");
    settles(&registry, &[is(timed_out("idle"), 1.0), is(timed_out("max_duration"), 0.0)]).await;
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_maximum_duration_resets_even_a_busy_connection() {
    let mut h = start_registry(127, LbStrategy::RoundRobin);
    let max = Duration::from_millis(800);
    let config = ProxyConfig { idle_timeout: IDLE, max_connection_duration: max, ..ProxyConfig::default() };
    let registry = h.start_counted_proxy(config, None, 100);
    add_service(&mut h, "web", &[tcp_echo().await]).await;
    let since = Instant::now();
    let mut busy = forwarded(h.addr("web")).await;
    let ended = loop {
        let round = async {
            busy.write_all(b"y").await?;
            busy.read_exact(&mut [0u8; 1]).await
        };
        if let Err(e) = round.await {
            break e;
        }
        assert!(since.elapsed() < max * 5, "still open long past the maximum");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(since.elapsed() >= max, "cut after {:?}", since.elapsed());
    assert!(
        matches!(ended.kind(), std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe),
        "a reset, not an EOF that looks like the end of a reply: {ended:?}"
    );
    settles(&registry, &[is(timed_out("max_duration"), 1.0), is(timed_out("idle"), 0.0)]).await;
    h.stop().await;
}

//! Retries, timeouts and passive health of the dispatcher: what a client
//! sees when endpoints die, reset, refuse, answer 503 or hang.

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use edgemesh_core::{HttpPolicy, LbStrategy};
use edgemesh_http::HttpConfig;
use edgemesh_metrics::Registry;
use edgemesh_test_support::loopback::closed_tcp_port;
use hyper::{Request, StatusCode};
use support::{Behaviour, Client, Endpoint, counter, full, serve, targets};
use tokio::io::AsyncReadExt;
use tokio::net::TcpListener;

fn post(body: &'static str) -> Request<support::Body> {
    Request::post("/orders").header("host", "web.default").body(full(Bytes::from_static(body.as_bytes()))).unwrap()
}

/// An endpoint that reads each request whole (head and `Content-Length`
/// body) and then resets the connection (`SO_LINGER` 0) without answering:
/// a crash after the request was processed.
async fn resetting_endpoint() -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let received = Arc::new(AtomicUsize::new(0));
    let seen = received.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let mut request = Vec::new();
            let mut buf = [0u8; 4096];
            while let Ok(n) = stream.read(&mut buf).await {
                if n == 0 {
                    break;
                }
                request.extend_from_slice(&buf[..n]);
                let text = String::from_utf8_lossy(&request).to_ascii_lowercase();
                if let Some(end) = text.find("\r\n\r\n") {
                    let length = text
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .and_then(|v| v.trim().parse::<usize>().ok())
                        .unwrap_or(0);
                    if request.len() >= end + 4 + length {
                        seen.fetch_add(1, Ordering::SeqCst);
                        break;
                    }
                }
            }
            socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO)).unwrap();
            drop(stream);
        }
    });
    (addr, received)
}

#[tokio::test(flavor = "current_thread")]
async fn an_endpoint_killed_under_a_stream_of_gets_costs_the_client_no_5xx() {
    let mut eps = Vec::new();
    for i in 0..4 {
        eps.push(Endpoint::named(&format!("e{i}")).await);
    }
    let addrs: Vec<_> = eps.iter().map(|e| e.addr).collect();
    let (front, _pool, registry) = serve(HttpConfig::default(), targets(LbStrategy::RoundRobin, &addrs)).await;
    let mut client = Client::connect(front).await;
    let mut failed = Vec::new();
    for i in 0..200 {
        if i == 50 {
            eps[1].kill();
        }
        let (status, body) = client.get(&[]).await;
        if status != StatusCode::OK {
            failed.push((i, status, body));
        }
    }
    assert!(failed.is_empty(), "the client saw errors: {failed:?}");
    let after = eps[1].requests();
    assert!(after <= 13, "the killed endpoint served only its share before it died: {after}");
    assert!(counter(&registry, "http_retries") >= 1.0, "its requests were retried elsewhere");
}

/// A round robin port whose first endpoint resets (and counts what it
/// received) and whose second answers "healthy".
async fn resetting_then_healthy() -> (SocketAddr, Registry, (SocketAddr, Arc<AtomicUsize>), Endpoint) {
    let resetting = resetting_endpoint().await;
    let healthy = Endpoint::named("healthy").await;
    // Round robin starts with the first endpoint: the resetting one.
    let (front, _pool, registry) =
        serve(HttpConfig::default(), targets(LbStrategy::RoundRobin, &[resetting.0, healthy.addr])).await;
    (front, registry, resetting, healthy)
}

#[tokio::test(flavor = "current_thread")]
async fn a_post_whose_body_reached_an_endpoint_that_reset_is_not_retried() {
    let (front, registry, (resetting, received), healthy) = resetting_then_healthy().await;
    let (status, body) = Client::connect(front).await.send(post("pay 5")).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{body}");
    assert!(body.contains(&resetting.to_string()), "the error names the endpoint: {body}");
    assert_eq!(received.load(Ordering::SeqCst), 1, "the endpoint got the request");
    assert_eq!(healthy.requests(), 0, "never sent twice");
    assert_eq!(counter(&registry, "http_retries"), 0.0);
}

#[tokio::test(flavor = "current_thread")]
async fn a_get_reset_before_its_response_is_retried_on_another_endpoint() {
    let (front, registry, (_, received), _healthy) = resetting_then_healthy().await;
    let (status, body) = Client::connect(front).await.get(&[]).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "healthy"));
    assert_eq!(received.load(Ordering::SeqCst), 1);
    assert_eq!(counter(&registry, "http_retries"), 1.0);
}

#[tokio::test(flavor = "current_thread")]
async fn a_post_refused_at_connect_is_retried_elsewhere_and_the_endpoint_ejected() {
    let refusing = closed_tcp_port();
    let healthy = Endpoint::named("healthy").await;
    let (front, pool, registry) =
        serve(HttpConfig::default(), targets(LbStrategy::RoundRobin, &[refusing, healthy.addr])).await;
    let mut client = Client::connect(front).await;
    let (status, body) = client.send(post("pay 5")).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "healthy"), "nothing was sent: safe to retry");
    assert_eq!(counter(&registry, "http_retries"), 1.0);
    assert_eq!(pool.ejected(&pool.targets()), [0], "passive health ejected the refusing endpoint");
    // Ejected, it is not tried again for a while: no more retries.
    for _ in 0..6 {
        assert_eq!(client.send(post("pay 5")).await.0, StatusCode::OK);
    }
    assert_eq!(counter(&registry, "http_retries"), 1.0);
    assert_eq!(healthy.requests(), 7);
}

#[tokio::test(flavor = "current_thread")]
async fn a_503_is_retried_on_another_endpoint_within_the_budget() {
    let unavailable = Behaviour { status: StatusCode::SERVICE_UNAVAILABLE, ..Behaviour::default() };
    let busy = Endpoint::start("busy", unavailable.clone()).await;
    let healthy = Endpoint::named("healthy").await;
    let addrs = [busy.addr, healthy.addr];
    let (front, _pool, registry) = serve(HttpConfig::default(), targets(LbStrategy::RoundRobin, &addrs)).await;
    let (status, body) = Client::connect(front).await.get(&[]).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "healthy"));
    assert_eq!(counter(&registry, "http_retries"), 1.0);

    // No budget at all: the endpoint's 503 is the answer, and it is counted.
    let config = HttpConfig { retry_budget_ratio: 0.0, retry_budget_min_per_second: 0, ..HttpConfig::default() };
    let busy = Endpoint::start("busy", unavailable).await;
    let (front, _pool, registry) = serve(config, targets(LbStrategy::RoundRobin, &[busy.addr, healthy.addr])).await;
    let (status, body) = Client::connect(front).await.get(&[]).await;
    assert_eq!((status, body.as_str()), (StatusCode::SERVICE_UNAVAILABLE, "busy"));
    assert_eq!(counter(&registry, "http_retries"), 0.0);
    assert_eq!(counter(&registry, "http_retry_budget_exhausted"), 1.0);
}

#[tokio::test(flavor = "current_thread")]
async fn timeouts_of_the_service_override_the_config_and_answer_504() {
    let hang = Behaviour { delay: Duration::from_secs(30), ..Behaviour::default() };
    let slow = Endpoint::start("slow", hang.clone()).await;
    let also_slow = Endpoint::start("also-slow", hang).await;
    let mut t = targets(LbStrategy::RoundRobin, &[slow.addr, also_slow.addr]);
    t.http = HttpPolicy { per_try_timeout: Some(Duration::from_millis(100)), timeout: Some(Duration::from_secs(5)) };
    let (front, _pool, registry) = serve(HttpConfig::default(), t).await;
    let started = std::time::Instant::now();
    let (status, body) = Client::connect(front).await.get(&[]).await;
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT, "{body}");
    assert!(body.contains("100ms"), "the per-try timeout expired: {body}");
    // A GET is tried three times (max_retries 2), each cut at 100 ms.
    assert_eq!(counter(&registry, "http_retries"), 2.0);
    assert!(started.elapsed() < Duration::from_secs(5));

    let mut t = targets(LbStrategy::RoundRobin, &[slow.addr]);
    t.http = HttpPolicy { per_try_timeout: None, timeout: Some(Duration::from_millis(200)) };
    let (front, _pool, _registry) = serve(HttpConfig::default(), t).await;
    let (status, body) = Client::connect(front).await.get(&[]).await;
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT, "{body}");
    assert!(body.contains("200ms"), "the overall timeout expired: {body}");
}

#[tokio::test(flavor = "current_thread")]
async fn a_failing_service_gets_no_more_retries_than_its_budget() {
    let unavailable = Behaviour { status: StatusCode::SERVICE_UNAVAILABLE, ..Behaviour::default() };
    let a = Endpoint::start("a", unavailable.clone()).await;
    let b = Endpoint::start("b", unavailable).await;
    // No ratio, 1 retry per second: 10 in the 10 s window.
    let config = HttpConfig { retry_budget_ratio: 0.0, retry_budget_min_per_second: 1, ..HttpConfig::default() };
    let (front, _pool, registry) = serve(config, targets(LbStrategy::RoundRobin, &[a.addr, b.addr])).await;
    let mut client = Client::connect(front).await;
    for _ in 0..50 {
        assert_eq!(client.get(&[]).await.0, StatusCode::SERVICE_UNAVAILABLE, "the endpoints' own answer");
    }
    assert_eq!(counter(&registry, "http_retries"), 10.0);
    assert_eq!(a.requests() + b.requests(), 60, "50 requests and 10 retries reached the endpoints");
    // Every request past the budget wanted its first retry and was refused it.
    assert_eq!(counter(&registry, "http_retry_budget_exhausted"), 45.0);
}

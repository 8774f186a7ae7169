//! The dispatcher balances each request on its own: many requests over one
//! keep-alive client connection land on the endpoints as the service's
//! strategy says. Real hyper endpoints on loopback, a minimal front.

mod support;

use std::collections::HashMap;
use std::time::Duration;

use edgemesh_core::{HashKey, LbStrategy};
use edgemesh_http::HttpConfig;
use hyper::StatusCode;
use support::{Behaviour, Client, Endpoint, counter, serve, targets};

async fn endpoints(n: usize) -> Vec<Endpoint> {
    let mut out = Vec::new();
    for i in 0..n {
        out.push(Endpoint::named(&format!("e{i}")).await);
    }
    out
}

#[tokio::test(flavor = "current_thread")]
async fn round_robin_spreads_the_requests_of_one_connection_exactly_evenly_over_pooled_connections() {
    let eps = endpoints(4).await;
    let addrs: Vec<_> = eps.iter().map(|e| e.addr).collect();
    let (front, _pool, registry) = serve(HttpConfig::default(), targets(LbStrategy::RoundRobin, &addrs)).await;
    let mut client = Client::connect(front).await;
    for _ in 0..100 {
        let (status, _) = client.get(&[]).await;
        assert_eq!(status, StatusCode::OK);
    }
    let counts: Vec<usize> = eps.iter().map(Endpoint::requests).collect();
    assert_eq!(counts, [25, 25, 25, 25]);
    // Keep-alive to the endpoints too: one connection each, reused.
    let connections: Vec<usize> = eps.iter().map(Endpoint::connections).collect();
    assert_eq!(connections, [1, 1, 1, 1]);
    assert_eq!(counter(&registry, "http_upstream_connections_opened"), 4.0);
}

#[tokio::test(flavor = "current_thread")]
async fn least_request_sends_few_requests_to_an_endpoint_that_turned_slow() {
    let mut eps = endpoints(3).await;
    let slow = Behaviour { delay: Duration::from_millis(50), ..Behaviour::default() };
    eps.push(Endpoint::start("slow", slow).await);
    let addrs: Vec<_> = eps.iter().map(|e| e.addr).collect();
    let (front, _pool, _registry) = serve(HttpConfig::default(), targets(LbStrategy::LeastRequest, &addrs)).await;
    let mut client = Client::connect(front).await;
    for _ in 0..100 {
        assert_eq!(client.get(&[]).await.0, StatusCode::OK);
    }
    let slow = eps[3].requests();
    assert!(slow < 10, "the slow endpoint got {slow} of 100 requests");
    // Each fast one wins at least its draws against the slow one (1 in 6).
    let fast: Vec<usize> = eps[..3].iter().map(Endpoint::requests).collect();
    assert!(fast.iter().all(|&n| n > 3), "every fast endpoint serves: {fast:?}");
}

/// The endpoint each of eight users lands on, asked five times each;
/// `header` builds a user's request headers.
async fn stickiness(key: HashKey, header: impl Fn(&str) -> (String, String)) -> HashMap<String, String> {
    let eps = endpoints(4).await;
    let addrs: Vec<_> = eps.iter().map(|e| e.addr).collect();
    let mut t = targets(LbStrategy::ConsistentHash, &addrs);
    t.hash_key = key;
    let (front, _pool, _registry) = serve(HttpConfig::default(), t).await;
    let mut client = Client::connect(front).await;
    let mut seen: HashMap<String, String> = HashMap::new();
    for round in 0..5 {
        for u in 0..8 {
            let user = format!("user-{u}");
            let (name, value) = header(&user);
            let (status, endpoint) = client.get(&[(&name, &value)]).await;
            assert_eq!(status, StatusCode::OK);
            let first = seen.entry(user.clone()).or_insert_with(|| endpoint.clone());
            assert_eq!(*first, endpoint, "{user} moved in round {round}");
        }
    }
    seen
}

#[tokio::test(flavor = "current_thread")]
async fn consistent_hash_on_a_header_keeps_each_user_on_one_endpoint() {
    let seen = stickiness(HashKey::Header("X-User".into()), |u| ("x-user".into(), u.into())).await;
    let distinct: std::collections::HashSet<_> = seen.values().collect();
    assert!(distinct.len() > 1, "users spread over endpoints: {seen:?}");
}

#[tokio::test(flavor = "current_thread")]
async fn consistent_hash_on_a_cookie_keeps_each_user_on_one_endpoint() {
    let cookie = |u: &str| ("cookie".to_owned(), format!("theme=dark; session={u}"));
    let seen = stickiness(HashKey::Cookie("session".into()), cookie).await;
    let distinct: std::collections::HashSet<_> = seen.values().collect();
    assert!(distinct.len() > 1, "users spread over endpoints: {seen:?}");
}

#[tokio::test(flavor = "current_thread")]
async fn a_port_without_endpoints_answers_503() {
    let (front, _pool, _registry) = serve(HttpConfig::default(), targets(LbStrategy::RoundRobin, &[])).await;
    let (status, body) = Client::connect(front).await.get(&[]).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(body.contains("default/web port 80 has no ready endpoint"), "{body}");
}

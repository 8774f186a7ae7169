//! The HTTP front with real clients (curl, a WebSocket client) and real
//! backends on loopback: keep-alive, HTTP/2, the h2c upgrade, headers,
//! upgrades, and errors as responses.

mod front_support;

use std::time::Duration;

use bytes::Bytes;

use edgemesh_core::AppProtocol;
use edgemesh_http::HttpConfig;
use edgemesh_test_support::loopback::closed_tcp_port;
use front_support::{Front, curl, echo_backend, silent_backend, targets, websocket_echo};
use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio_tungstenite::tungstenite::Message;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http11_keep_alive_serves_several_requests_on_one_connection() {
    let front = Front::dispatching(&[echo_backend("a").await], HttpConfig::default()).await;
    let urls: Vec<String> = (0..4).map(|i| front.url(&format!("/r{i}"))).collect();
    let mut args = vec!["--http1.1", "-w", "connects=%{num_connects}\n"];
    args.extend(urls.iter().map(String::as_str));
    let out = curl(&args).await;
    for i in 0..4 {
        assert!(out.contains(&format!("GET /r{i}\n")), "request {i} answered in order: {out}");
    }
    let connects: Vec<&str> = out.lines().filter(|l| l.starts_with("connects=")).collect();
    assert_eq!(connects, ["connects=1", "connects=0", "connects=0", "connects=0"], "one connection: {out}");
}

/// curl 7.88 (Debian 12) cannot reuse a prior-knowledge connection (its
/// issue 10634, fixed in 8.0): one request per curl, and hyper's HTTP/2
/// client for several streams on one connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_with_prior_knowledge_is_served() {
    let front = Front::dispatching(&[echo_backend("a").await], HttpConfig::default()).await;
    let url = front.url("/h2");
    let out = curl(&["--http2-prior-knowledge", "-w", "version=%{http_version}\n", &url]).await;
    assert!(out.contains("GET /h2\n"), "{out}");
    assert!(out.contains("version=2"), "{out}");
    assert!(out.contains(&format!("host: {}", front.addr)), "the authority reaches the backend as Host: {out}");

    let stream = tokio::net::TcpStream::connect(front.addr).await.unwrap();
    let (sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream)).await.unwrap();
    tokio::spawn(conn);
    let requests = (0..8).map(|i| {
        let mut sender = sender.clone();
        let req = hyper::Request::get(front.url(&format!("/s{i}"))).body(Empty::<Bytes>::new()).unwrap();
        async move {
            let response = sender.send_request(req).await.unwrap();
            assert_eq!(response.status(), 200);
            let body = response.into_body().collect().await.unwrap().to_bytes();
            assert!(String::from_utf8_lossy(&body).contains(&format!("GET /s{i}\n")));
        }
    });
    tokio::time::timeout(Duration::from_secs(10), futures_util::future::join_all(requests)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_bodies_pass_whole_over_both_versions() {
    let front = Front::dispatching(&[echo_backend("a").await], HttpConfig::default()).await;
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), vec![b'x'; 4 << 20]).unwrap();
    let data = format!("@{}", file.path().display());
    for version in ["--http1.1", "--http2-prior-knowledge"] {
        let out = curl(&[version, "--data-binary", &data, &front.url("/upload")]).await;
        assert!(out.contains("POST /upload\n") && out.contains("body bytes: Ok(4194304)\n"), "{version}: {out}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_h2c_upgrade_is_answered_over_http11() {
    let front = Front::dispatching(&[echo_backend("a").await], HttpConfig::default()).await;
    let out = curl(&["--http2", "-w", "version=%{http_version}\n", &front.url("/up")]).await;
    assert!(out.contains("GET /up\n"), "{out}");
    assert!(out.contains("version=1.1"), "{out}");
    assert!(!out.contains("upgrade:") && !out.contains("http2-settings:"), "upgrade headers stripped: {out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarding_headers_are_set_and_hop_by_hop_headers_removed_both_ways() {
    let front = Front::dispatching(&[echo_backend("a").await], HttpConfig::default()).await;
    let out = curl(&[
        "-i",
        "-H",
        "Connection: keep-alive, X-Hop",
        "-H",
        "X-Hop: 1",
        "-H",
        "Keep-Alive: timeout=5",
        "-H",
        "Proxy-Connection: keep-alive",
        "-H",
        "TE: trailers",
        "-H",
        "X-Forwarded-For: 192.0.2.1",
        "-H",
        "X-End: 2",
        &front.url("/h"),
    ])
    .await;
    let (head, body) = out.split_once("\r\n\r\n").expect("a response head");
    for gone in ["x-hop:", "keep-alive:", "proxy-connection:", "connection:"] {
        assert!(!body.contains(gone), "{gone} reached the backend: {body}");
    }
    assert!(body.contains("x-end: 2\n"), "{body}");
    assert!(body.contains("te: trailers\n"), "te: trailers is kept: {body}");
    assert!(body.contains("x-forwarded-for: 192.0.2.1, 127.0.0.1\n"), "{body}");
    assert!(body.contains("x-forwarded-proto: http\n"), "{body}");
    assert!(body.contains("forwarded: for=127.0.0.1;proto=http\n"), "{body}");
    let head = head.to_ascii_lowercase();
    assert!(head.contains("x-resp-end: 2"), "{head}");
    assert!(!head.contains("x-resp-hop") && !head.contains("keep-alive: timeout"), "response hop-by-hop: {head}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_echo_passes_through() {
    let front = Front::dispatching(&[websocket_echo().await], HttpConfig::default()).await;
    let (mut ws, response) = tokio_tungstenite::connect_async(format!("ws://{}/chat", front.addr)).await.unwrap();
    assert_eq!(response.status(), 101);
    for text in ["hello", "through the front"] {
        ws.send(Message::text(text)).await.unwrap();
        let echoed = tokio::time::timeout(Duration::from_secs(5), ws.next()).await.unwrap().unwrap().unwrap();
        assert_eq!(echoed, Message::text(text));
    }
    ws.close(None).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_unary_and_streaming_calls_pass_with_their_trailers() {
    let server = edgemesh_grpc_echo::Server::start(std::net::TcpListener::bind("127.0.0.1:0").unwrap(), "echo-a");
    let mut targets = targets(&[server.addr]);
    targets.app_protocol = AppProtocol::Http2;
    let front = Front::dispatching_to(targets, HttpConfig::default()).await;
    let mut client = edgemesh_grpc_echo::Client::connect(front.addr).await.unwrap();
    let unary = client.unary("hello").await.unwrap();
    assert_eq!(unary.replies.len(), 1);
    assert_eq!(unary.trailer, "echo-a", "the trailer reaches the client");
    let streamed = client.server_stream("many", 50).await.unwrap();
    assert_eq!(streamed.replies.len(), 50);
    assert_eq!(streamed.trailer, "echo-a");
    let bidi = client.bidi(&["one", "two", "three"]).await.unwrap();
    assert_eq!(bidi.replies.len(), 3);
    assert_eq!(bidi.trailer, "echo-a");
    assert_eq!(server.calls(), 3);
}

/// A config whose requests give up after 300 ms.
fn impatient() -> HttpConfig {
    HttpConfig { request_timeout: Duration::from_millis(300), ..HttpConfig::default() }
}

/// Fronts whose requests fail as 503 (no endpoint), 502 (the endpoint
/// refuses) and 504 (the endpoint never answers), with what the text names.
async fn failing_fronts() -> Vec<(Front, &'static str, &'static str, &'static str)> {
    vec![
        (Front::dispatching(&[], impatient()).await, "503", "14", "ready"),
        (Front::dispatching(&[closed_tcp_port()], impatient()).await, "502", "14", "targetPort"),
        (Front::dispatching(&[silent_backend().await], impatient()).await, "504", "4", "300ms"),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_are_responses_with_a_text_naming_the_service() {
    for (front, status, _, hint) in failing_fronts().await {
        let url = front.url("/");
        let out = curl(&["-w", "status=%{http_code}\n", &url, &url]).await;
        assert_eq!(out.matches(&format!("status={status}")).count(), 2, "the connection stays usable: {out}");
        assert!(out.contains("edgemesh: service default/web port"), "{out}");
        assert!(out.contains(hint), "{out}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_clients_get_a_trailers_only_status() {
    for (front, _, code, _) in failing_fronts().await {
        let out = curl(&[
            "--http2-prior-knowledge",
            "-i",
            "-X",
            "POST",
            "-H",
            "content-type: application/grpc",
            "-H",
            "te: trailers",
            "--data-binary",
            "",
            &front.url("/echo.Echo/Say"),
        ])
        .await;
        let head = out.to_ascii_lowercase();
        assert!(head.starts_with("http/2 200"), "{out}");
        assert!(head.contains(&format!("grpc-status: {code}\r\n")), "{out}");
        assert!(head.contains("grpc-message: edgemesh: service default/web"), "{out}");
    }
}

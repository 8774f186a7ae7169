//! The lean exchange against scripted endpoints on in-memory streams: each
//! framing of RFC 9112 §6.3, what goes back to the pool and what does not.

use http_body_util::BodyExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

use super::*;

const ADDR: &str = "10.0.0.7:8080";

fn home(idle: &Arc<LeanIdle>) -> Home {
    Home { idle: idle.clone(), thread: std::thread::current().id(), max: 4, idle_timeout: Duration::from_secs(60) }
}

/// A connection whose endpoint reads one request head, then sends `answer`
/// in the given pieces (a yield between them) and closes if `close`.
fn endpoint(answer: &[&'static [u8]], close: bool) -> (LeanConn, tokio::task::JoinHandle<(Vec<u8>, DuplexStream)>) {
    let (near, mut far) = tokio::io::duplex(64 * 1024);
    let answer = answer.to_vec();
    let task = tokio::spawn(async move {
        let mut request = Vec::new();
        while !request.ends_with(b"\r\n\r\n") {
            let mut byte = [0u8; 1];
            far.read_exact(&mut byte).await.unwrap();
            request.push(byte[0]);
        }
        for piece in answer {
            far.write_all(piece).await.unwrap();
            tokio::task::yield_now().await;
        }
        if close {
            far.shutdown().await.unwrap();
        }
        (request, far)
    });
    (LeanConn::new(Box::new(near)), task)
}

fn get(uri: &str, headers: &[(&str, &str)]) -> Parts {
    let mut req = hyper::Request::get(uri);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    req.body(()).unwrap().into_parts().0
}

async fn body_of(response: Response<LeanBody>) -> (Bytes, Option<HeaderMap>) {
    let collected = response.into_body().collect().await.unwrap();
    let trailers = collected.trailers().cloned();
    (collected.to_bytes(), trailers)
}

#[tokio::test]
async fn a_content_length_body_is_read_and_the_connection_pooled() {
    let idle = Arc::new(LeanIdle::default());
    let (conn, endpoint) =
        endpoint(&[b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\nX-A: 1\r\n\r\n01234", b"56789"], false);
    let parts = get("/a?b=1", &[("host", "web")]);
    let response = conn.exchange(&parts, ADDR.parse().unwrap(), home(&idle)).await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-a"], "1");
    assert!(!response.headers().contains_key("connection"), "hop-by-hop: not passed on");
    assert!(!response.headers().contains_key("keep-alive"));
    assert_eq!(idle.len(), 0, "not before its body ended");
    assert_eq!(body_of(response).await, (Bytes::from_static(b"0123456789"), None));
    assert_eq!(idle.len(), 1);
    let (request, _far) = endpoint.await.unwrap();
    assert_eq!(request, b"GET /a?b=1 HTTP/1.1\r\nhost: web\r\n\r\n");
}

#[tokio::test]
async fn a_chunked_body_is_decoded_with_its_trailers() {
    let idle = Arc::new(LeanIdle::default());
    let answer: &[&[u8]] = &[
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel",
        b"lo\r\n6;ext=1\r\n world\r\n0\r\n",
        b"grpc-status: 0\r\n\r\n",
    ];
    let (conn, _endpoint) = endpoint(answer, false);
    let response = conn.exchange(&get("/", &[]), ADDR.parse().unwrap(), home(&idle)).await.unwrap();
    let (body, trailers) = body_of(response).await;
    assert_eq!(body, "hello world");
    assert_eq!(trailers.unwrap()["grpc-status"], "0");
    assert_eq!(idle.len(), 1, "a chunked body ends cleanly: the connection is kept");
}

#[tokio::test]
async fn a_content_length_beside_a_transfer_coding_is_ignored_and_the_connection_closed() {
    let idle = Arc::new(LeanIdle::default());
    let answer: &[&[u8]] =
        &[b"HTTP/1.1 200 OK\r\nContent-Length: 99\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n"];
    let (conn, _endpoint) = endpoint(answer, false);
    let response = conn.exchange(&get("/", &[]), ADDR.parse().unwrap(), home(&idle)).await.unwrap();
    assert!(!response.headers().contains_key("content-length"));
    assert_eq!(body_of(response).await.0, "ok");
    assert_eq!(idle.len(), 0);
}

#[tokio::test]
async fn a_body_without_length_ends_at_the_close_and_is_not_pooled() {
    let idle = Arc::new(LeanIdle::default());
    let (conn, _endpoint) = endpoint(&[b"HTTP/1.1 200 OK\r\n\r\nall ", b"of it"], true);
    let response = conn.exchange(&get("/", &[]), ADDR.parse().unwrap(), home(&idle)).await.unwrap();
    assert_eq!(body_of(response).await.0, "all of it");
    assert_eq!(idle.len(), 0);
}

#[tokio::test]
async fn connection_close_and_http10_are_not_pooled_and_keep_alive_is() {
    for (head, pooled) in [
        (&b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok"[..], 0),
        (b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok", 0),
        (b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\nok", 1),
        (b"HTTP/1.1 200 OK\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\nok", 1),
    ] {
        let idle = Arc::new(LeanIdle::default());
        let (conn, _endpoint) = endpoint(&[head], false);
        let response = conn.exchange(&get("/", &[]), ADDR.parse().unwrap(), home(&idle)).await.unwrap();
        assert_eq!(body_of(response).await.0, "ok");
        assert_eq!(idle.len(), pooled, "{}", String::from_utf8_lossy(head));
    }
}

#[tokio::test]
async fn head_answers_and_interim_answers_carry_no_body() {
    let idle = Arc::new(LeanIdle::default());
    let answer: &[&[u8]] =
        &[b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>\r\n\r\n", b"HTTP/1.1 200 OK\r\nContent-Length: 99\r\n\r\n"];
    let (conn, _endpoint) = endpoint(answer, false);
    let response = conn.exchange_head(b"HEAD / HTTP/1.1\r\n\r\n", &Method::HEAD, home(&idle)).await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-length"], "99", "a HEAD answer's length is the GET's");
    assert!(response.body().is_end_stream());
    drop(response);
    assert_eq!(idle.len(), 1, "pooled at once: nothing to read");
}

#[tokio::test]
async fn bad_answers_are_errors_after_sending() {
    for answer in [
        &b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok"[..],
        b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
        b"NOT HTTP\r\n\r\n",
        b"HTTP/1.1 101 Switching Protocols\r\n\r\n",
    ] {
        let (conn, _endpoint) = endpoint(&[answer], false);
        let idle = Arc::new(LeanIdle::default());
        let error = conn.exchange_head(b"GET / HTTP/1.1\r\n\r\n", &Method::GET, home(&idle)).await.unwrap_err();
        assert!(matches!(error, LeanError::Sent(_)), "{error:?} for {}", String::from_utf8_lossy(answer));
    }
    let (conn, _endpoint) = endpoint(&[], true);
    let error = conn.exchange_head(b"GET / HTTP/1.1\r\n\r\n", &Method::GET, home(&Arc::default())).await.unwrap_err();
    assert!(matches!(&error, LeanError::Sent(e) if e.contains("before answering")), "{error:?}");
}

#[tokio::test]
async fn a_body_cut_short_is_an_error() {
    let (conn, _endpoint) = endpoint(&[b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort"], true);
    let idle = Arc::new(LeanIdle::default());
    let response = conn.exchange_head(b"GET / HTTP/1.1\r\n\r\n", &Method::GET, home(&idle)).await.unwrap();
    assert!(response.into_body().collect().await.is_err());
    assert_eq!(idle.len(), 0);
}

#[tokio::test]
async fn a_pooled_connection_the_endpoint_closed_is_not_checked_out() {
    let idle = Arc::new(LeanIdle::default());
    let thread = std::thread::current().id();
    let (conn, endpoint) = endpoint(&[b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"], false);
    let response = conn.exchange_head(b"GET / HTTP/1.1\r\n\r\n", &Method::GET, home(&idle)).await.unwrap();
    drop(response);
    assert_eq!(idle.len(), 1);
    let other = std::thread::spawn(|| std::thread::current().id()).join().unwrap();
    assert!(idle.checkout(other).is_none(), "another thread's connections are not this one's");
    let (_, far) = endpoint.await.unwrap();
    drop(far);
    tokio::task::yield_now().await;
    assert!(idle.checkout(thread).is_none(), "closed by the endpoint");
    assert_eq!(idle.len(), 0);
}

#[tokio::test(start_paused = true)]
async fn idle_connections_are_closed_after_the_idle_timeout() {
    let idle = Arc::new(LeanIdle::default());
    let (conn, _endpoint) = endpoint(&[b"HTTP/1.1 204 No Content\r\n\r\n"], false);
    let mut home = home(&idle);
    home.idle_timeout = Duration::from_secs(8);
    drop(conn.exchange_head(b"GET / HTTP/1.1\r\n\r\n", &Method::GET, home).await.unwrap());
    assert_eq!(idle.len(), 1);
    tokio::time::sleep(Duration::from_secs(7)).await;
    assert_eq!(idle.len(), 1);
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(idle.len(), 0);
}

#[test]
fn the_head_gets_a_host_and_the_origin_form() {
    let addr: SocketAddr = ADDR.parse().unwrap();
    let mut head = b"left from the last request".to_vec();
    encode_head(&get("http://web.default/a?b=1", &[("x-a", "1")]), addr, &mut head);
    assert_eq!(head, b"GET /a?b=1 HTTP/1.1\r\nx-a: 1\r\nhost: web.default\r\n\r\n");
    encode_head(&get("/", &[]), addr, &mut head);
    assert_eq!(head, b"GET / HTTP/1.1\r\nhost: 10.0.0.7:8080\r\n\r\n");
    encode_head(&get("/", &[("Host", "web")]), addr, &mut head);
    assert_eq!(head, b"GET / HTTP/1.1\r\nhost: web\r\n\r\n");
}

#[test]
fn content_lengths_must_agree_and_be_numbers() {
    let framed = |values: &[&str]| {
        let mut frame = Framed::default();
        for v in values {
            frame.see(&CONTENT_LENGTH, v.as_bytes());
        }
        frame.length
    };
    assert_eq!(framed(&["10"]), Some(Some(10)));
    assert_eq!(framed(&["10, 10", "10"]), Some(Some(10)));
    assert_eq!(framed(&["10", "11"]), Some(None));
    for bad in ["", "+1", "0x10", "1 0", "99999999999999999999"] {
        assert_eq!(framed(&[bad]), Some(None), "{bad:?}");
    }
    assert_eq!(framed(&[]), None);
}

#[tokio::test]
async fn a_connection_header_naming_other_headers_is_kept_for_the_front_to_act_on() {
    let head = b"HTTP/1.1 200 OK\r\nConnection: keep-alive, X-Hop\r\nX-Hop: 1\r\nContent-Length: 0\r\n\r\n";
    let (conn, _endpoint) = endpoint(&[head], false);
    let response = conn.exchange_head(b"GET / HTTP/1.1\r\n\r\n", &Method::GET, home(&Arc::default())).await.unwrap();
    assert_eq!(response.headers()["connection"], "keep-alive, X-Hop");
    assert_eq!(response.headers()["x-hop"], "1");
}

#[tokio::test]
async fn the_idle_limit_is_per_worker_thread() {
    let idle = Arc::new(LeanIdle::default());
    let here = std::thread::current().id();
    let other = std::thread::spawn(|| std::thread::current().id()).join().unwrap();
    let mut endpoints = Vec::new();
    for thread in [here, here, other] {
        let (conn, endpoint) = endpoint(&[b"HTTP/1.1 204 No Content\r\n\r\n"], false);
        endpoints.push(endpoint);
        let home = Home { thread, max: 1, ..home(&idle) };
        drop(conn.exchange_head(b"GET / HTTP/1.1\r\n\r\n", &Method::GET, home).await.unwrap());
    }
    assert_eq!(idle.len(), 2, "one for each thread");
}

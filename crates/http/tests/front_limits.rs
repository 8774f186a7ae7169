//! The front's limits with real clients on loopback: each hit is answered
//! or closed as the README says, counted, and never stops service for the
//! other clients.

mod front_support;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use edgemesh_http::front::Limit;
use edgemesh_http::{DispatchError, HttpConfig, RequestBody, RequestContext, SendFuture, Upstream};
use edgemesh_test_support::eventually;
use front_support::{Front, curl, echo_backend, slow_echo_backend};
use http_body_util::{BodyExt, Empty};
use hyper::Request;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_slowloris_connections_do_not_starve_a_real_client() {
    let head_timeout = Duration::from_secs(3);
    let config = HttpConfig { request_head_timeout: head_timeout, ..HttpConfig::default() };
    let front = Front::dispatching(&[echo_backend("a").await], config).await;
    let started = tokio::time::Instant::now();
    let slow: Vec<_> = (0..50)
        .map(|i| {
            let addr = front.addr;
            tokio::spawn(async move {
                let mut stream = TcpStream::connect(addr).await.unwrap();
                stream.write_all(format!("GET /slow{i} HTTP/1.1\r\nHost: x\r\nX-Slow: ").as_bytes()).await.unwrap();
                // A header byte per second until the front closes the connection.
                for _ in 0..30 {
                    if stream.write_all(b"a").await.is_err() {
                        break;
                    }
                    let mut buf = [0u8; 64];
                    match tokio::time::timeout(Duration::from_secs(1), stream.read(&mut buf)).await {
                        Ok(Ok(0) | Err(_)) => break,
                        Ok(Ok(_)) => panic!("a slowloris connection got an answer"),
                        Err(_) => {}
                    }
                }
                tokio::time::Instant::now()
            })
        })
        .collect();
    // Meanwhile a real client is answered, again and again, at once.
    for i in 0..10 {
        let asked = tokio::time::Instant::now();
        let out = curl(&[&front.url(&format!("/real{i}"))]).await;
        assert!(out.contains(&format!("GET /real{i}\n")), "{out}");
        // Well within the head timeout (curl's own start included, on a busy machine).
        assert!(asked.elapsed() < Duration::from_secs(2), "answered in {:?}", asked.elapsed());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for task in slow {
        let closed = task.await.unwrap();
        let after = closed - started;
        assert!(after < head_timeout + Duration::from_secs(3), "a slowloris connection lived {after:?}");
    }
    assert_eq!(front.proxy.limit_hits(Limit::HeadTimeout), 50);
}

/// The head timeout times a request head from its first byte, not the wait
/// between requests: a pooled keep-alive connection idle for longer is kept
/// (and answered), while a head that begins late and trickles is still cut
/// at its deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_head_timeout_spares_idle_keep_alive_connections() {
    use http_body_util::BodyExt;
    let head_timeout = Duration::from_secs(1);
    let config = HttpConfig { request_head_timeout: head_timeout, ..HttpConfig::default() };
    let front = Front::dispatching(&[echo_backend("a").await], config).await;
    let stream = TcpStream::connect(front.addr).await.unwrap();
    let (mut pooled, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.unwrap();
    tokio::spawn(conn);
    for _ in 0..2 {
        let response = pooled.send_request(get(&front)).await.expect("the idle connection still serves");
        assert_eq!(response.status(), 200);
        response.into_body().collect().await.unwrap();
        tokio::time::sleep(head_timeout * 5 / 2).await;
    }
    // A request, a pause longer than the head timeout, then a slow head.
    let mut slow = TcpStream::connect(front.addr).await.unwrap();
    slow.write_all(format!("GET / HTTP/1.1\r\nHost: {}\r\n\r\n", front.addr).as_bytes()).await.unwrap();
    let mut answer = [0u8; 12];
    slow.read_exact(&mut answer).await.unwrap();
    assert_eq!(&answer, b"HTTP/1.1 200");
    tokio::time::sleep(head_timeout * 3 / 2).await;
    let began = tokio::time::Instant::now();
    slow.write_all(b"GET / HTTP/1.1\r\nX-Slow: ").await.unwrap();
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(head_timeout * 4, async {
        loop {
            let _ = slow.write_all(b"a").await;
            let mut buf = [0u8; 4096];
            match tokio::time::timeout(Duration::from_millis(200), slow.read(&mut buf)).await {
                Ok(Ok(0) | Err(_)) => return,
                Ok(Ok(n)) => rest.extend_from_slice(&buf[..n]),
                Err(_) => {}
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "a trickled head outlived its timeout ({:?} after its first byte)", began.elapsed());
    assert!(began.elapsed() >= head_timeout, "cut before its deadline: {:?}", began.elapsed());
    assert!(!String::from_utf8_lossy(&rest).contains(" 200 "), "the slow head got no answer");
    assert_eq!(front.proxy.limit_hits(Limit::HeadTimeout), 1);
    assert_eq!(front.proxy.limit_hits(Limit::IdleTimeout), 0);
}

/// The regression of 26a04fd3, made deterministic: an answer slower than
/// the head timeout makes the head-timeout check fall while the request is
/// in flight; it must keep looking, so that the next head on the same
/// keep-alive connection, trickled, is cut at its own deadline (the check
/// used to re-arm at the idle timeout, 300 s, and the head went unwatched).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trickled_head_after_an_answer_slower_than_the_head_timeout_is_cut() {
    let head_timeout = Duration::from_secs(1);
    let config = HttpConfig { request_head_timeout: head_timeout, ..HttpConfig::default() };
    let front = Front::dispatching(&[slow_echo_backend("a", head_timeout * 3 / 2).await], config).await;
    let mut conn = TcpStream::connect(front.addr).await.unwrap();
    let sent = tokio::time::Instant::now();
    conn.write_all(format!("GET / HTTP/1.1\r\nHost: {}\r\n\r\n", front.addr).as_bytes()).await.unwrap();
    let mut answer = [0u8; 12];
    conn.read_exact(&mut answer).await.unwrap();
    assert_eq!(&answer, b"HTTP/1.1 200");
    assert!(sent.elapsed() > head_timeout, "the answer came before a head-timeout check could fall in it");
    let began = tokio::time::Instant::now();
    conn.write_all(b"GET / HTTP/1.1\r\nX-Slow: ").await.unwrap();
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(head_timeout * 3, async {
        loop {
            let _ = conn.write_all(b"a").await;
            let mut buf = [0u8; 4096];
            match tokio::time::timeout(Duration::from_millis(100), conn.read(&mut buf)).await {
                Ok(Ok(0) | Err(_)) => return,
                Ok(Ok(n)) => rest.extend_from_slice(&buf[..n]),
                Err(_) => {}
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "a trickled head outlived its timeout ({:?} after its first byte)", began.elapsed());
    assert!(began.elapsed() >= head_timeout, "cut before its deadline: {:?}", began.elapsed());
    assert!(!String::from_utf8_lossy(&rest).contains("HTTP/1.1 200"), "the trickled head got no answer");
    assert_eq!(front.proxy.limit_hits(Limit::HeadTimeout), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_large_or_too_many_headers_get_431_and_others_are_served() {
    let config = HttpConfig { max_header_bytes: 8192, max_headers: 20, ..HttpConfig::default() };
    let front = Front::dispatching(&[echo_backend("a").await], config).await;
    let url = front.url("/h");
    let big = format!("X-Big: {}", "b".repeat(10_000));
    let out = curl(&["-o", "/dev/null", "-w", "%{http_code}", "-H", &big, &url]).await;
    assert_eq!(out, "431");
    // Counted when the connection ends, which may be after curl has its 431.
    let counted = |limit| {
        let front = &front;
        eventually("the limit counted", Duration::from_secs(5), move || async move {
            (front.proxy.limit_hits(limit) == 1).then_some(())
        })
    };
    counted(Limit::HeaderSize).await;

    let many: Vec<String> = (0..30).map(|i| format!("X-H{i}: {i}")).collect();
    let mut args = vec!["-o", "/dev/null", "-w", "%{http_code}"];
    for header in &many {
        args.extend(["-H", header]);
    }
    args.push(&url);
    assert_eq!(curl(&args).await, "431");
    counted(Limit::HeaderCount).await;

    let fine = &many[..15].iter().flat_map(|h| ["-H", h.as_str()]).collect::<Vec<_>>();
    let out = curl(&[fine.as_slice(), &[&url]].concat()).await;
    assert!(out.contains("x-h14: 14\n"), "{out}");
}

/// An HTTP/1.1 connection to `front` that has had one answer, read whole
/// (hyper's client closes a connection whose response body was dropped
/// unread).
async fn answered_connection(front: &Front) -> hyper::client::conn::http1::SendRequest<Empty<Bytes>> {
    let stream = TcpStream::connect(front.addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.unwrap();
    tokio::spawn(conn);
    let response = sender.send_request(get(front)).await.unwrap();
    assert_eq!(response.status(), 200);
    response.into_body().collect().await.unwrap();
    sender
}

fn get(front: &Front) -> Request<Empty<Bytes>> {
    Request::get("/").header("host", front.addr.to_string()).body(Empty::new()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_max_connections_new_ones_are_refused_and_old_ones_keep_working() {
    let config = HttpConfig { max_connections: 2, ..HttpConfig::default() };
    let front = Front::dispatching(&[echo_backend("a").await], config).await;
    let mut first = answered_connection(&front).await;
    let second = answered_connection(&front).await;

    // The reset may come before the connect completes on loopback.
    if let Ok(stream) = TcpStream::connect(front.addr).await {
        let (mut third, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.unwrap();
        tokio::spawn(conn);
        assert!(third.send_request(get(&front)).await.is_err(), "the third connection is refused");
    }
    assert_eq!(front.proxy.limit_hits(Limit::Connections), 1);

    // (`ready`: hyper's client takes a second request only once its
    // connection task has finished the first.)
    first.ready().await.expect("the first connection is still open");
    assert_eq!(first.send_request(get(&front)).await.unwrap().status(), 200, "old connections keep working");
    drop(second);
    eventually("the closed connection's place to be free", Duration::from_secs(5), || async {
        (front.proxy.connections() == 1).then_some(())
    })
    .await;
    answered_connection(&front).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_http2_connection_is_closed() {
    let config = HttpConfig { idle_timeout: Duration::from_secs(1), ..HttpConfig::default() };
    let front = Front::dispatching(&[echo_backend("a").await], config).await;
    let stream = TcpStream::connect(front.addr).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream)).await.unwrap();
    let conn = tokio::spawn(conn);
    let req = Request::get(front.url("/")).body(Empty::<Bytes>::new()).unwrap();
    assert_eq!(sender.send_request(req).await.unwrap().status(), 200);
    let idle = tokio::time::Instant::now();
    tokio::time::timeout(Duration::from_secs(5), conn).await.expect("closed").unwrap().unwrap();
    assert!(idle.elapsed() >= Duration::from_millis(900), "closed after {:?}", idle.elapsed());
    assert_eq!(front.proxy.limit_hits(Limit::IdleTimeout), 1);
}

/// A client that opens HTTP/2 and falls silent (never acknowledges the
/// server's SETTINGS, nor the PING of its graceful close) is still closed
/// soon after the idle timeout (found by the `http_request_head` fuzz target).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_http2_client_is_closed_after_the_idle_timeout() {
    let config = HttpConfig { idle_timeout: Duration::from_secs(1), ..HttpConfig::default() };
    let front = Front::dispatching(&[echo_backend("a").await], config).await;
    let mut stream = TcpStream::connect(front.addr).await.unwrap();
    // The preface and an empty SETTINGS frame, then nothing.
    stream.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0").await.unwrap();
    let opened = tokio::time::Instant::now();
    let mut sink = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut sink))
        .await
        .expect("the front closes the connection")
        .unwrap();
    assert!(opened.elapsed() >= Duration::from_millis(900), "closed after {:?}", opened.elapsed());
    assert_eq!(&sink[3..5], [4, 0], "the front's SETTINGS came first");
    assert_eq!(front.proxy.limit_hits(Limit::IdleTimeout), 1);
    eventually("the connection slot given back", Duration::from_secs(1), || async {
        (front.proxy.connections() == 0).then_some(())
    })
    .await;
}

/// Answers every request 504 after a while, so that requests overlap.
struct Slow;

impl Upstream for Slow {
    fn send(&self, _req: Request<RequestBody>, _ctx: Arc<RequestContext>) -> SendFuture {
        Box::pin(async {
            tokio::time::sleep(Duration::from_millis(300)).await;
            Err(DispatchError::Timeout { timeout: Duration::from_millis(300) })
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_streams_past_the_limit_wait_and_are_counted() {
    let config = HttpConfig { max_concurrent_streams: 2, ..HttpConfig::default() };
    let front = Front::start(Slow, config).await;
    let stream = TcpStream::connect(front.addr).await.unwrap();
    let (sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream)).await.unwrap();
    tokio::spawn(conn);
    // Once the first answer is in, the client knows the front's settings.
    let first = Request::get(front.url("/")).body(Empty::<Bytes>::new()).unwrap();
    assert_eq!(sender.clone().send_request(first).await.unwrap().status(), 504);
    let requests = (0..6).map(|_| {
        let mut sender = sender.clone();
        let req = Request::get(front.url("/")).body(Empty::<Bytes>::new()).unwrap();
        async move { sender.send_request(req).await.map(|r| r.status().as_u16()) }
    });
    let started = tokio::time::Instant::now();
    let statuses =
        tokio::time::timeout(Duration::from_secs(10), futures_util::future::join_all(requests)).await.unwrap();
    assert!(statuses.iter().all(|s| matches!(s, Ok(504))), "{statuses:?}");
    assert!(started.elapsed() >= Duration::from_millis(850), "2 at a time: 3 rounds, took {:?}", started.elapsed());
    assert!(front.proxy.limit_hits(Limit::Streams) >= 1);
}

/// Holds every request until the test lets it go, telling when one arrived.
struct Held {
    arrived: tokio::sync::mpsc::UnboundedSender<()>,
    release: Arc<tokio::sync::Semaphore>,
}

impl Upstream for Held {
    fn send(&self, _req: Request<RequestBody>, _ctx: Arc<RequestContext>) -> SendFuture {
        let (arrived, release) = (self.arrived.clone(), self.release.clone());
        Box::pin(async move {
            let _ = arrived.send(());
            let _permit = release.acquire().await;
            Err(DispatchError::NoEndpoints { service: "default/web".into(), port: 80 })
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_closes_idle_connections_and_lets_requests_in_flight_finish() {
    let (arrived, mut arrivals) = tokio::sync::mpsc::unbounded_channel();
    let release = Arc::new(tokio::sync::Semaphore::new(0));
    let front = Front::start(Held { arrived, release: release.clone() }, HttpConfig::default()).await;

    let idle = TcpStream::connect(front.addr).await.unwrap();
    let (_idle_sender, idle_conn) =
        hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(TokioIo::new(idle)).await.unwrap();
    let idle_conn = tokio::spawn(idle_conn);
    let busy = TcpStream::connect(front.addr).await.unwrap();
    let (mut sender, busy_conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(busy)).await.unwrap();
    let busy_conn = tokio::spawn(busy_conn);
    let req = Request::get(front.url("/")).body(Empty::<Bytes>::new()).unwrap();
    let in_flight = tokio::spawn(async move { sender.send_request(req).await.map(|r| r.status().as_u16()) });
    arrivals.recv().await.unwrap();
    eventually("both connections served", Duration::from_secs(5), || async {
        (front.proxy.connections() == 2).then_some(())
    })
    .await;

    front.drain.cancel();
    // (hyper's client ends an idle connection the server closed with
    // IncompleteMessage: closed is what counts.)
    let _closed =
        tokio::time::timeout(Duration::from_secs(5), idle_conn).await.expect("the idle connection closes").unwrap();
    assert!(!busy_conn.is_finished(), "a connection with a request in flight stays");
    release.add_permits(1);
    let status = tokio::time::timeout(Duration::from_secs(5), in_flight).await.unwrap().unwrap();
    assert_eq!(status.unwrap(), 503, "the request in flight is answered");
    tokio::time::timeout(Duration::from_secs(5), busy_conn)
        .await
        .expect("then its connection closes")
        .unwrap()
        .unwrap();
    eventually("no connection left", Duration::from_secs(5), || async {
        (front.proxy.connections() == 0).then_some(())
    })
    .await;
}

//! The HTTP/1.1 front on the wire: requests without a body are served by
//! the lean front, everything else by hyper from the first request the
//! lean front does not take, on the same connection. A raw client checks
//! the bytes: pipelined order, the framing of each response (length,
//! chunked re-encoding, none for HEAD), `Date`, and `Connection: close`.

mod front_support;

use std::net::SocketAddr;
use std::time::Duration;

use edgemesh_http::HttpConfig;
use front_support::{Front, echo_backend};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// One response as the client read it.
#[derive(Debug)]
struct Answer {
    status: u16,
    /// Header lines, names lowercased.
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// A client on one connection that reads responses off the wire itself.
struct RawClient {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl RawClient {
    async fn connect(addr: SocketAddr) -> Self {
        Self { stream: TcpStream::connect(addr).await.unwrap(), buf: Vec::new() }
    }

    async fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.unwrap();
    }

    async fn fill(&mut self) -> bool {
        let mut chunk = [0u8; 8192];
        let n = tokio::time::timeout(Duration::from_secs(10), self.stream.read(&mut chunk))
            .await
            .expect("the front answers within 10 s")
            .unwrap();
        self.buf.extend_from_slice(&chunk[..n]);
        n > 0
    }

    /// The next response, to a request for `method`.
    async fn read(&mut self, method: &str) -> Answer {
        let (len, status, headers) = loop {
            let mut slots = [httparse::EMPTY_HEADER; 64];
            let mut response = httparse::Response::new(&mut slots);
            if let httparse::Status::Complete(len) = response.parse(&self.buf).expect("a valid response head") {
                let headers = response
                    .headers
                    .iter()
                    .map(|h| (h.name.to_ascii_lowercase(), String::from_utf8_lossy(h.value).into_owned()))
                    .collect::<Vec<_>>();
                break (len, response.code.unwrap(), headers);
            }
            assert!(self.fill().await, "closed before a whole head: {:?}", String::from_utf8_lossy(&self.buf));
        };
        self.buf.drain(..len);
        let mut answer = Answer { status, headers, body: Vec::new() };
        if method == "HEAD" || status == 204 || status == 304 {
            return answer;
        }
        if answer.header("transfer-encoding") == Some("chunked") {
            loop {
                let line_end = loop {
                    if let Some(at) = self.buf.windows(2).position(|w| w == b"\r\n") {
                        break at;
                    }
                    assert!(self.fill().await, "closed inside a chunked body");
                };
                let size = usize::from_str_radix(std::str::from_utf8(&self.buf[..line_end]).unwrap(), 16).unwrap();
                while self.buf.len() < line_end + 2 + size + 2 {
                    assert!(self.fill().await, "closed inside a chunk");
                }
                answer.body.extend_from_slice(&self.buf[line_end + 2..line_end + 2 + size]);
                assert_eq!(&self.buf[line_end + 2 + size..line_end + 4 + size], b"\r\n");
                self.buf.drain(..line_end + 4 + size);
                if size == 0 {
                    return answer;
                }
            }
        }
        let length: usize = answer.header("content-length").expect("a framed body").parse().unwrap();
        while self.buf.len() < length {
            assert!(self.fill().await, "closed inside the body");
        }
        answer.body = self.buf.drain(..length).collect();
        answer
    }

    /// Whether the front closed the connection (nothing more to read).
    async fn closed(&mut self) -> bool {
        self.buf.is_empty() && !self.fill().await
    }
}

/// A backend answering every request with the bytes `answer` gives for its
/// request line, as raw HTTP/1.1.
async fn raw_backend(answer: fn(&str) -> Vec<u8>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head: Vec<u8> = buf.drain(..end + 4).collect();
                        let line = String::from_utf8_lossy(&head).lines().next().unwrap_or_default().to_owned();
                        if stream.write_all(&answer(&line)).await.is_err() {
                            return;
                        }
                    }
                    match stream.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_requests_are_answered_in_order_across_the_handoff_to_hyper() {
    let front = Front::dispatching(&[echo_backend("a").await], HttpConfig::default()).await;
    let mut client = RawClient::connect(front.addr).await;
    // Two lean GETs, a POST with a body (hyper's from here on), a GET:
    // one write, four answers in order.
    client
        .send(
            b"GET /one HTTP/1.1\r\nhost: web\r\n\r\n\
              GET /two HTTP/1.1\r\nhost: web\r\n\r\n\
              POST /three HTTP/1.1\r\nhost: web\r\ncontent-length: 5\r\n\r\nhello\
              GET /four HTTP/1.1\r\nhost: web\r\n\r\n",
        )
        .await;
    for (method, path, body) in [("GET", "/one", 0), ("GET", "/two", 0), ("POST", "/three", 5), ("GET", "/four", 0)] {
        let answer = client.read(method).await;
        assert_eq!(answer.status, 200, "{answer:?}");
        let text = answer.text();
        assert!(text.contains(&format!("{method} {path}\n")), "answers in order: {text}");
        assert!(text.contains(&format!("body bytes: Ok({body})")), "{text}");
    }
    // Still open for more.
    client.send(b"GET /five HTTP/1.1\r\nhost: web\r\n\r\n").await;
    assert!(client.read("GET").await.text().contains("GET /five\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunked_response_is_sent_chunked_with_its_trailers_only_to_clients_that_take_them() {
    let backend = raw_backend(|_| {
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\nx-from: backend\r\n\r\n\
          5\r\nhello\r\n7\r\n, world\r\n0\r\nx-checksum: 42\r\n\r\n"
            .to_vec()
    })
    .await;
    let front = Front::dispatching(&[backend], HttpConfig::default()).await;
    let mut client = RawClient::connect(front.addr).await;
    client.send(b"GET /stream HTTP/1.1\r\nhost: web\r\n\r\n").await;
    let answer = client.read("GET").await;
    assert_eq!((answer.status, answer.text().as_str()), (200, "hello, world"));
    assert_eq!(answer.header("transfer-encoding"), Some("chunked"));
    assert_eq!(answer.header("x-from"), Some("backend"));
    assert!(client.buf.is_empty(), "no trailer section for a client without TE: trailers");
    client.send(b"GET /stream HTTP/1.1\r\nhost: web\r\nte: trailers\r\nconnection: te\r\n\r\n").await;
    // The trailer line comes before the final CRLF: read it raw.
    while !client.buf.ends_with(b"\r\n0\r\nx-checksum: 42\r\n\r\n") {
        assert!(client.fill().await, "closed: {:?}", String::from_utf8_lossy(&client.buf));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn head_answers_carry_no_body_and_the_connection_goes_on() {
    let backend = raw_backend(|line| {
        if line.starts_with("HEAD") {
            b"HTTP/1.1 200 OK\r\ncontent-length: 1234\r\n\r\n".to_vec()
        } else {
            b"HTTP/1.1 204 No Content\r\n\r\n".to_vec()
        }
    })
    .await;
    let front = Front::dispatching(&[backend], HttpConfig::default()).await;
    let mut client = RawClient::connect(front.addr).await;
    client.send(b"HEAD /big HTTP/1.1\r\nhost: web\r\n\r\nDELETE /x HTTP/1.1\r\nhost: web\r\n\r\n").await;
    let head = client.read("HEAD").await;
    assert_eq!((head.status, head.header("content-length")), (200, Some("1234")), "{head:?}");
    let deleted = client.read("DELETE").await;
    assert_eq!(deleted.status, 204, "{deleted:?}: the HEAD answer had no body bytes");
    assert_eq!(deleted.header("content-length"), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_close_is_answered_then_closed() {
    let front = Front::dispatching(&[echo_backend("a").await], HttpConfig::default()).await;
    let mut client = RawClient::connect(front.addr).await;
    client.send(b"GET /last HTTP/1.1\r\nhost: web\r\nconnection: close\r\n\r\n").await;
    let answer = client.read("GET").await;
    assert!(answer.text().contains("GET /last\n"), "{answer:?}");
    assert_eq!(answer.header("connection"), Some("close"));
    assert!(client.closed().await, "the front closes after the answer");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_on_the_lean_path_are_answered_like_hyper_answers_them() {
    // No endpoint: the agent's 503 text, framed by its length.
    let front = Front::dispatching(&[], HttpConfig::default()).await;
    let mut client = RawClient::connect(front.addr).await;
    client.send(b"GET / HTTP/1.1\r\nhost: web\r\n\r\n").await;
    let answer = client.read("GET").await;
    assert_eq!(answer.status, 503);
    assert!(answer.text().starts_with("edgemesh: service default/web"), "{answer:?}");
    assert!(answer.header("date").is_some_and(|d| d.ends_with(" GMT")), "the front's own Date: {answer:?}");
    // A head hyper refuses (a bad header line) is hyper's to answer.
    client.send(b"GET / HTTP/1.1\r\nbad header line\r\n\r\n").await;
    let answer = client.read("GET").await;
    assert_eq!(answer.status, 400, "{answer:?}");
    assert!(client.closed().await);
}

//! The lean HTTP/1.1 exchange: a request without a body, written on a
//! connection this module owns, its response head parsed here and its body
//! read straight from the socket by whoever polls it (the client
//! connection's task). hyper's client connection costs a task per
//! connection and channels between it and the request (the request, the
//! response head, every body chunk: each a hand-off and a wake-up); here
//! the request's own task does the reads and writes.
//!
//! Requests with a body, upgrades and HTTP/2 endpoints stay on hyper's
//! client (`upstream`): a body may have to be written while the response
//! is read (gRPC streaming), which a single task reading and writing in
//! turn cannot do.
//!
//! The response body is framed as RFC 9112 §6.3 says: none (`HEAD`, 1xx,
//! 204, 304), `Transfer-Encoding` (chunked: decoded here, trailers kept),
//! `Content-Length`, else until the endpoint closes. Once it ended cleanly
//! on a connection that may be kept (HTTP/1.1 without `Connection: close`,
//! nothing read past the body), the connection goes back to its endpoint's
//! [`LeanIdle`] list for the next request of the same worker thread.

use std::io;
use std::mem::MaybeUninit;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::task::{Context, Poll, ready};
use std::thread::ThreadId;
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use edgemesh_proxy::RemoteStream;
use hyper::body::{Body, Frame, SizeHint};
use hyper::header::{CONNECTION, CONTENT_LENGTH, HOST, HeaderMap, HeaderName, HeaderValue, TRANSFER_ENCODING};
use hyper::http::request::Parts;
use hyper::{Method, Response, StatusCode, Version};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt, ReadBuf};
use tokio::time::Instant;
use tokio_util::io::poll_read_buf;

/// Most header lines in a response head (as many as a request may have by
/// default).
const MAX_HEADERS: usize = 100;
/// Largest response head, and largest trailer section.
const MAX_HEAD: usize = 64 * 1024;
/// What one read asks for at least.
const READ_CHUNK: usize = 8 * 1024;
/// Longest chunk-size line (size, extensions).
const MAX_CHUNK_LINE: usize = 4 * 1024;

/// An HTTP/1.1 connection to an endpoint, between requests.
pub struct LeanConn {
    io: RemoteStream,
    /// Bytes read and not consumed yet.
    buf: BytesMut,
    /// The request head being written, and where the response head's
    /// lines are: kept between requests, so that neither allocates.
    head: Vec<u8>,
    spans: Vec<Span>,
}

/// Why an exchange failed.
#[derive(Debug)]
pub enum LeanError {
    /// Writing the request failed: the endpoint got at most part of a head,
    /// which it cannot have acted on.
    Unsent(String),
    /// The request was written; no usable response head came back.
    Sent(String),
}

impl LeanConn {
    pub fn new(io: RemoteStream) -> Self {
        Self { io, buf: BytesMut::new(), head: Vec::new(), spans: Vec::new() }
    }

    /// Whether the endpoint closed this pooled connection (or sent what no
    /// request asked for): a read that does not wait says so. A connection
    /// with nothing to read costs no system call when the reactor saw no
    /// event on it since.
    fn is_dead(&mut self) -> bool {
        if !self.buf.is_empty() {
            return true;
        }
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let mut probe = [0u8; 1];
        let mut probe = ReadBuf::new(&mut probe);
        Pin::new(&mut self.io).poll_read(&mut cx, &mut probe).is_ready()
    }

    /// Writes the head of `parts` (a request without a body, to endpoint
    /// `addr`: see [`encode_head`]) and reads the response head; the
    /// connection then travels in the response's body.
    pub async fn exchange(
        mut self,
        parts: &Parts,
        addr: SocketAddr,
        home: Home,
    ) -> Result<Response<LeanBody>, LeanError> {
        let mut head = std::mem::take(&mut self.head);
        encode_head(parts, addr, &mut head);
        let written = self.write(&head).await;
        self.head = head;
        if let Err(e) = written {
            return Err(LeanError::Unsent(format!("write the request: {e}")));
        }
        self.read_response(&parts.method, home).await
    }

    /// [`LeanConn::exchange`] of a head already encoded.
    #[cfg(test)]
    async fn exchange_head(
        mut self,
        head: &[u8],
        method: &Method,
        home: Home,
    ) -> Result<Response<LeanBody>, LeanError> {
        if let Err(e) = self.write(head).await {
            return Err(LeanError::Unsent(format!("write the request: {e}")));
        }
        self.read_response(method, home).await
    }

    /// Reads the response head to a request for `method`.
    async fn read_response(mut self, method: &Method, home: Home) -> Result<Response<LeanBody>, LeanError> {
        loop {
            let parsed = match parse_head(&self.buf, &mut self.spans) {
                Ok(Some(parsed)) => parsed,
                Ok(None) if self.buf.len() >= MAX_HEAD => {
                    return Err(LeanError::Sent(format!("response head larger than {MAX_HEAD} bytes")));
                }
                Ok(None) => {
                    self.buf.reserve(READ_CHUNK);
                    match self.io.read_buf(&mut self.buf).await {
                        Ok(0) if self.buf.is_empty() => {
                            return Err(LeanError::Sent("the endpoint closed the connection before answering".into()));
                        }
                        Ok(0) => return Err(LeanError::Sent("the endpoint closed the connection mid-head".into())),
                        Ok(_) => continue,
                        Err(e) => return Err(LeanError::Sent(format!("read the response: {e}"))),
                    }
                }
                Err(e) => return Err(LeanError::Sent(e)),
            };
            // Interim answers (103 Early Hints and the like) are skipped.
            if (100..200).contains(&parsed.code) && parsed.code != 101 {
                self.buf.advance(parsed.len);
                continue;
            }
            return self.response(parsed, method, home).map_err(LeanError::Sent);
        }
    }

    async fn write(&mut self, head: &[u8]) -> io::Result<()> {
        self.io.write_all(head).await?;
        self.io.flush().await
    }

    /// The response of a parsed head: its status and headers, and a body
    /// that carries the connection on. The headers that frame the body are
    /// read as the map is built: no lookup afterwards.
    fn response(mut self, parsed: Parsed, method: &Method, home: Home) -> Result<Response<LeanBody>, String> {
        if parsed.code == 101 {
            return Err("the endpoint switched protocols unasked".into());
        }
        let status = StatusCode::from_u16(parsed.code).map_err(|_| format!("bad status {}", parsed.code))?;
        let head = self.buf.split_to(parsed.len).freeze();
        let mut headers = HeaderMap::with_capacity(self.spans.len());
        let mut frame = Framed::default();
        for span in &self.spans {
            let name = HeaderName::from_bytes(&head[span.name.0 as usize..span.name.1 as usize])
                .map_err(|_| "bad header name in the response".to_owned())?;
            let value = HeaderValue::from_maybe_shared(head.slice(span.value.0 as usize..span.value.1 as usize))
                .map_err(|_| format!("bad value of header {name} in the response"))?;
            // The front would remove it at once (hop-by-hop): not added.
            if frame.see(&name, value.as_bytes()) {
                continue;
            }
            headers.append(name, value);
        }
        let version = if parsed.minor == 0 { Version::HTTP_10 } else { Version::HTTP_11 };
        let mut keep = if version == Version::HTTP_10 { frame.keep_alive } else { !frame.close };
        let framing =
            if *method == Method::HEAD || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED {
                Framing::Length(0)
            } else if frame.transfer_encoding {
                // RFC 9112 §6.3: the transfer coding frames the message; a
                // Content-Length beside it is ignored and the connection
                // closes after it, as it does when chunked is not the last
                // coding (the body then ends at the close).
                if frame.length.is_some() {
                    headers.remove(CONTENT_LENGTH);
                    keep = false;
                }
                if frame.chunked {
                    Framing::Chunked(Chunk::Size)
                } else {
                    keep = false;
                    Framing::Close
                }
            } else if let Some(length) = frame.length {
                Framing::Length(length.ok_or("bad Content-Length in the response")?)
            } else {
                keep = false;
                Framing::Close
            };
        let mut response = Response::new(());
        *response.status_mut() = status;
        *response.version_mut() = version;
        *response.headers_mut() = headers;
        let mut body = LeanBody { conn: Some(self), framing, keep, trailers: None, home: Some(home) };
        body.settle();
        Ok(response.map(|()| body))
    }
}

/// A parsed response head: its length, status and version (its header
/// lines are in [`LeanConn::spans`]).
struct Parsed {
    len: usize,
    code: u16,
    minor: u8,
}

/// Where a header line's name and value are in the head.
#[derive(Clone, Copy)]
struct Span {
    name: (u32, u32),
    value: (u32, u32),
}

/// Parses the response head at the start of `buf`, its header lines into
/// `spans`: `None` while it is not all there.
fn parse_head(buf: &[u8], spans: &mut Vec<Span>) -> Result<Option<Parsed>, String> {
    let mut slots = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut response = httparse::Response::new(&mut []);
    let parsed = httparse::ParserConfig::default().parse_response_with_uninit_headers(&mut response, buf, &mut slots);
    let len = match parsed {
        Ok(httparse::Status::Complete(len)) if len <= MAX_HEAD => len,
        Ok(httparse::Status::Complete(_)) => return Err(format!("response head larger than {MAX_HEAD} bytes")),
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(format!("bad response head: {e}")),
    };
    // Offsets within the head (at most MAX_HEAD: they fit).
    let base = buf.as_ptr() as usize;
    let offset = |at: usize| u32::try_from(at).expect("within the head, at most MAX_HEAD");
    let at = |s: &[u8]| {
        let start = s.as_ptr() as usize - base;
        (offset(start), offset(start + s.len()))
    };
    spans.clear();
    spans.extend(response.headers.iter().map(|h| Span { name: at(h.name.as_bytes()), value: at(h.value) }));
    Ok(Some(Parsed { len, code: response.code.unwrap_or(0), minor: response.version.unwrap_or(1) }))
}

/// What a response head's headers say about its framing and connection.
#[derive(Default)]
struct Framed {
    /// `Content-Length`: the length all its values agree on, or `Some(None)`
    /// when they do not (or one is no number).
    length: Option<Option<u64>>,
    transfer_encoding: bool,
    /// The last transfer coding is `chunked`.
    chunked: bool,
    /// `Connection` lists `close` / `keep-alive`.
    close: bool,
    keep_alive: bool,
}

impl Framed {
    /// Notes what header `name: value` says; true when it only concerns
    /// this hop and names no other header (`Connection: keep-alive` or
    /// `close`, `Keep-Alive`), so the response need not carry it.
    fn see(&mut self, name: &HeaderName, value: &[u8]) -> bool {
        let list = || value.split(|&b| b == b',').map(<[u8]>::trim_ascii);
        if name == CONTENT_LENGTH {
            for part in list() {
                let n = content_length(part);
                self.length = match self.length {
                    None => Some(n),
                    Some(earlier) => Some(earlier.filter(|_| earlier == n)),
                };
            }
        } else if name == TRANSFER_ENCODING {
            self.transfer_encoding = true;
            self.chunked = list().next_back().is_some_and(|c| c.eq_ignore_ascii_case(b"chunked"));
        } else if name == CONNECTION {
            let mut others = false;
            for token in list() {
                let close = token.eq_ignore_ascii_case(b"close");
                let keep_alive = token.eq_ignore_ascii_case(b"keep-alive");
                self.close |= close;
                self.keep_alive |= keep_alive;
                others |= !close && !keep_alive;
            }
            return !others;
        } else if name.as_str() == "keep-alive" {
            return true;
        }
        false
    }
}

/// A `Content-Length` value: decimal digits only.
pub(crate) fn content_length(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() || digits.len() > 19 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(digits.iter().fold(0, |n, &d| n * 10 + u64::from(d - b'0')))
}

/// The request head for an HTTP/1.1 endpoint, into `head`: the client's
/// method, target in origin form, and headers (hop-by-hop ones already
/// gone), with a `Host` when the client sent none (its URI's authority,
/// else the endpoint's address).
pub fn encode_head(parts: &Parts, addr: SocketAddr, head: &mut Vec<u8>) {
    head.clear();
    let target = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    head.extend_from_slice(parts.method.as_str().as_bytes());
    head.push(b' ');
    head.extend_from_slice(target.as_bytes());
    head.extend_from_slice(b" HTTP/1.1\r\n");
    let mut host = false;
    for (name, value) in &parts.headers {
        host |= name == HOST;
        encode_field(head, name, value);
    }
    if !host {
        head.extend_from_slice(b"host: ");
        match parts.uri.authority() {
            Some(authority) => head.extend_from_slice(authority.as_str().as_bytes()),
            None => head.extend_from_slice(addr.to_string().as_bytes()),
        }
        head.extend_from_slice(b"\r\n");
    }
    head.extend_from_slice(b"\r\n");
}

/// One header line, `name: value` and CRLF (request heads here, response
/// heads in the lean front).
pub(crate) fn encode_field(out: &mut Vec<u8>, name: &HeaderName, value: &HeaderValue) {
    out.extend_from_slice(name.as_str().as_bytes());
    out.extend_from_slice(b": ");
    out.extend_from_slice(value.as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// How the response body is delimited, and how far it was read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Framing {
    /// This many bytes still to come.
    Length(u64),
    Chunked(Chunk),
    /// Until the endpoint closes.
    Close,
    /// Ended cleanly.
    Done,
}

/// Where a chunked body's decoder is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Chunk {
    /// A chunk-size line next.
    Size,
    /// This many bytes of chunk data to come.
    Data(u64),
    /// The CRLF after a chunk's data.
    DataEnd,
    /// Trailer lines, up to an empty one.
    Trailers,
}

/// The body of a lean response: read from the endpoint's connection as it
/// is polled; the connection goes back to its pool once the body ended
/// cleanly.
pub struct LeanBody {
    /// Taken once the body ended (pooled, or closed).
    conn: Option<LeanConn>,
    framing: Framing,
    /// The endpoint keeps the connection open after this response.
    keep: bool,
    /// Boxed: most bodies have none.
    trailers: Option<Box<HeaderMap>>,
    home: Option<Home>,
}

impl std::fmt::Debug for LeanBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeanBody").field("framing", &self.framing).field("keep", &self.keep).finish_non_exhaustive()
    }
}

type BodyError = Box<dyn std::error::Error + Send + Sync>;

fn failed(what: &str) -> BodyError {
    Box::new(io::Error::new(io::ErrorKind::UnexpectedEof, format!("endpoint's response body: {what}")))
}

impl LeanBody {
    /// Ends the body if it already has: the connection goes home now, not
    /// when the body is dropped.
    fn settle(&mut self) {
        if self.framing == Framing::Length(0) {
            self.framing = Framing::Done;
        }
        if self.framing == Framing::Done
            && let Some(conn) = self.conn.take()
            && self.keep
            && conn.buf.is_empty()
            && let Some(home) = self.home.take()
        {
            home.park(conn);
        }
    }

    /// Reads more of the body into the buffer; `Ok(false)` at the
    /// endpoint's close.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<Result<bool, BodyError>> {
        let conn = self.conn.as_mut().ok_or_else(|| failed("read after its end"))?;
        if conn.buf.capacity() - conn.buf.len() < READ_CHUNK {
            conn.buf.reserve(READ_CHUNK);
        }
        let n = ready!(poll_read_buf(Pin::new(&mut conn.io), cx, &mut conn.buf))?;
        Poll::Ready(Ok(n > 0))
    }

    fn buf(&mut self) -> &mut BytesMut {
        &mut self.conn.as_mut().expect("a body not ended has its connection").buf
    }

    fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        loop {
            match self.framing {
                Framing::Done => return Poll::Ready(self.trailers.take().map(|t| Ok(Frame::trailers(*t)))),
                Framing::Length(left) => {
                    if self.buf().is_empty() && !ready!(self.poll_fill(cx))? {
                        return Poll::Ready(Some(Err(failed("the endpoint closed before its end"))));
                    }
                    let buf = self.buf();
                    let n = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
                    let data = buf.split_to(n).freeze();
                    self.framing = Framing::Length(left - n as u64);
                    self.settle();
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Framing::Close => {
                    if self.buf().is_empty() && !ready!(self.poll_fill(cx))? {
                        self.framing = Framing::Done;
                        self.conn = None;
                        continue;
                    }
                    let data = self.buf().split().freeze();
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Framing::Chunked(chunk) => {
                    if let Some(frame) = ready!(self.poll_chunked(chunk, cx))? {
                        return Poll::Ready(Some(Ok(frame)));
                    }
                }
            }
        }
    }

    /// One step of the chunked decoder: a data frame, or `None` when it
    /// moved on without one.
    fn poll_chunked(&mut self, chunk: Chunk, cx: &mut Context<'_>) -> Poll<Result<Option<Frame<Bytes>>, BodyError>> {
        let buf = self.buf();
        let step = match chunk {
            Chunk::Size => match httparse::parse_chunk_size(buf) {
                Ok(httparse::Status::Complete((used, size))) => {
                    buf.advance(used);
                    Some(if size == 0 { Chunk::Trailers } else { Chunk::Data(size) })
                }
                Ok(httparse::Status::Partial) if buf.len() < MAX_CHUNK_LINE => None,
                _ => return Poll::Ready(Err(failed("bad chunk size"))),
            },
            Chunk::Data(left) if !buf.is_empty() => {
                let n = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
                let data = buf.split_to(n).freeze();
                let left = left - n as u64;
                self.framing = Framing::Chunked(if left == 0 { Chunk::DataEnd } else { Chunk::Data(left) });
                return Poll::Ready(Ok(Some(Frame::data(data))));
            }
            Chunk::Data(_) => None,
            Chunk::DataEnd if buf.len() >= 2 => {
                if &buf[..2] != b"\r\n" {
                    return Poll::Ready(Err(failed("no CRLF after a chunk")));
                }
                buf.advance(2);
                Some(Chunk::Size)
            }
            Chunk::DataEnd => None,
            Chunk::Trailers => match buf.windows(2).position(|w| w == b"\r\n") {
                Some(0) => {
                    buf.advance(2);
                    self.framing = Framing::Done;
                    self.settle();
                    return Poll::Ready(Ok(None));
                }
                Some(end) => {
                    let line = buf.split_to(end + 2);
                    self.trailer(&line[..end])?;
                    Some(Chunk::Trailers)
                }
                None if buf.len() < MAX_HEAD => None,
                None => return Poll::Ready(Err(failed("trailers too large"))),
            },
        };
        match step {
            Some(next) => self.framing = Framing::Chunked(next),
            None => {
                if !ready!(self.poll_fill(cx))? {
                    return Poll::Ready(Err(failed("the endpoint closed before its end")));
                }
            }
        }
        Poll::Ready(Ok(None))
    }

    /// Keeps one trailer line (`name: value`).
    fn trailer(&mut self, line: &[u8]) -> Result<(), BodyError> {
        let colon = line.iter().position(|&b| b == b':').ok_or_else(|| failed("bad trailer line"))?;
        let name = HeaderName::from_bytes(&line[..colon]).map_err(|_| failed("bad trailer name"))?;
        let value = HeaderValue::from_bytes(line[colon + 1..].trim_ascii()).map_err(|_| failed("bad trailer value"))?;
        self.trailers.get_or_insert_with(Box::default).append(name, value);
        Ok(())
    }
}

impl Body for LeanBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = self.get_mut();
        let polled = this.poll_next(cx);
        if let Poll::Ready(Some(Err(_))) = polled {
            // A broken body leaves the connection in an unknown state.
            this.conn = None;
            this.framing = Framing::Done;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.framing == Framing::Done && self.trailers.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        match self.framing {
            Framing::Length(left) => SizeHint::with_exact(left),
            Framing::Done if self.trailers.is_none() => SizeHint::with_exact(0),
            _ => SizeHint::default(),
        }
    }
}

/// Where a connection goes back to: its endpoint's idle lean connections.
pub struct Home {
    pub idle: Arc<LeanIdle>,
    pub thread: ThreadId,
    /// `maxIdlePerEndpoint`: idle connections kept per worker thread.
    pub max: usize,
    /// `upstreamIdleTimeout` (zero: none).
    pub idle_timeout: Duration,
}

impl Home {
    fn park(self, conn: LeanConn) {
        self.idle.park(conn, self.thread, self.max, self.idle_timeout);
    }
}

/// One endpoint's idle lean connections, each with its worker thread and
/// since when it is idle. A sweeper task, running while the list is not
/// empty, closes those idle for `upstreamIdleTimeout`.
#[derive(Default)]
pub struct LeanIdle {
    parked: Mutex<Parked>,
}

#[derive(Default)]
struct Parked {
    conns: Vec<(ThreadId, LeanConn, Instant)>,
    sweeping: bool,
}

/// Idle connections are found by looking this many times per
/// `upstreamIdleTimeout`.
const IDLE_LOOKS: u32 = 4;

impl LeanIdle {
    fn lock(&self) -> MutexGuard<'_, Parked> {
        self.parked.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A live idle connection of `thread`, the most recently used first;
    /// dead ones found on the way are closed.
    pub fn checkout(&self, thread: ThreadId) -> Option<LeanConn> {
        loop {
            let mut conn = {
                let mut parked = self.lock();
                let at = parked.conns.iter().rposition(|(t, _, _)| *t == thread)?;
                parked.conns.remove(at).1
            };
            if !conn.is_dead() {
                return Some(conn);
            }
        }
    }

    fn park(self: &Arc<Self>, conn: LeanConn, thread: ThreadId, max: usize, idle_timeout: Duration) {
        // Outside a runtime (one shutting down), there is no sweeper to run.
        let Ok(runtime) = tokio::runtime::Handle::try_current() else { return };
        let mut parked = self.lock();
        if parked.conns.iter().filter(|(t, _, _)| *t == thread).count() >= max {
            return;
        }
        parked.conns.push((thread, conn, Instant::now()));
        if !parked.sweeping && !idle_timeout.is_zero() {
            parked.sweeping = true;
            runtime.spawn(sweep(Arc::downgrade(self), idle_timeout));
        }
    }

    /// Idle connections now (all threads).
    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().conns.len()
    }
}

/// Closes `idle`'s connections idle for `timeout`, until none is left.
async fn sweep(idle: Weak<LeanIdle>, timeout: Duration) {
    let look = (timeout / IDLE_LOOKS).max(Duration::from_millis(1));
    loop {
        tokio::time::sleep(look).await;
        let Some(idle) = idle.upgrade() else { return };
        let mut parked = idle.lock();
        let now = Instant::now();
        parked.conns.retain(|(_, _, since)| now.saturating_duration_since(*since) < timeout);
        if parked.conns.is_empty() {
            parked.sweeping = false;
            return;
        }
    }
}

#[cfg(test)]
mod tests;

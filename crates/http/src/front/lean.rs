//! The lean HTTP/1.1 front: requests without a body (a keep-alive client's
//! GETs, the bulk of what services ask each other), read, answered and
//! written by the connection's own task, without hyper's server.
//!
//! hyper's HTTP/1.1 server costs about 7,800 instructions a request (its
//! dispatch state machine, `HeaderMap` building, the response encoder and
//! its buffered writes: 31% of the agent's work per request in session 13's
//! callgrind profile). This module parses the head with httparse (hyper's
//! own parser) into a request whose header values share one buffer, hands
//! it to the same [`handle`] as hyper's service does (so headers, metrics,
//! errors and timers are the same), and writes the response head and body
//! in as few writes as the body allows.
//!
//! Anything else goes to hyper, for the rest of the connection, starting
//! with the bytes already read (served first by the connection's IO): the HTTP/2 preface, a request
//! with a body or `Expect`, an upgrade (`Upgrade: websocket`, `h2c`),
//! HTTP/1.0, `CONNECT`, a target not in origin form, and every head that
//! does not parse or is over a limit, which hyper answers (400, 431) and
//! counts as before.

use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use hyper::body::{Body, Frame};
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::{Method, Request, StatusCode, Uri, Version};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio_util::io::poll_read_buf;

use super::connection::{ConnState, FrontResponse, handle, is_http2_preface_start};
use super::metrics::PortHandles;
use super::{MIN_HEADER_BYTES, Shared};
use crate::dispatch::lean::{content_length, encode_field};
use crate::{RequestBody, RequestContext};

/// Most header lines a lean request may have; a request with more (when
/// `http.maxHeaders` allows more) goes to hyper.
const MAX_LEAN_HEADERS: usize = 128;
/// What one read of the client asks for at least.
const READ_CHUNK: usize = 4 * 1024;
/// Response bytes gathered before they are written; a body frame larger
/// than this is written on its own.
const WRITE_GATHER: usize = 16 * 1024;

/// How the lean front left a connection.
pub(super) enum LeanEnd<S> {
    /// It is over: the client closed it or asked to, or the front was told
    /// to stop (drain, idle timeout).
    Closed,
    /// A request the lean front does not serve: hyper serves the rest of
    /// the connection, from the bytes already read (the second field).
    Handoff(S, Bytes),
}

/// Serves `io`'s requests until one is not lean; [`ConnState::stop_lean`]
/// closes it once no request is in flight. (A flag, not a token: the
/// connection's own task sets it and polls this future again at once, so
/// nothing needs waking.)
pub(super) async fn serve<S>(
    mut io: S,
    front: Arc<Shared>,
    ctx: Arc<RequestContext>,
    state: Arc<ConnState>,
    handles: Arc<PortHandles>,
) -> io::Result<LeanEnd<S>>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let max_head = front.config.max_header_bytes.max(MIN_HEADER_BYTES);
    let max_headers = front.config.max_headers.min(MAX_LEAN_HEADERS);
    let mut buf = BytesMut::new();
    let mut spans = Vec::new();
    let mut out = Vec::new();
    let mut first = true;
    loop {
        // One request head, whole.
        let parsed = loop {
            if !buf.is_empty() {
                if first && is_http2_preface_start(&buf) {
                    return Ok(LeanEnd::Handoff(io, buf.freeze()));
                }
                match parse(&buf, max_headers, &mut spans) {
                    Parse::Lean(parsed) => break parsed,
                    Parse::Partial if buf.len() < max_head => {}
                    Parse::Partial | Parse::Other => return Ok(LeanEnd::Handoff(io, buf.freeze())),
                }
            }
            buf.reserve(READ_CHUNK);
            let read = std::future::poll_fn(|cx| {
                if buf.is_empty() && state.stopping() {
                    return Poll::Ready(None);
                }
                poll_read_buf(Pin::new(&mut io), cx, &mut buf).map(Some)
            })
            .await;
            let Some(read) = read.transpose()? else { return Ok(LeanEnd::Closed) };
            if read == 0 {
                // A partial head: hyper answers it as it always has.
                return Ok(if buf.is_empty() { LeanEnd::Closed } else { LeanEnd::Handoff(io, buf.freeze()) });
            }
        };
        first = false;
        let head = buf.split_to(parsed.len).freeze();
        let Some(req) = request(&head, &parsed, &spans) else {
            // Not a request hyper's server would take either: it answers.
            let mut rest = BytesMut::with_capacity(head.len() + buf.len());
            rest.extend_from_slice(&head);
            rest.extend_from_slice(&buf);
            return Ok(LeanEnd::Handoff(io, rest.freeze()));
        };
        drop(head);
        let head_only = req.method() == Method::HEAD;
        let response = match handle(front.clone(), ctx.clone(), state.clone(), handles.clone(), req).await {
            Ok(response) => response,
            Err(never) => match never {},
        };
        let close = parsed.close || state.stopping();
        let kept = write_response(&mut io, &mut out, response, head_only, close, parsed.trailers).await?;
        if close || !kept || state.stopping() {
            io.shutdown().await.ok();
            return Ok(LeanEnd::Closed);
        }
    }
}

/// What [`parse`] made of the bytes read.
enum Parse {
    /// A whole head, of a request the lean front serves.
    Lean(Parsed),
    /// Not all of the head yet.
    Partial,
    /// Anything else: hyper's.
    Other,
}

/// A lean request head: where its parts are, and what it says about the
/// connection.
struct Parsed {
    len: usize,
    method: Span,
    path: Span,
    /// `Connection: close`.
    close: bool,
    /// `TE: trailers`: the client takes a response's trailers.
    trailers: bool,
}

/// Where a run of bytes is in the head.
#[derive(Clone, Copy)]
struct Span(u32, u32);

impl Span {
    fn of(base: &[u8], part: &[u8]) -> Self {
        let start = part.as_ptr() as usize - base.as_ptr() as usize;
        let offset = |at: usize| u32::try_from(at).expect("within a head, at most maxHeaderBytes");
        Span(offset(start), offset(start + part.len()))
    }

    fn range(self) -> std::ops::Range<usize> {
        self.0 as usize..self.1 as usize
    }
}

/// Parses the request head at the start of `buf`, its header lines into
/// `spans` (name, value).
fn parse(buf: &[u8], max_headers: usize, spans: &mut Vec<(Span, Span)>) -> Parse {
    let mut slots = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_LEAN_HEADERS];
    let mut req = httparse::Request::new(&mut []);
    let len = match httparse::ParserConfig::default().parse_request_with_uninit_headers(
        &mut req,
        buf,
        &mut slots[..max_headers],
    ) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Parse::Partial,
        Err(_) => return Parse::Other,
    };
    let (Some(method), Some(path), Some(1)) = (req.method, req.path, req.version) else { return Parse::Other };
    if method == "CONNECT" || !path.starts_with('/') {
        return Parse::Other;
    }
    let (mut close, mut trailers) = (false, false);
    spans.clear();
    for h in req.headers.iter() {
        let name = h.name.as_bytes();
        let value = h.value;
        let tokens = || value.split(|&b| b == b',').map(<[u8]>::trim_ascii);
        if name.eq_ignore_ascii_case(b"content-length") {
            if value.trim_ascii() != b"0" {
                return Parse::Other;
            }
        } else if name.eq_ignore_ascii_case(b"transfer-encoding")
            || name.eq_ignore_ascii_case(b"upgrade")
            || name.eq_ignore_ascii_case(b"expect")
        {
            return Parse::Other;
        } else if name.eq_ignore_ascii_case(b"connection") {
            close |= tokens().any(|t| t.eq_ignore_ascii_case(b"close"));
        } else if name.eq_ignore_ascii_case(b"te") {
            trailers |= tokens().any(|t| {
                t.split(|&b| b == b';').next().is_some_and(|t| t.trim_ascii().eq_ignore_ascii_case(b"trailers"))
            });
        }
        spans.push((Span::of(buf, name), Span::of(buf, value)));
    }
    Parse::Lean(Parsed {
        len,
        method: Span::of(buf, method.as_bytes()),
        path: Span::of(buf, path.as_bytes()),
        close,
        trailers,
    })
}

/// The request of a parsed head; its header values share `head`. `None`
/// when a part is not valid as `http` has it (hyper's server answers 400).
fn request(head: &Bytes, parsed: &Parsed, spans: &[(Span, Span)]) -> Option<Request<RequestBody>> {
    let method = Method::from_bytes(&head[parsed.method.range()]).ok()?;
    let uri = Uri::from_maybe_shared(head.slice(parsed.path.range())).ok()?;
    // Room for the forwarding headers the front adds: no rehash then.
    let mut headers = HeaderMap::with_capacity(spans.len() + 3);
    for &(name, value) in spans {
        let name = HeaderName::from_bytes(&head[name.range()]).ok()?;
        let value = HeaderValue::from_maybe_shared(head.slice(value.range())).ok()?;
        headers.append(name, value);
    }
    let mut req = Request::new(RequestBody::Empty);
    *req.method_mut() = method;
    *req.uri_mut() = uri;
    *req.version_mut() = Version::HTTP_11;
    *req.headers_mut() = headers;
    Some(req)
}

/// How the response body is delimited for the client.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Framing {
    /// None (`HEAD`, 1xx, 204, 304).
    None,
    Length(u64),
    Chunked,
}

/// Writes `response` to the client; `Ok(false)` when the connection must
/// close after it (the body failed, or did not match its length).
async fn write_response<S>(
    io: &mut S,
    out: &mut Vec<u8>,
    response: FrontResponse,
    head_only: bool,
    close: bool,
    trailers_ok: bool,
) -> io::Result<bool>
where
    S: AsyncWrite + Unpin,
{
    let (parts, mut body) = response.into_parts();
    let status = parts.status;
    let bodyless = head_only
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;
    out.clear();
    let framing = encode_head(out, status, &parts.headers, bodyless, body.size_hint().exact(), close);
    let mut left = match framing {
        Framing::Length(length) => length,
        _ => 0,
    };
    let mut clean = true;
    if framing != Framing::None {
        loop {
            // A frame ready now joins the bytes gathered; otherwise what is
            // gathered goes out before waiting (a streaming response is not
            // held back).
            let frame = match std::future::poll_fn(|cx| Poll::Ready(poll_frame(&mut body, cx))).await {
                Poll::Ready(frame) => frame,
                Poll::Pending => {
                    flush(io, out).await?;
                    std::future::poll_fn(|cx| poll_frame(&mut body, cx)).await
                }
            };
            let frame = match frame {
                None => break,
                Some(Ok(frame)) => frame,
                Some(Err(error)) => {
                    tracing::debug!(%error, "endpoint's response body failed: closing the client connection");
                    clean = false;
                    break;
                }
            };
            match frame.into_data() {
                Ok(data) if data.is_empty() => {}
                Ok(mut data) => {
                    if framing == Framing::Chunked {
                        write_chunk_size(out, data.len());
                    } else {
                        // More than the length said: cut, and close after.
                        let fits = usize::try_from(left).unwrap_or(usize::MAX).min(data.len());
                        clean &= fits == data.len();
                        data.truncate(fits);
                        left -= fits as u64;
                    }
                    if data.len() >= WRITE_GATHER {
                        if !out.is_empty() {
                            io.write_all(out).await?;
                            out.clear();
                        }
                        io.write_all(&data).await?;
                    } else {
                        out.extend_from_slice(&data);
                    }
                    if framing == Framing::Chunked {
                        out.extend_from_slice(b"\r\n");
                    }
                }
                Err(frame) => {
                    if framing == Framing::Chunked
                        && trailers_ok
                        && let Ok(trailers) = frame.into_trailers()
                    {
                        out.extend_from_slice(b"0\r\n");
                        encode_fields(out, &trailers);
                        out.extend_from_slice(b"\r\n");
                        flush(io, out).await?;
                        return Ok(clean);
                    }
                }
            }
        }
        match framing {
            Framing::Chunked if clean => out.extend_from_slice(b"0\r\n\r\n"),
            // Short of its length: the client must not take it as whole.
            Framing::Length(_) => clean &= left == 0,
            _ => {}
        }
    }
    drop(body);
    flush(io, out).await?;
    Ok(clean)
}

fn poll_frame<B>(body: &mut B, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, B::Error>>>
where
    B: Body<Data = Bytes> + Unpin,
{
    Pin::new(body).poll_frame(cx)
}

/// Writes what is gathered, and flushes: a TLS session holds records back
/// until then (a socket's flush costs nothing).
async fn flush<S: AsyncWrite + Unpin>(io: &mut S, out: &mut Vec<u8>) -> io::Result<()> {
    if !out.is_empty() {
        io.write_all(out).await?;
        out.clear();
    }
    io.flush().await
}

/// The status line and header section of a response, as hyper's server
/// writes them: a `Date` if the response has none, the framing header, and
/// `Connection: close` when the connection closes after it. Returns how
/// the body is framed: none when `bodyless`, else by the response's
/// `Content-Length` (the first that is a number; the others are left out),
/// else by the body's `exact` length, else chunked. One pass over the
/// headers: no lookup by name.
fn encode_head(
    out: &mut Vec<u8>,
    status: StatusCode,
    headers: &HeaderMap,
    bodyless: bool,
    exact: Option<u64>,
    close: bool,
) -> Framing {
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("<none>").as_bytes());
    out.extend_from_slice(b"\r\n");
    let (mut date, mut length) = (false, None);
    for (name, value) in headers {
        if *name == header::CONTENT_LENGTH && !bodyless {
            match content_length(value.as_bytes()) {
                Some(n) if length.is_none() => length = Some(n),
                _ => continue,
            }
        } else if *name == header::DATE {
            date = true;
        }
        encode_field(out, name, value);
    }
    if !date {
        out.extend_from_slice(b"date: ");
        date::write(out);
        out.extend_from_slice(b"\r\n");
    }
    let framing = match (bodyless, length, exact) {
        (true, _, _) => Framing::None,
        (false, Some(length), _) => Framing::Length(length),
        (false, None, Some(exact)) => {
            out.extend_from_slice(b"content-length: ");
            out.extend_from_slice(itoa::Buffer::new().format(exact).as_bytes());
            out.extend_from_slice(b"\r\n");
            Framing::Length(exact)
        }
        (false, None, None) => {
            out.extend_from_slice(b"transfer-encoding: chunked\r\n");
            Framing::Chunked
        }
    };
    if close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    framing
}

fn encode_fields(out: &mut Vec<u8>, fields: &HeaderMap) {
    for (name, value) in fields {
        encode_field(out, name, value);
    }
}

/// A chunk's size line (hex digits and CRLF).
fn write_chunk_size(out: &mut Vec<u8>, len: usize) {
    let mut digits = [0u8; 16];
    let (mut n, mut at) = (len, digits.len());
    loop {
        at -= 1;
        digits[at] = b"0123456789abcdef"[n & 15];
        n >>= 4;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[at..]);
    out.extend_from_slice(b"\r\n");
}

/// The `Date` header's value, made once a second per thread.
mod date {
    use std::cell::RefCell;
    use std::time::{SystemTime, UNIX_EPOCH};

    thread_local! {
        static CACHED: RefCell<(u64, String)> = const { RefCell::new((u64::MAX, String::new())) };
    }

    pub(super) fn write(out: &mut Vec<u8>) {
        let now = SystemTime::now();
        let second = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        CACHED.with_borrow_mut(|(at, text)| {
            if *at != second {
                *at = second;
                *text = httpdate::fmt_http_date(now);
            }
            out.extend_from_slice(text.as_bytes());
        });
    }
}

#[cfg(test)]
mod tests;

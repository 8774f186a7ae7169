//! The HTTP request header a header-keyed consistent hash needs, read with
//! `MSG_PEEK` from the first request on a connection.

use std::time::Duration;

use tokio::net::TcpStream;

/// How long a connection may take to send the request headers that a
/// header-keyed hash needs.
pub const HEADER_PEEK_WAIT: Duration = Duration::from_millis(200);
/// How much of the request is looked at for the header.
pub const HEADER_PEEK_MAX: usize = 8192;

/// The value of header `name` in the first HTTP/1 request on `stream`, read
/// with `MSG_PEEK` so the backend still receives every byte.
pub(super) async fn peek_header(stream: &TcpStream, name: &str) -> Option<Vec<u8>> {
    let deadline = tokio::time::Instant::now() + HEADER_PEEK_WAIT;
    let mut buf = vec![0u8; HEADER_PEEK_MAX];
    loop {
        let n = tokio::time::timeout_at(deadline, stream.peek(&mut buf)).await.ok()?.ok()?;
        if n == 0 {
            return None;
        }
        match find_header(&buf[..n], name) {
            Header::Found(v) => return Some(v.to_vec()),
            Header::Absent => return None,
            Header::Incomplete if n == buf.len() => return None,
            Header::Incomplete => {}
        }
        // More of the request is on its way: peek again shortly (peek
        // returns at once while any byte is queued, so wait rather than spin).
        let next = tokio::time::Instant::now() + Duration::from_millis(2);
        if next >= deadline {
            return None;
        }
        tokio::time::sleep_until(next).await;
    }
}

/// What the start of a byte stream says about one request header.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Header<'a> {
    /// The header's value (first occurrence, surrounding blanks trimmed).
    Found(&'a [u8]),
    /// The request's headers end without it, or this is not HTTP/1.
    Absent,
    /// The headers have not all arrived yet.
    Incomplete,
}

/// Looks for header `name` (case-insensitive) in an HTTP/1 request head.
pub(crate) fn find_header<'a>(data: &'a [u8], name: &str) -> Header<'a> {
    let mut start = 0;
    let mut request_line = true;
    loop {
        let Some(nl) = data[start..].iter().position(|&b| b == b'\n') else {
            // No whole line yet: wait only while the request line could
            // still be HTTP.
            let looks_http = !request_line || data.iter().take(16).all(|b| b.is_ascii_graphic() || *b == b' ');
            return if looks_http { Header::Incomplete } else { Header::Absent };
        };
        let line = &data[start..start + nl];
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        start += nl + 1;
        if request_line {
            if !line.windows(7).any(|w| w == b" HTTP/1") {
                return Header::Absent;
            }
            request_line = false;
            continue;
        }
        if line.is_empty() {
            return Header::Absent;
        }
        if let Some(colon) = line.iter().position(|&b| b == b':')
            && line[..colon].eq_ignore_ascii_case(name.as_bytes())
        {
            return Header::Found(line[colon + 1..].trim_ascii());
        }
    }
}

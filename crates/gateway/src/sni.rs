//! The server name (SNI) of a TLS ClientHello, read without terminating
//! TLS, for `TLS` `Passthrough` listeners.
//!
//! The parser is pure and bounds-checked: every length is checked against
//! what is left before it is used, so truncated, oversized or hostile input
//! is `Incomplete` or `Invalid`, never a panic. A ClientHello split over
//! several handshake records is joined, up to [`MAX_HELLO`] bytes of
//! records. [`peek_server_name`] peeks at a socket (`MSG_PEEK`: nothing is
//! consumed, so the bytes are forwarded as they came) until the hello is
//! complete, within a deadline.

use std::time::Duration;

use tokio::net::TcpStream;

/// The most bytes of records read for one ClientHello: a hello is one
/// record of at most 16 KiB in practice; its header and a second
/// record's header fit in the margin.
pub const MAX_HELLO: usize = 16 * 1024 + 64;

const RECORD_HANDSHAKE: u8 = 22;
const HANDSHAKE_CLIENT_HELLO: u8 = 1;
const EXTENSION_SERVER_NAME: u16 = 0;
const NAME_TYPE_HOST: u8 = 0;

/// What the start of a connection says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Hello {
    /// More bytes are needed.
    Incomplete,
    /// Not a TLS ClientHello (why).
    Invalid(&'static str),
    /// A complete ClientHello, and its server name (lowercase), if any.
    Complete(Option<String>),
}

/// Reads the server name of the ClientHello at the start of `data`.
pub fn parse(data: &[u8]) -> Hello {
    let mut handshake = Vec::new();
    let mut rest = data;
    // Join the fragments of handshake records until the message is whole.
    loop {
        let Some(header) = rest.get(..5) else { return Hello::Incomplete };
        if header[0] != RECORD_HANDSHAKE {
            return Hello::Invalid("the first record is not a TLS handshake");
        }
        if header[1] != 3 {
            return Hello::Invalid("the record's version is not TLS");
        }
        let length = usize::from(u16::from_be_bytes([header[3], header[4]]));
        if length == 0 || length > 16 * 1024 + 256 {
            return Hello::Invalid("the handshake record's length is out of range");
        }
        let Some(fragment) = rest.get(5..5 + length) else { return Hello::Incomplete };
        handshake.extend_from_slice(fragment);
        rest = &rest[5 + length..];
        if handshake.len() >= 4 {
            if handshake[0] != HANDSHAKE_CLIENT_HELLO {
                return Hello::Invalid("the first handshake message is not a ClientHello");
            }
            let length = usize::from(handshake[1]) << 16 | usize::from(handshake[2]) << 8 | usize::from(handshake[3]);
            if length + 4 > MAX_HELLO {
                return Hello::Invalid("the ClientHello is larger than the gateway reads");
            }
            if handshake.len() >= length + 4 {
                return client_hello(&handshake[4..4 + length]);
            }
        }
        if data.len() - rest.len() >= MAX_HELLO {
            return Hello::Invalid("the ClientHello is larger than the gateway reads");
        }
    }
}

/// A byte cursor whose reads fail instead of panicking.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let (head, tail) = (self.0.get(..n)?, self.0.get(n..)?);
        self.0 = tail;
        Some(head)
    }

    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }

    fn u16(&mut self) -> Option<u16> {
        self.take(2).map(|b| u16::from_be_bytes([b[0], b[1]]))
    }

    /// A vector with a one- or two-byte length prefix.
    fn vec8(&mut self) -> Option<&'a [u8]> {
        let n = self.u8()?;
        self.take(usize::from(n))
    }

    fn vec16(&mut self) -> Option<&'a [u8]> {
        let n = self.u16()?;
        self.take(usize::from(n))
    }
}

/// The body of a complete ClientHello (RFC 8446 §4.1.2, RFC 6066 §3).
fn client_hello(body: &[u8]) -> Hello {
    let mut r = Reader(body);
    let fields = (|| {
        let _version = r.u16()?;
        let _random = r.take(32)?;
        let _session_id = r.vec8()?;
        let _cipher_suites = r.vec16()?;
        let _compression = r.vec8()?;
        Some(())
    })();
    if fields.is_none() {
        return Hello::Invalid("the ClientHello is truncated");
    }
    if r.0.is_empty() {
        return Hello::Complete(None); // no extensions at all
    }
    let Some(extensions) = r.vec16() else { return Hello::Invalid("the ClientHello's extensions are truncated") };
    let mut r = Reader(extensions);
    while !r.0.is_empty() {
        let (Some(kind), Some(data)) = (r.u16(), r.vec16()) else {
            return Hello::Invalid("a ClientHello extension is truncated");
        };
        if kind == EXTENSION_SERVER_NAME {
            return server_name(data);
        }
    }
    Hello::Complete(None)
}

/// The `server_name` extension's host name.
fn server_name(data: &[u8]) -> Hello {
    let mut r = Reader(data);
    let Some(list) = r.vec16() else { return Hello::Invalid("the server_name extension is truncated") };
    let mut r = Reader(list);
    while !r.0.is_empty() {
        let (Some(kind), Some(name)) = (r.u8(), r.vec16()) else {
            return Hello::Invalid("the server_name extension is truncated");
        };
        if kind != NAME_TYPE_HOST {
            continue;
        }
        let valid = !name.is_empty()
            && name.len() <= 253
            && name.iter().all(|b| b.is_ascii_alphanumeric() || *b == b'-' || *b == b'.' || *b == b'_');
        if !valid {
            return Hello::Invalid("the server name is not a DNS name");
        }
        let name = String::from_utf8_lossy(name).to_ascii_lowercase();
        return Hello::Complete(Some(name.trim_end_matches('.').to_owned()));
    }
    Hello::Complete(None)
}

/// Peeks at `stream` until its ClientHello is complete; its server name
/// (None: the hello names none), or why the connection is not served.
/// Nothing is consumed. The caller bounds the wait with a timeout.
pub async fn peek_server_name(stream: &TcpStream) -> Result<Option<String>, String> {
    // Most hellos fit in 4 KiB (a post-quantum key share included); the
    // buffer grows to MAX_HELLO only for one that does not.
    let mut buf = vec![0u8; 4096];
    let mut pause = Duration::from_millis(1);
    let mut seen = 0;
    loop {
        let n = stream.peek(&mut buf).await.map_err(|e| format!("reading the ClientHello: {e}"))?;
        if n == 0 {
            return Err("the client closed the connection before its ClientHello".to_owned());
        }
        match parse(&buf[..n]) {
            Hello::Complete(name) => return Ok(name),
            Hello::Invalid(why) => return Err(why.to_owned()),
            Hello::Incomplete if n == buf.len() && n >= MAX_HELLO => {
                return Err("the ClientHello is larger than the gateway reads".to_owned());
            }
            Hello::Incomplete if n == buf.len() => {
                buf.resize(MAX_HELLO, 0);
                continue;
            }
            Hello::Incomplete => {}
        }
        // Peek returns at once while any byte is queued: wait for more
        // rather than spin, longer while nothing new arrives.
        pause = if n > seen { Duration::from_millis(1) } else { (pause * 2).min(Duration::from_millis(50)) };
        seen = n;
        tokio::time::sleep(pause).await;
    }
}

#[cfg(test)]
mod tests;

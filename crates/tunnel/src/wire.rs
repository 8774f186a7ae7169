//! The wire formats of the edgemesh stream protocols.
//!
//! Hello (`/edgemesh/hello/1.0.0`, one per connection and direction, opened by each side):
//!
//! ```text
//! opener:   "EMH" | version u8 (1) | flags u8 | name_len u8 | name (1..=253 bytes, UTF-8)
//!                 | agent_len u8 | agent (0..=64 bytes, UTF-8, for logs)
//! acceptor: status u8 (0 accepted, 1 unknown node, 2 node bound to another peer, 3 malformed)
//! ```
//!
//! Flag bit 0 (keep open): the opener wants the connection kept (a bootstrap peer or relay);
//! both sides then hold the hello stream open until the connection ends, an open stream being
//! what keeps a libp2p connection from idling out on *both* sides. Other bits are ignored.
//!
//! Proxy streams (`/edgemesh/tcp/1.0.0`, `/edgemesh/udp/1.0.0`, one per proxied TCP
//! connection / UDP session):
//!
//! ```text
//! opener:   version u8 (1) | protocol u8 (1 tcp, 2 udp) | family u8 (4, 6, or 0: this node's host)
//!                 | address (4 or 16 bytes; none for 0) | port u16 BE | service_len u8 | service (UTF-8, for logs)
//! acceptor: reply u8 (see `Reply`)
//! then:     TCP: raw bytes both ways, half-close propagated;
//!           UDP: datagrams both ways, each `len u16 BE | payload`.
//! ```
//!
//! Family 0 (TCP only) asks for a port of the accepting node's own host (loopback), for the
//! SOCKS5 entry: the acceptor decides by its own list of allowed host ports. A peer from
//! before family 0 answers it with `BadRequest` (unknown family), never anything worse.
//!
//! Every length is bounded by its one-byte (or two-byte) field, so a hostile peer can make the
//! reader allocate at most 64 KiB; the callers put a time limit on each read.

use std::{
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    time::Duration,
};

use tokio::io::{AsyncRead, AsyncReadExt};

use crate::TunnelProtocol;

pub(crate) const HELLO_MAGIC: &[u8; 3] = b"EMH";
pub(crate) const HELLO_VERSION: u8 = 1;
pub(crate) const HEADER_VERSION: u8 = 1;
pub(crate) const MAX_NODE_NAME: usize = 253;
pub(crate) const MAX_AGENT: usize = 64;
/// Time limit on reading a hello or a proxy header, and on a hello reply.
pub(crate) const HEADER_TIMEOUT: Duration = if cfg!(test) { Duration::from_secs(2) } else { Duration::from_secs(10) };

/// A peer's hello.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    pub node: String,
    pub agent: String,
    pub keep_open: bool,
}

pub(crate) const FLAG_KEEP_OPEN: u8 = 1;

/// The acceptor's verdict on a hello.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HelloStatus {
    Accepted = 0,
    UnknownNode = 1,
    PeerMismatch = 2,
    Malformed = 3,
}

impl HelloStatus {
    pub(crate) fn from_u8(v: u8) -> Option<Self> {
        Some(match v {
            0 => HelloStatus::Accepted,
            1 => HelloStatus::UnknownNode,
            2 => HelloStatus::PeerMismatch,
            3 => HelloStatus::Malformed,
            _ => return None,
        })
    }

    pub(crate) fn describe(self) -> &'static str {
        match self {
            HelloStatus::Accepted => "accepted",
            HelloStatus::UnknownNode => "its directory binds no peer ID to this node's name",
            HelloStatus::PeerMismatch => "its directory binds this node's name to another peer ID",
            HelloStatus::Malformed => "it could not parse this node's hello",
        }
    }
}

/// Reply to a proxy stream header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reply {
    /// Connected to the endpoint (TCP) / socket ready (UDP): bytes flow.
    Ok = 0,
    /// The endpoint refused the connection.
    Refused = 1,
    /// The endpoint could not be reached (timeout, no route, host unreachable).
    Unreachable = 2,
    /// Not an endpoint this node serves.
    NotServed = 3,
    /// Malformed header or unsupported version.
    BadRequest = 4,
    /// A local error on the remote agent (e.g. out of file descriptors).
    Error = 5,
    /// The remote agent holds as many streams as its limits allow (from this peer, or in
    /// all): try again later, or another endpoint.
    Busy = 6,
}

impl Reply {
    pub(crate) fn from_u8(v: u8) -> Option<Self> {
        Some(match v {
            0 => Reply::Ok,
            1 => Reply::Refused,
            2 => Reply::Unreachable,
            3 => Reply::NotServed,
            4 => Reply::BadRequest,
            5 => Reply::Error,
            6 => Reply::Busy,
            _ => return None,
        })
    }
}

/// The header opening a proxy stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub protocol: TunnelProtocol,
    /// The endpoint; for `to_host`, the acceptor's loopback and the port (only the port is sent).
    pub target: SocketAddr,
    /// A port of the accepting node's own host (family 0), not an endpoint.
    pub to_host: bool,
    pub service: String,
}

/// The wire's family byte of a header to the accepting node's own host.
const FAMILY_HOST: u8 = 0;

/// Appends `s`, cut at a character boundary to at most `max` bytes, after
/// its length byte.
fn push_short_str(out: &mut Vec<u8>, s: &str, max: usize) {
    let mut end = s.len().min(max).min(usize::from(u8::MAX));
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    out.push(u8::try_from(end).expect("cut to at most 255 bytes"));
    out.extend_from_slice(&s.as_bytes()[..end]);
}

fn bad(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

pub fn encode_hello(hello: &Hello) -> Vec<u8> {
    let mut out = Vec::with_capacity(6 + MAX_NODE_NAME.min(hello.node.len()) + MAX_AGENT.min(hello.agent.len()));
    out.extend_from_slice(HELLO_MAGIC);
    out.push(HELLO_VERSION);
    out.push(if hello.keep_open { FLAG_KEEP_OPEN } else { 0 });
    push_short_str(&mut out, &hello.node, MAX_NODE_NAME);
    push_short_str(&mut out, &hello.agent, MAX_AGENT);
    out
}

pub async fn read_hello<R: AsyncRead + Unpin>(r: &mut R) -> io::Result<Hello> {
    let mut head = [0u8; 6];
    r.read_exact(&mut head).await?;
    if &head[..3] != HELLO_MAGIC {
        return Err(bad("not an edgemesh hello"));
    }
    if head[3] != HELLO_VERSION {
        return Err(bad(format!("unsupported hello version {}", head[3])));
    }
    let keep_open = head[4] & FLAG_KEEP_OPEN != 0;
    let len = head[5] as usize;
    if len == 0 || len > MAX_NODE_NAME {
        return Err(bad(format!("node name length {len} out of range")));
    }
    let mut name = vec![0u8; len];
    r.read_exact(&mut name).await?;
    let node = String::from_utf8(name).map_err(|_| bad("node name is not UTF-8"))?;
    let alen = r.read_u8().await? as usize;
    if alen > MAX_AGENT {
        return Err(bad(format!("agent length {alen} out of range")));
    }
    let mut agent = vec![0u8; alen];
    r.read_exact(&mut agent).await?;
    let agent = String::from_utf8_lossy(&agent).into_owned();
    Ok(Hello { node, agent, keep_open })
}

pub fn encode_header(h: &Header) -> Vec<u8> {
    let mut out = Vec::with_capacity(24 + h.service.len().min(255));
    out.push(HEADER_VERSION);
    out.push(match h.protocol {
        TunnelProtocol::Tcp => 1,
        TunnelProtocol::Udp => 2,
    });
    match h.target.ip() {
        _ if h.to_host => out.push(FAMILY_HOST),
        IpAddr::V4(ip) => {
            out.push(4);
            out.extend_from_slice(&ip.octets());
        }
        IpAddr::V6(ip) => {
            out.push(6);
            out.extend_from_slice(&ip.octets());
        }
    }
    out.extend_from_slice(&h.target.port().to_be_bytes());
    push_short_str(&mut out, &h.service, 255);
    out
}

pub async fn read_header<R: AsyncRead + Unpin>(r: &mut R) -> io::Result<Header> {
    let mut head = [0u8; 3];
    r.read_exact(&mut head).await?;
    if head[0] != HEADER_VERSION {
        return Err(bad(format!("unsupported header version {}", head[0])));
    }
    let protocol = match head[1] {
        1 => TunnelProtocol::Tcp,
        2 => TunnelProtocol::Udp,
        p => return Err(bad(format!("unknown protocol {p}"))),
    };
    let ip = match head[2] {
        FAMILY_HOST => IpAddr::V4(Ipv4Addr::LOCALHOST),
        4 => {
            let mut b = [0u8; 4];
            r.read_exact(&mut b).await?;
            IpAddr::V4(Ipv4Addr::from(b))
        }
        6 => {
            let mut b = [0u8; 16];
            r.read_exact(&mut b).await?;
            IpAddr::V6(Ipv6Addr::from(b))
        }
        f => return Err(bad(format!("unknown address family {f}"))),
    };
    let port = r.read_u16().await?;
    let slen = r.read_u8().await? as usize;
    let mut service = vec![0u8; slen];
    r.read_exact(&mut service).await?;
    Ok(Header {
        protocol,
        target: SocketAddr::new(ip, port),
        to_host: head[2] == FAMILY_HOST,
        service: String::from_utf8_lossy(&service).into_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn hello_round_trip_and_bounds() {
        for keep_open in [false, true] {
            let h = Hello { node: "edge-1".into(), agent: "edgemesh/0.1".into(), keep_open };
            let bytes = encode_hello(&h);
            assert_eq!(read_hello(&mut &bytes[..]).await.unwrap(), h);
        }
        // Long names are truncated on a char boundary, never overflow the length byte.
        let long = Hello { node: "é".repeat(300), agent: "x".repeat(300), keep_open: false };
        let got = read_hello(&mut &encode_hello(&long)[..]).await.unwrap();
        assert!(got.node.len() <= MAX_NODE_NAME && got.agent.len() <= MAX_AGENT);
        // Garbage, truncation, bad lengths: errors, never panics.
        for bad in [
            &b"XYZ\x01\x01a\x00"[..],
            b"EMH\x02\x01a\x00",
            b"EMH\x01\x00\x00",
            b"EMH\x01\xfe",
            b"EMH\x01\x05ab",
            b"EMH\x01\x01a\xff",
        ] {
            assert!(read_hello(&mut &bad[..]).await.is_err(), "{bad:?}");
        }
    }

    #[tokio::test]
    async fn header_round_trip_and_garbage() {
        for target in ["10.1.2.3:8080", "[fd00::1]:53", "0.0.0.0:0"] {
            for protocol in [TunnelProtocol::Tcp, TunnelProtocol::Udp] {
                let h = Header {
                    protocol,
                    target: target.parse().unwrap(),
                    to_host: false,
                    service: "default/nginx:http".into(),
                };
                assert_eq!(read_header(&mut &encode_header(&h)[..]).await.unwrap(), h);
            }
        }
        let h = Header {
            protocol: TunnelProtocol::Tcp,
            target: "1.2.3.4:5".parse().unwrap(),
            to_host: false,
            service: "s".repeat(1000),
        };
        assert_eq!(read_header(&mut &encode_header(&h)[..]).await.unwrap().service.len(), 255);
        // Every prefix of a valid header is an error (truncated), as are bad versions/families.
        let full = encode_header(&Header {
            protocol: TunnelProtocol::Udp,
            target: "[::1]:9".parse().unwrap(),
            to_host: false,
            service: "x".into(),
        });
        for n in 0..full.len() {
            assert!(read_header(&mut &full[..n]).await.is_err());
        }
        for bad in [&b"\x02\x01\x04"[..], b"\x01\x03\x04", b"\x01\x01\x05"] {
            assert!(read_header(&mut &bad[..]).await.is_err());
        }
        // The host of the accepting node: only the port is sent; it reads as its loopback.
        let host = Header {
            protocol: TunnelProtocol::Tcp,
            target: "10.9.9.9:22".parse().unwrap(),
            to_host: true,
            service: "socks".into(),
        };
        let bytes = encode_header(&host);
        assert_eq!(bytes[2], FAMILY_HOST);
        assert_eq!(bytes.len(), 3 + 2 + 1 + 5, "no address on the wire");
        let got = read_header(&mut &bytes[..]).await.unwrap();
        assert!(got.to_host);
        assert_eq!(got.target, "127.0.0.1:22".parse().unwrap());
        for n in 0..bytes.len() {
            assert!(read_header(&mut &bytes[..n]).await.is_err());
        }
        // Arbitrary bytes never panic.
        let mut seed = 0x1234_5678u32;
        for _ in 0..2000 {
            let len = (seed % 40) as usize;
            let bytes: Vec<u8> = (0..len)
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 17;
                    seed ^= seed << 5;
                    (seed & 0xff) as u8
                })
                .collect();
            let _ = read_header(&mut &bytes[..]).await;
            let _ = read_hello(&mut &bytes[..]).await;
        }
    }
}

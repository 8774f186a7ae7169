//! The SOCKS5 handshake (RFC 1928) with username/password (RFC 1929), read
//! from any byte stream. Every length is one byte on the wire, so a client
//! can make the reader allocate at most 255 bytes per field; the server puts
//! one time limit on the whole handshake.
//!
//! ```text
//! greeting:  VER 5 | NMETHODS (1..=255) | METHODS       -> VER 5 | METHOD (0xff: none acceptable)
//! auth:      VER 1 | ULEN | UNAME | PLEN | PASSWD       -> VER 1 | STATUS (0 ok)
//! request:   VER 5 | CMD | RSV | ATYP | DST.ADDR | DST.PORT -> VER 5 | REP | RSV | ATYP | BND.ADDR | BND.PORT
//! ```

use std::fmt;
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};

use tokio::io::{AsyncRead, AsyncReadExt};

pub const VERSION: u8 = 5;
pub const AUTH_VERSION: u8 = 1;
pub const METHOD_NONE: u8 = 0x00;
pub const METHOD_PASSWORD: u8 = 0x02;
pub const METHOD_UNACCEPTABLE: u8 = 0xff;
pub const CMD_CONNECT: u8 = 1;

/// Reply codes (RFC 1928 section 6).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reply {
    Succeeded = 0x00,
    GeneralFailure = 0x01,
    NotAllowed = 0x02,
    NetworkUnreachable = 0x03,
    HostUnreachable = 0x04,
    ConnectionRefused = 0x05,
    TtlExpired = 0x06,
    CommandNotSupported = 0x07,
    AddressTypeNotSupported = 0x08,
}

impl Reply {
    /// The reply message: `VER REP RSV` and an all-zero IPv4 bound address
    /// (clients of a CONNECT do not use it).
    pub fn encode(self) -> [u8; 10] {
        [VERSION, self as u8, 0, 1, 0, 0, 0, 0, 0, 0]
    }

    /// The label of this outcome in `edgemesh_socks_connections_total`.
    pub fn label(self) -> &'static str {
        match self {
            Reply::Succeeded => "ok",
            Reply::NotAllowed => "not_allowed",
            Reply::HostUnreachable | Reply::NetworkUnreachable => "unreachable",
            Reply::ConnectionRefused => "refused",
            Reply::TtlExpired => "timeout",
            Reply::CommandNotSupported | Reply::AddressTypeNotSupported => "unsupported",
            Reply::GeneralFailure => "error",
        }
    }
}

/// Where a CONNECT goes, as the client wrote it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Destination {
    Ip(SocketAddr),
    /// A name (a node, or a service) and a port.
    Name(String, u16),
}

impl Destination {
    pub fn port(&self) -> u16 {
        match self {
            Destination::Ip(addr) => addr.port(),
            Destination::Name(_, port) => *port,
        }
    }
}

impl fmt::Display for Destination {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Destination::Ip(addr) => write!(f, "{addr}"),
            Destination::Name(name, port) => write!(f, "{name}:{port}"),
        }
    }
}

/// A client's request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    pub command: u8,
    pub destination: Destination,
}

/// A username and password the client sent.
#[derive(Clone, PartialEq, Eq)]
pub struct Login {
    pub user: Vec<u8>,
    pub password: Vec<u8>,
}

/// Never print the password.
impl fmt::Debug for Login {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Login").field("user", &String::from_utf8_lossy(&self.user)).finish_non_exhaustive()
    }
}

/// Why a handshake stopped. Where the protocol has an answer for it
/// ([`HandshakeError::reply`]), the server sends that before closing.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    #[error("the client closed or broke the connection during the handshake: {0}")]
    Io(#[from] io::Error),
    #[error("not a SOCKS5 client (version byte {0})")]
    Version(u8),
    #[error("the greeting offers no authentication method")]
    NoMethods,
    #[error("username/password sub-negotiation version {0}, not 1")]
    AuthVersion(u8),
    #[error("command {0} is not supported (CONNECT only)")]
    Command(u8),
    #[error("address type {0} is not supported")]
    AddressType(u8),
    #[error("the destination name is empty or not UTF-8")]
    BadName,
}

impl HandshakeError {
    /// The reply to send for this error once the request stage is reached.
    pub fn reply(&self) -> Option<Reply> {
        match self {
            HandshakeError::Command(_) => Some(Reply::CommandNotSupported),
            HandshakeError::AddressType(_) => Some(Reply::AddressTypeNotSupported),
            HandshakeError::BadName => Some(Reply::HostUnreachable),
            _ => None,
        }
    }
}

/// Reads the greeting: the methods the client offers.
pub async fn read_greeting<R: AsyncRead + Unpin>(r: &mut R) -> Result<Vec<u8>, HandshakeError> {
    let mut head = [0u8; 2];
    r.read_exact(&mut head).await?;
    if head[0] != VERSION {
        return Err(HandshakeError::Version(head[0]));
    }
    if head[1] == 0 {
        return Err(HandshakeError::NoMethods);
    }
    let mut methods = vec![0u8; usize::from(head[1])];
    r.read_exact(&mut methods).await?;
    Ok(methods)
}

/// Reads an RFC 1929 username/password request.
pub async fn read_login<R: AsyncRead + Unpin>(r: &mut R) -> Result<Login, HandshakeError> {
    let version = r.read_u8().await?;
    if version != AUTH_VERSION {
        return Err(HandshakeError::AuthVersion(version));
    }
    let user = read_short(r).await?;
    let password = read_short(r).await?;
    Ok(Login { user, password })
}

/// Reads the request. A command other than CONNECT is read whole (so the
/// reply is sent to a client that is listening) and refused.
pub async fn read_request<R: AsyncRead + Unpin>(r: &mut R) -> Result<Request, HandshakeError> {
    let mut head = [0u8; 4];
    r.read_exact(&mut head).await?;
    if head[0] != VERSION {
        return Err(HandshakeError::Version(head[0]));
    }
    let command = head[1];
    let destination = match head[3] {
        1 => {
            let mut ip = [0u8; 4];
            r.read_exact(&mut ip).await?;
            Destination::Ip(SocketAddr::from((Ipv4Addr::from(ip), r.read_u16().await?)))
        }
        4 => {
            let mut ip = [0u8; 16];
            r.read_exact(&mut ip).await?;
            Destination::Ip(SocketAddr::from((Ipv6Addr::from(ip), r.read_u16().await?)))
        }
        3 => {
            let name = read_short(r).await?;
            let port = r.read_u16().await?;
            match String::from_utf8(name) {
                Ok(name) if !name.is_empty() => Destination::Name(name, port),
                _ => return Err(HandshakeError::BadName),
            }
        }
        other => return Err(HandshakeError::AddressType(other)),
    };
    if command != CMD_CONNECT {
        return Err(HandshakeError::Command(command));
    }
    Ok(Request { command, destination })
}

/// A length byte and that many bytes.
async fn read_short<R: AsyncRead + Unpin>(r: &mut R) -> io::Result<Vec<u8>> {
    let len = r.read_u8().await?;
    let mut bytes = vec![0u8; usize::from(len)];
    r.read_exact(&mut bytes).await?;
    Ok(bytes)
}

#[cfg(test)]
mod tests;

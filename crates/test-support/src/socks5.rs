//! A blocking SOCKS5 client (RFC 1928 CONNECT, RFC 1929 login): blocking so
//! that a test can run it on a thread inside a network namespace.

use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::time::Duration;

/// Why a CONNECT did not succeed.
#[derive(Debug)]
pub enum Refusal {
    /// The server accepts none of the methods offered (0xff).
    NoMethod,
    /// The server rejected the login.
    BadLogin,
    /// The server's reply code (0x02 not allowed, 0x04 host unreachable, ...).
    Reply(u8),
    /// The connection broke or closed (e.g. closed by the server mid-handshake).
    Io(io::Error),
}

impl From<io::Error> for Refusal {
    fn from(e: io::Error) -> Self {
        Refusal::Io(e)
    }
}

/// Connects to `host:port` through the SOCKS5 server at `proxy`, logging in
/// with `login` if given; `host` is sent as an address when it parses as
/// one, else as a name. Every read is bounded by 30 s.
pub fn connect(proxy: SocketAddr, login: Option<(&str, &str)>, host: &str, port: u16) -> Result<TcpStream, Refusal> {
    let mut s = TcpStream::connect_timeout(&proxy, Duration::from_secs(10))?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    let method = if login.is_some() { 2 } else { 0 };
    s.write_all(&[5, 1, method])?;
    let mut choice = [0u8; 2];
    s.read_exact(&mut choice)?;
    if choice[1] == 0xff {
        return Err(Refusal::NoMethod);
    }
    // SOCKS5 gives each name and password one length byte.
    let len_byte = |field: &str| {
        u8::try_from(field.len())
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidInput, "longer than 255 bytes for SOCKS5"))
    };
    if let Some((user, password)) = login {
        let mut auth = vec![1, len_byte(user)?];
        auth.extend_from_slice(user.as_bytes());
        auth.push(len_byte(password)?);
        auth.extend_from_slice(password.as_bytes());
        s.write_all(&auth)?;
        let mut status = [0u8; 2];
        s.read_exact(&mut status)?;
        if status[1] != 0 {
            return Err(Refusal::BadLogin);
        }
    }
    let mut request = vec![5, 1, 0];
    match host.parse::<IpAddr>() {
        Ok(IpAddr::V4(ip)) => {
            request.push(1);
            request.extend_from_slice(&ip.octets());
        }
        Ok(IpAddr::V6(ip)) => {
            request.push(4);
            request.extend_from_slice(&ip.octets());
        }
        Err(_) => {
            request.extend_from_slice(&[3, len_byte(host)?]);
            request.extend_from_slice(host.as_bytes());
        }
    }
    request.extend_from_slice(&port.to_be_bytes());
    s.write_all(&request)?;
    let mut reply = [0u8; 4];
    s.read_exact(&mut reply)?;
    let rest = match reply[3] {
        1 => 4 + 2,
        4 => 16 + 2,
        _ => {
            let mut len = [0u8; 1];
            s.read_exact(&mut len)?;
            usize::from(len[0]) + 2
        }
    };
    let mut bound = vec![0u8; rest];
    s.read_exact(&mut bound)?;
    if reply[1] != 0 {
        return Err(Refusal::Reply(reply[1]));
    }
    s.set_read_timeout(None)?;
    Ok(s)
}

/// Writes `message` on `stream` and reads as many bytes back (an echo
/// server's answer), within 10 s.
pub fn echo(stream: &mut TcpStream, message: &[u8]) -> io::Result<Vec<u8>> {
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    stream.write_all(message)?;
    let mut back = vec![0u8; message.len()];
    stream.read_exact(&mut back)?;
    Ok(back)
}

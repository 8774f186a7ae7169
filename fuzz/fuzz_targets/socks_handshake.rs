//! A SOCKS5 client's handshake (greeting, username/password when offered,
//! request), read as the entry reads it: an error or a CONNECT request, and
//! a request accepted is exactly the bytes the client sent, written back
//! (nothing skipped, nothing invented).
#![no_main]

use edgemesh_fuzz::ready;
use edgemesh_socks::handshake::{
    CMD_CONNECT, Destination, METHOD_PASSWORD, VERSION, read_greeting, read_login, read_request,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    let mut rest = bytes;
    let Ok(methods) = ready(read_greeting(&mut rest)) else { return };
    assert!(!methods.is_empty());
    if methods.contains(&METHOD_PASSWORD) {
        let Ok(login) = ready(read_login(&mut rest)) else { return };
        assert!(login.user.len() <= 255 && login.password.len() <= 255);
    }
    let before = rest;
    let Ok(request) = ready(read_request(&mut rest)) else { return };
    assert_eq!(request.command, CMD_CONNECT);
    let consumed = &before[..before.len() - rest.len()];
    let mut written = vec![VERSION, CMD_CONNECT, consumed[2]];
    match &request.destination {
        Destination::Ip(addr) => match addr.ip() {
            std::net::IpAddr::V4(ip) => {
                written.push(1);
                written.extend_from_slice(&ip.octets());
            }
            std::net::IpAddr::V6(ip) => {
                written.push(4);
                written.extend_from_slice(&ip.octets());
            }
        },
        Destination::Name(name, _) => {
            assert!(!name.is_empty());
            written.push(3);
            written.push(u8::try_from(name.len()).expect("a name of at most 255 bytes"));
            written.extend_from_slice(name.as_bytes());
        }
    }
    written.extend_from_slice(&request.destination.port().to_be_bytes());
    assert_eq!(written, consumed, "the request read is not the request sent");
});

use super::*;

#[tokio::test]
async fn greetings_and_logins_parse_and_malformed_ones_are_errors() {
    assert_eq!(read_greeting(&mut &[5, 2, 0, 2][..]).await.unwrap(), vec![0, 2]);
    assert!(matches!(read_greeting(&mut &[4, 1, 0][..]).await, Err(HandshakeError::Version(4))));
    assert!(matches!(read_greeting(&mut &b"GET / HTTP/1.1\r\n"[..]).await, Err(HandshakeError::Version(b'G'))));
    assert!(matches!(read_greeting(&mut &[5, 0][..]).await, Err(HandshakeError::NoMethods)));
    assert!(matches!(read_greeting(&mut &[5, 3, 0][..]).await, Err(HandshakeError::Io(_))), "truncated");

    let login = read_login(&mut &b"\x01\x05alice\x06secret"[..]).await.unwrap();
    assert_eq!((login.user.as_slice(), login.password.as_slice()), (&b"alice"[..], &b"secret"[..]));
    assert!(!format!("{login:?}").contains("secret"), "a login's Debug hides the password");
    assert!(matches!(read_login(&mut &b"\x05\x05alice"[..]).await, Err(HandshakeError::AuthVersion(5))));
    assert!(matches!(read_login(&mut &b"\x01\xffab"[..]).await, Err(HandshakeError::Io(_))), "truncated");
}

#[tokio::test]
async fn requests_of_every_address_type() {
    let v4 = read_request(&mut &[5, 1, 0, 1, 10, 0, 0, 1, 0, 22][..]).await.unwrap();
    assert_eq!(v4.destination, Destination::Ip("10.0.0.1:22".parse().unwrap()));
    let mut v6 = vec![5, 1, 0, 4];
    v6.extend_from_slice(&"fd00::7".parse::<Ipv6Addr>().unwrap().octets());
    v6.extend_from_slice(&443u16.to_be_bytes());
    assert_eq!(
        read_request(&mut &v6[..]).await.unwrap().destination,
        Destination::Ip("[fd00::7]:443".parse().unwrap())
    );
    let name = read_request(&mut &b"\x05\x01\x00\x03\x06node-b\x00\x16"[..]).await.unwrap();
    assert_eq!(name.destination, Destination::Name("node-b".into(), 22));
    assert_eq!(name.destination.to_string(), "node-b:22");
}

#[tokio::test]
async fn unsupported_and_malformed_requests_get_their_reply() {
    // BIND and UDP ASSOCIATE: read whole, then "command not supported".
    for cmd in [2u8, 3, 0, 9] {
        let e = read_request(&mut &[5, cmd, 0, 1, 10, 0, 0, 1, 0, 22][..]).await.unwrap_err();
        assert!(matches!(e, HandshakeError::Command(c) if c == cmd));
        assert_eq!(e.reply(), Some(Reply::CommandNotSupported));
    }
    let e = read_request(&mut &[5, 1, 0, 7, 1, 2][..]).await.unwrap_err();
    assert_eq!(e.reply(), Some(Reply::AddressTypeNotSupported));
    for bad_name in [&b"\x05\x01\x00\x03\x00\x00\x16"[..], b"\x05\x01\x00\x03\x02\xff\xfe\x00\x16"] {
        let e = read_request(&mut &bad_name[..]).await.unwrap_err();
        assert!(matches!(e, HandshakeError::BadName), "{bad_name:?}: {e}");
        assert_eq!(e.reply(), Some(Reply::HostUnreachable));
    }
    assert!(matches!(read_request(&mut &[4, 1, 0, 1][..]).await, Err(HandshakeError::Version(4))));
    // Every prefix of a valid request is a truncation error, never a panic.
    let full = b"\x05\x01\x00\x03\x06node-b\x00\x16";
    for n in 0..full.len() {
        assert!(matches!(read_request(&mut &full[..n]).await, Err(HandshakeError::Io(_))), "{n}");
    }
}

proptest::proptest! {
    /// Arbitrary bytes never panic any parser; a request that parses is a CONNECT.
    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300)) {
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        rt.block_on(async {
            let _ = read_greeting(&mut &bytes[..]).await;
            let _ = read_login(&mut &bytes[..]).await;
            if let Ok(request) = read_request(&mut &bytes[..]).await {
                assert_eq!(request.command, CMD_CONNECT);
            }
        });
    }
}

#[test]
fn replies_are_ten_bytes_with_the_code_second() {
    assert_eq!(Reply::NotAllowed.encode(), [5, 2, 0, 1, 0, 0, 0, 0, 0, 0]);
    assert_eq!(Reply::HostUnreachable.encode()[1], 4);
}

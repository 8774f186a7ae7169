use std::sync::Arc;

use proptest::prelude::*;
use rustls::pki_types::ServerName;

use super::*;

/// The bytes a real rustls client sends first, for `name`.
fn real_hello(name: &str) -> Vec<u8> {
    let config = rustls::ClientConfig::builder_with_provider(crate::tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    let mut conn =
        rustls::ClientConnection::new(Arc::new(config), ServerName::try_from(name.to_owned()).unwrap()).unwrap();
    let mut out = Vec::new();
    while conn.wants_write() {
        conn.write_tls(&mut out).unwrap();
    }
    out
}

#[test]
fn a_real_client_hello_names_its_server() {
    let hello = real_hello("Shop.Example.com");
    assert_eq!(parse(&hello), Hello::Complete(Some("shop.example.com".to_owned())));
    // Bytes after the hello (the client's next records) do not matter.
    let mut more = hello.clone();
    more.extend_from_slice(&[23, 3, 3, 0, 1, 0]);
    assert_eq!(parse(&more), Hello::Complete(Some("shop.example.com".to_owned())));
}

#[test]
fn every_truncation_of_a_hello_is_incomplete() {
    let hello = real_hello("a.example.com");
    for n in 0..hello.len() {
        assert_eq!(parse(&hello[..n]), Hello::Incomplete, "{n} of {} bytes", hello.len());
    }
}

#[test]
fn a_hello_split_over_two_records_is_joined() {
    let hello = real_hello("split.example.com");
    let body = &hello[5..];
    let (a, b) = body.split_at(37);
    let mut split = Vec::new();
    for part in [a, b] {
        split.extend_from_slice(&[22, 3, 1]);
        split.extend_from_slice(&u16::try_from(part.len()).unwrap().to_be_bytes());
        split.extend_from_slice(part);
    }
    assert_eq!(parse(&split), Hello::Complete(Some("split.example.com".to_owned())));
    assert_eq!(parse(&split[..split.len() - 1]), Hello::Incomplete);
}

#[test]
fn garbage_and_hostile_lengths_are_invalid() {
    let table: &[(&[u8], &str)] = &[
        (b"GET / HTTP/1.1\r\n\r\n", "not a TLS handshake"),
        (b"SSH-2.0-OpenSSH_9.2\r\n", "not a TLS handshake"),
        (&[22, 2, 0, 0, 4, 1, 0, 0, 0], "not TLS"),
        (&[22, 3, 1, 0, 0], "length is out of range"),
        (&[22, 3, 1, 0xff, 0xff], "length is out of range"),
        (&[22, 3, 1, 0, 4, 2, 0, 0, 0], "not a ClientHello"),
        // A hello that claims 16 MiB.
        (&[22, 3, 1, 0, 4, 1, 0xff, 0xff, 0xff], "larger than the gateway reads"),
        // A complete, empty hello body.
        (&[22, 3, 1, 0, 4, 1, 0, 0, 0], "truncated"),
        // A second record that is not a handshake.
        (&[22, 3, 1, 0, 2, 1, 0, 23, 3, 3, 0, 1, 0], "not a TLS handshake"),
    ];
    for (bytes, why) in table {
        match parse(bytes) {
            Hello::Invalid(reason) => assert!(reason.contains(why), "{bytes:?}: {reason}"),
            other => panic!("{bytes:?}: {other:?}"),
        }
    }
}

#[test]
fn a_bad_server_name_is_invalid_and_a_hello_without_one_has_none() {
    let hello = real_hello("abc.example.com");
    let at = hello.windows(15).position(|w| w == b"abc.example.com").unwrap();
    let mut bad = hello.clone();
    bad[at + 3] = b'/';
    assert_eq!(parse(&bad), Hello::Invalid("the server name is not a DNS name"));
    // The server_name extension renamed to another type: no name.
    let ext = at - 9; // type(2) len(2) list len(2) name type(1) name len(2)
    assert_eq!(&hello[ext..ext + 2], &[0, 0]);
    let mut unnamed = hello;
    unnamed[ext + 1] = 0xfa;
    assert_eq!(parse(&unnamed), Hello::Complete(None));
}

proptest! {
    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        let _ = parse(&bytes);
    }

    #[test]
    fn a_mutated_real_hello_never_panics(at in 0usize..4096, value in any::<u8>(), cut in 0usize..4096) {
        let mut hello = real_hello("m.example.com");
        let len = hello.len();
        hello[at % len] = value;
        hello.truncate(cut % (len + 1));
        let _ = parse(&hello);
    }

    #[test]
    fn a_handshake_record_with_random_content_never_panics(body in proptest::collection::vec(any::<u8>(), 0..400)) {
        let mut record = vec![22, 3, 1];
        record.extend_from_slice(&u16::try_from(body.len() + 4).unwrap().to_be_bytes());
        record.extend_from_slice(&[1, 0]);
        record.extend_from_slice(&u16::try_from(body.len()).unwrap().to_be_bytes());
        record.extend_from_slice(&body);
        let _ = parse(&record);
    }
}

/// A ClientHello written by hand: `padding` bytes of an unknown extension
/// before the server name, in one record (or as many as it needs).
fn synthetic_hello(name: &str, padding: usize) -> Vec<u8> {
    let vec16 = |data: &[u8]| {
        let mut out = u16::try_from(data.len()).unwrap().to_be_bytes().to_vec();
        out.extend_from_slice(data);
        out
    };
    let mut sni_list = vec![0u8];
    sni_list.extend(vec16(name.as_bytes()));
    let mut extensions = vec![0, 21];
    extensions.extend(vec16(&vec![0u8; padding]));
    extensions.extend([0, 0]);
    extensions.extend(vec16(&vec16(&sni_list)));
    let mut body = vec![3, 3];
    body.extend([7u8; 32]);
    body.push(0);
    body.extend(vec16(&[0x13, 0x01]));
    body.extend([1, 0]);
    body.extend(vec16(&extensions));
    let mut handshake = vec![1];
    handshake.extend(&u32::try_from(body.len()).unwrap().to_be_bytes()[1..]);
    handshake.extend(body);
    let mut records = Vec::new();
    for fragment in handshake.chunks(16 * 1024) {
        records.extend([22, 3, 1]);
        records.extend(vec16(fragment));
    }
    records
}

#[test]
fn a_large_hello_is_read_to_its_cap_and_a_larger_one_refused() {
    assert_eq!(parse(&synthetic_hello("big.example.com", 6000)), Hello::Complete(Some("big.example.com".into())));
    assert_eq!(parse(&synthetic_hello("big.example.com", 15_000)), Hello::Complete(Some("big.example.com".into())));
    assert_eq!(
        parse(&synthetic_hello("big.example.com", 17_000)),
        Hello::Invalid("the ClientHello is larger than the gateway reads")
    );
}

#[tokio::test]
async fn peeking_reads_a_hello_larger_than_the_first_buffer_and_consumes_nothing() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hello = synthetic_hello("big.example.com", 6000);
    let mut client = tokio::net::TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
    let (mut server, _) = listener.accept().await.unwrap();
    // Sent in two parts, the second later: the peek waits for it.
    client.write_all(&hello[..3000]).await.unwrap();
    let rest = hello[3000..].to_vec();
    let writer = tokio::spawn(async move {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        client.write_all(&rest).await.unwrap();
        client
    });
    assert_eq!(peek_server_name(&server).await, Ok(Some("big.example.com".to_owned())));
    let _client = writer.await.unwrap();
    let mut read = vec![0u8; hello.len()];
    server.read_exact(&mut read).await.unwrap();
    assert_eq!(read, hello, "the hello is still there to forward");
}

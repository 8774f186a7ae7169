use std::pin::pin;

use futures::poll;
use tokio::io::{AsyncReadExt, AsyncWriteExt, duplex};

use super::*;

/// Bytes that show a reordering or a lost chunk.
fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251).to_le_bytes()[0]).collect()
}

#[tokio::test]
async fn bytes_arrive_intact_both_ways_and_each_eof_half_closes_the_other_side() {
    // Small pipes: the writers are often full, so bytes are kept and written later.
    let (mut client, mut a) = duplex(1000);
    let (mut b, mut server) = duplex(3000);
    let request = pattern(3 * COPY_BUFFER + 17);
    let response = pattern(COPY_BUFFER + 5);
    let copy = tokio::spawn(async move { copy_bidirectional(&mut a, &mut b).await });
    let client_side = async {
        client.write_all(&request).await.unwrap();
        client.shutdown().await.unwrap();
        let mut got = Vec::new();
        client.read_to_end(&mut got).await.unwrap();
        got
    };
    let server_side = async {
        let mut got = Vec::new();
        server.read_to_end(&mut got).await.unwrap(); // ends only at the client's EOF
        server.write_all(&response).await.unwrap();
        server.shutdown().await.unwrap();
        got
    };
    let (at_client, at_server) = tokio::join!(client_side, server_side);
    assert!(at_server == request, "the request arrived changed");
    assert!(at_client == response, "the response arrived changed");
    let moved = copy.await.unwrap().unwrap();
    assert_eq!(moved, (request.len() as u64, response.len() as u64));
}

#[tokio::test]
async fn a_direction_keeps_a_buffer_only_while_its_writer_lags() {
    let (mut client, mut a) = duplex(4 * COPY_BUFFER);
    let (mut b, mut server) = duplex(16 * 1024);
    let mut copy = pin!(copy_bidirectional(&mut a, &mut b));
    assert!(poll!(copy.as_mut()).is_pending());
    assert_eq!(copy.holds_buffers(), (false, false), "a new connection holds no buffer");

    let sent = pattern(2 * COPY_BUFFER);
    client.write_all(&sent).await.unwrap();
    assert!(poll!(copy.as_mut()).is_pending());
    assert_eq!(copy.holds_buffers(), (true, false), "the server is not reading: what it cannot take is kept");

    let mut got = vec![0; sent.len()];
    tokio::select! {
        r = server.read_exact(&mut got) => { r.unwrap(); }
        r = copy.as_mut() => panic!("the copy ended early: {r:?}"),
    }
    assert!(got == sent, "the bytes arrived changed");
    assert!(poll!(copy.as_mut()).is_pending());
    assert_eq!(copy.holds_buffers(), (false, false), "all written and nothing to read: the buffer is freed");

    // A small message that the writer takes at once needs no buffer at all.
    server.write_all(b"pong").await.unwrap();
    assert!(poll!(copy.as_mut()).is_pending());
    assert_eq!(copy.holds_buffers(), (false, false));
    let mut pong = [0; 4];
    client.read_exact(&mut pong).await.unwrap();
    assert_eq!(&pong, b"pong");
}

#[tokio::test]
async fn a_failed_write_ends_the_copy_with_its_error() {
    let (mut client, mut a) = duplex(1024);
    let (mut b, server) = duplex(1024);
    drop(server);
    client.write_all(b"to nowhere").await.unwrap();
    let err = copy_bidirectional(&mut a, &mut b).await.expect_err("the server side is gone");
    assert_eq!(err.kind(), io::ErrorKind::BrokenPipe);
}

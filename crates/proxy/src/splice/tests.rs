use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::*;

/// A connected pair (client end, server end) on loopback.
async fn pair() -> (TcpStream, TcpStream) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let client = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
    let (server, _) = listener.accept().await.unwrap();
    (client, server)
}

/// Drives `fwd` for a moment (it only finishes at EOF).
async fn drive(fwd: &mut Forward<'_>) -> Option<io::Result<Transferred>> {
    tokio::time::timeout(Duration::from_millis(50), fwd).await.ok()
}

async fn exchange_then_half_close(copy: bool) {
    // client <-> (s1 | proxy | c2) <-> backend
    let (mut client, s1) = pair().await;
    let (c2, mut backend) = pair().await;
    let mut fwd = if copy { forward_copy(&s1, &c2) } else { forward(&s1, &c2) };

    client.write_all(b"ping").await.unwrap();
    assert!(drive(&mut fwd).await.is_none());
    let mut buf = [0u8; 4];
    backend.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"ping");
    if !copy {
        assert!(matches!(fwd.a_to_b.stage, Stage::Idle), "idle direction holds no pipe: {:?}", fwd.a_to_b.stage);
        assert!(matches!(fwd.b_to_a.stage, Stage::Idle));
    }

    // Client half-closes; the backend sees EOF and still answers.
    client.shutdown().await.unwrap();
    assert!(drive(&mut fwd).await.is_none());
    assert_eq!(backend.read(&mut buf).await.unwrap(), 0, "EOF passed on");
    backend.write_all(b"pong").await.unwrap();
    backend.shutdown().await.unwrap();
    let moved = drive(&mut fwd).await.expect("both directions done").unwrap();
    assert_eq!(moved, Transferred { a_to_b: 4, b_to_a: 4 });
    let mut reply = Vec::new();
    client.read_to_end(&mut reply).await.unwrap();
    assert_eq!(reply, b"pong");
}

#[tokio::test]
async fn splice_forwards_and_passes_half_close() {
    exchange_then_half_close(false).await;
}

#[tokio::test]
async fn copy_fallback_forwards_and_passes_half_close() {
    exchange_then_half_close(true).await;
}

#[tokio::test]
async fn a_reset_ends_forwarding_with_an_error() {
    let (client, s1) = pair().await;
    let (c2, _backend) = pair().await;
    let mut fwd = forward(&s1, &c2);
    socket2::SockRef::from(&client).set_linger(Some(Duration::ZERO)).unwrap();
    drop(client);
    let r = drive(&mut fwd).await.expect("forwarding ends");
    assert_eq!(r.unwrap_err().kind(), io::ErrorKind::ConnectionReset);
}

#[test]
fn pipes_are_enlarged_and_pooled() {
    let pipe = Pipe::take().unwrap();
    let size = rustix::pipe::fcntl_getpipe_size(&pipe.write).unwrap();
    assert!(size >= 64 * 1024, "{size}");
    // Other tests share the pool, so only check that it stays bounded.
    for _ in 0..POOL_MAX + 8 {
        Pipe::take().unwrap().give_back();
    }
    pipe.give_back();
    assert!(POOL.lock().unwrap().len() <= POOL_MAX);
}

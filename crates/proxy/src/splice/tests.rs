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
    // The last EOF is passed on by closing, as the proxy does.
    drop(fwd);
    drop((s1, c2));
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

/// A wake-up that splices a buffer's worth or more starts the next one on
/// the pipe (no scratch read that would only fill up again); one that
/// moves a small message goes back to the small-message path. Neither
/// holds a pipe while idle.
#[tokio::test]
async fn bulk_stays_on_the_pipe_and_small_messages_go_back_to_reads() {
    let (mut client, s1) = pair().await;
    let (c2, mut backend) = pair().await;
    let mut fwd = forward(&s1, &c2);

    // Three buffers' worth, all queued at the proxy before it wakes.
    let bulk: Vec<u8> = (0..3 * COPY_BUF).map(|i| (i % 251).to_le_bytes()[0]).collect();
    client.write_all(&bulk).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(drive(&mut fwd).await.is_none());
    let mut got = vec![0u8; bulk.len()];
    backend.read_exact(&mut got).await.unwrap();
    assert!(got == bulk, "bulk bytes changed on the way");
    assert_eq!(fwd.a_to_b.mode, Mode::Bulk, "after bulk the next wake-up splices");
    assert!(matches!(fwd.a_to_b.stage, Stage::Idle), "no pipe held while idle: {:?}", fwd.a_to_b.stage);

    client.write_all(b"small").await.unwrap();
    assert!(drive(&mut fwd).await.is_none());
    let mut small = [0u8; 5];
    backend.read_exact(&mut small).await.unwrap();
    assert_eq!(&small, b"small");
    assert_eq!(fwd.a_to_b.mode, Mode::Small, "a small message goes back to the read path");
    assert!(matches!(fwd.a_to_b.stage, Stage::Idle));
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

/// Request/response traffic of every size around the scratch buffer's
/// (one byte, just under, exactly, just over, several buffers) arrives
/// intact and in order, over both paths.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_of_every_size_around_the_buffer_arrive_intact() {
    let (mut client, s1) = pair().await;
    let (c2, mut backend) = pair().await;
    let proxy = tokio::spawn(async move {
        let moved = forward(&s1, &c2).await;
        drop((s1, c2));
        moved
    });
    let sizes = [1, 2, 100, COPY_BUF - 1, COPY_BUF, COPY_BUF + 1, 3 * COPY_BUF + 7, 1 << 20];
    let mut total = 0u64;
    for (round, &size) in sizes.iter().cycle().take(200).enumerate() {
        let message: Vec<u8> = (0..size).map(|i| (i * 31 + round).to_le_bytes()[0]).collect();
        // Client to backend, then the backend echoes it back.
        let (w, r) = tokio::join!(client.write_all(&message), async {
            let mut got = vec![0u8; size];
            backend.read_exact(&mut got).await.map(|_| got)
        });
        w.unwrap();
        let got = r.unwrap();
        assert!(got == message, "round {round}: {size} bytes changed on the way to the backend");
        let (w, r) = tokio::join!(backend.write_all(&got), async {
            let mut back = vec![0u8; size];
            client.read_exact(&mut back).await.map(|_| back)
        });
        w.unwrap();
        assert!(r.unwrap() == message, "round {round}: {size} bytes changed on the way back");
        total += size as u64;
    }
    client.shutdown().await.unwrap();
    assert_eq!(backend.read(&mut [0u8; 1]).await.unwrap(), 0);
    backend.shutdown().await.unwrap();
    let moved = tokio::time::timeout(Duration::from_secs(5), proxy).await.unwrap().unwrap().unwrap();
    assert_eq!(moved, Transferred { a_to_b: total, b_to_a: total });
}

/// A backend that does not read: the small-message path keeps what the
/// socket could not take, loses nothing, and frees its buffer once written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_reader_gets_every_byte_and_leftovers_are_freed() {
    let (mut client, s1) = pair().await;
    let (c2, mut backend) = pair().await;
    // Small buffers all along, so that the path fills quickly.
    socket2::SockRef::from(&client).set_send_buffer_size(4096).unwrap();
    socket2::SockRef::from(&s1).set_recv_buffer_size(4096).unwrap();
    socket2::SockRef::from(&c2).set_send_buffer_size(4096).unwrap();
    socket2::SockRef::from(&backend).set_recv_buffer_size(4096).unwrap();
    let mut fwd = forward(&s1, &c2);
    // Small writes, forwarded as they come, until the path to the silent
    // backend is full and the client's write stalls.
    let chunk = [7u8; 1000];
    let mut sent = 0usize;
    loop {
        let write = tokio::time::timeout(Duration::from_secs(1), client.write_all(&chunk));
        tokio::select! {
            r = write => match r {
                Ok(r) => r.unwrap(),
                Err(_) => break,
            },
            _ = &mut fwd => panic!("forwarding ended early"),
        }
        sent += chunk.len();
        assert!(sent < 64 << 20, "the buffers should fill long before 64 MiB");
    }
    // Let the proxy take what it can (on a busy machine the write may have
    // timed out before the proxy ran).
    let _ = drive(&mut fwd).await;
    assert!(fwd.a_to_b.pending > 0, "bytes the backend could not take wait in the proxy: {:?}", fwd.a_to_b.stage);
    // Everything the client wrote (the interrupted write may have sent part
    // of a chunk) arrives once the backend reads.
    client.shutdown().await.unwrap();
    let mut all = Vec::new();
    {
        tokio::select! {
            r = backend.read_to_end(&mut all) => { r.unwrap(); }
            _ = &mut fwd => panic!("forwarding ended before the backend closed"),
        }
    }
    assert!(all.len() >= sent && all.iter().all(|&b| b == 7), "{} of at least {sent} bytes", all.len());
    assert!(matches!(fwd.a_to_b.stage, Stage::Idle), "the buffer is freed once written: {:?}", fwd.a_to_b.stage);
    backend.shutdown().await.unwrap();
    let moved = tokio::time::timeout(Duration::from_secs(5), fwd).await.expect("forwarding ends").unwrap();
    assert_eq!(moved.a_to_b, all.len() as u64);
}

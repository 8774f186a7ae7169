use super::*;
use crate::pool::Targets;
use edgemesh_core::ServiceKey;

async fn pair() -> (TcpStream, TcpStream) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let client = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
    let (server, _) = listener.accept().await.unwrap();
    (client, server)
}

fn shared() -> Arc<Shared> {
    shared_with_workers(1)
}

/// Proxy state for tests, with `workers` connection workers.
pub(crate) fn shared_with_workers(workers: usize) -> Arc<Shared> {
    let config = ProxyConfig { connect_timeout: Duration::from_secs(1), max_connections: 10, ..ProxyConfig::default() };
    Arc::new(Shared {
        live: Arc::new(crate::LiveSettings::new(&config)),
        config,
        status: Arc::new(ProxyStatus::default()),
        tracker: TaskTracker::new(),
        stop: CancellationToken::new(),
        drain: CancellationToken::new(),
        routes: Default::default(),
        reach: Default::default(),
        workers: crate::workers::Workers::start(workers).unwrap(),
        metrics: Arc::new(ProxyMetrics::unregistered()),
        http: None,
    })
}

/// The per-connection task lives as long as the connection; keep it small
/// (ztunnel keeps a similar assertion). Raise the bound only knowingly.
#[tokio::test]
async fn connection_future_stays_small() {
    let (client, _server) = pair().await;
    let (a, b) = pair().await;
    let shared = shared();
    let pool = Arc::new(Pool::new(
        ServiceKey::new("default", "web"),
        "127.0.0.1:80".parse().unwrap(),
        Targets::new(LbStrategy::RoundRobin, Arc::from(Vec::new())),
    ));
    shared.status.active_connections.fetch_add(1, Ordering::Relaxed);
    let peer: IpAddr = "127.0.0.1".parse().unwrap();
    let probe = pair().await.0;
    let fut = serve(client, peer, Active::new(&shared, &pool));
    let serve_size = std::mem::size_of_val(&fut);
    let forward = splice::forward(&a, &b);
    let forward_size = std::mem::size_of_val(&forward);
    let connect = connect(&pool, &probe, peer, &*shared);
    let connect_size = std::mem::size_of_val(&connect);
    eprintln!("serve future: {serve_size} B, forward: {forward_size} B, connect (boxed): {connect_size} B");
    // 512 before metrics; +24 for them: the accept time (the duration
    // histogram) and the byte counters the forward adds to as it goes;
    // +64 for the lifetime bounds (the maximum's deadline, the idle look
    // interval, the last byte total and the boxed timer: `lifetime`).
    assert!(serve_size <= 600, "connection future grew to {serve_size} bytes");
    assert!(forward_size <= 128, "forward future grew to {forward_size} bytes");
    drop((fut, forward, connect));
    assert_eq!(shared.status.active_connections.load(Ordering::Relaxed), 0, "the guard decrements on drop");
}

#[test]
fn error_messages_tell_the_operator_what_to_check() {
    let addr: SocketAddr = "10.0.0.7:80".parse().unwrap();
    let refused = ProxyError::connect(addr, std::io::ErrorKind::ConnectionRefused.into(), Duration::from_secs(2));
    assert_eq!(
        refused.to_string(),
        "endpoint 10.0.0.7:80 refused the connection; is the pod listening on its targetPort?"
    );
    let timeout = ProxyError::TimedOut { addr, timeout: Duration::from_secs(2) };
    assert!(timeout.to_string().contains("within 2s"), "{timeout}");
    let none = ProxyError::NoBackends { service: ServiceKey::new("default", "web"), port: 80 };
    assert!(none.to_string().contains("default/web port 80 has no ready endpoints"), "{none}");
}

#[test]
fn header_lookup_in_a_request_head() {
    let req = b"GET / HTTP/1.1\r\nHost: x\r\nX-User:  alice \r\nAccept: */*\r\n\r\nbody";
    assert_eq!(find_header(req, "x-user"), Header::Found(b"alice"));
    assert_eq!(find_header(req, "X-USER"), Header::Found(b"alice"));
    assert_eq!(find_header(req, "Cookie"), Header::Absent, "the head ended without it");
    // Cut anywhere before the header's line ends: wait for more.
    let at = req.windows(7).position(|w| w == b"X-User:").unwrap() + 12;
    for cut in [0, 3, 10, 17, at] {
        assert_eq!(find_header(&req[..cut], "X-User"), Header::Incomplete, "cut at {cut}");
    }
    // Bare LF line ends are tolerated.
    assert_eq!(find_header(b"GET / HTTP/1.0\nX-User: bob\n\n", "x-user"), Header::Found(b"bob"));
    // Not HTTP: no waiting.
    assert_eq!(find_header(b"\x16\x03\x01\x02\x00\x01", "X-User"), Header::Absent, "a TLS hello");
    assert_eq!(find_header(b"SSH-2.0-OpenSSH\r\n", "X-User"), Header::Absent);
    assert_eq!(find_header(b"GET / HTTP/2\r\nX-User: a\r\n\r\n", "X-User"), Header::Absent);
    // A name that is a prefix of another header is not that header.
    assert_eq!(find_header(b"GET / HTTP/1.1\r\nX-Users: a\r\n\r\n", "X-User"), Header::Absent);
}

#[tokio::test]
async fn header_peek_does_not_consume_and_gives_up_on_silence() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (mut client, server) = pair().await;
    client.write_all(b"GET / HTTP/1.1\r\nX-Key: k1\r\n").await.unwrap();
    let late = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(20)).await;
        client.write_all(b"\r\n").await.unwrap();
        client
    });
    assert_eq!(peek_header(&server, "x-key").await.as_deref(), Some(&b"k1"[..]));
    let _client = late.await.unwrap();
    let mut server = server;
    let mut got = vec![0u8; 29];
    server.read_exact(&mut got).await.unwrap();
    assert_eq!(&got, b"GET / HTTP/1.1\r\nX-Key: k1\r\n\r\n", "every byte is still there for the backend");

    // A client that says nothing: give up after the bounded wait.
    let (_quiet, server) = pair().await;
    let started = std::time::Instant::now();
    assert_eq!(peek_header(&server, "x-key").await, None);
    let waited = started.elapsed();
    assert!(waited >= HEADER_PEEK_WAIT && waited < HEADER_PEEK_WAIT * 3, "{waited:?}");
}

/// The hand-written connect: a listening endpoint gives a connected,
/// `TCP_NODELAY` stream; a closed port gives the refusal (read from the
/// socket only when the event says the connect failed).
#[tokio::test]
async fn connect_one_connects_with_nodelay_and_reports_refusal() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stream = connect_one(addr, None).await.unwrap();
    assert!(stream.nodelay().unwrap());
    let (accepted, from) = listener.accept().await.unwrap();
    assert_eq!(from, stream.local_addr().unwrap());
    drop(accepted);
    drop(listener);
    let e = connect_one(addr, None).await.unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::ConnectionRefused, "{e}");
}

/// Sockets accepted from a service listener inherit `TCP_NODELAY` from it,
/// so the proxy sets nothing per connection.
#[test]
fn accepted_connections_inherit_nodelay_from_the_listener() {
    let socket = crate::bind::tcp_group("127.0.0.1:0".parse().unwrap(), 1).unwrap().remove(0);
    let listener = std::net::TcpListener::from(socket);
    listener.set_nonblocking(false).unwrap();
    let _client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let (accepted, _) = listener.accept().unwrap();
    assert!(accepted.nodelay().unwrap());
}

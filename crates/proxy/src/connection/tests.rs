use super::*;

async fn pair() -> (TcpStream, TcpStream) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let client = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
    let (server, _) = listener.accept().await.unwrap();
    (client, server)
}

fn shared() -> Arc<Shared> {
    Arc::new(Shared {
        config: ProxyConfig { connect_timeout: Duration::from_secs(1), max_connections: 10 },
        status: Arc::new(ProxyStatus::default()),
        tracker: TaskTracker::new(),
        stop: CancellationToken::new(),
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
        LbStrategy::RoundRobin,
        Arc::from(Vec::new()),
    ));
    shared.status.active_connections.fetch_add(1, Ordering::Relaxed);
    let fut = serve(client, pool.clone(), Active(shared.clone()));
    let serve_size = std::mem::size_of_val(&fut);
    let forward = splice::forward(&a, &b);
    let forward_size = std::mem::size_of_val(&forward);
    let connect = connect(&pool, Duration::from_secs(1));
    let connect_size = std::mem::size_of_val(&connect);
    eprintln!("serve future: {serve_size} B, forward: {forward_size} B, connect (boxed): {connect_size} B");
    assert!(serve_size <= 512, "connection future grew to {serve_size} bytes");
    assert!(forward_size <= 128, "forward future grew to {forward_size} bytes");
    drop((fut, forward, connect));
    assert_eq!(shared.status.active_connections.load(Ordering::Relaxed), 0, "the guard decrements on drop");
}

#[test]
fn log_limiter_lets_one_through_per_interval() {
    let l = LogLimiter::default();
    assert!(l.allow());
    assert!(!l.allow());
    assert!(!l.allow());
}

#[test]
fn pool_update_reports_changes_only() {
    let b1: Arc<[Backend]> = Arc::from(vec![Backend { addr: "10.0.0.1:80".parse().unwrap(), node_name: None }]);
    let pool =
        Pool::new(ServiceKey::new("d", "w"), "127.0.0.1:80".parse().unwrap(), LbStrategy::RoundRobin, b1.clone());
    assert!(!pool.update(LbStrategy::RoundRobin, &b1));
    let same_contents: Arc<[Backend]> = Arc::from(b1.to_vec());
    assert!(!pool.update(LbStrategy::RoundRobin, &same_contents), "equal lists are not a change");
    assert!(pool.update(LbStrategy::Random, &b1));
    assert!(pool.update(LbStrategy::Random, &Arc::from(Vec::new())));
    assert!(pool.targets().backends.is_empty());
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

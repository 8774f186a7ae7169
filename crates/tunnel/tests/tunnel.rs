//! Tunnels on loopback: real swarms, real TCP/UDP servers.

mod common;

use std::{sync::Arc, time::Duration};

use common::*;
use edgemesh_tunnel::{ConnectionType, TunnelError, TunnelProtocol};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

type Tcp = TunnelProtocol;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_echo_half_close_and_peers() {
    init_tracing();
    let keys = Keys::new();
    let (a, b, dir) = pair(&keys).await;
    let echo = tcp_echo().await;
    dir.serve(echo, Tcp::Tcp);

    let mut s = a.tunnel.open_tcp("b", echo, "default/echo").await.expect("open_tcp");
    assert_eq!(s.peer_id(), b.tunnel.peer_id());
    s.write_all(b"ping").await.unwrap();
    let mut buf = [0u8; 4];
    s.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"ping");

    // Half-close: the server sees EOF and can still answer.
    let answer = count_then_answer_server().await;
    dir.serve(answer, Tcp::Tcp);
    let mut s2 = a.tunnel.open_tcp("b", answer, "default/answer").await.unwrap();
    s2.write_all(&[7u8; 1000]).await.unwrap();
    s2.shutdown().await.unwrap();
    let mut reply = String::new();
    s2.read_to_string(&mut reply).await.unwrap();
    assert_eq!(reply, "got 1000 bytes");

    // Both sides know each other by node name; two streams were opened (one still open).
    let pa = a.tunnel.peers();
    let to_b = pa.iter().find(|p| p.node.as_deref() == Some("b")).expect("a knows b");
    assert_eq!(to_b.peer_id, b.tunnel.peer_id().to_string());
    assert_eq!(to_b.connection, ConnectionType::Direct);
    assert!(to_b.trusted);
    assert!(!to_b.addresses.is_empty());
    let to_b_streams = to_b.open_streams;
    assert!(to_b_streams >= 1, "{pa:?}");
    let pb = eventually("b to know a", Duration::from_secs(5), || async {
        b.tunnel.peers().into_iter().find(|p| p.node.as_deref() == Some("a"))
    })
    .await;
    assert!(pb.trusted);
    let json = serde_json::to_value(&pa).unwrap();
    assert_eq!(json[0]["connection"], "direct");
    // The admin JSON's camelCase keys.
    assert_eq!(json[0]["peerId"], b.tunnel.peer_id().to_string());
    assert_eq!(json[0]["openStreams"], to_b_streams);
    assert_eq!(json[0]["relayReserved"], false);
    assert!(json[0].get("rttMs").is_some() && json[0].get("rtt_ms").is_none(), "{json}");
    drop(s);
    drop(s2);
    eventually("stream counts to drop", Duration::from_secs(5), || async {
        let p = a.tunnel.peers();
        (p.iter().find(|p| p.node.as_deref() == Some("b"))?.open_streams == 0).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_64_mib_each_way() {
    init_tracing();
    let keys = Keys::new();
    let (a, _b, dir) = pair(&keys).await;
    let echo = tcp_echo().await;
    dir.serve(echo, Tcp::Tcp);
    const TOTAL: usize = 64 << 20;
    let s = a.tunnel.open_tcp("b", echo, "bulk").await.unwrap();
    let (mut r, mut w) = tokio::io::split(s);
    let started = std::time::Instant::now();
    let writer = tokio::spawn(async move {
        let mut chunk = vec![0u8; 256 * 1024];
        let mut off = 0usize;
        while off < TOTAL {
            for (i, b) in chunk.iter_mut().enumerate() {
                *b = u8::try_from((off + i) % 251).expect("below 251");
            }
            w.write_all(&chunk).await.unwrap();
            off += chunk.len();
        }
        w.shutdown().await.unwrap();
    });
    let mut buf = vec![0u8; 256 * 1024];
    let mut got = 0usize;
    loop {
        let n = r.read(&mut buf).await.unwrap();
        if n == 0 {
            break;
        }
        for (i, b) in buf[..n].iter().enumerate() {
            assert_eq!(usize::from(*b), (got + i) % 251, "corrupt byte at {}", got + i);
        }
        got += n;
    }
    writer.await.unwrap();
    assert_eq!(got, TOTAL);
    eprintln!("64 MiB each way in {:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_concurrent_connections() {
    init_tracing();
    let keys = Keys::new();
    let (a, _b, dir) = pair(&keys).await;
    let echo = tcp_echo().await;
    dir.serve(echo, Tcp::Tcp);
    let mut tasks = Vec::new();
    for i in 0..1000u32 {
        let t = a.tunnel.clone();
        tasks.push(tokio::spawn(async move {
            let mut s = t.open_tcp("b", echo, "many").await?;
            let msg = i.to_be_bytes();
            s.write_all(&msg).await.unwrap();
            let mut back = [0u8; 4];
            s.read_exact(&mut back).await.unwrap();
            assert_eq!(back, msg);
            Ok::<_, TunnelError>(s)
        }));
    }
    let mut open = Vec::new();
    for t in tasks {
        open.push(t.await.unwrap().expect("every connection opens"));
    }
    assert_eq!(open.len(), 1000);
    let p = a.tunnel.peers();
    assert_eq!(p.iter().find(|p| p.node.as_deref() == Some("b")).unwrap().open_streams, 1000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn not_served_and_refused_targets() {
    init_tracing();
    let keys = Keys::new();
    let (a, _b, dir) = pair(&keys).await;
    let echo = tcp_echo().await;
    // Not in the directory's endpoints: no open proxy.
    let e = a.tunnel.open_tcp("b", echo, "x").await.unwrap_err();
    assert!(matches!(e, TunnelError::NotServed { .. }), "{e}");
    assert!(e.is_endpoint_failure());
    // Served for UDP only is not served for TCP.
    dir.serve(echo, Tcp::Udp);
    let e = a.tunnel.open_tcp("b", echo, "x").await.unwrap_err();
    assert!(matches!(e, TunnelError::NotServed { .. }), "{e}");
    // Served, but nothing listens.
    let closed = closed_tcp_port();
    dir.serve(closed, Tcp::Tcp);
    let e = a.tunnel.open_tcp("b", closed, "x").await.unwrap_err();
    assert!(matches!(e, TunnelError::Refused { .. }), "{e}");
    assert!(e.is_endpoint_failure());
    // Unknown node.
    let e = a.tunnel.open_tcp("nobody", echo, "x").await.unwrap_err();
    assert!(matches!(e, TunnelError::UnknownNode(_)), "{e}");
    assert!(e.is_node_failure());
    // The tunnel still works afterwards.
    dir.serve(echo, Tcp::Tcp);
    a.tunnel.open_tcp("b", echo, "x").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn impersonator_and_unknown_peer_get_nothing() {
    init_tracing();
    let keys = Keys::new();
    let (a, b, dir) = pair(&keys).await;
    let echo = tcp_echo().await;
    dir.serve(echo, Tcp::Tcp);

    // Mallory claims to be "a" with its own key; it knows b's peer ID.
    let mdir = Arc::new(TestDirectory::default());
    mdir.bind("b", b.tunnel.peer_id());
    mdir.bind("a", keys.peer("m"));
    let mut cm = config(&keys, "a");
    cm.key_file = Some(keys.path("m"));
    cm.bootstrap = vec![b.addr()];
    let m = start(cm, mdir.clone()).await;
    let e = m.tunnel.open_tcp("b", echo, "steal").await.unwrap_err();
    assert!(matches!(e, TunnelError::Untrusted { .. } | TunnelError::PeerUnreachable { .. }), "{e}");

    // A peer whose name is in no directory.
    let mut cn = config(&keys, "stranger");
    cn.bootstrap = vec![b.addr()];
    let n = start(cn, mdir.clone()).await;
    let e = n.tunnel.open_tcp("b", echo, "steal").await.unwrap_err();
    assert!(matches!(e, TunnelError::Untrusted { .. } | TunnelError::PeerUnreachable { .. }), "{e}");

    // b cut both off and trusts neither.
    let (pm, pn) = (m.tunnel.peer_id().to_string(), n.tunnel.peer_id().to_string());
    eventually("b to drop mallory and the stranger", Duration::from_secs(5), || async {
        let p = b.tunnel.peers();
        (!p.iter().any(|p| p.peer_id == pm || p.peer_id == pn)).then_some(())
    })
    .await;
    // The real a still works.
    let mut s = a.tunnel.open_tcp("b", echo, "ok").await.unwrap();
    s.write_all(b"x").await.unwrap();
    let mut one = [0u8; 1];
    s.read_exact(&mut one).await.unwrap();
}

fn write_psk(keys: &Keys, name: &str, hex_byte: &str) -> std::path::PathBuf {
    let p = keys.dir.path().join(name);
    std::fs::write(&p, format!("/key/swarm/psk/1.0.0/\n/base16/\n{}\n", hex_byte.repeat(32))).unwrap();
    // The owner's only: the tunnel refuses a key others can read.
    std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    p
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psk_private_network() {
    init_tracing();
    let keys = Keys::new();
    let dir = Arc::new(TestDirectory::default());
    for n in ["a", "b", "c"] {
        dir.bind(n, keys.peer(n));
    }
    let echo = tcp_echo().await;
    dir.serve(echo, Tcp::Tcp);
    let psk1 = write_psk(&keys, "one.key", "ab");
    let psk2 = write_psk(&keys, "two.key", "cd");

    let mut cb = config(&keys, "b");
    cb.psk_file = Some(psk1.clone());
    let (b, registry) = start_metered(cb, dir.clone()).await;

    // Same PSK: works, over TLS and from an agent that speaks Noise only.
    let mut ca = config(&keys, "a");
    ca.psk_file = Some(psk1.clone());
    ca.bootstrap = vec![b.addr()];
    let a = start(ca, dir.clone()).await;
    round_trip(&mut a.tunnel.open_tcp("b", echo, "psk").await.expect("same PSK connects")).await;
    let mut cn = config(&keys, "c");
    cn.key_file = Some(keys.path("c3"));
    dir.bind("c", keys.peer("c3"));
    cn.psk_file = Some(psk1.clone());
    cn.tls = false;
    cn.bootstrap = vec![b.addr()];
    let n = start(cn, dir.clone()).await;
    round_trip(&mut n.tunnel.open_tcp("b", echo, "psk").await.expect("same PSK connects over Noise")).await;
    dir.bind("c", keys.peer("c"));

    // Another PSK: cannot connect at all, over TLS or Noise; b counts each refusal.
    let refused = r#"edgemesh_tunnel_peers_refused_total{reason="psk"}"#;
    for tls in [true, false] {
        let before = sample(&registry, refused);
        let mut cc = config(&keys, "c");
        cc.psk_file = Some(psk2.clone());
        cc.tls = tls;
        cc.bootstrap = vec![b.addr()];
        let c = start(cc, dir.clone()).await;
        let e = c.tunnel.open_tcp("b", echo, "psk").await.unwrap_err();
        assert!(matches!(e, TunnelError::PeerUnreachable { .. } | TunnelError::Timeout { .. }), "TLS {tls}: {e}");
        assert!(!b.tunnel.peers().iter().any(|p| p.peer_id == c.tunnel.peer_id().to_string()));
        assert!(c.tunnel.peers().is_empty(), "TLS {tls}: {:?}", c.tunnel.peers());
        eventually("b counts the wrong key", Duration::from_secs(5), || async {
            (sample(&registry, refused) > before).then_some(())
        })
        .await;
    }

    // No PSK against a PSK node: nothing either.
    let mut cd = config(&keys, "c");
    cd.key_file = Some(keys.path("c2"));
    let d = start(cd, dir.clone()).await;
    dir.bind("b", b.tunnel.peer_id());
    let e = d.tunnel.open_tcp("b", echo, "psk").await.unwrap_err();
    assert!(e.is_node_failure(), "{e}");

    // QUIC with a PSK is a start-up error, for listen and relay addresses alike.
    let mut bad = config(&keys, "x");
    bad.psk_file = Some(psk1.clone());
    bad.listen = vec!["/ip4/127.0.0.1/udp/0/quic-v1".parse().unwrap()];
    let e = edgemesh_tunnel::Tunnel::start(bad, dir.clone(), edgemesh_tunnel::CancellationToken::new())
        .await
        .err()
        .expect("QUIC + PSK refused");
    assert!(matches!(e, TunnelError::Config(_)) && e.to_string().contains("QUIC"), "{e}");
    let mut bad = config(&keys, "x");
    bad.psk_file = Some(psk1);
    bad.relays = vec![format!("/ip4/127.0.0.1/udp/1/quic-v1/p2p/{}", b.tunnel.peer_id()).parse().unwrap()];
    let e = edgemesh_tunnel::Tunnel::start(bad, dir.clone(), edgemesh_tunnel::CancellationToken::new())
        .await
        .err()
        .expect("QUIC relay + PSK refused");
    assert!(matches!(e, TunnelError::Config(_)), "{e}");
}

/// A build without the `quic` feature says so for a QUIC address, instead of failing to listen
/// or silently never dialling it.
#[cfg(not(feature = "quic"))]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_build_without_quic_refuses_quic_addresses() {
    init_tracing();
    let keys = Keys::new();
    let dir = Arc::new(TestDirectory::default());
    let quic: edgemesh_tunnel::Multiaddr = "/ip4/127.0.0.1/udp/1/quic-v1".parse().unwrap();
    for what in ["listen", "bootstrap"] {
        let mut bad = config(&keys, "x");
        match what {
            "listen" => bad.listen = vec![quic.clone()],
            _ => bad.bootstrap = vec![quic.clone()],
        }
        let e = edgemesh_tunnel::Tunnel::start(bad, dir.clone(), edgemesh_tunnel::CancellationToken::new())
            .await
            .err()
            .expect("a QUIC address is refused");
        assert!(matches!(e, TunnelError::Config(_)), "{e}");
        assert!(e.to_string().contains(&format!("{what} address")) && e.to_string().contains("without QUIC"), "{e}");
    }
}

#[cfg(feature = "quic")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quic_transport() {
    init_tracing();
    let keys = Keys::new();
    let dir = Arc::new(TestDirectory::default());
    dir.bind("a", keys.peer("a"));
    dir.bind("b", keys.peer("b"));
    let mut cb = config(&keys, "b");
    cb.listen = vec!["/ip4/127.0.0.1/udp/0/quic-v1".parse().unwrap()];
    let b = start(cb, dir.clone()).await;
    let baddr = b.tunnel.listen_addrs()[0].clone().with(edgemesh_tunnel::multiaddr::Protocol::P2p(b.tunnel.peer_id()));
    let mut ca = config(&keys, "a");
    ca.listen = vec!["/ip4/127.0.0.1/udp/0/quic-v1".parse().unwrap()];
    ca.bootstrap = vec![baddr];
    let a = start(ca, dir.clone()).await;
    let answer = count_then_answer_server().await;
    dir.serve(answer, Tcp::Tcp);
    let mut s = a.tunnel.open_tcp("b", answer, "quic").await.expect("open over QUIC");
    s.write_all(&[1u8; 100_000]).await.unwrap();
    s.shutdown().await.unwrap();
    let mut reply = String::new();
    s.read_to_string(&mut reply).await.unwrap();
    assert_eq!(reply, "got 100000 bytes");
    assert!(a.tunnel.peers()[0].addresses[0].contains("quic-v1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn taken_port_is_a_start_error() {
    init_tracing();
    let keys = Keys::new();
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let mut c = config(&keys, "a");
    c.listen = vec![format!("/ip4/127.0.0.1/tcp/{port}").parse().unwrap()];
    let e = edgemesh_tunnel::Tunnel::start(
        c,
        Arc::new(TestDirectory::default()),
        edgemesh_tunnel::CancellationToken::new(),
    )
    .await
    .err()
    .expect("port taken");
    assert!(matches!(e, TunnelError::Listen { .. }), "{e}");
    // The same port for TCP and QUIC (when built in), on IPv4 and IPv6 (v6-only sockets), as the
    // default does.
    if std::net::TcpListener::bind("[::1]:0").is_ok() {
        let port = closed_tcp_port().port();
        let mut c = config(&keys, "a");
        let transports: &[&str] = if cfg!(feature = "quic") {
            &["/ip4/127.0.0.1/tcp", "/ip6/::1/tcp", "/ip4/127.0.0.1/udp", "/ip6/::1/udp"]
        } else {
            &["/ip4/127.0.0.1/tcp", "/ip6/::1/tcp"]
        };
        c.listen = transports
            .iter()
            .map(|p| {
                let quic = if p.ends_with("udp") { "/quic-v1" } else { "" };
                format!("{p}/{port}{quic}").parse().unwrap()
            })
            .collect();
        let n = start(c, Arc::new(TestDirectory::default())).await;
        assert_eq!(n.tunnel.listen_addrs().len(), transports.len(), "{:?}", n.tunnel.listen_addrs());
    }
    let mut c = config(&keys, "a");
    c.relays = vec!["/ip4/127.0.0.1/tcp/1".parse().unwrap()];
    let e = edgemesh_tunnel::Tunnel::start(
        c,
        Arc::new(TestDirectory::default()),
        edgemesh_tunnel::CancellationToken::new(),
    )
    .await
    .err()
    .expect("relay without peer ID");
    assert!(matches!(e, TunnelError::Config(_)), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_ends_the_task() {
    init_tracing();
    let keys = Keys::new();
    let (mut a, _b, dir) = pair(&keys).await;
    let echo = tcp_echo().await;
    dir.serve(echo, Tcp::Tcp);
    a.tunnel.open_tcp("b", echo, "x").await.unwrap();
    a.stop.cancel();
    tokio::time::timeout(Duration::from_secs(5), &mut a.task).await.expect("task ends").unwrap();
    let e = a.tunnel.open_tcp("b", echo, "x").await.unwrap_err();
    assert!(matches!(e, TunnelError::Stopped), "{e}");
}

/// A UDP server that counts datagrams and echoes those starting with "echo".
async fn udp_count_server() -> (std::net::SocketAddr, Arc<std::sync::atomic::AtomicUsize>) {
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, Some(socket2::Protocol::UDP)).unwrap();
    // As large as the system allows (root may exceed rmem_max).
    let _ = sock.set_recv_buffer_size(16 << 20);
    sock.bind(&"127.0.0.1:0".parse::<std::net::SocketAddr>().unwrap().into()).unwrap();
    sock.set_nonblocking(true).unwrap();
    let s = tokio::net::UdpSocket::from_std(sock.into()).unwrap();
    let addr = s.local_addr().unwrap();
    let count = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let c = count.clone();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 65536];
        while let Ok((n, from)) = s.recv_from(&mut buf).await {
            if buf[..n].starts_with(b"echo") {
                let _ = s.send_to(&buf[..n], from).await;
            } else {
                c.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        }
    });
    (addr, count)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_100k_datagrams_one_session() {
    init_tracing();
    let keys = Keys::new();
    let (a, _b, dir) = pair(&keys).await;
    let (server, count) = udp_count_server().await;
    dir.serve(server, Tcp::Udp);
    let (mut tx, mut rx) = a.tunnel.open_udp("b", server, "default/dns").await.expect("open_udp");
    const N: usize = 100_000;
    let started = std::time::Instant::now();
    let mut d = [0u8; 64];
    for i in 0..N {
        d[..8].copy_from_slice(&(i as u64).to_be_bytes());
        tx.send(&d).await.unwrap();
    }
    // Wait until the count stops growing.
    let mut last = usize::MAX;
    loop {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let now = count.load(std::sync::atomic::Ordering::Relaxed);
        if now == last || now == N {
            break;
        }
        last = now;
    }
    let got = count.load(std::sync::atomic::Ordering::Relaxed);
    eprintln!("{got}/{N} datagrams in {:?}", started.elapsed());
    assert!(got * 1000 >= N * 999, "only {got} of {N} datagrams arrived");
    // The session survives and carries replies back.
    for i in 0..10 {
        let msg = format!("echo {i}");
        tx.send(msg.as_bytes()).await.unwrap();
        let mut buf = [0u8; 100];
        let n = tokio::time::timeout(Duration::from_secs(5), rx.recv(&mut buf)).await.expect("echo arrives").unwrap();
        assert_eq!(&buf[..n], msg.as_bytes());
    }
    // Only one stream for the whole session.
    let p = a.tunnel.peers();
    assert_eq!(p.iter().find(|p| p.node.as_deref() == Some("b")).unwrap().open_streams, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_echo_sizes_truncation_and_end() {
    init_tracing();
    let keys = Keys::new();
    let (a, _b, dir) = pair(&keys).await;
    let echo = udp_echo().await;
    dir.serve(echo, Tcp::Udp);
    let (mut tx, mut rx) = a.tunnel.open_udp("b", echo, "default/echo").await.unwrap();
    let mut buf = vec![0u8; 65536];
    for size in [0usize, 1, 100, 1400, 9000, 60_000] {
        let d: Vec<u8> = (0..size).map(|i| i.to_le_bytes()[0]).collect();
        tx.send(&d).await.unwrap();
        let n = tokio::time::timeout(Duration::from_secs(5), rx.recv(&mut buf)).await.expect("echo").unwrap();
        assert_eq!(&buf[..n], &d[..], "size {size}");
    }
    // A datagram longer than the buffer is truncated; the next one is intact.
    tx.send(&[9u8; 500]).await.unwrap();
    tx.send(b"after").await.unwrap();
    let mut small = [0u8; 10];
    assert_eq!(rx.recv(&mut small).await.unwrap(), 10);
    let n = rx.recv(&mut buf).await.unwrap();
    assert_eq!(&buf[..n], b"after");
    // Too large for the length prefix.
    assert!(tx.send(&vec![0u8; 70_000]).await.is_err());
    // UDP to a target that is not served: refused before any datagram.
    let (other, _) = udp_count_server().await;
    let e = a.tunnel.open_udp("b", other, "x").await.err().expect("not served");
    assert!(matches!(e, TunnelError::NotServed { .. }), "{e}");
    // Closing our side ends the remote session, which closes the stream: EOF is an error.
    tx.close().await.unwrap();
    let e = tokio::time::timeout(Duration::from_secs(5), rx.recv(&mut buf)).await.expect("end").unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::UnexpectedEof);
}

/// A stream to a bootstrap peer asked for while the bootstrap dial is under way waits for
/// that dial instead of dialling the peer a second time: both connections would be kept open
/// for good (bootstrap connections are kept alive). The bootstrap address leads to B through
/// a forwarder that holds each connection 300 ms before passing it on, so the dial is surely
/// under way when the stream is asked for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_asked_for_during_the_bootstrap_dial_shares_its_connection() {
    use edgemesh_tunnel::multiaddr::Protocol;
    init_tracing();
    let keys = Keys::new();
    let dir = Arc::new(TestDirectory::default());
    dir.bind("a", keys.peer("a"));
    dir.bind("b", keys.peer("b"));
    let b = start(config(&keys, "b"), dir.clone()).await;
    let b_port = b.addr().iter().find_map(|p| if let Protocol::Tcp(port) = p { Some(port) } else { None }).unwrap();
    let slow = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let slow_port = slow.local_addr().unwrap().port();
    let (accepted_tx, mut accepted) = tokio::sync::mpsc::unbounded_channel();
    let forwarder = tokio::spawn(async move {
        loop {
            let (mut inbound, _) = slow.accept().await.unwrap();
            let _ = accepted_tx.send(());
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(300)).await;
                let mut outbound = tokio::net::TcpStream::connect(("127.0.0.1", b_port)).await.unwrap();
                let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
            });
        }
    });
    let mut ca = config(&keys, "a");
    let slow_addr = format!("/ip4/127.0.0.1/tcp/{slow_port}/p2p/{}", b.tunnel.peer_id());
    ca.bootstrap = vec![slow_addr.parse().unwrap()];
    let a = start(ca, dir.clone()).await;
    let echo = tcp_echo().await;
    dir.serve(echo, Tcp::Tcp);
    tokio::time::timeout(Duration::from_secs(10), accepted.recv()).await.expect("the bootstrap dial starts");
    let mut s = a.tunnel.open_tcp("b", echo, "early").await.unwrap();
    s.write_all(b"ok").await.unwrap();
    s.read_exact(&mut [0u8; 2]).await.unwrap();
    // A second dial, had there been one, would be through by now.
    tokio::time::sleep(Duration::from_millis(800)).await;
    let b_id = b.tunnel.peer_id().to_string();
    let to_b = a.tunnel.peers().into_iter().find(|p| p.peer_id == b_id).expect("b is a peer");
    assert_eq!(to_b.connections.len(), 1, "one connection to the bootstrap peer: {:?}", to_b.connections);
    forwarder.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_limit_waits_instead_of_killing_the_connection() {
    init_tracing();
    let keys = Keys::new();
    let dir = Arc::new(TestDirectory::default());
    dir.bind("a", keys.peer("a"));
    dir.bind("b", keys.peer("b"));
    let mut cb = config(&keys, "b");
    cb.max_streams_per_connection = 8;
    let b = start(cb, dir.clone()).await;
    let mut ca = config(&keys, "a");
    ca.max_streams_per_connection = 8;
    ca.bootstrap = vec![b.addr()];
    let a = start(ca, dir.clone()).await;
    let echo = tcp_echo().await;
    dir.serve(echo, Tcp::Tcp);
    // The limit is per connection: start from the one bootstrap connection, trusted both ways,
    // so every stream below counts against it.
    let b_id = b.tunnel.peer_id().to_string();
    let a_id = a.tunnel.peer_id().to_string();
    eventually("one trusted connection between a and b", Duration::from_secs(10), || async {
        let to_b = a.tunnel.peers().into_iter().find(|p| p.peer_id == b_id && p.trusted)?;
        b.tunnel.peers().into_iter().find(|p| p.peer_id == a_id && p.trusted)?;
        (to_b.connections.len() == 1).then_some(())
    })
    .await;
    let mut held = Vec::new();
    for _ in 0..8 {
        held.push(a.tunnel.open_tcp("b", echo, "limit").await.unwrap());
    }
    // B opens its own 8 the other way on the same connection.
    let mut back = Vec::new();
    for _ in 0..8 {
        back.push(b.tunnel.open_tcp("a", echo, "limit").await.unwrap());
    }
    let t = a.tunnel.clone();
    let ninth = tokio::spawn(async move { t.open_tcp("b", echo, "limit").await });
    tokio::time::sleep(Duration::from_millis(500)).await;
    if ninth.is_finished() {
        let connections = a.tunnel.peers().into_iter().find(|p| p.peer_id == b_id).map(|p| p.connections.len());
        panic!(
            "the ninth stream should wait for a free slot: {:?} ({connections:?} connections to b)",
            ninth.await.unwrap().map(|s| s.is_relayed())
        );
    }
    held.pop();
    let mut s = tokio::time::timeout(Duration::from_secs(3), ninth).await.expect("slot freed").unwrap().unwrap();
    // Every stream still works: the connection survived.
    held.push(s);
    for s in held.iter_mut().chain(back.iter_mut()) {
        s.write_all(b"ok").await.unwrap();
        let mut two = [0u8; 2];
        s.read_exact(&mut two).await.unwrap();
    }
    s = held.pop().unwrap();
    drop(s);
    // With every slot taken until the deadline, the open fails cleanly.
    let e = {
        let t = a.tunnel.clone();
        held.push(t.open_tcp("b", echo, "limit").await.unwrap());
        tokio::time::timeout(Duration::from_secs(10), t.open_tcp("b", echo, "limit"))
            .await
            .expect("bounded")
            .unwrap_err()
    };
    assert!(e.is_node_failure(), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bootstrap_peer_redialed_with_backoff() {
    init_tracing();
    let keys = Keys::new();
    let dir = Arc::new(TestDirectory::default());
    dir.bind("a", keys.peer("a"));
    dir.bind("b", keys.peer("b"));
    let port = closed_tcp_port().port();
    let b_addr: edgemesh_tunnel::Multiaddr =
        format!("/ip4/127.0.0.1/tcp/{port}/p2p/{}", keys.peer("b")).parse().unwrap();
    let mut ca = config(&keys, "a");
    ca.bootstrap = vec![b_addr];
    // Short idle timeout: the bootstrap connection must be kept regardless.
    ca.idle_connection_timeout = Duration::from_millis(500);
    let a = start(ca, dir.clone()).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mut cb = config(&keys, "b");
    cb.listen = vec![format!("/ip4/127.0.0.1/tcp/{port}").parse().unwrap()];
    cb.idle_connection_timeout = Duration::from_millis(500);
    let b = start(cb.clone(), dir.clone()).await;
    let connected =
        || async { a.tunnel.peers().into_iter().find(|p| p.node.as_deref() == Some("b") && p.trusted).map(|_| ()) };
    eventually("a to connect to its bootstrap peer", Duration::from_secs(15), connected).await;
    // Kept open past the idle timeout.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(connected().await.is_some(), "bootstrap connection kept alive");
    // b restarts: a dials again.
    drop(b);
    eventually("a to notice", Duration::from_secs(10), || async { connected().await.is_none().then_some(()) }).await;
    let _b = start(cb, dir.clone()).await;
    eventually("a to reconnect", Duration::from_secs(15), connected).await;
}

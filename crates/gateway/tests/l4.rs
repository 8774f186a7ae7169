//! TLS passthrough and TCP listeners for real: the ClientHello's server
//! name picks the TLSRoute and the TLS session goes through untouched to a
//! TLS backend (the client sees the backend's own certificate, through
//! rustls and `openssl s_client`); a TCPRoute's weights over 2,000
//! connections; hostile first bytes refused; and the conditions of routes
//! on listeners that do not take their kind.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use edgemesh_core::{AppProtocol, ServiceKey};
use edgemesh_gateway::tls::NoCertificates;
use edgemesh_proxy::{Reach, Remote, RemoteDatagrams, RemoteFuture, RemoteStream};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

mod support;

use support::net::{
    Ca, HANDSHAKE_TIMEOUT, L4_DRAIN, Loaded, MemoryCertificates, RunningGateway, StaticPools, own_loopback,
    tcp_backend, tls_backend, tls_connect,
};

/// Reads one line.
async fn line<S: tokio::io::AsyncRead + Unpin>(stream: &mut S) -> std::io::Result<String> {
    let mut out = Vec::new();
    let mut byte = [0u8; 1];
    loop {
        if stream.read(&mut byte).await? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        if byte[0] == b'\n' {
            return Ok(String::from_utf8_lossy(&out).into_owned());
        }
        out.push(byte[0]);
    }
}

const PASSTHROUGH: &str = r#"
kind: Gateway
metadata: {name: edge, namespace: shop}
spec:
  gatewayClassName: edgemesh
  listeners:
  - {name: tls, port: 18447, protocol: TLS, tls: {mode: Passthrough}}
---
kind: TLSRoute
metadata: {name: a, namespace: shop}
spec:
  parentRefs: [{name: edge}]
  hostnames: [a.example.com]
  rules: [{backendRefs: [{name: tls-a, port: 443}]}]
---
kind: TLSRoute
metadata: {name: b, namespace: shop}
spec:
  parentRefs: [{name: edge, sectionName: tls}]
  hostnames: ["*.b.example.com", b.example.com]
  rules: [{backendRefs: [{name: tls-b, port: 443}]}]
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_passthrough_reaches_each_backend_by_its_server_name() {
    let ca = Ca::new();
    let (cert_a, cert_b) = (ca.issue(&["a.example.com"]), ca.issue(&["b.example.com", "*.b.example.com"]));
    let pools = StaticPools::default()
        .with("shop", "tls-a", 443, tls_backend("tls-a", &cert_a).await, AppProtocol::Tcp)
        .with("shop", "tls-b", 443, tls_backend("tls-b", &cert_b).await, AppProtocol::Tcp);
    let compiled = Loaded::parse(PASSTHROUGH).compile(&[("shop/tls-a", 443), ("shop/tls-b", 443)], &NoCertificates);
    let gateway = RunningGateway::start(compiled, pools, own_loopback(3)).await;
    let addr = gateway.addr(18447);

    // The client's session is with the backend: its certificate, its bytes.
    let client = ca.client();
    for (name, backend, cert) in [
        ("a.example.com", "tls-a", &cert_a),
        ("b.example.com", "tls-b", &cert_b),
        ("x.b.example.com", "tls-b", &cert_b),
    ] {
        let (mut session, presented) = tls_connect(&client, addr, name).await.unwrap();
        assert!(presented == cert.der, "{name}: the backend's own certificate");
        assert_eq!(line(&mut session).await.unwrap(), backend, "{name}");
        session.write_all(b"ping\n").await.unwrap();
        session.flush().await.unwrap();
        assert_eq!(line(&mut session).await.unwrap(), "ping", "{name}: the session goes both ways");
    }

    // A real client: openssl s_client verifies the backend's certificate.
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, ca.pem()).unwrap();
    let out = tokio::process::Command::new("openssl")
        .args(["s_client", "-brief", "-connect", &addr.to_string(), "-servername", "a.example.com"])
        .args(["-verify_hostname", "a.example.com", "-verify_return_error", "-CAfile", ca_file.to_str().unwrap()])
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(text.contains("Verification: OK"), "{text}");
    assert!(text.contains("CN = a.example.com"), "{text}");

    // No route for the name, no name at all, or not TLS: refused.
    assert!(tls_connect(&client, addr, "c.example.com").await.is_err());
    for garbage in [&b"GET / HTTP/1.1\r\nHost: a.example.com\r\n\r\n"[..], &[22, 3, 1, 0xff, 0xff, 1, 0, 0]] {
        let mut conn = TcpStream::connect(addr).await.unwrap();
        conn.write_all(garbage).await.unwrap();
        let mut buf = [0u8; 64];
        let read = tokio::time::timeout(Duration::from_secs(5), conn.read(&mut buf)).await.expect("closed at once");
        assert!(matches!(read, Ok(0) | Err(_)), "{garbage:?}: {read:?}");
    }
}

/// A tunnel that reaches "other nodes" on loopback, counting its streams.
struct LoopbackTunnel(AtomicUsize);

impl Remote for LoopbackTunnel {
    fn open_tcp(&self, node: &str, target: SocketAddr, _: &ServiceKey) -> RemoteFuture<RemoteStream> {
        assert_eq!(node, "node-b");
        self.0.fetch_add(1, Ordering::Relaxed);
        Box::pin(async move { Ok(Box::new(TcpStream::connect(target).await?) as RemoteStream) })
    }

    fn open_udp(&self, _: &str, _: SocketAddr, _: &ServiceKey) -> RemoteFuture<RemoteDatagrams> {
        Box::pin(async { Err(std::io::ErrorKind::Unsupported.into()) })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_passthrough_to_an_endpoint_on_another_node_goes_through_the_tunnel() {
    let ca = Ca::new();
    let cert = ca.issue(&["a.example.com"]);
    let tunnel = Arc::new(LoopbackTunnel(AtomicUsize::new(0)));
    let mut pools = StaticPools::default().with_on(
        "shop",
        "tls-a",
        443,
        tls_backend("tls-a", &cert).await,
        AppProtocol::Tcp,
        Some("node-b"),
    );
    pools.1 = Reach::through("node-a", tunnel.clone(), Duration::from_secs(2));
    let compiled = Loaded::parse(PASSTHROUGH).compile(&[("shop/tls-a", 443)], &NoCertificates);
    let gateway = RunningGateway::start(compiled, pools, own_loopback(7)).await;
    let client = ca.client();
    for i in 1..=3 {
        let (mut session, presented) = tls_connect(&client, gateway.addr(18447), "a.example.com").await.unwrap();
        assert!(presented == cert.der);
        assert_eq!(line(&mut session).await.unwrap(), "tls-a");
        session.write_all(b"over the tunnel\n").await.unwrap();
        session.flush().await.unwrap();
        assert_eq!(line(&mut session).await.unwrap(), "over the tunnel");
        assert_eq!(tunnel.0.load(Ordering::Relaxed), i, "one tunnel stream per connection");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tcp_route_splits_connections_by_weight() {
    let yaml = r#"
kind: Gateway
metadata: {name: edge, namespace: plant}
spec:
  gatewayClassName: edgemesh
  listeners: [{name: plc, port: 18448, protocol: TCP}]
---
kind: TCPRoute
metadata: {name: plc, namespace: plant}
spec:
  parentRefs: [{name: edge}]
  rules: [{backendRefs: [{name: plc-a, port: 502, weight: 90}, {name: plc-b, port: 502, weight: 10}]}]
"#;
    let pools = StaticPools::default().with("plant", "plc-a", 502, tcp_backend("a").await, AppProtocol::Tcp).with(
        "plant",
        "plc-b",
        502,
        tcp_backend("b").await,
        AppProtocol::Tcp,
    );
    let compiled = Loaded::parse(yaml).compile(&[("plant/plc-a", 502), ("plant/plc-b", 502)], &NoCertificates);
    let gateway = RunningGateway::start(compiled, pools, own_loopback(4)).await;
    let addr = gateway.addr(18448);

    let mut landed: BTreeMap<String, u32> = BTreeMap::new();
    for _ in 0..2000 {
        let mut conn = TcpStream::connect(addr).await.unwrap();
        *landed.entry(line(&mut conn).await.unwrap()).or_default() += 1;
    }
    let a = landed.get("a").copied().unwrap_or_default();
    eprintln!("2000 connections: {landed:?}");
    assert!((1740..=1860).contains(&a), "90% within 3 points: {landed:?}");
    assert_eq!(a + landed.get("b").copied().unwrap_or_default(), 2000);

    // Bytes go both ways, half-close included.
    let mut conn = TcpStream::connect(addr).await.unwrap();
    let _ = line(&mut conn).await.unwrap();
    conn.write_all(b"read coils\n").await.unwrap();
    assert_eq!(line(&mut conn).await.unwrap(), "read coils");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_handshakes_are_dropped_at_the_timeout_while_others_are_served() {
    let ca = Ca::new();
    let cert = ca.issue(&["a.example.com"]);
    let certs = MemoryCertificates::default();
    certs.set("shop", "a-tls", cert.pem.clone());
    let yaml = format!(
        "{PASSTHROUGH}---\nkind: Gateway\nmetadata: {{name: secure, namespace: shop}}\nspec:\n  gatewayClassName: edgemesh\n  \
         listeners: [{{name: https, port: 18451, protocol: HTTPS, tls: {{certificateRefs: [{{name: a-tls}}]}}}}]\n"
    );
    let pools = StaticPools::default().with("shop", "tls-a", 443, tls_backend("tls-a", &cert).await, AppProtocol::Tcp);
    let compiled = Loaded::parse(&yaml).compile(&[("shop/tls-a", 443)], &certs);
    let gateway = RunningGateway::start(compiled, pools, own_loopback(6)).await;
    let started = std::time::Instant::now();
    // A ClientHello that stops after its record header and a few bytes,
    // and a client that sends nothing, on each kind of TLS listener.
    let mut stalled = Vec::new();
    for (port, bytes) in
        [(18447, &[22u8, 3, 1, 0, 200, 1, 0, 0, 196][..]), (18447, &[]), (18451, &[22, 3, 1]), (18451, &[])]
    {
        let mut conn = TcpStream::connect(gateway.addr(port)).await.unwrap();
        conn.write_all(bytes).await.unwrap();
        stalled.push(conn);
    }
    // Meanwhile, others are served at once.
    let client = ca.client();
    let (mut session, _) = tls_connect(&client, gateway.addr(18447), "a.example.com").await.unwrap();
    assert_eq!(line(&mut session).await.unwrap(), "tls-a");
    assert!(tls_connect(&client, gateway.addr(18451), "a.example.com").await.is_ok());
    assert!(started.elapsed() < HANDSHAKE_TIMEOUT / 2, "not held up by the stalled ones");
    for (i, mut conn) in stalled.into_iter().enumerate() {
        let mut buf = [0u8; 16];
        let read = tokio::time::timeout(HANDSHAKE_TIMEOUT * 2, conn.read(&mut buf)).await;
        assert!(matches!(read, Ok(Ok(0) | Err(_))), "stalled connection {i} closed: {read:?}");
    }
    let waited = started.elapsed();
    assert!(waited >= HANDSHAKE_TIMEOUT && waited < HANDSHAKE_TIMEOUT * 2, "closed at the timeout: {waited:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listener_over_its_connection_limit_resets_the_next_client() {
    let yaml = "kind: Gateway\nmetadata: {name: edge, namespace: plant}\nspec:\n  gatewayClassName: edgemesh\n  \
                listeners: [{name: plc, port: 18452, protocol: TCP}]\n---\n\
                kind: TCPRoute\nmetadata: {name: plc, namespace: plant}\n\
                spec: {parentRefs: [{name: edge}], rules: [{backendRefs: [{name: plc, port: 502}]}]}\n";
    let pools = StaticPools::default().with("plant", "plc", 502, tcp_backend("a").await, AppProtocol::Tcp);
    let compiled = Loaded::parse(yaml).compile(&[("plant/plc", 502)], &NoCertificates);
    let gateway = RunningGateway::start_with(compiled, pools, own_loopback(8), 2).await;
    let addr = gateway.addr(18452);
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut conn = TcpStream::connect(addr).await.unwrap();
        assert_eq!(line(&mut conn).await.unwrap(), "a");
        held.push(conn);
    }
    assert_eq!(gateway.listeners.connections()[&18452], 2);
    // The reset may arrive before the connect completes, or after.
    let third = async {
        let mut conn = TcpStream::connect(addr).await?;
        line(&mut conn).await
    };
    let refused = tokio::time::timeout(Duration::from_secs(5), third).await.expect("refused at once");
    assert!(refused.is_err(), "over the limit: {refused:?}");
    // One closes: its place is given back, and the next client is served.
    drop(held.pop());
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while gateway.listeners.connections()[&18452] > 1 {
        assert!(std::time::Instant::now() < deadline, "the closed connection's place was not given back");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut next = TcpStream::connect(addr).await.unwrap();
    assert_eq!(line(&mut next).await.unwrap(), "a");
}

#[test]
fn routes_on_listeners_that_do_not_take_their_kind_say_so() {
    let yaml = r#"
kind: Gateway
metadata: {name: edge, namespace: shop}
spec:
  gatewayClassName: edgemesh
  listeners:
  - {name: tls, port: 9443, protocol: TLS, tls: {mode: Passthrough}}
  - {name: tcp, port: 9000, protocol: TCP, allowedRoutes: {kinds: [{kind: TCPRoute}, {kind: HTTPRoute}]}}
  - {name: web, port: 9080, protocol: HTTP, allowedRoutes: {kinds: [{kind: TLSRoute}]}}
  - {name: terminate, port: 9444, protocol: TLS}
  - {name: udp, port: 9053, protocol: UDP}
---
kind: HTTPRoute
metadata: {name: web, namespace: shop}
spec:
  parentRefs: [{name: edge, sectionName: tls}]
  rules: [{backendRefs: [{name: web, port: 80}]}]
---
kind: TCPRoute
metadata: {name: plc, namespace: shop}
spec:
  parentRefs: [{name: edge}]
  rules:
  - backendRefs: [{name: plc, port: 502}]
  - backendRefs: [{name: plc, port: 503}]
---
kind: TLSRoute
metadata: {name: nowhere, namespace: shop}
spec:
  parentRefs: [{name: edge, sectionName: tls}]
  hostnames: ["bad_name"]
  rules: [{backendRefs: [{name: web, port: 80}]}]
"#;
    let c = Loaded::parse(yaml).compile(&[("shop/web", 80), ("shop/plc", 502)], &NoCertificates);
    let edge = c.gateways.values().next().unwrap();
    let cond = |listener: &str, kind: &str| {
        let l = edge.listeners.iter().find(|l| l.name == listener).unwrap();
        let c = l.conditions.iter().find(|c| c.kind == kind).unwrap_or_else(|| panic!("{listener}: no {kind}"));
        (c.status, c.reason, c.message.clone())
    };
    let (status, reason, message) = cond("tcp", "ResolvedRefs");
    assert_eq!((status, reason), (false, "InvalidRouteKinds"), "{message}");
    assert!(message.contains("HTTPRoute (gateway.networking.k8s.io) cannot be served on a TCP listener"), "{message}");
    assert!(cond("tcp", "Programmed").0, "its valid kind is served");
    let supported = |name: &str| edge.listeners.iter().find(|l| l.name == name).unwrap().supported_kinds.clone();
    assert_eq!(supported("tcp"), ["TCPRoute"]);
    assert_eq!(supported("tls"), ["TLSRoute"]);
    assert!(supported("web").is_empty());
    let (status, reason, _) = cond("web", "ResolvedRefs");
    assert_eq!((status, reason), (false, "InvalidRouteKinds"));
    assert!(!cond("web", "Programmed").0, "no kind left to serve");
    assert_eq!(cond("terminate", "Accepted").1, "UnsupportedValue");
    assert_eq!(cond("udp", "Accepted").1, "UnsupportedProtocol");
    assert_eq!(c.ports.keys().copied().collect::<Vec<_>>(), [9000, 9443]);

    let route = |kind: &'static str, name: &str| {
        let id = edgemesh_gateway::ObjectRef { kind, namespace: "shop".into(), name: name.into() };
        c.routes[&id][0].conditions.clone()
    };
    let web = route("HTTPRoute", "web");
    let accepted = web.iter().find(|c| c.kind == "Accepted").unwrap();
    assert_eq!((accepted.status, accepted.reason), (false, "NotAllowedByListeners"));
    assert!(accepted.message.contains("do not take HTTPRoutes"), "{accepted:?}");
    let plc = route("TCPRoute", "plc");
    assert!(plc.iter().any(|c| c.kind == "Accepted" && c.status));
    let partly = plc.iter().find(|c| c.kind == "PartiallyInvalid").unwrap();
    assert!(partly.message.contains("spec.rules[1]: only the first rule of a TCPRoute is served"), "{partly:?}");
    let nowhere = route("TLSRoute", "nowhere");
    let accepted = nowhere.iter().find(|c| c.kind == "Accepted").unwrap();
    assert_eq!((accepted.status, accepted.reason), (false, "UnsupportedValue"));
    assert_eq!(c.l4[&9000].describe(), ["* shop/plc#0"]);
    assert!(!c.l4.contains_key(&9443), "no route attached to the TLS listener");
}

const PLC_GATEWAY: &str = r#"
kind: Gateway
metadata: {name: edge, namespace: plant}
spec:
  gatewayClassName: edgemesh
  listeners: [{name: plc, port: 18449, protocol: TCP}]
"#;

const PLC_ROUTE: &str = r#"
---
kind: TCPRoute
metadata: {name: plc, namespace: plant}
spec:
  parentRefs: [{name: edge}]
  rules: [{backendRefs: [{name: plc, port: 502}]}]
"#;

/// A connection through the TCP listener, greeted by the backend.
async fn plc_stream(addr: SocketAddr) -> TcpStream {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    assert_eq!(line(&mut stream).await.unwrap(), "plc");
    stream
}

/// One round trip on `stream`: whether the echo came back.
async fn echoes(stream: &mut TcpStream) -> bool {
    stream.write_all(b"read coils\n").await.is_ok()
        && tokio::time::timeout(Duration::from_secs(1), line(stream))
            .await
            .is_ok_and(|l| l.is_ok_and(|l| l == "read coils"))
}

/// Whether a new connection is refused: not connected, or reset or closed
/// before the backend's greeting.
async fn refused(addr: SocketAddr) -> bool {
    let Ok(mut stream) = TcpStream::connect(addr).await else { return true };
    tokio::time::timeout(Duration::from_secs(1), line(&mut stream)).await.is_ok_and(|l| l.is_err())
}

/// Asserts that `stream` keeps echoing until `L4_DRAIN` after `since` (the
/// change that took its route, less a margin), then is closed by the
/// gateway, not before `L4_DRAIN` and within a second and a half after.
async fn drains(stream: &mut TcpStream, since: std::time::Instant, what: &str) {
    let mut trips = 0;
    while since.elapsed() + Duration::from_millis(400) < L4_DRAIN {
        assert!(echoes(stream).await, "{what}: the stream still works within the grace ({:?})", since.elapsed());
        trips += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(trips >= 5, "{what}: {trips} round trips");
    let mut buf = [0u8; 16];
    let end = tokio::time::timeout(L4_DRAIN + Duration::from_secs(2), stream.read(&mut buf)).await;
    assert!(matches!(end, Ok(Ok(0)) | Ok(Err(_))), "{what}: closed at the end of the grace: {end:?}");
    let after = since.elapsed();
    assert!(after >= L4_DRAIN && after < L4_DRAIN + Duration::from_millis(1500), "{what}: closed {after:?} after");
}

/// L4 drain: a long-lived stream through a TCPRoute keeps working after
/// the route is deleted, until the grace (the agent's `drainTimeout`) is
/// over, then is closed; new connections are refused at once. A route
/// restored within the grace keeps its connections. The listener's port
/// removed: new connections are refused by the kernel at once, open ones
/// drain alike.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn l4_connections_drain_when_their_route_or_listener_goes() {
    let pools = StaticPools::default().with("plant", "plc", 502, tcp_backend("plc").await, AppProtocol::Tcp);
    let with_route =
        || Loaded::parse(&format!("{PLC_GATEWAY}{PLC_ROUTE}")).compile(&[("plant/plc", 502)], &NoCertificates);
    let without_route = || Loaded::parse(PLC_GATEWAY).compile(&[("plant/plc", 502)], &NoCertificates);
    let mut gateway = RunningGateway::start(with_route(), pools, own_loopback(5)).await;
    let addr = gateway.addr(18449);

    // The route deleted, the listener kept.
    let mut stream = plc_stream(addr).await;
    assert!(echoes(&mut stream).await);
    // (Taken before the change: its drain's timer starts after.)
    let deleted = std::time::Instant::now();
    gateway.update(without_route()).await;
    assert!(refused(addr).await, "a new connection is refused at once");
    drains(&mut stream, deleted, "route deleted").await;

    // Deleted and restored within the grace: the connection stays.
    gateway.update(with_route()).await;
    let mut stream = plc_stream(addr).await;
    gateway.update(without_route()).await;
    tokio::time::sleep(L4_DRAIN / 3).await;
    gateway.update(with_route()).await;
    tokio::time::sleep(L4_DRAIN + Duration::from_millis(500)).await;
    assert!(echoes(&mut stream).await, "a route restored within the grace keeps its connections");

    // The whole listener goes (its Gateway is now another controller's):
    // its port is closed.
    let other_class = PLC_GATEWAY.replace("gatewayClassName: edgemesh", "gatewayClassName: other");
    let removed = std::time::Instant::now();
    gateway.update(Loaded::parse(&other_class).compile(&[], &NoCertificates)).await;
    let refused_at_once = TcpStream::connect(addr).await;
    assert!(
        refused_at_once.as_ref().is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionRefused),
        "{refused_at_once:?}"
    );
    drains(&mut stream, removed, "listener removed").await;
    assert!(gateway.listeners.bound().is_empty());
}

/// TLS passthrough sessions drain by their server name: one whose
/// TLSRoute's hostnames no longer cover it, or that another route now
/// takes, drains and is closed after the grace; one whose route only
/// changed backends goes on (as with endpoint changes).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passthrough_sessions_drain_when_their_route_no_longer_takes_their_name() {
    let ca = Ca::new();
    // (tls-a's certificate covers the names route a takes after the change.)
    let (cert_a, cert_b) =
        (ca.issue(&["a.example.com", "*.b.example.com"]), ca.issue(&["b.example.com", "*.b.example.com"]));
    let pools = StaticPools::default()
        .with("shop", "tls-a", 443, tls_backend("tls-a", &cert_a).await, AppProtocol::Tcp)
        .with("shop", "tls-b", 443, tls_backend("tls-b", &cert_b).await, AppProtocol::Tcp)
        .with("shop", "tls-b2", 443, tls_backend("tls-b2", &cert_b).await, AppProtocol::Tcp);
    let services = [("shop/tls-a", 443), ("shop/tls-b", 443), ("shop/tls-b2", 443)];
    let compile = |yaml: &str| Loaded::parse(yaml).compile(&services, &NoCertificates);
    let mut gateway = RunningGateway::start(compile(PASSTHROUGH), pools, own_loopback(6)).await;
    let addr = gateway.addr(18447);
    let client = ca.client();
    let session = async |name: &str, backend: &str| {
        let (mut session, _) = tls_connect(&client, addr, name).await.unwrap();
        assert_eq!(line(&mut session).await.unwrap(), backend, "{name}");
        session
    };
    let alive = async |session: &mut tokio_rustls::client::TlsStream<TcpStream>| {
        session.write_all(b"ping\n").await.is_ok()
            && session.flush().await.is_ok()
            && tokio::time::timeout(Duration::from_secs(1), line(session))
                .await
                .is_ok_and(|l| l.is_ok_and(|l| l == "ping"))
    };
    let (mut a, mut b, mut xb) = (
        session("a.example.com", "tls-a").await,
        session("b.example.com", "tls-b").await,
        session("x.b.example.com", "tls-b").await,
    );

    // Route b: hostnames narrowed to b.example.com only, and its backend
    // moved to tls-b2; route a takes *.b.example.com now.
    let changed = PASSTHROUGH
        .replace(r#"hostnames: ["*.b.example.com", b.example.com]"#, "hostnames: [b.example.com]")
        .replace("{name: tls-b, port: 443}", "{name: tls-b2, port: 443}")
        .replace("hostnames: [a.example.com]", r#"hostnames: [a.example.com, "*.b.example.com"]"#);
    assert_ne!(changed, PASSTHROUGH);
    let since = std::time::Instant::now();
    gateway.update(compile(&changed)).await;
    // New sessions follow the new routes at once.
    let mut fresh = session("x.b.example.com", "tls-a").await;
    assert!(alive(&mut fresh).await);
    assert!(alive(&mut session("b.example.com", "tls-b2").await).await);
    // Within the grace, all three old sessions work.
    for s in [&mut a, &mut b, &mut xb] {
        assert!(alive(s).await);
    }
    tokio::time::sleep((L4_DRAIN + Duration::from_millis(500)).saturating_sub(since.elapsed())).await;
    // After it: the session another route now takes is closed; the ones
    // whose route still takes them are not (b's backends changed: kept).
    assert!(alive(&mut a).await, "a's route still takes a.example.com");
    assert!(alive(&mut b).await, "b's route still takes b.example.com (its backend changed)");
    assert!(!alive(&mut xb).await, "x.b.example.com is now route a's: drained and closed");
}

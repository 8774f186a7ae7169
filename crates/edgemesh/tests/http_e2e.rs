//! HTTP-aware proxying as clients see it (issue #16): the real agent in a
//! node namespace, real endpoints in a pod namespace (`support::http`), and
//! real clients on the node: curl (HTTP/1.1 keep-alive, HTTP/2 prior
//! knowledge), hyper's HTTP/2 client, a WebSocket client, tonic's gRPC
//! client; and across two nodes through the tunnel.
//!
//! ```text
//!  node ns: clients -> VIP:80 -> agent ──veth── pod ns: endpoints 10.244.1.2-5:8080 (gRPC :50051)
//! ```
//!
//! Each request is balanced on its own: many requests on one client
//! connection spread over the endpoints as the strategy says. As root
//! (namespaces); CI runs as root.

mod support;

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::{Duration, Instant};

use support::eventually_every;
use support::http::{
    ANSWER, Behaviour, HttpBackend, HttpNode, PODS, black_hole, block_on_in, curl_keep_alive, grpc_backend,
    h2_requests, spec, tally, wait_vip,
};
use support::mesh::{lan_pair, wait_for_peer};
use support::netns::Netns;

const NAMES: [&str; 4] = ["pod-0", "pod-1", "pod-2", "pod-3"];

/// One HTTP endpoint per pod address on port 8080, named `pod-<i>`.
fn four_backends(pod: &Netns, behaviours: [Behaviour; 4]) -> Vec<HttpBackend> {
    (0..4).map(|i| HttpBackend::start(pod, &format!("{}:8080", PODS[i]), NAMES[i], behaviours[i])).collect()
}

/// Service `name` (port `http` 80 -> 8080 on the four pods) with these
/// annotations.
fn web(name: &str, annotations: &[&str]) -> String {
    spec(name, "http", 80, &PODS, 8080).annotations(annotations).yaml()
}

fn addr(vip: &str, port: u16) -> SocketAddr {
    SocketAddr::new(vip.parse().unwrap(), port)
}

#[test]
fn curl_over_http11_and_http2_prior_knowledge_reaches_the_endpoints_with_forwarding_headers() {
    let n = HttpNode::new();
    let _backends = four_backends(&n.pod, [ANSWER; 4]);
    // `web` is HTTP by its port name; `api` by appProtocol alone (port name `api`).
    let api = spec("api", "api", 80, &PODS[..1], 8080).app_protocol("kubernetes.io/h2c").yaml();
    n.manifests(&[web("web", &[]), api]);
    let agent = n.start("", &[]);
    let vip = wait_vip(&agent, "web");

    let out = n.node.curl_with(&["--http1.1", "-D", "-"], &format!("http://{vip}/")).expect("HTTP/1.1 answered");
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert!(NAMES.iter().any(|name| out.ends_with(&format!("\r\n\r\n{name}\n"))), "an endpoint's answer: {out}");
    let forwarded = out.lines().find(|l| l.to_ascii_lowercase().starts_with("x-seen-forwarded-for:"));
    assert!(forwarded.is_some_and(|l| l.contains("127.0.0.1")), "X-Forwarded-For names the client: {out}");

    let out = n
        .node
        .curl_with(&["--http2-prior-knowledge", "-w", "\nversion=%{http_version}"], &format!("http://{vip}/"))
        .expect("HTTP/2 answered");
    assert!(out.ends_with("version=2"), "{out}");
    assert!(NAMES.iter().any(|name| out.starts_with(name)), "{out}");

    // appProtocol: kubernetes.io/h2c: the agent speaks HTTP/2 to the
    // endpoint, which answers over HTTP/2 as well (hyper's auto server).
    let api_vip = wait_vip(&agent, "api");
    let body = n.node.curl_with(&["--http1.1"], &format!("http://{api_vip}/")).expect("api answered");
    assert_eq!(body, "pod-0\n");
    let services = agent.json("/services");
    let api = services["services"].as_array().unwrap().iter().find(|s| s["name"] == "api").unwrap();
    assert_eq!(api["ports"][0]["appProtocol"], "http2", "{api}");
}

#[test]
fn round_robin_spreads_100_requests_on_one_connection_exactly_evenly() {
    let n = HttpNode::new();
    let _backends = four_backends(&n.pod, [ANSWER; 4]);
    let grpc: Vec<_> = (0..4).map(|i| grpc_backend(&n.pod, &format!("{}:50051", PODS[i]), NAMES[i])).collect();
    let grpc_service = spec("echo", "grpc", 50051, &PODS, 50051).yaml();
    n.manifests(&[web("web", &["edgemesh.io/lb-strategy: RoundRobin"]), grpc_service]);
    let agent = n.start("", &[]);
    let vip = wait_vip(&agent, "web");

    // HTTP/1.1: curl keeps one connection for all 100.
    let (answers, connects) = curl_keep_alive(&n.node, &format!("http://{vip}/"), 100);
    assert_eq!(connects, 1, "one client connection");
    assert!(answers.iter().all(|a| a.starts_with("200 ")), "{answers:?}");
    let bodies: Vec<String> = answers.iter().map(|a| a[4..].to_owned()).collect();
    assert_eq!(tally(&bodies, &NAMES), [25, 25, 25, 25], "HTTP/1.1 keep-alive");

    // HTTP/2: 100 streams on one connection.
    let answers = h2_requests(&n.node, addr(&vip, 80), 100);
    assert!(answers.iter().all(|(status, _)| *status == 200), "{answers:?}");
    let bodies: Vec<String> = answers.into_iter().map(|(_, b)| b).collect();
    assert_eq!(tally(&bodies, &NAMES), [25, 25, 25, 25], "HTTP/2");

    // gRPC: 100 unary calls on one channel (one HTTP/2 connection).
    let grpc_vip = wait_vip(&agent, "echo");
    let servers = block_on_in(&n.node, move || async move {
        let mut client = edgemesh_grpc_echo::Client::connect(addr(&grpc_vip, 50051)).await.expect("connect");
        let mut servers = Vec::new();
        for i in 0..100 {
            let call = tokio::time::timeout(Duration::from_secs(10), client.unary(&format!("call {i}"))).await;
            let replies = call.expect("answered in time").unwrap_or_else(|s| panic!("call {i}: {s}"));
            assert_eq!(replies.trailer, replies.replies[0].server, "the trailer comes from the endpoint that answered");
            servers.push(replies.trailer);
        }
        servers
    });
    assert_eq!(tally(&servers, &NAMES), [25, 25, 25, 25], "gRPC unary calls");
    assert_eq!(grpc.iter().map(|s| s.calls()).sum::<u32>(), 100);
}

#[test]
fn least_request_avoids_an_endpoint_made_slow() {
    let n = HttpNode::new();
    let slow = Behaviour::Answer { delay: Duration::from_millis(300) };
    let backends = four_backends(&n.pod, [slow, ANSWER, ANSWER, ANSWER]);
    n.manifests(&[web("web", &["edgemesh.io/lb-strategy: LeastRequest"])]);
    let agent = n.start("", &[]);
    let vip = wait_vip(&agent, "web");

    let (answers, connects) = curl_keep_alive(&n.node, &format!("http://{vip}/"), 100);
    assert_eq!(connects, 1);
    assert!(answers.iter().all(|a| a.starts_with("200 ")), "{answers:?}");
    let bodies: Vec<String> = answers.iter().map(|a| a[4..].to_owned()).collect();
    let counts = tally(&bodies, &NAMES);
    // P2C over peak-EWMA latency: once pod-0 was seen slow it loses every
    // comparison; it may be tried while its latency is still unknown.
    assert!(counts[0] <= 5, "the slow endpoint got {} of 100: {counts:?}", counts[0]);
    // Among the fast ones P2C follows their (noisy) latencies: spread, not even.
    assert!(counts[1..].iter().filter(|&&c| c > 0).count() >= 2, "the fast ones share the rest: {counts:?}");
    assert_eq!(backends[0].requests() as usize, counts[0]);
}

#[test]
fn an_endpoint_killed_or_black_holed_under_a_stream_of_gets_costs_no_5xx() {
    let n = HttpNode::new();
    let mut backends: Vec<Option<HttpBackend>> = four_backends(&n.pod, [ANSWER; 4]).into_iter().map(Some).collect();
    let annotations = ["edgemesh.io/http-per-try-timeout: 500ms", "edgemesh.io/http-timeout: 5s"];
    n.manifests(&[web("web", &annotations)]);
    let agent = n.start("", &[]);
    let vip = wait_vip(&agent, "web");

    // curl sends 400 GETs on one connection while the test breaks endpoints.
    let mut urls = vec![format!("http://{vip}/"); 400];
    urls.iter_mut().enumerate().for_each(|(i, u)| u.push_str(&format!("?i={i}")));
    let client = n
        .node
        .cmd("curl")
        .args(["-sS", "--max-time", "120", "--http1.1", "-w", "code=%{http_code} %{time_total}\n"])
        .args(&urls)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let counters: Vec<_> = backends.iter().flatten().map(HttpBackend::counter).collect();
    let served = |i: usize| counters[i].load(std::sync::atomic::Ordering::Relaxed);
    eventually_every(Duration::from_millis(20), Duration::from_secs(20), "GETs to reach pod-1", || {
        (served(1) >= 10).then_some(())
    });
    let killed_at = served(1);
    backends[1] = None; // killed: listener and connections gone (resets, refusals)
    let before = served(2);
    eventually_every(Duration::from_millis(20), Duration::from_secs(20), "GETs to go on", || {
        (served(2) >= before + 10).then_some(())
    });
    // pod-2 vanishes from the network: its packets are dropped silently.
    black_hole(&n.pod, PODS[2]);
    // About how many GETs were answered before (tries, retries included).
    let holed_at: u32 = (0..4).map(served).sum();
    let out = client.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    // Each answer is the endpoint's name line, then curl's `code=` line.
    let answers: Vec<(&str, f64)> = text
        .lines()
        .filter_map(|l| l.strip_prefix("code="))
        .map(|l| l.split_once(' ').map(|(code, secs)| (code, secs.parse().unwrap())).unwrap())
        .collect();
    assert_eq!(answers.len(), 400, "every GET answered: {answers:?}");
    assert!(answers.iter().all(|(code, _)| *code == "200"), "no 5xx: {answers:?}");
    // A GET that met the black hole waited out its 500 ms try; passive
    // health must eject pod-2 after a few, not let every third GET wait.
    let after = &answers[holed_at.min(400) as usize..];
    let waited = after.iter().filter(|(_, secs)| *secs >= 0.5).count();
    assert!(waited <= 10, "{waited} of the {} GETs after the black hole waited out a try on it", after.len());
    assert!(killed_at >= 10);
    assert!(served(0) + served(3) > 100, "the live endpoints took over");
}

#[test]
fn a_post_is_not_retried_once_its_body_was_sent_but_a_get_is() {
    let n = HttpNode::new();
    let reset = Behaviour::ResetAfterBody;
    let backends = four_backends(&n.pod, [reset; 4]);
    n.manifests(&[web("web", &[])]);
    let agent = n.start("", &[]);
    let vip = wait_vip(&agent, "web");
    let total = || backends.iter().map(HttpBackend::requests).sum::<u32>();

    let out = n
        .node
        .curl_with(
            &["-X", "POST", "--data", "order=1", "-o", "/dev/null", "-w", "%{http_code}"],
            &format!("http://{vip}/"),
        )
        .expect("an answer, not a dropped connection");
    assert_eq!(out, "502", "the endpoint failed after the body was sent");
    assert_eq!(total(), 1, "the POST reached exactly one endpoint: not retried");

    let out =
        n.node.curl_with(&["-o", "/dev/null", "-w", "%{http_code}"], &format!("http://{vip}/")).expect("an answer");
    // Every try failed (502; 503 if passive health ejected them all first).
    assert!(out == "502" || out == "503", "{out}");
    assert!(total() > 2, "the GET was retried: {} tries", total() - 1);
}

#[test]
fn a_websocket_echo_passes_through() {
    let n = HttpNode::new();
    let _backends = four_backends(&n.pod, [ANSWER; 4]);
    n.manifests(&[web("web", &[])]);
    let agent = n.start("", &[]);
    let vip = wait_vip(&agent, "web");
    block_on_in(&n.node, move || async move {
        use futures_util::{SinkExt, StreamExt};
        use tokio_tungstenite::tungstenite::Message;
        let (mut ws, response) =
            tokio_tungstenite::connect_async(format!("ws://{vip}/chat")).await.expect("the WebSocket handshake");
        assert_eq!(response.status(), 101);
        for text in ["hello", "through the agent", &"x".repeat(100_000)] {
            ws.send(Message::text(text)).await.unwrap();
            let echoed = tokio::time::timeout(Duration::from_secs(5), ws.next()).await.expect("echo in time");
            assert_eq!(echoed.unwrap().unwrap(), Message::text(text));
        }
        ws.close(None).await.unwrap();
    });
}

#[test]
fn grpc_unary_server_streaming_and_bidirectional_calls_keep_their_trailers() {
    let n = HttpNode::new();
    let _grpc: Vec<_> = (0..2).map(|i| grpc_backend(&n.pod, &format!("{}:50051", PODS[i]), NAMES[i])).collect();
    // HTTP/2 to the endpoints by appProtocol; the port's name says nothing.
    let echo = spec("echo", "rpc", 9000, &PODS[..2], 50051).app_protocol("kubernetes.io/h2c").yaml();
    n.manifests(&[echo]);
    let agent = n.start("", &[]);
    let vip = wait_vip(&agent, "echo");
    block_on_in(&n.node, move || async move {
        let calls = async {
            let mut client = edgemesh_grpc_echo::Client::connect(addr(&vip, 9000)).await.expect("connect");
            let unary = client.unary("ping").await.expect("unary");
            assert_eq!(unary.replies[0].message, "ping");
            let stream = client.server_stream("tick", 1000).await.expect("server streaming");
            assert_eq!(stream.replies.len(), 1000);
            assert!(
                stream
                    .replies
                    .iter()
                    .enumerate()
                    .all(|(i, r)| usize::try_from(r.index) == Ok(i) && r.server == stream.trailer)
            );
            let words = ["one", "two", "three", "four", "five"];
            let bidi = client.bidi(&words).await.expect("bidirectional streaming, one message at a time");
            assert_eq!(bidi.replies.iter().map(|r| r.message.as_str()).collect::<Vec<_>>(), words);
            assert!(bidi.replies.iter().all(|r| r.server == bidi.trailer), "one stream, one endpoint");
        };
        tokio::time::timeout(Duration::from_secs(30), calls).await.expect("the calls finish");
    });
}

#[test]
fn fifty_slowloris_connections_do_not_starve_real_clients() {
    use std::io::Write;
    let n = HttpNode::new();
    let _backends = four_backends(&n.pod, [ANSWER; 4]);
    n.manifests(&[web("web", &[])]);
    let agent = n.start("http:\n  requestHeadTimeout: 2s\n", &[]);
    let vip = wait_vip(&agent, "web");
    let to = addr(&vip, 80);
    // 50 connections that send a request head one byte at a time.
    let slow = support::netns::in_netns(&n.node.name, move || {
        (0..50).map(|_| std::net::TcpStream::connect_timeout(&to, Duration::from_secs(2)).unwrap()).collect::<Vec<_>>()
    });
    let start = Instant::now();
    let mut slow: Vec<_> = slow.into_iter().map(Some).collect();
    let head = b"GET / HTTP/1.1\r\nHost: web\r\nX-Slow: ";
    let mut sent = 0;
    while start.elapsed() < Duration::from_secs(4) {
        for conn in slow.iter_mut() {
            if let Some(c) = conn
                && c.write_all(&[head[sent % head.len()]]).is_err()
            {
                *conn = None;
            }
        }
        sent += 1;
        // curl's own bound (2 s, the slow clients' head timeout) catches starvation.
        let body = n.node.curl_with(&["--max-time", "2"], &format!("http://{vip}/"));
        assert!(body.is_some_and(|b| NAMES.contains(&b.trim())), "a real client is served while slow clients hang on");
        std::thread::sleep(Duration::from_millis(200));
    }
    // Past the head timeout the agent has closed them: a write failed
    // already, or a read ends (EOF or reset) rather than waiting.
    let closed = slow
        .iter()
        .filter(|conn| match conn {
            None => true,
            Some(c) => {
                c.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
                let mut buf = [0u8; 512];
                match std::io::Read::read(&mut &*c, &mut buf) {
                    Ok(_) => true,
                    Err(e) => !matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut),
                }
            }
        })
        .count();
    assert_eq!(closed, 50, "slowloris connections the agent closed at its head timeout");
}

#[test]
fn an_http_endpoint_on_another_node_is_reached_through_the_tunnel() {
    let (_lan, a, b) = lan_pair();
    let _backend = HttpBackend::start(&b.ns, "10.0.0.3:8080", "node-b-web", ANSWER);
    let web = spec("web", "http", 80, &["10.0.0.3"], 8080).node("node-b").yaml();
    let cluster = [a.object("10.0.0.2"), b.object("10.0.0.3"), web];
    a.manifests(&cluster);
    b.manifests(&cluster);
    let _agent_b = b.start(&[]);
    let agent_a = a.start(&[]);
    wait_for_peer(&agent_a, "node-b", "node-a to find node-b", |_| true);
    let vip = wait_vip(&agent_a, "web");

    let (answers, connects) = curl_keep_alive(&a.ns, &format!("http://{vip}/"), 20);
    assert_eq!(connects, 1);
    assert_eq!(answers, vec!["200 node-b-web".to_owned(); 20], "every request through the tunnel");
    let answers = h2_requests(&a.ns, addr(&vip, 80), 20);
    assert!(answers.iter().all(|(s, b)| *s == 200 && b == "node-b-web\n"), "{answers:?}");
}

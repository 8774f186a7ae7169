//! The node-local DNS is no open resolver and no amplifier (issue #18), as
//! root: the server runs in a network namespace of the test's own ("node",
//! on `10.91.0.1:53`, not a node-local address; the test's runtime and all
//! its threads live there, so the forwarder and the node's own addresses
//! are the namespace's), clients in another ("lan", `10.91.0.2`-`.4`, the
//! real `dig` with `-b` choosing its source), and the upstream is a real
//! dnsmasq inside the node with a large TXT record.

mod common;

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use common::{Dig, Harness};
use edgemesh_core::build;
use edgemesh_dns::DnsConfig;
use edgemesh_test_support::netns::{Netns, NsProcess, dnsmasq, in_netns, link};
use hickory_proto::op::{Message, MessageType, OpCode, Query};
use hickory_proto::rr::{Name, RecordType};

const SERVER: &str = "10.91.0.1";
/// In `dns.allowedClients` (a pod, say).
const ALLOWED: &str = "10.91.0.2";
/// Nobody's: a host on the LAN, or anyone on the internet.
const STRANGER: &str = "10.91.0.3";
/// Also allowed; floods the server.
const NOISY: &str = "10.91.0.4";
const UPSTREAM_PORT: u16 = 5300;
/// Queries per second per client (and burst) for this test.
const RATE: u32 = 50;

struct Topology {
    node: Netns,
    lan: Netns,
    _dnsmasq: NsProcess,
}

/// The two namespaces, their link, and dnsmasq answering `big.example`
/// (eight TXT strings of 200 bytes: about 1.8 KB) on the node's loopback.
fn topology() -> Topology {
    let node = Netns::new("dnsnode");
    let lan = Netns::new("dnslan");
    link(&node, "lan0", &lan, "node0");
    node.addr("lan0", &format!("{SERVER}/24"));
    for client in [ALLOWED, STRANGER, NOISY] {
        lan.addr("node0", &format!("{client}/24"));
    }
    let txt: Vec<String> =
        (0..8).map(|i| format!("--txt-record=big.example,{}", char::from(b'a' + i).to_string().repeat(200))).collect();
    let dnsmasq = dnsmasq(&node, "127.0.0.1", UPSTREAM_PORT, &txt, ["big.example", "TXT"]);
    Topology { node, lan, _dnsmasq: dnsmasq }
}

async fn start() -> Harness {
    let config = DnsConfig {
        listen: Some(format!("{SERVER}:53").parse().unwrap()),
        upstreams: vec![format!("127.0.0.1:{UPSTREAM_PORT}").parse().unwrap()],
        allowed_clients: vec![format!("{ALLOWED}/32").parse().unwrap(), format!("{NOISY}/32").parse().unwrap()],
        rate_limit: RATE,
        rate_limit_burst: RATE,
        ..common::config()
    };
    let objects = vec![
        build::service("default", "web").port("http", 80, 8080).object(),
        build::slice("default", "web-1", "web").endpoint("10.0.0.1", "n1").port("http", 8080).object(),
    ];
    Harness::start_with(objects, config).await
}

/// Runs `test` on a runtime whose threads are all in the node's namespace.
fn in_node<Fut: Future<Output = ()>>(topology: &Topology, test: impl FnOnce(Names) -> Fut + Send + 'static) {
    let names = Names { lan: topology.lan.name.clone(), node: topology.node.name.clone() };
    in_netns(&topology.node.name, move || {
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        runtime.block_on(test(names));
    });
}

/// The namespaces' names, for commands run in them.
struct Names {
    lan: String,
    node: String,
}

/// `dig` from `source` (in the LAN namespace, or the node's own address in
/// the node's).
async fn dig_from(names: &Names, source: &str, args: &[&str]) -> Dig {
    let ns = if source == SERVER { &names.node } else { &names.lan };
    let mut cmd = std::process::Command::new("ip");
    cmd.args(["netns", "exec", ns, "dig", "-p", "53", &format!("@{SERVER}"), "-b", source, "+tries=1", "+time=2"])
        .args(args);
    let output = tokio::task::spawn_blocking(move || cmd.output()).await.unwrap().expect("dig runs");
    common::parse_dig(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// The size dig reports for the response it got.
fn size(dig: &Dig) -> usize {
    let line = dig.raw.lines().find(|l| l.starts_with(";; MSG SIZE")).unwrap_or_else(|| panic!("{}", dig.raw));
    line.rsplit(' ').next().unwrap().trim().parse().unwrap()
}

fn metric(h: &Harness, name: &str) -> f64 {
    edgemesh_test_support::scrape::sample(&h.scrape(), name).unwrap_or(0.0)
}

#[test]
fn strangers_are_refused_and_answers_never_amplify() {
    in_node(&topology(), strangers_are_refused_and_answers_never_amplify_in_node);
}

async fn strangers_are_refused_and_answers_never_amplify_in_node(names: Names) {
    let h = start().await;
    let vip = h.vip("default", "web");

    // This node's pods (dns.allowedClients): cluster names and the rest.
    let ok = dig_from(&names, ALLOWED, &["web.default.svc.cluster.local", "A"]).await;
    assert_eq!((ok.status.as_str(), ok.answers("A")), ("NOERROR", vec![vip.clone()]), "{}", ok.raw);
    // The node itself, from its own address.
    let own = dig_from(&names, SERVER, &["web.default.svc.cluster.local", "A"]).await;
    assert_eq!((own.status.as_str(), own.answers("A")), ("NOERROR", vec![vip.clone()]), "{}", own.raw);
    let outside = dig_from(&names, ALLOWED, &["big.example", "TXT", "+tcp"]).await;
    assert_eq!(outside.answers("TXT").len(), 8, "forwarded to dnsmasq: {}", outside.raw);

    // Anyone else: REFUSED for cluster names too, and nothing forwarded.
    for (name, qtype) in [("web.default.svc.cluster.local", "A"), ("big.example", "TXT"), ("example.org", "A")] {
        for tcp in ["+notcp", "+tcp"] {
            let refused = dig_from(&names, STRANGER, &[name, qtype, tcp]).await;
            assert_eq!(refused.status, "REFUSED", "{name} {tcp}: {}", refused.raw);
            assert!(refused.answer.is_empty(), "{}", refused.raw);
        }
    }
    assert_eq!(metric(&h, "edgemesh_dns_clients_refused_total"), 6.0, "{}", h.scrape());

    // Amplification: a large TXT and an ANY through the forwarder get a
    // small UDP answer with TC, whatever buffer the client claims, and the
    // whole answer over TCP.
    for qtype in ["TXT", "ANY"] {
        for (bufsize, limit) in [("+bufsize=4096", 1232), ("+bufsize=1232", 1232), ("+noedns", 512)] {
            let small = dig_from(&names, ALLOWED, &["big.example", qtype, bufsize, "+notcp", "+ignore"]).await;
            assert!(small.has_flag("tc"), "{qtype} {bufsize}: {}", small.raw);
            assert!(small.answer.is_empty(), "{}", small.raw);
            assert!(size(&small) <= limit.min(100), "{qtype} {bufsize}: {} bytes", size(&small));
        }
        let whole = dig_from(&names, ALLOWED, &["big.example", qtype, "+tcp"]).await;
        assert_eq!(whole.answers("TXT").len(), 8, "{qtype}: {}", whole.raw);
        assert!(size(&whole) > 1232, "{}", whole.raw);
        // dig's default (UDP, then TCP on TC; ANY over TCP at once): the client gets everything.
        let retried = dig_from(&names, ALLOWED, &["big.example", qtype]).await;
        assert_eq!(retried.answers("TXT").len(), 8, "{qtype}: {}", retried.raw);
    }

    h.stop().await;
}

/// A query for the web service, with id `id`.
fn query(id: u16) -> Vec<u8> {
    let mut m = Message::new(id, MessageType::Query, OpCode::Query);
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(Name::from_ascii("web.default.svc.cluster.local.").unwrap(), RecordType::A));
    m.to_vec().unwrap()
}

#[test]
fn a_flooding_client_is_rate_limited_and_others_are_not() {
    in_node(&topology(), a_flooding_client_is_rate_limited_and_others_are_not_in_node);
}

async fn a_flooding_client_is_rate_limited_and_others_are_not_in_node(names: Names) {
    let h = start().await;
    const SENT: u16 = 400;
    let server: SocketAddr = format!("{SERVER}:53").parse().unwrap();
    // From NOISY: SENT queries back to back, then every reply that comes.
    let lan = names.lan.clone();
    let flood = tokio::task::spawn_blocking(move || {
        in_netns(&lan, move || {
            let socket = UdpSocket::bind((NOISY, 0)).unwrap();
            socket.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
            let start = Instant::now();
            for id in 0..SENT {
                socket.send_to(&query(id), server).unwrap();
            }
            let took = start.elapsed();
            let (mut answers, mut truncated) = (0u32, 0u32);
            let mut buf = [0u8; 1500];
            while let Ok((n, _)) = socket.recv_from(&mut buf) {
                let reply = Message::from_vec(&buf[..n]).unwrap();
                if reply.metadata.truncation {
                    assert!(reply.answers.is_empty() && n <= 100, "a slip is an empty TC response: {n} bytes");
                    truncated += 1;
                } else {
                    assert_eq!(reply.answers.len(), 1);
                    answers += 1;
                }
            }
            (answers, truncated, took)
        })
    });
    let (answers, truncated, took) = flood.await.unwrap();
    // The burst, plus what the rate refilled while the queries went out.
    let refill = (took.as_secs_f64() * f64::from(RATE)).ceil();
    let expected = f64::from(RATE)..=f64::from(RATE) + refill + 1.0;
    assert!(expected.contains(&f64::from(answers)), "answers {answers}, sent in {took:?}");
    let limited = u32::from(SENT) - answers;
    // Every second query over the limit slips (TC), the others are dropped.
    assert!(truncated.abs_diff(limited / 2) <= 1, "{truncated} TC of {limited} limited");
    let dropped = metric(&h, "edgemesh_dns_rate_limited_total{action=\"drop\"}");
    let slipped = metric(&h, "edgemesh_dns_rate_limited_total{action=\"slip\"}");
    assert_eq!(dropped + slipped, f64::from(limited), "{}", h.scrape());
    assert_eq!(slipped, f64::from(truncated));

    // Meanwhile another client is answered at once, over and over, and
    // the flooding client itself over TCP (where the source is proven).
    for _ in 0..20 {
        let other = dig_from(&names, ALLOWED, &["web.default.svc.cluster.local", "A", "+notcp"]).await;
        assert_eq!(other.status, "NOERROR", "{}", other.raw);
    }
    let tcp = dig_from(&names, NOISY, &["web.default.svc.cluster.local", "A", "+tcp"]).await;
    assert_eq!(tcp.status, "NOERROR", "{}", tcp.raw);
    h.stop().await;
}

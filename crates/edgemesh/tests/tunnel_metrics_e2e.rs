//! The tunnel's metrics as an operator scrapes them (issue #14): real
//! agents in network namespaces, a real echo backend on another node, a
//! known number of bytes sent through the tunnel, and each agent's
//! `/metrics` read back and checked with `promtool check metrics`.
//!
//! ```text
//!  direct:   node-a 10.0.0.2 ── bridge ── node-b 10.0.0.3 (echo: TCP :7000, UDP :7001)
//!
//!  relayed:  relay 198.18.0.1 ─┐
//!            rtr-a 198.18.0.2 ─┼─ "public" WAN bridge
//!            rtr-c 198.18.0.3 ─┘
//!              │ 10.2.0.1         │ 10.1.0.1
//!            node-a 10.2.0.2    node-c 10.1.0.2 (echo :7000)
//! ```
//!
//! In the relayed topology the two NAT routers silently drop every packet
//! between each other (a firewall): hole punching is tried and cannot
//! succeed, so the pair stays relayed. As root; CI runs as root.

mod support;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::time::Duration;

use edgemesh_test_support::scrape::{promtool_check, sample};
use support::eventually_every;
use support::mesh::{LIMIT, Node, behind_nat, lan_pair, service, start_relayed, wait_for_peer};
use support::netns::{Lan, Netns, TcpEcho, UdpEcho, datagram, in_netns, require_root, udp_stream};

/// Bytes sent (and echoed back) on the bulk connection.
const BULK: usize = 1 << 20;
/// Bytes sent (and echoed back) on the connection held open.
const HOLD: &[u8] = b"held open\n";

#[test]
fn a_direct_peer_shows_its_path_rtt_streams_and_exact_bytes() {
    require_root();
    let (_lan, a, b) = lan_pair();
    let _echo = TcpEcho::start(&b.ns, "10.0.0.3:7000");
    let _udp_echo = UdpEcho::start(&b.ns, "10.0.0.3:7001");
    let cluster = [
        a.object("10.0.0.2"),
        b.object("10.0.0.3"),
        service("echo", "TCP", 7000, "node-b", "10.0.0.3"),
        service("dgram", "UDP", 7001, "node-b", "10.0.0.3"),
    ];
    a.manifests(&cluster);
    b.manifests(&cluster);
    let agent_b = b.start(&[]);
    let agent_a = a.start(&[]);
    wait_for_peer(&agent_a, "node-b", "node-a to find node-b by mDNS", |p| p["connection"] == "direct");

    let to = format!("{}:7000", agent_a.vip("default", "echo").expect("echo has a VIP on node-a"));
    echo_bytes(&a.ns, &to, BULK).expect("the bulk transfer through the tunnel");
    let held = hold(&a.ns, &to);
    let carried = (BULK + HOLD.len()) as f64;

    let (sent, received) = (
        r#"edgemesh_tunnel_sent_bytes_total{node="node-b"}"#,
        r#"edgemesh_tunnel_received_bytes_total{node="node-b"}"#,
    );
    let streams = r#"edgemesh_tunnel_peer_streams{node="node-b"}"#;
    let text = eventually_every(Duration::from_millis(200), LIMIT, "node-a's metrics of node-b", || {
        let text = agent_a.get("/metrics")?;
        let ready = sample(&text, streams) == Some(1.0)
            && sample(&text, r#"edgemesh_tunnel_peer_rtt_seconds{node="node-b"}"#).is_some_and(|rtt| rtt > 0.0)
            && sample(&text, sent).is_some_and(|n| n >= carried);
        ready.then_some(text)
    });
    assert_eq!(sample(&text, r#"edgemesh_tunnel_peer_path{node="node-b",path="direct"}"#), Some(1.0), "{text}");
    assert!(!text.contains(r#"path="relayed""#), "{text}");
    let outbound = r#"edgemesh_tunnel_streams_opened_total{node="node-b",direction="outbound"}"#;
    assert_eq!(sample(&text, outbound), Some(2.0), "{text}");
    assert_within_1_percent(&text, sent, carried);
    assert_within_1_percent(&text, received, carried);
    assert!(!text.contains("edgemesh_tunnel_holepunch_attempts_total{"), "no relay, no punch: {text}");
    assert!(text.contains("\nedgemesh_libp2p_"), "libp2p's own metrics: {text}");

    // node-b served the same streams: what it received is what node-a sent.
    let (sent_b, received_b) = (
        r#"edgemesh_tunnel_sent_bytes_total{node="node-a"}"#,
        r#"edgemesh_tunnel_received_bytes_total{node="node-a"}"#,
    );
    let text_b = eventually_every(Duration::from_millis(200), LIMIT, "node-b's metrics of node-a", || {
        let text = agent_b.get("/metrics")?;
        let done = sample(&text, received_b).is_some_and(|n| n >= carried)
            && sample(&text, sent_b).is_some_and(|n| n >= carried);
        done.then_some(text)
    });
    // mDNS dials before either side knows the other's name; when both dial
    // at once, the connection kept may be either's (the other's dial then
    // counts as an error), so the dial that made it is on one side or the other.
    let dials_ok = |text: &str, peer: &str| -> f64 {
        [peer, "unknown"]
            .map(|node| sample(text, &format!(r#"edgemesh_tunnel_dials_total{{node="{node}",result="ok"}}"#)))
            .iter()
            .flatten()
            .sum()
    };
    assert!(dials_ok(&text, "node-b") + dials_ok(&text_b, "node-a") >= 1.0, "{text}\n{text_b}");
    let inbound = r#"edgemesh_tunnel_streams_opened_total{node="node-a",direction="inbound"}"#;
    assert_eq!(sample(&text_b, inbound), Some(2.0), "{text_b}");
    assert_eq!(sample(&text_b, r#"edgemesh_tunnel_peer_streams{node="node-a"}"#), Some(1.0), "{text_b}");
    assert_within_1_percent(&text_b, received_b, carried);
    assert_within_1_percent(&text_b, sent_b, carried);

    // The held connection closes: no stream is open any more.
    drop(held);
    let text = eventually_every(Duration::from_millis(200), LIMIT, "node-a's open streams to drop to 0", || {
        let text = agent_a.get("/metrics")?;
        (sample(&text, streams) == Some(0.0)).then_some(text)
    });

    // A UDP session: exactly the datagrams' bodies are counted (not their
    // length prefixes); the echo server answers `echo:<datagram>`.
    let count = 50;
    let dgram = format!("{}:7001", agent_a.vip("default", "dgram").expect("dgram has a VIP on node-a"));
    assert_eq!(udp_stream(&a.ns, &dgram, count), Ok(count));
    let to_b: usize = (0..count).map(|i| datagram(i).len()).sum();
    let from_b = to_b + "echo:".len() * count as usize;
    let counter = |text: &str, series| sample(text, series).unwrap_or(0.0);
    let sent_now = counter(&text, sent) + to_b as f64;
    let received_now = counter(&text, received) + from_b as f64;
    let text = eventually_every(Duration::from_millis(200), LIMIT, "the UDP session's bytes", || {
        let text = agent_a.get("/metrics")?;
        (counter(&text, received) >= received_now).then_some(text)
    });
    assert_eq!(counter(&text, sent), sent_now, "{text}");
    assert_eq!(counter(&text, received), received_now, "{text}");
    assert_eq!(sample(&text, streams), Some(1.0), "the session is open: {text}");
    for agent in [&agent_a, &agent_b] {
        promtool_check(&agent.get("/metrics").expect("/metrics answers"));
    }
}

#[test]
fn a_relayed_peer_shows_the_relay_and_hole_punches_that_cannot_succeed() {
    require_root();
    let wan = Lan::new("wan");
    let (relay, a, c) = (Node::new("relay"), Node::new("node-a"), Node::new("node-c"));
    wan.attach(&relay.ns, "eth0", &["198.18.0.1/24"]);
    let router_c = behind_nat(&wan, &c, "198.18.0.3", 1);
    let router_a = behind_nat(&wan, &a, "198.18.0.2", 2);
    // The two routers never reach each other: only the relay joins them.
    router_c.black_hole("198.18.0.2");
    router_a.black_hole("198.18.0.3");
    let _echo = TcpEcho::start(&c.ns, "10.1.0.2:7000");
    let cluster = [a.object("10.2.0.2"), c.object("10.1.0.2"), service("echo", "TCP", 7000, "node-c", "10.1.0.2")];
    for n in [&relay, &a, &c] {
        n.manifests(&cluster);
    }
    let (agent_relay, agent_c, agent_a) = start_relayed(&relay, &c, &a);

    let to = format!("{}:7000", agent_a.vip("default", "echo").expect("echo has a VIP on node-a"));
    let bulk = BULK / 4;
    eventually_every(Duration::from_millis(500), LIMIT, "the first transfer through the relay", || {
        echo_bytes(&a.ns, &to, bulk).map_err(|e| eprintln!("transfer: {e}")).ok()
    });
    let held = hold(&a.ns, &to);
    let carried = (bulk + HOLD.len()) as f64;

    let (sent, received) = (
        r#"edgemesh_tunnel_sent_bytes_total{node="node-c"}"#,
        r#"edgemesh_tunnel_received_bytes_total{node="node-c"}"#,
    );
    let attempts = r#"edgemesh_tunnel_holepunch_attempts_total{node="node-c"}"#;
    let reservations = format!(r#"edgemesh_tunnel_relay_reservations{{relay="{}"}}"#, relay.peer_id);
    let text = eventually_every(Duration::from_millis(200), LIMIT, "node-a's metrics of node-c", || {
        let text = agent_a.get("/metrics")?;
        let ready = sample(&text, r#"edgemesh_tunnel_peer_streams{node="node-c"}"#) == Some(1.0)
            && sample(&text, &reservations) == Some(1.0)
            && sample(&text, attempts).is_some_and(|n| n >= 1.0)
            && sample(&text, sent).is_some_and(|n| n >= carried);
        ready.then_some(text)
    });
    assert_eq!(sample(&text, r#"edgemesh_tunnel_peer_path{node="node-c",path="relayed"}"#), Some(1.0), "{text}");
    // (The relay itself, a peer but no node of the cluster, is `unknown` and direct.)
    assert_eq!(sample(&text, r#"edgemesh_tunnel_peer_path{node="node-c",path="direct"}"#), None, "{text}");
    let circuits = format!(r#"edgemesh_tunnel_relay_circuits{{relay="{}"}}"#, relay.peer_id);
    assert!(sample(&text, &circuits).is_some_and(|n| n >= 1.0), "{text}");
    let dials_ok = r#"edgemesh_tunnel_dials_total{node="node-c",result="ok"}"#;
    assert!(sample(&text, dials_ok).is_some_and(|n| n >= 1.0), "{text}");
    let successes = r#"edgemesh_tunnel_holepunch_successes_total{node="node-c"}"#;
    assert_eq!(sample(&text, successes).unwrap_or(0.0), 0.0, "{text}");
    assert_within_1_percent(&text, sent, carried);
    assert_within_1_percent(&text, received, carried);
    assert!(text.contains("\nedgemesh_libp2p_"), "libp2p's own metrics: {text}");

    // The relay holds both nodes' reservations and carries the circuit.
    let served = eventually_every(Duration::from_millis(200), LIMIT, "the relay's served reservations", || {
        let text = agent_relay.get("/metrics")?;
        (sample(&text, "edgemesh_tunnel_relay_served_reservations") == Some(2.0)).then_some(text)
    });
    assert!(sample(&served, "edgemesh_tunnel_relay_served_circuits").is_some_and(|n| n >= 1.0), "{served}");
    drop(held);
    for agent in [&agent_a, &agent_c, &agent_relay] {
        promtool_check(&agent.get("/metrics").expect("/metrics answers"));
    }
}

/// The counter `series` is at least `expected` (nothing lost) and within
/// 1% of it (no tunnel framing counted).
fn assert_within_1_percent(text: &str, series: &str, expected: f64) {
    let got = sample(text, series).unwrap_or_else(|| panic!("no {series}:\n{text}"));
    assert!(got >= expected && got <= expected * 1.01, "{series} is {got}, sent {expected}");
}

/// Sends `n` bytes to `to` (an echo server behind it) from inside `ns` on
/// one connection, and reads all `n` back.
fn echo_bytes(ns: &Netns, to: &str, n: usize) -> Result<(), String> {
    let to = to.to_owned();
    in_netns(&ns.name, move || {
        let mut conn = TcpStream::connect(&to).map_err(|e| format!("connect {to}: {e}"))?;
        conn.set_read_timeout(Some(LIMIT)).map_err(|e| e.to_string())?;
        let mut writer = conn.try_clone().map_err(|e| e.to_string())?;
        let sending = std::thread::spawn(move || {
            writer.write_all(&vec![0x5a; n])?;
            writer.shutdown(Shutdown::Write)
        });
        let mut back = Vec::with_capacity(n);
        let read = conn.read_to_end(&mut back);
        sending.join().expect("writer").map_err(|e| format!("write: {e}"))?;
        read.map_err(|e| format!("read: {e}"))?;
        if back.len() != n {
            return Err(format!("{} of {n} bytes echoed", back.len()));
        }
        Ok(())
    })
}

/// A connection to `to` from inside `ns` that has had its echo and stays
/// open while held.
fn hold(ns: &Netns, to: &str) -> TcpStream {
    let to = to.to_owned();
    in_netns(&ns.name, move || {
        let mut conn = TcpStream::connect(&to).expect("connect to hold");
        conn.set_read_timeout(Some(LIMIT)).unwrap();
        conn.write_all(HOLD).unwrap();
        let mut back = vec![0; HOLD.len()];
        conn.read_exact(&mut back).expect("the held connection's echo");
        conn
    })
}

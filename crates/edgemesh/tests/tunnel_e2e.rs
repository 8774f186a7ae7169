//! The cross-node tunnel as operators run it: each node a network namespace
//! running the real agent, real backends (nginx, iperf3, echo servers) on
//! other nodes, real clients (curl, iperf3) connecting to service VIPs.
//!
//! ```text
//!  LAN:   node-a 10.0.0.2 ─┐
//!         node-b 10.0.0.3 ─┼─ bridge          (mDNS finds the peers)
//!         (node-d..node-h) ┘
//!
//!  NAT:   relay  198.18.0.1 ─┐
//!         node-a 198.18.0.2 ─┼─ "public" WAN bridge
//!         router 198.18.0.3 ─┘ (masquerade) ── 10.1.0.1 │ node-c 10.1.0.2
//!
//!         (or node-a behind a NAT router of its own, WAN address
//!         198.18.0.2, LAN 10.2.0.0/24: only hole punching connects the two)
//! ```
//!
//! Every node's manifests hold the same Services, EndpointSlices (endpoint
//! `nodeName` the node the backend runs on) and Node objects binding node
//! names to peer IDs (`edgemesh.io/peer-id`, from `edgemesh id`). The
//! backends answer with the address they see the connection come from:
//! the agent of their own node, never the client's node.
//!
//! As root (namespaces, nftables); CI runs as root.

mod support;

use std::time::{Duration, Instant};

use serde_json::Value;
use support::eventually_every;
use support::mesh::{
    LIMIT, Node, Transport, addresses, behind_nat, iperf3, lan_pair, peers, service, start_relayed, wait_for_peer,
};
use support::netns::{Lan, NsNginx, NsProcess, TcpEcho, UdpEcho, require_root, tcp_echo_many, udp_window};

#[test]
fn nodes_on_a_lan_find_each_other_by_mdns_and_carry_connections() {
    require_root();
    let (_lan, a, b) = lan_pair();
    let _nginx = NsNginx::start(&b.ns, &["10.0.0.3:80"], "node-b saw $remote_addr");
    let cluster = [a.object("10.0.0.2"), b.object("10.0.0.3"), service("web", "TCP", 80, "node-b", "10.0.0.3")];
    a.manifests(&cluster);
    b.manifests(&cluster);
    // Nobody is told where anybody is: mDNS only (on by default).
    let agent_b = b.start(&[]);
    let agent_a = a.start(&[]);

    let to_b = wait_for_peer(&agent_a, "node-b", "node-a to find node-b by mDNS", |_| true);
    assert_eq!(to_b["peerId"], b.peer_id, "{to_b}");
    assert_eq!(to_b["connection"], "direct", "{to_b}");
    assert!(addresses(&to_b).contains("/ip4/10.0.0.3/"), "{to_b}");
    assert_eq!(agent_a.json("/peers")["peerId"], a.peer_id);
    let to_a = wait_for_peer(&agent_b, "node-a", "node-b to know node-a", |_| true);
    assert_eq!(to_a["peerId"], a.peer_id);

    // The service's only endpoint is on node-b: node-b's agent connects to
    // it (nginx sees node-b's own address, not node-a's).
    let vip = agent_a.vip("default", "web").expect("web has a VIP on node-a");
    for _ in 0..3 {
        assert_eq!(a.ns.curl(&format!("http://{vip}/")).as_deref(), Some("node-b saw 10.0.0.3\n"));
    }
    // On node-b itself the same service is a local endpoint.
    let vip_b = agent_b.vip("default", "web").unwrap();
    assert_eq!(b.ns.curl(&format!("http://{vip_b}/")).as_deref(), Some("node-b saw 10.0.0.3\n"));
}

/// node-c behind a NAT router (WAN address 198.18.0.3), node-a on the WAN
/// (198.18.0.2) or behind a NAT router of its own (WAN address
/// 198.18.0.2), and a relay on the WAN (198.18.0.1). Nobody is told
/// anybody's address but the relay's. node-a reaches node-c's nginx
/// through the relay first, then over a direct connection. The logs of
/// node-a's agent and node-c's.
fn relay_then_direct(a_behind_nat: bool) -> (String, String) {
    let wan = Lan::new("wan");
    let (relay, a, c) = (Node::new("relay"), Node::new("node-a"), Node::new("node-c"));
    wan.attach(&relay.ns, "eth0", &["198.18.0.1/24"]);
    let _router_c = behind_nat(&wan, &c, "198.18.0.3", 1);
    let _router_a = match a_behind_nat {
        true => Some(behind_nat(&wan, &a, "198.18.0.2", 2)),
        false => {
            wan.attach(&a.ns, "eth0", &["198.18.0.2/24"]);
            None
        }
    };
    let _nginx = NsNginx::start(&c.ns, &["10.1.0.2:80"], "node-c saw $remote_addr");
    // The relay is infrastructure, not a node of the cluster: no Node object.
    let cluster = [a.object("198.18.0.2"), c.object("10.1.0.2"), service("web", "TCP", 80, "node-c", "10.1.0.2")];
    for n in [&relay, &a, &c] {
        n.manifests(&cluster);
    }
    // QUIC only in a `--features quic` build (scripts/test.sh runs these tests so too).
    let transport = Transport::of_this_build();
    let (agent_relay, agent_c, agent_a) = start_relayed(&relay, &c, &a);
    assert_eq!(a.ns.curl("http://10.1.0.2/"), None, "node-c is not reachable from node-a");

    // The first connection goes through the relay.
    let vip = agent_a.vip("default", "web").expect("web has a VIP on node-a");
    let url = format!("http://{vip}/");
    assert_eq!(a.ns.curl_with(&["--max-time", "15"], &url).as_deref(), Some("node-c saw 10.1.0.2\n"));
    let to_c = wait_for_peer(&agent_a, "node-c", "node-a to list node-c", |_| true);
    assert_eq!(to_c["peerId"], c.peer_id);
    assert!(addresses(&to_c).contains("/p2p-circuit"), "the first connection is relayed: {to_c}");
    let relayed_conns = peers(&agent_relay);
    assert!(relayed_conns.iter().any(|p| p["peerId"] == a.peer_id), "node-a uses the relay: {relayed_conns:?}");

    // Then node-a and node-c connect directly, through node-c's NAT
    // (node-a sees node-c's router's WAN address).
    let to_c = wait_for_peer(&agent_a, "node-c", "a direct connection to node-c", |p| p["connection"] == "direct");
    eprintln!("node-a's view of node-c once direct: {to_c}");
    let on = transport.marker();
    assert!(addresses(&to_c).split(' ').all(|a| a.contains(on)), "every connection on {on}: {to_c}");
    assert!(addresses(&to_c).contains("/ip4/198.18.0.3/"), "direct, through the NAT: {to_c}");
    for _ in 0..3 {
        assert_eq!(a.ns.curl(&url).as_deref(), Some("node-c saw 10.1.0.2\n"));
    }
    (agent_a.log(), agent_c.log())
}

#[test]
fn a_node_behind_nat_is_reached_through_the_relay_then_directly() {
    require_root();
    // node-a is publicly reachable: node-c can connect to it (connection
    // reversal) or hole punch; either way the connection is direct.
    relay_then_direct(false);
}

#[test]
fn nodes_behind_two_nats_hole_punch() {
    require_root();
    // Neither node can be connected to: only hole punching (DCUtR, a
    // simultaneous TCP open through both NATs) makes the direct connection.
    let (log_a, log_c) = relay_then_direct(true);
    // Over QUIC the punched connection is often the other side's: libp2p
    // then reports no DCUtR success, and the direct connection through two
    // stealth NATs (checked above) is the proof.
    if Transport::of_this_build() == Transport::Tcp {
        for (node, log) in [("node-a", log_a), ("node-c", log_c)] {
            assert!(log.contains("hole punching succeeded"), "{node}'s log says DCUtR made it:\n{log}");
        }
    }
}

#[test]
fn bulk_transfer_and_thousands_of_concurrent_connections() {
    require_root();
    let (_lan, a, b) = lan_pair();
    let _iperf = NsProcess::spawn(&b.ns, &["iperf3", "-s", "-B", "10.0.0.3", "-p", "5201"]);
    let echo = TcpEcho::start(&b.ns, "10.0.0.3:7000");
    let cluster = [
        a.object("10.0.0.2"),
        b.object("10.0.0.3"),
        service("iperf", "TCP", 5201, "node-b", "10.0.0.3"),
        service("echo", "TCP", 7000, "node-b", "10.0.0.3"),
    ];
    a.manifests(&cluster);
    b.manifests(&cluster);
    let _agent_b = b.start(&[]);
    let agent_a = a.start(&[]);
    wait_for_peer(&agent_a, "node-b", "node-a to find node-b", |_| true);

    // For comparison: the same transfer straight over the veth (no tunnel).
    let direct = eventually_every(Duration::from_millis(200), LIMIT, "iperf3 straight to node-b", || {
        iperf3(&a.ns, "10.0.0.3", 2)
    });
    // From here on node-a cannot reach those ports itself: only node-b's
    // agent (a local connection) can.
    b.ns.nft_file(
        "table ip em_tunnel_only {\n\
         \tchain input {\n\
         \t\ttype filter hook input priority filter; policy accept;\n\
         \t\tip saddr 10.0.0.2 tcp dport { 5201, 7000 } reject with tcp reset\n\
         \t}\n\
         }\n",
    );
    assert_eq!(iperf3(&a.ns, "10.0.0.3", 1), None, "node-b's iperf3 is out of node-a's direct reach");
    let vip = agent_a.vip("default", "iperf").expect("iperf has a VIP");
    let tunnelled = iperf3(&a.ns, &vip, 3).expect("iperf3 through the tunnel completes");
    eprintln!(
        "iperf3 node-a -> node-b: {:.0} Mbit/s through the tunnel, {:.0} Mbit/s straight over the veth",
        tunnelled / 1e6,
        direct / 1e6
    );
    assert!(tunnelled > 0.0);

    // 2,000 connections open at once, each with its echo.
    let vip = agent_a.vip("default", "echo").expect("echo has a VIP");
    let started = Instant::now();
    let answered = tcp_echo_many(&a.ns, &format!("{vip}:7000"), 2000, Duration::from_secs(60));
    eprintln!("2,000 concurrent connections through the tunnel: {answered:?} in {:?}", started.elapsed());
    assert_eq!(answered, Ok(2000));
    assert!(echo.accepted.load(std::sync::atomic::Ordering::Relaxed) >= 2000);
}

/// The private network: the PSK is proved once per connection, after the
/// TLS or Noise handshake. A known node with the wrong key (over TLS, or
/// speaking Noise only) or with no key at all gets no connection and no
/// proxied byte; a node with the key connects over either; a node with
/// the key still cannot steal another node's name.
#[test]
fn a_wrong_psk_gets_nothing_and_a_stolen_node_name_is_refused() {
    require_root();
    let lan = Lan::new("lan");
    let (a, b) = (Node::new("node-a"), Node::new("node-b"));
    // node-d knows the PSK but claims node-b's name with its own key;
    // node-e, node-g and node-h are known nodes (their Node objects are
    // everywhere): node-e with the wrong PSK over TLS, node-g with the
    // wrong PSK speaking Noise only, node-h with no PSK; node-f has the
    // right PSK and speaks Noise only.
    let (d, e) = (Node::new("node-b"), Node::new("node-e"));
    let (f, g, h) = (Node::new("node-f"), Node::new("node-g"), Node::new("node-h"));
    let nodes = [(&a, "10.0.0.2"), (&b, "10.0.0.3"), (&d, "10.0.0.4"), (&e, "10.0.0.5")];
    let more = [(&f, "10.0.0.6"), (&g, "10.0.0.7"), (&h, "10.0.0.8")];
    for (n, addr) in nodes.iter().chain(&more) {
        lan.attach(&n.ns, "eth0", &[&format!("{addr}/24")]);
    }
    let _nginx = NsNginx::start(&b.ns, &["10.0.0.3:80"], "node-b saw $remote_addr");
    let web = service("web", "TCP", 80, "node-b", "10.0.0.3");
    let mut cluster = vec![a.object("10.0.0.2"), b.object("10.0.0.3"), web.clone()];
    cluster
        .extend([(&e, "10.0.0.5"), (&f, "10.0.0.6"), (&g, "10.0.0.7"), (&h, "10.0.0.8")].map(|(n, ip)| n.object(ip)));
    for n in [&a, &b, &e, &f, &g, &h] {
        n.manifests(&cluster);
    }
    // The impostor's own manifests bind node-b to its key.
    d.manifests(&[a.object("10.0.0.2"), d.object("10.0.0.4"), web]);
    let keys = tempfile::tempdir().unwrap();
    let psk = |name: &str, byte: u8| {
        let path = keys.path().join(name);
        std::fs::write(&path, format!("/key/swarm/psk/1.0.0/\n/base16/\n{}\n", format!("{byte:02x}").repeat(32)))
            .unwrap();
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
        path.to_str().unwrap().to_owned()
    };
    // node-e and node-g hold two other keys (with one they would find each
    // other by mDNS and form their own network).
    let (shared, other, third) = (psk("shared.key", 0x5a), psk("other.key", 0xa5), psk("third.key", 0xc3));

    let agent_b = b.start(&["--psk-file", &shared]);
    let agent_a = a.start(&["--psk-file", &shared]);
    let _agent_d = d.start(&["--psk-file", &shared]);
    // The strangers are even told where node-b is. They give up on reaching
    // a node after 2 s; node-f and node-g speak Noise only.
    let start = |n: &Node, noise_only: bool, key: Option<&str>| {
        let config = n.path("config.yaml");
        let tls = if noise_only { "  tls: false\n" } else { "" };
        std::fs::write(&config, format!("tunnel:\n  connectTimeout: 2s\n{tls}")).unwrap();
        let mut args = vec!["--config".to_owned(), config.to_str().unwrap().to_owned()];
        args.extend(["--bootstrap".to_owned(), b.tunnel_addr("10.0.0.3")]);
        if let Some(key) = key {
            args.extend(["--psk-file".to_owned(), key.to_owned()]);
        }
        n.start_with(&args)
    };
    let agent_e = start(&e, false, Some(&other));
    let agent_f = start(&f, true, Some(&shared));
    let agent_g = start(&g, true, Some(&third));
    let agent_h = start(&h, false, None);

    let to_b = wait_for_peer(&agent_a, "node-b", "node-a to find node-b", |_| true);
    assert_eq!(to_b["peerId"], b.peer_id);

    // The impostor is refused, and node-a's log names it.
    let refusal = eventually_every(Duration::from_millis(200), LIMIT, "node-a to refuse node-d", || {
        agent_a.log().lines().find(|l| l.contains("refusing peer") && l.contains(&d.peer_id)).map(str::to_owned)
    });
    assert!(refusal.contains("node-b"), "the log names the claimed node: {refusal}");
    // node-a's traffic for node-b still goes to node-b, and so does node-f's
    // (the right key over Noise).
    for (n, agent, from) in [(&a, &agent_a, "10.0.0.3"), (&f, &agent_f, "10.0.0.3")] {
        let vip = agent.vip("default", "web").unwrap();
        for _ in 0..3 {
            assert_eq!(n.ns.curl(&format!("http://{vip}/")).as_deref(), Some(format!("node-b saw {from}\n").as_str()));
        }
    }
    let listed = peers(&agent_a);
    assert!(
        listed.iter().filter(|p| p["node"] == "node-b").all(|p| p["peerId"] == b.peer_id),
        "only the real node-b is node-b: {listed:?}"
    );
    assert!(!listed.iter().any(|p| p["peerId"] == d.peer_id && p["trusted"] == true), "{listed:?}");

    // The strangers' requests through the tunnel fail, and nobody lists them.
    for (n, agent) in [(&e, &agent_e), (&g, &agent_g), (&h, &agent_h)] {
        let vip = agent.vip("default", "web").unwrap();
        assert_eq!(n.ns.curl(&format!("http://{vip}/")), None, "nothing through the tunnel for {}", n.name);
        // It did try the tunnel, and says so.
        eventually_every(Duration::from_millis(200), LIMIT, &format!("{}'s proxy to give up", n.name), || {
            agent
                .log()
                .lines()
                .any(|l| l.contains("endpoint 10.0.0.3:80 on node node-b") && l.contains("through the tunnel"))
                .then_some(())
        });
        assert_eq!(peers(agent), Vec::<Value>::new(), "{} has no peers", n.name);
        for agent in [&agent_a, &agent_b] {
            let listed = peers(agent);
            assert!(!listed.iter().any(|p| p["peerId"] == n.peer_id), "{listed:?}");
        }
    }
    // node-b names the wrong keys' addresses (once per 10 s: node-e's or
    // node-g's) and counts every refusal, TLS and Noise alike; the keyless
    // node-h fails in negotiation, before any handshake.
    let warned = eventually_every(Duration::from_millis(200), LIMIT, "node-b to warn of a wrong PSK", || {
        agent_b.log().lines().find(|l| l.contains("does not have this network's PSK")).map(str::to_owned)
    });
    assert!(warned.contains("10.0.0.5") || warned.contains("10.0.0.7"), "{warned}");
    let refused = |agent: &support::netns::NsAgent| {
        let metrics = agent.get("/metrics").unwrap_or_default();
        edgemesh_test_support::scrape::sample(&metrics, r#"edgemesh_tunnel_peers_refused_total{reason="psk"}"#)
            .unwrap_or(0.0)
    };
    eventually_every(Duration::from_millis(200), LIMIT, "node-e and node-g to count node-b's refusal", || {
        (refused(&agent_e) >= 1.0 && refused(&agent_g) >= 1.0).then_some(())
    });
    assert!(refused(&agent_b) >= 2.0, "node-b counts both wrong keys: {}", refused(&agent_b));
    assert_eq!(refused(&agent_h), 0.0, "no key, no proof: node-h fails in negotiation");
    let negotiation = eventually_every(Duration::from_millis(200), LIMIT, "node-b to name node-h", || {
        agent_b.log().lines().find(|l| l.contains("speaks none of this network's PSK protocols")).map(str::to_owned)
    });
    assert!(negotiation.contains("10.0.0.8"), "{negotiation}");
}

#[test]
fn a_hundred_thousand_datagrams_in_one_udp_session() {
    require_root();
    let (_lan, a, b) = lan_pair();
    let echo = UdpEcho::start(&b.ns, "10.0.0.3:7007");
    let cluster = [a.object("10.0.0.2"), b.object("10.0.0.3"), service("echo", "UDP", 7007, "node-b", "10.0.0.3")];
    a.manifests(&cluster);
    b.manifests(&cluster);
    let _agent_b = b.start(&[]);
    let agent_a = a.start(&[]);
    wait_for_peer(&agent_a, "node-b", "node-a to find node-b", |_| true);

    let vip = agent_a.vip("default", "echo").expect("echo has a VIP");
    let started = Instant::now();
    let answered = udp_window(&a.ns, &format!("{vip}:7007"), 100_000, 64).expect("the echoes are right");
    eprintln!("UDP through the tunnel: {answered} of 100,000 datagrams answered in {:?}", started.elapsed());
    assert!(answered >= 99_900, "{answered} of 100,000 answered");
    // One client socket, one proxy session, one tunnel session: node-b's
    // agent sent every datagram from one socket of its own.
    let sources: Vec<_> = echo.sources.lock().unwrap().iter().copied().collect();
    assert_eq!(sources.len(), 1, "{sources:?}");
    assert_eq!(sources[0].ip().to_string(), "10.0.0.3", "from node-b's agent: {sources:?}");
}

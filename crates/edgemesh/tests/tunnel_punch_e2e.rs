//! Hole punching through NAT routers whose own TCP stack answers
//! unsolicited SYNs with a reset (issue #13), with real agents in network
//! namespaces, a real client (curl) and a real backend (nginx).
//!
//! ```text
//!  relay 198.18.0.2 ── 198.18.0.1 ┐
//!  rtr-a 198.18.2.2 ── 198.18.2.1 ┼ inet (a router: the routers are never one hop apart)
//!  rtr-c 198.18.3.2 ── 198.18.3.1 ┘
//!    │ 10.2.0.1                │ 10.1.0.1
//!  node-a 10.2.0.2           node-c 10.1.0.2 (nginx :80)
//! ```
//!
//! The NAT routers masquerade, drop new connections they would forward
//! from the WAN, and accept those to themselves: their own TCP stack
//! resets a SYN to a port nobody listens on there, as many routers do. The
//! first SYN of a hole punch to reach the other router is reset, and the
//! reset deletes its sender's mapping on the way back, so DCUtR alone never
//! gets through. With priming (`tunnel.punchTtl`, default 2) each dial's
//! first SYN expires at `inet`, after making its own router's mapping. Each
//! test prints `FAULT scenario=<name> transport=tcp failed=<n>/<total>
//! recovery_s=<time to direct>`. As root; CI runs as root.

mod support;

use std::io::ErrorKind;
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::eventually_every;
use support::mesh::{LIMIT, Node, TUNNEL_PORT, Transport, peers, service, wait_for_peer_within};
use support::netns::{Netns, NsAgent, NsNginx, in_netns, link, require_root};

/// Bound on becoming direct: DCUtR's first attempt (a primed dial's SYN is
/// retransmitted after 1 s) and, as a margin, the first re-upgrade 10 s
/// after the pair became relayed.
const DIRECT: Duration = Duration::from_secs(20);
const RELAY_WAN: &str = "198.18.0.2";
const A_WAN: &str = "198.18.2.2";
const C_WAN: &str = "198.18.3.2";
const BODY: &str = "node-c saw 10.1.0.2\n";

/// The topology above with its agents running (node-c holds a relay
/// reservation). Fields drop in order: agents first, namespaces last.
struct Pair {
    agent_a: NsAgent,
    _agent_c: NsAgent,
    _agent_relay: NsAgent,
    _nginx: NsNginx,
    router_a: Netns,
    router_c: Netns,
    _relay: Node,
    a: Node,
    _c: Node,
    _inet: Netns,
    /// `http://<web VIP>/` on node-a.
    web: String,
}

impl Pair {
    /// `punch_ttl`: the agents' `--punch-ttl` (None: the default).
    fn start(punch_ttl: Option<&str>) -> Pair {
        let inet = Netns::router("inet");
        let (relay, a, c) = (Node::new("relay"), Node::new("node-a"), Node::new("node-c"));
        link(&relay.ns, "eth0", &inet, "i0");
        relay.ns.addr("eth0", &format!("{RELAY_WAN}/24"));
        inet.addr("i0", "198.18.0.1/24");
        relay.ns.route("default", "198.18.0.1");
        let router_c = resetting_nat(&inet, 3, &c, 1);
        let router_a = resetting_nat(&inet, 2, &a, 2);
        routers_reset_unsolicited_syns(&a, C_WAN);

        let nginx = NsNginx::start(&c.ns, &["10.1.0.2:80"], "node-c saw $remote_addr");
        let cluster = [a.object(A_WAN), c.object("10.1.0.2"), service("web", "TCP", 80, "node-c", "10.1.0.2")];
        for n in [&relay, &a, &c] {
            n.manifests(&cluster);
        }
        let tcp = Transport::Tcp;
        let agent_relay = relay.start_with(&tcp.with_listen(&["--relay-server", "--no-mdns"]));
        let relay_addr = relay.tunnel_addr(RELAY_WAN);
        let mut args = vec!["--relay", &relay_addr, "--no-mdns"];
        if let Some(ttl) = punch_ttl {
            args.extend(["--punch-ttl", ttl]);
        }
        let args = tcp.with_listen(&args);
        let agent_c = c.start_with(&args);
        eventually_every(Duration::from_millis(200), LIMIT, "node-c's relay reservation", || {
            peers(&agent_c).into_iter().find(|p| p["peerId"] == relay.peer_id && p["relayReserved"] == true)
        });
        let agent_a = a.start_with(&args);
        let web = format!("http://{}/", agent_a.vip("default", "web").expect("web has a VIP on node-a"));
        Pair {
            agent_a,
            _agent_c: agent_c,
            _agent_relay: agent_relay,
            _nginx: nginx,
            router_a,
            router_c,
            _relay: relay,
            a,
            _c: c,
            _inet: inet,
            web,
        }
    }

    fn get(&self) -> Option<String> {
        self.a.ns.curl_with(&["--max-time", "10"], &self.web)
    }

    /// The first request through the tunnel (relayed: nothing else connects
    /// the nodes yet), and when it succeeded.
    fn first_request(&self) -> Instant {
        let body =
            eventually_every(Duration::from_millis(500), LIMIT, "a first request through the tunnel", || self.get());
        assert_eq!(body, BODY);
        Instant::now()
    }

    /// node-a's `/peers` entry for node-c.
    fn entry(&self) -> Option<Value> {
        peers(&self.agent_a).into_iter().find(|p| p["node"] == "node-c" && p["trusted"] == true)
    }
}

/// A NAT router between `inet` (WAN `198.18.<wan>.2/24`, default route
/// `198.18.<wan>.1`) and `node` (`10.<lan>.0.2` behind `10.<lan>.0.1`),
/// whose own stack answers connections from the WAN (see the module doc).
fn resetting_nat(inet: &Netns, wan: u8, node: &Node, lan: u8) -> Netns {
    let router = Netns::router("rtr");
    link(&router, "wan0", inet, &format!("i{wan}"));
    router.addr("wan0", &format!("198.18.{wan}.2/24"));
    inet.addr(&format!("i{wan}"), &format!("198.18.{wan}.1/24"));
    router.route("default", &format!("198.18.{wan}.1"));
    link(&router, "lan0", &node.ns, "eth0");
    router.addr("lan0", &format!("10.{lan}.0.1/24"));
    node.ns.addr("eth0", &format!("10.{lan}.0.2/24"));
    node.ns.route("default", &format!("10.{lan}.0.1"));
    // (No chain may be called `fwd`: a keyword in nftables 1.0.6.)
    router.nft_file(
        "table ip em_nat {\n\
         \tchain postrouting {\n\
         \t\ttype nat hook postrouting priority srcnat; policy accept;\n\
         \t\toifname \"wan0\" masquerade\n\
         \t}\n\
         }\n\
         table ip em_filter {\n\
         \tchain forward {\n\
         \t\ttype filter hook forward priority filter; policy accept;\n\
         \t\tiifname \"wan0\" ct state new drop\n\
         \t}\n\
         \tchain input {\n\
         \t\ttype filter hook input priority filter; policy accept;\n\
         \t\tiifname \"wan0\" ct state new accept\n\
         \t}\n\
         }\n",
    );
    router
}

/// The model holds: a SYN from `from` to the tunnel port of the router at
/// `router_wan` is refused (a reset from the router's own stack), not
/// dropped and not forwarded.
fn routers_reset_unsolicited_syns(from: &Node, router_wan: &str) {
    let to: SocketAddr = format!("{router_wan}:{TUNNEL_PORT}").parse().unwrap();
    let refused = in_netns(&from.ns.name, move || TcpStream::connect_timeout(&to, Duration::from_secs(3)));
    assert_eq!(refused.map(drop).map_err(|e| e.kind()), Err(ErrorKind::ConnectionRefused));
}

/// curl from node-a to node-c's nginx, one request after another (200 ms
/// apart) until stopped: (failed, total).
struct Requests {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<(usize, usize)>,
}

impl Requests {
    fn start(pair: &Pair) -> Requests {
        let stop = Arc::new(AtomicBool::new(false));
        let (flag, ns, url) = (stop.clone(), pair.a.ns.name.clone(), pair.web.clone());
        let thread = std::thread::spawn(move || {
            let (mut failed, mut total) = (0, 0);
            while !flag.load(Ordering::Relaxed) {
                let out = std::process::Command::new("ip")
                    .args(["netns", "exec", &ns, "curl", "-sS", "--max-time", "10", &url])
                    .output()
                    .unwrap();
                total += 1;
                if !out.status.success() || out.stdout != BODY.as_bytes() {
                    failed += 1;
                }
                std::thread::sleep(Duration::from_millis(200));
            }
            (failed, total)
        });
        Requests { stop, thread }
    }

    fn stop(self) -> (usize, usize) {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap()
    }
}

fn print(scenario: &str, failed: usize, total: usize, recovery: Option<Duration>) {
    let recovery = recovery.map_or("none".to_owned(), |d| format!("{:.1}", d.as_secs_f64()));
    println!("FAULT scenario={scenario} transport=tcp failed={failed}/{total} recovery_s={recovery}");
}

#[test]
fn hole_punching_gets_through_nat_routers_that_reset_unsolicited_syns() {
    require_root();
    let pair = Pair::start(None);
    let relayed = pair.first_request();
    let requests = Requests::start(&pair);
    let direct = wait_for_peer_within(&pair.agent_a, "node-c", DIRECT, "a direct path to node-c", |p| {
        p["connection"] == "direct"
    });
    let took = relayed.elapsed();
    std::thread::sleep(Duration::from_secs(1));
    let (failed, total) = requests.stop();
    print("reset-nat-hole-punch", failed, total, Some(took));
    assert_eq!(failed, 0, "no request failed while the pair moved to the direct path");
    let punched: Vec<&Value> = direct["connections"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["connection"] == "direct" && c["state"] == "alive")
        .collect();
    assert!(!punched.is_empty(), "{direct}");
    for c in &punched {
        let address = c["address"].as_str().unwrap();
        assert!(!address.contains("p2p-circuit"), "{c}");
        assert!(address.starts_with(&format!("/ip4/{C_WAN}/tcp/")), "through node-c's router: {c}");
    }
    // The relay path is black-holed: a request now can only take the
    // direct one.
    pair.router_a.black_hole(RELAY_WAN);
    pair.router_c.black_hole(RELAY_WAN);
    assert_eq!(pair.get().as_deref(), Some(BODY));
    assert_eq!(pair.entry().map(|p| p["connection"].clone()), Some("direct".into()));
}

/// As the test above, priming off. DCUtR alone usually fails here (the
/// first SYN to reach the other router is reset), but not always: it times
/// both dials to start together, and when both SYNs leave their routers
/// before either reaches the other's, each finds its own router's mapping
/// and the simultaneous open gets through without priming (one clean-clone
/// run in five here, session 11). So this control asserts what holds
/// either way: the relay carries every request while the punches fail,
/// and a direct path, if one forms, is a real one through node-c's router.
/// That priming makes punching reliable is the test above's (direct every
/// time, within `DIRECT`).
#[test]
fn without_priming_the_relay_carries_every_request() {
    require_root();
    let pair = Pair::start(Some("0"));
    let relayed = pair.first_request();
    let requests = Requests::start(&pair);
    let mut direct = false;
    while relayed.elapsed() < DIRECT {
        let entry = pair.entry().expect("node-a lists node-c");
        match entry["connection"].as_str() {
            Some("relayed") => {}
            Some("direct") => {
                direct = true;
                let live = entry["connections"].as_array().unwrap().iter().filter(|c| c["connection"] == "direct");
                for c in live {
                    let address = c["address"].as_str().unwrap();
                    assert!(address.starts_with(&format!("/ip4/{C_WAN}/tcp/")), "through node-c's router: {c}");
                }
            }
            _ => panic!("neither relayed nor direct: {entry}"),
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let (failed, total) = requests.stop();
    print("reset-nat-no-priming", failed, total, None);
    println!("reset-nat-no-priming: a simultaneous open got through without priming: {direct}");
    assert_eq!(failed, 0, "the relay carries every request");
}

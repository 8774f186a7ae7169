//! Edge faults of the tunnel (issue #13): port mapping through a real UPnP
//! router, and traffic through restarts and churn, in network namespaces
//! with the real agent, nginx, a UDP echo and curl.
//!
//! ```text
//!  node-b 198.18.0.2 ─┐                            (public; default route on the WAN)
//!  relays 198.18.0.1, ┼─ "public" WAN bridge
//!         198.18.0.4 ─┤
//!  router 198.18.0.3 ─┘ (NAT: drops connections from the WAN) ── 10.1.0.1 │ node-a / node-c 10.1.0.2
//! ```
//!
//! Each fault test keeps real clients running through the fault (curl to
//! nginx every 250 ms, at most 2 s each; a UDP echo where it fits), prints
//! `FAULT scenario=<name> transport=<tcp|udp> failed=<n>/<total>
//! recovery_s=<x>` (recovery: from the end of the fault to the first
//! success after the last failure) and holds it to the issue's bound.
//!
//! As root (namespaces, nftables); CI runs as root.

mod support;

use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use support::mesh::{
    LIMIT, Node, TUNNEL_PORT, addresses, behind_nat, iperf3, on_wan, peers, reset_unsolicited, service, wait_for_peer,
};
use support::netns::{Lan, Netns, NsAgent, NsNginx, NsProcess, UdpEcho, link, require_root};
use support::probe::Probe;
use support::{eventually, eventually_every};

/// How soon traffic must flow again after a restart or a link coming back.
const RECOVERY: f64 = 10.0;
/// How long a killed agent stays down before its restart.
const DOWNTIME: Duration = Duration::from_secs(3);
/// How soon reservations and circuits must move to a surviving relay.
const RELAY_RECOVERY: f64 = 30.0;

/// Waits until each probe has had `n` successes since `since`, or panics
/// after `limit`.
fn wait_for_traffic(probes: &[&Probe], since: Instant, n: usize, limit: Duration) {
    eventually_every(Duration::from_millis(100), limit, "traffic to flow", || {
        probes.iter().all(|p| p.succeeded_since(since) >= n).then_some(())
    });
}

/// node-b on the WAN (198.18.0.2; its default route points at the WAN's
/// upstream, 198.18.0.254) serving nginx (TCP 80), a UDP echo (7007) and
/// iperf3 (5201);
/// node-a behind a NAT router (WAN address 198.18.0.3). The agents are not
/// started: node-a names node-b as its bootstrap peer.
struct EdgeAndCloud {
    _wan: Lan,
    a: Node,
    b: Node,
    _router: Netns,
    _nginx: NsNginx,
    _echo: UdpEcho,
    _iperf: NsProcess,
}

impl EdgeAndCloud {
    fn new() -> EdgeAndCloud {
        let wan = Lan::new("wan");
        let (a, b) = (Node::new("node-a"), Node::new("node-b"));
        on_wan(&wan, &b, "198.18.0.2");
        let router = behind_nat(&wan, &a, "198.18.0.3", 1);
        let nginx = NsNginx::start(&b.ns, &["198.18.0.2:80"], "node-b saw $remote_addr");
        let echo = UdpEcho::start(&b.ns, "198.18.0.2:7007");
        let iperf = NsProcess::spawn(&b.ns, &["iperf3", "-s", "-B", "198.18.0.2", "-p", "5201"]);
        let cluster = [
            a.object("10.1.0.2"),
            b.object("198.18.0.2"),
            service("web", "TCP", 80, "node-b", "198.18.0.2"),
            service("echo", "UDP", 7007, "node-b", "198.18.0.2"),
            service("iperf", "TCP", 5201, "node-b", "198.18.0.2"),
        ];
        a.manifests(&cluster);
        b.manifests(&cluster);
        EdgeAndCloud { _wan: wan, a, b, _router: router, _nginx: nginx, _echo: echo, _iperf: iperf }
    }

    fn start_b(&self) -> NsAgent {
        self.start_b_with(&[])
    }

    fn start_a(&self) -> NsAgent {
        self.start_a_with(&[])
    }

    fn start_b_with(&self, extra: &[&str]) -> NsAgent {
        self.b.start(&[&["--no-mdns"], extra].concat())
    }

    fn start_a_with(&self, extra: &[&str]) -> NsAgent {
        self.a.start(&[&["--no-mdns", "--bootstrap", &self.b.tunnel_addr("198.18.0.2")], extra].concat())
    }

    /// curl to the web service and datagrams to the echo service, from
    /// node-a, once node-a's agent is connected to node-b and serves both.
    fn probes(&self, agent_a: &NsAgent) -> (Probe, Probe) {
        wait_for_peer(agent_a, "node-b", "node-a to connect to node-b", |_| true);
        let web = agent_a.vip("default", "web").expect("web has a VIP on node-a");
        let echo = agent_a.vip("default", "echo").expect("echo has a VIP on node-a");
        let http = Probe::http(&self.a.ns, &format!("http://{web}/"), "node-b saw 198.18.0.2\n");
        let udp = Probe::udp(&self.a.ns, &format!("{echo}:7007"));
        wait_for_traffic(&[&http, &udp], Instant::now(), 3, LIMIT);
        (http, udp)
    }
}

/// The agent on node-b is killed with SIGKILL and restarted on the same
/// state directory (same identity) 3 s later; node-a's clients keep going
/// throughout. The restart closes node-a's connection (node-b's kernel
/// resets it); node-a dials node-b again (its bootstrap peer, and on the
/// next proxied connection).
#[test]
fn a_peer_agent_killed_and_restarted_carries_traffic_again_within_10s_of_readiness() {
    require_root();
    let t = EdgeAndCloud::new();
    let agent_b = t.start_b();
    let agent_a = t.start_a();
    let (http, udp) = t.probes(&agent_a);

    agent_b.kill9();
    // Down for a while, as under a supervisor's restart delay: node-a's
    // dials fail meanwhile (refused), and its back-off grows.
    std::thread::sleep(DOWNTIME);
    let agent_b = t.start_b();
    let ready = Instant::now();
    wait_for_traffic(&[&http, &udp], ready, 3, LIMIT);
    for probe in [http, udp] {
        let recovery = probe.stop().report("peer-agent-kill9-restart", ready);
        assert!(recovery <= RECOVERY, "traffic resumed {recovery:.1}s after node-b's agent was ready");
    }
    let to_a = wait_for_peer(&agent_b, "node-a", "the restarted node-b to know node-a", |_| true);
    assert_eq!(to_a["peerId"], t.a.peer_id);
}

/// node-a's uplink goes down for 5 s (`ip link set eth0 down` in its
/// namespace) and comes back. The kernel deletes the routes through a
/// link that goes down, default route included, and does not restore the
/// default route when it comes back: the test puts it back, as the node's
/// network configuration (DHCP, networkd) would. The tunnel connection
/// survives (TCP retransmits, the NAT router keeps its entry) and carries
/// the traffic again; an iperf3 transfer running across the outage
/// completes. A longer outage, or one only the far side's path suffers (a
/// black hole node-b cannot see), is the job of the connections' liveness
/// checks (pings), not tested here.
///
/// Both agents run with `tunnel.livenessTimeout: 10s`: after 5 s without
/// a link, TCP's retransmission back-off sends its next try about 6 s after
/// the first loss, so with the default 5 s the pings' verdict and TCP's
/// recovery race, and the connection is as often closed and replaced (as
/// the other tests here cover) as kept.
#[test]
fn a_node_uplink_down_and_up_carries_traffic_again_within_10s() {
    require_root();
    let t = EdgeAndCloud::new();
    let config = t.a.path("patient-liveness.yaml");
    std::fs::write(&config, "tunnel:\n  livenessTimeout: 10s\n").unwrap();
    let patient = ["--config", config.to_str().unwrap()];
    let _agent_b = t.start_b_with(&patient);
    let agent_a = t.start_a_with(&patient);
    let (http, udp) = t.probes(&agent_a);

    // A bulk transfer runs through the outage too.
    let iperf = agent_a.vip("default", "iperf").expect("iperf has a VIP on node-a");
    std::thread::scope(|scope| {
        let bulk = scope.spawn(|| iperf3(&t.a.ns, &iperf, 12));
        eventually(LIMIT, "iperf3's control and data connections", || {
            let out = t.a.ns.ok(&["ss", "-Htn", "state", "established", "dport", "=", ":5201"]);
            (out.lines().count() >= 2).then_some(())
        });

        t.a.ns.ip(&["link", "set", "eth0", "down"]);
        let down = Instant::now();
        assert_eq!(t.a.ns.ok(&["ip", "-4", "route", "show", "default"]), "", "the default route went with the link");
        // The outage itself: nothing to wait for.
        std::thread::sleep(Duration::from_secs(5).saturating_sub(down.elapsed()));
        t.a.ns.ip(&["link", "set", "eth0", "up"]);
        let up = Instant::now();
        if t.a.ns.ok(&["ip", "-4", "route", "show", "default"]).is_empty() {
            t.a.ns.route("default", "10.1.0.1");
        }
        wait_for_traffic(&[&http, &udp], up, 3, LIMIT);
        for probe in [http, udp] {
            let outcome = probe.stop();
            assert!(outcome.failed() > 0, "the outage cost some {} requests", outcome.transport);
            let recovery = outcome.report("uplink-down-5s-up", up);
            assert!(recovery <= RECOVERY, "traffic resumed {recovery:.1}s after the link came back");
        }
        let bits = bulk.join().unwrap().expect("iperf3 through the outage completes");
        println!(
            "FAULT scenario=uplink-down-5s-up transport=iperf3 completed=yes mbit_s={:.0} (12 s with 5 s down)",
            bits / 1e6
        );
    });
}

/// Makes `router`'s NAT symmetric (a new source port for every
/// connection), so hole punching through it fails and a relayed
/// connection stays relayed; connections from the WAN still drop.
fn symmetric_nat(router: &Netns) {
    router.nft(&["delete", "table", "ip", "em_nat"]);
    router.nft_file(
        "table ip em_nat {\n\
         \tchain postrouting {\n\
         \t\ttype nat hook postrouting priority srcnat; policy accept;\n\
         \t\toifname \"wan0\" masquerade fully-random\n\
         \t}\n\
         }\n",
    );
}

/// Two relays on the WAN; node-c behind a NAT router (which resets
/// connections from the WAN) serves nginx, node-a behind a symmetric NAT
/// (which drops them) reaches it, both configured with both relays.
/// node-c holds a slot on each; node-a's connection to node-c is relayed
/// (hole punching cannot pass the symmetric NAT). The relay carrying it is
/// killed with SIGKILL: node-a's next connection goes through the other
/// relay, where node-c's reservation still stands.
#[test]
fn a_relay_killed_moves_reservations_and_circuits_to_the_other_within_30s() {
    require_root();
    let wan = Lan::new("wan");
    let (relay1, relay2) = (Node::new("relay1"), Node::new("relay2"));
    let (a, c) = (Node::new("node-a"), Node::new("node-c"));
    on_wan(&wan, &relay1, "198.18.0.1");
    on_wan(&wan, &relay2, "198.18.0.4");
    let router_c = behind_nat(&wan, &c, "198.18.0.3", 1);
    reset_unsolicited(&router_c);
    let router_a = behind_nat(&wan, &a, "198.18.0.2", 2);
    symmetric_nat(&router_a);
    let _nginx = NsNginx::start(&c.ns, &["10.1.0.2:80"], "node-c saw $remote_addr");
    let cluster = [a.object("10.2.0.2"), c.object("10.1.0.2"), service("web", "TCP", 80, "node-c", "10.1.0.2")];
    for n in [&relay1, &relay2, &a, &c] {
        n.manifests(&cluster);
    }
    let relay_addrs = [relay1.tunnel_addr("198.18.0.1"), relay2.tunnel_addr("198.18.0.4")];
    let mut relay_agents =
        vec![relay1.start(&["--relay-server", "--no-mdns"]), relay2.start(&["--relay-server", "--no-mdns"])];
    let with_relays = ["--no-mdns", "--relay", &relay_addrs[0], "--relay", &relay_addrs[1]];
    let agent_c = c.start(&with_relays);
    let reserved_on = |relay: &Node| {
        let id = relay.peer_id.clone();
        move |p: &serde_json::Value| p["peerId"] == id && p["relayReserved"] == true
    };
    for relay in [&relay1, &relay2] {
        eventually_every(Duration::from_millis(200), LIMIT, "node-c's reservations on both relays", || {
            peers(&agent_c).into_iter().find(reserved_on(relay))
        });
    }
    let agent_a = a.start(&with_relays);
    let vip = agent_a.vip("default", "web").expect("web has a VIP on node-a");
    let http = Probe::http(&a.ns, &format!("http://{vip}/"), "node-c saw 10.1.0.2\n");
    wait_for_traffic(&[&http], Instant::now(), 3, LIMIT);
    let to_c = wait_for_peer(&agent_a, "node-c", "node-a to list node-c", |_| true);
    assert_eq!(to_c["connection"], "relayed", "hole punching cannot pass node-a's symmetric NAT: {to_c}");
    let (dead, alive) = match addresses(&to_c).contains(&relay1.peer_id) {
        true => (0, 1),
        false => (1, 0),
    };
    let relays = [&relay1, &relay2];
    assert!(addresses(&to_c).contains(&relays[dead].peer_id), "{to_c}");

    relay_agents.remove(dead).kill9();
    let killed = Instant::now();
    let surviving = relays[alive].peer_id.clone();
    wait_for_peer(&agent_a, "node-c", "node-a's circuit through the surviving relay", |p| {
        p["connection"] == "relayed"
            && addresses(p).contains(&surviving)
            && !addresses(p).contains(&relays[dead].peer_id)
    });
    eventually_every(Duration::from_millis(200), LIMIT, "node-c's reservation on the surviving relay only", || {
        let listed = peers(&agent_c);
        let on_dead = listed.iter().any(reserved_on(relays[dead]));
        (!on_dead && listed.iter().any(reserved_on(relays[alive]))).then_some(())
    });
    let moved = killed.elapsed().as_secs_f64();
    wait_for_traffic(&[&http], Instant::now(), 3, LIMIT);
    let recovery = http.stop().report("relay-kill9-of-two", killed);
    println!("FAULT scenario=relay-kill9-of-two reservations_and_circuits_moved_s={moved:.2}");
    assert!(recovery <= RELAY_RECOVERY, "traffic moved {recovery:.1}s after the relay died");
    assert!(moved <= RELAY_RECOVERY, "reservations and circuits moved {moved:.1}s after the relay died");
}

/// A real UPnP IGD router (`miniupnpd`, nftables backend) in a router
/// namespace: NAT out of `wan0`, connections from the WAN dropped unless
/// the router maps their port. miniupnpd logs to `log`; stopped on drop.
///
/// Its WAN address must be public: miniupnpd 2.3 refuses port mappings on
/// an external address in a reserved range (RFC 2544's 198.18.0.0/15
/// included; `ext_ip=` with one is a start-up error) and libp2p's UPnP
/// ignores a router whose external address is not global. So this WAN is
/// 11.0.0.0/24, which lives only in the test's namespaces.
struct UpnpRouter {
    ns: Netns,
    child: Child,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl UpnpRouter {
    /// The router on `wan` (address `wan_address`/24) in front of `node`
    /// (10.`lan`.0.2 behind 10.`lan`.0.1, its default route, which also
    /// carries the SSDP search to the router).
    fn new(wan: &Lan, node: &Node, wan_address: &str, lan: u8) -> UpnpRouter {
        let ns = Netns::router("upnp");
        wan.attach(&ns, "wan0", &[&format!("{wan_address}/24")]);
        link(&ns, "lan0", &node.ns, "eth0");
        ns.addr("lan0", &format!("10.{lan}.0.1/24"));
        node.ns.addr("eth0", &format!("10.{lan}.0.2/24"));
        node.ns.route("default", &format!("10.{lan}.0.1"));
        // The chains miniupnpd fills (its defaults' names, in a table of
        // the test's own) hooked in before the stealth rules.
        ns.nft_file(
            "table inet em_upnp {\n\
             \tchain forward {\n\
             \t\ttype filter hook forward priority filter; policy accept;\n\
             \t\tjump miniupnpd\n\
             \t\tiifname \"wan0\" ct state new drop\n\
             \t}\n\
             \tchain input {\n\
             \t\ttype filter hook input priority filter; policy accept;\n\
             \t\tiifname \"wan0\" ct state new drop\n\
             \t}\n\
             \tchain miniupnpd {\n\
             \t}\n\
             \tchain prerouting {\n\
             \t\ttype nat hook prerouting priority dstnat; policy accept;\n\
             \t\tjump prerouting_miniupnpd\n\
             \t}\n\
             \tchain postrouting {\n\
             \t\ttype nat hook postrouting priority srcnat; policy accept;\n\
             \t\tjump postrouting_miniupnpd\n\
             \t\toifname \"wan0\" masquerade\n\
             \t}\n\
             \tchain prerouting_miniupnpd {\n\
             \t}\n\
             \tchain postrouting_miniupnpd {\n\
             \t}\n\
             }\n",
        );
        let dir = tempfile::tempdir().unwrap();
        let conf = dir.path().join("miniupnpd.conf");
        // secure_mode: a LAN host maps ports to itself only; UPnP IGD
        // only (what libp2p speaks), IPv4 only.
        std::fs::write(
            &conf,
            format!(
                "ext_ifname=wan0\nlistening_ip=lan0\nenable_upnp=yes\nenable_natpmp=no\n\
                 ipv6_disable=yes\nsecure_mode=yes\nsystem_uptime=yes\nupnp_table_name=em_upnp\n\
                 upnp_nat_table_name=em_upnp\nuuid=5f8e2a44-0b2c-4c1e-9d3a-6e0b1c2d3e4f\n\
                 allow 1024-65535 10.{lan}.0.0/24 1024-65535\ndeny 0-65535 0.0.0.0/0 0-65535\n"
            ),
        )
        .unwrap();
        let log = dir.path().join("miniupnpd.log");
        let child = ns
            .cmd("/usr/sbin/miniupnpd")
            .args(["-d", "-f"])
            .arg(&conf)
            .arg("-P")
            .arg(dir.path().join("miniupnpd.pid"))
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(dir.path().join("stdout")).unwrap())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("miniupnpd is installed (apt-get install miniupnpd-nftables)");
        let router = UpnpRouter { ns, child, log, _dir: dir };
        eventually(Duration::from_secs(10), "miniupnpd to listen", || {
            router.log().contains("HTTP listening on port").then_some(())
        });
        router
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The port mappings miniupnpd installed: its DNAT chain.
    fn mappings(&self) -> String {
        self.ns.ok(&["nft", "list", "chain", "inet", "em_upnp", "prerouting_miniupnpd"])
    }
}

impl Drop for UpnpRouter {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- miniupnpd log ---\n{}", self.log());
        }
    }
}

/// node-a behind a UPnP router (WAN address 11.0.0.3), node-b on the WAN
/// (11.0.0.2), no relay at all; node-b knows node-a only by the router's
/// address. With `--no-upnp` node-a's agent asks for no mapping and
/// node-b cannot reach it; with the default, the agent maps the tunnel
/// port on the router and node-b's request reaches node-a directly
/// through the mapping.
#[test]
fn a_port_mapping_on_a_upnp_router_makes_a_node_behind_nat_directly_reachable() {
    require_root();
    let wan = Lan::new("wan");
    let (a, b) = (Node::new("node-a"), Node::new("node-b"));
    on_wan(&wan, &b, "11.0.0.2");
    let router = UpnpRouter::new(&wan, &a, "11.0.0.3", 2);
    let _nginx = NsNginx::start(&a.ns, &["10.2.0.2:80"], "node-a saw $remote_addr");
    let cluster = [a.object("10.2.0.2"), b.object("11.0.0.2"), service("web", "TCP", 80, "node-a", "10.2.0.2")];
    a.manifests(&cluster);
    b.manifests(&cluster);
    // node-b's way to node-a: the router's WAN address.
    let start_b = || b.start(&["--no-mdns", "--bootstrap", &a.tunnel_addr("11.0.0.3")]);

    // Switched off: no mapping, and the router drops node-b's dials.
    let agent_a = a.start(&["--no-mdns", "--no-upnp"]);
    let agent_b = start_b();
    let url = format!("http://{}/", agent_b.vip("default", "web").expect("web has a VIP on node-b"));
    assert_eq!(b.ns.curl_with(&["--max-time", "12"], &url), None, "node-a is unreachable without a mapping");
    eventually_every(Duration::from_millis(200), LIMIT, "node-b's proxy to give up on the tunnel", || {
        let log = agent_b.log();
        log.lines()
            .any(|l| l.contains("endpoint 10.2.0.2:80 on node node-a") && l.contains("through the tunnel"))
            .then_some(())
    });
    assert!(!router.mappings().contains("dnat"), "no mapping was asked for:\n{}", router.mappings());
    assert!(!agent_a.log().contains("port mapping"), "{}", agent_a.log());
    agent_a.kill9();
    // (Its dial still in flight would get through on a later SYN; a fresh
    // agent shows the mapping alone at work.)
    agent_b.kill9();

    // On (the default): the agent maps its port, and node-b connects
    // directly through the mapping.
    let agent_a = a.start(&["--no-mdns"]);
    let made = eventually_every(Duration::from_millis(200), LIMIT, "node-a's port mapping", || {
        agent_a.log().lines().find(|l| l.contains("port mapping made")).map(str::to_owned)
    });
    assert!(
        made.contains(&format!("/ip4/11.0.0.3/tcp/{TUNNEL_PORT}")),
        "the router's address and the tunnel port: {made}"
    );
    let rules = router.mappings();
    assert!(
        rules.contains(&format!("dport {TUNNEL_PORT} dnat ip to 10.2.0.2:{TUNNEL_PORT}")),
        "miniupnpd's DNAT rule:\n{rules}"
    );
    let agent_b = start_b();
    let to_a = wait_for_peer(&agent_b, "node-a", "node-b to connect to node-a", |_| true);
    assert_eq!(to_a["connection"], "direct", "{to_a}");
    assert!(addresses(&to_a).contains(&format!("/ip4/11.0.0.3/tcp/{TUNNEL_PORT}")), "through the mapping: {to_a}");
    assert_eq!(b.ns.curl(&url).as_deref(), Some("node-a saw 10.2.0.2\n"));
}

/// node-a behind a UPnP router and configured with a relay (on the WAN,
/// 11.0.0.1): once the router maps its port node-a is reachable directly,
/// so it holds no slot on the relay (it releases one it got first), and
/// `/peers` says so.
#[test]
fn a_node_with_a_port_mapping_holds_no_relay_slot() {
    require_root();
    let wan = Lan::new("wan");
    let (relay, a) = (Node::new("relay"), Node::new("node-a"));
    on_wan(&wan, &relay, "11.0.0.1");
    let _router = UpnpRouter::new(&wan, &a, "11.0.0.3", 2);
    for n in [&relay, &a] {
        n.manifests(&[a.object("10.2.0.2")]);
    }
    let _agent_relay = relay.start(&["--relay-server", "--no-mdns"]);
    let agent_a = a.start(&["--no-mdns", "--relay", &relay.tunnel_addr("11.0.0.1")]);
    eventually_every(Duration::from_millis(200), LIMIT, "node-a's port mapping", || {
        agent_a.log().contains("port mapping made").then_some(())
    });
    let to_relay = eventually_every(Duration::from_millis(200), LIMIT, "node-a to hold no relay slot", || {
        peers(&agent_a).into_iter().find(|p| p["peerId"] == relay.peer_id && p["relayReserved"] == false)
    });
    assert_eq!(to_relay["connection"], "direct", "the relay stays connected: {to_relay}");
    // And none comes later: a reservation under way when the mapping came
    // is answered within this window.
    for _ in 0..10 {
        std::thread::sleep(Duration::from_millis(200));
        let listed = peers(&agent_a);
        assert!(!listed.iter().any(|p| p["relayReserved"] == true), "no relay slot: {listed:?}");
    }
    let log = agent_a.log();
    let reserved = log.matches("relay slot reserved").count();
    let released = log.matches("releasing the relay slot").count();
    assert!(reserved <= released, "every slot taken was released ({reserved} reserved, {released} released):\n{log}");
}

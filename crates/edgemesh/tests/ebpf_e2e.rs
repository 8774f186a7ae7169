//! The agent in `intercept.mode: ebpf` (as root): the real binary attached
//! to a child cgroup the test makes, clients (curl, python sockets) in that
//! cgroup inside namespaces with only their own links, service cluster IPs
//! in 10.96.0.0/16 that no route leads to, so only the programs (or, for
//! the fallback, nftables) make them work. Node ports stay on nftables: a
//! client on another node reaches them through the agent.

mod support;

#[path = "../../ebpf/tests/support/mod.rs"]
mod ebpf_support;

#[path = "ebpf_e2e/fast.rs"]
mod fast;

use std::io::{BufRead, BufReader};
use std::sync::atomic::Ordering;
use std::time::Duration;

use ebpf_support::{PinDir, TestCgroup, attached};
use fast::{FastNode, NODE, service, wait_applied};
use support::eventually;
use support::mesh::{lan_pair, wait_for_peer};
use support::netns::{Netns, NsAgent, NsNginx, UdpEcho, link, udp_stream};

fn count(bodies: &[String], body: &str) -> usize {
    bodies.iter().filter(|b| *b == body).count()
}

/// Two nginx endpoints on this node answering `one` and `two`, behind
/// cluster IP 10.96.0.10:80.
fn web(role: &str) -> (FastNode, NsNginx, NsNginx) {
    let node = FastNode::new(role, &["10.0.1.1", "10.0.1.2"]);
    let one = NsNginx::start(&node.ns, &["10.0.1.1:8080"], "one");
    let two = NsNginx::start(&node.ns, &["10.0.1.2:8080"], "two");
    node.manifests(&[web_service(&[("10.0.1.1", NODE), ("10.0.1.2", NODE)])]);
    (node, one, two)
}

fn web_service(endpoints: &[(&str, &str)]) -> String {
    service("web", "10.96.0.10", "TCP", 80, 8080, endpoints)
}

/// `service` (one of [`service`]'s manifests) as a NodePort service, its
/// port on `node_port`.
fn with_node_port(service: &str, node_port: u16) -> String {
    let target = service.split("targetPort: ").nth(1).and_then(|t| t.lines().next()).expect("a targetPort");
    service.replacen("spec:\n", "spec:\n  type: NodePort\n", 1).replacen(
        &format!("targetPort: {target}\n"),
        &format!("targetPort: {target}\n    nodePort: {node_port}\n"),
        1,
    )
}

/// Node ports stay on nftables beside the kernel fast path: a client on
/// another node (its default route through this one) reaches
/// node-ip:nodePort over TCP and UDP through the node-port table and the
/// proxy, while a pod's connections to the cluster IP still go straight to
/// an endpoint in the kernel; a clean stop removes the table.
#[test]
fn node_ports_are_served_through_nftables_while_the_kernel_serves_cluster_ips() {
    let node = FastNode::new("np", &["10.0.1.1", "10.0.1.2"]);
    let _one = NsNginx::start(&node.ns, &["10.0.1.1:8080"], "one");
    let _two = NsNginx::start(&node.ns, &["10.0.1.2:8080"], "two");
    let _echo = UdpEcho::start(&node.ns, "10.0.1.1:5353");
    let other = Netns::new("np-other");
    link(&node.ns, "eth0", &other, "eth0");
    node.ns.addr("eth0", "10.0.9.1/24");
    other.addr("eth0", "10.0.9.2/24");
    other.route("default", "10.0.9.1");
    let pod = Netns::new("np-pod");
    link(&node.ns, "pod0", &pod, "eth0");
    node.ns.addr("pod0", "10.0.2.1/24");
    pod.addr("eth0", "10.0.2.2/24");
    pod.route("default", "10.0.2.1");
    let dns = service("dns", "10.96.0.11", "UDP", 53, 5353, &[("10.0.1.1", NODE)]);
    node.manifests(&[
        with_node_port(&web_service(&[("10.0.1.1", NODE), ("10.0.1.2", NODE)]), 30080),
        with_node_port(&dns, 30053),
    ]);
    // An earlier run in nftables mode crashed and left its table.
    let has_table = |name: &str| node.ns.tables().lines().any(|l| l == format!("table inet {name}"));
    assert!(node.ns.nft(&["add", "table", "inet", "edgemesh"]).status.success());
    let agent = node.start(false, &[]);
    // Made with the first node port (it is in the kernel only while one needs it).
    edgemesh_test_support::blocking::eventually(Duration::from_secs(10), "the node-port table", || {
        has_table("edgemesh_nodeports").then_some(())
    });
    assert!(!has_table("edgemesh"), "nftables mode's leftover is gone: {}", node.ns.tables());

    // From the other node, through the agent's transparent listener.
    let bodies: Vec<String> = (0..4).map(|_| other.curl("http://10.0.9.1:30080/").unwrap_or_default()).collect();
    assert_eq!((count(&bodies, "one\n"), count(&bodies, "two\n")), (2, 2), "balanced by the proxy: {bodies:?}");
    assert_eq!(proxied(&agent), 4, "through the proxy");
    assert_eq!(udp_stream(&other, "10.0.9.1:30053", 5), Ok(5), "the UDP node port, answered from it");

    // A pod's cluster IP connections: straight to the endpoints, in the kernel.
    let bodies = fast::curl_times(&node.cgroup, &pod, "10.96.0.10", 4);
    assert_eq!((count(&bodies, "one"), count(&bodies, "two")), (2, 2), "{bodies:?}");
    assert_eq!(proxied(&agent), 4, "the proxy saw none of them");

    assert!(agent.terminate().success());
    assert!(!has_table("edgemesh_nodeports"), "removed at stop: {}", node.ns.tables());
    assert_eq!(other.curl("http://10.0.9.1:30080/"), None, "no node port without the agent");
}

#[test]
fn curl_reaches_local_endpoints_balanced_the_peer_is_the_service_and_a_removed_one_gets_nothing_more() {
    let (node, _one, _two) = web("tcp");
    let agent = node.start(true, &[]);
    let bodies = node.curl_times("10.96.0.10", 20);
    assert_eq!((count(&bodies, "one"), count(&bodies, "two")), (10, 10), "round robin in the kernel: {bodies:?}");
    assert_eq!(proxied(&agent), 0, "direct connections: the proxy saw none");

    // Applications see the service address, over IPv4 and v4-mapped IPv6.
    for (host, shown) in [("10.96.0.10", "10.96.0.10"), ("::ffff:10.96.0.10", "::ffff:10.96.0.10")] {
        let lines = node.client(&["tcp", host, "80", "4"]);
        assert_eq!(lines.len(), 4, "{host}: {lines:?}");
        for line in &lines {
            let (peer, body) = line.rsplit_once(' ').unwrap();
            assert_eq!(peer, format!("{shown} 80"), "{host}: getpeername gives the service address");
            assert!(body == "one" || body == "two", "{host}: answered by an endpoint: {line}");
        }
    }

    // A removed endpoint gets no new connection once the agent applied it.
    node.manifests(&[web_service(&[("10.0.1.1", NODE)])]);
    wait_applied(&agent, "web", 1);
    assert_eq!(node.curl_times("10.96.0.10", 10), vec!["one".to_owned(); 10]);
}

#[test]
fn udp_reaches_local_endpoints_and_a_removed_endpoints_connected_sockets_are_destroyed() {
    let node = FastNode::new("udp", &["10.0.1.1", "10.0.1.2"]);
    let echoes = [UdpEcho::start(&node.ns, "10.0.1.1:5353"), UdpEcho::start(&node.ns, "10.0.1.2:5353")];
    let both = [("10.0.1.1", NODE), ("10.0.1.2", NODE)];
    node.manifests(&[service("dns", "10.96.0.11", "UDP", 53, 5353, &both)]);
    let agent = node.start(true, &[]);

    let lines = node.client(&["udp", "10.96.0.11", "53", "20"]);
    assert_eq!(lines, (0..20).map(|i| format!("10.96.0.11 53 echo:m{i}")).collect::<Vec<_>>());
    let served: Vec<u32> = echoes.iter().map(|e| e.served.load(Ordering::Relaxed)).collect();
    assert!(served.iter().all(|&n| n > 0), "balanced across both endpoints: {served:?}");

    // A connected socket talks to one endpoint; take that one away.
    let before: Vec<u32> = echoes.iter().map(|e| e.served.load(Ordering::Relaxed)).collect();
    let mut hold = node.spawn_client(&["udp-hold", "10.96.0.11", "53", "1"]);
    let mut out = BufReader::new(hold.stdout.take().unwrap()).lines();
    assert_eq!(out.next().unwrap().unwrap(), "10.96.0.11 53 echo:m0");
    let used = (0..2).find(|&i| echoes[i].served.load(Ordering::Relaxed) > before[i]).expect("an endpoint answered");
    let (gone, staying) = if used == 0 { ("10.0.1.1", "10.0.1.2") } else { ("10.0.1.2", "10.0.1.1") };
    node.manifests(&[service("dns", "10.96.0.11", "UDP", 53, 5353, &[(staying, NODE)])]);
    wait_applied(&agent, "dns", 1);
    assert_eq!(out.next().unwrap().unwrap(), "error ECONNABORTED", "the socket to {gone} was destroyed");
    hold.wait().unwrap();

    // New sockets go to the endpoint left.
    let before = echoes[1 - used].served.load(Ordering::Relaxed);
    assert_eq!(node.client(&["udp-connected", "10.96.0.11", "53", "3"]).len(), 3);
    assert_eq!(echoes[1 - used].served.load(Ordering::Relaxed), before + 3, "all to {staying}");
}

#[test]
fn a_remote_endpoint_is_reached_through_the_agent_and_the_tunnel() {
    let (_lan, a, b) = lan_pair();
    let _nginx = NsNginx::start(&b.ns, &["10.0.0.3:80"], "node-b saw $remote_addr");
    let objects = [
        a.object("10.0.0.2"),
        b.object("10.0.0.3"),
        service("remote", "10.96.0.20", "TCP", 80, 80, &[("10.0.0.3", "node-b")]),
    ];
    a.manifests(&objects);
    b.manifests(&objects);
    let agent_b = b.start(&[]);
    // node-a's agent in ebpf mode, attached to a cgroup of the test's own.
    let (cgroup, pins) = (TestCgroup::new("remote"), PinDir::new("remote"));
    let config = a.path("config.yaml");
    std::fs::write(&config, format!("intercept:\n  bpfPinPath: {}\n", pins.0.display())).unwrap();
    let (manifests, state) = (a.path("manifests").display().to_string(), a.path("state").display().to_string());
    let cgroup_path = cgroup.path.display().to_string();
    let args = [
        "--node-name",
        "node-a",
        "--tunnel",
        "--dns-upstream",
        "127.0.0.1:9",
        "--vip-cidr",
        "127.90.0.0/16",
        "--manifest-dir",
        &manifests,
        "--state-dir",
        &state,
        "--config",
        config.to_str().unwrap(),
        "--intercept",
        "ebpf",
        "--cgroup-path",
        &cgroup_path,
    ];
    let agent_a = fast::start_agent(&a.ns, &args.map(str::to_owned));
    wait_for_peer(&agent_a, "node-b", "node-a to reach node-b", |p| p["connection"] == "direct");
    // The kernel sends the cluster IP to the agent's VIP; the proxy carries
    // it through the tunnel (node-b's nginx sees node-b's own address).
    let bodies = fast::curl_times(&cgroup, &a.ns, "10.96.0.20", 3);
    assert_eq!(bodies, vec!["node-b saw 10.0.0.3".to_owned(); 3]);
    assert_eq!(proxied(&agent_a), 3, "through the agent");
    drop(agent_b);
}

/// TCP connections the agent's proxy accepted (every service).
fn proxied(agent: &NsAgent) -> u64 {
    let metrics = agent.get("/metrics").unwrap();
    metrics
        .lines()
        .filter(|l| l.starts_with("edgemesh_tcp_connections_opened_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

#[test]
fn kill_9_under_load_keeps_local_traffic_flowing_and_a_restart_adopts_without_duplicates() {
    let (node, _one, _two) = web("kill");
    let gone = service("gone", "10.96.0.30", "TCP", 80, 8080, &[("10.0.1.1", NODE)]);
    node.manifests(&[web_service(&[("10.0.1.1", NODE), ("10.0.1.2", NODE)]), gone]);
    let agent = node.start(true, &[]);
    let programs = attached(&node.cgroup.path);
    assert_eq!(programs.len(), 8, "{programs:?}");
    let entries = node.pinned_services();
    assert_eq!(entries.len(), 4, "both services' cluster IPs and VIPs: {entries:?}");

    // curl in a loop while the agent is killed.
    let script = "ok=0; failed=0; for i in $(seq 300); do \
                  if curl -sg --max-time 5 -o /dev/null http://10.96.0.10/; then ok=$((ok+1)); else failed=$((failed+1)); fi; \
                  done; echo $ok $failed";
    let mut load = node.in_cgroup_cmd(&["sh", "-c", script]).stdout(std::process::Stdio::piped()).spawn().unwrap();
    std::thread::sleep(Duration::from_millis(300));
    agent.kill9();
    assert!(load.try_wait().unwrap().is_none(), "the agent was killed while the requests went on");
    let out = load.wait_with_output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "300 0", "every request answered across the kill");

    // While it is down a service goes; the restart adopts the pins and
    // removes that service's entries once the source is read.
    node.manifests(&[web_service(&[("10.0.1.1", NODE), ("10.0.1.2", NODE)])]);
    let agent = node.start(true, &[]);
    assert!(agent.log().contains("adopted=true"), "{}", agent.log());
    assert_eq!(attached(&node.cgroup.path), programs, "no program or link twice");
    eventually(Duration::from_secs(10), "the gone service's entries are removed", || {
        (node.pinned_services().len() == 2).then_some(())
    });
    let bodies = node.curl_times("10.96.0.10", 4);
    assert_eq!((count(&bodies, "one"), count(&bodies, "two")), (2, 2), "{bodies:?}");
    assert_eq!(node.curl_times("10.96.0.30", 1), vec!["failed".to_owned()], "the gone service is gone");
}

/// Without `nft` (the default image has none) the kernel still serves the
/// cluster IPs; the node port is not served, and the log says why.
#[test]
fn without_nft_the_kernel_serves_cluster_ips_and_the_log_says_node_ports_are_not() {
    let (node, _one, _two) = web("nonft");
    node.manifests(&[with_node_port(&web_service(&[("10.0.1.1", NODE), ("10.0.1.2", NODE)]), 30080)]);
    // The agent's PATH: a directory without nft.
    let empty = node.path("no-nft");
    std::fs::create_dir(&empty).unwrap();
    let mut command = std::process::Command::new("/usr/bin/nsenter");
    command.arg(format!("--net=/run/netns/{}", node.ns.name)).arg("--").arg(env!("CARGO_BIN_EXE_edgemesh"));
    command.env("PATH", &empty);
    let args = node.args(false, &[]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let agent = NsAgent::start_with(&node.ns, command, &args, Duration::from_secs(20));
    assert!(agent.log().contains("node ports are not served: nft is not installed"), "{}", agent.log());
    assert_eq!(node.ns.tables().trim(), "", "no table");
    let bodies = node.curl_times("10.96.0.10", 2);
    assert_eq!((count(&bodies, "one"), count(&bodies, "two")), (1, 1), "{bodies:?}");
}

#[test]
fn sigterm_leaves_the_fast_path_with_keep_on_exit_and_removes_pins_and_links_without() {
    let (node, _one, _two) = web("term");
    // As a NodePort service: the node-port table goes at stop, whatever
    // keepOnExit says (node ports need the agent).
    node.manifests(&[with_node_port(&web_service(&[("10.0.1.1", NODE), ("10.0.1.2", NODE)]), 30080)]);
    let agent = node.start(true, &[]);
    assert_eq!(node.ns.set_elements("edgemesh_nodeports", "nodeport_tcp"), Some(vec!["30080".to_owned()]));
    assert_eq!(attached(&node.cgroup.path).len(), 8);
    assert!(agent.terminate().success());
    assert_eq!(attached(&node.cgroup.path).len(), 8, "keepOnExit: still attached after a clean stop");
    assert_eq!(node.ns.set_elements("edgemesh_nodeports", "nodeport_tcp"), None, "the node-port table is gone");
    let bodies = node.curl_times("10.96.0.10", 2);
    assert_eq!((count(&bodies, "one"), count(&bodies, "two")), (1, 1), "served without the agent: {bodies:?}");

    let agent = node.start(false, &[]);
    assert!(agent.log().contains("adopted=true"), "{}", agent.log());
    assert!(agent.terminate().success());
    assert_eq!(attached(&node.cgroup.path), vec![], "every program detached");
    assert!(!node.pins.0.exists(), "nothing left pinned");
    assert_eq!(node.curl_times("10.96.0.10", 1), vec!["failed".to_owned()], "the cluster IP is gone with the agent");
}

#[test]
fn without_support_and_with_fallback_nftables_it_runs_nftables_mode_and_says_why() {
    // A node whose default route leads into a second namespace (where
    // nothing answers 10.96.0.0/16), as a node's way out would.
    let node = FastNode::new("fallback", &["10.0.1.1"]);
    let _nginx = NsNginx::start(&node.ns, &["10.0.1.1:8080"], "one");
    let router = Netns::new("fallback-gw");
    link(&node.ns, "eth0", &router, "eth0");
    node.ns.addr("eth0", "10.0.9.1/24");
    router.addr("eth0", "10.0.9.2/24");
    node.ns.route("default", "10.0.9.2");
    node.manifests(&[web_service(&[("10.0.1.1", NODE)])]);
    // A cgroupPath that is no cgroup v2 directory: the fast path cannot attach.
    let not_cgroup = node.path("not-a-cgroup");
    std::fs::create_dir(&not_cgroup).unwrap();
    let mut args = node.args(true, &["--ebpf-fallback", "nftables", "--intercept-table", "em_fallback"]);
    let at = args.iter().position(|a| a == "--cgroup-path").unwrap();
    args[at + 1] = not_cgroup.display().to_string();
    let agent = fast::start_agent(&node.ns, &args);

    assert!(agent.log().contains("running nftables mode instead"), "{}", agent.log());
    let ready = agent.get("/readyz").unwrap();
    assert!(ready.contains("fell back to nftables") && ready.contains("not a directory of a cgroup v2"), "{ready}");
    assert_eq!(agent.json("/config")["intercept"]["mode"], "nftables");
    assert!(node.ns.tables().contains("em_fallback"), "the nftables table is in place");
    assert!(!node.pins.0.exists(), "nothing pinned");
    // Served by nftables and the proxy, from the node (outside the cgroup).
    assert_eq!(node.ns.curl("http://10.96.0.10/").as_deref(), Some("one\n"));
}

#[test]
fn without_cap_bpf_and_no_fallback_the_agent_names_what_is_missing_and_attaches_nothing() {
    let (node, _one, _two) = web("nocap");
    // Only the network namespace is entered (see `fast::start_agent`),
    // then CAP_BPF and CAP_SYS_ADMIN leave the bounding set: the agent
    // (uid 0) starts without them, as in a container that lacks them.
    let mut agent = std::process::Command::new("nsenter")
        .arg(format!("--net=/run/netns/{}", node.ns.name))
        .args(["--", "setpriv", "--bounding-set=-bpf,-sys_admin", "--inh-caps=-bpf,-sys_admin"])
        .arg(env!("CARGO_BIN_EXE_edgemesh"))
        .arg("agent")
        .args(node.args(true, &[]))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Bounded: an agent that starts after all is killed and the test fails.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = agent.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = agent.kill();
            let _ = agent.wait();
            panic!("the agent started without CAP_BPF");
        }
        std::thread::sleep(Duration::from_millis(25));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut agent.stderr.take().unwrap(), &mut stderr).unwrap();
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("cannot start the kernel fast path"), "{stderr}");
    assert!(stderr.contains("capability CAP_BPF is not in the process's effective set"), "{stderr}");
    assert!(!stderr.contains("CAP_NET_ADMIN"), "only what is missing is named: {stderr}");
    assert_eq!(attached(&node.cgroup.path), vec![], "nothing attached");
    assert!(!node.pins.0.exists(), "nothing pinned");
}

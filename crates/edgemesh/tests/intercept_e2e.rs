//! Interception with nftables, as an operator runs it: as root, the real
//! agent in a network namespace made for the test, a real nginx in a "pod"
//! namespace behind a veth, and real clients (curl) connecting to the
//! Service's cluster IP, which exists nowhere: from the node itself (the
//! `output` hook) and from a second pod routed through the node
//! (`prerouting`), over IPv4 and IPv6.
//!
//! The topology is `support::node::Topology`.
//!
//! These tests need root (CAP_NET_ADMIN for namespaces and nftables); CI
//! runs as root. Without it they fail and say so.

mod support;

use std::process::Command;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use support::netns::{Netns, UdpEcho, ok, require_root, udp_stream};
use support::node::*;
use support::{eventually, free_port, write_manifest};

#[test]
fn cluster_ips_are_intercepted_with_nftables() {
    require_root();
    let t = Topology::new();
    let (dir, manifests) = support::manifest_dir();
    write_manifest(&manifests, "web.yaml", &service("web", &["10.96.0.10", "fd00:96::10"], 80));
    let agent = start_agent(&t.node, &manifests, &dir.path().join("state"), &[]);

    // From the node itself (output hook), over IPv4 and IPv6.
    assert_eq!(t.node.curl("http://10.96.0.10/").as_deref(), Some("pod-nginx\n"), "IPv4 cluster IP");
    assert_eq!(t.node.curl("http://[fd00:96::10]/").as_deref(), Some("pod-nginx\n"), "IPv6 cluster IP");
    // From another pod routed through the node (prerouting hook).
    assert_eq!(t.client.curl("http://10.96.0.10/").as_deref(), Some("pod-nginx\n"), "from a pod");
    // A port the service does not have is not intercepted (and leads nowhere).
    assert_eq!(t.node.curl("http://10.96.0.10:81/"), None);
    // By name, through the agent's DNS on its node-local address (port 53),
    // from a pod whose resolver is the agent (as kubelet's clusterDNS).
    t.client
        .resolv_conf("search default.svc.cluster.local svc.cluster.local cluster.local\nnameserver 169.254.96.16\n");
    let hosts = t.client.ok(&["getent", "ahostsv4", "web.default.svc.cluster.local"]);
    assert!(hosts.starts_with("10.96.0.10 "), "{hosts}");
    assert_eq!(t.client.curl("http://web/").as_deref(), Some("pod-nginx\n"), "by its short name");

    // The table: the agent's own, with the service addresses as elements.
    let listing = String::from_utf8_lossy(&t.node.nft(&["list", "table", "inet", "edgemesh"]).stdout).into_owned();
    assert!(listing.contains("redirect to :15006"), "{listing}");
    assert!(listing.contains("hook prerouting") && listing.contains("hook output"), "{listing}");
    let tcp4 = t.node.set_elements("edgemesh", "tcp4").unwrap();
    assert!(tcp4.contains(&"10.96.0.10 . 80".to_owned()), "{tcp4:?}");
    assert_eq!(tcp4.len(), 1, "the cluster IP (a service with one needs no VIP): {tcp4:?}");
    assert_eq!(t.node.set_elements("edgemesh", "tcp6").unwrap(), vec!["fd00:96::10 . 80".to_owned()]);

    // Adding a service is one small transaction: the sets gain exactly its
    // addresses, nothing else is rewritten.
    let before = updates_logged(&agent);
    write_manifest(&manifests, "api.yaml", &service("api", &["10.96.0.20"], 8080));
    let tcp4_after = eventually(Duration::from_secs(5), "the new service's elements", || {
        let now = t.node.set_elements("edgemesh", "tcp4").unwrap();
        (now.len() > tcp4.len()).then_some(now)
    });
    let added: Vec<&String> = tcp4_after.iter().filter(|e| !tcp4.contains(e)).collect();
    assert_eq!(added.len(), 1, "the new cluster IP only: {added:?}");
    assert!(added.contains(&&"10.96.0.20 . 8080".to_owned()), "{added:?}");
    assert!(tcp4.iter().all(|e| tcp4_after.contains(e)), "existing elements stay");
    let after = updates_logged_beyond(&agent, before.len());
    assert_eq!(after.len(), before.len() + 1, "one transaction: {:?}", &after[before.len()..]);
    assert!(after.last().unwrap().contains("added=1 removed=0"), "{after:?}");
    assert_eq!(t.node.curl("http://10.96.0.20:8080/").as_deref(), Some("pod-nginx\n"));
    // DNS gives clients the cluster IP, which works everywhere on the node.
    assert_eq!(dig_a(&t.node, "api.default.svc.cluster.local"), vec!["10.96.0.20".to_owned()]);

    // Removing it deletes its elements, and its address is no longer served.
    std::fs::remove_file(manifests.join("api.yaml")).unwrap();
    eventually(Duration::from_secs(5), "the service's elements to go", || {
        (t.node.set_elements("edgemesh", "tcp4").unwrap() == tcp4).then_some(())
    });
    assert_eq!(t.node.curl("http://10.96.0.20:8080/"), None);

    // A clean stop removes the table and nothing else.
    assert_eq!(agent.terminate().code(), Some(0));
    assert!(!t.node.tables().contains("edgemesh"), "table left after SIGTERM: {}", t.node.tables());
}

/// Whether anything answers a TCP connection to `to` from inside `ns`
/// within a second: a handshake, or a reset (the agent resets a connection
/// it cannot route, often before `connect` returns); only a silent drop
/// times out.
fn answers(ns: &Netns, to: &str) -> bool {
    let to: std::net::SocketAddr = to.parse().unwrap();
    support::netns::in_netns(&ns.name, move || {
        match std::net::TcpStream::connect_timeout(&to, Duration::from_secs(1)) {
            Ok(_) => true,
            Err(e) => !matches!(e.kind(), std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock),
        }
    })
}

#[test]
fn the_transparent_port_takes_only_redirected_connections() {
    require_root();
    let t = Topology::new();
    let (dir, manifests) = support::manifest_dir();
    write_manifest(&manifests, "web.yaml", &service("web", &["10.96.0.10", "fd00:96::10"], 80));
    let agent = start_agent(&t.node, &manifests, &dir.path().join("state"), &[]);
    // Straight to the listener, on the node's addresses, from a pod and
    // from the node itself: dropped, not even a reset.
    for (from, to) in [
        (&t.client, "10.244.2.1:15006"),
        (&t.client, "[fd00:244:2::1]:15006"),
        (&t.node, "127.0.0.1:15006"),
        (&t.node, "[::1]:15006"),
        (&t.node, "10.244.1.1:15006"),
    ] {
        assert!(!answers(from, to), "{to} from {} reached the transparent port", from.name);
    }
    // What the table redirects there still arrives.
    assert!(answers(&t.client, "10.96.0.10:80") && answers(&t.client, "[fd00:96::10]:80"));
    assert_eq!(t.client.curl("http://10.96.0.10/").as_deref(), Some("pod-nginx\n"));
    assert_eq!(t.node.curl("http://[fd00:96::10]/").as_deref(), Some("pod-nginx\n"));
    assert!(!agent.log().contains("was not redirected"), "{}", agent.log());
    assert_eq!(agent.terminate().code(), Some(0));
}

#[test]
fn a_restarted_agent_replaces_the_table_and_device_left_by_a_crash() {
    require_root();
    let t = Topology::new();
    let (dir, manifests) = support::manifest_dir();
    write_manifest(&manifests, "web.yaml", &service("web", &["10.96.0.10"], 80));
    write_manifest(&manifests, "old.yaml", &service("old", &["10.96.0.30"], 80));
    write_manifest(&manifests, "old-bare.yaml", &service("old-bare", &[], 80));
    // Another table in the namespace, which the agent must leave alone.
    ok(&["ip", "netns", "exec", &t.node.name, "nft", "add", "table", "ip", "someone_else"]);
    let state = dir.path().join("state");
    let agent = start_agent(&t.node, &manifests, &state, &[]);
    assert_eq!(t.node.curl("http://10.96.0.30/").as_deref(), Some("pod-nginx\n"));
    let old_vip = vip_of(&t.node, "old-bare").expect("a service without a cluster IP has a VIP");
    agent.kill9();
    // The crash left the table behind, with the old service in it, and
    // edge0 with the old VIP.
    let left = t.node.set_elements("edgemesh", "tcp4").expect("table left after kill -9");
    assert!(left.contains(&"10.96.0.30 . 80".to_owned()), "{left:?}");
    assert!(device_addresses(&t.node, "edge0").expect("edge0 left after kill -9").contains(&old_vip));

    // While the agent is down the services go; the restarted agent
    // replaces the table and the device: the stale element and address are
    // gone and the rest works.
    std::fs::remove_file(manifests.join("old.yaml")).unwrap();
    std::fs::remove_file(manifests.join("old-bare.yaml")).unwrap();
    let agent = start_agent(&t.node, &manifests, &state, &[]);
    eventually(Duration::from_secs(5), "the stale element to go", || {
        let now = t.node.set_elements("edgemesh", "tcp4").unwrap();
        (!now.contains(&"10.96.0.30 . 80".to_owned()) && now.contains(&"10.96.0.10 . 80".to_owned())).then_some(())
    });
    assert_eq!(t.node.curl("http://10.96.0.10/").as_deref(), Some("pod-nginx\n"));
    assert_eq!(t.client.curl("http://10.96.0.10/").as_deref(), Some("pod-nginx\n"));
    assert!(agent.log().contains("nftables table inet edgemesh in place"), "{}", agent.log());
    assert!(agent.log().contains("replacing the VIP device left by an earlier run"), "{}", agent.log());
    assert_eq!(device_addresses(&t.node, "edge0"), Some(vec![DNS.to_owned()]), "only the DNS address now");
    assert_eq!(dig_a(&t.client, "web.default.svc.cluster.local"), vec!["10.96.0.10".to_owned()], "DNS is back");
    assert_eq!(agent.terminate().code(), Some(0));
    let tables = t.node.tables();
    assert!(!tables.contains("edgemesh") && tables.contains("someone_else"), "{tables}");
    assert!(!t.node.links().contains("edge0"), "{}", t.node.links());
}

#[test]
fn missing_nft_and_missing_permission_are_clear_start_errors() {
    require_root();
    let (dir, manifests) = support::manifest_dir();
    let base = |cmd: &mut Command| {
        cmd.arg("agent")
            .args(["--intercept", "nftables", "--dns-upstream", "127.0.0.1:9"])
            .args(["--intercept-port", &free_port().to_string()])
            .args(["--dns-listen", &format!("127.0.0.1:{}", free_port())])
            .args(["--admin-listen", &format!("127.0.0.1:{}", free_port())])
            .arg("--manifest-dir")
            .arg(&manifests)
            .arg("--state-dir")
            .arg(dir.path().join("state"));
    };
    // No nft on PATH (nothing is touched: nft never runs).
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_edgemesh"));
    base(&mut cmd);
    let out = cmd.env("PATH", "/nonexistent").output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("apt-get install nftables"), "{stderr}");

    // As an unprivileged user, in a namespace of the test's own.
    let ns = Netns::new("noperm");
    let mut cmd = ns.cmd("setpriv");
    cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all"]);
    cmd.arg(env!("CARGO_BIN_EXE_edgemesh"));
    base(&mut cmd);
    let out = cmd.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("CAP_NET_ADMIN"), "{stderr}");
    assert!(!ns.tables().contains("edgemesh"), "nothing created");
}

// ---------------------------------------------------------------------------
// UDP, the VIP device, NodePort, scale.

#[test]
fn udp_to_cluster_ips_reaches_the_agent_and_answers_come_from_the_cluster_ip() {
    require_root();
    let t = Topology::new();
    let echo = UdpEcho::start(&t.pod, "10.244.1.2:7007");
    let (dir, manifests) = support::manifest_dir();
    write_manifest(&manifests, "echo.yaml", &udp_service("echo", &["10.96.0.53"], 53, None));
    // A DNS service whose endpoint is the agent's own DNS server (on its
    // node-local address), for `dig`.
    write_manifest(
        &manifests,
        "dns.yaml",
        &udp_service("dns", &["10.96.0.10"], 53, None).replace("7007", "53").replace("10.244.1.2", "169.254.96.16"),
    );
    // The default VIP pool in node mode is outside 127.0.0.0/8 (on edge0),
    // so that pods' datagrams can be DNATed to the VIPs too.
    let agent = start_agent(&t.node, &manifests, &dir.path().join("state"), &[]);
    let vip = vip_of(&t.node, "echo").expect("a UDP service has a VIP: its DNAT target");
    assert!(vip.starts_with("9.251."), "{vip}");
    let map = map_entries(&t.node, "udp4");
    assert!(map.contains(&format!("10.96.0.53 . 53 : {vip} . 53")), "{map:?}");
    assert_eq!(map.len(), 2, "{map:?}");
    assert!(device_addresses(&t.node, "edge0").unwrap().contains(&vip), "the DNAT target is on edge0");

    // dig through the DNS service's cluster IP (dig checks that the answer
    // comes from the address it asked), from the node and from a pod; the
    // name resolves to the cluster IP.
    for ns in [&t.node, &t.client] {
        let out = ns.exec(&["dig", "@10.96.0.10", "+short", "+time=2", "+tries=1", "echo.default.svc.cluster.local"]);
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "10.96.0.53", "dig from {}", ns.name);
    }

    // From the node (output hook) and from another pod (prerouting): a
    // long stream each, every answer from the cluster IP and port.
    assert_eq!(udp_stream(&t.node, "10.96.0.53:53", 1200), Ok(1200), "from the node");
    assert_eq!(udp_stream(&t.client, "10.96.0.53:53", 1200), Ok(1200), "from a pod");
    // Many short flows, DNS-style: one datagram per client socket.
    for _ in 0..50 {
        assert_eq!(udp_stream(&t.client, "10.96.0.53:53", 1), Ok(1));
    }
    assert!(echo.served.load(Ordering::Relaxed) >= 2450, "the endpoint saw them all");
    // The VIP itself answers as well.
    assert_eq!(udp_stream(&t.client, &format!("{vip}:53"), 10), Ok(10), "through the VIP");
    // A port the service does not have is not intercepted.
    assert!(udp_stream(&t.node, "10.96.0.53:54", 1).is_err());

    // A second UDP service is one small transaction of its own element.
    let before = updates_logged(&agent);
    write_manifest(&manifests, "echo2.yaml", &udp_service("echo2", &["10.96.0.54"], 5353, None));
    let map = eventually(Duration::from_secs(5), "the second service's element", || {
        let m = map_entries(&t.node, "udp4");
        (m.len() == 3).then_some(m)
    });
    assert!(map.iter().any(|e| e.starts_with("10.96.0.54 . 5353 : 9.251.")), "{map:?}");
    let after = updates_logged_beyond(&agent, before.len());
    assert_eq!(after.len(), before.len() + 1, "one transaction: {:?}", &after[before.len()..]);
    assert!(after.last().unwrap().contains("added=1 removed=0"), "{after:?}");
    assert_eq!(udp_stream(&t.client, "10.96.0.54:5353", 100), Ok(100));

    // Removing it deletes its element and its cluster IP no longer answers.
    std::fs::remove_file(manifests.join("echo2.yaml")).unwrap();
    eventually(Duration::from_secs(5), "the element to go", || (map_entries(&t.node, "udp4").len() == 2).then_some(()));
    assert!(udp_stream(&t.client, "10.96.0.54:5353", 1).is_err());

    assert_eq!(agent.terminate().code(), Some(0));
    assert!(!t.node.tables().contains("edgemesh"), "table left after SIGTERM: {}", t.node.tables());
    assert!(!t.node.links().contains("edge0"), "edge0 left after SIGTERM: {}", t.node.links());
}

#[test]
fn services_without_a_cluster_ip_get_a_vip_on_the_edge0_device() {
    require_root();
    let t = Topology::new();
    // No way out of the node: only edge0 makes the VIPs reachable.
    t.node.ip(&["route", "del", "default"]);
    let (dir, manifests) = support::manifest_dir();
    write_manifest(&manifests, "web.yaml", &service("web", &["10.96.0.10"], 80));
    write_manifest(&manifests, "bare.yaml", &service("bare", &[], 80));
    // A device left by an earlier run (a crash), with an address: replaced.
    t.node.ip(&["link", "add", "edge0", "type", "bridge"]);
    t.node.ip(&["addr", "add", "9.250.0.1/32", "dev", "edge0"]);
    let state = dir.path().join("state");
    let agent = start_agent(&t.node, &manifests, &state, &[]);
    assert!(agent.log().contains("replacing the VIP device left by an earlier run"), "{}", agent.log());

    // DNS answers the VIP for the service without a cluster IP, the cluster
    // IP for the other; only the VIP is on edge0.
    let vip = dig_a(&t.node, "bare.default.svc.cluster.local");
    assert_eq!(vip.len(), 1, "{vip:?}");
    assert!(vip[0].starts_with("9.251."), "DNS answers the VIP: {vip:?}");
    assert_eq!(dig_a(&t.node, "web.default.svc.cluster.local"), vec!["10.96.0.10".to_owned()]);
    let on_device = device_addresses(&t.node, "edge0").unwrap();
    assert_eq!(
        on_device,
        vec!["169.254.96.16".to_owned(), vip[0].clone()],
        "exactly the DNS address and the VIP (the leftover's address went with it)"
    );
    assert_eq!(t.node.curl(&format!("http://{}/", vip[0])).as_deref(), Some("pod-nginx\n"), "from the node");
    assert_eq!(t.client.curl(&format!("http://{}/", vip[0])).as_deref(), Some("pod-nginx\n"), "from a pod");

    // Services come and go: their VIPs with them, one address each.
    write_manifest(&manifests, "more.yaml", &service("more", &[], 8080));
    let more = eventually(Duration::from_secs(5), "the new VIP", || vip_of(&t.node, "more"));
    eventually(Duration::from_secs(5), "the new VIP on edge0", || {
        (device_addresses(&t.node, "edge0").unwrap().len() == 3).then_some(())
    });
    assert!(device_addresses(&t.node, "edge0").unwrap().contains(&more));
    assert_eq!(t.client.curl(&format!("http://{more}:8080/")).as_deref(), Some("pod-nginx\n"));
    std::fs::remove_file(manifests.join("bare.yaml")).unwrap();
    eventually(Duration::from_secs(5), "the VIP to leave edge0", || {
        (device_addresses(&t.node, "edge0").unwrap() == vec!["169.254.96.16".to_owned(), more.clone()]).then_some(())
    });
    assert_eq!(t.client.curl(&format!("http://{}/", vip[0])), None, "a removed service's VIP is gone");

    // SIGTERM: neither the table nor the device is left, and every other
    // device is.
    let others: Vec<String> = ["lo", "eth-pod", "eth-client"].map(String::from).to_vec();
    assert_eq!(agent.terminate().code(), Some(0));
    assert!(!t.node.tables().contains("edgemesh"), "table left: {}", t.node.tables());
    let after = t.node.links();
    assert!(!after.contains("edge0"), "edge0 left: {after}");
    assert!(others.iter().all(|d| after.contains(&format!(": {d}"))), "{after}");
    assert_eq!(t.node.curl(&format!("http://{more}:8080/")), None, "the VIP is gone with the agent");

    // A device of that name that is not the agent's is left alone: a clear
    // start-up error, and nothing else is left behind either.
    t.node.ip(&["link", "add", "edge0", "type", "veth", "peer", "name", "edge0-peer"]);
    let stderr = failed_start(&t.node, &manifests, &state);
    assert!(stderr.contains("edge0") && stderr.contains("veth") && stderr.contains("--vip-device"), "{stderr}");
    assert!(t.node.links().contains("edge0@edge0-peer"), "the foreign device is untouched: {}", t.node.links());
    assert!(!t.node.tables().contains("edgemesh"), "no table after a failed start: {}", t.node.tables());
}

#[test]
fn a_failed_start_leaves_neither_table_nor_device() {
    require_root();
    let t = Topology::new();
    let (dir, manifests) = support::manifest_dir();
    // The admin port is taken: the agent fails after making its table and
    // device, and must take both away again.
    let _taken = support::netns::in_netns(&t.node.name, || std::net::TcpListener::bind("127.0.0.1:15020").unwrap());
    let stderr = failed_start(&t.node, &manifests, &dir.path().join("state"));
    assert!(stderr.contains("admin endpoint"), "{stderr}");
    assert!(!t.node.tables().contains("edgemesh"), "table left: {}", t.node.tables());
    assert!(!t.node.links().contains("edge0"), "device left: {}", t.node.links());
}

#[test]
fn node_ports_are_served_on_the_nodes_addresses() {
    require_root();
    let t = Topology::new();
    let (dir, manifests) = support::manifest_dir();
    write_manifest(&manifests, "np.yaml", &node_port_service("np", &["10.96.0.70"], 8080, 30080));
    // A ClusterIP service's nodePort (none in Kubernetes, but a manifest may
    // say it) is not served.
    write_manifest(
        &manifests,
        "plain.yaml",
        &node_port_service("plain", &["10.96.0.71"], 8080, 30081).replace("type: NodePort", "type: ClusterIP"),
    );
    let agent = start_agent(&t.node, &manifests, &dir.path().join("state"), &[]);
    assert_eq!(t.node.set_elements("edgemesh", "nodeport_tcp").unwrap(), vec!["30080".to_owned()]);

    // From another namespace, to the node's address on its link.
    assert_eq!(t.client.curl("http://10.244.2.1:30080/").as_deref(), Some("pod-nginx\n"), "from a pod");
    // The node's other address too, and from the node itself.
    assert_eq!(t.client.curl("http://10.244.1.1:30080/").as_deref(), Some("pod-nginx\n"), "another node address");
    assert_eq!(t.node.curl("http://10.244.2.1:30080/").as_deref(), Some("pod-nginx\n"), "from the node");
    assert_eq!(t.node.curl("http://127.0.0.1:30080/").as_deref(), Some("pod-nginx\n"), "on loopback");
    // The cluster IP keeps working, the ClusterIP service's nodePort is not
    // open, and a node port is served on the node's addresses only.
    assert_eq!(t.client.curl("http://10.96.0.70:8080/").as_deref(), Some("pod-nginx\n"));
    assert_eq!(t.client.curl("http://10.244.2.1:30081/"), None);
    assert_eq!(t.client.curl("http://10.96.0.71:30080/"), None);

    // Turning it into a ClusterIP service closes the node port.
    write_manifest(
        &manifests,
        "np.yaml",
        &node_port_service("np", &["10.96.0.70"], 8080, 30080).replace("type: NodePort", "type: ClusterIP"),
    );
    eventually(Duration::from_secs(5), "the node port to close", || {
        t.node.set_elements("edgemesh", "nodeport_tcp").unwrap().is_empty().then_some(())
    });
    assert_eq!(t.client.curl("http://10.244.2.1:30080/"), None);
    assert_eq!(agent.terminate().code(), Some(0));
}

#[test]
fn ten_thousand_services_from_manifests_are_reachable_through_their_cluster_ips() {
    require_root();
    let t = Topology::new();
    let (dir, manifests) = support::manifest_dir();
    const N: u32 = 10_000;
    let cluster_ip = |i: u32| std::net::Ipv4Addr::from(u32::from(std::net::Ipv4Addr::new(10, 100, 0, 0)) + i + 1);
    // 10 files of 1,000 services, each with its endpoint slice.
    for file in 0..10 {
        let mut y = String::new();
        for i in file * 1000..(file + 1) * 1000 {
            if !y.is_empty() {
                y += "---\n";
            }
            y += &service(&format!("svc-{i}"), &[&cluster_ip(i).to_string()], 80)
                .split("---\n")
                .take(2)
                .collect::<Vec<_>>()
                .join("---\n");
        }
        write_manifest(&manifests, &format!("svc-{file}.yaml"), &y);
    }
    let start = Instant::now();
    let agent = start_agent_within(&t.node, &manifests, &dir.path().join("state"), &[], Duration::from_secs(120));
    eprintln!("10,000 services ready in {:?}", start.elapsed());
    assert_eq!(t.node.set_elements("edgemesh", "tcp4").unwrap().len(), N as usize, "each cluster IP");

    // A sample, spread by a fixed-seed generator, from the node and a pod.
    let mut x: u32 = 0x9e37_79b9;
    for k in 0..20 {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        let ip = cluster_ip(x % N);
        let from = if k % 2 == 0 { &t.node } else { &t.client };
        assert_eq!(from.curl(&format!("http://{ip}/")).as_deref(), Some("pod-nginx\n"), "service at {ip}");
    }

    // One more service: one transaction with its element.
    let before = updates_logged(&agent);
    write_manifest(&manifests, "one-more.yaml", &service("one-more", &["10.99.0.1"], 80));
    eventually(Duration::from_secs(20), "the new service's elements", || {
        (updates_logged(&agent).len() > before.len()).then_some(())
    });
    let after = updates_logged(&agent);
    assert_eq!(after.len(), before.len() + 1, "one transaction: {:?}", &after[before.len()..]);
    assert!(after.last().unwrap().contains("added=1 removed=0"), "{after:?}");
    assert_eq!(t.client.curl("http://10.99.0.1/").as_deref(), Some("pod-nginx\n"));
    assert_eq!(t.node.set_elements("edgemesh", "tcp4").unwrap().len(), N as usize + 1);
    assert_eq!(agent.terminate().code(), Some(0));
}

//! The fast path on the real kernel (as root): programs attached to a
//! child cgroup made by the test, clients in that cgroup inside a network
//! namespace with only `lo`, service addresses in 10.96.0.0/16 that no
//! route leads to, so only the programs can make them work.

mod support;

use std::net::SocketAddr;

use edgemesh_ebpf::{FastBackend, FastPath, FastService, Pick, ServicePort};
use edgemesh_test_support::netns::{NsNginx, UdpEcho};
use support::{Node, attached, bodies};

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

/// Two nginx backends answering `one` and `two`, behind 10.96.0.10:80.
fn web_node(role: &str) -> (Node, NsNginx, NsNginx) {
    let mut node = Node::new(role, &["10.0.1.1", "10.0.1.2"]);
    let one = NsNginx::start(&node.ns, &["10.0.1.1:8080"], "one");
    let two = NsNginx::start(&node.ns, &["10.0.1.2:8080"], "two");
    let svc = ServicePort::tcp(addr("10.96.0.10:80"));
    node.fast().writer().set(svc, &direct(&["10.0.1.1:8080", "10.0.1.2:8080"])).unwrap();
    (node, one, two)
}

/// A round robin service of backends every client reaches.
fn direct(backends: &[&str]) -> FastService {
    FastService { backends: backends.iter().map(|b| FastBackend::direct(addr(b))).collect(), ..FastService::default() }
}

fn count(bodies: &[String], body: &str) -> usize {
    bodies.iter().filter(|b| *b == body).count()
}

#[test]
fn curl_to_a_service_address_reaches_both_backends_and_a_removed_one_gets_no_new_connections() {
    let (mut node, _one, _two) = web_node("tcp");
    let bodies = node.curl_times("10.96.0.10", 40);
    assert_eq!(bodies.len(), 40, "{bodies:?}");
    let (one, two) = (count(&bodies, "one"), count(&bodies, "two"));
    assert_eq!(one + two, 40, "every request answered by a backend: {bodies:?}");
    assert!(one >= 5 && two >= 5, "balanced across both backends: one {one}, two {two}");

    // Outside the cgroup nothing is rewritten: no route to the service address.
    assert!(node.ns.curl("http://10.96.0.10/").is_none(), "a client outside the cgroup is left alone");

    let svc = ServicePort::tcp(addr("10.96.0.10:80"));
    node.fast().writer().set(svc, &direct(&["10.0.1.1:8080"])).unwrap();
    let bodies = node.curl_times("10.96.0.10", 20);
    assert_eq!(bodies, vec!["one".to_owned(); 20], "the removed backend gets no new connection");

    // No backend left: the service entry goes, and connections fail as without the fast path.
    node.fast().writer().set(svc, &direct(&[])).unwrap();
    assert!(node.fast().writer().table().is_empty());
    assert_eq!(node.curl_times("10.96.0.10", 1), vec!["failed".to_owned()]);
}

#[test]
fn applications_see_the_service_address_as_their_peer_over_ipv4_and_v4_mapped_ipv6() {
    let (node, _one, _two) = web_node("peer");
    for (host, shown) in [("10.96.0.10", "10.96.0.10"), ("::ffff:10.96.0.10", "::ffff:10.96.0.10")] {
        let lines = node.client(&["tcp", host, "80", "20"]);
        assert_eq!(lines.len(), 20, "{host}: {lines:?}");
        for line in &lines {
            let (peer, body) = line.rsplit_once(' ').unwrap();
            assert_eq!(peer, format!("{shown} 80"), "{host}: getpeername gives the service address");
            assert!(body == "one" || body == "two", "{host}: answered by a backend: {line}");
        }
        let bodies = bodies(&lines);
        assert!(count(&bodies, "one") > 0 && count(&bodies, "two") > 0, "{host}: both backends: {bodies:?}");
    }
}

#[test]
fn an_ipv6_service_reaches_its_ipv6_backends_through_connect6_and_getpeername6() {
    let mut node = Node::new("v6", &["fd00::1", "fd00::2"]);
    let _one = NsNginx::start(&node.ns, &["[fd00::1]:8080"], "one");
    let _two = NsNginx::start(&node.ns, &["[fd00::2]:8080"], "two");
    let svc = ServicePort::tcp(addr("[fd00:96::10]:80"));
    node.fast().writer().set(svc, &direct(&["[fd00::1]:8080", "[fd00::2]:8080"])).unwrap();
    let lines = node.client(&["tcp", "fd00:96::10", "80", "20"]);
    assert_eq!(lines.len(), 20, "{lines:?}");
    assert!(lines.iter().all(|l| l.starts_with("fd00:96::10 80 ")), "getpeername gives the service address: {lines:?}");
    let bodies = bodies(&lines);
    assert!(count(&bodies, "one") > 0 && count(&bodies, "two") > 0, "both backends: {bodies:?}");
}

#[test]
fn udp_replies_come_from_the_service_address_connected_or_not() {
    let mut node = Node::new("udp", &["10.0.1.1", "10.0.1.2"]);
    let echoes = [UdpEcho::start(&node.ns, "10.0.1.1:5353"), UdpEcho::start(&node.ns, "10.0.1.2:5353")];
    let svc = ServicePort::udp(addr("10.96.0.10:53"));
    node.fast().writer().set(svc, &direct(&["10.0.1.1:5353", "10.0.1.2:5353"])).unwrap();

    // Unconnected: each datagram is sent to a backend picked for it, and
    // every reply appears to come from the service address.
    let lines = node.client(&["udp", "10.96.0.10", "53", "30"]);
    let want: Vec<String> = (0..30).map(|i| format!("10.96.0.10 53 echo:m{i}")).collect();
    assert_eq!(lines, want);
    let served: Vec<u32> = echoes.iter().map(|e| e.served.load(std::sync::atomic::Ordering::Relaxed)).collect();
    assert!(served.iter().all(|&n| n > 0), "datagrams balanced across both backends: {served:?}");

    // Connected (IPv4, then a v4-mapped IPv6 socket): one backend for the socket's life.
    let lines = node.client(&["udp-connected", "10.96.0.10", "53", "5"]);
    assert_eq!(lines, (0..5).map(|i| format!("10.96.0.10 53 echo:m{i}")).collect::<Vec<_>>());
    let lines = node.client(&["udp-connected", "::ffff:10.96.0.10", "53", "5"]);
    assert_eq!(lines, (0..5).map(|i| format!("::ffff:10.96.0.10 53 echo:m{i}")).collect::<Vec<_>>());
}

#[test]
fn a_second_loader_adopts_the_pinned_state_and_remove_leaves_nothing_attached_or_pinned() {
    let (mut node, _one, _two) = web_node("adopt");
    let first = attached(&node.cgroup.path);
    assert_eq!(first.len(), 8, "connect, sendmsg, recvmsg, getpeername, each 4 and 6: {first:?}");
    // A second service with every setting: host-only and pod backends,
    // random, affinity, the agent's listener.
    let dns = ServicePort::udp(addr("10.96.0.11:53"));
    let rich = FastService {
        backends: vec![FastBackend::host_only(addr("127.0.0.2:53")), FastBackend::direct(addr("10.0.1.1:5353"))],
        pick: Pick::Random,
        affinity: Some(std::time::Duration::from_secs(10800)),
        agent: Some(addr("10.0.1.9:53")),
    };
    node.fast().writer().set(dns, &rich).unwrap();
    let table = node.fast().writer().table().clone();
    // Slots: web 2 for the host and 2 for pods; dns 2 and 1.
    assert_eq!((node.entries("em_services"), node.entries("em_backends")), (2, 7));

    // A restart: the first run's process state goes, its pins stay; the
    // programs keep answering in between.
    drop(node.fast.take());
    assert_eq!(node.curl_times("10.96.0.10", 4).iter().filter(|b| *b == "one" || *b == "two").count(), 4);
    let mut second = FastPath::start(node.options()).unwrap();
    assert!(second.adopted());
    assert_eq!(attached(&node.cgroup.path), first, "adopting attaches nothing twice");
    assert_eq!(second.writer().table(), &table, "the adopted maps are read back whole");
    let svc = ServicePort::tcp(addr("10.96.0.10:80"));
    assert_eq!(second.writer().ports(), vec![svc, dns]);

    // Feeding the same services again (an agent's first snapshot) writes nothing.
    let web = direct(&["10.0.1.1:8080", "10.0.1.2:8080"]);
    assert_eq!(second.writer().table().plan(svc, &web).unwrap(), vec![]);
    assert_eq!(second.writer().table().plan(dns, &rich).unwrap(), vec![]);
    second.writer().set(svc, &web).unwrap();
    second.writer().set(dns, &rich).unwrap();
    assert_eq!((node.entries("em_services"), node.entries("em_backends")), (2, 7), "no duplicate");
    second.writer().remove(dns).unwrap();
    assert_eq!((node.entries("em_services"), node.entries("em_backends")), (1, 4));

    // The adopted writer updates the same maps the attached programs read.
    second.writer().set(svc, &direct(&["10.0.1.2:8080"])).unwrap();
    assert_eq!(node.curl_times("10.96.0.10", 10), vec!["two".to_owned(); 10]);

    second.remove().unwrap();
    assert_eq!(attached(&node.cgroup.path), vec![], "remove() detaches every program");
    assert!(!node.pins.0.exists(), "remove() unpins everything");
    assert!(node.ns.curl("http://10.96.0.10/").is_none(), "and the service address is no longer rewritten");
}

#[test]
fn pinned_programs_of_another_build_are_replaced_not_adopted() {
    let (mut node, _one, _two) = web_node("upgrade");
    let first = attached(&node.cgroup.path);
    drop(node.fast.take());
    // What another build left behind: its object hash in the config map.
    let config = node.pins.0.join("maps/em_config");
    let value = "0 0 0 0 0 0 0 0 1 0 0 0 0 0 0 0".split(' ');
    let out = std::process::Command::new("bpftool")
        .args(["map", "update", "pinned"])
        .arg(&config)
        .args(["key", "0", "0", "0", "0", "value"])
        .args(value)
        .output()
        .unwrap();
    assert!(out.status.success(), "bpftool map update: {}", String::from_utf8_lossy(&out.stderr));

    let mut upgraded = FastPath::start(node.options()).unwrap();
    assert!(!upgraded.adopted(), "another build's programs are not adopted");
    let now = attached(&node.cgroup.path);
    assert_eq!(now.len(), 8, "the old programs are detached and the new ones attached once: {now:?}");
    assert_eq!(
        now.iter().map(|(hook, _)| hook).collect::<Vec<_>>(),
        first.iter().map(|(hook, _)| hook).collect::<Vec<_>>()
    );
    assert!(upgraded.writer().table().is_empty(), "fresh maps, fed again by the agent");
    upgraded.writer().set(ServicePort::tcp(addr("10.96.0.10:80")), &direct(&["10.0.1.2:8080"])).unwrap();
    node.fast = Some(upgraded);
    assert_eq!(node.curl_times("10.96.0.10", 3), vec!["two".to_owned(); 3]);
}

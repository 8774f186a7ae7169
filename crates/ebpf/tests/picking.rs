//! How the kernel picks, on the real kernel (as root, clients in a child
//! cgroup, namespaces with only `lo`, service addresses in 10.96.0.0/16
//! that no route leads to): round robin alternates exactly, random uses
//! every backend, ClientIP affinity sticks within its timeout and moves
//! after it, host-only backends go only to the host's clients, and the
//! others go to the agent's listener.

mod support;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::Duration;

use edgemesh_ebpf::{FastBackend, FastService, Pick, ServicePort};
use edgemesh_test_support::blocking::eventually;
use edgemesh_test_support::netns::{Netns, NsNginx, UdpEcho};
use support::{Node, bodies};

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

const BACKENDS: [&str; 3] = ["10.0.1.1:8080", "10.0.1.2:8080", "10.0.1.3:8080"];

/// Three nginx backends answering `b1`, `b2`, `b3`.
fn three_backends(role: &str) -> (Node, Vec<NsNginx>) {
    let node = Node::new(role, &["10.0.1.1", "10.0.1.2", "10.0.1.3"]);
    let servers =
        BACKENDS.iter().enumerate().map(|(i, b)| NsNginx::start(&node.ns, &[b], &format!("b{}", i + 1))).collect();
    (node, servers)
}

fn service(pick: Pick, affinity: Option<Duration>) -> FastService {
    FastService {
        backends: BACKENDS.iter().map(|b| FastBackend::direct(addr(b))).collect(),
        pick,
        affinity,
        agent: None,
    }
}

fn svc() -> ServicePort {
    ServicePort::tcp(addr("10.96.0.10:80"))
}

#[test]
fn round_robin_alternates_exactly_and_random_uses_every_backend_in_no_fixed_order() {
    let (mut node, _servers) = three_backends("pick");
    node.fast().writer().set(svc(), &service(Pick::RoundRobin, None)).unwrap();
    let got = bodies(&node.client(&["tcp", "10.96.0.10", "80", "30"]));
    assert_eq!(got.len(), 30, "{got:?}");
    let mut first: Vec<&String> = got[..3].iter().collect();
    first.sort();
    assert_eq!(first, ["b1", "b2", "b3"], "one turn visits each backend once: {got:?}");
    assert!(got.iter().zip(&got[3..]).all(|(a, b)| a == b), "every turn in the same order: {got:?}");

    node.fast().writer().set(svc(), &service(Pick::Random, None)).unwrap();
    let got = bodies(&node.client(&["tcp", "10.96.0.10", "80", "60"]));
    for b in ["b1", "b2", "b3"] {
        assert!(got.iter().any(|g| g == b), "{b} is picked at random too: {got:?}");
    }
    // Not a fixed cycle (a cycle of 60 random picks: about 1 in 3^57).
    assert!(got.iter().zip(&got[3..]).any(|(a, b)| a != b), "random, not round robin: {got:?}");
}

#[test]
fn client_ip_affinity_sticks_within_the_timeout_and_moves_after_it() {
    let (mut node, _servers) = three_backends("aff");
    // Long enough for a second python process to start on a loaded machine.
    let timeout = Duration::from_secs(3);
    node.fast().writer().set(svc(), &service(Pick::RoundRobin, Some(timeout))).unwrap();
    let first = bodies(&node.client(&["tcp", "10.96.0.10", "80", "10"]));
    assert_eq!(first.len(), 10, "{first:?}");
    assert!(first.iter().all(|b| *b == first[0]), "the client keeps its backend: {first:?}");
    // A second process of the same namespace is the same client.
    let again = bodies(&node.client(&["tcp", "10.96.0.10", "80", "5"]));
    assert_eq!(again, vec![first[0].clone(); 5]);

    // Idle past the timeout: the next connect is a new round robin pick,
    // the next backend, which then sticks.
    std::thread::sleep(timeout + Duration::from_millis(300));
    let after = bodies(&node.client(&["tcp", "10.96.0.10", "80", "5"]));
    assert_ne!(after[0], first[0], "affinity expired after the timeout: {first:?} then {after:?}");
    assert!(after.iter().all(|b| *b == after[0]), "and the new backend sticks: {after:?}");
}

#[test]
fn host_only_backends_serve_only_the_hosts_clients_others_go_to_the_agent_or_a_pod_backend() {
    let mut node = Node::new("host", &[]);
    let _lo = NsNginx::start(&node.ns, &["127.0.0.2:8080"], "loopback");
    // A pod namespace with the agent's listener and, later, a pod backend.
    let pod = Netns::new("pod");
    pod.addr("lo", "10.0.2.1/32");
    pod.addr("lo", "10.0.2.2/32");
    let _agent = NsNginx::start(&pod, &["10.0.2.1:8080"], "agent");
    let _pod_backend = NsNginx::start(&pod, &["10.0.2.2:8080"], "pod");

    let mut only_lo = FastService {
        backends: vec![FastBackend::host_only(addr("127.0.0.2:8080"))],
        agent: Some(addr("10.0.2.1:8080")),
        ..FastService::default()
    };
    node.fast().writer().set(svc(), &only_lo).unwrap();
    let host = node.client(&["tcp", "10.96.0.10", "80", "10"]);
    assert_eq!(bodies(&host), vec!["loopback"; 10], "the host's client gets the loopback backend: {host:?}");
    let from_pod = node.client_in(&pod, &["tcp", "10.96.0.10", "80", "10"]);
    assert_eq!(
        from_pod,
        vec!["10.96.0.10 80 agent"; 10],
        "a pod never gets a loopback backend: the agent's listener serves it, seen as the service address"
    );

    // With a pod backend too, pods get it and never the loopback one.
    only_lo.backends.push(FastBackend::direct(addr("10.0.2.2:8080")));
    node.fast().writer().set(svc(), &only_lo).unwrap();
    let from_pod = bodies(&node.client_in(&pod, &["tcp", "10.96.0.10", "80", "10"]));
    assert_eq!(from_pod, vec!["pod"; 10]);

    // No agent address: a pod's connection is left alone (no route: it fails).
    only_lo.backends.pop();
    only_lo.agent = None;
    node.fast().writer().set(svc(), &only_lo).unwrap();
    let out = node.command_in(&pod, &support::client_args(&["tcp", "10.96.0.10", "80", "1"])).output().unwrap();
    assert!(!out.status.success(), "untouched: {}", String::from_utf8_lossy(&out.stdout));
    assert_eq!(bodies(&node.client(&["tcp", "10.96.0.10", "80", "3"])), vec!["loopback"; 3]);
}

#[test]
fn unconnected_udp_from_a_pod_goes_to_the_agent_and_its_replies_come_from_the_service_address() {
    let mut node = Node::new("hostudp", &[]);
    let pod = Netns::new("podudp");
    pod.addr("lo", "10.0.2.1/32");
    let host_echo = UdpEcho::start(&node.ns, "127.0.0.2:5353");
    let agent_echo = UdpEcho::start(&pod, "10.0.2.1:5353");
    let dns = ServicePort::udp(addr("10.96.0.10:53"));
    let service = FastService {
        backends: vec![FastBackend::host_only(addr("127.0.0.2:5353"))],
        agent: Some(addr("10.0.2.1:5353")),
        ..FastService::default()
    };
    node.fast().writer().set(dns, &service).unwrap();
    let want: Vec<String> = (0..3).map(|i| format!("10.96.0.10 53 echo:m{i}")).collect();
    assert_eq!(
        node.client_in(&pod, &["udp", "10.96.0.10", "53", "3"]),
        want,
        "the pod: the agent, seen as the service"
    );
    assert_eq!(node.client(&["udp", "10.96.0.10", "53", "3"]), want, "the host: the loopback backend");
    let served = |e: &UdpEcho| e.served.load(Ordering::Relaxed);
    eventually(Duration::from_secs(2), "both echoes counted", || {
        (served(&agent_echo) == 3 && served(&host_echo) == 3).then_some(())
    });
}

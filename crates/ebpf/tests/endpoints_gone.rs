//! A backend that goes away (as root, clients in a child cgroup inside a
//! namespace with only `lo`): out of the maps, and the connected UDP
//! sockets still pointing at it destroyed (`SOCK_DESTROY`), so their
//! owners see an error and reconnect through the hook, as kube-proxy
//! flushes conntrack for UDP. The writer's walk hits only the sockets the
//! programs sent there; the free function, every socket to the address.

mod support;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{ChildStdout, Stdio};
use std::sync::atomic::Ordering;
use std::time::Duration;

use edgemesh_ebpf::{FastBackend, FastService, ServicePort, destroy_udp_sockets_to};
use edgemesh_test_support::blocking::eventually;
use edgemesh_test_support::netns::UdpEcho;
use support::{Node, client_args};

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn one(backend: &str) -> FastService {
    FastService { backends: vec![FastBackend::direct(addr(backend))], ..FastService::default() }
}

fn next_line(out: &mut BufReader<ChildStdout>) -> String {
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    line.trim_end().to_owned()
}

#[test]
fn a_removed_backends_connected_udp_sockets_are_destroyed_ipv4_and_v4_mapped_and_only_the_fast_paths() {
    // Uncommon ports: the destroy walks every namespace of the machine.
    let (old, new) = ("10.0.77.1:47153", "10.0.77.2:47153");
    let mut node = Node::new("udpgone", &["10.0.77.1", "10.0.77.2"]);
    let echoes = [UdpEcho::start(&node.ns, old), UdpEcho::start(&node.ns, new)];
    let svc = ServicePort::udp(addr("10.96.0.53:53"));
    node.fast().writer().set(svc, &one(old)).unwrap();

    // Two clients hold connected sockets to the old backend through the
    // service; a third reached it directly, by its own address.
    let mut held = Vec::new();
    for (host, port) in [("10.96.0.53", "53"), ("::ffff:10.96.0.53", "53"), ("10.0.77.1", "47153")] {
        let mut child = node
            .command_in(&node.ns, &client_args(&["udp-hold", host, port, "1"]))
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut out = BufReader::new(child.stdout.take().unwrap());
        assert_eq!(next_line(&mut out), format!("{host} {port} echo:m0"), "answered, seen from the address asked for");
        held.push((child, out));
    }
    let served = |i: usize| echoes[i].served.load(Ordering::Relaxed);
    eventually(Duration::from_secs(2), "the old backend counted all three", || (served(0) == 3).then_some(()));

    node.fast().writer().set(svc, &one(new)).unwrap();
    let destroyed = node.fast().writer().destroy_udp_sockets_to(&[addr(old)]).unwrap();
    assert_eq!(destroyed, 2, "the service's clients' sockets, IPv4 and v4-mapped IPv6, not the direct one");
    let direct = held.pop().unwrap();
    for (mut child, mut out) in held {
        assert_eq!(next_line(&mut out), "error ECONNABORTED", "the waiting client learns at once");
        assert!(child.wait().unwrap().success());
    }
    // The unfiltered walk takes every socket to the address, the direct one too.
    assert_eq!(destroy_udp_sockets_to(&[addr(old)]).unwrap(), 1);
    let (mut child, mut out) = direct;
    assert_eq!(next_line(&mut out), "error ECONNABORTED");
    assert!(child.wait().unwrap().success());

    // A new socket goes to the new backend; nothing is left to destroy.
    let lines = node.client(&["udp-connected", "10.96.0.53", "53", "3"]);
    assert_eq!(lines, ["10.96.0.53 53 echo:m0", "10.96.0.53 53 echo:m1", "10.96.0.53 53 echo:m2"]);
    eventually(Duration::from_secs(2), "the new backend counted three", || (served(1) == 3).then_some(()));
    assert_eq!(served(0), 3, "the removed backend got nothing more");
    assert_eq!(node.fast().writer().destroy_udp_sockets_to(&[addr(old)]).unwrap(), 0);
    assert_eq!(destroy_udp_sockets_to(&[addr(old)]).unwrap(), 0);
}

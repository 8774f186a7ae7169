//! The namespace topologies that end-to-end tests build nodes from
//! (`support::netns`), checked for what those tests rely on: nodes on a
//! bridged LAN reach each other, a NAT router masquerades what leaves
//! through its WAN link and keeps connections from the WAN out, and every
//! namespace and resolver file goes when the test ends. As root.

mod support;

use std::io::Read;
use std::net::TcpListener;
use std::time::Duration;

use support::netns::{Lan, Netns, UdpEcho, in_netns, link, run, udp_stream};

/// `ip netns list` as text.
fn namespaces() -> String {
    String::from_utf8_lossy(&run(&["ip", "netns", "list"]).stdout).into_owned()
}

#[test]
fn nodes_behind_a_nat_router_reach_out_and_are_not_reachable_from_outside() {
    //   a (10.0.1.2) ─┐
    //                 ├─ lan bridge ─ router (10.0.1.1 | wan0 10.0.2.1) ── public (10.0.2.2)
    //   b (10.0.1.3) ─┘
    let lan = Lan::new("lan");
    let (a, b, router, public) = (Netns::new("a"), Netns::new("b"), Netns::router("rtr"), Netns::new("pub"));
    lan.attach(&a, "eth0", &["10.0.1.2/24"]);
    lan.attach(&b, "eth0", &["10.0.1.3/24"]);
    lan.attach(&router, "lan0", &["10.0.1.1/24"]);
    link(&router, "wan0", &public, "eth0");
    router.addr("wan0", "10.0.2.1/24");
    public.addr("eth0", "10.0.2.2/24");
    a.route("default", "10.0.1.1");
    router.masquerade("wan0");
    // The public host knows the way back to the LAN, so only the NAT keeps
    // it out.
    public.route("10.0.1.0/24", "10.0.2.1");
    a.resolv_conf("nameserver 10.0.2.2\n");
    let names = [&lan.ns, &a, &b, &router, &public].map(|n| n.name.clone());

    // Across the LAN.
    let _echo = UdpEcho::start(&b, "10.0.1.3:7007");
    assert_eq!(udp_stream(&a, "10.0.1.3:7007", 3), Ok(3), "a reaches b on the LAN");

    // Out through the NAT: the public host sees the router's WAN address.
    let listener = in_netns(&public.name, || TcpListener::bind("10.0.2.2:8080").unwrap());
    let server = std::thread::spawn(move || {
        let (mut conn, peer) = listener.accept().unwrap();
        conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let _ = conn.read(&mut [0u8; 64]);
        peer.ip().to_string()
    });
    let _ = a.curl("http://10.0.2.2:8080/");
    assert_eq!(server.join().unwrap(), "10.0.2.1", "masqueraded to the router's WAN address");

    // In from the WAN: dropped, though routed.
    let inside = in_netns(&a.name, || TcpListener::bind("10.0.1.2:8081").unwrap());
    inside.set_nonblocking(true).unwrap();
    assert_eq!(public.curl("http://10.0.1.2:8081/"), None, "new connections from the WAN are dropped");
    assert!(inside.accept().is_err(), "nothing got in");

    // The resolver file is where `ip netns exec` looks for it.
    let mounted = a.ok(&["cat", "/etc/resolv.conf"]);
    assert_eq!(mounted, "nameserver 10.0.2.2\n");

    drop((lan, a, b, router, public));
    let left = namespaces();
    for name in names {
        assert!(!left.contains(&name), "{name} left behind: {left}");
        assert!(!std::path::Path::new("/etc/netns").join(&name).exists(), "/etc/netns/{name} left behind");
    }
}

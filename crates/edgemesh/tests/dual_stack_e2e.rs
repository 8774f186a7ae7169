//! Dual-stack node mode end to end, as root, in namespaces made for the
//! test (`support::node::Topology`): IPv6 cluster IPs and endpoints, AAAA
//! answers, IPv6 interception of TCP (curl -6) and UDP (replies from the
//! IPv6 cluster IP), a service that asks for IPv6 only getting an IPv6 VIP
//! on edge0, node ports (TCP and UDP) on the node's IPv4 and IPv6
//! addresses, and endpoint choice by family as kube-proxy's: a dual-stack
//! service whose pods listen on IPv4 only is served in full on its IPv4
//! addresses and refused on its IPv6 ones.

mod support;

use std::sync::atomic::Ordering;

use support::netns::{NsNginx, UdpEcho, require_root, udp_stream};
use support::node::*;
use support::write_manifest;

#[test]
fn dual_stack_services_work_over_ipv6_end_to_end() {
    require_root();
    let t = Topology::new();
    let _echo4 = UdpEcho::start(&t.pod, "10.244.1.2:7007");
    let echo6 = UdpEcho::start(&t.pod, "[fd00:244:1::2]:7007");
    let (dir, manifests) = support::manifest_dir();
    write_manifest(&manifests, "web.yaml", &service("web", &["10.96.0.10", "fd00:96::10"], 80));
    write_manifest(&manifests, "v6.yaml", &ipv6_only_service("v6only", 8080));
    write_manifest(&manifests, "echo.yaml", &udp_service("echo", &["10.96.0.53", "fd00:96::53"], 53, Some(30053)));
    write_manifest(&manifests, "np.yaml", &node_port_service("np", &["10.96.0.70", "fd00:96::70"], 8080, 30080));
    write_manifest(&manifests, "np4.yaml", &node_port_service("np4", &["10.96.0.71"], 8080, 30081));
    let agent = start_agent(&t.node, &manifests, &dir.path().join("state"), &[]);
    t.client
        .resolv_conf(&format!("search default.svc.cluster.local svc.cluster.local cluster.local\nnameserver {DNS}\n"));

    // TCP to an IPv6 cluster IP: AAAA, then curl -6 by name from a pod
    // (prerouting) and by address from the node (output).
    assert_eq!(dig(&t.client, "web.default.svc.cluster.local", "AAAA"), vec!["fd00:96::10".to_owned()]);
    assert_eq!(dig(&t.client, "web.default.svc.cluster.local", "A"), vec!["10.96.0.10".to_owned()]);
    assert_eq!(t.client.curl_with(&["-6"], "http://web/").as_deref(), Some("pod-nginx\n"), "curl -6 from a pod");
    assert_eq!(t.node.curl("http://[fd00:96::10]/").as_deref(), Some("pod-nginx\n"), "from the node");
    assert_eq!(t.client.curl_with(&["-4"], "http://web/").as_deref(), Some("pod-nginx\n"), "and over IPv4");

    // A service asking for IPv6 only, without a cluster IP: an IPv6 VIP
    // from the IPv6 pool, on edge0, answered as AAAA and nothing as A.
    let vips = vips_of(&t.node, "v6only");
    assert_eq!(vips.len(), 1, "{vips:?}");
    let vip6 = vips[0].clone();
    assert!(vip6.starts_with("fd00:9:251::"), "{vip6}");
    assert!(device_addresses(&t.node, "edge0").unwrap().contains(&vip6), "on edge0");
    assert_eq!(dig(&t.client, "v6only.default.svc.cluster.local", "AAAA"), vec![vip6.clone()]);
    assert!(dig(&t.client, "v6only.default.svc.cluster.local", "A").is_empty());
    assert_eq!(t.client.curl("http://v6only:8080/").as_deref(), Some("pod-nginx\n"), "by name, from a pod");
    assert_eq!(t.node.curl(&format!("http://[{vip6}]:8080/")).as_deref(), Some("pod-nginx\n"), "from the node");

    // UDP to the IPv6 cluster IP: DNATed (map udp6) to the service's IPv6
    // VIP; every answer comes back from the cluster IP and port, from the
    // node and from a pod, a long stream and many short flows.
    let echo_vips = vips_of(&t.node, "echo");
    assert_eq!(echo_vips.len(), 2, "a DNAT target per family: {echo_vips:?}");
    let udp6 = map_entries(&t.node, "udp6");
    assert_eq!(udp6, vec![format!("fd00:96::53 . 53 : {} . 53", echo_vips[1])]);
    assert_eq!(udp_stream(&t.node, "[fd00:96::53]:53", 500), Ok(500), "from the node");
    assert_eq!(udp_stream(&t.client, "[fd00:96::53]:53", 500), Ok(500), "from a pod");
    for _ in 0..20 {
        assert_eq!(udp_stream(&t.client, "[fd00:96::53]:53", 1), Ok(1));
    }
    assert!(echo6.served.load(Ordering::Relaxed) > 0, "the IPv6 endpoint served");
    assert_eq!(udp_stream(&t.client, "10.96.0.53:53", 50), Ok(50), "the IPv4 cluster IP as well");

    // Node ports on the node's IPv4 and IPv6 addresses: TCP, and UDP with
    // the answers from the node address and port the client used.
    assert_eq!(t.client.curl("http://10.244.2.1:30080/").as_deref(), Some("pod-nginx\n"));
    assert_eq!(t.client.curl("http://[fd00:244:2::1]:30080/").as_deref(), Some("pod-nginx\n"), "TCP node port, IPv6");
    // A single-stack IPv4 service's node port is served on IPv4 addresses
    // only (as kube-proxy): never forwarded from IPv6 to an IPv4 endpoint.
    assert_eq!(t.client.curl("http://10.244.2.1:30081/").as_deref(), Some("pod-nginx\n"));
    assert_eq!(t.client.curl("http://[fd00:244:2::1]:30081/"), None, "IPv4-only node port over IPv6");
    let np4 = map_entries(&t.node, "nodeport_udp4");
    assert_eq!(np4, vec![format!("30053 : {} . 53", echo_vips[0])]);
    assert_eq!(udp_stream(&t.client, "10.244.2.1:30053", 100), Ok(100), "UDP node port, IPv4");
    assert_eq!(udp_stream(&t.client, "[fd00:244:2::1]:30053", 100), Ok(100), "UDP node port, IPv6");
    assert_eq!(udp_stream(&t.node, "[fd00:244:1::1]:30053", 10), Ok(10), "from the node, another address");

    assert_eq!(agent.terminate().code(), Some(0));
    assert!(!t.node.tables().contains("edgemesh"), "table left: {}", t.node.tables());
    assert!(!t.node.links().contains("edge0"), "edge0 left: {}", t.node.links());
}

/// The case: a dual-stack service (an IPv4 and an IPv6
/// EndpointSlice) whose pods listen on IPv4 only. Every UDP session and TCP
/// connection to its IPv4 cluster IP is served (sessions used to alternate
/// onto the IPv6 endpoint and every second one was lost); its IPv6 cluster
/// IP has no endpoint of its family and refuses (TCP reset, UDP dropped)
/// rather than crossing to IPv4. DNS still answers the AAAA, as kube-proxy
/// clusters do.
#[test]
fn a_dual_stack_service_with_ipv4_only_pods() {
    require_root();
    let t = Topology::new();
    let echo4 = UdpEcho::start(&t.pod, "10.244.1.2:7008");
    let _web4 = NsNginx::start(&t.pod, &["10.244.1.2:8081"], "ipv4-only");
    let (dir, manifests) = support::manifest_dir();
    write_manifest(&manifests, "web.yaml", &dual_stack_service("web", &["10.96.0.80", "fd00:96::80"], "TCP", 80, 8081));
    write_manifest(&manifests, "dns.yaml", &dual_stack_service("dns", &["10.96.0.81", "fd00:96::81"], "UDP", 53, 7008));
    let agent = start_agent(&t.node, &manifests, &dir.path().join("state"), &[]);
    assert_eq!(dig(&t.client, "web.default.svc.cluster.local", "AAAA"), vec!["fd00:96::80".to_owned()]);

    for i in 0..20 {
        assert_eq!(udp_stream(&t.client, "10.96.0.81:53", 1), Ok(1), "UDP session {i} (a socket each)");
    }
    assert_eq!(echo4.sources.lock().unwrap().len(), 20, "20 sessions, all to the IPv4 endpoint");
    for i in 0..20 {
        assert_eq!(t.client.curl("http://10.96.0.80/").as_deref(), Some("ipv4-only\n"), "TCP connection {i}");
    }

    // IPv6: refused at once, not a timeout (curl: 28) nor an answer from
    // the IPv4 pod; no UDP answer either. The refusal is a reset of the
    // accepted connection (curl: 56) or of the SYN itself (curl: 7,
    // "couldn't connect"): runs on a loaded machine have shown both.
    let out = t.client.exec(&["curl", "-sS", "-g", "--max-time", "5", "http://[fd00:96::80]/"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(matches!(out.status.code(), Some(7 | 56)), "refused at once: {:?} {stderr}", out.status.code());
    assert!(out.stdout.is_empty(), "no answer: {}", String::from_utf8_lossy(&out.stdout));
    assert!(udp_stream(&t.client, "[fd00:96::81]:53", 1).is_err(), "no IPv6 endpoint answers");
    assert_eq!(echo4.served.load(Ordering::Relaxed), 20, "nothing crossed to the IPv4 endpoint");
    assert_eq!(agent.terminate().code(), Some(0));
}

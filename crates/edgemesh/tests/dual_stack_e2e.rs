//! Dual-stack node mode end to end, as root, in namespaces made for the
//! test (`support::node::Topology`): IPv6 cluster IPs and endpoints, AAAA
//! answers, IPv6 interception of TCP (curl -6) and UDP (replies from the
//! IPv6 cluster IP), a service that asks for IPv6 only getting an IPv6 VIP
//! on edge0, and node ports (TCP and UDP) on the node's IPv4 and IPv6
//! addresses.

mod support;

use std::sync::atomic::Ordering;

use support::netns::{UdpEcho, require_root, udp_stream};
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
    write_manifest(&manifests, "np.yaml", &node_port_service("np", "10.96.0.70", 8080, 30080));
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
    let np4 = map_entries(&t.node, "nodeport_udp4");
    assert_eq!(np4, vec![format!("30053 : {} . 53", echo_vips[0])]);
    assert_eq!(udp_stream(&t.client, "10.244.2.1:30053", 100), Ok(100), "UDP node port, IPv4");
    assert_eq!(udp_stream(&t.client, "[fd00:244:2::1]:30053", 100), Ok(100), "UDP node port, IPv6");
    assert_eq!(udp_stream(&t.node, "[fd00:244:1::1]:30053", 10), Ok(10), "from the node, another address");

    assert_eq!(agent.terminate().code(), Some(0));
    assert!(!t.node.tables().contains("edgemesh"), "table left: {}", t.node.tables());
    assert!(!t.node.links().contains("edge0"), "edge0 left: {}", t.node.links());
}

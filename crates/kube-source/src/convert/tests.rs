use std::net::IpAddr;

use edgemesh_core::object::{EndpointSet, NodeObject, ServiceObject};
use edgemesh_core::{
    InternalTrafficPolicy, IpFamily, IpFamilyPolicy, ObjectKind, Protocol, SessionAffinity, TargetPort,
};
use serde_json::json;

use super::*;

fn from<T: serde::de::DeserializeOwned>(v: serde_json::Value) -> T {
    serde_json::from_value(v).unwrap()
}

fn service_of(svc: &core_v1::Service) -> Result<ServiceObject, ConvertError> {
    service(svc).map(|o| match o {
        Some(Object::Service(s)) => s,
        other => panic!("not a service: {other:?}"),
    })
}

fn endpoints_of(o: Result<Option<Object>, ConvertError>) -> Result<Option<EndpointSet>, ConvertError> {
    o.map(|o| match o {
        Some(Object::Endpoints(e)) => Some(e),
        None => None,
        other => panic!("not endpoints: {other:?}"),
    })
}

fn node_of(n: &core_v1::Node) -> Result<NodeObject, ConvertError> {
    node(n).map(|o| match o {
        Some(Object::Node(n)) => n,
        other => panic!("not a node: {other:?}"),
    })
}

#[test]
fn service_like_the_manifests_source() {
    let svc: core_v1::Service = from(json!({
        "metadata": {"name": "web", "namespace": "shop", "annotations": {"edgemesh.io/lb-strategy": "Random"}},
        "spec": {"clusterIP": "10.96.0.10", "clusterIPs": ["10.96.0.10"], "ports": [
            {"name": "http", "port": 80, "targetPort": "web", "appProtocol": "kubernetes.io/h2c"},
            {"name": "dns", "port": 53, "protocol": "UDP", "targetPort": 5353},
        ]},
    }));
    let s = service_of(&svc).unwrap();
    assert_eq!(s.meta.namespace, "shop");
    assert_eq!(s.cluster_ips, vec!["10.96.0.10".parse::<IpAddr>().unwrap()]);
    assert_eq!(s.service_type, "ClusterIP");
    assert_eq!(s.ports[0].target_port, TargetPort::Name("web".into()));
    assert_eq!(s.ports[0].app_protocol.as_deref(), Some("kubernetes.io/h2c"));
    assert_eq!(s.ports[1].app_protocol, None);
    assert_eq!(s.ports[1].protocol, Protocol::Udp);
    assert_eq!(s.ports[1].target_port, TargetPort::Number(5353));

    let headless: core_v1::Service =
        from(json!({"metadata": {"name": "db", "namespace": "shop"}, "spec": {"clusterIP": "None"}}));
    assert!(service_of(&headless).unwrap().headless);
}

#[test]
fn invalid_objects_name_the_object_and_the_rule() {
    let svc: core_v1::Service = from(json!({
        "metadata": {"name": "web", "namespace": "shop"},
        "spec": {"ports": [{"port": 80}, {"port": 81}]},
    }));
    let e = service_of(&svc).unwrap_err().to_string();
    assert!(e.contains("Service shop/web") && e.contains("spec.ports[0] has no name"), "{e}");

    let slice: discovery_v1::EndpointSlice = from(json!({
        "metadata": {"name": "web-1", "namespace": "shop", "labels": {"kubernetes.io/service-name": "web"}},
        "addressType": "IPv4",
        "endpoints": [{"addresses": ["fd00::1"]}],
    }));
    let e = endpoints_of(endpoint_slice(&slice)).unwrap_err().to_string();
    assert!(e.contains("not an IPv4 address"), "{e}");
}

#[test]
fn slices_and_legacy_endpoints() {
    let slice: discovery_v1::EndpointSlice = from(json!({
        "metadata": {"name": "web-1", "namespace": "shop", "labels": {"kubernetes.io/service-name": "web"}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 8080}],
        "endpoints": [
            {"addresses": ["10.0.0.1"], "nodeName": "n1"},
            {"addresses": ["10.0.0.2"], "conditions": {"ready": false}},
        ],
    }));
    let set = endpoints_of(endpoint_slice(&slice)).unwrap().unwrap();
    assert_eq!(set.service_name, "web");
    assert!(set.subsets[0].endpoints[0].ready, "unset readiness is ready");
    assert!(!set.subsets[0].endpoints[1].ready);
    assert_eq!(set.subsets[0].ports[0].port, 8080);

    let fqdn: discovery_v1::EndpointSlice = from(json!({
        "metadata": {"name": "x", "namespace": "shop", "labels": {"kubernetes.io/service-name": "web"}},
        "addressType": "FQDN", "endpoints": [],
    }));
    assert!(endpoints_of(endpoint_slice(&fqdn)).unwrap().is_none());

    let eps: core_v1::Endpoints = from(json!({
        "metadata": {"name": "web", "namespace": "shop"},
        "subsets": [{"addresses": [{"ip": "10.0.0.1"}], "notReadyAddresses": [{"ip": "10.0.0.2"}],
                     "ports": [{"name": "http", "port": 8080}]}],
    }));
    let set = endpoints_of(endpoints(&eps)).unwrap().unwrap();
    assert_eq!(set.kind, ObjectKind::Endpoints);
    assert_eq!(set.subsets[0].endpoints.len(), 2);
    assert!(!set.subsets[0].endpoints[1].ready);
}

#[test]
fn the_proxy_name_label_excludes() {
    let svc: core_v1::Service = from(json!({
        "metadata": {"name": "web", "namespace": "shop", "labels": {SERVICE_PROXY_NAME_LABEL: "other"}},
    }));
    assert!(excluded(&svc));
}

#[test]
fn nodes_keep_their_annotations_and_dialable_addresses() {
    let n: core_v1::Node = from(json!({
        "metadata": {"name": "edge-1", "annotations": {"edgemesh.io/peer-id": "12D3KooWExample"}},
        "status": {"addresses": [
            {"type": "Hostname", "address": "edge-1"},
            {"type": "InternalIP", "address": "192.168.1.10"},
            {"type": "ExternalIP", "address": "2001:db8::10"},
            {"type": "ExternalIP", "address": "192.168.1.10"},
        ]},
    }));
    let edge1 = node_of(&n).unwrap();
    assert_eq!(edge1.meta.name, "edge-1");
    assert_eq!(edge1.meta.namespace, "", "cluster-scoped");
    assert_eq!(edge1.meta.annotations["edgemesh.io/peer-id"], "12D3KooWExample");
    let want: Vec<IpAddr> = vec!["192.168.1.10".parse().unwrap(), "2001:db8::10".parse().unwrap()];
    assert_eq!(edge1.addresses, want, "host names skipped, duplicates once");

    let bare: core_v1::Node = from(json!({"metadata": {"name": "edge-2"}}));
    assert!(node_of(&bare).unwrap().addresses.is_empty());

    let bad: core_v1::Node = from(json!({
        "metadata": {"name": "edge-3"},
        "status": {"addresses": [{"type": "InternalIP", "address": "10.0.0.300"}]},
    }));
    let e = node_of(&bad).unwrap_err().to_string();
    assert!(e.contains("Node edge-3: status.addresses[0].address \"10.0.0.300\" is not a valid IP"), "{e}");
    let bad: core_v1::Node = from(json!({"metadata": {"name": "Edge_4"}}));
    let e = node_of(&bad).unwrap_err().to_string();
    assert!(e.contains("Node Edge_4: metadata.name"), "{e}");
}

#[test]
fn nodes_carry_their_pod_cidrs_and_keep_the_good_ones_when_one_is_bad() {
    let cidrs = |n: serde_json::Value| node_of(&from(n)).unwrap().pod_cidrs;
    let nets = |l: &[&str]| l.iter().map(|s| s.parse::<ipnet::IpNet>().unwrap()).collect::<Vec<_>>();
    let dual = json!({"metadata": {"name": "edge-1"},
        "spec": {"podCIDR": "10.244.1.0/24", "podCIDRs": ["10.244.1.0/24", "fd00:244:1::/64"]}});
    assert_eq!(cidrs(dual), nets(&["10.244.1.0/24", "fd00:244:1::/64"]));
    let old = json!({"metadata": {"name": "edge-1"}, "spec": {"podCIDR": "10.244.7.0/24"}});
    assert_eq!(cidrs(old), nets(&["10.244.7.0/24"]), "only podCIDR, as older clusters set it");
    assert!(cidrs(json!({"metadata": {"name": "edge-1"}, "spec": {}})).is_empty());
    // A bad entry is reported (a warning) and skipped; the node, its
    // addresses and its other CIDRs stay.
    let bad = json!({"metadata": {"name": "edge-1"},
        "spec": {"podCIDRs": ["10.244.1.0/40", "fd00:244:1::/64"]},
        "status": {"addresses": [{"type": "InternalIP", "address": "192.168.1.10"}]}});
    let edge1 = node_of(&from(bad)).unwrap();
    assert_eq!(edge1.pod_cidrs, nets(&["fd00:244:1::/64"]));
    assert_eq!(edge1.addresses, vec!["192.168.1.10".parse::<IpAddr>().unwrap()]);
}

#[test]
fn service_policies_are_read_as_from_a_manifest() {
    let svc: core_v1::Service = from(json!({
        "metadata": {"name": "web", "namespace": "shop"},
        "spec": {
            "ports": [{"port": 80, "targetPort": "8080"}],
            "sessionAffinity": "ClientIP",
            "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 60}},
            "internalTrafficPolicy": "Local",
            "ipFamilies": ["IPv6", "IPv4"],
            "ipFamilyPolicy": "PreferDualStack",
        },
    }));
    let s = service_of(&svc).unwrap();
    assert_eq!(s.session_affinity, SessionAffinity::ClientIp { timeout_seconds: 60 });
    assert_eq!(s.internal_traffic_policy, InternalTrafficPolicy::Local);
    assert_eq!(s.ip_families, vec![IpFamily::IPv6, IpFamily::IPv4]);
    assert_eq!(s.ip_family_policy, Some(IpFamilyPolicy::PreferDualStack));
    assert_eq!(s.ports[0].target_port, TargetPort::Number(8080), "a numeric string is a number");

    let svc: core_v1::Service = from(json!({
        "metadata": {"name": "web", "namespace": "shop"},
        "spec": {"sessionAffinity": "ClientIP", "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 0}}},
    }));
    let e = service_of(&svc).unwrap_err().to_string();
    assert!(e.contains("Service shop/web: spec.sessionAffinityConfig.clientIP.timeoutSeconds 0"), "{e}");
}

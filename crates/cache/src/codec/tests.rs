use std::net::IpAddr;

use edgemesh_core::object::{EndpointPortSpec, EndpointSpec, ObjectMeta, ServicePortSpec};
use edgemesh_core::service::{
    InternalTrafficPolicy, IpFamily, IpFamilyPolicy, LbStrategy, Protocol, SessionAffinity, TargetPort,
    TrafficDistribution,
};
use edgemesh_core::{
    DestinationRuleObject, EndpointSet, EndpointSubset, NodeObject, Object, ObjectKind, RoutingKind, RoutingObject,
    ServiceObject,
};

use super::{DecodeError, VERSION, decode, encode};

fn meta(name: &str) -> ObjectMeta {
    ObjectMeta {
        namespace: "shop".into(),
        name: name.into(),
        labels: [("app".to_owned(), "web".to_owned())].into(),
        annotations: [("edgemesh.io/lb-strategy".to_owned(), "Random".to_owned()), ("ü".to_owned(), String::new())]
            .into(),
    }
}

/// Every field set to something other than its default.
fn objects() -> Vec<Object> {
    let ip = |s: &str| s.parse::<IpAddr>().unwrap();
    vec![
        Object::Service(ServiceObject {
            meta: meta("web"),
            cluster_ips: vec![ip("10.96.0.10"), ip("fd00::a")],
            headless: true,
            ports: vec![
                ServicePortSpec {
                    name: "http".into(),
                    protocol: Protocol::Tcp,
                    port: 80,
                    target_port: TargetPort::Name("web-http".into()),
                    node_port: Some(30080),
                    app_protocol: Some("kubernetes.io/h2c".into()),
                },
                ServicePortSpec {
                    name: String::new(),
                    protocol: Protocol::Sctp,
                    port: 65535,
                    target_port: TargetPort::Number(300),
                    node_port: None,
                    app_protocol: None,
                },
            ],
            service_type: "NodePort".into(),
            session_affinity: SessionAffinity::ClientIp { timeout_seconds: 86_400 },
            internal_traffic_policy: InternalTrafficPolicy::Local,
            traffic_distribution: Some(TrafficDistribution::PreferClose),
            ip_families: vec![IpFamily::IPv6, IpFamily::IPv4],
            ip_family_policy: Some(IpFamilyPolicy::RequireDualStack),
        }),
        Object::Service(ServiceObject { meta: meta("plain"), ..Default::default() }),
        Object::Endpoints(EndpointSet {
            meta: meta("web-x1"),
            kind: ObjectKind::EndpointSlice,
            service_name: "web".into(),
            subsets: vec![EndpointSubset {
                endpoints: vec![
                    EndpointSpec {
                        addresses: vec![ip("10.0.0.1")],
                        ready: true,
                        node_name: Some("edge-1".into()),
                        hostname: None,
                    },
                    EndpointSpec {
                        addresses: vec![ip("fd00::1"), ip("10.0.0.2")],
                        ready: false,
                        node_name: None,
                        hostname: Some("pod-2".into()),
                    },
                ],
                ports: vec![EndpointPortSpec { name: "http".into(), port: 8080, protocol: Protocol::Udp }],
            }],
        }),
        Object::Endpoints(EndpointSet {
            meta: meta("web"),
            kind: ObjectKind::Endpoints,
            service_name: "web".into(),
            subsets: vec![EndpointSubset::default(), EndpointSubset::default()],
        }),
        Object::Node(NodeObject {
            meta: ObjectMeta { namespace: String::new(), ..meta("edge-1") },
            addresses: vec![ip("192.168.1.5"), ip("2001:db8::5")],
            pod_cidrs: vec!["10.244.1.0/24".parse().unwrap(), "fd00:244:1::/64".parse().unwrap()],
        }),
        Object::DestinationRule(DestinationRuleObject {
            meta: meta("web-lb"),
            service_namespace: "shop".into(),
            service_name: "web".into(),
            strategy: Some(LbStrategy::ConsistentHash),
            hash_key: Some("header:X-User".into()),
        }),
        Object::DestinationRule(DestinationRuleObject {
            meta: meta("plain"),
            service_namespace: "shop".into(),
            service_name: "plain".into(),
            strategy: None,
            hash_key: None,
        }),
        Object::Routing(RoutingObject {
            kind: RoutingKind::HttpRoute,
            meta: meta("shop-routes"),
            document: r#"{"apiVersion":"gateway.networking.k8s.io/v1","kind":"HTTPRoute","spec":{"hostnames":["shop.example"]}}"#
                .into(),
        }),
        Object::Routing(RoutingObject {
            kind: RoutingKind::IstioGateway,
            meta: meta("edge-gw"),
            document: "{}".into(),
        }),
    ]
}

fn encoded(o: &Object) -> Vec<u8> {
    let mut out = Vec::new();
    encode(o, &mut out);
    out
}

#[test]
fn every_field_survives_a_round_trip() {
    for o in objects() {
        let bytes = encoded(&o);
        assert_eq!(bytes[0], VERSION);
        assert_eq!(decode(&bytes), Ok(o.clone()), "{bytes:?}");
    }
}

#[test]
fn it_is_smaller_than_the_json_it_replaces() {
    for o in objects() {
        let json = serde_json::to_vec(&o).unwrap();
        // A routing object is mostly its document, JSON already: it only
        // loses the escaping of its quotes.
        let factor = if matches!(o, Object::Routing(_)) { 1 } else { 2 };
        assert!(encoded(&o).len() * factor < json.len(), "{} vs {} bytes", encoded(&o).len(), json.len());
    }
}

#[test]
fn json_values_of_format_1_still_decode() {
    for o in objects() {
        assert_eq!(decode(&serde_json::to_vec(&o).unwrap()), Ok(o));
    }
    assert!(matches!(decode(b"{\"Service\":"), Err(DecodeError::Json(_))));
}

#[test]
fn an_unknown_version_is_refused_and_named() {
    let mut bytes = encoded(&objects()[0]);
    bytes[0] = VERSION + 1;
    let e = decode(&bytes).unwrap_err();
    assert_eq!(e, DecodeError::Version(VERSION + 1));
    assert_eq!(e.to_string(), "value has encoding version 5, this agent reads versions 1 (JSON) and 2 to 4");
    assert_eq!(decode(&[]), Err(DecodeError::Empty));
}

#[test]
fn every_truncation_and_trailing_byte_is_an_error_not_a_panic() {
    for o in objects() {
        let bytes = encoded(&o);
        for len in 0..bytes.len() {
            assert!(decode(&bytes[..len]).is_err(), "{o:?} cut at {len}");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert_eq!(decode(&longer), Err(DecodeError::Trailing(1)));
    }
}

#[test]
fn corrupt_bytes_are_errors_not_panics_or_huge_allocations() {
    // A count far past the value's end is refused before anything is reserved.
    let huge = [VERSION, 0, 0xff, 0xff, 0xff, 0xff, 0x0f];
    assert_eq!(decode(&huge), Err(DecodeError::Invalid { at: 2, what: "count", value: 0xffff_ffff }));
    // Every single-byte change to every value decodes or fails cleanly.
    for o in objects() {
        let bytes = encoded(&o);
        for i in 1..bytes.len() {
            for flip in [0x01, 0x80, 0xff] {
                let mut bad = bytes.clone();
                bad[i] ^= flip;
                let _ = decode(&bad);
            }
        }
    }
    let mut bad_utf8 = encoded(&objects()[1]);
    bad_utf8[3] = 0xff; // the first byte of the namespace
    assert_eq!(decode(&bad_utf8), Err(DecodeError::Utf8(3)));
}

/// [`objects`] as format 2 was written before its field lists were derived
/// from one place (hex). Format 2 had no `appProtocol`.
const FORMAT_2: [&str; 5] = [
    "02000473686f70037765620103617070037765620217656467656d6573682e696f2f6c622d73747261746567790652616e646f6d02c3bc0002\
     040a60000a06fd00000000000000000000000000000a01020468747470005001087765622d687474700180eb010002ffff0300ac0200084e6f\
     6465506f72740180a305010102010003",
    "02000473686f7005706c61696e0103617070037765620217656467656d6573682e696f2f6c622d73747261746567790652616e646f6d02c3bc\
     00000000000000000000",
    "02010473686f70067765622d78310103617070037765620217656467656d6573682e696f2f6c622d73747261746567790652616e646f6d02c3\
     bc000103776562010201040a000001010106656467652d31000206fd000000000000000000000000000001040a00000200000105706f642d32\
     010468747470903f01",
    "02010473686f70037765620103617070037765620217656467656d6573682e696f2f6c622d73747261746567790652616e646f6d02c3bc0002\
     037765620200000000",
    "02020006656467652d310103617070037765620217656467656d6573682e696f2f6c622d73747261746567790652616e646f6d02c3bc000204\
     c0a801050620010db8000000000000000000000005",
];

/// [`objects`] without what format 2 could not hold (`appProtocol`, and
/// pod CIDRs, which format 3 could not hold either).
fn format_2_objects() -> Vec<Object> {
    let mut objects = objects();
    for o in &mut objects {
        match o {
            Object::Service(s) => s.ports.iter_mut().for_each(|p| p.app_protocol = None),
            Object::Node(n) => n.pod_cidrs.clear(),
            Object::Endpoints(_) | Object::DestinationRule(_) | Object::Routing(_) => {}
        }
    }
    objects
}

fn unhex(hex: &str) -> Vec<u8> {
    (0..hex.len()).step_by(2).map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap()).collect()
}

#[test]
fn format_2_values_still_decode_and_are_rewritten_as_format_4() {
    for (o, hex) in format_2_objects().iter().zip(FORMAT_2) {
        let bytes = unhex(hex);
        assert_eq!(decode(&bytes).as_ref(), Ok(o), "{hex}");
        let rewritten = encoded(o);
        assert_eq!(rewritten[0], 4);
        // Format 3 adds one byte per service port (`appProtocol`: none),
        // format 4 one per node (no pod CIDRs).
        let added: usize = match o {
            Object::Service(s) => s.ports.len(),
            Object::Node(_) => 1,
            Object::Endpoints(_) | Object::DestinationRule(_) | Object::Routing(_) => 0,
        };
        assert_eq!(rewritten.len(), bytes.len() + added, "{o:?}");
        if !matches!(o, Object::Service(_)) {
            assert_eq!(rewritten[1..bytes.len()], bytes[1..], "{o:?}: a node's new field comes last");
        }
    }
}

/// The service of [`objects`] as format 3 writes it (hex): its first port
/// has `appProtocol: kubernetes.io/h2c`, its second none.
const FORMAT_3_SERVICE: &str = "03000473686f70037765620103617070037765620217656467656d6573682e696f2f6c622d73747261746567790652616e646f6d02c3bc0002\
     040a60000a06fd00000000000000000000000000000a01020468747470005001087765622d687474700180eb0101116b756265726e65746573\
     2e696f2f6832630002ffff0300ac020000084e6f6465506f72740180a305010102010003";

#[test]
fn format_3_values_still_decode_and_only_nodes_change_when_rewritten() {
    let o = &objects()[0];
    let bytes = unhex(FORMAT_3_SERVICE);
    assert_eq!(decode(&bytes).as_ref(), Ok(o));
    assert_eq!(encoded(o)[1..], bytes[1..], "a service is written as format 3 wrote it");

    // Format 3 wrote a node as format 2 did, without pod CIDRs.
    let node = &format_2_objects()[4];
    let format_3 = unhex(&format!("03{}", &FORMAT_2[4][2..]));
    assert_eq!(decode(&format_3).as_ref(), Ok(node));
    let rewritten = encoded(node);
    assert_eq!(rewritten[1..format_3.len()], format_3[1..]);
    assert_eq!(rewritten[format_3.len()..], [0], "an empty list of pod CIDRs");
}

/// The node of [`objects`] as format 4 writes it (hex): format 3's bytes,
/// then its pod CIDRs `10.244.1.0/24` and `fd00:244:1::/64`.
const FORMAT_4_NODE: &str = "04020006656467652d310103617070037765620217656467656d6573682e696f2f6c622d73747261746567790652616e646f6d02c3bc000204\
     c0a801050620010db800000000000000000000000502040af401001806fd00024400010000000000000000000040";

#[test]
fn format_4_nodes_keep_their_pod_cidrs() {
    let node = &objects()[4];
    assert_eq!(encoded(node), unhex(FORMAT_4_NODE));
    assert_eq!(decode(&unhex(FORMAT_4_NODE)).as_ref(), Ok(node));
    // A prefix longer than its family allows is refused, not truncated.
    let mut bad = unhex(FORMAT_4_NODE);
    let v4_prefix = bad.len() - 19;
    bad[v4_prefix] = 33;
    assert_eq!(decode(&bad), Err(DecodeError::Invalid { at: v4_prefix, what: "prefix length", value: 33 }));
}

//! `parse_manifest`: each kind, defaults, List, multi-document files, and
//! every validation error with its line.

use std::net::IpAddr;

use edgemesh_core::build::{service, slice};
use edgemesh_core::object::{EndpointPortSpec, EndpointSpec, ServiceObject};
use edgemesh_core::{
    InternalTrafficPolicy, IpFamily, IpFamilyPolicy, Object, ObjectKind, Protocol, SessionAffinity, TargetPort,
    TrafficDistribution,
};
use edgemesh_manifests::{ManifestError, ParsedObject, parse_manifest};

fn parse(text: &str) -> Vec<ParsedObject> {
    parse_manifest(text).unwrap_or_else(|e| panic!("{e}"))
}

fn objects(text: &str) -> Vec<Object> {
    parse(text).into_iter().map(|p| p.object).collect()
}

fn svc(o: &Object) -> &ServiceObject {
    match o {
        Object::Service(s) => s,
        other => panic!("not a service: {other:?}"),
    }
}

/// Asserts `text` fails at `line` with a message containing `needle`.
fn fails(text: &str, line: usize, needle: &str) -> ManifestError {
    let err = parse_manifest(text).expect_err("should fail");
    assert_eq!(err.line(), line, "wrong line for: {err}");
    assert!(err.to_string().contains(needle), "{err:?} does not contain {needle:?}");
    assert!(err.to_string().starts_with(&format!("line {line}: ")), "{err}");
    err
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

#[test]
fn minimal_service_gets_kubernetes_defaults() {
    let got = objects("apiVersion: v1\nkind: Service\nmetadata:\n  name: web\nspec:\n  ports:\n  - port: 80\n");
    assert_eq!(got, vec![service("default", "web").port("", 80, 80).object()]);
}

#[test]
fn service_with_every_field() {
    let text = r#"
apiVersion: v1
kind: Service
metadata:
  name: web
  namespace: shop
  labels: {app: web}
  annotations:
    edgemesh.io/lb-strategy: Random
  uid: 1234            # unknown fields are ignored
spec:
  type: NodePort
  clusterIP: 10.96.0.10
  clusterIPs: [10.96.0.10, "fd00::10"]
  selector: {app: web}
  ports:
  - name: http
    port: 80
    targetPort: http-alt
    nodePort: 30080
    appProtocol: kubernetes.io/h2c
  - name: dns
    protocol: UDP
    port: 53
    targetPort: 5353
  - name: metrics
    port: 9090
status:
  loadBalancer: {}
"#;
    let got = parse(text);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].line, 2, "the object starts at its first line");
    let s = svc(&got[0].object);
    assert_eq!(s.meta.namespace, "shop");
    assert_eq!(s.meta.labels["app"], "web");
    assert_eq!(s.meta.annotations["edgemesh.io/lb-strategy"], "Random");
    assert_eq!(s.service_type, "NodePort");
    assert_eq!(s.cluster_ips, vec![ip("10.96.0.10"), ip("fd00::10")]);
    assert!(!s.headless);
    assert_eq!(s.ports.len(), 3);
    assert_eq!((s.ports[0].name.as_str(), s.ports[0].port), ("http", 80));
    assert_eq!(s.ports[0].target_port, TargetPort::Name("http-alt".into()));
    assert_eq!(s.ports[0].node_port, Some(30080));
    assert_eq!(s.ports[0].app_protocol.as_deref(), Some("kubernetes.io/h2c"));
    assert_eq!(s.ports[1].app_protocol, None, "appProtocol is optional");
    assert_eq!(s.ports[1].protocol, Protocol::Udp);
    assert_eq!(s.ports[1].target_port, TargetPort::Number(5353));
    assert_eq!(s.ports[2].target_port, TargetPort::Number(9090), "targetPort defaults to port");
    assert_eq!(s.ports[2].protocol, Protocol::Tcp, "protocol defaults to TCP");
    assert_eq!(s.ports[2].node_port, None);
}

#[test]
fn headless_services() {
    let got = objects(
        "apiVersion: v1\nkind: Service\nmetadata: {name: db}\nspec:\n  clusterIP: None\n  ports: [{port: 5432}]\n",
    );
    assert_eq!(got, vec![service("default", "db").port("", 5432, 5432).headless().object()]);
    let got = objects("apiVersion: v1\nkind: Service\nmetadata: {name: db}\nspec:\n  clusterIPs: [None]\n");
    assert!(svc(&got[0]).headless);
    // ExternalName services need no ports.
    let got = objects(
        "apiVersion: v1\nkind: Service\nmetadata: {name: ext}\nspec: {type: ExternalName, externalName: example.com}\n",
    );
    assert_eq!(svc(&got[0]).service_type, "ExternalName");
}

#[test]
fn endpoint_slice() {
    let text = r#"addressType: IPv4
apiVersion: discovery.k8s.io/v1
endpoints:
- addresses: ["10.0.0.1"]
  conditions: {ready: true, serving: true}
  nodeName: node-a
  targetRef: {kind: Pod, name: web-1}
- addresses: ["10.0.0.2"]
  conditions: {}
  nodeName: node-b
  hostname: web-2
- addresses: ["10.0.0.3"]
  conditions: {ready: false}
kind: EndpointSlice
metadata:
  labels:
    kubernetes.io/service-name: web
  name: web-abc12
ports:
- name: null
  port: 8080
  protocol: TCP
"#;
    let got = objects(text);
    let mut want = slice("default", "web-abc12", "web").endpoint("10.0.0.1", "node-a").port("", 8080);
    want.0.meta.labels.insert("kubernetes.io/service-name".into(), "web".into());
    want.0.subsets[0].endpoints.push(EndpointSpec {
        addresses: vec![ip("10.0.0.2")],
        ready: true,
        node_name: Some("node-b".into()),
        hostname: Some("web-2".into()),
    });
    want.0.subsets[0].endpoints.push(EndpointSpec {
        addresses: vec![ip("10.0.0.3")],
        ready: false,
        node_name: None,
        hostname: None,
    });
    assert_eq!(got, vec![want.object()]);
}

#[test]
fn endpoint_slice_ipv6_named_ports_and_absent_names() {
    let text = "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: web-v6\n  namespace: shop\n  labels: {kubernetes.io/service-name: web}\naddressType: IPv6\nendpoints:\n- addresses: [\"fd00::1\"]\nports:\n- {name: http, port: 8080}\n- {name: dns, port: 53, protocol: UDP}\n";
    let Object::Endpoints(set) = &objects(text)[0] else { panic!() };
    assert_eq!(set.kind, ObjectKind::EndpointSlice);
    assert_eq!((set.meta.namespace.as_str(), set.service_name.as_str()), ("shop", "web"));
    assert_eq!(set.subsets[0].endpoints[0].addresses, vec![ip("fd00::1")]);
    assert_eq!(
        set.subsets[0].ports,
        vec![
            EndpointPortSpec { name: "http".into(), port: 8080, protocol: Protocol::Tcp },
            EndpointPortSpec { name: "dns".into(), port: 53, protocol: Protocol::Udp },
        ]
    );
    // A single port without a name at all.
    let text = "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: a, labels: {kubernetes.io/service-name: web}}\naddressType: IPv4\nports: [{port: 80}]\n";
    let Object::Endpoints(set) = &objects(text)[0] else { panic!() };
    assert_eq!(set.subsets[0].ports[0].name, "");
}

#[test]
fn fqdn_slices_are_skipped() {
    let text = "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: a, labels: {kubernetes.io/service-name: web}}\naddressType: FQDN\nendpoints: [{addresses: [example.com]}]\n";
    assert!(objects(text).is_empty());
}

#[test]
fn legacy_endpoints() {
    let text = r#"apiVersion: v1
kind: Endpoints
metadata: {name: web, namespace: shop}
subsets:
- addresses:
  - {ip: 10.0.0.1, nodeName: node-a, hostname: web-0}
  notReadyAddresses:
  - ip: 10.0.0.2
  ports:
  - {name: http, port: 8080}
  - {name: grpc, port: 9090}
- addresses: [{ip: "10.0.1.1"}]
  ports: [{port: 7000, protocol: SCTP}]
"#;
    let Object::Endpoints(set) = &objects(text)[0] else { panic!() };
    assert_eq!(set.kind, ObjectKind::Endpoints);
    assert_eq!(set.service_name, "web");
    assert_eq!(set.subsets.len(), 2);
    let eps = &set.subsets[0].endpoints;
    assert_eq!(
        eps[0],
        EndpointSpec {
            addresses: vec![ip("10.0.0.1")],
            ready: true,
            node_name: Some("node-a".into()),
            hostname: Some("web-0".into())
        }
    );
    assert_eq!((eps[1].addresses[0], eps[1].ready), (ip("10.0.0.2"), false));
    assert_eq!(set.subsets[0].ports.len(), 2);
    assert_eq!(
        set.subsets[1].ports,
        vec![EndpointPortSpec { name: String::new(), port: 7000, protocol: Protocol::Sctp }]
    );
}

#[test]
fn kubectl_list_output() {
    let text = r#"apiVersion: v1
items:
- apiVersion: v1
  kind: Service
  metadata:
    creationTimestamp: "2024-01-01T00:00:00Z"
    managedFields:
    - apiVersion: v1
      fieldsType: FieldsV1
      fieldsV1: {f:spec: {f:ports: {}}}
    name: web
    namespace: default
    resourceVersion: "123"
  spec:
    clusterIP: 10.96.0.20
    clusterIPs:
    - 10.96.0.20
    internalTrafficPolicy: Cluster
    ipFamilies: [IPv4]
    ports:
    - port: 80
      protocol: TCP
      targetPort: 8080
    sessionAffinity: None
    type: ClusterIP
  status:
    loadBalancer: {}
- apiVersion: apps/v1
  kind: Deployment
  metadata: {name: web}
  spec:
    selector: {matchLabels: {app: web}}
    template: {spec: {containers: [{name: c, ports: [{containerPort: 80}]}]}}
- addressType: IPv4
  apiVersion: discovery.k8s.io/v1
  endpoints:
  - addresses: [10.0.0.9]
  kind: EndpointSlice
  metadata:
    labels: {kubernetes.io/service-name: web}
    name: web-xyz
  ports: [{port: 8080, protocol: TCP, name: ""}]
kind: List
metadata:
  resourceVersion: ""
"#;
    let got = parse(text);
    assert_eq!(got.iter().map(|p| p.line).collect::<Vec<_>>(), vec![3, 34]);
    assert_eq!(svc(&got[0].object).cluster_ips, vec![ip("10.96.0.20")]);
    assert_eq!(got[1].object.service_key(), Some(edgemesh_core::ServiceKey::new("default", "web")));
    // Errors inside a List item point into the item.
    fails(&text.replace("port: 8080, protocol: TCP, name", "port: 0, protocol: TCP, name"), 42, "out of range");
}

#[test]
fn multi_document_files_with_comments_and_other_kinds() {
    let text = r#"# shop services
---
apiVersion: v1
kind: ConfigMap
metadata: {name: cfg}
data: {ports: "not a list"}
---
# nothing here
---
apiVersion: v1
kind: Service
metadata: {name: a}
spec: {ports: [{port: 80}]}
---
apiVersion: serving.knative.dev/v1
kind: Service
metadata: {name: knative}
spec: {template: {spec: {containers: [{image: x}]}}}
---
spec: {type: {weird: true}, ports: 3}
apiVersion: example.com/v1
kind: Widget
metadata: {name: w}
...
---
apiVersion: v1
kind: Service
metadata: {name: b}
spec: {ports: [{port: 81}]}
"#;
    let got = parse(text);
    let names: Vec<_> = got.iter().map(|p| (p.line, svc(&p.object).meta.name.as_str())).collect();
    assert_eq!(names, vec![(10, "a"), (26, "b")]);
    assert!(parse("").is_empty());
    assert!(parse("# just a comment\n---\n").is_empty());
}

#[test]
fn yaml_errors_point_at_the_line_in_the_file() {
    let good = "apiVersion: v1\nkind: Service\nmetadata: {name: a}\nspec: {ports: [{port: 80}]}\n";
    let err = fails(&format!("{good}---\napiVersion: v1\nkind: Service\nmetadata:\n  name: [b\n"), 9, "invalid YAML");
    assert!(matches!(err, ManifestError::Yaml { .. }));
    fails(&format!("{good}---\n{}", good.replace("port: 80", "port: abc")), 9, "invalid YAML");
    fails("- just\n- a list\n", 1, "invalid YAML");
}

#[test]
fn validation_errors_name_the_field_and_line() {
    let svc = |spec: &str| format!("apiVersion: v1\nkind: Service\nmetadata:\n  name: web\nspec:\n{spec}");
    fails("apiVersion: v1\nmetadata: {name: a}\n", 1, "no `kind`");
    fails("kind: Service\nmetadata: {name: a}\n", 1, "apiVersion");
    fails("\n\napiVersion: v1\nkind: Service\nmetadata: {namespace: x}\n", 3, "metadata.name` is missing");
    fails("apiVersion: v1\nkind: Service\nmetadata:\n  name: Web_1\n", 4, "RFC 1035");
    fails("apiVersion: v1\nkind: Service\nmetadata:\n  name: 1web\n", 4, "RFC 1035");
    fails("apiVersion: v1\nkind: Service\nmetadata:\n  name: web\n  namespace: Shop\n", 5, "metadata.namespace");
    fails(&svc("  ports:\n  - port: 0\n"), 7, "spec.ports[0].port 0 is out of range (1-65535)");
    fails(&svc("  ports:\n  - port: 70000\n"), 7, "out of range");
    fails(&svc("  ports:\n  - name: a\n    port: 80\n    targetPort: 65536\n"), 9, "targetPort 65536");
    fails(&svc("  ports:\n  - port: 80\n    targetPort: http-alternative\n"), 8, "must be 1 to 15");
    fails(&svc("  ports:\n  - port: 80\n    targetPort: \"8080\"\n"), 8, "at least one letter");
    fails(&svc("  ports:\n  - port: 80\n    nodePort: 99999\n"), 8, "nodePort");
    fails(&svc("  ports:\n  - protocol: TCP\n"), 7, "spec.ports[0].port is required");
    fails(
        &svc("  ports:\n  - {name: http, port: 80}\n  - {name: http, port: 81}\n"),
        8,
        "\"http\" is used more than once",
    );
    fails(&svc("  ports:\n  - {name: http, port: 80}\n  - {port: 81}\n"), 8, "spec.ports[1] has no name");
    fails(&svc("  ports:\n  - {name: a, port: 80}\n  - {name: b, port: 80}\n"), 8, "80/TCP is listed more than once");
    fails(&svc("  ports:\n  - {name: HTTP, port: 80}\n"), 7, "port name");
    fails(&svc("  ports:\n  - port: 80\n    protocol: HTTP\n"), 8, "unknown protocol \"HTTP\"");
    fails(&svc("  ports:\n  - port: 80\n    appProtocol: h2c!\n"), 8, "spec.ports[0].appProtocol \"h2c!\"");
    fails(&svc("  ports:\n  - port: 80\n    appProtocol: Kubernetes.io/h2c\n"), 8, "its prefix");
    fails(&svc("  clusterIP: 10.0.0.300\n"), 6, "spec.clusterIP \"10.0.0.300\" is not a valid IP address");
    fails(&svc("  clusterIPs:\n  - 10.0.0.1\n  - nope\n"), 8, "spec.clusterIPs[1]");
    fails(&svc("  clusterIP: 10.0.0.1\n  clusterIPs: [10.0.0.2]\n"), 6, "does not match");
    fails(&svc("  type: Magic\n"), 6, "spec.type \"Magic\"");

    let slice = |rest: &str| {
        format!(
            "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: web-1\n  labels: {{kubernetes.io/service-name: web}}\naddressType: IPv4\n{rest}"
        )
    };
    fails(&slice("endpoints:\n- addresses: [10.0.0.1, 10.0.0.x]\n"), 8, "endpoints[0].addresses[1] \"10.0.0.x\"");
    fails(&slice("endpoints:\n- addresses:\n  - fd00::1\n"), 9, "not an IPv4 address");
    fails(&slice("endpoints:\n- nodeName: a\n"), 8, "endpoints[0].addresses has no addresses");
    fails(&slice("ports:\n- {port: 80, protocol: http}\n"), 8, "ports[0].protocol");
    fails(&slice("ports:\n- {name: a, port: 80}\n- {name: a, port: 81}\n"), 9, "\"a\" is used more than once");
    fails(&slice("ports:\n- {port: 80}\n- {port: 81}\n"), 8, "ports[0] has no name");
    fails(&slice("ports:\n- {name: a, port: 100000}\n"), 8, "ports[0].port 100000 is out of range");
    fails(
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: web-1}\naddressType: IPv4\n",
        1,
        "kubernetes.io/service-name",
    );
    fails(&slice("").replace("addressType: IPv4\n", "addressType: IPv5\n"), 6, "addressType \"IPv5\"");

    let eps = |rest: &str| format!("apiVersion: v1\nkind: Endpoints\nmetadata: {{name: web}}\nsubsets:\n{rest}");
    fails(
        &eps("- addresses: [{ip: 10.0.0.1}]\n  notReadyAddresses: [{ip: bad}]\n"),
        6,
        "subsets[0].notReadyAddresses[0].ip",
    );
    fails(&eps("- addresses: [{hostname: x}]\n"), 5, "subsets[0].addresses[0].ip is required");
    fails(&eps("- ports: [{port: 1}, {port: 2}]\n"), 5, "subsets[0].ports[0] has no name");
}

#[test]
fn node_mode_fields() {
    let text = r#"apiVersion: v1
kind: Service
metadata:
  name: web
  annotations:
    edgemesh.io/lb-strategy: ConsistentHash
    edgemesh.io/hash-key: header:X-User
spec:
  sessionAffinity: ClientIP
  sessionAffinityConfig:
    clientIP:
      timeoutSeconds: 60
  internalTrafficPolicy: Local
  trafficDistribution: PreferClose
  ipFamilies: [IPv4, IPv6]
  ipFamilyPolicy: PreferDualStack
  ports:
  - port: 80
"#;
    let got = objects(text);
    let s = svc(&got[0]);
    assert_eq!(s.session_affinity, SessionAffinity::ClientIp { timeout_seconds: 60 });
    assert_eq!(s.internal_traffic_policy, InternalTrafficPolicy::Local);
    assert_eq!(s.traffic_distribution, Some(TrafficDistribution::PreferClose));
    assert_eq!(s.ip_families, vec![IpFamily::IPv4, IpFamily::IPv6]);
    assert_eq!(s.ip_family_policy, Some(IpFamilyPolicy::PreferDualStack));
    // Annotations are carried as written; the registry interprets them.
    assert_eq!(s.meta.annotations["edgemesh.io/hash-key"], "header:X-User");

    // Kubernetes' defaults.
    let got = objects("apiVersion: v1\nkind: Service\nmetadata: {name: a}\nspec:\n  sessionAffinity: ClientIP\n");
    let s = svc(&got[0]);
    assert_eq!(s.session_affinity, SessionAffinity::ClientIp { timeout_seconds: 10_800 });
    assert_eq!(s.internal_traffic_policy, InternalTrafficPolicy::Cluster);
    assert_eq!(s.traffic_distribution, None);
    let got = objects("apiVersion: v1\nkind: Service\nmetadata: {name: a}\nspec:\n  sessionAffinity: None\n");
    assert_eq!(svc(&got[0]).session_affinity, SessionAffinity::None);
}

#[test]
fn node_mode_field_errors_point_at_the_field() {
    let svc = |spec: &str| format!("apiVersion: v1\nkind: Service\nmetadata:\n  name: web\nspec:\n{spec}");
    fails(
        &svc("  sessionAffinity: Cookie\n"),
        6,
        "spec.sessionAffinity \"Cookie\" is unknown (expected None or ClientIP)",
    );
    let affinity = |t: &str| {
        svc(&format!(
            "  sessionAffinity: ClientIP\n  sessionAffinityConfig:\n    clientIP:\n      timeoutSeconds: {t}\n"
        ))
    };
    fails(&affinity("0"), 9, "spec.sessionAffinityConfig.clientIP.timeoutSeconds 0 is out of range (1-86400)");
    fails(&affinity("86401"), 9, "out of range (1-86400)");
    fails(&affinity("-5"), 9, "out of range");
    assert_eq!(svc_of(&affinity("86400")).session_affinity, SessionAffinity::ClientIp { timeout_seconds: 86_400 });
    fails(&svc("  internalTrafficPolicy: Node\n"), 6, "spec.internalTrafficPolicy \"Node\" is unknown");
    fails(&svc("  trafficDistribution: Nearby\n"), 6, "spec.trafficDistribution \"Nearby\" is unknown");
    fails(&svc("  ipFamilyPolicy: DualStack\n"), 6, "spec.ipFamilyPolicy \"DualStack\"");
    fails(&svc("  ipFamilies:\n  - IPv4\n  - IPv5\n"), 8, "spec.ipFamilies[1] \"IPv5\" is unknown");
    fails(&svc("  ipFamilies:\n  - IPv4\n  - IPv4\n"), 8, "lists IPv4 twice");
    fails(&svc("  ipFamilyPolicy: SingleStack\n  ipFamilies: [IPv4, IPv6]\n"), 6, "SingleStack allows one entry");
}

fn svc_of(text: &str) -> ServiceObject {
    svc(&objects(text)[0]).clone()
}

#[test]
fn errors_name_the_object() {
    let err = fails(
        "apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: shop}\nspec: {ports: [{port: 0}]}\n",
        4,
        "Service shop/web: spec.ports[0].port",
    );
    assert_eq!(err.reason(), "Service shop/web: spec.ports[0].port 0 is out of range (1-65535)");
}

#[test]
fn large_files_parse_in_parallel_in_order() {
    let mut text = String::new();
    for i in 0..3000 {
        text.push_str(&format!(
            "---\napiVersion: v1\nkind: Service\nmetadata:\n  name: svc-{i}\n  namespace: ns-{}\nspec:\n  clusterIP: 10.96.{}.{}\n  ports:\n  - name: http\n    port: 80\n    targetPort: 8080\n  - name: grpc\n    port: 9090\n    protocol: TCP\n",
            i % 7,
            i / 250,
            i % 250
        ));
    }
    assert!(text.len() > 512 * 1024, "big enough for the parallel path");
    let got = parse(&text);
    assert_eq!(got.len(), 3000);
    for (i, p) in got.iter().enumerate() {
        assert_eq!(svc(&p.object).meta.name, format!("svc-{i}"));
        assert_eq!(p.line, i * 15 + 2);
    }
    // The first error in file order wins, whichever thread found it.
    let broken = text.replace("name: svc-2500\n", "name: SVC\n").replace("name: svc-10\n", "name: -x\n");
    fails(&broken, 10 * 15 + 5, "Service ns-3/-x: metadata.name");
}

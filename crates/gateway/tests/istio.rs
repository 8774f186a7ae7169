//! EdgeMesh users' gateway objects (Istio `Gateway` and `VirtualService`)
//! keep working: translated into Gateway API objects and compiled like
//! any other, what cannot be translated refused by name, and where the
//! Gateway API's precedence differs from Istio's rule order, said.

use edgemesh_gateway::backend::Target;
use edgemesh_gateway::istio::{IstioGateway, Translation, VirtualService, translate};
use edgemesh_gateway::matching::RequestView;
use edgemesh_gateway::{Compiled, ServiceLookup, compile};
use http::{HeaderMap, Method};
use serde::Deserialize;

mod support;

#[derive(Deserialize)]
struct Kind {
    #[serde(default)]
    kind: String,
}

/// The Istio objects of `yaml` (other kinds skipped), translated.
fn translated(yaml: &str) -> Translation {
    let kinds: Vec<Kind> = serde_saphyr::from_multiple(yaml).unwrap();
    let gateways: Vec<IstioGateway> = serde_saphyr::from_multiple(yaml).unwrap();
    let services: Vec<VirtualService> = serde_saphyr::from_multiple(yaml).unwrap();
    let of = |want: &'static str| kinds.iter().enumerate().filter(move |(_, k)| k.kind == want).map(|(i, _)| i);
    let gateways: Vec<IstioGateway> = of("Gateway").map(|i| gateways[i].clone()).collect();
    let services: Vec<VirtualService> = of("VirtualService").map(|i| services[i].clone()).collect();
    translate(&gateways, &services, "cluster.local")
}

struct AnyService;

impl ServiceLookup for AnyService {
    fn check(&self, _: &str, _: &str, _: u16) -> Result<(), String> {
        Ok(())
    }
}

fn compiled(t: &Translation) -> Compiled {
    compile(edgemesh_gateway::istio::ISTIO_CLASS, &t.gateways, &t.routes, &t.grants, &AnyService)
}

/// The Service a GET of `path` for `host` on `port` goes to.
fn lands(c: &Compiled, port: u16, host: &str, path: &str) -> Option<String> {
    let headers = HeaderMap::new();
    let view = RequestView { method: &Method::GET, path, query: None, headers: &headers };
    let routed = c.tables.get(&port)?.route(host, &view)?;
    match routed.action.backends.pick()? {
        Target::Service(s) => Some(s.to_string()),
        Target::Invalid(why) => Some(format!("invalid: {why}")),
    }
}

#[test]
fn edgemesh_s_own_gateway_example_routes_as_it_did() {
    let yaml = include_str!("fixtures/edgemesh-gateway-route.yaml");
    let t = translated(yaml);
    assert!(t.refused.is_empty(), "{:?}", t.refused);
    let c = compiled(&t);
    let gateway = c.gateways.values().next().expect("the Gateway is ours");
    assert!(gateway.listeners.iter().all(|l| l.conditions.iter().any(|c| c.kind == "Programmed" && c.status)));
    assert_eq!(lands(&c, 23333, "hostname.org", "/who").as_deref(), Some("default/hostname-lb-svc:12345"));
    assert_eq!(lands(&c, 23333, "hostname.org", "/whom"), None, "a prefix is a whole path element");
    assert_eq!(lands(&c, 23333, "other.org", "/who"), None, "the server's and the VirtualService's host");
}

const MIXED: &str = r#"
apiVersion: networking.istio.io/v1alpha3
kind: Gateway
metadata: {name: edge, namespace: shop}
spec:
  selector: {kubeedge: edgemesh-gateway}
  servers:
  - port: {number: 8080, name: web, protocol: HTTP}
    hosts: ["*"]
  - port: {number: 8443, name: secure, protocol: HTTPS}
    hosts: [shop.example.com]
    tls: {mode: SIMPLE, credentialName: shop-cert}
  - port: {number: 9000, name: grpc, protocol: GRPC}
    hosts: ["*"]
---
apiVersion: networking.istio.io/v1alpha3
kind: VirtualService
metadata: {name: shop, namespace: shop}
spec:
  gateways: [edge]
  hosts: ["*"]
  http:
  - match: [{uri: {prefix: /}}]
    route:
    - {destination: {host: web, port: {number: 80}}, weight: 80}
    - {destination: {host: web-v2.shop.svc.cluster.local, port: {number: 80}}, weight: 20}
  - match: [{uri: {prefix: /api}}]
    timeout: 2s
    route: [{destination: {host: api.backend, port: {number: 8080}}}]
  - match: [{uri: {exact: /login}, headers: {x-user: {exact: a}}}]
    route: [{destination: {host: login, port: {number: 80}}}]
  - match: [{uri: {regex: '/v[0-9]+/.*'}}]
    rewrite: {uri: /}
    route: [{destination: {host: web, port: {number: 80}}}]
  tcp:
  - route: [{destination: {host: db, port: {number: 5432}}}]
---
apiVersion: networking.istio.io/v1alpha3
kind: VirtualService
metadata: {name: sidecar-only, namespace: shop}
spec:
  gateways: [mesh]
  hosts: [web]
  http: [{route: [{destination: {host: web}}]}]
"#;

#[test]
fn what_cannot_be_translated_is_refused_by_name_and_order_differences_are_told() {
    let t = translated(MIXED);
    let refused = t.refused.join("\n");
    for want in [
        "Gateway shop/edge: spec.servers[2].port.protocol \"GRPC\" is not translated",
        "VirtualService shop/shop: spec.tcp and spec.tls routes are not translated yet",
        "VirtualService shop/shop: spec.http[2].match[0].headers is not translated (only uri)",
        "VirtualService shop/shop: spec.http[3].rewrite is not translated",
        "VirtualService shop/sidecar-only: spec.gateways[0] \"mesh\": sidecar routing has no counterpart",
    ] {
        assert!(refused.contains(want), "missing {want:?} in:\n{refused}");
    }
    assert_eq!(t.refused.len(), 5, "{refused}");
    assert_eq!(t.notes.len(), 1, "{:?}", t.notes);
    assert!(
        t.notes[0].starts_with("VirtualService shop/shop: spec.http[1]: under Istio's first-match order spec.http[0]")
    );

    let c = compiled(&t);
    // 80:20 over five requests' worth of picks, and the API in another namespace.
    let picks: Vec<String> = (0..5).filter_map(|_| lands(&c, 8080, "any.host", "/page")).collect();
    assert_eq!(picks.iter().filter(|p| *p == "shop/web:80").count(), 4, "{picks:?}");
    assert_eq!(picks.iter().filter(|p| *p == "shop/web-v2:80").count(), 1, "{picks:?}");
    assert_eq!(lands(&c, 8080, "any.host", "/api/x").as_deref(), Some("backend/api:8080"), "granted, as Istio allows");
    assert_eq!(t.grants.len(), 1, "exactly the one reference across namespaces");
    // The refused rules route nothing: /login goes where the catch-all sends it.
    assert!(lands(&c, 8080, "any.host", "/login").unwrap().starts_with("shop/web"));
    // The HTTPS server is translated; compile() serves HTTP only and says so.
    let listener = c.gateways.values().next().unwrap().listeners.iter().find(|l| l.name == "secure").unwrap();
    let accepted = listener.conditions.iter().find(|c| c.kind == "Accepted").unwrap();
    assert_eq!((accepted.status, accepted.reason), (false, "UnsupportedProtocol"));

    // With every protocol and a certificate for its credentialName (a
    // Secret in the Gateway's namespace), it is served.
    let ca = support::net::Ca::new();
    let certs = support::net::MemoryCertificates::default();
    let namespace = &t.gateways[0].metadata.namespace().to_owned();
    certs.set(namespace, "shop-cert", ca.issue(&["shop.example.com"]).pem);
    let objects = edgemesh_gateway::Objects {
        gateways: &t.gateways,
        http_routes: &t.routes,
        grants: &t.grants,
        ..Default::default()
    };
    let c = edgemesh_gateway::compile_objects(edgemesh_gateway::istio::ISTIO_CLASS, &objects, &AnyService, &certs);
    assert_eq!(c.protocols.get(&8443), Some(&edgemesh_gateway::Protocol::Https));
    assert!(c.tls[&8443].choose(Some("shop.example.com")).is_some());
}

#[test]
fn a_mutual_tls_server_validates_client_certificates_with_its_secrets_ca() {
    let t = translated(
        "apiVersion: networking.istio.io/v1alpha3\nkind: Gateway\nmetadata: {name: edge, namespace: shop}\nspec:\n  servers:\n  \
         - {port: {number: 8443, name: mtls, protocol: HTTPS}, hosts: [\"*\"], tls: {mode: MUTUAL, credentialName: shop-cert, \
            cipherSuites: [TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA], minProtocolVersion: TLSV1_2}}\n  \
         - {port: {number: 8444, name: tls, protocol: HTTPS}, hosts: [\"*\"], tls: {mode: SIMPLE, credentialName: shop-cert}}\n",
    );
    assert!(t.refused.is_empty(), "{:?}", t.refused);
    let listeners = &t.gateways[0].spec.listeners;
    let names: Vec<&str> = listeners.iter().map(|l| l.name.as_str()).collect();
    assert_eq!(names, ["mtls", "tls"]);
    let mtls = listeners[0].tls.as_ref().unwrap();
    assert_eq!(mtls.certificate_refs[0].name, "shop-cert");
    let validation = mtls.frontend_validation.as_ref().expect("MUTUAL validates client certificates");
    assert_eq!(validation.ca_certificate_refs[0].name, "shop-cert", "with the same Secret's ca.crt");
    assert!(listeners[1].tls.as_ref().unwrap().frontend_validation.is_none(), "SIMPLE does not");
    // What is not applied is said.
    assert!(t.notes.iter().any(|n| n.contains("cipherSuites") && n.contains("servers[0]")), "{:?}", t.notes);
    assert!(t.notes.iter().any(|n| n.contains("ProtocolVersion") && n.contains("servers[0]")), "{:?}", t.notes);
}

/// The hosts of one Istio server are one TLS context, as Istio serves
/// them: a session made for one of them may carry requests for the others
/// (no 421); another server's host on it is misdirected.
#[test]
fn the_hosts_of_one_istio_server_share_its_tls_sessions() {
    let t = translated(
        "apiVersion: networking.istio.io/v1alpha3\nkind: Gateway\nmetadata: {name: edge, namespace: shop}\nspec:\n  servers:\n  \
         - {port: {number: 8443, name: shop, protocol: HTTPS}, hosts: [a.example.com, b.example.com], tls: {mode: SIMPLE, credentialName: ab}}\n  \
         - {port: {number: 8443, name: other, protocol: HTTPS}, hosts: [c.example.com], tls: {mode: SIMPLE, credentialName: c}}\n",
    );
    let ca = support::net::Ca::new();
    let certs = support::net::MemoryCertificates::default();
    certs.set("shop", "ab", ca.issue(&["a.example.com", "b.example.com"]).pem);
    certs.set("shop", "c", ca.issue(&["c.example.com"]).pem);
    let objects = edgemesh_gateway::Objects { gateways: &t.gateways, ..Default::default() };
    let c = edgemesh_gateway::compile_objects(edgemesh_gateway::istio::ISTIO_CLASS, &objects, &AnyService, &certs);
    let tls = &c.tls[&8443];
    assert_eq!(tls.listener("b.example.com"), Some("shop/edge/shop"));
    assert!(!tls.misdirected("a.example.com", "b.example.com"), "one server");
    assert!(tls.misdirected("a.example.com", "c.example.com"), "another server");
    assert!(tls.misdirected("c.example.com", "a.example.com"));
    assert!(tls.misdirected("a.example.com", "d.example.com"), "no listener serves it");
}

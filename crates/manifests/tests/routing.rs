//! The edge gateway's objects in manifests (issue #17): the Gateway API's
//! kinds and EdgeMesh's Istio Gateway and VirtualService are read whole
//! (their JSON document, for the gateway's own schema), objects of the
//! same kind names in other API groups are skipped, and a `spec` that is
//! not a mapping is an error naming its line.

use edgemesh_core::{Object, RoutingKind, RoutingObject};
use edgemesh_manifests::parse_manifest;

const OBJECTS: &str = "\
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata:
  name: site
  namespace: edge
  labels:
    tier: uplink
spec:
  gatewayClassName: edgemesh
  listeners:
  - name: web
    port: 8080
    protocol: HTTP
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata:
  name: shop
spec:
  hostnames: [shop.example]
---
apiVersion: gateway.networking.k8s.io/v1beta1
kind: ReferenceGrant
metadata:
  name: from-edge
  namespace: shop
spec: {}
---
apiVersion: networking.istio.io/v1alpha3
kind: Gateway
metadata:
  name: edgemesh-gateway
spec:
  servers:
  - port: {number: 23333, name: http-0, protocol: HTTP}
    hosts: ['*']
---
apiVersion: networking.istio.io/v1beta1
kind: VirtualService
metadata:
  name: edgemesh-gateway-svc
spec:
  gateways: [edgemesh-gateway]
---
apiVersion: example.com/v1
kind: Gateway
metadata:
  name: someone-elses
spec:
  anything: [1, 2]
";

fn routing(objects: &[edgemesh_manifests::ParsedObject]) -> Vec<RoutingObject> {
    objects
        .iter()
        .map(|p| match &p.object {
            Object::Routing(r) => r.clone(),
            other => panic!("not a routing object: {other:?}"),
        })
        .collect()
}

#[test]
fn every_routing_kind_is_read_whole_and_other_groups_are_skipped() {
    let got = routing(&parse_manifest(OBJECTS).unwrap());
    let kinds: Vec<(RoutingKind, &str, &str)> =
        got.iter().map(|r| (r.kind, r.meta.namespace.as_str(), r.meta.name.as_str())).collect();
    assert_eq!(
        kinds,
        vec![
            (RoutingKind::Gateway, "edge", "site"),
            (RoutingKind::HttpRoute, "default", "shop"),
            (RoutingKind::ReferenceGrant, "shop", "from-edge"),
            (RoutingKind::IstioGateway, "default", "edgemesh-gateway"),
            (RoutingKind::VirtualService, "default", "edgemesh-gateway-svc"),
        ]
    );
    let gateway: serde_json::Value = serde_json::from_str(&got[0].document).unwrap();
    assert_eq!(gateway["kind"], "Gateway");
    assert_eq!(gateway["apiVersion"], "gateway.networking.k8s.io/v1");
    assert_eq!(gateway["metadata"]["namespace"], "edge");
    assert_eq!(gateway["metadata"]["labels"]["tier"], "uplink");
    assert_eq!(gateway["spec"]["listeners"][0]["port"], 8080);
    // The namespace a manifest leaves out is written into the document too.
    let route: serde_json::Value = serde_json::from_str(&got[1].document).unwrap();
    assert_eq!(route["metadata"]["namespace"], "default");
    assert_eq!(route["spec"]["hostnames"][0], "shop.example");
}

#[test]
fn a_spec_that_is_not_a_mapping_is_an_error_with_its_line() {
    let text = format!(
        "{OBJECTS}---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata:\n  name: bad\nspec: 5\n"
    );
    let err = parse_manifest(&text).unwrap_err().to_string();
    assert!(err.contains("HTTPRoute default/bad") && err.contains("spec"), "{err}");
    let line = OBJECTS.lines().count() + 2;
    assert!(err.contains(&format!("line {line}")), "names the object's line {line}: {err}");
}

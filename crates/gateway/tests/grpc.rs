//! GRPCRoute for real: tonic clients through an HTTP listener (HTTP/2
//! prior knowledge), calls routed by service and method to tonic servers
//! (their trailer names them), beside an HTTPRoute that takes the plain
//! HTTP requests; and the gRPC precedence between GRPCRoute rules.

use edgemesh_core::AppProtocol;
use edgemesh_gateway::tls::NoCertificates;
use edgemesh_grpc_echo::{Client, Server};
use http::{HeaderMap, Method};

mod support;

use support::net::{Loaded, RunningGateway, StaticPools, curl, http_backend, own_loopback};

const OBJECTS: &str = r#"
kind: Gateway
metadata: {name: edge, namespace: shop}
spec:
  gatewayClassName: edgemesh
  listeners: [{name: web, port: 18449, protocol: HTTP}]
---
kind: GRPCRoute
metadata: {name: echo, namespace: shop}
spec:
  parentRefs: [{name: edge}]
  rules:
  - matches: [{method: {service: edgemesh.test.Echo}}]
    backendRefs: [{name: echo-b, port: 50051}]
  - matches: [{method: {service: edgemesh.test.Echo, method: Unary}}]
    filters: [{type: ResponseHeaderModifier, responseHeaderModifier: {add: [{name: x-route, value: unary}]}}]
    backendRefs: [{name: echo-a, port: 50051}]
  - matches: [{method: {type: RegularExpression, method: 'Bi.*'}}]
    backendRefs: [{name: echo-a, port: 50051}]
---
kind: HTTPRoute
metadata: {name: site, namespace: shop}
spec:
  parentRefs: [{name: edge}]
  rules: [{backendRefs: [{name: web, port: 80}]}]
"#;

fn grpc_server(name: &str) -> Server {
    Server::start(std::net::TcpListener::bind("127.0.0.1:0").unwrap(), name)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_calls_are_routed_by_service_and_method_beside_http_routes() {
    let (a, b) = (grpc_server("a"), grpc_server("b"));
    let pools = StaticPools::default()
        .with("shop", "echo-a", 50051, a.addr, AppProtocol::Http2)
        .with("shop", "echo-b", 50051, b.addr, AppProtocol::Http2)
        .with("shop", "web", 80, http_backend("web").await, AppProtocol::Http1);
    let services = [("shop/echo-a", 50051), ("shop/echo-b", 50051), ("shop/web", 80)];
    let compiled = Loaded::parse(OBJECTS).compile(&services, &NoCertificates);
    let gateway = RunningGateway::start(compiled, pools, own_loopback(5)).await;
    let addr = gateway.addr(18449);

    let mut client = Client::connect(addr).await.unwrap();
    // The exact service and method outrank the service alone.
    let unary = client.unary("hello").await.unwrap();
    assert_eq!((unary.replies[0].message.as_str(), unary.trailer.as_str()), ("hello", "a"));
    // The service alone: server streaming goes to b.
    let stream = client.server_stream("tick", 3).await.unwrap();
    assert_eq!((stream.replies.len(), stream.trailer.as_str()), (3, "b"));
    // A method by regular expression: its method (4 characters) ranks it
    // below the service-only rule (18 characters of service): b.
    let bidi = client.bidi(&["x", "y"]).await.unwrap();
    assert_eq!(bidi.trailer, "b");
    assert_eq!((a.calls(), b.calls()), (1, 2));

    // Plain HTTP on the same listener goes to the HTTPRoute.
    let (ok, out) = curl(&["-H", "Host: echo.example.com", &format!("http://{addr}/")]).await;
    assert!(ok && out.starts_with("web "), "{out}");
}

#[test]
fn grpc_rules_rank_by_service_then_method_and_never_take_plain_http() {
    let c = Loaded::parse(OBJECTS).compile(&[("shop/echo-a", 50051), ("shop/echo-b", 50051)], &NoCertificates);
    let table = &c.tables[&18449];
    let mut grpc = HeaderMap::new();
    grpc.insert("content-type", "application/grpc+proto".parse().unwrap());
    let plain = HeaderMap::new();
    let lands = |path: &str, headers: &HeaderMap| {
        let view = edgemesh_gateway::matching::RequestView { method: &Method::POST, path, query: None, headers };
        table.route("echo.example.com", &view).map(|r| format!("{}#{}", r.action.route.name, r.action.rule))
    };
    assert_eq!(lands("/edgemesh.test.Echo/Unary", &grpc).as_deref(), Some("echo#1"));
    assert_eq!(lands("/edgemesh.test.Echo/Other", &grpc).as_deref(), Some("echo#0"));
    assert_eq!(lands("/other.Svc/Bidi", &grpc).as_deref(), Some("echo#2"));
    assert_eq!(lands("/other.Svc/Other", &grpc).as_deref(), Some("site#0"), "no GRPCRoute rule: the HTTPRoute");
    assert_eq!(lands("/edgemesh.test.Echo/Unary", &plain).as_deref(), Some("site#0"), "not gRPC");
    let echo =
        &c.routes[&edgemesh_gateway::ObjectRef { kind: "GRPCRoute", namespace: "shop".into(), name: "echo".into() }];
    assert!(echo[0].conditions.iter().any(|c| c.kind == "Accepted" && c.status), "{echo:?}");
}

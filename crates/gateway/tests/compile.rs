//! Gateway API objects, as an operator writes them, compiled into route
//! tables: which request lands where (precedence across routes, hostname
//! intersection, weights, filters) and what each object's status says
//! about what could not be used, while the rest keeps working.

use std::collections::BTreeMap;

use edgemesh_gateway::backend::Target;
use edgemesh_gateway::hostname::request_host;
use edgemesh_gateway::matching::RequestView;
use edgemesh_gateway::{Compiled, Condition, ObjectRef};
use http::{HeaderMap, Method};

mod support;

fn load(yaml: &str) -> Compiled {
    support::load(
        yaml,
        &[
            ("shop/web", 80),
            ("shop/web-canary", 80),
            ("shop/api", 8080),
            ("shop/login", 80),
            ("billing/invoices", 80),
            ("edge/dashboard", 3000),
        ],
    )
}

const OBJECTS: &str = r#"
kind: Gateway
metadata: {name: edge, namespace: shop, generation: 3}
spec:
  gatewayClassName: edgemesh
  listeners:
  - {name: web, port: 80, protocol: HTTP, hostname: "*.example.com"}
  - {name: open, port: 8000, protocol: HTTP, allowedRoutes: {namespaces: {from: All}}}
  - {name: tls, port: 443, protocol: HTTPS}
  - {name: again, port: 80, protocol: HTTP, hostname: "*.example.com"}
---
kind: Gateway
metadata: {name: theirs, namespace: shop}
spec:
  gatewayClassName: someone-else
  listeners: [{name: web, port: 81, protocol: HTTP}]
---
kind: HTTPRoute
metadata: {name: shop, namespace: shop, creationTimestamp: "2026-01-01T00:00:00Z", generation: 7}
spec:
  parentRefs: [{name: edge, sectionName: web}]
  hostnames: [shop.example.com]
  rules:
  - matches: [{path: {type: PathPrefix, value: /}}]
    backendRefs: [{name: web, port: 80, weight: 3}, {name: web-canary, port: 80, weight: 1}]
  - matches: [{path: {type: Exact, value: /login}}]
    backendRefs: [{name: login, port: 80}]
  - matches: [{path: {type: PathPrefix, value: /api}, headers: [{name: x-version, value: "2"}]}]
    filters: [{type: URLRewrite, urlRewrite: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /v2}}}]
    backendRefs: [{name: api, port: 8080}]
  - matches: [{path: {type: Exact, value: /broken}}]
    filters: [{type: RequestMirror}]
    backendRefs: [{name: web, port: 80}]
---
kind: HTTPRoute
metadata: {name: api-wide, namespace: shop, creationTimestamp: "2025-06-01T00:00:00Z"}
spec:
  parentRefs: [{name: edge}]
  hostnames: ["*.example.com", other.org]
  rules:
  - matches: [{path: {type: PathPrefix, value: /api}}]
    backendRefs: [{name: api, port: 8080}]
  - matches: [{path: {type: PathPrefix, value: /old}}]
    filters: [{type: RequestRedirect, requestRedirect: {scheme: https, statusCode: 301}}]
---
kind: HTTPRoute
metadata: {name: invoices, namespace: billing}
spec:
  parentRefs: [{name: edge, namespace: shop, sectionName: web}]
  rules:
  - backendRefs: [{name: invoices, port: 80}, {name: web, namespace: shop, port: 80}]
---
kind: HTTPRoute
metadata: {name: dashboard, namespace: shop}
spec:
  parentRefs: [{name: edge, sectionName: open}]
  rules:
  - backendRefs: [{name: dashboard, namespace: edge, port: 3000}, {name: gone, port: 80}]
---
kind: ReferenceGrant
metadata: {name: shop-to-dashboard, namespace: edge}
spec:
  from: [{group: gateway.networking.k8s.io, kind: HTTPRoute, namespace: shop}]
  to: [{group: "", kind: Service}]
---
kind: HTTPRoute
metadata: {name: nowhere, namespace: shop}
spec:
  parentRefs: [{name: edge, sectionName: web}]
  hostnames: [shop.example.org]
  rules: [{backendRefs: [{name: web, port: 80}]}]
"#;

fn cond<'a>(conditions: &'a [Condition], kind: &str) -> &'a Condition {
    conditions.iter().find(|c| c.kind == kind).unwrap_or_else(|| panic!("no {kind} in {conditions:?}"))
}

fn route_ref(ns: &str, name: &str) -> ObjectRef {
    ObjectRef { kind: "HTTPRoute", namespace: ns.into(), name: name.into() }
}

/// Where a GET of `url` (`host/path?query`) on `port` goes: `ns/route#rule`, or None.
fn lands(compiled: &Compiled, port: u16, url: &str, headers: &[(&str, &str)]) -> Option<String> {
    let (authority, path_query) = url.split_at(url.find('/').unwrap());
    let (path, query) = match path_query.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (path_query, None),
    };
    let mut map = HeaderMap::new();
    for (n, v) in headers {
        map.append(http::HeaderName::from_bytes(n.as_bytes()).unwrap(), v.parse().unwrap());
    }
    let view = RequestView { method: &Method::GET, path, query, headers: &map };
    let routed = compiled.tables.get(&port)?.route(&request_host(authority), &view)?;
    Some(format!("{}/{}#{}", routed.action.route.namespace, routed.action.route.name, routed.action.rule))
}

#[test]
fn requests_land_by_hostname_then_match_precedence_then_route_age() {
    let c = load(OBJECTS);
    // shop.example.com: the shop route's rules, most specific match first.
    assert_eq!(lands(&c, 80, "shop.example.com/login", &[]).as_deref(), Some("shop/shop#1"), "Exact wins");
    assert_eq!(lands(&c, 80, "shop.example.com/login/x", &[]).as_deref(), Some("shop/shop#0"));
    assert_eq!(lands(&c, 80, "shop.example.com/api/x", &[("x-version", "2")]).as_deref(), Some("shop/shop#2"));
    // /api without the header: the shop route's own rules have only its
    // catch-all, but the precise hostname ranks first, so it wins over
    // the wildcard route's longer prefix.
    assert_eq!(lands(&c, 80, "shop.example.com/api/x", &[]).as_deref(), Some("shop/shop#0"));
    // Another host under the listener's wildcard: only the wildcard route.
    assert_eq!(lands(&c, 80, "cart.example.com/api/x", &[]).as_deref(), Some("shop/api-wide#0"));
    assert_eq!(lands(&c, 80, "cart.example.com/other", &[]), None, "no rule: 404");
    // other.org does not intersect the listener's *.example.com.
    assert_eq!(lands(&c, 80, "other.org/api", &[]), None);
    // The route with an invalid rule keeps its valid ones; the invalid one is gone.
    assert_eq!(lands(&c, 80, "shop.example.com/broken", &[]).as_deref(), Some("shop/shop#0"));
    // A route of another namespace is not allowed on `web` (Same), and
    // the `open` listener (All) takes the dashboard route.
    assert_eq!(lands(&c, 8000, "anything.local/", &[]).as_deref(), Some("shop/dashboard#0"));
    assert!(!c.tables.contains_key(&443), "an HTTPS listener without a certificate is not served");
    assert!(!c.tables.contains_key(&81), "another class's Gateway is not ours");
}

#[test]
fn weights_filters_and_unresolved_backends_act_per_request() {
    let c = load(OBJECTS);
    let table = &c.tables[&80];
    let none = HeaderMap::new();
    let view = |path| RequestView { method: &Method::GET, path, query: None, headers: &none };
    let root = table.route("shop.example.com", &view("/")).unwrap();
    let mut counts = BTreeMap::new();
    for _ in 0..100 {
        let Some(Target::Service(s)) = root.action.backends.pick() else { panic!("a Service") };
        *counts.entry(s.name.clone()).or_insert(0) += 1;
    }
    assert_eq!(counts, BTreeMap::from([("web".to_owned(), 75), ("web-canary".to_owned(), 25)]));

    let old = table.route("a.example.com", &view("/old/page")).unwrap();
    let redirect = old.action.filters.redirect.as_ref().expect("a redirect");
    let origin = edgemesh_gateway::filter::Origin {
        scheme: "http",
        host: "a.example.com",
        listener_port: 80,
        path: "/old/page",
        query: None,
        matched_prefix: old.matched_prefix,
    };
    assert_eq!(
        (redirect.status.as_u16(), redirect.location(origin)),
        (301, "https://a.example.com/old/page".to_owned())
    );

    let mut headers = HeaderMap::new();
    headers.insert("x-version", "2".parse().unwrap());
    let api = table
        .route(
            "shop.example.com",
            &RequestView { method: &Method::GET, path: "/api/items", query: None, headers: &headers },
        )
        .unwrap();
    let rewrite = api.action.filters.path_rewrite().unwrap();
    assert_eq!(rewrite.apply("/api/items", api.matched_prefix), "/v2/items");

    // One of the dashboard's two backends does not exist: half its
    // requests are answered 500 (the pick says so), half reach the other.
    let dash = c.tables[&8000].route("x", &view("/")).unwrap();
    let picks: Vec<bool> = (0..4).map(|_| matches!(dash.action.backends.pick(), Some(Target::Service(_)))).collect();
    assert_eq!(picks, [true, false, true, false]);
}

#[test]
fn status_says_what_was_not_used_and_why() {
    let c = load(OBJECTS);
    let edge = &c.gateways[&ObjectRef { kind: "Gateway", namespace: "shop".into(), name: "edge".into() }];
    assert!(cond(&edge.conditions, "Accepted").status);
    assert_eq!(cond(&edge.conditions, "Programmed").observed_generation, Some(3));
    let listener = |name: &str| edge.listeners.iter().find(|l| l.name == name).unwrap();
    assert_eq!(listener("web").attached_routes, 2, "shop and api-wide; not nowhere, not invoices");
    assert!(cond(&listener("web").conditions, "Programmed").status);
    let tls = cond(&listener("tls").conditions, "ResolvedRefs");
    assert_eq!((tls.status, tls.reason), (false, "InvalidCertificateRef"), "HTTPS without tls.certificateRefs");
    assert!(!cond(&listener("tls").conditions, "Programmed").status);
    let again = cond(&listener("again").conditions, "Conflicted");
    assert_eq!((again.status, again.reason), (true, "HostnameConflict"));
    assert!(!cond(&listener("again").conditions, "Programmed").status);
    assert_eq!(c.gateways.len(), 1, "another class's Gateway gets no status from us");

    let status = |ns, name| &c.routes[&route_ref(ns, name)][0].conditions;
    let shop = status("shop", "shop");
    assert!(cond(shop, "Accepted").status);
    let partly = cond(shop, "PartiallyInvalid");
    assert!(partly.message.contains("spec.rules[3].filters[0].type \"RequestMirror\" is not supported"), "{partly:?}");
    assert_eq!(partly.observed_generation, Some(7));
    assert!(cond(shop, "ResolvedRefs").status);

    let invoices = status("billing", "invoices");
    assert_eq!(cond(invoices, "Accepted").reason, "NotAllowedByListeners");
    let refs = cond(invoices, "ResolvedRefs");
    assert_eq!((refs.status, refs.reason), (false, "RefNotPermitted"), "shop grants billing nothing");

    let dashboard = status("shop", "dashboard");
    assert!(cond(dashboard, "Accepted").status, "granted across namespaces");
    let refs = cond(dashboard, "ResolvedRefs");
    assert_eq!((refs.status, refs.reason), (false, "BackendNotFound"));
    assert!(refs.message.contains("Service shop/gone:80: no such Service"), "{refs:?}");

    let nowhere = cond(status("shop", "nowhere"), "Accepted");
    assert_eq!((nowhere.status, nowhere.reason), (false, "NoMatchingListenerHostname"));
}

#[test]
fn equal_matches_go_to_the_oldest_route_then_by_namespace_and_name() {
    let objects = |first: &str, second: &str| {
        format!(
            "kind: Gateway\nmetadata: {{name: edge, namespace: shop}}\nspec:\n  gatewayClassName: edgemesh\n  \
             listeners: [{{name: open, port: 8000, protocol: HTTP, allowedRoutes: {{namespaces: {{from: All}}}}}}]\n\
             ---\nkind: HTTPRoute\nmetadata: {{name: zeta, namespace: shop{first}}}\n\
             spec: {{parentRefs: [{{name: edge, namespace: shop}}], rules: [{{backendRefs: [{{name: web, port: 80}}]}}]}}\n\
             ---\nkind: HTTPRoute\nmetadata: {{name: alpha, namespace: shop{second}}}\n\
             spec: {{parentRefs: [{{name: edge, namespace: shop}}], rules: [{{backendRefs: [{{name: web, port: 80}}]}}]}}\n"
        )
    };
    let by_name = load(&objects("", ""));
    assert_eq!(lands(&by_name, 8000, "x/", &[]).as_deref(), Some("shop/alpha#0"), "no ages: by name");
    let by_age = load(&objects(
        ", creationTimestamp: \"2024-01-01T00:00:00Z\"",
        ", creationTimestamp: \"2025-01-01T00:00:00Z\"",
    ));
    assert_eq!(lands(&by_age, 8000, "x/", &[]).as_deref(), Some("shop/zeta#0"), "the older route");
}

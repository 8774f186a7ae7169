//! The Kubernetes source through the real kube client against a fake API
//! server speaking the list/watch wire protocol, into the real registry.

use std::sync::Arc;
use std::time::Duration;

use edgemesh_core::{LbStrategy, PEER_ID_ANNOTATION, RegistryHandle, RoutingKind, ServiceKey, Snapshot};
use edgemesh_fake_apiserver::{FakeApiServer, Resource};
use edgemesh_kube::{ApiEndpoint, KubeSource, KubeSourceConfig, SERVICE_PROXY_NAME_LABEL};
use edgemesh_test_support::registry::{RunningRegistry, start_registry};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

fn service(ns: &str, name: &str, port: u16) -> Value {
    json!({
        "metadata": {"name": name, "namespace": ns},
        "spec": {"ports": [{"name": "http", "port": port, "targetPort": 8080}]},
    })
}

fn slice(ns: &str, svc: &str, name: &str, ips: &[&str]) -> Value {
    json!({
        "metadata": {"name": name, "namespace": ns, "labels": {"kubernetes.io/service-name": svc}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 8080}],
        "endpoints": ips.iter().map(|ip| json!({"addresses": [ip], "nodeName": "n1"})).collect::<Vec<_>>(),
    })
}

/// The source feeding a real registry; stopped on drop.
struct Running {
    snapshots: RegistryHandle,
    shutdown: CancellationToken,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

async fn run_source(api: &FakeApiServer) -> Running {
    run_source_with(api, false).await
}

/// With `routing`, the gateway's objects are watched too.
async fn run_source_with(api: &FakeApiServer, routing: bool) -> Running {
    let RunningRegistry { sink, snapshots, .. } = start_registry("127.240.0.0/16");
    let config = KubeSourceConfig {
        backoff_min: Duration::from_millis(50),
        backoff_max: Duration::from_millis(500),
        routing,
        ..KubeSourceConfig::new(ApiEndpoint::Url(api.url()))
    };
    let source = KubeSource::new(config).await.expect("client");
    let shutdown = CancellationToken::new();
    tokio::spawn(source.run(sink, shutdown.clone()));
    Running { snapshots, shutdown }
}

impl Running {
    /// Waits (on snapshot changes, not a timer) until `pred` holds.
    async fn until(&mut self, limit: Duration, what: &str, pred: impl Fn(&Snapshot) -> bool) -> Arc<Snapshot> {
        let waited =
            tokio::time::timeout(limit, self.snapshots.wait_for(|s| pred(s))).await.map(|r| r.map(|s| s.clone()));
        match waited {
            Ok(Ok(s)) => s,
            Ok(Err(_)) => panic!("registry stopped while waiting for {what}"),
            Err(_) => panic!("timed out after {limit:?} waiting for {what}; last snapshot: {:?}", self.describe()),
        }
    }

    fn describe(&self) -> Vec<String> {
        let s = self.snapshots.borrow();
        s.services()
            .map(|e| {
                let backends: Vec<String> =
                    e.ports.iter().flat_map(|p| p.backends.iter().map(|b| b.addr.to_string())).collect();
                format!("{} {:?}", e.key, backends)
            })
            .collect()
    }
}

fn backends(s: &Snapshot, ns: &str, name: &str) -> Option<Vec<String>> {
    let e = s.service(&ServiceKey::new(ns, name))?;
    let mut b: Vec<String> = e.ports.iter().flat_map(|p| p.backends.iter().map(|b| b.addr.ip().to_string())).collect();
    b.sort();
    Some(b)
}

const SECOND: Duration = Duration::from_secs(1);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn created_changed_and_deleted_services_show_up_within_a_second() {
    let api = FakeApiServer::start();
    api.apply(Resource::Services, service("shop", "web", 80));
    api.apply(Resource::EndpointSlices, slice("shop", "web", "web-1", &["10.0.0.1"]));
    let mut src = run_source(&api).await;
    src.until(5 * SECOND, "first sync", |s| s.synced && backends(s, "shop", "web") == Some(vec!["10.0.0.1".into()]))
        .await;

    api.apply(Resource::Services, service("shop", "cart", 81));
    src.until(SECOND, "created service", |s| backends(s, "shop", "cart") == Some(vec![])).await;

    api.apply(Resource::EndpointSlices, slice("shop", "web", "web-1", &["10.0.0.1", "10.0.0.2"]));
    src.until(SECOND, "changed endpoints", |s| {
        backends(s, "shop", "web") == Some(vec!["10.0.0.1".into(), "10.0.0.2".into()])
    })
    .await;

    let mut changed = service("shop", "web", 8000);
    changed["metadata"]["annotations"] = json!({"edgemesh.io/lb-strategy": "Random"});
    api.apply(Resource::Services, changed);
    src.until(SECOND, "changed service", |s| {
        s.service(&ServiceKey::new("shop", "web"))
            .is_some_and(|e| e.ports[0].port == 8000 && e.strategy == LbStrategy::Random)
    })
    .await;

    api.delete(Resource::Services, "shop", "cart");
    src.until(SECOND, "deleted service", |s| backends(s, "shop", "cart").is_none()).await;
    api.delete(Resource::EndpointSlices, "shop", "web-1");
    src.until(SECOND, "deleted endpoints", |s| backends(s, "shop", "web") == Some(vec![])).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_server_down_at_start_is_waited_for() {
    let api = FakeApiServer::reserve();
    let mut src = run_source(&api).await;
    api.apply(Resource::Services, service("shop", "web", 80));
    // Nothing listens yet: the source retries with back-off.
    assert!(!src.snapshots.borrow().synced);
    api.restart();
    src.until(3 * SECOND, "sync once the API is up", |s| s.synced && backends(s, "shop", "web").is_some()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_loses_nothing_and_does_not_busy_loop() {
    let api = FakeApiServer::start();
    api.apply(Resource::Services, service("shop", "web", 80));
    api.apply(Resource::Services, service("shop", "old", 80));
    api.apply(Resource::EndpointSlices, slice("shop", "web", "web-1", &["10.0.0.1"]));
    let mut src = run_source(&api).await;
    src.until(5 * SECOND, "first sync", |s| s.synced && s.len() == 2).await;

    // The API answers 503 to everything and open watches break.
    api.set_unavailable(true);
    api.drop_connections();
    // Changes made meanwhile (by other clients, through the real store).
    api.apply(Resource::Services, service("shop", "new", 80));
    api.delete(Resource::Services, "shop", "old");
    api.apply(Resource::EndpointSlices, slice("shop", "web", "web-1", &["10.0.0.1", "10.0.0.3"]));

    let before = api.requests();
    // Measuring a rate needs a window of time: this sleep is the window.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let during = api.requests() - before;
    // Three watchers with back-off from 50 ms to 500 ms: about six attempts
    // each in two seconds. A busy loop makes thousands.
    assert!(during <= 40, "{during} requests in 2 s of outage: busy loop?");
    assert!(during >= 3, "only {during} requests in 2 s: the source stopped retrying");
    let snap = src.snapshots.borrow().clone();
    assert_eq!(snap.len(), 2, "the last known state is kept during the outage");

    api.set_unavailable(false);
    // Recovery waits for each watcher's next back-off step (up to 500 ms plus
    // jitter) and a re-list; the bound is generous so a loaded CI machine
    // does not fail a test whose point is that nothing is lost.
    src.until(5 * SECOND, "every change made during the outage", |s| {
        backends(s, "shop", "new").is_some()
            && backends(s, "shop", "old").is_none()
            && backends(s, "shop", "web") == Some(vec!["10.0.0.1".into(), "10.0.0.3".into()])
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gone_410_relists_and_deletes_what_vanished() {
    let api = FakeApiServer::start();
    api.apply(Resource::Services, service("shop", "a", 80));
    api.apply(Resource::Services, service("shop", "b", 80));
    let mut src = run_source(&api).await;
    src.until(5 * SECOND, "first sync", |s| s.synced && s.len() == 2).await;

    api.set_unavailable(true);
    api.drop_connections();
    api.delete(Resource::Services, "shop", "b");
    api.apply(Resource::Services, service("shop", "c", 80));
    // The history of those changes is gone: resuming from the old
    // resourceVersion gets 410 and the client must list again.
    api.compact();
    let mark = api.requests();
    api.set_unavailable(false);

    src.until(3 * SECOND, "the re-list", |s| {
        backends(s, "shop", "b").is_none() && backends(s, "shop", "c").is_some() && backends(s, "shop", "a").is_some()
    })
    .await;
    let log = api.request_log();
    let services: Vec<&String> = log[mark..].iter().filter(|r| r.starts_with("/api/v1/services")).collect();
    assert!(services.iter().any(|r| !r.contains("watch=true")), "a list follows the 410: {services:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watches_resume_from_the_last_resource_version_and_bookmarks() {
    let api = FakeApiServer::start();
    api.apply(Resource::Services, service("shop", "web", 80));
    let mut src = run_source(&api).await;
    src.until(5 * SECOND, "first sync", |s| s.synced).await;
    let rv = api.apply(Resource::Services, service("shop", "web", 81));
    src.until(SECOND, "the change", |s| {
        s.service(&ServiceKey::new("shop", "web")).is_some_and(|e| e.ports[0].port == 81)
    })
    .await;
    // Other resources move the resourceVersion on; a bookmark tells the
    // services watch, so it resumes from there rather than from `rv`.
    let later = api.apply(Resource::Nodes, json!({"metadata": {"name": "n1"}}));
    assert!(later > rv);
    api.bookmark();
    let mark = api.requests();
    api.end_watches();
    let resumed = api
        .wait_request(mark, 3 * SECOND, |r| r.starts_with("/api/v1/services?") && r.contains("watch=true"))
        .expect("the services watch resumes");
    assert!(resumed.contains(&format!("resourceVersion={later}")), "resumed from the bookmark: {resumed}");
    let log = api.request_log();
    assert!(
        !log[mark..].iter().any(|r| r.starts_with("/api/v1/services?") && !r.contains("watch=true")),
        "no re-list after a clean end: {:?}",
        &log[mark..]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn legacy_endpoints_when_the_api_has_no_endpoint_slices() {
    let api = FakeApiServer::start();
    api.without_endpoint_slices();
    api.apply(Resource::Services, service("shop", "web", 80));
    api.apply(
        Resource::Endpoints,
        json!({
            "metadata": {"name": "web", "namespace": "shop"},
            "subsets": [{"addresses": [{"ip": "10.0.0.7"}], "ports": [{"name": "http", "port": 8080}]}],
        }),
    );
    let mut src = run_source(&api).await;
    src.until(5 * SECOND, "sync from Endpoints", |s| {
        s.synced && backends(s, "shop", "web") == Some(vec!["10.0.0.7".into()])
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_labelled_for_another_proxy_are_excluded() {
    let api = FakeApiServer::start();
    let mut other = service("shop", "other", 80);
    other["metadata"]["labels"] = json!({SERVICE_PROXY_NAME_LABEL: "istio"});
    api.apply(Resource::Services, other);
    api.apply(Resource::Services, service("shop", "web", 80));
    let mut src = run_source(&api).await;
    src.until(5 * SECOND, "first sync", |s| s.synced && backends(s, "shop", "web").is_some()).await;
    assert!(backends(&src.snapshots.borrow(), "shop", "other").is_none());

    // Taking the label off brings it in; putting it back takes it out.
    api.apply(Resource::Services, service("shop", "other", 80));
    src.until(SECOND, "unlabelled service", |s| backends(s, "shop", "other").is_some()).await;
    let mut other = service("shop", "other", 80);
    other["metadata"]["labels"] = json!({SERVICE_PROXY_NAME_LABEL: "istio"});
    api.apply(Resource::Services, other);
    src.until(SECOND, "relabelled service", |s| backends(s, "shop", "other").is_none()).await;
}

fn node(name: &str, peer_id: &str, ip: &str) -> Value {
    json!({
        "metadata": {"name": name, "annotations": {PEER_ID_ANNOTATION: peer_id, "node.alpha.kubernetes.io/ttl": "0"}},
        "status": {"addresses": [{"type": "Hostname", "address": name}, {"type": "InternalIP", "address": ip}]},
    })
}

fn peer_of(s: &Snapshot, name: &str) -> Option<String> {
    s.node(name).and_then(|n| n.peer_id.as_deref().map(str::to_owned))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_and_their_peer_ids_follow_the_api() {
    let api = FakeApiServer::start();
    api.apply(Resource::Services, service("shop", "web", 80));
    api.apply(Resource::Nodes, node("edge-1", "12D3KooWPeerOne", "192.168.1.1"));
    api.apply(Resource::Nodes, node("edge-2", " 12D3KooWPeerTwo ", "192.168.1.2"));
    let mut src = run_source(&api).await;
    let snap = src.until(5 * SECOND, "first sync", |s| s.synced).await;
    // Part of the first full view, not a later update.
    assert_eq!(peer_of(&snap, "edge-1").as_deref(), Some("12D3KooWPeerOne"));
    assert_eq!(peer_of(&snap, "edge-2").as_deref(), Some("12D3KooWPeerTwo"), "trimmed");
    assert_eq!(snap.node("edge-1").unwrap().addresses, vec!["192.168.1.1".parse::<std::net::IpAddr>().unwrap()]);

    // A re-keyed node, a new one, a deleted one.
    api.apply(Resource::Nodes, node("edge-1", "12D3KooWPeerOneNew", "192.168.1.1"));
    api.apply(Resource::Nodes, node("edge-3", "12D3KooWPeerThree", "192.168.1.3"));
    api.delete(Resource::Nodes, "", "edge-2");
    src.until(SECOND, "node changes", |s| {
        peer_of(s, "edge-1").as_deref() == Some("12D3KooWPeerOneNew")
            && peer_of(s, "edge-3").is_some()
            && s.node("edge-2").is_none()
    })
    .await;

    // A node deleted while the watch was down goes at the re-list; the
    // services (another kind in the same diff) stay.
    api.set_unavailable(true);
    api.drop_connections();
    api.delete(Resource::Nodes, "", "edge-3");
    api.compact();
    api.set_unavailable(false);
    let snap = src.until(3 * SECOND, "the re-list", |s| s.node("edge-3").is_none()).await;
    assert!(snap.node("edge-1").is_some());
    assert!(backends(&snap, "shop", "web").is_some());
}

fn destination_rule(ns: &str, name: &str, host: &str, load_balancer: Value) -> Value {
    json!({
        "metadata": {"name": name, "namespace": ns},
        "spec": {"host": host, "trafficPolicy": {"loadBalancer": load_balancer}},
    })
}

fn strategy(s: &Snapshot, ns: &str, name: &str) -> Option<LbStrategy> {
    s.service(&ServiceKey::new(ns, name)).map(|e| e.strategy)
}

/// EdgeMesh's DestinationRules, read from the API (issue #21): added,
/// changed and removed, each changes the service's strategy; the service's
/// own annotation wins over a rule.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn destination_rules_set_a_services_strategy_as_they_come_change_and_go() {
    let api = FakeApiServer::start();
    api.apply(Resource::Services, service("shop", "web", 80));
    let mut own = service("shop", "own", 80);
    own["metadata"]["annotations"] = json!({"edgemesh.io/lb-strategy": "Random"});
    api.apply(Resource::Services, own);
    api.apply(Resource::DestinationRules, destination_rule("shop", "own", "own", json!({"simple": "LEAST_REQUEST"})));
    let mut src = run_source(&api).await;
    let limit = Duration::from_secs(5);
    src.until(limit, "web, round robin", |s| s.synced && strategy(s, "shop", "web") == Some(LbStrategy::RoundRobin))
        .await;

    api.apply(
        Resource::DestinationRules,
        destination_rule("shop", "web-lb", "web.shop.svc.cluster.local", json!({"simple": "RANDOM"})),
    );
    src.until(limit, "the rule's RANDOM", |s| strategy(s, "shop", "web") == Some(LbStrategy::Random)).await;

    api.apply(
        Resource::DestinationRules,
        destination_rule("shop", "web-lb", "web", json!({"consistentHash": {"httpHeaderName": "X-User"}})),
    );
    let s = src
        .until(limit, "the changed rule's consistentHash", |s| {
            strategy(s, "shop", "web") == Some(LbStrategy::ConsistentHash)
        })
        .await;
    let web = s.service(&ServiceKey::new("shop", "web")).unwrap();
    assert_eq!(web.hash_key, edgemesh_core::service::HashKey::Header("X-User".into()));
    assert_eq!(strategy(&s, "shop", "own"), Some(LbStrategy::Random), "the annotation wins over the rule");

    assert!(api.delete(Resource::DestinationRules, "shop", "web-lb"));
    src.until(limit, "the default again", |s| strategy(s, "shop", "web") == Some(LbStrategy::RoundRobin)).await;
}

/// A cluster without the DestinationRule CRD (404): the source syncs and
/// stays connected (no outage in `/readyz`), asks again slowly, and picks
/// the rules up once the CRD is there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_without_the_destination_rule_crd_neither_breaks_nor_stalls_the_source() {
    let api = FakeApiServer::start();
    api.set_destination_rules(false);
    api.apply(Resource::Services, service("shop", "web", 80));
    api.apply(Resource::DestinationRules, destination_rule("shop", "web", "web", json!({"simple": "RANDOM"})));
    let RunningRegistry { sink, snapshots, .. } = start_registry("127.240.0.0/16");
    let config = KubeSourceConfig {
        backoff_min: Duration::from_millis(50),
        backoff_max: Duration::from_millis(500),
        ..KubeSourceConfig::new(ApiEndpoint::Url(api.url()))
    };
    let health = config.health.clone();
    let source = KubeSource::new(config).await.expect("client");
    let shutdown = CancellationToken::new();
    tokio::spawn(source.run(sink, shutdown.clone()));
    let mut src = Running { snapshots, shutdown };
    let limit = Duration::from_secs(5);
    src.until(limit, "synced without rules", |s| {
        s.synced && strategy(s, "shop", "web") == Some(LbStrategy::RoundRobin)
    })
    .await;
    let rule_requests = || api.request_log().iter().filter(|r| r.contains("/destinationrules")).count();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let asked = rule_requests();
    assert!((1..=3).contains(&asked), "asked {asked} times in 3 s: {:?}", api.request_log());
    assert_eq!(health.report().connection, edgemesh_core::Connection::Connected, "a missing CRD is no outage");
    // Services still follow the API meanwhile.
    api.apply(Resource::Services, service("shop", "api", 80));
    src.until(limit, "a new service", |s| strategy(s, "shop", "api").is_some()).await;

    api.set_destination_rules(true);
    src.until(Duration::from_secs(15), "the rule once the CRD is there", |s| {
        strategy(s, "shop", "web") == Some(LbStrategy::Random)
    })
    .await;
    assert_eq!(health.report().connection, edgemesh_core::Connection::Connected);
}

fn http_route(ns: &str, name: &str, hostname: &str) -> Value {
    json!({
        "metadata": {"name": name, "namespace": ns, "generation": 3, "creationTimestamp": "2026-12-01T10:00:00Z"},
        "spec": {"hostnames": [hostname], "rules": [{"backendRefs": [{"name": "web", "port": 80}]}]},
        "status": {"parents": []},
    })
}

fn routing_documents(s: &Snapshot) -> Vec<Value> {
    s.routing_objects().map(|o| serde_json::from_str(&o.document).unwrap()).collect()
}

/// The edge gateway's objects from the API (issue #17), watched only when
/// the gateway runs: added (whole, with generation and creation time, without
/// status), changed and deleted; Istio's Gateway under its own kind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_objects_follow_the_api_when_the_gateway_runs() {
    let api = FakeApiServer::start();
    api.apply(Resource::Services, service("shop", "web", 80));
    api.apply(Resource::HttpRoutes, http_route("shop", "front", "shop.example"));
    api.apply(
        Resource::IstioGateways,
        json!({"metadata": {"name": "edgemesh-gateway", "namespace": "shop"}, "spec": {"servers": []}}),
    );
    let mut src = run_source_with(&api, true).await;
    let limit = Duration::from_secs(5);
    let s = src.until(limit, "the route and the Istio gateway", |s| s.synced && s.routing_objects().count() == 2).await;
    let kinds: Vec<RoutingKind> = s.routing_objects().map(|o| o.kind).collect();
    assert_eq!(kinds, vec![RoutingKind::HttpRoute, RoutingKind::IstioGateway]);
    let route = &routing_documents(&s)[0];
    assert_eq!(route["apiVersion"], "gateway.networking.k8s.io/v1");
    assert_eq!(route["metadata"]["generation"], 3);
    assert_eq!(route["metadata"]["creationTimestamp"], "2026-12-01T10:00:00Z");
    assert_eq!(route["spec"]["hostnames"][0], "shop.example");
    assert!(route.get("status").is_none(), "{route}");

    api.apply(Resource::HttpRoutes, http_route("shop", "front", "new.example"));
    src.until(limit, "the changed route", |s| {
        routing_documents(s).iter().any(|d| d["spec"]["hostnames"][0] == "new.example")
    })
    .await;
    assert!(api.delete(Resource::HttpRoutes, "shop", "front"));
    src.until(limit, "the route gone", |s| s.routing_objects().count() == 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_gateway_its_objects_are_not_asked_for() {
    let api = FakeApiServer::start();
    api.apply(Resource::Services, service("shop", "web", 80));
    api.apply(Resource::HttpRoutes, http_route("shop", "front", "shop.example"));
    let mut src = run_source(&api).await;
    src.until(Duration::from_secs(5), "web", |s| s.synced && s.service(&ServiceKey::new("shop", "web")).is_some())
        .await;
    assert!(!api.request_log().iter().any(|uri| uri.contains("gateway.networking.k8s.io")), "{:?}", api.request_log());
    assert_eq!(src.snapshots.borrow().routing_objects().count(), 0);
}

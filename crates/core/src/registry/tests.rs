use std::net::{IpAddr, SocketAddr};

use super::*;
use crate::build::{service, slice};
use crate::object::ObjectKey;
use crate::service::{DEFAULT_UDP_IDLE_TIMEOUT, HashKey, UDP_IDLE_TIMEOUT_ANNOTATION};

fn state() -> RegistryState {
    RegistryState::new(&RegistryConfig {
        vip_cidr: "127.251.0.0/16".parse().unwrap(),
        default_strategy: LbStrategy::RoundRobin,
        ..Default::default()
    })
}

fn key(name: &str) -> ServiceKey {
    ServiceKey::new("default", name)
}

fn backends(snap: &Snapshot, name: &str) -> Vec<SocketAddr> {
    snap.service(&key(name)).unwrap().ports[0].backends.iter().map(|b| b.addr).collect()
}

fn apply(st: &mut RegistryState, obj: crate::Object) -> bool {
    st.apply(SourceEvent::Apply(obj))
}

#[test]
fn service_joins_its_slices_and_gets_a_vip() {
    let mut st = state();
    apply(&mut st, service("default", "web").port("http", 80, 8080).object());
    apply(
        &mut st,
        slice("default", "web-1", "web")
            .endpoint("10.0.0.2", "n1")
            .endpoint("10.0.0.1", "n1")
            .port("http", 8080)
            .object(),
    );
    apply(&mut st, slice("default", "web-2", "web").not_ready("10.0.0.3", "n2").port("http", 8080).object());
    let snap = st.take_generation();
    let entry = snap.service(&key("web")).unwrap();
    let vip = entry.vip.unwrap();
    assert!("127.251.0.0/16".parse::<IpNet>().unwrap().contains(&vip));
    assert_eq!(
        backends(&snap, "web"),
        vec!["10.0.0.1:8080".parse().unwrap(), "10.0.0.2:8080".parse::<SocketAddr>().unwrap()]
    );
    assert_eq!(entry.endpoints.len(), 3, "not-ready endpoints are listed but not used");
    assert_eq!(snap.service_by_ip(&vip).unwrap().key, key("web"));
}

#[test]
fn endpoints_without_service_wait_for_it() {
    let mut st = state();
    apply(&mut st, slice("default", "web-1", "web").endpoint("10.0.0.1", "n1").port("", 80).object());
    assert!(st.take_generation().service(&key("web")).is_none());
    apply(&mut st, service("default", "web").port("", 80, 80).object());
    assert_eq!(backends(&st.take_generation(), "web"), vec!["10.0.0.1:80".parse().unwrap()]);
}

#[test]
fn named_target_ports_resolve_through_endpoint_ports() {
    let mut st = state();
    apply(
        &mut st,
        service("default", "web").named_target("http", 80, "web-port").named_target("metrics", 9000, "m").object(),
    );
    apply(
        &mut st,
        slice("default", "web-1", "web").endpoint("10.0.0.1", "n1").port("http", 8080).port("metrics", 9100).object(),
    );
    let snap = st.take_generation();
    let e = snap.service(&key("web")).unwrap();
    assert_eq!(e.ports[0].backends[0].addr, "10.0.0.1:8080".parse().unwrap());
    assert_eq!(e.ports[1].backends[0].addr, "10.0.0.1:9100".parse().unwrap());
}

#[test]
fn vip_is_kept_across_updates_and_released_on_delete() {
    let mut st = state();
    apply(&mut st, service("default", "web").port("http", 80, 8080).object());
    let vip = st.take_generation().service(&key("web")).unwrap().vip;
    apply(&mut st, service("default", "web").port("http", 81, 8080).object());
    let snap = st.take_generation();
    assert_eq!(snap.service(&key("web")).unwrap().vip, vip);
    assert_eq!(snap.service(&key("web")).unwrap().ports[0].port, 81);
    st.apply(SourceEvent::Delete(ObjectKey {
        kind: ObjectKind::Service,
        namespace: "default".into(),
        name: "web".into(),
    }));
    let snap = st.take_generation();
    assert!(snap.service(&key("web")).is_none());
    assert!(snap.service_by_ip(&vip.unwrap()).is_none());
    assert_eq!(st.vips.in_use(), 0);
}

#[test]
fn headless_services_have_no_vip() {
    let mut st = state();
    apply(&mut st, service("default", "db").headless().port("", 5432, 5432).object());
    let snap = st.take_generation();
    let e = snap.service(&key("db")).unwrap();
    assert!(e.vip.is_none() && e.headless);
}

#[test]
fn exhausted_pool_hurts_only_the_late_service_and_heals() {
    let mut st = RegistryState::new(&RegistryConfig {
        vip_cidr: "10.1.0.0/30".parse().unwrap(),
        default_strategy: LbStrategy::RoundRobin,
        ..Default::default()
    });
    for n in ["a", "b", "c"] {
        apply(&mut st, service("default", n).port("", 80, 80).object());
    }
    let snap = st.take_generation();
    let with_vip = ["a", "b", "c"].iter().filter(|n| snap.service(&key(n)).unwrap().vip.is_some()).count();
    assert_eq!(with_vip, 2);
    let starving = ["a", "b", "c"].into_iter().find(|n| snap.service(&key(n)).unwrap().vip.is_none()).unwrap();
    assert!(snap.service(&key(starving)).unwrap().problem.as_ref().unwrap().contains("exhausted"));
    let other = ["a", "b", "c"].into_iter().find(|n| *n != starving).unwrap();
    st.apply(SourceEvent::Delete(ObjectKey {
        kind: ObjectKind::Service,
        namespace: "default".into(),
        name: other.into(),
    }));
    let snap = st.take_generation();
    assert!(snap.service(&key(starving)).unwrap().vip.is_some(), "freed address goes to the waiting service");
}

#[test]
fn strategy_annotation_and_bad_value_fall_back() {
    let mut st = state();
    apply(&mut st, service("default", "r").annotation(LbStrategy::ANNOTATION, "Random").object());
    apply(&mut st, service("default", "bad").annotation(LbStrategy::ANNOTATION, "Fastest").object());
    let snap = st.take_generation();
    assert_eq!(snap.service(&key("r")).unwrap().strategy, LbStrategy::Random);
    assert_eq!(snap.service(&key("bad")).unwrap().strategy, LbStrategy::RoundRobin);
}

#[test]
fn slices_win_over_legacy_endpoints() {
    let mut st = state();
    apply(&mut st, service("default", "web").port("", 80, 80).object());
    let mut legacy = slice("default", "web", "web").endpoint("10.0.0.9", "n1").port("", 80);
    legacy.0.kind = ObjectKind::Endpoints;
    apply(&mut st, legacy.object());
    assert_eq!(backends(&st.take_generation(), "web"), vec!["10.0.0.9:80".parse().unwrap()]);
    apply(&mut st, slice("default", "web-x", "web").endpoint("10.0.0.1", "n1").port("", 80).object());
    assert_eq!(backends(&st.take_generation(), "web"), vec!["10.0.0.1:80".parse().unwrap()]);
}

#[test]
fn reapplying_the_same_object_changes_nothing() {
    let mut st = state();
    let obj = service("default", "web").port("", 80, 80).object();
    assert!(apply(&mut st, obj.clone()));
    let g1 = st.take_generation();
    assert!(!apply(&mut st, obj));
    let g2 = st.take_generation();
    assert_eq!(g2.changes_since(g1.generation), Some(vec![]));
}

#[test]
fn changelog_names_exactly_the_changed_services() {
    let mut st = state();
    for i in 0..100 {
        apply(&mut st, service("default", &format!("s{i}")).port("", 80, 80).object());
    }
    let g1 = st.take_generation().generation;
    apply(&mut st, slice("default", "s7-x", "s7").endpoint("10.0.0.1", "n").port("", 80).object());
    let snap = st.take_generation();
    assert_eq!(snap.changes_since(g1), Some(vec![key("s7")]));
    assert_eq!(snap.changes_since(0).map(|c| c.len()), Some(101));
}

#[test]
fn slice_moving_to_another_service_leaves_the_first() {
    let mut st = state();
    apply(&mut st, service("default", "a").port("", 80, 80).object());
    apply(&mut st, service("default", "b").port("", 80, 80).object());
    apply(&mut st, slice("default", "x", "a").endpoint("10.0.0.1", "n").port("", 80).object());
    st.take_generation();
    apply(&mut st, slice("default", "x", "b").endpoint("10.0.0.1", "n").port("", 80).object());
    let snap = st.take_generation();
    assert!(backends(&snap, "a").is_empty());
    assert_eq!(backends(&snap, "b").len(), 1);
}

#[tokio::test]
async fn registry_task_publishes_and_reports_synced() {
    let mut reg = Registry::new(RegistryConfig {
        vip_cidr: "127.251.0.0/16".parse().unwrap(),
        default_strategy: LbStrategy::RoundRobin,
        ..Default::default()
    });
    let sink = reg.source();
    let mut rx = reg.subscribe();
    let task = tokio::spawn(reg.run());
    sink.send(SourceEvent::Apply(service("default", "web").port("", 80, 80).object())).await.unwrap();
    sink.send(SourceEvent::Synced).await.unwrap();
    let snap = rx.wait_for(|s| s.synced).await.unwrap().clone();
    assert!(snap.service(&key("web")).is_some());
    let _: Option<IpAddr> = snap.service(&key("web")).unwrap().vip;
    drop(sink);
    task.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn loading_is_published_in_few_generations_then_every_change_at_once() {
    let mut reg = Registry::new(RegistryConfig::default());
    let sink = reg.source();
    let mut rx = reg.subscribe();
    let task = tokio::spawn(reg.run());
    let started = tokio::time::Instant::now();
    // Before the source has synced: changes in separate batches.
    for name in ["a", "b", "c"] {
        sink.send(SourceEvent::Apply(service("default", name).port("", 80, 80).object())).await.unwrap();
        tokio::task::yield_now().await;
    }
    let snap = rx.wait_for(|s| s.len() == 3).await.unwrap().clone();
    assert!(started.elapsed() >= LOADING_PUBLISH_INTERVAL, "published after {:?}", started.elapsed());
    assert!(snap.generation <= 2, "the load took {} generations", snap.generation);
    assert!(!snap.synced);
    // Synced is published at once, and so is every change after it.
    let synced_at = tokio::time::Instant::now();
    sink.send(SourceEvent::Synced).await.unwrap();
    rx.wait_for(|s| s.synced).await.unwrap();
    sink.send(SourceEvent::Apply(service("default", "d").port("", 80, 80).object())).await.unwrap();
    rx.wait_for(|s| s.len() == 4).await.unwrap();
    assert_eq!(synced_at.elapsed(), Duration::ZERO);
    drop(sink);
    task.await.unwrap();
}

#[test]
fn cluster_ip_inside_the_vip_range_becomes_the_vip() {
    let mut st = state();
    apply(&mut st, service("default", "web").cluster_ip("127.251.3.4").port("", 80, 80).object());
    apply(&mut st, service("default", "db").cluster_ip("10.96.0.10").port("", 80, 80).object());
    let snap = st.take_generation();
    assert_eq!(snap.service(&key("web")).unwrap().vip, Some("127.251.3.4".parse().unwrap()));
    let db_vip = snap.service(&key("db")).unwrap().vip.unwrap();
    assert!("127.251.0.0/16".parse::<IpNet>().unwrap().contains(&db_vip));
}

#[test]
fn node_mode_annotations_and_fields_reach_the_entry() {
    let mut st = state();
    apply(
        &mut st,
        service("default", "h")
            .port("", 80, 80)
            .annotation(LbStrategy::ANNOTATION, "ConsistentHash")
            .annotation(HashKey::ANNOTATION, "header:X-User")
            .annotation(UDP_IDLE_TIMEOUT_ANNOTATION, "500ms")
            .client_ip_affinity(30)
            .internal_traffic_policy(crate::InternalTrafficPolicy::Local)
            .traffic_distribution(crate::TrafficDistribution::PreferClose)
            .object(),
    );
    apply(
        &mut st,
        service("default", "bad")
            .port("", 80, 80)
            .annotation(HashKey::ANNOTATION, "query:x")
            .annotation(UDP_IDLE_TIMEOUT_ANNOTATION, "soon")
            .object(),
    );
    let snap = st.take_generation();
    let h = snap.service(&key("h")).unwrap();
    assert_eq!(h.strategy, LbStrategy::ConsistentHash);
    assert_eq!(h.hash_key, HashKey::Header("X-User".into()));
    assert_eq!(h.udp_idle_timeout, Duration::from_millis(500));
    assert_eq!(h.session_affinity, crate::SessionAffinity::ClientIp { timeout_seconds: 30 });
    assert_eq!(h.internal_traffic_policy, crate::InternalTrafficPolicy::Local);
    assert_eq!(h.traffic_distribution, Some(crate::TrafficDistribution::PreferClose));
    let bad = snap.service(&key("bad")).unwrap();
    assert_eq!(bad.hash_key, HashKey::SourceIp, "invalid annotations fall back to the default");
    assert_eq!(bad.udp_idle_timeout, DEFAULT_UDP_IDLE_TIMEOUT);
}

#[test]
fn a_requested_vip_taken_by_another_service_is_handed_over_when_freed() {
    let mut st = state();
    // "old" holds 127.251.3.4 as its requested address.
    apply(&mut st, service("default", "old").cluster_ip("127.251.3.4").port("", 80, 80).object());
    st.take_generation();
    apply(&mut st, service("default", "web").cluster_ip("127.251.3.4").port("", 80, 80).object());
    let snap = st.take_generation();
    assert_ne!(snap.service(&key("web")).unwrap().vip, Some("127.251.3.4".parse().unwrap()), "taken: a stand-in");
    st.apply(SourceEvent::Delete(ObjectKey {
        kind: ObjectKind::Service,
        namespace: "default".into(),
        name: "old".into(),
    }));
    let snap = st.take_generation();
    assert_eq!(snap.service(&key("web")).unwrap().vip, Some("127.251.3.4".parse().unwrap()), "moves once it is free");
}

#[test]
fn with_interception_only_services_that_need_one_get_a_vip() {
    let mut st = RegistryState::new(&RegistryConfig { vips: VipPolicy::WhereNeeded, ..Default::default() });
    apply(&mut st, service("default", "tcp").cluster_ip("10.96.0.10").port("http", 80, 8080).object());
    apply(&mut st, service("default", "udp").cluster_ip("10.96.0.53").udp_port("dns", 53, 5353).object());
    apply(&mut st, service("default", "bare").port("http", 80, 8080).object());
    let snap = st.take_generation();
    let vip = |n: &str| snap.service(&key(n)).unwrap().vip;
    assert_eq!(vip("tcp"), None, "its cluster IP is intercepted where it is");
    assert!(vip("udp").is_some(), "datagrams to its cluster IP are DNATed to its VIP");
    assert!(vip("bare").is_some(), "no cluster IP: the VIP is its address");
    // Gaining a cluster IP gives the VIP back to the pool.
    apply(&mut st, service("default", "bare").cluster_ip("10.96.0.11").port("http", 80, 8080).object());
    let snap = st.take_generation();
    assert_eq!(snap.service(&key("bare")).unwrap().vip, None);
    assert_eq!(st.vips.in_use(), 1);
}

#[test]
fn a_new_default_strategy_rebuilds_only_services_without_the_annotation() {
    let mut st = state();
    apply(&mut st, service("default", "plain").port("http", 80, 8080).object());
    apply(&mut st, service("default", "r").annotation(LbStrategy::ANNOTATION, "Random").object());
    let before = st.take_generation();
    assert!(!st.set_default_strategy(LbStrategy::RoundRobin), "unchanged");
    assert!(st.set_default_strategy(LbStrategy::ConsistentHash));
    let after = st.take_generation();
    assert_eq!(after.service(&key("plain")).unwrap().strategy, LbStrategy::ConsistentHash);
    assert_eq!(after.service(&key("r")).unwrap().strategy, LbStrategy::Random, "the annotation wins");
    assert!(Arc::ptr_eq(before.service(&key("r")).unwrap(), after.service(&key("r")).unwrap()), "not republished");
    assert_eq!(after.service(&key("plain")).unwrap().vip, before.service(&key("plain")).unwrap().vip, "VIP kept");
}

#[test]
fn app_protocol_decides_which_ports_are_http_and_the_opt_out_wins() {
    use crate::AppProtocol;
    use crate::app_protocol::PROTOCOL_ANNOTATION;
    let mut st = state();
    let web = |name: &str| {
        service("default", name).port("web", 80, 8080).app_protocol("kubernetes.io/h2c").port("admin", 9000, 9000)
    };
    apply(&mut st, web("web").object());
    apply(&mut st, web("opted-out").annotation(PROTOCOL_ANNOTATION, "tcp").object());
    apply(&mut st, service("default", "named").port("http", 80, 8080).app_protocol("redis").object());
    let snap = st.take_generation();
    let protocols =
        |name: &str| snap.service(&key(name)).unwrap().ports.iter().map(|p| p.app_protocol).collect::<Vec<_>>();
    assert_eq!(
        protocols("web"),
        [AppProtocol::Http2, AppProtocol::Tcp],
        "appProtocol wins over a name that says nothing"
    );
    assert_eq!(
        protocols("opted-out"),
        [AppProtocol::Tcp, AppProtocol::Tcp],
        "edgemesh.io/protocol: tcp keeps it on L4"
    );
    assert_eq!(protocols("named"), [AppProtocol::Tcp], "an appProtocol that is not HTTP wins over the name");

    // Changing only appProtocol rebuilds the entry.
    apply(
        &mut st,
        service("default", "web").port("web", 80, 8080).app_protocol("http").port("admin", 9000, 9000).object(),
    );
    let snap = st.take_generation();
    assert_eq!(snap.service(&key("web")).unwrap().ports[0].app_protocol, AppProtocol::Http1);
}

fn rule(
    namespace: &str,
    name: &str,
    target: &str,
    strategy: Option<LbStrategy>,
    hash_key: Option<&str>,
) -> crate::Object {
    crate::Object::DestinationRule(crate::DestinationRuleObject {
        meta: crate::object::ObjectMeta { namespace: namespace.into(), name: name.into(), ..Default::default() },
        service_namespace: "default".into(),
        service_name: target.into(),
        strategy,
        hash_key: hash_key.map(str::to_owned),
    })
}

#[test]
fn a_destination_rule_sets_its_services_strategy_until_it_changes_moves_or_goes() {
    let mut st = state();
    apply(&mut st, service("default", "web").port("", 80, 80).object());
    apply(&mut st, service("default", "api").port("", 80, 80).object());
    apply(&mut st, service("default", "own").port("", 80, 80).annotation(LbStrategy::ANNOTATION, "Random").object());
    let snap = st.take_generation();
    assert_eq!(snap.service(&key("web")).unwrap().strategy, LbStrategy::RoundRobin);

    // Added: the strategy and hash key apply; the annotation wins over a rule.
    assert!(apply(&mut st, rule("default", "web", "web", Some(LbStrategy::ConsistentHash), Some("header:X-User"))));
    apply(&mut st, rule("default", "own", "own", Some(LbStrategy::LeastRequest), None));
    let snap = st.take_generation();
    let web = snap.service(&key("web")).unwrap();
    assert_eq!((web.strategy, web.hash_key.clone()), (LbStrategy::ConsistentHash, HashKey::Header("X-User".into())));
    assert_eq!(snap.service(&key("own")).unwrap().strategy, LbStrategy::Random, "the service's annotation wins");
    assert!(!apply(&mut st, rule("default", "web", "web", Some(LbStrategy::ConsistentHash), Some("header:X-User"))));

    // Changed.
    apply(&mut st, rule("default", "web", "web", Some(LbStrategy::Random), None));
    let snap = st.take_generation();
    let web = snap.service(&key("web")).unwrap();
    assert_eq!((web.strategy, web.hash_key.clone()), (LbStrategy::Random, HashKey::SourceIp));

    // Its host now names api: web falls back, api takes it.
    apply(&mut st, rule("default", "web", "api", Some(LbStrategy::LeastRequest), None));
    let snap = st.take_generation();
    assert_eq!(snap.service(&key("web")).unwrap().strategy, LbStrategy::RoundRobin);
    assert_eq!(snap.service(&key("api")).unwrap().strategy, LbStrategy::LeastRequest);

    // A second rule for api: the first by namespace and name decides.
    apply(&mut st, rule("default", "a-first", "api", Some(LbStrategy::Random), None));
    assert_eq!(st.take_generation().service(&key("api")).unwrap().strategy, LbStrategy::Random);
    let gone =
        |name: &str| ObjectKey { kind: ObjectKind::DestinationRule, namespace: "default".into(), name: name.into() };
    assert!(st.apply(SourceEvent::Delete(gone("a-first"))));
    assert_eq!(st.take_generation().service(&key("api")).unwrap().strategy, LbStrategy::LeastRequest);

    // Deleted: the default again; a rule before its service waits for it.
    assert!(st.apply(SourceEvent::Delete(gone("web"))));
    assert!(!st.apply(SourceEvent::Delete(gone("web"))));
    apply(&mut st, rule("default", "late", "late", Some(LbStrategy::Random), None));
    apply(&mut st, service("default", "late").port("", 80, 80).object());
    let snap = st.take_generation();
    assert_eq!(snap.service(&key("api")).unwrap().strategy, LbStrategy::RoundRobin);
    assert_eq!(snap.service(&key("late")).unwrap().strategy, LbStrategy::Random);
}

fn routing(kind: crate::RoutingKind, name: &str, document: &str) -> crate::Object {
    crate::Object::Routing(crate::RoutingObject {
        kind,
        meta: crate::object::ObjectMeta { namespace: "edge".into(), name: name.into(), ..Default::default() },
        document: document.into(),
    })
}

#[test]
fn routing_objects_reach_the_snapshot_and_mark_the_generation_that_changed_them() {
    use crate::RoutingKind::{Gateway, HttpRoute};
    let mut st = state();
    apply(&mut st, service("default", "web").port("", 80, 80).object());
    let snap = st.take_generation();
    assert_eq!((snap.routing_objects().count(), snap.routing_changed()), (0, 0));

    // Added: in the snapshot, and this generation says so.
    assert!(apply(&mut st, routing(Gateway, "site", "{}")));
    assert!(apply(&mut st, routing(HttpRoute, "site", r#"{"spec":{}}"#)), "a route may share a Gateway's name");
    let snap = st.take_generation();
    assert_eq!(snap.routing_objects().count(), 2);
    assert_eq!(snap.routing_changed(), snap.generation);
    let changed_at = snap.generation;

    // The same again changes nothing; a service change leaves the mark.
    assert!(!apply(&mut st, routing(Gateway, "site", "{}")));
    apply(&mut st, service("default", "api").port("", 80, 80).object());
    let snap = st.take_generation();
    assert_eq!(snap.routing_changed(), changed_at);

    // Changed, then deleted.
    assert!(apply(&mut st, routing(HttpRoute, "site", r#"{"spec":{"hostnames":["a.example"]}}"#)));
    let snap = st.take_generation();
    assert_eq!(snap.routing_changed(), snap.generation);
    assert!(snap.routing_objects().any(|o| o.document.contains("a.example")));
    let gone = ObjectKey { kind: ObjectKind::Routing(HttpRoute), namespace: "edge".into(), name: "site".into() };
    assert!(st.apply(SourceEvent::Delete(gone.clone())));
    assert!(!st.apply(SourceEvent::Delete(gone)));
    let snap = st.take_generation();
    assert_eq!((snap.routing_objects().count(), snap.routing_changed()), (1, snap.generation));
}

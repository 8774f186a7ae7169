//! Istio DestinationRules in manifests (issue #21: EdgeMesh's per-service
//! load balancing keeps working for standalone users too): every version,
//! each `loadBalancer` setting, the host forms, errors with their line, and
//! the watcher carrying a rule's strategy into the snapshot and back out.

use std::time::Duration;

use edgemesh_core::{DestinationRuleObject, LbStrategy, Object, RegistryConfig, ServiceKey};
use edgemesh_manifests::{ManifestSource, parse_manifest};
use edgemesh_test_support::registry::{RunningRegistry, start_registry_with};
use tokio_util::sync::CancellationToken;

fn rule_yaml(version: &str, host: &str, lb: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/{version}\nkind: DestinationRule\nmetadata:\n  name: web-lb\n  namespace: shop\n\
         spec:\n  host: {host}\n  trafficPolicy:\n    loadBalancer:\n{lb}"
    )
}

fn parsed(yaml: &str) -> DestinationRuleObject {
    let got = parse_manifest(yaml).unwrap_or_else(|e| panic!("{e}:\n{yaml}"));
    assert_eq!(got.len(), 1, "{yaml}");
    match &got[0].object {
        Object::DestinationRule(r) => r.clone(),
        other => panic!("not a rule: {other:?}"),
    }
}

#[test]
fn every_version_host_form_and_strategy_converts() {
    for version in ["v1alpha3", "v1beta1", "v1"] {
        let r = parsed(&rule_yaml(version, "web", "      simple: RANDOM\n"));
        assert_eq!((r.service_namespace.as_str(), r.service_name.as_str()), ("shop", "web"), "{version}");
        assert_eq!(r.strategy, Some(LbStrategy::Random));
    }
    for (host, ns) in [("web.other", "other"), ("web.other.svc", "other"), ("web.other.svc.cluster.local", "other")] {
        let r = parsed(&rule_yaml("v1alpha3", host, "      simple: ROUND_ROBIN\n"));
        assert_eq!((r.service_namespace.as_str(), r.service_name.as_str()), (ns, "web"), "{host}");
    }
    for (lb, strategy, key) in [
        ("      simple: ROUND_ROBIN\n", Some(LbStrategy::RoundRobin), None),
        ("      simple: LEAST_REQUEST\n", Some(LbStrategy::LeastRequest), None),
        ("      simple: LEAST_CONN\n", Some(LbStrategy::LeastRequest), None),
        ("      simple: UNSPECIFIED\n", None, None),
        ("      simple: PASSTHROUGH\n", None, None),
        (
            "      consistentHash:\n        httpHeaderName: X-User\n",
            Some(LbStrategy::ConsistentHash),
            Some("header:X-User"),
        ),
        ("      consistentHash:\n        useSourceIp: true\n", Some(LbStrategy::ConsistentHash), Some("source-ip")),
        (
            "      consistentHash:\n        httpCookie:\n          name: session\n          ttl: 0s\n",
            Some(LbStrategy::ConsistentHash),
            Some("cookie:session"),
        ),
        (
            "      consistentHash:\n        httpQueryParameterName: u\n        minimumRingSize: 1024\n",
            Some(LbStrategy::ConsistentHash),
            Some("source-ip"),
        ),
    ] {
        let r = parsed(&rule_yaml("v1alpha3", "web", lb));
        assert_eq!((r.strategy, r.hash_key.as_deref()), (strategy, key), "{lb}");
    }
    // Without a host, the rule's own name (EdgeMesh matched rules by name).
    let r = parsed(
        "apiVersion: networking.istio.io/v1alpha3\nkind: DestinationRule\nmetadata: {name: web, namespace: shop}\n\
         spec:\n  trafficPolicy:\n    loadBalancer: {simple: RANDOM}\n    connectionPool: {tcp: {maxConnections: 1}}\n",
    );
    assert_eq!((r.service_name.as_str(), r.strategy), ("web", Some(LbStrategy::Random)));
    // Another group's DestinationRule is not ours.
    assert!(
        parse_manifest("apiVersion: example.com/v1\nkind: DestinationRule\nmetadata: {name: x}\n").unwrap().is_empty()
    );
}

#[test]
fn bad_rules_are_rejected_with_their_line_and_reason() {
    let yaml = format!("# leading comment\n{}", rule_yaml("v1alpha3", "web", "      simple: FASTEST\n"));
    let e = parse_manifest(&yaml).unwrap_err();
    assert!(e.reason().contains("spec.trafficPolicy.loadBalancer.simple \"FASTEST\""), "{}", e.reason());
    assert_eq!(e.line(), 2, "the rule's first line");
    for (host, why) in [("\"*.shop.svc.cluster.local\"", "wildcard"), ("a.b.c.d", "name.namespace.svc")] {
        let e = parse_manifest(&rule_yaml("v1alpha3", host, "      simple: RANDOM\n")).unwrap_err();
        assert!(e.reason().contains("spec.host") && e.reason().contains(why), "{host}: {}", e.reason());
    }
    let both = "      simple: RANDOM\n      consistentHash: {useSourceIp: true}\n";
    let e = parse_manifest(&rule_yaml("v1", "web", both)).unwrap_err();
    assert!(e.reason().contains("one of simple and consistentHash"), "{}", e.reason());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rule_in_the_directory_sets_the_strategy_and_its_removal_restores_the_default() {
    let dir = tempfile::tempdir().unwrap();
    // Atomically, as tools should.
    let write = |name: &str, text: &str| {
        let tmp = dir.path().join(format!(".{name}.tmp"));
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, dir.path().join(name)).unwrap();
    };
    write(
        "web.yaml",
        "apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: shop}\nspec:\n  ports: [{port: 80}]\n",
    );
    write("lb.yaml", &rule_yaml("v1beta1", "web.shop.svc.cluster.local", "      simple: RANDOM\n"));
    let RunningRegistry { sink, mut snapshots, .. } = start_registry_with(RegistryConfig::default());
    let shutdown = CancellationToken::new();
    let source = tokio::spawn(ManifestSource::new(dir.path(), Duration::from_millis(25)).run(sink, shutdown.clone()));
    let web = ServiceKey::new("shop", "web");
    let strategy_is = |want: LbStrategy| {
        let web = web.clone();
        move |s: &std::sync::Arc<edgemesh_core::Snapshot>| s.service(&web).is_some_and(|e| e.strategy == want)
    };
    let wait = Duration::from_secs(5);
    tokio::time::timeout(wait, snapshots.wait_for(strategy_is(LbStrategy::Random))).await.unwrap().unwrap();
    write("lb.yaml", &rule_yaml("v1beta1", "web", "      consistentHash: {httpHeaderName: X-User}\n"));
    tokio::time::timeout(wait, snapshots.wait_for(strategy_is(LbStrategy::ConsistentHash))).await.unwrap().unwrap();
    std::fs::remove_file(dir.path().join("lb.yaml")).unwrap();
    tokio::time::timeout(wait, snapshots.wait_for(strategy_is(LbStrategy::RoundRobin))).await.unwrap().unwrap();
    shutdown.cancel();
    source.await.unwrap();
}

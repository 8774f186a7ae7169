//! The DNS, source, cache and registry metrics through a running agent's
//! `/metrics` (the real binary, a manifests directory, the real `dig`):
//! counts match what was sent and changed, the last-update time moves with
//! a change of the directory, and `promtool check metrics` accepts it all.

mod support;

use std::time::Duration;

use edgemesh_test_support::scrape::{promtool_check, sample};
use support::{Agent, eventually, manifest_dir, service_yaml, write_manifest};

fn scrape(agent: &Agent) -> String {
    let (status, body) = agent.try_get("/metrics").expect("the admin endpoint answers");
    assert_eq!(status, 200, "{body}");
    body
}

fn events(text: &str, kind: &str, action: &str) -> f64 {
    let series = format!(r#"edgemesh_source_events_total{{source="manifests",kind="{kind}",action="{action}"}}"#);
    sample(text, &series).unwrap_or_else(|| panic!("no {series} in {text}"))
}

#[test]
fn dns_queries_and_manifest_changes_show_in_the_agents_metrics() {
    let (_dir, manifests) = manifest_dir();
    write_manifest(&manifests, "web.yaml", &service_yaml("shop", "web", 80, &[8080], ""));
    let agent = Agent::start(&manifests);

    let text = scrape(&agent);
    assert_eq!(sample(&text, "edgemesh_source_synced"), Some(1.0), "{text}");
    assert_eq!(sample(&text, "edgemesh_source_connected"), Some(1.0), "{text}");
    assert_eq!(events(&text, "Service", "apply"), 1.0);
    assert_eq!(events(&text, "EndpointSlice", "apply"), 1.0);
    assert_eq!(events(&text, "Service", "delete"), 0.0);
    assert_eq!(sample(&text, "edgemesh_registry_services"), Some(1.0), "{text}");
    let generation = sample(&text, "edgemesh_registry_generation").expect("a generation");
    assert!(generation >= 1.0, "{text}");
    let first_update = sample(&text, "edgemesh_source_last_update_timestamp_seconds").expect("an update time");
    assert!(sample(&text, "edgemesh_source_last_update_age_seconds").is_some_and(|age| age >= 0.0), "{text}");
    assert!(sample(&text, r#"edgemesh_cache_writes_total{result="ok"}"#).is_some_and(|n| n >= 1.0), "{text}");
    assert_eq!(sample(&text, r#"edgemesh_cache_writes_total{result="error"}"#), Some(0.0), "{text}");

    // DNS: two answers and a denial over UDP, one over TCP.
    for args in [&["web.shop.svc.cluster.local"][..], &["web.shop.svc.cluster.local"], &["nope.shop.svc.cluster.local"]]
    {
        agent.dig(args);
    }
    agent.dig(&["+tcp", "web.shop.svc.cluster.local"]);
    let text = scrape(&agent);
    let server = format!("dns://127.0.0.1:{}", agent.dns_port);
    let requests = |proto| {
        let labels = format!(r#"server="{server}",zone="cluster.local.",proto="{proto}",family="1",type="A""#);
        sample(&text, &format!("edgemesh_dns_requests_total{{{labels}}}"))
    };
    assert_eq!(requests("udp"), Some(3.0), "{text}");
    assert_eq!(requests("tcp"), Some(1.0), "{text}");
    let responses = |rcode| {
        sample(
            &text,
            &format!(r#"edgemesh_dns_responses_total{{server="{server}",zone="cluster.local.",rcode="{rcode}"}}"#),
        )
    };
    assert_eq!(responses("NOERROR"), Some(3.0), "{text}");
    assert_eq!(responses("NXDOMAIN"), Some(1.0), "{text}");
    promtool_check(&text);

    // A new file: its objects are events, and the update time moves on.
    write_manifest(&manifests, "db.yaml", &service_yaml("shop", "db", 5432, &[5432], ""));
    // The source counts its events before the registry publishes them:
    // wait for both.
    let text = eventually(Duration::from_secs(10), "the db service's events and snapshot", || {
        let text = scrape(&agent);
        (events(&text, "Service", "apply") == 2.0 && sample(&text, "edgemesh_registry_services") == Some(2.0))
            .then_some(text)
    });
    assert_eq!(events(&text, "EndpointSlice", "apply"), 2.0);
    let updated = sample(&text, "edgemesh_source_last_update_timestamp_seconds").unwrap();
    assert!(updated > first_update, "{updated} after {first_update}");
    assert_eq!(sample(&text, "edgemesh_registry_services"), Some(2.0), "{text}");

    // And removed again: deletes.
    std::fs::remove_file(manifests.join("db.yaml")).unwrap();
    let text = eventually(Duration::from_secs(10), "the db service's deletes", || {
        let text = scrape(&agent);
        let published = sample(&text, "edgemesh_registry_generation").is_some_and(|g| g > generation);
        (events(&text, "Service", "delete") == 1.0 && published).then_some(text)
    });
    assert_eq!(events(&text, "EndpointSlice", "delete"), 1.0);
    assert!(sample(&text, "edgemesh_registry_generation").unwrap() > generation, "{text}");
    promtool_check(&text);
}

use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use edgemesh_metrics::prometheus_client::encoding::text::encode;

use super::*;
use crate::registry::EventSink;
use crate::{ObjectKey, RegistryConfig, build};

fn scrape(registry: &Registry) -> String {
    let mut text = String::new();
    encode(&mut text, registry).unwrap();
    text
}

fn has(text: &str, line: &str) -> bool {
    text.lines().any(|l| l == line)
}

#[tokio::test]
async fn events_are_counted_by_kind_and_action_and_the_age_grows_at_scrape_time() {
    let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
    let now = Arc::new(Mutex::new(t0));
    let clock = {
        let now = now.clone();
        Clock::from_fn(move || *now.lock().unwrap())
    };
    let health = SourceHealth::with_clock(clock.clone());
    let mut registry = Registry::default();
    let metrics = SourceMetrics::register("manifests", health.clone(), clock, &mut registry);
    let text = scrape(&registry);
    assert!(has(&text, "source_synced 0"), "{text}");
    assert!(has(&text, "source_connected 0"), "{text}");
    assert!(!text.contains("last_update"), "no update yet, no time: {text}");

    let (sink, mut stream) = EventSink::detached(16);
    let sink = sink.counted(metrics);
    health.connected();
    sink.send(SourceEvent::Apply(build::service("default", "web").object())).await.unwrap();
    sink.send(SourceEvent::Apply(build::slice("default", "web-1", "web").object())).await.unwrap();
    sink.send(SourceEvent::Apply(build::node("n1").object())).await.unwrap();
    sink.send(SourceEvent::Synced).await.unwrap();
    *now.lock().unwrap() += Duration::from_secs(30);
    let key = ObjectKey { kind: ObjectKind::Service, namespace: "default".into(), name: "web".into() };
    sink.send(SourceEvent::Delete(key)).await.unwrap();
    *now.lock().unwrap() += Duration::from_secs(12);
    let mut received = Vec::new();
    assert_eq!(stream.recv_many(&mut received, 16).await, 5, "the events still reach the stream");

    let text = scrape(&registry);
    let events = |kind: &str, action: &str| {
        let line = format!("source_events_total{{source=\"manifests\",kind=\"{kind}\",action=\"{action}\"}}");
        text.lines().find_map(|l| l.strip_prefix(line.as_str())).map(|v| v.trim().to_string())
    };
    assert_eq!(events("Service", "apply").as_deref(), Some("1"), "{text}");
    assert_eq!(events("EndpointSlice", "apply").as_deref(), Some("1"));
    assert_eq!(events("Node", "apply").as_deref(), Some("1"));
    assert_eq!(events("Service", "delete").as_deref(), Some("1"));
    assert_eq!(events("Endpoints", "apply").as_deref(), Some("0"));
    assert!(has(&text, "source_synced 1"), "{text}");
    assert!(has(&text, "source_connected 1"), "{text}");
    assert!(has(&text, "source_last_update_timestamp_seconds 1000030.0"), "the delete's time: {text}");
    assert!(has(&text, "source_last_update_age_seconds 12.0"), "{text}");
    health.disconnected("connection refused");
    assert!(has(&scrape(&registry), "source_connected 0"));
}

#[test]
fn the_registry_reports_its_newest_generation_and_services() {
    let mut state = crate::registry::RegistryState::new(&RegistryConfig::default());
    state.apply(SourceEvent::Apply(build::service("default", "web").object()));
    state.apply(SourceEvent::Apply(build::service("default", "db").object()));
    let (tx, rx) = tokio::sync::watch::channel(Arc::new(state.take_generation()));
    let mut registry = Registry::default();
    register_registry(rx, &mut registry);
    let text = scrape(&registry);
    let generation = tx.borrow().generation;
    assert!(has(&text, &format!("registry_generation {generation}")), "{text}");
    assert!(has(&text, "registry_services 2"), "{text}");
    state.apply(SourceEvent::Delete(ObjectKey {
        kind: ObjectKind::Service,
        namespace: "default".into(),
        name: "db".into(),
    }));
    tx.send_replace(Arc::new(state.take_generation()));
    let text = scrape(&registry);
    assert!(has(&text, &format!("registry_generation {}", generation + 1)), "{text}");
    assert!(has(&text, "registry_services 1"), "{text}");
}

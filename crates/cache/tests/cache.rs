//! The cache between a source and the real registry, on real files.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use edgemesh_cache::{CacheStatus, Origin, Store, relay};
use edgemesh_core::build;
use edgemesh_core::object::{ObjectMeta, ServicePortSpec};
use edgemesh_core::{
    EventSink, Object, Protocol, RegistryHandle, ServiceKey, ServiceObject, Snapshot, SourceEvent, TargetPort,
};
use edgemesh_test_support::registry::{RunningRegistry, start_registry};
use tokio_util::sync::CancellationToken;

fn service(name: &str, port: u16) -> Object {
    Object::Service(ServiceObject {
        meta: ObjectMeta { namespace: "shop".into(), name: name.into(), ..Default::default() },
        ports: vec![ServicePortSpec {
            name: "http".into(),
            protocol: Protocol::Tcp,
            port,
            target_port: TargetPort::Number(8080),
            node_port: None,
            app_protocol: None,
        }],
        service_type: "ClusterIP".into(),
        ..Default::default()
    })
}

/// A registry fed through the cache relay by a source the test drives.
struct Agent {
    source: EventSink,
    snapshots: RegistryHandle,
    status: Arc<CacheStatus>,
    shutdown: CancellationToken,
    relay: tokio::task::JoinHandle<()>,
}

fn start(dir: &Path) -> Agent {
    start_as(dir, "manifests:/test")
}

fn start_as(dir: &Path, source_id: &str) -> Agent {
    let RunningRegistry { sink, snapshots, .. } = start_registry("127.241.0.0/16");
    let (source, upstream) = EventSink::detached(64);
    let status = CacheStatus::new();
    let shutdown = CancellationToken::new();
    let relay = tokio::spawn({
        let (dir, id, status, shutdown) = (dir.to_owned(), source_id.to_owned(), status.clone(), shutdown.clone());
        async move { relay(&dir, &id, upstream, sink, status, shutdown).await }
    });
    Agent { source, snapshots, status, shutdown, relay }
}

impl Agent {
    async fn until(&mut self, what: &str, pred: impl Fn(&Snapshot) -> bool) {
        let r = tokio::time::timeout(Duration::from_secs(1), self.snapshots.wait_for(|s| pred(s))).await;
        assert!(matches!(r, Ok(Ok(_))), "within a second: {what}");
    }

    async fn stop(self) {
        self.shutdown.cancel();
        self.relay.await.unwrap();
    }
}

fn has(s: &Snapshot, name: &str) -> bool {
    s.service(&ServiceKey::new("shop", name)).is_some()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_survives_a_restart_without_the_source_and_is_reconciled_later() {
    let dir = tempfile::tempdir().unwrap();
    let mut a = start(dir.path());
    for name in ["web", "db"] {
        a.source.send(SourceEvent::Apply(service(name, 80))).await.unwrap();
    }
    a.source.send(SourceEvent::Synced).await.unwrap();
    a.until("live state", |s| s.synced && has(s, "web") && has(s, "db")).await;
    assert_eq!(a.status.report().origin, Origin::Live);
    a.source.send(SourceEvent::Apply(service("web", 81))).await.unwrap();
    a.until("a change", |s| s.service(&ServiceKey::new("shop", "web")).is_some_and(|e| e.ports[0].port == 81)).await;
    a.stop().await;

    // Restart; the source never answers: the cache is served at once.
    let mut b = start(dir.path());
    b.until("cached state, synced", |s| s.synced && has(s, "db")).await;
    assert_eq!(b.snapshots.borrow().service(&ServiceKey::new("shop", "web")).unwrap().ports[0].port, 81);
    let report = b.status.report();
    assert_eq!(report.origin, Origin::Cache);
    assert!(report.age_seconds.is_some() && report.describe().contains("from cache"), "{report:?}");

    // The source answers without `db`: it goes, and the state is live.
    b.source.send(SourceEvent::Apply(service("web", 81))).await.unwrap();
    b.source.send(SourceEvent::Apply(service("cart", 82))).await.unwrap();
    b.source.send(SourceEvent::Synced).await.unwrap();
    b.until("reconciled", |s| !has(s, "db") && has(s, "cart") && has(s, "web")).await;
    assert_eq!(b.status.report().origin, Origin::Live);
    b.stop().await;

    let (_, loaded, note) = Store::open(dir.path(), "manifests:/test").unwrap();
    assert!(note.is_none());
    let mut names: Vec<String> = loaded.objects.iter().map(|o| o.key().name).collect();
    names.sort();
    assert_eq!(names, ["cart", "web"], "the reconciliation was written through");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_and_their_peer_ids_survive_a_restart_without_the_source() {
    const PEER: &str = "12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXTN";
    let dir = tempfile::tempdir().unwrap();
    let mut a = start(dir.path());
    a.source.send(SourceEvent::Apply(service("web", 80))).await.unwrap();
    for (name, ip) in [("edge-1", "192.168.1.1"), ("edge-2", "192.168.1.2")] {
        let node = build::node(name).peer_id(PEER).address(ip).object();
        a.source.send(SourceEvent::Apply(node)).await.unwrap();
    }
    a.source.send(SourceEvent::Synced).await.unwrap();
    a.until("live nodes", |s| s.synced && s.node("edge-1").is_some() && s.node("edge-2").is_some()).await;
    a.source.send(SourceEvent::Delete(build::node("edge-2").object().key())).await.unwrap();
    a.until("a deleted node", |s| s.node("edge-2").is_none()).await;
    a.stop().await;

    // Restart; the source never answers: the cached node is served at once.
    let mut b = start(dir.path());
    b.until("cached state, synced", |s| s.synced && has(s, "web")).await;
    let snap = b.snapshots.borrow().clone();
    let node = snap.node("edge-1").expect("the node comes back from the cache");
    assert_eq!(node.peer_id.as_deref(), Some(PEER));
    assert_eq!(node.addresses, vec!["192.168.1.1".parse::<std::net::IpAddr>().unwrap()]);
    assert!(snap.node("edge-2").is_none(), "the deletion was written through");
    assert_eq!(b.status.report().origin, Origin::Cache);

    // The source answers without the node: it goes.
    b.source.send(SourceEvent::Apply(service("web", 80))).await.unwrap();
    b.source.send(SourceEvent::Synced).await.unwrap();
    b.until("reconciled", |s| s.node("edge-1").is_none() && has(s, "web")).await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_truncated_cache_file_is_moved_aside_and_rebuilt() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (store, _, _) = Store::open(dir.path(), "manifests:/test").unwrap();
        let events: Vec<SourceEvent> = (0..200).map(|i| SourceEvent::Apply(service(&format!("s{i}"), 80))).collect();
        store.write(&events).unwrap();
    }
    let file = dir.path().join("cache.redb");
    let len = std::fs::metadata(&file).unwrap().len();
    let f = std::fs::OpenOptions::new().write(true).open(&file).unwrap();
    f.set_len(len / 3).unwrap();
    drop(f);

    let mut a = start(dir.path());
    a.source.send(SourceEvent::Apply(service("web", 80))).await.unwrap();
    a.source.send(SourceEvent::Synced).await.unwrap();
    a.until("the agent works on", |s| s.synced && has(s, "web")).await;
    let report = a.status.report();
    a.stop().await;
    let aside: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("cache.redb.broken-"))
        .collect();
    let problem = report.cache_problem.expect("the truncation is reported");
    assert!(problem.contains("truncated") && problem.contains("moved it to"), "{problem}");
    assert_eq!(aside.len(), 1, "the broken file is kept for inspection");
    let (_, loaded, note) = Store::open(dir.path(), "manifests:/test").unwrap();
    assert!(note.is_none(), "the rebuilt file is healthy: {note:?}");
    assert!(loaded.objects.iter().any(|o| o.key().name == "web"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_that_is_not_a_cache_is_reported_and_replaced() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("cache.redb"), b"this is not a database, just text".repeat(100)).unwrap();
    let (store, loaded, note) = Store::open(dir.path(), "manifests:/test").unwrap();
    let note = note.expect("reported");
    assert!(note.contains("unreadable") && note.contains("moved it to"), "{note}");
    assert!(loaded.objects.is_empty());
    store.write(&[SourceEvent::Apply(service("web", 80))]).unwrap();
}

/// Names of the services in the cache file in `dir`.
fn cached_names(dir: &Path) -> Vec<String> {
    let (_, loaded, note) = Store::open(dir, "manifests:/test").unwrap();
    assert!(note.is_none(), "{note:?}");
    let mut names: Vec<String> = loaded.objects.iter().map(|o| o.key().name).collect();
    names.sort();
    names
}

/// Waits (in paused time: retries come every few seconds) until `pred`
/// holds for the cache status.
async fn until_status(a: &Agent, what: &str, pred: impl Fn(&edgemesh_cache::StateReport) -> bool) {
    let waited = tokio::time::timeout(edgemesh_cache::RETRY_MAX * 3, async {
        while !pred(&a.status.report()) {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    assert!(waited.is_ok(), "waiting for {what}: {:?}", a.status.report());
}

/// `edgemesh_cache_writes_total{result}` as a scrape shows it.
fn writes(a: &Agent, result: &str) -> f64 {
    let mut registry = edgemesh_metrics::AgentRegistry::new("test");
    a.status.register_metrics(registry.edgemesh());
    let text = registry.encode(edgemesh_metrics::Format::Text);
    let series = format!(r#"edgemesh_cache_writes_total{{result="{result}"}}"#);
    edgemesh_test_support::scrape::sample(&text, &series).unwrap_or_else(|| panic!("no {series} in {text}"))
}

#[tokio::test(start_paused = true)]
async fn an_unusable_state_dir_is_served_from_memory_and_recovers_with_the_whole_state() {
    let dir = tempfile::tempdir().unwrap();
    // A file where the state directory should be: it cannot be made.
    let state = dir.path().join("state");
    std::fs::write(&state, "x").unwrap();
    let mut a = start(&state);
    for name in ["web", "db"] {
        a.source.send(SourceEvent::Apply(service(name, 80))).await.unwrap();
    }
    a.source.send(SourceEvent::Synced).await.unwrap();
    a.until("served without a cache", |s| s.synced && has(s, "web") && has(s, "db")).await;
    let report = a.status.report();
    assert!(report.cache_degraded, "{report:?}");
    let error = report.cache_write_error.clone().unwrap();
    assert!(error.contains("state directory") && error.contains(&state.display().to_string()), "{error}");
    assert!(report.describe().starts_with("live; warning: the cache cannot be written"), "{}", report.describe());

    // Changes while the cache cannot be written are served at once.
    a.source.send(SourceEvent::Delete(service("db", 80).key())).await.unwrap();
    a.source.send(SourceEvent::Apply(service("cart", 81))).await.unwrap();
    a.until("changes served from memory", |s| !has(s, "db") && has(s, "cart")).await;
    // Retries keep failing (and are not logged as new failures) while it stays unusable.
    tokio::time::sleep(edgemesh_cache::RETRY_FIRST * 4).await;
    assert!(a.status.report().cache_degraded);
    let failed = writes(&a, "error");
    assert!(failed >= 2.0, "each failed retry is a failed write: {failed}");
    assert_eq!(writes(&a, "ok"), 0.0);

    // Usable again: the next retry writes the whole state, not just what changes next.
    std::fs::remove_file(&state).unwrap();
    until_status(&a, "the cache to recover", |r| !r.cache_degraded).await;
    assert!(a.status.report().cache_write_error.is_none());
    // And writes go through again.
    a.source.send(SourceEvent::Apply(service("api", 82))).await.unwrap();
    a.until("a change after the recovery", |s| has(s, "api")).await;
    // The retry that recovered, then the batch with api.
    until_status(&a, "both writes counted", |_| writes(&a, "ok") == 2.0).await;
    assert!(writes(&a, "error") >= failed);
    a.stop().await;
    assert_eq!(cached_names(&state), ["api", "cart", "web"]);
}

#[tokio::test(start_paused = true)]
async fn a_cache_that_was_read_keeps_its_state_through_a_failed_start_and_recovers() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (store, _, _) = Store::open(dir.path(), "manifests:/test").unwrap();
        let events: Vec<SourceEvent> =
            ["web", "db", "old"].iter().map(|n| SourceEvent::Apply(service(n, 80))).collect();
        store.write(&events).unwrap();
    }
    // Another agent holds the file: it can be read, not written.
    let holder = redb::ReadOnlyDatabase::open(dir.path().join("cache.redb")).unwrap();
    let mut a = start(dir.path());
    a.until("the cached state, from a file it cannot write", |s| s.synced && has(s, "old")).await;
    let report = a.status.report();
    assert!(report.cache_degraded && report.origin == Origin::Cache, "{report:?}");
    // The source answers without `old`, and changes `web`.
    a.source.send(SourceEvent::Apply(service("web", 90))).await.unwrap();
    a.source.send(SourceEvent::Apply(service("db", 80))).await.unwrap();
    a.source.send(SourceEvent::Synced).await.unwrap();
    a.until("reconciled", |s| !has(s, "old") && has(s, "web")).await;

    drop(holder);
    until_status(&a, "the cache to recover", |r| !r.cache_degraded).await;
    a.stop().await;
    assert_eq!(cached_names(dir.path()), ["db", "web"], "the reconciliation is written on recovery");
    let (_, loaded, _) = Store::open(dir.path(), "manifests:/test").unwrap();
    let web = loaded.objects.iter().find(|o| o.key().name == "web").unwrap();
    assert_eq!(web, &service("web", 90));
}

#[test]
fn the_file_of_a_killed_agent_is_read_without_writing_it() {
    let dir = tempfile::tempdir().unwrap();
    let crashed = tempfile::tempdir().unwrap();
    {
        let (store, _, _) = Store::open(dir.path(), "manifests:/test").unwrap();
        store.write(&[SourceEvent::Apply(service("web", 80)), SourceEvent::Apply(service("db", 81))]).unwrap();
        // A copy taken while the file is open is what a kill leaves behind.
        std::fs::copy(dir.path().join("cache.redb"), crashed.path().join("cache.redb")).unwrap();
    }
    let file = crashed.path().join("cache.redb");
    assert!(redb::ReadOnlyDatabase::open(&file).is_err(), "it needs redb's recovery, which writes");
    let before = std::fs::read(&file).unwrap();
    let loaded = Store::read_only(crashed.path(), "manifests:/test").unwrap();
    let mut names: Vec<String> = loaded.objects.iter().map(|o| o.key().name).collect();
    names.sort();
    assert_eq!(names, ["db", "web"]);
    assert!(loaded.saved_at.is_some());
    assert_eq!(std::fs::read(&file).unwrap(), before, "the file is not written");
    let other = Store::read_only(crashed.path(), "kube:in-cluster").unwrap();
    assert!(other.objects.is_empty() && other.replaced_source.as_deref() == Some("manifests:/test"));
}

#[test]
fn another_sources_state_is_dropped_not_served() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (store, _, _) = Store::open(dir.path(), "manifests:/a").unwrap();
        store.write(&[SourceEvent::Apply(build::service("default", "from-a").port("", 80, 80).object())]).unwrap();
    }
    let (_, loaded, _) = Store::open(dir.path(), "manifests:/a").unwrap();
    assert_eq!(loaded.objects.len(), 1, "the same source gets its state back");
    let (_, loaded, note) = Store::open(dir.path(), "kube:http://127.0.0.1:10550").unwrap();
    assert!(loaded.objects.is_empty(), "another source starts empty");
    assert_eq!(loaded.replaced_source.as_deref(), Some("manifests:/a"));
    assert!(note.is_none(), "not a broken file");
}

/// Writes `(key, value)` pairs straight into the cache file's objects table,
/// and its format number, as another agent version would have.
fn write_raw(dir: &Path, format: u64, entries: &[(&str, Vec<u8>)]) {
    use redb::TableDefinition;
    let objects: TableDefinition<&str, &[u8]> = TableDefinition::new("objects");
    let meta: TableDefinition<&str, u64> = TableDefinition::new("meta");
    let db = redb::Database::create(dir.join("cache.redb")).unwrap();
    let txn = db.begin_write().unwrap();
    {
        let mut table = txn.open_table(objects).unwrap();
        for (key, value) in entries {
            table.insert(*key, value.as_slice()).unwrap();
        }
        txn.open_table(meta).unwrap().insert("format", format).unwrap();
    }
    txn.commit().unwrap();
}

#[test]
fn a_json_cache_of_format_1_is_read_after_an_upgrade_and_rewritten_in_binary() {
    let dir = tempfile::tempdir().unwrap();
    let json = serde_json::to_vec(&service("web", 80)).unwrap();
    write_raw(dir.path(), 1, &[("Service/shop/web", json)]);
    {
        let (store, loaded, note) = Store::open(dir.path(), "manifests:/test").unwrap();
        assert!(note.is_none(), "{note:?}");
        assert_eq!(loaded.objects, vec![service("web", 80)], "the offline state survives the upgrade");
        store.write(&[SourceEvent::Apply(service("api", 81))]).unwrap();
    }
    let (_, loaded, note) = Store::open(dir.path(), "manifests:/test").unwrap();
    assert!(note.is_none(), "JSON and binary values side by side: {note:?}");
    assert_eq!(loaded.objects, vec![service("api", 81), service("web", 80)]);
}

#[test]
fn a_value_of_an_unknown_encoding_version_is_refused_and_the_file_rebuilt() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (store, _, _) = Store::open(dir.path(), "manifests:/test").unwrap();
        store.write(&[SourceEvent::Apply(service("web", 80))]).unwrap();
    }
    let mut newer = Vec::new();
    edgemesh_cache::codec::encode(&service("api", 81), &mut newer);
    newer[0] = edgemesh_cache::codec::VERSION + 1;
    write_raw(dir.path(), edgemesh_cache::store::FORMAT, &[("Service/shop/api", newer)]);
    let (_, loaded, note) = Store::open(dir.path(), "manifests:/test").unwrap();
    let note = note.expect("reported");
    assert!(
        note.contains(&format!(
            "entry \"Service/shop/api\" does not decode: value has encoding version {}",
            edgemesh_cache::codec::VERSION + 1
        )) && note.contains("moved it to"),
        "{note}"
    );
    assert!(loaded.objects.is_empty(), "nothing half-read is served");
}

#[test]
fn a_newer_file_format_is_refused_with_the_formats_this_agent_reads() {
    let dir = tempfile::tempdir().unwrap();
    write_raw(dir.path(), 9, &[]);
    let (_, _, note) = Store::open(dir.path(), "manifests:/test").unwrap();
    let note = note.expect("reported");
    assert!(note.contains("cache format 9, this agent reads formats 1 and 2"), "{note}");
}

#[test]
fn within_one_batch_the_last_event_for_an_object_wins() {
    let dir = tempfile::tempdir().unwrap();
    let gone = |name: &str| SourceEvent::Delete(service(name, 80).key());
    {
        let (store, _, _) = Store::open(dir.path(), "manifests:/test").unwrap();
        store.write(&[SourceEvent::Apply(service("old", 80))]).unwrap();
        store
            .write(&[
                SourceEvent::Apply(service("web", 80)),
                gone("old"),
                SourceEvent::Apply(service("api", 80)),
                SourceEvent::Apply(service("web", 81)),
                gone("api"),
                gone("db"),
                SourceEvent::Apply(service("db", 82)),
                SourceEvent::Synced,
            ])
            .unwrap();
    }
    let (_, loaded, _) = Store::open(dir.path(), "manifests:/test").unwrap();
    assert_eq!(loaded.objects, vec![service("db", 82), service("web", 81)]);
}

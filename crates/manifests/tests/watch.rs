//! The polling source against real files in temporary directories, checked
//! through a real registry (and, for "reported once", the log).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use edgemesh_core::{Connection, RegistryHandle, ServiceKey, Snapshot, SourceHealth};
use edgemesh_manifests::ManifestSource;
use edgemesh_test_support::registry::{RunningRegistry, start_registry};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::instrument::WithSubscriber;
use tracing::{Level, Subscriber};
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};

const POLL: Duration = Duration::from_millis(25);
const WAIT: Duration = Duration::from_secs(5);

// ---------------------------------------------------------------------------
// Harness

/// The log, as structured records, with a counter to wait on.
#[derive(Clone)]
struct Logs {
    records: Arc<Mutex<Vec<Record>>>,
    count: Arc<watch::Sender<usize>>,
}

#[derive(Clone, Debug)]
struct Record {
    level: Level,
    fields: BTreeMap<String, String>,
}

impl Record {
    fn field(&self, name: &str) -> &str {
        self.fields.get(name).map_or("", String::as_str)
    }
}

impl Logs {
    fn new() -> Self {
        Self { records: Arc::default(), count: Arc::new(watch::channel(0).0) }
    }

    fn matching(&self, pred: impl Fn(&Record) -> bool) -> Vec<Record> {
        self.records.lock().unwrap().iter().filter(|r| pred(r)).cloned().collect()
    }

    /// Waits until some record matches.
    async fn wait_for(&self, what: &str, pred: impl Fn(&Record) -> bool) -> Record {
        let mut rx = self.count.subscribe();
        let found = tokio::time::timeout(WAIT, rx.wait_for(|_| !self.matching(&pred).is_empty())).await;
        assert!(found.is_ok(), "timed out waiting for log: {what}; log: {:#?}", self.records.lock().unwrap());
        self.matching(&pred).remove(0)
    }
}

impl<S: Subscriber> Layer<S> for Logs {
    fn on_event(&self, event: &tracing::Event<'_>, _: Context<'_, S>) {
        struct Fields(BTreeMap<String, String>);
        impl tracing::field::Visit for Fields {
            fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
                self.0.insert(field.name().to_owned(), format!("{value:?}"));
            }
            fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
                self.0.insert(field.name().to_owned(), value.to_owned());
            }
        }
        let mut fields = Fields(BTreeMap::new());
        event.record(&mut fields);
        self.records.lock().unwrap().push(Record { level: *event.metadata().level(), fields: fields.0 });
        self.count.send_modify(|n| *n += 1);
    }
}

/// A registry fed by a `ManifestSource` watching `dir`.
struct Agent {
    snapshots: RegistryHandle,
    shutdown: CancellationToken,
    source: JoinHandle<()>,
    registry: JoinHandle<()>,
    logs: Logs,
    health: Arc<SourceHealth>,
}

fn start(dir: &Path) -> Agent {
    let RunningRegistry { sink, snapshots, task: registry } = start_registry("127.251.0.0/16");
    let logs = Logs::new();
    let subscriber = tracing_subscriber::registry().with(logs.clone());
    let shutdown = CancellationToken::new();
    let source = ManifestSource::new(dir, POLL);
    let health = source.health().clone();
    let source = tokio::spawn(source.run(sink, shutdown.clone()).with_subscriber(subscriber));
    Agent { snapshots, shutdown, source, registry, logs, health }
}

impl Agent {
    async fn wait(&mut self, what: &str, pred: impl FnMut(&Arc<Snapshot>) -> bool) -> Arc<Snapshot> {
        self.wait_within(WAIT, what, pred).await
    }

    async fn wait_within(
        &mut self,
        limit: Duration,
        what: &str,
        pred: impl FnMut(&Arc<Snapshot>) -> bool,
    ) -> Arc<Snapshot> {
        let waited = tokio::time::timeout(limit, self.snapshots.wait_for(pred)).await.map(|r| r.map(|s| s.clone()));
        match waited {
            Ok(Ok(snap)) => snap,
            Ok(Err(_)) => panic!("registry stopped while waiting for: {what}"),
            Err(_) => {
                let snap = self.snapshots.borrow().clone();
                let names: Vec<_> = snap.services().map(|s| s.key.to_string()).collect();
                panic!("timed out waiting for: {what}; synced={} services={names:?}", snap.synced)
            }
        }
    }

    async fn synced(&mut self) -> Arc<Snapshot> {
        self.wait("initial sync", |s| s.synced).await
    }

    async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(WAIT, self.source).await.expect("source stops on shutdown").unwrap();
        self.registry.abort();
    }
}

fn key(name: &str) -> ServiceKey {
    ServiceKey::new("default", name)
}

fn has(s: &Snapshot, name: &str) -> bool {
    s.service(&key(name)).is_some()
}

fn port_of(s: &Snapshot, name: &str) -> Option<u16> {
    s.service(&key(name)).map(|e| e.ports[0].port)
}

/// Writes atomically (temporary dotfile, then rename), as tools should.
fn write(dir: &Path, name: &str, text: &str) {
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, dir.join(name)).unwrap();
}

fn svc(name: &str, port: u16) -> String {
    format!("---\napiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\nspec:\n  ports:\n  - port: {port}\n")
}

fn slice(name: &str, service: &str, ip: &str, port: u16) -> String {
    format!(
        "---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {name}\n  labels:\n    kubernetes.io/service-name: {service}\naddressType: IPv4\nendpoints:\n- addresses: [\"{ip}\"]\n  nodeName: node-a\nports:\n- port: {port}\n"
    )
}

fn warnings_for(logs: &Logs, file: &str) -> Vec<Record> {
    logs.matching(|r| r.level == Level::WARN && r.field("file").ends_with(file))
}

// ---------------------------------------------------------------------------
// Tests

#[tokio::test]
async fn initial_load_then_synced() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "web.yaml", &format!("{}{}", svc("web", 80), slice("web-1", "web", "10.0.0.1", 8080)));
    write(dir.path(), "db.yml", &svc("db", 5432));
    // Not manifests: dotfiles, other extensions, subdirectories.
    std::fs::write(dir.path().join(".hidden.yaml"), svc("hidden", 1)).unwrap();
    std::fs::write(dir.path().join("notes.txt"), svc("notes", 1)).unwrap();
    std::fs::create_dir(dir.path().join("sub.yaml")).unwrap();
    std::fs::write(dir.path().join("sub.yaml/inner.yaml"), svc("inner", 1)).unwrap();

    let mut agent = start(dir.path());
    let snap = agent.synced().await;
    // Everything arrives before Synced, so the first synced snapshot is complete.
    let names: Vec<_> = snap.services().map(|s| s.key.name().to_owned()).collect();
    assert_eq!(names, vec!["db", "web"]);
    let web = snap.service(&key("web")).unwrap();
    assert_eq!(web.ports[0].backends[0].addr, "10.0.0.1:8080".parse().unwrap());
    assert!(web.vip.is_some());
    assert!(agent.logs.matching(|r| r.level == Level::WARN).is_empty(), "no warnings for a good directory");
    agent.stop().await;
}

#[tokio::test]
async fn added_file_appears_within_a_second() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "a.yaml", &svc("a", 80));
    let mut agent = start(dir.path());
    agent.synced().await;
    write(dir.path(), "b.yaml", &svc("b", 81));
    let snap = agent.wait_within(Duration::from_secs(1), "b.yaml loaded", |s| has(s, "b")).await;
    assert_eq!(port_of(&snap, "b"), Some(81));
    agent.stop().await;
}

#[tokio::test]
async fn changing_one_object_changes_only_that_service() {
    let dir = tempfile::tempdir().unwrap();
    let text = |b_port| format!("{}{}{}", svc("a", 80), svc("b", b_port), svc("c", 82));
    write(dir.path(), "all.yaml", &text(81));
    write(dir.path(), "other.yaml", &svc("d", 83));
    let mut agent = start(dir.path());
    let before = agent.wait("all loaded", |s| s.synced && s.len() == 4).await;

    write(dir.path(), "all.yaml", &text(91));
    let after = agent.wait("b changed", |s| port_of(s, "b") == Some(91)).await;
    let mut changed = after.changes_since(before.generation).expect("changelog reaches back");
    changed.dedup();
    assert_eq!(changed, vec![key("b")]);

    // Same content rewritten (new inode, new mtime): nothing changes at all.
    let generation = after.generation;
    write(dir.path(), "all.yaml", &text(91));
    write(dir.path(), "other.yaml", &svc("d", 93)); // a change to wait for
    let snap = agent.wait("d changed", |s| port_of(s, "d") == Some(93)).await;
    let mut changed = snap.changes_since(generation).unwrap();
    changed.dedup();
    assert_eq!(changed, vec![key("d")]);
    agent.stop().await;
}

#[tokio::test]
async fn in_place_writes_are_picked_up() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.yaml");
    std::fs::write(&path, svc("a", 80)).unwrap();
    let mut agent = start(dir.path());
    agent.synced().await;
    // Same size, in place: caught by mtime (or, within the racy window, by content).
    std::fs::write(&path, svc("a", 81)).unwrap();
    agent.wait("a rewritten", |s| port_of(s, "a") == Some(81)).await;
    std::fs::write(&path, svc("a", 82)).unwrap();
    agent.wait("a rewritten again", |s| port_of(s, "a") == Some(82)).await;
    agent.stop().await;
}

#[tokio::test]
async fn removed_file_removes_its_services() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "a.yaml", &format!("{}{}", svc("a1", 80), svc("a2", 80)));
    write(dir.path(), "b.yaml", &svc("b", 80));
    let mut agent = start(dir.path());
    agent.wait("loaded", |s| s.synced && s.len() == 3).await;
    std::fs::remove_file(dir.path().join("a.yaml")).unwrap();
    let snap = agent.wait("a.yaml's services gone", |s| !has(s, "a1") && !has(s, "a2")).await;
    assert!(has(&snap, "b"));
    agent.stop().await;
}

#[tokio::test]
async fn broken_file_keeps_its_last_good_objects_and_is_reported_once() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "a.yaml", &format!("{}{}", svc("a1", 80), svc("a2", 80)));
    write(dir.path(), "b.yaml", &svc("b", 80));
    let mut agent = start(dir.path());
    agent.wait("loaded", |s| s.synced && s.len() == 3).await;

    // Broken YAML over a good file.
    write(dir.path(), "a.yaml", "apiVersion: v1\nkind: Service\nmetadata:\n  name: [a1\n");
    let warning =
        agent.logs.wait_for("a.yaml reported", |r| r.level == Level::WARN && r.field("file").ends_with("a.yaml")).await;
    assert_eq!(warning.field("line"), "4");
    assert!(warning.field("reason").contains("invalid YAML"), "{warning:?}");

    // Other files keep working; a.yaml's objects stay.
    write(dir.path(), "b.yaml", &svc("b", 81));
    let snap = agent.wait("b changed", |s| port_of(s, "b") == Some(81)).await;
    assert_eq!((port_of(&snap, "a1"), port_of(&snap, "a2")), (Some(80), Some(80)));

    // Touch the broken file (new mtime, same content) and change b again:
    // once b's change is in, a.yaml has been looked at again.
    let f = std::fs::File::options().append(true).open(dir.path().join("a.yaml")).unwrap();
    f.set_modified(SystemTime::now() - Duration::from_secs(60)).unwrap();
    drop(f);
    write(dir.path(), "b.yaml", &svc("b", 82));
    agent.wait("b changed again", |s| port_of(s, "b") == Some(82)).await;
    assert_eq!(
        warnings_for(&agent.logs, "a.yaml").len(),
        1,
        "reported once: {:#?}",
        warnings_for(&agent.logs, "a.yaml")
    );

    // An invalid object is a new problem: reported, with the field's line.
    write(dir.path(), "a.yaml", &format!("{}{}", svc("a1", 80), svc("a2", 0)));
    let warning = agent
        .logs
        .wait_for("invalid port reported", |r| {
            r.field("file").ends_with("a.yaml") && r.field("reason").contains("out of range")
        })
        .await;
    assert_eq!(warning.field("line"), "16");
    assert!(warning.field("reason").contains("Service default/a2: spec.ports[0].port 0"), "{warning:?}");
    assert!(has(&agent.snapshots.borrow(), "a2"));

    // Fixed: its new objects apply normally (a2 is gone from it now).
    write(dir.path(), "a.yaml", &svc("a1", 90));
    let snap = agent.wait("a.yaml fixed", |s| port_of(s, "a1") == Some(90) && !has(s, "a2")).await;
    assert_eq!(port_of(&snap, "b"), Some(82));
    agent
        .logs
        .wait_for("recovery logged", |r| r.level == Level::INFO && r.field("message").contains("valid again"))
        .await;
    assert_eq!(warnings_for(&agent.logs, "a.yaml").len(), 2);
    agent.stop().await;
}

#[tokio::test]
async fn broken_new_file_does_not_block_sync_or_others() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "bad.yaml", "kind: Service\napiVersion: v1\nmetadata: {name: Bad}\n");
    write(dir.path(), "good.yaml", &svc("good", 80));
    let mut agent = start(dir.path());
    let snap = agent.synced().await;
    assert!(has(&snap, "good"));
    assert_eq!(snap.len(), 1);
    let w = warnings_for(&agent.logs, "bad.yaml");
    assert_eq!(w.len(), 1);
    assert_eq!(w[0].field("line"), "3");
    agent.stop().await;
}

/// Long enough for several polls: to see that something does *not* happen.
const SEVERAL_POLLS: Duration = POLL.saturating_mul(8);

fn dir_warnings(logs: &Logs, dir: &Path) -> Vec<Record> {
    logs.matching(|r| r.level == Level::WARN && r.field("dir") == dir.display().to_string())
}

#[tokio::test]
async fn a_missing_directory_has_not_answered_and_keeps_the_last_state() {
    let parent = tempfile::tempdir().unwrap();
    let dir: PathBuf = parent.path().join("manifests");
    let mut agent = start(&dir);
    let warned = agent.logs.wait_for("the missing directory reported", |r| r.level == Level::WARN).await;
    assert!(warned.field("reason").contains("does not exist"), "{warned:?}");
    assert_eq!(warned.field("dir"), dir.display().to_string());
    // A missing directory is not an empty one: the source has not answered.
    tokio::time::sleep(SEVERAL_POLLS).await;
    assert!(!agent.snapshots.borrow().synced, "a missing directory is no answer");
    assert_eq!(dir_warnings(&agent.logs, &dir).len(), 1, "reported once, not every poll");
    let health = agent.health.report();
    assert_eq!(health.connection, Connection::Disconnected);
    let error = health.last_error.unwrap();
    assert!(error.contains(&dir.display().to_string()) && error.contains("does not exist"), "{error}");

    std::fs::create_dir(&dir).unwrap();
    write(&dir, "a.yaml", &svc("a", 80));
    write(&dir, "b.yaml", &svc("b", 80));
    agent.wait("a and b loaded, synced", |s| s.synced && has(s, "a") && has(s, "b")).await;
    assert_eq!(agent.health.report().connection, Connection::Connected);

    // Moved away while running: the last state read stays in force.
    let aside = parent.path().join("aside");
    std::fs::rename(&dir, &aside).unwrap();
    let gone = |r: &Record| r.level == Level::WARN && r.field("message").contains("keeping the state last read");
    agent.logs.wait_for("the lost directory reported", gone).await;
    tokio::time::sleep(SEVERAL_POLLS).await;
    let snap = agent.snapshots.borrow().clone();
    assert!(has(&snap, "a") && has(&snap, "b"), "the state stays while the directory is gone");
    assert_eq!(agent.health.report().connection, Connection::Disconnected);
    assert_eq!(dir_warnings(&agent.logs, &dir).len(), 2, "one warning per outage");

    // Back with one file fewer: its content is the truth again.
    std::fs::remove_file(aside.join("a.yaml")).unwrap();
    std::fs::rename(&aside, &dir).unwrap();
    let snap = agent.wait("a gone", |s| !has(s, "a")).await;
    assert!(has(&snap, "b"));
    assert_eq!(agent.health.report().connection, Connection::Connected);
    assert_eq!(agent.logs.matching(|r| r.field("message").contains("content is the state now")).len(), 2);

    // An existing empty directory is authoritative: everything goes.
    std::fs::remove_file(dir.join("b.yaml")).unwrap();
    agent.wait("b gone", |s| s.is_empty()).await;
    agent.stop().await;
}

#[tokio::test]
async fn an_unreadable_directory_keeps_the_last_state() {
    let parent = tempfile::tempdir().unwrap();
    let dir: PathBuf = parent.path().join("manifests");
    std::fs::create_dir(&dir).unwrap();
    write(&dir, "a.yaml", &svc("a", 80));
    let mut agent = start(&dir);
    agent.wait("a loaded", |s| s.synced && has(s, "a")).await;

    // A file where the directory was: read_dir fails with ENOTDIR (root
    // ignores permission bits, so this is the error a test can make).
    let aside = parent.path().join("aside");
    std::fs::rename(&dir, &aside).unwrap();
    std::fs::write(&dir, "not a directory").unwrap();
    let warned = agent.logs.wait_for("the unreadable directory reported", |r| r.level == Level::WARN).await;
    assert!(warned.field("reason").to_lowercase().contains("not a directory"), "{warned:?}");
    tokio::time::sleep(SEVERAL_POLLS).await;
    assert!(has(&agent.snapshots.borrow(), "a"), "the state stays");
    let error = agent.health.report().last_error.unwrap();
    assert!(error.contains("cannot read the manifest directory"), "{error}");

    std::fs::remove_file(&dir).unwrap();
    std::fs::rename(&aside, &dir).unwrap();
    write(&dir, "b.yaml", &svc("b", 80));
    agent.wait("b loaded", |s| has(s, "a") && has(s, "b")).await;
    assert_eq!(agent.health.report().connection, Connection::Connected);
    agent.stop().await;
}

#[tokio::test]
async fn empty_directory_syncs() {
    let dir = tempfile::tempdir().unwrap();
    let mut agent = start(dir.path());
    assert!(agent.synced().await.is_empty());
    write(dir.path(), "a.yaml", &svc("a", 80));
    agent.wait("a loaded", |s| has(s, "a")).await;
    agent.stop().await;
}

#[tokio::test]
async fn same_object_in_two_files_falls_back_instead_of_vanishing() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "10-base.yaml", &svc("web", 80));
    write(dir.path(), "20-override.yaml", &svc("web", 8080));
    let mut agent = start(dir.path());
    let snap = agent.synced().await;
    assert_eq!(port_of(&snap, "web"), Some(8080), "the file that sorts last wins");
    assert!(
        !agent
            .logs
            .matching(|r| r.level == Level::WARN && r.field("message").contains("more than one file"))
            .is_empty()
    );

    std::fs::remove_file(dir.path().join("20-override.yaml")).unwrap();
    agent.wait("base version back", |s| port_of(s, "web") == Some(80)).await;
    std::fs::remove_file(dir.path().join("10-base.yaml")).unwrap();
    agent.wait("gone with its last file", |s| !has(s, "web")).await;
    agent.stop().await;
}

/// A ConfigMap volume: `name -> ..data/name`, `..data -> ..<timestamp>`,
/// updated by swapping `..data` atomically.
#[cfg(unix)]
#[tokio::test]
async fn configmap_symlink_swap_is_followed() {
    use std::os::unix::fs::symlink;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::create_dir(d.join("..2024_01_01")).unwrap();
    std::fs::write(d.join("..2024_01_01/services.yaml"), svc("web", 80)).unwrap();
    symlink("..2024_01_01", d.join("..data")).unwrap();
    symlink("..data/services.yaml", d.join("services.yaml")).unwrap();

    let mut agent = start(d);
    let snap = agent.synced().await;
    assert_eq!(port_of(&snap, "web"), Some(80));
    assert_eq!(snap.len(), 1, "the timestamped directory is not read");

    std::fs::create_dir(d.join("..2024_01_02")).unwrap();
    std::fs::write(d.join("..2024_01_02/services.yaml"), svc("web", 81)).unwrap();
    symlink("..2024_01_02", d.join("..data_tmp")).unwrap();
    std::fs::rename(d.join("..data_tmp"), d.join("..data")).unwrap();
    std::fs::remove_dir_all(d.join("..2024_01_01")).unwrap();
    agent.wait("swap followed", |s| port_of(s, "web") == Some(81)).await;
    agent.stop().await;
}

#[tokio::test]
async fn source_stops_when_the_registry_is_gone() {
    let dir = tempfile::tempdir().unwrap();
    let mut agent = start(dir.path());
    agent.synced().await;
    agent.registry.abort();
    let _ = (&mut agent.registry).await;
    write(dir.path(), "a.yaml", &svc("a", 80));
    tokio::time::timeout(WAIT, &mut agent.source).await.expect("source notices at its next event").unwrap();
}

/// A sanity check of the bulk path: 10,000 services and their slices in a
/// few files (timing belongs to benchmarks: see `examples/load.rs`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_services_in_a_few_files() {
    let dir = tempfile::tempdir().unwrap();
    for f in 0..4 {
        let mut text = String::new();
        for i in (f * 2500)..((f + 1) * 2500) {
            text.push_str(&svc(&format!("svc-{i}"), 80));
            text.push_str(&slice(&format!("svc-{i}-x"), &format!("svc-{i}"), "10.1.0.1", 8080));
        }
        write(dir.path(), &format!("part-{f}.yaml"), &text);
    }
    let mut agent = start(dir.path());
    let snap = tokio::time::timeout(Duration::from_secs(120), agent.snapshots.wait_for(|s| s.synced))
        .await
        .expect("loads")
        .unwrap()
        .clone();
    assert_eq!(snap.len(), 10_000);
    assert_eq!(snap.service(&key("svc-9999")).unwrap().ports[0].backends.len(), 1);
    agent.stop().await;
}

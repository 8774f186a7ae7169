//! Load-time check: generates N services (each with an EndpointSlice) in a
//! few manifest files, and measures how long a `ManifestSource` takes to
//! deliver them all to a registry, then how long one change takes and what
//! an idle poll costs.
//!
//! ```text
//! cargo run --release -p edgemesh-manifests --example load -- [services] [files]
//! ```
//! Defaults: 100,000 services in 10 files.

use std::time::{Duration, Instant};

use edgemesh_core::ServiceKey;
use edgemesh_manifests::ManifestSource;
use edgemesh_test_support::registry::{RunningRegistry, start_registry};
use tokio_util::sync::CancellationToken;

const POLL: Duration = Duration::from_millis(200);

fn main() {
    let mut args = std::env::args().skip(1);
    let services: usize = args.next().map_or(100_000, |a| a.parse().expect("services: a number"));
    let files: usize = args.next().map_or(10, |a| a.parse().expect("files: a number")).max(1);
    let dir = tempfile::tempdir().expect("temporary directory");

    let started = Instant::now();
    let mut bytes = 0;
    let per_file = services.div_ceil(files);
    for f in 0..files {
        let mut text = String::new();
        for i in (f * per_file)..((f + 1) * per_file).min(services) {
            text.push_str(&objects(i, 80));
        }
        bytes += text.len();
        std::fs::write(dir.path().join(format!("part-{f:04}.yaml")), text).expect("write");
    }
    println!("generated {services} services in {files} files ({} MiB) in {:?}", bytes >> 20, started.elapsed());

    // The parser alone, file by file (each large file on several threads).
    let started = Instant::now();
    let mut parsed = 0;
    for f in 0..files {
        let text = std::fs::read_to_string(dir.path().join(format!("part-{f:04}.yaml"))).expect("read");
        parsed += edgemesh_manifests::parse_manifest(&text).expect("valid").len();
    }
    println!("parsed {parsed} objects in {:?}", started.elapsed());

    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    let load = rt.block_on(async {
        let RunningRegistry { sink, mut snapshots, .. } = start_registry("10.128.0.0/10");
        let shutdown = CancellationToken::new();

        let started = Instant::now();
        tokio::spawn(ManifestSource::new(dir.path(), POLL).run(sink, shutdown.clone()));
        let snap = snapshots.wait_for(|s| s.synced).await.expect("registry").clone();
        let load = started.elapsed();
        println!("loaded {} services (synced) in {load:?}", snap.len());
        assert_eq!(snap.len(), services);

        // One service changes in one file: rewrite that file.
        let started = Instant::now();
        let mut text = String::new();
        for i in 0..per_file.min(services) {
            text.push_str(&objects(i, if i == 0 { 81 } else { 80 }));
        }
        std::fs::write(dir.path().join("part-0000.yaml"), text).expect("write");
        let first = ServiceKey::new("default", "svc-0");
        snapshots.wait_for(|s| s.service(&first).is_some_and(|e| e.ports[0].port == 81)).await.expect("registry");
        println!(
            "one change in a file of {} services applied in {:?} (poll interval {POLL:?}, two polls to settle)",
            per_file.min(services),
            started.elapsed()
        );
        shutdown.cancel();
        load
    });

    // What an idle poll does: list the directory and stat every file.
    let started = Instant::now();
    let rounds = 100;
    for _ in 0..rounds {
        for entry in std::fs::read_dir(dir.path()).expect("read_dir") {
            let _ = std::fs::metadata(entry.expect("entry").path());
        }
    }
    println!("an idle poll of {files} files costs about {:?}", started.elapsed() / rounds);
    if load > Duration::from_secs(5) {
        println!("WARNING: loading took more than 5 s");
    }
}

fn objects(i: usize, port: u16) -> String {
    format!(
        "---\napiVersion: v1\nkind: Service\nmetadata:\n  name: svc-{i}\n  namespace: default\n  labels:\n    app: svc-{i}\nspec:\n  type: ClusterIP\n  ports:\n  - name: http\n    port: {port}\n    protocol: TCP\n    targetPort: 8080\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: svc-{i}-abcde\n  namespace: default\n  labels:\n    kubernetes.io/service-name: svc-{i}\naddressType: IPv4\nendpoints:\n- addresses: [\"10.{}.{}.{}\"]\n  conditions:\n    ready: true\n  nodeName: node-{}\nports:\n- name: http\n  port: 8080\n  protocol: TCP\n",
        (i >> 16) & 255,
        (i >> 8) & 255,
        i & 255,
        i % 50
    )
}

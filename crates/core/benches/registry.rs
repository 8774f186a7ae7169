//! Registry hot paths: applying one change among many services, and
//! publishing the snapshot. The performance issue wants under 1 ms of CPU
//! per change at 100,000 services, with no work that grows with the count.
//! The agent runs on `n1`, so every service has one backend on this node
//! (its own address) and one elsewhere: changes maintain the index behind
//! `Snapshot::serves_endpoint`, the tunnel's per-connection check.

use std::hint::black_box;

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use edgemesh_core::build::{service, slice};
use edgemesh_core::registry::RegistryState;
use edgemesh_core::{LbStrategy, Protocol, RegistryConfig, SourceEvent};

/// The address of service `i`'s backend on this node.
fn local_ip(i: usize) -> String {
    format!("10.{}.{}.{}", 1 + i / 65536, (i / 256) % 256, i % 256)
}

fn loaded(n: usize) -> RegistryState {
    let mut st = RegistryState::new(&RegistryConfig {
        vip_cidr: "10.128.0.0/9".parse().unwrap(),
        default_strategy: LbStrategy::RoundRobin,
        node_name: "n1".into(),
        ..Default::default()
    });
    for i in 0..n {
        let name = format!("svc-{i}");
        st.apply(SourceEvent::Apply(service("bench", &name).port("http", 80, 8080).object()));
        st.apply(SourceEvent::Apply(
            slice("bench", &format!("{name}-x"), &name)
                .endpoint(&local_ip(i), "n1")
                .endpoint("10.0.0.2", "n2")
                .port("http", 8080)
                .object(),
        ));
    }
    st.take_generation();
    st
}

fn one_change(c: &mut Criterion) {
    for n in [1_000usize, 100_000] {
        let mut st = loaded(n);
        let mut flip = false;
        c.bench_function(&format!("registry/apply_one_endpoint_change/{n}"), |b| {
            b.iter(|| {
                flip = !flip;
                let ep = if flip { "10.0.0.3" } else { "10.0.0.4" };
                st.apply(SourceEvent::Apply(
                    slice("bench", "svc-7-x", "svc-7")
                        .endpoint(&local_ip(7), "n1")
                        .endpoint(ep, "n2")
                        .port("http", 8080)
                        .object(),
                ));
                black_box(st.take_generation());
            })
        });
    }
}

fn snapshot_lookup(c: &mut Criterion) {
    let mut st = loaded(100_000);
    let snap = st.take_generation();
    let key = edgemesh_core::ServiceKey::new("bench", "svc-77777");
    c.bench_function("snapshot/service_lookup/100000", |b| b.iter(|| black_box(snap.service(black_box(&key)))));
    let local = format!("{}:8080", local_ip(77_777)).parse().unwrap();
    assert!(snap.serves_endpoint(local, Protocol::Tcp));
    c.bench_function("snapshot/serves_endpoint/100000", |b| {
        b.iter(|| black_box(snap.serves_endpoint(black_box(local), Protocol::Tcp)))
    });
    c.bench_function("snapshot/clone/100000", |b| {
        b.iter_batched(|| (), |_| black_box(snap.clone()), BatchSize::SmallInput)
    });
}

criterion_group!(benches, one_change, snapshot_lookup);
criterion_main!(benches);

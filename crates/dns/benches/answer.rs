//! The DNS hot path without sockets: one query in, one answer out, against
//! snapshots of 1,000 and 100,000 services. The performance issue wants the
//! same speed at 100,000 services as at 1,000.

use std::hint::black_box;
use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};
use edgemesh_core::build::{service, slice};
use edgemesh_core::registry::RegistryState;
use edgemesh_core::{LbStrategy, RegistryConfig, SourceEvent};
use edgemesh_dns::cache::Cache;
use edgemesh_dns::cluster::Zone;
use edgemesh_dns::handler::{Handler, Step, Transport};
use hickory_proto::op::{Message, Query};
use hickory_proto::rr::{Name, RecordType};
use tokio::sync::watch;

/// A handler over a snapshot of `services` services, and the sender that
/// keeps its snapshot channel open.
fn handler(services: usize) -> (Handler, watch::Sender<Arc<edgemesh_core::Snapshot>>) {
    let mut st = RegistryState::new(&RegistryConfig {
        vip_cidr: "10.128.0.0/9".parse().unwrap(),
        default_strategy: LbStrategy::RoundRobin,
        ..Default::default()
    });
    for i in 0..services {
        let name = format!("svc-{i}");
        st.apply(SourceEvent::Apply(service("bench", &name).port("http", 80, 8080).object()));
        st.apply(SourceEvent::Apply(
            slice("bench", &format!("{name}-x"), &name).endpoint("10.0.0.1", "n1").port("http", 8080).object(),
        ));
    }
    let mut snap = st.take_generation();
    snap.synced = true;
    let (tx, rx) = watch::channel(Arc::new(snap));
    (Handler::new(Zone::new("cluster.local", 5).unwrap(), rx, None, Cache::new(0)), tx)
}

fn query(name: &str, qtype: RecordType) -> Vec<u8> {
    let mut m = Message::query();
    m.metadata.id = 4242;
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(Name::from_ascii(name).unwrap(), qtype));
    m.to_vec().unwrap()
}

fn answer(c: &mut Criterion) {
    for n in [1_000usize, 100_000] {
        let (h, _snapshots) = handler(n);
        let cases = [
            ("a", query("svc-777.bench.svc.cluster.local.", RecordType::A)),
            ("srv", query("_http._tcp.svc-777.bench.svc.cluster.local.", RecordType::SRV)),
            ("nxdomain", query("nosuch.bench.svc.cluster.local.", RecordType::A)),
        ];
        for (label, packet) in cases {
            let mut out = Vec::with_capacity(512);
            c.bench_function(&format!("dns/answer/{label}/{n}"), |b| {
                b.iter(|| {
                    out.clear();
                    let step = h.handle(black_box(&packet), Transport::Udp, [127, 0, 0, 1].into(), &mut out);
                    assert!(matches!(step, Step::Reply));
                    black_box(&out);
                })
            });
        }
    }
}

criterion_group!(benches, answer);
criterion_main!(benches);

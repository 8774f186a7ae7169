//! The per-connection balancing decision: the attempt plan for round robin
//! and for consistent hashing, with 3 and 100 endpoints; and the
//! per-request `LeastRequest` pick (P2C over peak-EWMA costs).

use std::hint::black_box;
use std::net::SocketAddr;

use criterion::{Criterion, criterion_group, criterion_main};
use edgemesh_core::LbStrategy;
use edgemesh_proxy::balance::ewma::{PeakEwma, p2c};
use edgemesh_proxy::balance::{Balancer, Lead, Ring, hash_ip, mix, plan};

fn addrs(n: usize) -> Vec<SocketAddr> {
    let byte = |n: usize| u8::try_from(n).expect("at most 62,500 endpoints");
    (0..n).map(|i| SocketAddr::from(([10, 0, byte(i / 250), byte(i % 250 + 1)], 8080))).collect()
}

fn pick(c: &mut Criterion) {
    for n in [3usize, 100] {
        let balancer = Balancer::with_seed(7);
        let spread = |k: usize| balancer.pick(LbStrategy::RoundRobin, k);
        c.bench_function(&format!("balance/plan/round_robin/{n}"), |b| {
            b.iter(|| black_box(plan(n, n, Lead::Spread(&spread), None, |_| false)))
        });
        let ring = Ring::new(&addrs(n));
        let mut client = 0u32;
        c.bench_function(&format!("balance/plan/consistent_hash/{n}"), |b| {
            b.iter(|| {
                client = client.wrapping_add(1);
                let key = hash_ip(std::net::IpAddr::from(client.to_be_bytes()));
                black_box(plan(n, n, Lead::Hash(&ring, key), None, |_| false))
            })
        });
    }
}

/// One `LeastRequest` pick: two draws, two decayed costs, as the HTTP
/// dispatcher does it per request.
fn least_request(c: &mut Criterion) {
    for n in [3usize, 100] {
        let now = tokio::time::Instant::now();
        let loads: Vec<PeakEwma> = (0..n)
            .map(|i| {
                let mut e = PeakEwma::new(now);
                e.start();
                e.finish(std::time::Duration::from_micros(500 + 10 * i as u64), now);
                e
            })
            .collect();
        let mut draw = 0u64;
        c.bench_function(&format!("balance/p2c_peak_ewma/{n}"), |b| {
            b.iter(|| {
                draw = draw.wrapping_add(1);
                black_box(p2c(n, mix(draw), |i| loads[i].cost(now)))
            })
        });
    }
}

criterion_group!(benches, pick, least_request);
criterion_main!(benches);

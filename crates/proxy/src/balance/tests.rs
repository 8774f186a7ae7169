use super::*;

fn counts(b: &Balancer, strategy: LbStrategy, n: usize, picks: usize) -> Vec<usize> {
    let mut c = vec![0; n];
    for _ in 0..picks {
        c[b.pick(strategy, n)] += 1;
    }
    c
}

#[test]
fn round_robin_is_exactly_even_over_whole_rounds() {
    for n in 1..=17 {
        for rounds in [1, 2, 7] {
            let b = Balancer::with_seed(0);
            // Start mid-stream: evenness must not depend on the phase.
            for _ in 0..(n / 2) {
                b.pick(LbStrategy::RoundRobin, n);
            }
            let c = counts(&b, LbStrategy::RoundRobin, n, n * rounds);
            assert!(c.iter().all(|&x| x == rounds), "n={n} rounds={rounds}: {c:?}");
        }
    }
}

#[test]
fn round_robin_visits_in_order_and_wraps() {
    let picks: Vec<usize> = (0..7u64).map(|c| round_robin(c, 3)).collect();
    assert_eq!(picks, [0, 1, 2, 0, 1, 2, 0]);
    assert_eq!(round_robin(u64::MAX, 1), 0);
}

#[test]
fn random_stays_in_range_for_every_n() {
    let b = Balancer::with_seed(42);
    for n in 1..=64 {
        for _ in 0..200 {
            assert!(b.pick(LbStrategy::Random, n) < n);
        }
    }
    // Extremes of the scaling function.
    for n in [1usize, 2, 3, 1000, usize::MAX] {
        assert_eq!(scale(0, n), 0);
        assert!(scale(u64::MAX, n) < n);
    }
}

#[test]
fn random_is_roughly_even_for_many_seeds() {
    // Chi-squared style bound, loose enough never to flake: with 6000
    // picks over n endpoints, each count stays within 25% of the mean.
    for seed in [0u64, 1, 7, 0xdead_beef, u64::MAX] {
        for n in [2usize, 3, 5, 8] {
            let b = Balancer::with_seed(seed);
            let picks = 6000;
            let c = counts(&b, LbStrategy::Random, n, picks);
            let mean = picks / n;
            for &x in &c {
                assert!(x > mean * 3 / 4 && x < mean * 5 / 4, "seed={seed} n={n}: {c:?}");
            }
        }
    }
}

#[test]
fn random_is_not_round_robin_in_disguise() {
    let b = Balancer::with_seed(3);
    let seq: Vec<usize> = (0..60).map(|_| b.pick(LbStrategy::Random, 3)).collect();
    let cyclic = seq.windows(2).all(|w| w[1] == (w[0] + 1) % 3);
    assert!(!cyclic, "{seq:?}");
    let repeats = seq.windows(2).filter(|w| w[0] == w[1]).count();
    assert!(repeats > 5, "independent picks repeat about a third of the time: {seq:?}");
}

#[test]
fn attempt_order_is_a_rotation_visiting_each_index_once() {
    for n in 1..=12 {
        for start in 0..n {
            let order: Vec<usize> = attempt_order(start, n).collect();
            assert_eq!(order.len(), n);
            assert_eq!(order[0], start);
            let mut sorted = order.clone();
            sorted.sort_unstable();
            assert_eq!(sorted, (0..n).collect::<Vec<_>>(), "n={n} start={start}");
            assert!(order.windows(2).all(|w| w[1] == (w[0] + 1) % n));
        }
    }
    assert_eq!(attempt_order(0, 0).count(), 0);
}

#[test]
fn concurrent_round_robin_stays_even() {
    let b = std::sync::Arc::new(Balancer::with_seed(0));
    let n = 3;
    let handles: Vec<_> = (0..4)
        .map(|_| {
            let b = b.clone();
            std::thread::spawn(move || counts(&b, LbStrategy::RoundRobin, n, 3000))
        })
        .collect();
    let mut total = vec![0; n];
    for h in handles {
        for (t, c) in total.iter_mut().zip(h.join().unwrap()) {
            *t += c;
        }
    }
    assert_eq!(total, vec![4000; 3]);
}

// ---------------------------------------------------------------------------
// Property tests: many random cases from fixed seeds (a failure prints its
// seed, so it replays exactly), without a framework dependency.

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

const CASES: u64 = 64;

/// `n` distinct random endpoint addresses.
fn addrs(rng: &mut SmallRng, n: usize) -> Vec<SocketAddr> {
    let mut out: Vec<SocketAddr> = Vec::with_capacity(n);
    while out.len() < n {
        let a = SocketAddr::from(([10, rng.random(), rng.random(), rng.random()], rng.random_range(1..=65535)));
        if !out.contains(&a) {
            out.push(a);
        }
    }
    out
}

fn owners(ring: &Ring, addrs: &[SocketAddr], keys: &[u64]) -> Vec<SocketAddr> {
    keys.iter().map(|k| addrs[ring.owner(*k).unwrap()]).collect()
}

#[test]
fn ring_removal_moves_only_the_removed_endpoints_keys_about_one_nth() {
    for seed in 0..CASES {
        let mut rng = SmallRng::seed_from_u64(seed);
        let n = rng.random_range(2..=16);
        let all = addrs(&mut rng, n);
        let keys: Vec<u64> = (0..4000).map(|_| hash_ip(IpAddr::from(rng.random::<[u8; 4]>()))).collect();
        let before = owners(&Ring::new(&all), &all, &keys);
        let gone = rng.random_range(0..n);
        let mut rest = all.clone();
        let removed = rest.remove(gone);
        let after = owners(&Ring::new(&rest), &rest, &keys);
        let mut moved = 0;
        for (b, a) in before.iter().zip(&after) {
            if *b == removed {
                moved += 1;
            } else {
                assert_eq!(b, a, "seed {seed}: a key not on the removed endpoint moved");
            }
        }
        // Each endpoint owns about 1/n of the keys (see `ring_spreads_keys_evenly`).
        let share = moved as f64 / keys.len() as f64;
        let expected = 1.0 / n as f64;
        assert!(share > expected * 0.5 && share < expected * 1.6, "seed {seed}: n={n} moved {share:.3}");
    }
}

#[test]
fn ring_addition_moves_keys_only_to_the_new_endpoint() {
    for seed in 0..CASES {
        let mut rng = SmallRng::seed_from_u64(seed ^ 0xadd);
        let n = rng.random_range(1..=15);
        let mut all = addrs(&mut rng, n + 1);
        let added = all.pop().unwrap();
        // Insert anywhere: indices shift, owners by address must not.
        let mut grown = all.clone();
        grown.insert(rng.random_range(0..=n), added);
        let keys: Vec<u64> = (0..2000).map(|_| rng.random()).collect();
        let before = owners(&Ring::new(&all), &all, &keys);
        let after = owners(&Ring::new(&grown), &grown, &keys);
        let moved = before.iter().zip(&after).filter(|(b, a)| b != a).count();
        for (b, a) in before.iter().zip(&after) {
            assert!(b == a || *a == added, "seed {seed}: a key moved between old endpoints");
        }
        let share = moved as f64 / keys.len() as f64;
        let expected = 1.0 / (n + 1) as f64;
        assert!(share > expected * 0.5 && share < expected * 1.6, "seed {seed}: n={n} moved {share:.3}");
    }
}

#[test]
fn ring_spreads_keys_evenly() {
    for seed in 0..16 {
        let mut rng = SmallRng::seed_from_u64(seed);
        for n in [2usize, 3, 5, 10] {
            let all = addrs(&mut rng, n);
            let ring = Ring::new(&all);
            let mut counts = vec![0usize; n];
            for _ in 0..20_000 {
                counts[ring.owner(rng.random()).unwrap()] += 1;
            }
            let mean = 20_000 / n;
            for &c in &counts {
                assert!(c > mean * 6 / 10 && c < mean * 14 / 10, "seed {seed} n={n}: {counts:?}");
            }
        }
    }
}

#[test]
fn ring_order_lists_distinct_endpoints_owner_first() {
    for seed in 0..CASES {
        let mut rng = SmallRng::seed_from_u64(seed);
        let n = rng.random_range(1..=20);
        let all = addrs(&mut rng, n);
        let ring = Ring::new(&all);
        let key = rng.random();
        let order = ring.order(key, RING_WALK);
        assert_eq!(order.len(), n.min(RING_WALK));
        assert_eq!(order[0], ring.owner(key).unwrap());
        let mut sorted = order.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), order.len(), "seed {seed}: repeats in {order:?}");
    }
    assert_eq!(Ring::new(&[]).owner(1), None);
    assert!(Ring::new(&[]).order(1, 8).is_empty());
}

#[test]
fn hashes_are_stable_across_processes() {
    // Fixed values: every agent must map a key to the same endpoint.
    assert_eq!(hash_bytes(b""), mix(FNV_OFFSET));
    assert_eq!(hash_ip("10.0.0.1".parse().unwrap()), hash_ip("::ffff:10.0.0.1".parse().unwrap()));
    assert_ne!(hash_ip("10.0.0.1".parse().unwrap()), hash_ip("10.0.0.2".parse().unwrap()));
}

/// Checks the invariants of a plan for random inputs.
#[test]
fn plans_visit_every_endpoint_once_healthy_and_preferred_first() {
    for seed in 0..CASES * 4 {
        let mut rng = SmallRng::seed_from_u64(seed);
        let n = rng.random_range(1..=12);
        let preferred = rng.random_range(0..=n);
        let ejected: Vec<bool> = (0..n).map(|_| rng.random_bool(0.3)).collect();
        let sticky = rng.random_bool(0.5).then(|| rng.random_range(0..n));
        let all = addrs(&mut rng, n);
        let ring = Ring::new(&all);
        let pick_at = rng.random_range(0..1000usize);
        let pick = move |k: usize| pick_at % k;
        let lead = if rng.random_bool(0.5) { Lead::Spread(&pick) } else { Lead::Hash(&ring, rng.random()) };
        let order = plan(n, preferred, lead, sticky, |i| ejected[i]);
        let mut sorted = order.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..n).collect::<Vec<_>>(), "seed {seed}: every endpoint once");
        let r = |i: usize| u8::from(i >= preferred) + 2 * u8::from(ejected[i]);
        assert!(order.windows(2).all(|w| r(w[0]) <= r(w[1])), "seed {seed}: ranks ascend: {order:?}");
        if let Some(s) = sticky
            && r(s) == r(order[0])
        {
            assert_eq!(order[0], s, "seed {seed}: the affinity endpoint leads");
        }
    }
}

#[test]
fn spread_plans_share_load_among_healthy_endpoints_only() {
    let b = Balancer::with_seed(0);
    let ejected = [false, true, false, false];
    let mut first = [0usize; 4];
    for _ in 0..300 {
        let pick = |k| b.pick(LbStrategy::RoundRobin, k);
        first[plan(4, 4, Lead::Spread(&pick), None, |i| ejected[i])[0]] += 1;
    }
    assert_eq!(first, [100, 0, 100, 100], "round robin over the three healthy endpoints");
    // Every endpoint ejected: still a full plan, not a refusal.
    let pick = |k| b.pick(LbStrategy::RoundRobin, k);
    assert_eq!(plan(3, 3, Lead::Spread(&pick), None, |_| true).len(), 3);
}

#[test]
fn hash_plans_skip_an_ejected_owner_to_its_ring_successor() {
    let mut rng = SmallRng::seed_from_u64(7);
    let all = addrs(&mut rng, 5);
    let ring = Ring::new(&all);
    for _ in 0..200 {
        let key: u64 = rng.random();
        let walk = ring.order(key, RING_WALK);
        let owner = walk[0];
        let order = plan(5, 5, Lead::Hash(&ring, key), None, |i| i == owner);
        assert_eq!(order[0], walk[1], "the next endpoint clockwise takes over");
        assert_eq!(*order.last().unwrap(), owner, "the ejected owner is tried last");
        let order = plan(5, 5, Lead::Hash(&ring, key), None, |_| false);
        assert_eq!(order[0], owner);
    }
}

#[test]
fn prefer_close_uses_remote_endpoints_only_when_no_local_is_healthy() {
    let pick = |_k: usize| 0;
    // Endpoints 0 and 1 are local (preferred).
    assert!(plan(4, 2, Lead::Spread(&pick), None, |_| false)[..2].iter().all(|&i| i < 2));
    assert_eq!(plan(4, 2, Lead::Spread(&pick), None, |i| i == 0)[0], 1);
    let order = plan(4, 2, Lead::Spread(&pick), None, |i| i < 2);
    assert!(order[0] >= 2 && order[1] >= 2, "both local endpoints ejected: remote first: {order:?}");
    // An affinity to a remote endpoint does not beat a healthy local one.
    assert!(plan(4, 2, Lead::Spread(&pick), Some(3), |_| false)[0] < 2);
}

fn be(addr: &str, node: &str) -> Backend {
    Backend { addr: addr.parse().unwrap(), node_name: Some(Arc::from(node)) }
}

#[test]
fn topology_table() {
    let list: Arc<[Backend]> =
        vec![be("10.0.0.1:80", "a"), be("10.0.0.2:80", "me"), be("10.0.0.3:80", "b"), be("10.0.0.4:80", "me")].into();
    let addrs = |b: &Arc<[Backend]>| b.iter().map(|b| b.addr.ip().to_string()).collect::<Vec<_>>();
    use InternalTrafficPolicy::{Cluster, Local};
    let prefer = Some(TrafficDistribution::PreferClose);

    let (b, p) = topology(&list, Cluster, None, "me");
    assert_eq!((addrs(&b), p), (addrs(&list), 4));
    let (b, p) = topology(&list, Local, None, "me");
    assert_eq!((addrs(&b), p), (vec!["10.0.0.2".to_string(), "10.0.0.4".into()], 2));
    let (b, p) = topology(&list, Local, prefer, "nobody");
    assert_eq!((b.len(), p), (0, 0), "Local without local endpoints: none");
    let (b, p) = topology(&list, Cluster, prefer, "me");
    assert_eq!(addrs(&b), ["10.0.0.2", "10.0.0.4", "10.0.0.1", "10.0.0.3"]);
    assert_eq!(p, 2);
    let (b, p) = topology(&list, Cluster, prefer, "nobody");
    assert_eq!((b.len(), p), (4, 4), "nothing local: no preference");
}

#[test]
fn each_family_keeps_its_own_endpoints_only() {
    let mixed: Arc<[Backend]> =
        vec![be("10.0.0.1:80", "a"), be("10.0.0.2:80", "b"), be("[fd00::1]:80", "a"), be("[fd00::2]:80", "b")].into();
    let addrs = |b: &Arc<[Backend]>| b.iter().map(|b| b.addr.to_string()).collect::<Vec<_>>();
    assert_eq!(addrs(&same_family(&mixed, false)), ["10.0.0.1:80", "10.0.0.2:80"]);
    assert_eq!(addrs(&same_family(&mixed, true)), ["[fd00::1]:80", "[fd00::2]:80"]);
    // An IPv4-mapped IPv6 address (only possible in an IPv6 slice) stays IPv6.
    let mapped: Arc<[Backend]> = vec![be("[::ffff:10.0.0.9]:80", "a")].into();
    assert!(same_family(&mapped, false).is_empty());
    // A single-stack list is shared, not copied; the other family has none.
    let v4: Arc<[Backend]> = vec![be("10.0.0.1:80", "a")].into();
    assert!(Arc::ptr_eq(&same_family(&v4, false), &v4));
    assert!(same_family(&v4, true).is_empty(), "an IPv6 frontend never gets IPv4 endpoints");
    // Topology then applies within the family.
    let (local6, preferred) = topology(&same_family(&mixed, true), InternalTrafficPolicy::Local, None, "b");
    assert_eq!((addrs(&local6), preferred), (vec!["[fd00::2]:80".to_owned()], 1));
}

// ---------------------------------------------------------------------------
// Paused-time tests: health and affinity follow the (tokio) clock.

#[tokio::test(start_paused = true)]
async fn ejection_backs_off_doubling_to_the_cap_and_success_clears_it() {
    let addr: SocketAddr = "10.0.0.1:80".parse().unwrap();
    let mut h = Health::default();
    assert!(!h.is_ejected(&addr, Instant::now()));
    assert_eq!(h.failure(addr, Instant::now()), EJECT_BASE);
    assert!(h.is_ejected(&addr, Instant::now()));
    // Failures of connections that raced the first do not extend it.
    tokio::time::advance(Duration::from_millis(500)).await;
    assert_eq!(h.failure(addr, Instant::now()), Duration::from_millis(500));
    tokio::time::advance(Duration::from_millis(500)).await;
    assert!(!h.is_ejected(&addr, Instant::now()), "retried after the back-off");
    let mut expected = EJECT_BASE;
    for _ in 0..8 {
        expected = (expected * 2).min(EJECT_MAX);
        assert_eq!(h.failure(addr, Instant::now()), expected, "a failed retry doubles the back-off");
        tokio::time::advance(expected.saturating_sub(Duration::from_millis(1))).await;
        assert!(h.is_ejected(&addr, Instant::now()));
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(!h.is_ejected(&addr, Instant::now()));
    }
    assert_eq!(expected, EJECT_MAX);
    h.success(&addr);
    assert!(h.is_empty());
    assert_eq!(h.failure(addr, Instant::now()), EJECT_BASE, "after a success the back-off starts over");
    h.retain(|_| false);
    assert!(h.is_empty());
}

#[tokio::test(start_paused = true)]
async fn affinity_expires_after_the_timeout_since_last_use() {
    let timeout = Duration::from_secs(10);
    let client: IpAddr = "192.0.2.1".parse().unwrap();
    let backend: SocketAddr = "10.0.0.1:80".parse().unwrap();
    let mut a = Affinity::new(16);
    assert_eq!(a.get(client, timeout, Instant::now()), None);
    a.record(client, backend, timeout, Instant::now());
    tokio::time::advance(Duration::from_secs(9)).await;
    assert_eq!(a.get(client, timeout, Instant::now()), Some(backend));
    // Use refreshes it: 9 s + 9 s is past the first use, not the last.
    a.record(client, backend, timeout, Instant::now());
    tokio::time::advance(Duration::from_secs(9)).await;
    assert_eq!(a.get(client, timeout, Instant::now()), Some(backend));
    tokio::time::advance(Duration::from_secs(1)).await;
    assert_eq!(a.get(client, timeout, Instant::now()), None, "10 s without use: expired");
}

#[tokio::test(start_paused = true)]
async fn affinity_table_is_bounded_and_evicts_expired_then_oldest() {
    let timeout = Duration::from_secs(100);
    let backend: SocketAddr = "10.0.0.1:80".parse().unwrap();
    let mut a = Affinity::new(64);
    for i in 0..64u8 {
        a.record(IpAddr::from([192, 0, 2, i]), backend, timeout, Instant::now());
        tokio::time::advance(Duration::from_secs(1)).await;
    }
    assert_eq!(a.len(), 64);
    for i in 0..200u8 {
        a.record(IpAddr::from([198, 51, 100, i]), backend, timeout, Instant::now());
        assert!(a.len() <= 64);
    }
    assert_eq!(a.get("198.51.100.199".parse().unwrap(), timeout, Instant::now()), Some(backend), "newest kept");
    assert_eq!(a.get("192.0.2.0".parse().unwrap(), timeout, Instant::now()), None, "oldest evicted");
    // Expired entries go first.
    tokio::time::advance(timeout).await;
    a.record("203.0.113.1".parse().unwrap(), backend, timeout, Instant::now());
    assert!(a.len() < 64);
}

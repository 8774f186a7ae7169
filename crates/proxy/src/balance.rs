//! Endpoint choice, without I/O.
//!
//! A [`Balancer`] lives with each listener and picks the first endpoint a new
//! connection tries; [`attempt_order`] then walks the remaining endpoints
//! once each, so a refused or slow endpoint is skipped without trying any
//! endpoint twice.
//!
//! - `RoundRobin`: a shared counter modulo the number of endpoints: an exact
//!   even spread over any `n * k` consecutive connections.
//! - `Random`: a lock-free SplitMix64 stream (one atomic add per pick) mapped
//!   to `0..n` by a multiply-shift, cheap and unbiased enough for balancing.

use std::sync::atomic::{AtomicU64, Ordering};

use edgemesh_core::LbStrategy;

/// SplitMix64's increment (the golden ratio).
const GOLDEN_GAMMA: u64 = 0x9e37_79b9_7f4a_7c15;

/// Per-listener balancing state; cheap to share between connection tasks.
#[derive(Debug)]
pub struct Balancer {
    counter: AtomicU64,
    rng: AtomicU64,
}

impl Balancer {
    /// A balancer whose random stream starts at `seed`.
    pub fn with_seed(seed: u64) -> Self {
        Self { counter: AtomicU64::new(0), rng: AtomicU64::new(seed) }
    }

    /// A balancer with a random seed, so listeners do not move in lockstep.
    pub fn new() -> Self {
        Self::with_seed(rand::random())
    }

    /// The index of the first endpoint to try among `n` (`n > 0`).
    pub fn pick(&self, strategy: LbStrategy, n: usize) -> usize {
        debug_assert!(n > 0);
        match strategy {
            LbStrategy::RoundRobin | LbStrategy::ConsistentHash => {
                round_robin(self.counter.fetch_add(1, Ordering::Relaxed), n)
            }
            LbStrategy::Random => {
                let state = self.rng.fetch_add(GOLDEN_GAMMA, Ordering::Relaxed).wrapping_add(GOLDEN_GAMMA);
                scale(mix(state), n)
            }
        }
    }
}

impl Default for Balancer {
    fn default() -> Self {
        Self::new()
    }
}

/// Round robin: the `counter`-th connection goes to endpoint `counter mod n`.
pub fn round_robin(counter: u64, n: usize) -> usize {
    (counter % n as u64) as usize
}

/// SplitMix64's output function.
pub fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Maps a uniform 64-bit value to `0..n` (Lemire's multiply-shift; bias is
/// at most `n / 2^64`).
pub fn scale(x: u64, n: usize) -> usize {
    ((u128::from(x) * n as u128) >> 64) as usize
}

/// Every index of `0..n` once, starting at `start` and wrapping around.
pub fn attempt_order(start: usize, n: usize) -> impl Iterator<Item = usize> {
    (0..n).map(move |i| (start + i) % n)
}

#[cfg(test)]
mod tests {
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
}

//! Exponential back-off with jitter for the watchers.
//!
//! kube-runtime's `StreamBackoff` resets its policy on every `Ok` item, and
//! a watcher yields an `Ok(Init)` before each list attempt: with the stock
//! policies a list that keeps failing is retried at the *minimum* delay
//! forever. This policy ignores those resets and starts over only once no
//! error has been seen for twice the maximum delay, so an unreachable API
//! server is asked less and less often, up to once per `max`.

use std::time::{Duration, Instant};

use kube::runtime::utils::Backoff;
use rand::Rng;

/// Doubling delays from `min` to `max`, each drawn uniformly from the upper
/// half of its step (so many agents do not retry in lockstep).
#[derive(Clone, Debug)]
pub struct JitteredBackoff {
    min: Duration,
    max: Duration,
    step: Duration,
    last: Option<Instant>,
}

impl JitteredBackoff {
    pub fn new(min: Duration, max: Duration) -> Self {
        let min = min.max(Duration::from_millis(1));
        Self { min, max: max.max(min), step: min, last: None }
    }
}

impl Iterator for JitteredBackoff {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        let now = Instant::now();
        if self.last.is_some_and(|t| now.duration_since(t) > self.max * 2) {
            self.step = self.min;
        }
        self.last = Some(now);
        let step = self.step;
        self.step = (self.step * 2).min(self.max);
        let low = (step / 2).max(self.min.min(step));
        Some(if low >= step { step } else { rand::rng().random_range(low..=step) })
    }
}

impl Backoff for JitteredBackoff {
    /// Ignored: see the module docs.
    fn reset(&mut self) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_to_the_maximum_with_jitter_and_ignores_resets() {
        let mut b = JitteredBackoff::new(Duration::from_millis(100), Duration::from_secs(2));
        let mut delays = Vec::new();
        for _ in 0..8 {
            b.reset();
            delays.push(b.next().unwrap());
        }
        assert!(delays[0] >= Duration::from_millis(100) && delays[0] <= Duration::from_millis(100));
        assert!(delays[1] >= Duration::from_millis(100) && delays[1] <= Duration::from_millis(200));
        assert!(delays[3] >= Duration::from_millis(400) && delays[3] <= Duration::from_millis(800));
        for d in &delays[5..] {
            assert!(*d >= Duration::from_secs(1) && *d <= Duration::from_secs(2), "{delays:?}");
        }
        let total: Duration = delays.iter().sum();
        assert!(total >= Duration::from_secs(5), "no busy loop: {delays:?}");
    }
}

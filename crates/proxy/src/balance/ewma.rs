//! `LeastRequest` for HTTP requests: power of two choices over a peak-EWMA
//! of each endpoint's latency, weighted by its requests in flight. This is
//! linkerd's balancer (and Finagle's before it): an endpoint that turns
//! slow is avoided at its first slow response (the *peak*: a latency above
//! the estimate replaces it at once), and earns traffic back only as the
//! estimate decays (time constant [`DECAY`]) or its peers get busier.
//!
//! Pure, like the rest of [`crate::balance`]: time is an argument.

use std::time::Duration;

use tokio::time::Instant;

use super::{mix, scale};

/// The latency an endpoint is assumed to have before its first response.
pub const DEFAULT_RTT: Duration = Duration::from_millis(30);

/// Time constant of the moving average: an observation's weight falls to
/// 1/e after this long.
pub const DECAY: Duration = Duration::from_secs(10);

/// One endpoint's load: its latency estimate and its requests in flight.
#[derive(Debug, Clone)]
pub struct PeakEwma {
    /// The latency estimate, in nanoseconds.
    rtt_ns: f64,
    /// When `rtt_ns` was last updated.
    stamp: Instant,
    pending: u32,
}

impl PeakEwma {
    /// An endpoint not yet heard from: [`DEFAULT_RTT`], nothing in flight.
    pub fn new(now: Instant) -> Self {
        Self { rtt_ns: nanos(DEFAULT_RTT), stamp: now, pending: 0 }
    }

    /// A request was sent to the endpoint.
    pub fn start(&mut self) {
        self.pending = self.pending.saturating_add(1);
    }

    /// A request sent `rtt` ago ended (its response head arrived, or it
    /// failed, timed out or was cancelled after that long): one fewer in
    /// flight, and `rtt` observed.
    pub fn finish(&mut self, rtt: Duration, now: Instant) {
        self.pending = self.pending.saturating_sub(1);
        self.observe(nanos(rtt), now);
    }

    /// Requests in flight.
    pub fn pending(&self) -> u32 {
        self.pending
    }

    /// The latency estimate now, decayed towards zero since the last update
    /// (an endpoint that stops answering slowly gets tried again).
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss, reason = "float to integer `as` saturates")]
    pub fn estimate(&self, now: Instant) -> Duration {
        Duration::from_nanos(self.next(0.0, now) as u64)
    }

    /// The cost of sending one more request: the estimate times the
    /// requests that would be in flight (`pending + 1`).
    pub fn cost(&self, now: Instant) -> f64 {
        self.next(0.0, now) * f64::from(self.pending.saturating_add(1))
    }

    fn observe(&mut self, rtt_ns: f64, now: Instant) {
        self.rtt_ns = self.next(rtt_ns, now);
        self.stamp = self.stamp.max(now);
    }

    /// The estimate after observing `rtt_ns` at `now`: the peak when above
    /// the estimate, else the moving average.
    fn next(&self, rtt_ns: f64, now: Instant) -> f64 {
        if rtt_ns > self.rtt_ns {
            return rtt_ns;
        }
        let elapsed = nanos(now.saturating_duration_since(self.stamp));
        let weight = (-elapsed / nanos(DECAY)).exp();
        self.rtt_ns * weight + rtt_ns * (1.0 - weight)
    }
}

fn nanos(d: Duration) -> f64 {
    d.as_nanos() as f64
}

/// Power of two choices among `0..n` (`n > 0`): two distinct endpoints
/// drawn from `random`, the one of lower `cost` (the first on a tie).
pub fn p2c(n: usize, random: u64, mut cost: impl FnMut(usize) -> f64) -> usize {
    debug_assert!(n > 0);
    if n < 2 {
        return 0;
    }
    let a = scale(random, n);
    let mut b = scale(mix(random), n - 1);
    if b >= a {
        b += 1;
    }
    if cost(b) < cost(a) { b } else { a }
}

#[cfg(test)]
mod tests;

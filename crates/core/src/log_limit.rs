//! Rate-limited logging: a limit hit, a refused peer or a failing accept
//! can repeat thousands of times a second, and a log line per event would
//! cost more than the event. Callers log when [`LogLimiter::allow`] says so
//! and count every event in a metric.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::duration::millis;

/// Lets one message through per [`LogLimiter::INTERVAL`]; lock-free, so the
/// data path can ask on every event.
#[derive(Debug, Default)]
pub struct LogLimiter {
    /// Milliseconds since [`epoch`] of the last allowed message, plus one
    /// (0: never).
    last: AtomicU64,
}

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

impl LogLimiter {
    pub const INTERVAL: Duration = Duration::from_secs(10);

    /// True for the first call, then for the first call at least
    /// [`Self::INTERVAL`] after the last one that returned true.
    pub fn allow(&self) -> bool {
        self.allow_at(millis(epoch().elapsed()).saturating_add(1))
    }

    /// [`Self::allow`] at `now`, milliseconds since the epoch plus one.
    fn allow_at(&self, now: u64) -> bool {
        let last = self.last.load(Ordering::Relaxed);
        if last != 0 && now.saturating_sub(last) < millis(Self::INTERVAL) {
            return false;
        }
        self.last.compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lets_the_first_through_then_one_per_interval() {
        let limiter = LogLimiter::default();
        let interval = millis(LogLimiter::INTERVAL);
        assert!(limiter.allow_at(1));
        assert!(!limiter.allow_at(2));
        assert!(!limiter.allow_at(interval));
        assert!(limiter.allow_at(interval + 1));
        assert!(!limiter.allow_at(interval + 2));
        // The wall clock path: the first call is let through, the next one not.
        let fresh = LogLimiter::default();
        assert!(fresh.allow());
        assert!(!fresh.allow());
    }
}

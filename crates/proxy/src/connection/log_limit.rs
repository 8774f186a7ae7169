//! Rate-limited logging for per-connection failures: a flood of failing
//! connections logs one line per interval, not one per connection.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Lets one message through per [`LogLimiter::INTERVAL`].
#[derive(Debug, Default)]
pub(crate) struct LogLimiter {
    /// Milliseconds since [`epoch`] of the last allowed message, plus one
    /// (0: never).
    last: AtomicU64,
}

fn epoch() -> Instant {
    static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

impl LogLimiter {
    const INTERVAL: Duration = Duration::from_secs(10);

    pub(crate) fn allow(&self) -> bool {
        let now = epoch().elapsed().as_millis() as u64 + 1;
        let last = self.last.load(Ordering::Relaxed);
        if last != 0 && now.saturating_sub(last) < Self::INTERVAL.as_millis() as u64 {
            return false;
        }
        self.last.compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed).is_ok()
    }
}

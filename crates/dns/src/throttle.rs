//! "Logged once per interval": a warning the first time something happens,
//! then at most once per interval, with debug lines in between.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Decides which occurrences are logged at warn (see the module docs).
#[derive(Debug)]
pub struct WarnEvery {
    every: Duration,
    /// Seconds since `epoch` of the last warning; `u64::MAX`: none yet.
    last: AtomicU64,
    epoch: Instant,
}

impl WarnEvery {
    pub fn new(every: Duration) -> Self {
        Self { every, last: AtomicU64::new(u64::MAX), epoch: Instant::now() }
    }

    /// Whether this occurrence is the one to log at warn (true for one
    /// caller per interval, however many race).
    pub fn due(&self) -> bool {
        let now = self.epoch.elapsed().as_secs();
        let last = self.last.load(Ordering::Relaxed);
        (last == u64::MAX || now >= last + self.every.as_secs())
            && self.last.compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_occurrence_is_due_then_none_within_the_interval() {
        let warn = WarnEvery::new(Duration::from_secs(3600));
        assert!(warn.due());
        assert!(!warn.due());
        assert!(!warn.due());
        let every_time = WarnEvery::new(Duration::ZERO);
        assert!(every_time.due() && every_time.due());
    }
}

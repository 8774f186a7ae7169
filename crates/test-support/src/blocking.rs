//! Waiting from a plain thread (tests that drive processes and namespaces
//! without a runtime).

use std::time::{Duration, Instant};

/// Retries `f` until it returns `Some`, or panics with `what` after `limit`.
pub fn eventually<T>(limit: Duration, what: &str, f: impl FnMut() -> Option<T>) -> T {
    eventually_every(Duration::from_millis(25), limit, what, f)
}

/// [`eventually`], trying every `period` (for checks that start a process).
pub fn eventually_every<T>(period: Duration, limit: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(start.elapsed() < limit, "timed out after {limit:?} waiting for {what}");
        std::thread::sleep(period);
    }
}

//! The back-off of the swarm task's retries (relay reservations, bootstrap dials).

use std::time::Duration;

pub(super) const BACKOFF_MIN: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(60);

/// The pause after `b`: doubled, at most [`BACKOFF_MAX`].
pub(super) fn next_backoff(b: Duration) -> Duration {
    (b * 2).min(BACKOFF_MAX)
}

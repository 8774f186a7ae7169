//! When to try again to make a relayed peer direct.
//!
//! DCUtR tries three times within a few seconds of a relayed connection's establishment, then
//! gives up for the life of that connection. But the first attempts may fail for reasons
//! that pass: a black-holed path comes back, a NAT mapping expires. So while a peer is only
//! relayed, the swarm task tries again on this schedule: after 10 s, 30 s more, 2 min more,
//! then every 10 min. A pair that was direct before and lost that path has shown it can be direct: it
//! tries every 45 s (for half an hour, then every 10 min), so that a restored path is direct
//! again within a minute.

use std::time::Duration;

use tokio::time::Instant;

/// Pause before the first few attempts.
const FIRST: [Duration; 3] = [Duration::from_secs(10), Duration::from_secs(30), Duration::from_secs(120)];
/// Pause between later attempts.
const STEADY: Duration = Duration::from_secs(600);
/// Pause between the attempts of a pair that lost its direct path.
const AFTER_LOSS: Duration = Duration::from_secs(45);
/// How many [`AFTER_LOSS`] attempts (after the first two) before [`STEADY`]: half an hour.
const AFTER_LOSS_ATTEMPTS: u32 = 40;

/// The pause before attempt number `attempt` (0 = the first, counted from when the peer became
/// relayed only). `lost_direct`: the pair was direct before.
pub(crate) fn delay(attempt: u32, lost_direct: bool) -> Duration {
    let first = FIRST.get(attempt as usize).copied();
    match (attempt, lost_direct) {
        (0 | 1, _) => first.expect("two first pauses"),
        (n, true) if n < 2 + AFTER_LOSS_ATTEMPTS => AFTER_LOSS,
        (_, false) => first.unwrap_or(STEADY),
        _ => STEADY,
    }
}

/// The re-upgrade state of one peer that is only relayed.
#[derive(Debug, Clone)]
pub(crate) struct Retry {
    attempt: u32,
    next: Instant,
    lost_direct: bool,
}

impl Retry {
    /// A peer relayed only from `now` on.
    pub(crate) fn new(now: Instant, lost_direct: bool) -> Self {
        Retry { attempt: 0, next: now + delay(0, lost_direct), lost_direct }
    }

    /// Whether an attempt is due at `now`; if so, it is counted and the next one scheduled.
    pub(crate) fn due(&mut self, now: Instant) -> bool {
        if now < self.next {
            return false;
        }
        self.attempt += 1;
        self.next = now + delay(self.attempt, self.lost_direct);
        true
    }

    /// Attempts made so far.
    pub(crate) fn attempts(&self) -> u32 {
        self.attempt
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(attempts: std::ops::Range<u32>, lost: bool) -> Vec<u64> {
        attempts.map(|a| delay(a, lost).as_secs()).collect()
    }

    #[test]
    fn a_never_direct_pair_backs_off_to_every_ten_minutes() {
        assert_eq!(secs(0..6, false), [10, 30, 120, 600, 600, 600]);
        assert_eq!(delay(u32::MAX, false), STEADY);
    }

    #[test]
    fn a_pair_that_lost_its_direct_path_retries_within_a_minute_for_half_an_hour() {
        assert_eq!(secs(0..4, true), [10, 30, 45, 45]);
        let total: Duration = (0..2 + AFTER_LOSS_ATTEMPTS).map(|a| delay(a, true)).sum();
        assert!(total >= Duration::from_secs(1800), "{total:?}");
        assert_eq!(delay(2 + AFTER_LOSS_ATTEMPTS, true), STEADY);
        assert!((0..2 + AFTER_LOSS_ATTEMPTS).all(|a| delay(a, true) < Duration::from_secs(60)));
    }

    #[tokio::test(start_paused = true)]
    async fn attempts_come_due_on_the_schedule() {
        let start = Instant::now();
        let mut r = Retry::new(start, false);
        let mut fired = Vec::new();
        // Poll every second for 20 minutes, as the swarm task's tick does (more often).
        for _ in 0..1200 {
            tokio::time::advance(Duration::from_secs(1)).await;
            if r.due(Instant::now()) {
                fired.push((Instant::now() - start).as_secs());
            }
        }
        assert_eq!(fired, [10, 40, 160, 760]);
        assert_eq!(r.attempts(), 4);
    }
}

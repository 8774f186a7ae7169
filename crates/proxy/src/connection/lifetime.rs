//! How long a forwarded connection may live: `proxy.idleTimeout` (no byte
//! either way for that long) and `proxy.maxConnectionDuration` (open that
//! long, busy or not). Either is off at zero.
//!
//! The forwarding loop is not touched for this: one timer per connection
//! looks at the connection's byte totals (which forwarding keeps anyway) a
//! few times per idle timeout, so a busy connection costs nothing per byte
//! and an idle one is closed between `idle` and `idle + idle / LOOKS`
//! after its last byte.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::{Instant, Sleep};

/// Looks per idle timeout.
const LOOKS: u32 = 4;

/// The two bounds, read from the live settings when the connection is
/// forwarded (a reload applies to connections forwarded after it).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Lifetime {
    pub(crate) idle: Duration,
    pub(crate) max: Duration,
}

/// Why a connection was cut.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub(crate) enum Cut {
    /// No byte either way for `proxy.idleTimeout`.
    Idle,
    /// Open for `proxy.maxConnectionDuration`.
    MaxDuration,
}

/// Runs `forward` to its end, or cuts it short (dropping it) per
/// `lifetime`; `moved` reads its byte total so far. `accepted` is when the
/// client connected: the maximum duration runs from there.
pub(crate) fn within<F: Future + Unpin, M: Fn(&F) -> u64>(
    forward: F,
    moved: M,
    accepted: Instant,
    lifetime: Lifetime,
) -> Within<F, M> {
    let end = (!lifetime.max.is_zero()).then(|| accepted + lifetime.max);
    let look = lifetime.idle / LOOKS;
    Within { last: moved(&forward), forward, moved, end, look, quiet_looks: 0, timer: None }
}

/// The future of [`within`]: a plain struct, so a connection's future
/// grows by a few words and a pointer; the timer is boxed, made at the
/// first poll that finds the connection still open (and never when both
/// bounds are off).
pub(crate) struct Within<F, M> {
    forward: F,
    moved: M,
    end: Option<Instant>,
    /// Time between looks at the byte total; zero: no idle timeout.
    look: Duration,
    last: u64,
    quiet_looks: u32,
    timer: Option<Pin<Box<Sleep>>>,
}

impl<F, M> Within<F, M> {
    /// When the timer should fire next, looking from `now`.
    fn next_look(&self, now: Instant) -> Option<Instant> {
        let idle_look = (!self.look.is_zero()).then(|| now + self.look);
        match (idle_look, self.end) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

impl<F: Future + Unpin, M: Fn(&F) -> u64 + Unpin> Future for Within<F, M> {
    type Output = Result<F::Output, Cut>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        if let Poll::Ready(out) = Pin::new(&mut this.forward).poll(cx) {
            return Poll::Ready(Ok(out));
        }
        if this.timer.is_none() {
            let Some(at) = this.next_look(Instant::now()) else { return Poll::Pending };
            this.timer = Some(Box::pin(tokio::time::sleep_until(at)));
        }
        while let Some(timer) = this.timer.as_mut()
            && timer.as_mut().poll(cx).is_ready()
        {
            let now = Instant::now();
            if this.end.is_some_and(|end| now >= end) {
                return Poll::Ready(Err(Cut::MaxDuration));
            }
            if !this.look.is_zero() {
                let total = (this.moved)(&this.forward);
                if total == this.last {
                    this.quiet_looks += 1;
                    if this.quiet_looks >= LOOKS {
                        return Poll::Ready(Err(Cut::Idle));
                    }
                } else {
                    (this.last, this.quiet_looks) = (total, 0);
                }
            }
            if let (Some(at), Some(timer)) = (this.next_look(now), this.timer.as_mut()) {
                timer.as_mut().reset(at);
            }
        }
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};

    use super::*;

    /// A forward that never ends on its own; its total is what the test
    /// stores.
    fn endless(total: &Arc<AtomicU64>) -> (std::future::Pending<()>, impl Fn(&std::future::Pending<()>) -> u64) {
        let total = total.clone();
        (std::future::pending(), move |_: &_| total.load(Ordering::Relaxed))
    }

    const IDLE: Duration = Duration::from_secs(60);

    #[tokio::test(start_paused = true)]
    async fn a_quiet_connection_is_cut_after_the_idle_timeout_and_not_before() {
        let total = Arc::new(AtomicU64::new(0));
        let (forward, moved) = endless(&total);
        let start = Instant::now();
        let cut = within(forward, moved, start, Lifetime { idle: IDLE, max: Duration::ZERO }).await;
        assert_eq!(cut, Err(Cut::Idle));
        let after = start.elapsed();
        assert!(after >= IDLE && after <= IDLE + IDLE / LOOKS, "cut after {after:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn bytes_keep_a_connection_open_past_the_idle_timeout_until_the_maximum() {
        let total = Arc::new(AtomicU64::new(0));
        let (forward, moved) = endless(&total);
        let feeder = {
            let total = total.clone();
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(IDLE / 3).await;
                    total.fetch_add(1, Ordering::Relaxed);
                }
            })
        };
        let start = Instant::now();
        let max = IDLE * 10;
        let cut = within(forward, moved, start, Lifetime { idle: IDLE, max }).await;
        assert_eq!(cut, Err(Cut::MaxDuration), "busy: only the maximum ends it");
        assert_eq!(start.elapsed(), max);
        feeder.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn a_forward_that_ends_is_returned_and_zero_bounds_are_off() {
        let start = Instant::now();
        let done = within(std::future::ready(7), |_| 0, start, Lifetime { idle: IDLE, max: IDLE }).await;
        assert_eq!(done, Ok(7));
        let later = Box::pin(async {
            tokio::time::sleep(IDLE * 100).await;
            8
        });
        assert_eq!(within(later, |_| 0, start, Lifetime::default()).await, Ok(8), "off: never cut");
    }
}

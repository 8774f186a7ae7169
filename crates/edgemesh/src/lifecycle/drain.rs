//! Draining at SIGTERM (or SIGINT):
//!
//! 1. the proxy closes its listeners, and the edge gateway its: new
//!    connections are refused and UDP
//!    service ports close (with their sessions); DNS, the tunnel, the
//!    source and the admin endpoint go on, so pods still resolve names and
//!    established connections, cross-node ones too, keep flowing;
//! 2. established connections (the proxy's and the gateway's) get
//!    `drainTimeout` to end by themselves;
//! 3. what is left is closed and every component stops;
//! 4. last, node mode's nftables table and VIP device are removed (until
//!    then intercepted connections reach the closed transparent port and
//!    are refused, rather than leaking to a cluster IP that routes nowhere).
//!
//! A second signal during step 2 ends it at once.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use edgemesh_proxy::ProxyStatus;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// How often a drain looks whether the gateway's connections are done.
const GATEWAY_POLL: Duration = Duration::from_millis(50);

/// How a drain's wait for connections ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DrainEnd {
    /// Every connection ended by itself.
    Finished,
    /// `drainTimeout` passed; the rest are closed.
    GraceOver,
    /// A second stop signal.
    Forced,
}

/// Steps 1 and 2: cancels `drain` (the proxy's listeners close, and the
/// gateway's) and waits until the proxy task ends (its connections are
/// done) and the gateway's `gateway` open connections are none, `grace`
/// passes, or `force` resolves. Logs what it starts with and how it ended;
/// the caller then stops everything (step 3).
pub async fn connections(
    status: &ProxyStatus,
    gateway: Option<&AtomicUsize>,
    proxy: &mut JoinHandle<()>,
    drain: &CancellationToken,
    grace: Duration,
    force: impl Future<Output = ()>,
) -> DrainEnd {
    let open_now =
        || status.active_connections.load(Ordering::Acquire) + gateway.map_or(0, |g| g.load(Ordering::Acquire));
    let open = open_now();
    let udp = status.udp_sessions.load(Ordering::Acquire);
    tracing::info!(connections = open, udp_sessions = udp, grace = ?grace,
        "draining: listeners closed, DNS still answers; established connections may finish");
    drain.cancel();
    let started = tokio::time::Instant::now();
    let finished = async {
        let _ = (&mut *proxy).await;
        // The gateway's connections are counted, not tasks to join: looked at
        // every GATEWAY_POLL.
        while gateway.is_some_and(|g| g.load(Ordering::Acquire) > 0) {
            tokio::time::sleep(GATEWAY_POLL).await;
        }
    };
    let end = tokio::select! {
        () = finished => DrainEnd::Finished,
        () = tokio::time::sleep(grace) => DrainEnd::GraceOver,
        () = force => DrainEnd::Forced,
    };
    let left = if end == DrainEnd::Finished { 0 } else { open_now() };
    let elapsed = started.elapsed();
    match end {
        DrainEnd::Finished => {
            tracing::info!(finished = open, closed = 0, ?elapsed, "drain done: every connection finished")
        }
        DrainEnd::GraceOver => tracing::info!(
            finished = open.saturating_sub(left),
            closed = left,
            ?elapsed,
            "drain grace period (drainTimeout) over: closing the connections left"
        ),
        DrainEnd::Forced => tracing::info!(
            finished = open.saturating_sub(left),
            closed = left,
            ?elapsed,
            "second stop signal: closing the connections left at once"
        ),
    }
    end
}

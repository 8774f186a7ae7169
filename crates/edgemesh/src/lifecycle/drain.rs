//! Draining at SIGTERM (or SIGINT):
//!
//! 1. the proxy closes its listeners: new connections are refused and UDP
//!    service ports close (with their sessions); DNS, the tunnel, the
//!    source and the admin endpoint go on, so pods still resolve names and
//!    established connections, cross-node ones too, keep flowing;
//! 2. established connections get `drainTimeout` to end by themselves;
//! 3. what is left is closed and every component stops;
//! 4. last, node mode's nftables table and VIP device are removed (until
//!    then intercepted connections reach the closed transparent port and
//!    are refused, rather than leaking to a cluster IP that routes nowhere).
//!
//! A second signal during step 2 ends it at once.

use std::future::Future;
use std::sync::atomic::Ordering;
use std::time::Duration;

use edgemesh_proxy::ProxyStatus;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

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

/// Steps 1 and 2: cancels `drain` (the proxy's listeners close) and waits
/// until the proxy task ends (its connections are done), `grace` passes,
/// or `force` resolves. Logs what it starts with and how it ended; the
/// caller then stops everything (step 3).
pub async fn connections(
    status: &ProxyStatus,
    proxy: &mut JoinHandle<()>,
    drain: &CancellationToken,
    grace: Duration,
    force: impl Future<Output = ()>,
) -> DrainEnd {
    let open = status.active_connections.load(Ordering::Acquire);
    let udp = status.udp_sessions.load(Ordering::Acquire);
    tracing::info!(connections = open, udp_sessions = udp, grace = ?grace,
        "draining: listeners closed, DNS still answers; established connections may finish");
    drain.cancel();
    let started = tokio::time::Instant::now();
    let end = tokio::select! {
        _ = &mut *proxy => DrainEnd::Finished,
        () = tokio::time::sleep(grace) => DrainEnd::GraceOver,
        () = force => DrainEnd::Forced,
    };
    let left = if end == DrainEnd::Finished { 0 } else { status.active_connections.load(Ordering::Acquire) };
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

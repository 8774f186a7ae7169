//! Helpers the tests of every crate share, so that each exists once
//! (`publish = false`; a dev-dependency only).
//!
//! - [`eventually`] (async) and [`blocking::eventually`]: retry a check
//!   until it holds, with a deadline.
//! - [`loopback`]: echo servers and closed ports on 127.0.0.1.
//! - [`scrape`]: a sample's value in a `/metrics` text, and `promtool
//!   check metrics` on it.
//! - `netns` (feature `netns`): network namespaces as nodes (one root
//!   check), links, LANs, NAT routers, and real servers and clients inside
//!   them.
//! - `registry` (feature `registry`): a registry task and its subscription.
//!
//! Heavy or privileged parts are behind features, so a crate whose tests
//! need a loopback echo compiles no more than that.
#![forbid(unsafe_code)]

pub mod blocking;
pub mod loopback;
#[cfg(feature = "netns")]
pub mod netns;
#[cfg(feature = "registry")]
pub mod registry;
pub mod scrape;

use std::time::Duration;

/// How often [`eventually`] tries again.
const RETRY: Duration = Duration::from_millis(20);

/// Retries `f` until it returns `Some`, or panics naming `what` after
/// `timeout`.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(tokio::time::Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}");
        tokio::time::sleep(RETRY).await;
    }
}

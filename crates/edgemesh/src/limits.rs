//! Process limits.

use rustix::process::{Resource, getrlimit, setrlimit};

/// Raises the soft open-files limit to the hard one and returns the limit in
/// force. Never fails: if raising is refused, the current limit is kept.
pub fn raise_nofile_limit() -> u64 {
    let mut lim = getrlimit(Resource::Nofile);
    let before = lim.current;
    if lim.current != lim.maximum {
        lim.current = lim.maximum;
        if let Err(e) = setrlimit(Resource::Nofile, lim) {
            tracing::warn!(error = %e, limit = ?before, "cannot raise the open-files limit; keeping it");
            return before.unwrap_or(u64::MAX);
        }
    }
    lim.maximum.unwrap_or(u64::MAX)
}

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

/// Proxied connections the agent can hold with `nofile` descriptors: each
/// uses two sockets and two pipes (four descriptors) for splicing, and some
/// descriptors stay free for listeners, DNS and the admin endpoint.
pub fn connections_for(nofile: u64) -> usize {
    let spare = 256;
    (nofile.saturating_sub(spare) / 6).clamp(64, 1 << 20) as usize
}

//! glibc malloc settings for an agent whose memory is mostly long-lived state.
//!
//! glibc gives each thread that allocates an arena of its own (up to eight
//! per core). The agent builds its long-lived state on several threads
//! (manifest parsing, the tokio workers, the cache's blocking writes), so
//! each arena keeps a share of it with freed load-time temporaries in
//! between that no arena can give back: 9 of 65 MiB at 10,000 services
//! (`bench/scale.sh`). One arena keeps it together; small allocations on the
//! data path still come from each thread's cache without taking its lock.
//! An operator's `MALLOC_ARENA_MAX` or `GLIBC_TUNABLES` wins.

/// Applies the settings; call first thing in `main`, before any thread starts.
pub fn tune() {
    if std::env::var_os("MALLOC_ARENA_MAX").is_some() || std::env::var_os("GLIBC_TUNABLES").is_some() {
        return;
    }
    set_arena_max(1);
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn set_arena_max(arenas: i32) {
    // SAFETY: mallopt only changes allocator parameters; it is called before
    // any other thread exists.
    let applied = unsafe { libc::mallopt(libc::M_ARENA_MAX, arenas) };
    if applied != 1 {
        tracing::debug!(arenas, "glibc refused M_ARENA_MAX");
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn set_arena_max(_arenas: i32) {}

//! Network namespaces: the cookie the hooks compare clients against
//! (`SO_NETNS_COOKIE`), and running a closure inside another namespace on
//! a helper thread (namespaces are per thread; the helper is discarded,
//! so no thread of the agent ever changes namespace).
//!
//! The one `unsafe` of the crate outside the map layouts is here: the
//! `getsockopt` call rustix does not offer.

use std::collections::BTreeSet;
use std::io;
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use rustix::net::{AddressFamily, SocketType};

/// The cookie of the namespace `ns` (a `/run/netns/<name>` or
/// `/proc/<pid>/ns/net` path), or of the calling thread's with None.
pub fn cookie(ns: Option<&Path>) -> io::Result<u64> {
    match ns {
        None => own_cookie(),
        Some(path) => in_netns(path, own_cookie),
    }
}

/// `SO_NETNS_COOKIE` of a socket made in the calling thread's namespace.
#[allow(unsafe_code)]
fn own_cookie() -> io::Result<u64> {
    let socket = rustix::net::socket(AddressFamily::INET, SocketType::DGRAM, None)?;
    let mut cookie: u64 = 0;
    let mut len = libc::socklen_t::try_from(std::mem::size_of::<u64>()).expect("8 fits a socklen_t");
    // SAFETY: `socket` is an open descriptor for the whole call; the
    // kernel writes at most `len` (8) bytes into `cookie`, a u64 that
    // outlives the call, and stores the written length in `len`.
    let rc = unsafe {
        libc::getsockopt(
            socket.as_fd().as_raw_fd(),
            libc::SOL_SOCKET,
            SO_NETNS_COOKIE,
            (&raw mut cookie).cast(),
            &raw mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(cookie)
}

/// From the kernel's `asm-generic/socket.h` (since Linux 5.14).
const SO_NETNS_COOKIE: libc::c_int = 71;

/// Runs `f` on a helper thread moved into the namespace at `path`.
pub fn in_netns<T: Send + 'static>(path: &Path, f: impl FnOnce() -> io::Result<T> + Send + 'static) -> io::Result<T> {
    let file = std::fs::File::open(path)?;
    std::thread::spawn(move || {
        rustix::thread::move_into_link_name_space(file.as_fd(), Some(rustix::thread::LinkNameSpaceType::Network))?;
        f()
    })
    .join()
    .map_err(|_| io::Error::other("the namespace helper thread panicked"))?
}

/// One path for each network namespace other than the calling thread's
/// that a process is in (`/proc/<pid>/ns/net`) or that is bind-mounted
/// under `/run/netns`, each namespace once.
pub fn others() -> Vec<PathBuf> {
    let id = |p: &Path| std::fs::metadata(p).ok().map(|m| (m.dev(), m.ino()));
    let mut seen: BTreeSet<(u64, u64)> = id(Path::new("/proc/thread-self/ns/net")).into_iter().collect();
    let processes = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_name().to_str().is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit())))
        .map(|e| e.path().join("ns/net"));
    let named = std::fs::read_dir("/run/netns").into_iter().flatten().flatten().map(|e| e.path());
    processes.chain(named).filter(|p| id(p).is_some_and(|i| seen.insert(i))).collect()
}

//! The threads proxied TCP connections run on.
//!
//! Each worker is a single-threaded tokio runtime on a thread of its own,
//! with its own event loop (epoll set) and timers. Each worker accepts on
//! its own socket of every TCP listening group (see `bind`), and a
//! connection (its two sockets, its timers, its task) stays on the worker
//! that accepted it for its whole life: no hand-off, no work stealing and
//! no cross-thread wake-ups on the data path, the shape of haproxy's and
//! nginx's event loops. Everything else the agent does (UDP, DNS, the
//! registry, the tunnel, admin) stays on the main runtime.
//!
//! Dropping [`Workers`] ends the threads; connections still running on
//! them are dropped (closed) with their runtime.

use std::io;

use tokio::runtime::Handle;
use tokio::sync::oneshot;

/// Connection workers (the proxy's, and the gateway's); see the module docs.
#[derive(Debug)]
pub struct Workers {
    handles: Box<[Handle]>,
    /// Dropped to stop the threads.
    _stop: Vec<oneshot::Sender<()>>,
}

impl Workers {
    /// Starts `count` worker threads (at least one), named
    /// `edgemesh-proxy-<i>`.
    pub fn start(count: usize) -> io::Result<Self> {
        Self::start_named("edgemesh-proxy", count)
    }

    /// Starts `count` worker threads (at least one) named `<name>-<i>`.
    pub fn start_named(name: &str, count: usize) -> io::Result<Self> {
        let count = count.max(1);
        let mut handles = Vec::with_capacity(count);
        let mut stop = Vec::with_capacity(count);
        for i in 0..count {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            handles.push(runtime.handle().clone());
            let (tx, rx) = oneshot::channel::<()>();
            std::thread::Builder::new().name(format!("{name}-{i}")).spawn(move || {
                // Runs the worker's tasks until `Workers` is dropped; the
                // runtime, and what still runs on it, is dropped here.
                runtime.block_on(async move {
                    let _ = rx.await;
                });
            })?;
            stop.push(tx);
        }
        Ok(Self { handles: handles.into_boxed_slice(), _stop: stop })
    }

    /// The workers' runtimes, one per thread; never empty.
    pub fn handles(&self) -> &[Handle] {
        &self.handles
    }
}

/// The default worker count: one per CPU the agent may run on.
pub fn default_count() -> usize {
    std::thread::available_parallelism().map(usize::from).unwrap_or(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each worker runs what is spawned on it on a thread of its own.
    #[test]
    fn each_worker_is_a_thread() {
        let workers = Workers::start(2).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        for handle in workers.handles() {
            let tx = tx.clone();
            handle.spawn(async move {
                // Runs on the worker's runtime: its timers work there.
                tokio::time::sleep(std::time::Duration::from_millis(1)).await;
                let _ = tx.send(std::thread::current().name().map(str::to_owned));
            });
        }
        let mut names: Vec<_> = (0..2).map(|_| rx.recv().unwrap().unwrap()).collect();
        names.sort();
        assert_eq!(names, ["edgemesh-proxy-0", "edgemesh-proxy-1"]);
    }

    #[test]
    fn zero_workers_means_one() {
        let workers = Workers::start(0).unwrap();
        assert_eq!(workers.handles().len(), 1);
    }
}

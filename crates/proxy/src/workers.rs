//! The threads proxied TCP connections run on.
//!
//! Each worker is a single-threaded tokio runtime on a thread of its own,
//! with its own event loop (epoll set) and timers. The accept loops hand
//! each new connection to the next worker in turn, and the connection
//! (its two sockets, its timers, its task) stays there for its whole life:
//! no work stealing and no cross-thread wake-ups on the data path, the
//! shape of haproxy's and nginx's event loops. Everything else the agent
//! does (accepting, UDP, DNS, the registry, the tunnel, admin) stays on the
//! main runtime.
//!
//! Dropping [`Workers`] ends the threads; connections still running on
//! them are dropped (closed) with their runtime.

use std::future::Future;
use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::runtime::Handle;
use tokio::sync::oneshot;

/// The proxy's connection workers; see the module docs.
#[derive(Debug)]
pub(crate) struct Workers {
    handles: Box<[Handle]>,
    /// The worker the next connection goes to (modulo the count).
    next: AtomicUsize,
    /// Dropped to stop the threads.
    _stop: Vec<oneshot::Sender<()>>,
}

impl Workers {
    /// Starts `count` worker threads (at least one).
    pub(crate) fn start(count: usize) -> io::Result<Self> {
        let count = count.max(1);
        let mut handles = Vec::with_capacity(count);
        let mut stop = Vec::with_capacity(count);
        for i in 0..count {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            handles.push(runtime.handle().clone());
            let (tx, rx) = oneshot::channel::<()>();
            std::thread::Builder::new().name(format!("edgemesh-proxy-{i}")).spawn(move || {
                // Runs the worker's tasks until `Workers` is dropped; the
                // runtime, and what still runs on it, is dropped here.
                runtime.block_on(async move {
                    let _ = rx.await;
                });
            })?;
            stop.push(tx);
        }
        Ok(Self { handles: handles.into_boxed_slice(), next: AtomicUsize::new(0), _stop: stop })
    }

    /// Runs `task` on the next worker in turn.
    pub(crate) fn spawn<F>(&self, task: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.handles.len();
        self.handles[i].spawn(task);
    }
}

/// The default worker count: one per CPU the agent may run on.
pub fn default_count() -> usize {
    std::thread::available_parallelism().map(usize::from).unwrap_or(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Connections are spread over every worker, in turn, each on its own
    /// thread.
    #[test]
    fn tasks_go_to_each_worker_in_turn() {
        let workers = Workers::start(2).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        for _ in 0..4 {
            let tx = tx.clone();
            workers.spawn(async move {
                // Runs on the worker's runtime: its timers work there.
                tokio::time::sleep(std::time::Duration::from_millis(1)).await;
                let _ = tx.send(std::thread::current().name().map(str::to_owned));
            });
        }
        let mut names: Vec<_> = (0..4).map(|_| rx.recv().unwrap().unwrap()).collect();
        names.sort();
        assert_eq!(names, ["edgemesh-proxy-0", "edgemesh-proxy-0", "edgemesh-proxy-1", "edgemesh-proxy-1"]);
    }

    #[test]
    fn zero_workers_means_one() {
        let workers = Workers::start(0).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        workers.spawn(async move {
            let _ = tx.send(());
        });
        rx.recv().unwrap();
    }
}

//! The threads a gateway's connections run on, made as the proxy's own are
//! (`edgemesh_proxy::workers::Workers`, threads `edgemesh-gateway-<i>`), each on a
//! single-threaded tokio runtime of its own thread, so that a connection's
//! requests, their upstream exchanges and their timers stay on one thread
//! with no work stealing and no cross-thread wake-ups. The accept loop
//! hands each accepted connection to the next worker in turn.
//!
//! The workers are started once per process (the first listener that asks
//! sets how many) and never stopped: a connection still draining when its
//! listener stops goes on until it ends or the process exits, as it would
//! on the main runtime.

use std::sync::OnceLock;

use edgemesh_proxy::workers::Workers;
use tokio::runtime::Handle;

static WORKERS: OnceLock<Option<Workers>> = OnceLock::new();

/// The gateway's worker runtimes, `count` of them started at the first
/// call (later calls get those, whatever they ask); empty when they cannot
/// be started (the connections then run on the accepting runtime).
pub fn workers(count: usize) -> &'static [Handle] {
    let workers = WORKERS.get_or_init(|| match Workers::start_named("edgemesh-gateway", count.max(1)) {
        Ok(workers) => Some(workers),
        Err(e) => {
            tracing::warn!(error = %e, count, "cannot start the gateway's worker threads; serving on the main runtime");
            None
        }
    });
    workers.as_ref().map_or(&[], Workers::handles)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The workers are threads of their own, started once: a later call
    /// gets the same ones, whatever it asks.
    #[test]
    fn workers_are_named_threads_started_once() {
        let handles = workers(2);
        assert!(std::ptr::eq(handles, workers(5)), "started once");
        let (tx, rx) = std::sync::mpsc::channel();
        for handle in handles {
            let tx = tx.clone();
            handle.spawn(async move {
                // Its timers work: the runtime has them enabled.
                tokio::time::sleep(std::time::Duration::from_millis(1)).await;
                let _ = tx.send(std::thread::current().name().map(str::to_owned));
            });
        }
        let mut names: Vec<_> = (0..handles.len()).map(|_| rx.recv().unwrap().unwrap()).collect();
        names.sort();
        // (Two, unless another test of this binary started them first.)
        let expected: Vec<_> = (0..handles.len()).map(|i| format!("edgemesh-gateway-{i}")).collect();
        assert_eq!(names, expected);
    }
}

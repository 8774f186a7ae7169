//! The threads a gateway's connections run on: as the proxy's own
//! connections do (see `edgemesh_proxy`'s workers), each on a
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

use tokio::runtime::Handle;

static WORKERS: OnceLock<Box<[Handle]>> = OnceLock::new();

/// The gateway's worker runtimes, `count` of them started at the first
/// call (later calls get those, whatever they ask); empty when they cannot
/// be started (the connections then run on the accepting runtime).
pub fn workers(count: usize) -> &'static [Handle] {
    WORKERS.get_or_init(|| match start(count.max(1)) {
        Ok(handles) => handles,
        Err(e) => {
            tracing::warn!(error = %e, count, "cannot start the gateway's worker threads; serving on the main runtime");
            Box::default()
        }
    })
}

fn start(count: usize) -> std::io::Result<Box<[Handle]>> {
    let mut handles = Vec::with_capacity(count);
    for i in 0..count {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        handles.push(runtime.handle().clone());
        std::thread::Builder::new()
            .name(format!("edgemesh-gateway-{i}"))
            .spawn(move || runtime.block_on(std::future::pending::<()>()))?;
    }
    Ok(handles.into_boxed_slice())
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

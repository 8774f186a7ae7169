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

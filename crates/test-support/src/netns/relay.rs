//! [`TcpRelay`]: a port inside a namespace that leads to an address
//! outside it, e.g. to a fake API server on the test's own loopback.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use super::{Netns, in_netns};

/// Listens on `127.0.0.1:<port>` inside a namespace and relays each
/// connection to a target in the test's own namespace. Dropping it stops
/// the listener and cuts every relayed connection.
pub struct TcpRelay {
    ns: String,
    /// The listening address inside the namespace.
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
    open: Arc<Mutex<Vec<TcpStream>>>,
}

impl TcpRelay {
    /// A relay from `ns` to `target` (dialled from the test's namespace).
    pub fn start(ns: &Netns, target: SocketAddr) -> TcpRelay {
        TcpRelay::start_at(ns, SocketAddr::from(([127, 0, 0, 1], 0)), target)
    }

    /// A relay from `listen` inside `ns` (e.g. the fixed address a manifest
    /// names, such as edgecore's metaServer) to `target`.
    pub fn start_at(ns: &Netns, listen: SocketAddr, target: SocketAddr) -> TcpRelay {
        let listener = in_netns(&ns.name, move || {
            TcpListener::bind(listen).unwrap_or_else(|e| panic!("bind {listen} in the namespace: {e}"))
        });
        let addr = listener.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let open: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let (stopped, tracked) = (stop.clone(), open.clone());
        std::thread::spawn(move || {
            for inside in listener.incoming() {
                if stopped.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(inside) = inside else { continue };
                // Target down: the client sees the connection close, as a refusal.
                let Ok(outside) = TcpStream::connect(target) else { continue };
                let mut list = tracked.lock().unwrap();
                list.extend([inside.try_clone().unwrap(), outside.try_clone().unwrap()]);
                pipe(inside.try_clone().unwrap(), outside.try_clone().unwrap());
                pipe(outside, inside);
            }
        });
        TcpRelay { ns: ns.name.clone(), addr, stop, open }
    }

    /// `http://127.0.0.1:<port>` inside the namespace.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

/// Copies `from` into `to` on a thread of its own, then ends `to`'s writes.
fn pipe(mut from: TcpStream, mut to: TcpStream) {
    std::thread::spawn(move || {
        let mut buf = [0u8; 16 * 1024];
        while let Ok(n) = from.read(&mut buf) {
            if n == 0 || to.write_all(&buf[..n]).is_err() {
                break;
            }
        }
        let _ = to.shutdown(Shutdown::Write);
    });
}

impl Drop for TcpRelay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wakes the accept loop, which then sees `stop` (unless the
        // namespace, and so the listener, is gone already).
        let addr = self.addr;
        if std::path::Path::new("/run/netns").join(&self.ns).exists() {
            let _ = in_netns(&self.ns, move || TcpStream::connect(addr));
        }
        for stream in self.open.lock().unwrap().drain(..) {
            let _ = stream.shutdown(Shutdown::Both);
        }
    }
}

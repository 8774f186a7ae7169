//! Traffic through a fault: a real client in a namespace keeps making
//! requests (curl to an HTTP backend, or datagrams to a UDP echo), each
//! bounded in time, and records when each ran and whether it succeeded.
//! [`Outcome`] counts the failures and measures the recovery: the time from
//! the end of the fault to the first success after the last failure.

use std::net::{SocketAddr, UdpSocket};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::netns::{Netns, in_netns};

/// Time between the starts of two requests.
const PERIOD: Duration = Duration::from_millis(250);

/// One request: when it started and ended, and whether it succeeded.
#[derive(Clone, Copy, Debug)]
pub struct Attempt {
    pub start: Instant,
    pub end: Instant,
    pub ok: bool,
}

/// A client making requests in the background until [`Probe::stop`].
pub struct Probe {
    transport: &'static str,
    stop: Arc<AtomicBool>,
    attempts: Arc<Mutex<Vec<Attempt>>>,
    thread: Option<JoinHandle<()>>,
}

impl Probe {
    /// `curl url` in `ns` (at most 2 s each), succeeding when the body is
    /// `expect`.
    pub fn http(ns: &Netns, url: &str, expect: &str) -> Probe {
        let (ns, url, expect) = (ns.name.clone(), url.to_owned(), expect.to_owned());
        Probe::spawn("tcp", move || {
            let out = Command::new("ip")
                .args(["netns", "exec", &ns, "curl", "-sS", "-g", "--max-time", "2", &url])
                .output()
                .expect("curl is installed");
            out.status.success() && out.stdout == expect.as_bytes()
        })
    }

    /// Datagrams from one socket in `ns` to `to` (a [`UdpEcho`](super::netns::UdpEcho)),
    /// one at a time, each succeeding when its echo arrives within a second.
    pub fn udp(ns: &Netns, to: &str) -> Probe {
        let to: SocketAddr = to.parse().unwrap();
        let socket = in_netns(&ns.name, || UdpSocket::bind("0.0.0.0:0").unwrap());
        socket.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
        let mut n = 0u64;
        Probe::spawn("udp", move || {
            n += 1;
            let msg = format!("probe {n}");
            if socket.send_to(msg.as_bytes(), to).is_err() {
                return false;
            }
            let deadline = Instant::now() + Duration::from_secs(1);
            let mut buf = [0u8; 256];
            while Instant::now() < deadline {
                // Echoes of earlier datagrams that came late are skipped.
                if let Ok((len, _)) = socket.recv_from(&mut buf)
                    && buf[..len] == *format!("echo:{msg}").as_bytes()
                {
                    return true;
                }
            }
            false
        })
    }

    fn spawn(transport: &'static str, mut request: impl FnMut() -> bool + Send + 'static) -> Probe {
        let stop = Arc::new(AtomicBool::new(false));
        let attempts = Arc::new(Mutex::new(Vec::new()));
        let (stopped, record) = (stop.clone(), attempts.clone());
        let thread = std::thread::spawn(move || {
            while !stopped.load(Ordering::Relaxed) {
                let start = Instant::now();
                let ok = request();
                record.lock().unwrap().push(Attempt { start, end: Instant::now(), ok });
                std::thread::sleep(PERIOD.saturating_sub(start.elapsed()));
            }
        });
        Probe { transport, stop, attempts, thread: Some(thread) }
    }

    /// Requests that succeeded and started at `since` or later.
    pub fn succeeded_since(&self, since: Instant) -> usize {
        self.attempts.lock().unwrap().iter().filter(|a| a.ok && a.start >= since).count()
    }

    /// Stops the client (after its current request) and returns what it saw.
    pub fn stop(mut self) -> Outcome {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().unwrap().join().expect("probe thread");
        let attempts = std::mem::take(&mut *self.attempts.lock().unwrap());
        Outcome { transport: self.transport, attempts }
    }
}

impl Drop for Probe {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// What a [`Probe`] saw.
pub struct Outcome {
    pub transport: &'static str,
    pub attempts: Vec<Attempt>,
}

impl Outcome {
    pub fn failed(&self) -> usize {
        self.attempts.iter().filter(|a| !a.ok).count()
    }

    /// Seconds from `fault_end` to the end of the first successful request
    /// after the last failed one (0 when nothing failed after `fault_end`
    /// began to matter); None if the last request failed.
    pub fn recovery(&self, fault_end: Instant) -> Option<f64> {
        let last = self.attempts.last()?;
        if !last.ok {
            return None;
        }
        let first_good = match self.attempts.iter().rposition(|a| !a.ok) {
            Some(i) => self.attempts[i + 1],
            None => return Some(0.0),
        };
        Some(first_good.end.saturating_duration_since(fault_end).as_secs_f64())
    }

    /// Prints `FAULT scenario=<scenario> transport=<t> failed=<n>/<total>
    /// recovery_s=<x>` and returns the recovery time; panics if the traffic
    /// had not recovered when the probe stopped.
    pub fn report(&self, scenario: &str, fault_end: Instant) -> f64 {
        let recovery = self.recovery(fault_end);
        let shown = recovery.map_or("never".to_owned(), |r| format!("{r:.2}"));
        println!(
            "FAULT scenario={scenario} transport={} failed={}/{} recovery_s={shown}",
            self.transport,
            self.failed(),
            self.attempts.len()
        );
        recovery
            .unwrap_or_else(|| panic!("{scenario}: {} traffic had not recovered: {:?}", self.transport, self.tail()))
    }

    /// The last attempts, for failure messages.
    fn tail(&self) -> Vec<(f64, bool)> {
        let Some(first) = self.attempts.first() else { return Vec::new() };
        let skip = self.attempts.len().saturating_sub(20);
        self.attempts[skip..].iter().map(|a| (a.start.duration_since(first.start).as_secs_f64(), a.ok)).collect()
    }
}

//! Rough numbers on loopback, against the `bench_proxy` example run as a
//! child process:
//!
//! - bulk throughput (one stream), direct vs through the proxy;
//! - the proxy's resident memory per established connection (each has
//!   moved one byte each way, so both pipes were created).
//!
//! ```sh
//! cargo build --release -p edgemesh-proxy --examples
//! target/release/examples/measure [GiB] [connections]
//! ```

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

/// A backend that discards everything (bulk) or echoes one byte (memory).
fn backend() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let mut s = s.unwrap();
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 256 << 10];
                loop {
                    match s.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(1) => {
                            let _ = s.write_all(&buf[..1]);
                        }
                        Ok(_) => {}
                    }
                }
            });
        }
    });
    addr
}

fn bulk(addr: SocketAddr, bytes: u64) -> f64 {
    let mut s = TcpStream::connect(addr).unwrap();
    let buf = vec![7u8; 256 << 10];
    let start = Instant::now();
    let mut sent = 0;
    while sent < bytes {
        s.write_all(&buf).unwrap();
        sent += buf.len() as u64;
    }
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let _ = s.read(&mut [0u8; 1]);
    (sent as f64 * 8.0 / 1e9) / start.elapsed().as_secs_f64()
}

fn hold(addr: SocketAddr, n: usize) -> Vec<TcpStream> {
    let mut held = Vec::with_capacity(n);
    for _ in 0..n {
        let mut s = TcpStream::connect(addr).unwrap();
        s.write_all(b"x").unwrap();
        s.read_exact(&mut [0u8; 1]).unwrap();
        held.push(s);
    }
    std::thread::sleep(Duration::from_millis(200));
    held
}

/// Resident memory of process `pid`, in KiB.
fn rss_of(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

fn main() {
    let gib: f64 = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(2.0);
    let conns: usize = std::env::args().nth(2).and_then(|a| a.parse().ok()).unwrap_or(1000);
    let backend = backend();
    let vip: SocketAddr = "127.78.0.1:9000".parse().unwrap();
    // The proxy runs in its own process (the bench adapter), so its memory
    // can be read alone.
    let exe = std::env::current_exe().unwrap().with_file_name("bench_proxy");
    let mut child = std::process::Command::new(exe)
        .args(["--listen", &vip.to_string(), "--upstream", &backend.to_string()])
        .spawn()
        .expect("build the bench_proxy example first");
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(vip).is_err() {
        assert!(Instant::now() < deadline, "proxy did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss, reason = "float to integer `as` saturates")]
    let bytes = (gib * (1u64 << 30) as f64) as u64;
    for round in 0..3 {
        let direct = bulk(backend, bytes);
        let proxied = bulk(vip, bytes);
        println!(
            "round {round}: bulk {gib} GiB: direct {direct:.1} Gbit/s, proxy {proxied:.1} Gbit/s, ratio {:.2}",
            proxied / direct
        );
    }
    std::thread::sleep(Duration::from_millis(200));
    let before = rss_of(child.id());
    let held = hold(vip, conns);
    let after = rss_of(child.id());
    println!(
        "proxy RSS {before} KiB -> {after} KiB with {conns} established connections: {:.2} KiB per connection",
        (after as f64 - before as f64) / conns as f64
    );
    drop(held);
    let _ = child.kill();
    let _ = child.wait();
}

//! The agent's lifecycle as an operator drives it: the real binary, real
//! signals (SIGHUP, SIGTERM), real clients (curl, TCP streams through the
//! proxy) and real backends (nginx, an echo server) on loopback; node mode
//! in namespaces made for the test (as root).
//!
//! - a reload under load drops nothing and puts a live setting in force; a
//!   broken config is refused with its line and the agent keeps serving;
//! - SIGTERM drains: an in-flight 64 MiB transfer finishes byte-exact, new
//!   connections are refused, the agent exits when the transfer ends; what
//!   is left at the grace period's end is closed; a second signal stops at
//!   once; in node mode the table and device are gone after exit;
//! - `PUT /logging` changes what is logged; `--log-format json` writes one
//!   JSON object per line.

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use support::*;

/// A TCP echo server on 127.0.0.1 (test-support's), on a runtime the test
/// keeps.
fn echo_server() -> (tokio::runtime::Runtime, u16) {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let addr = runtime.block_on(edgemesh_test_support::loopback::tcp_echo());
    (runtime, addr.port())
}

/// An agent serving `manifests`, reading `config` (reloads read it too).
fn agent_with_config(manifests: &Path, config: &Path, extra: &[&str], rust_log: Option<&str>) -> Agent {
    let mut args = vec!["--config".to_owned(), config.display().to_string()];
    args.extend(extra.iter().map(|a| (*a).to_owned()));
    let mut opts = AgentOptions { extra: args, ..Default::default() };
    opts.rust_log = rust_log.map(str::to_owned);
    Agent::start_with(manifests, opts)
}

/// An agent proxying service `default/echo` (port 7000) to an echo
/// server, reading the config file `config` holds.
struct EchoAgent {
    agent: Agent,
    /// The service's VIP and port.
    addr: SocketAddr,
    config: std::path::PathBuf,
    _echo: tokio::runtime::Runtime,
    _dir: tempfile::TempDir,
}

impl EchoAgent {
    fn start(config_text: &str, rust_log: Option<&str>) -> EchoAgent {
        let (echo_rt, echo) = echo_server();
        let (dir, manifests) = manifest_dir();
        write_manifest(&manifests, "echo.yaml", &service_yaml("default", "echo", 7000, &[echo], ""));
        let config = dir.path().join("edgemesh.yaml");
        write_config(&config, config_text);
        let agent = agent_with_config(&manifests, &config, &[], rust_log);
        let addr = format!("{}:7000", agent.vip("default", "echo").expect("echo has a VIP")).parse().unwrap();
        EchoAgent { agent, addr, config, _echo: echo_rt, _dir: dir }
    }
}

/// Sends `data` through `stream` and reads it back from the echo server:
/// whether every byte came back unchanged.
fn round_trip(stream: &mut TcpStream, data: &[u8]) -> bool {
    let mut back = vec![0u8; data.len()];
    stream.write_all(data).is_ok() && stream.read_exact(&mut back).is_ok() && back == data
}

/// A connection through the proxy to the echo server, checked with one
/// round trip; `None` if the proxy refused or reset it.
fn echo_connection(addr: SocketAddr) -> Option<TcpStream> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    round_trip(&mut stream, b"hello").then_some(stream)
}

/// Traffic through the proxy until stopped: long-lived streams moving data
/// and a loop of short connections; every failure is counted.
struct Load {
    stop: Arc<AtomicBool>,
    /// Bytes echoed back intact on the long-lived streams.
    streamed: Arc<AtomicU64>,
    /// Short connections that completed.
    short: Arc<AtomicU64>,
    errors: Arc<AtomicU64>,
    threads: Vec<JoinHandle<()>>,
}

impl Load {
    fn start(addr: SocketAddr, streams: usize) -> Load {
        let (stop, streamed, short, errors) = (
            Arc::new(AtomicBool::new(false)),
            Arc::new(AtomicU64::new(0)),
            Arc::new(AtomicU64::new(0)),
            Arc::new(AtomicU64::new(0)),
        );
        let mut threads = Vec::new();
        for i in 0..streams {
            let (stop, streamed, errors) = (stop.clone(), streamed.clone(), errors.clone());
            threads.push(std::thread::spawn(move || {
                let Some(mut stream) = echo_connection(addr) else {
                    errors.fetch_add(1, Ordering::Relaxed);
                    return;
                };
                let chunk: Vec<u8> = (0..64 * 1024).map(|b| (b * 7 + i).to_le_bytes()[0]).collect();
                while !stop.load(Ordering::Relaxed) {
                    if !round_trip(&mut stream, &chunk) {
                        errors.fetch_add(1, Ordering::Relaxed);
                        return;
                    }
                    streamed.fetch_add(chunk.len() as u64, Ordering::Relaxed);
                }
            }));
        }
        let (stop2, short2, errors2) = (stop.clone(), short.clone(), errors.clone());
        threads.push(std::thread::spawn(move || {
            while !stop2.load(Ordering::Relaxed) {
                match echo_connection(addr) {
                    Some(stream) => {
                        // Close and see the proxy pass the close on.
                        let _ = stream.shutdown(std::net::Shutdown::Write);
                        let mut rest = Vec::new();
                        let _ = (&stream).read_to_end(&mut rest);
                        short2.fetch_add(1, Ordering::Relaxed);
                    }
                    None => {
                        errors2.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
        Load { stop, streamed, short, errors, threads }
    }

    /// Waits until the short loop completed `n` more connections and the
    /// streams moved `bytes` more.
    fn progress(&self, n: u64, bytes: u64) {
        let (short, streamed) = (self.short.load(Ordering::Relaxed), self.streamed.load(Ordering::Relaxed));
        eventually(Duration::from_secs(10), "traffic through the proxy", || {
            (self.short.load(Ordering::Relaxed) >= short + n
                && self.streamed.load(Ordering::Relaxed) >= streamed + bytes)
                .then_some(())
        });
    }

    /// Stops every thread; the failures seen.
    fn stop(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            t.join().unwrap();
        }
        self.errors.load(Ordering::Relaxed)
    }
}

/// Writes the config file atomically, as a ConfigMap update does.
fn write_config(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

fn json(agent: &Agent, path: &str) -> serde_json::Value {
    let (status, body) = agent.try_get(path).unwrap_or_else(|| panic!("GET {path}"));
    assert_eq!(status, 200, "{path}: {body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path}: {e}: {body}"))
}

/// How many more connections the proxy admits beside those open now:
/// opens connections until one is refused (each checked with a round
/// trip), then closes them.
fn admitted_beside(addr: SocketAddr) -> usize {
    let mut held = Vec::new();
    while let Some(stream) = echo_connection(addr) {
        held.push(stream);
        assert!(held.len() <= 64, "no limit in force");
    }
    held.len()
}

#[test]
fn a_reload_under_load_drops_nothing_and_a_broken_config_is_refused() {
    let EchoAgent { agent, addr, config, _echo, _dir } =
        EchoAgent::start("proxy:\n  maxConnections: 100\n", Some("info,edgemesh=debug"));

    // Four streams moving data, and new connections in a loop.
    let load = Load::start(addr, 4);
    load.progress(20, 4 << 20);

    // Live settings: at most 8 connections (the load holds 5 at most), a
    // longer TTL for service answers; and one that needs a restart.
    let ttl = |agent: &Agent| {
        let answer = agent.dig(&["+noall", "+answer", "echo.default.svc.cluster.local"]);
        answer.split_whitespace().nth(1).and_then(|t| t.parse::<u32>().ok()).unwrap_or_else(|| panic!("{answer}"))
    };
    assert_eq!(ttl(&agent), 5, "the default service TTL");
    assert_eq!(agent.services()["services"][0]["strategy"], "RoundRobin");
    write_config(
        &config,
        "proxy:\n  maxConnections: 8\n  defaultStrategy: Random\ndns:\n  serviceTtl: 42\n  cacheSize: 10\n",
    );
    agent.signal("HUP");
    let status = eventually(Duration::from_secs(5), "the reload to apply", || {
        let status = json(&agent, "/reload");
        (status["last"]["result"] == "applied").then_some(status)
    });
    // The file's change may be noticed before the signal arrives (the
    // agent polls the file): either applies it, once.
    let trigger = status["last"]["trigger"].as_str().unwrap_or_default().to_owned();
    assert!(["SIGHUP", "file changed"].contains(&trigger.as_str()), "{status}");
    let applied: Vec<&str> =
        status["last"]["applied"].as_array().unwrap().iter().map(|c| c["key"].as_str().unwrap()).collect();
    assert_eq!(applied, ["dns.serviceTtl", "proxy.defaultStrategy", "proxy.maxConnections"], "{status}");
    assert_eq!(status["pendingRestart"][0]["key"], "dns.cacheSize", "{status}");
    assert_eq!(status["pendingRestart"][0]["inForce"], 10000, "{status}");
    assert!(agent.log().contains("needs a restart"), "the restart-only key is logged");
    assert_eq!(ttl(&agent), 42, "the reloaded service TTL");
    eventually(Duration::from_secs(5), "the new default strategy in the service's entry", || {
        (agent.services()["services"][0]["strategy"] == "Random").then_some(())
    });
    assert_eq!(json(&agent, "/config")["proxy"]["maxConnections"], 8, "/config shows the config in force");
    // SIGHUP reloads by itself, the file unchanged: nothing new to apply.
    let reloads = status["reloads"].as_u64().unwrap();
    agent.signal("HUP");
    let status = eventually(Duration::from_secs(5), "the SIGHUP reload", || {
        let status = json(&agent, "/reload");
        (status["reloads"].as_u64() > Some(reloads)).then_some(status)
    });
    assert_eq!(status["last"]["trigger"], "SIGHUP", "{status}");
    assert_eq!(status["last"]["result"], "unchanged", "{status}");
    load.progress(20, 4 << 20);

    // A broken config (a misspelt key on line 3), noticed by its file
    // changing, without a signal.
    write_config(&config, "proxy:\n  maxConnections: 2\n  conectTimeout: 1s\n");
    let status = eventually(Duration::from_secs(5), "the broken config to be refused", || {
        let status = json(&agent, "/reload");
        (status["last"]["result"] == "refused").then_some(status)
    });
    let errors = status["last"]["errors"].to_string();
    assert!(errors.contains("line 3") && errors.contains("conectTimeout"), "{errors}");
    assert!(errors.contains(&config.display().to_string()), "the error names the file: {errors}");
    assert_eq!(status["last"]["trigger"], "file changed");
    assert!(agent.log().contains("config reload refused"), "logged: {}", agent.log());
    load.progress(20, 4 << 20);
    assert_eq!(load.stop(), 0, "no connection failed or dropped across the reloads");

    // The limit in force is the reloaded one, not the refused one: with
    // the load gone, eight connections are admitted and the ninth refused.
    assert_eq!(json(&agent, "/config")["proxy"]["maxConnections"], 8);
    let admitted = eventually(Duration::from_secs(5), "the load's connections to close", || {
        Some(admitted_beside(addr)).filter(|&n| n == 8)
    });
    assert_eq!(admitted, 8);
}

#[test]
fn sigterm_lets_an_in_flight_64_mib_transfer_finish_and_refuses_new_connections() {
    let nginx = Nginx::start(1);
    let body: Vec<u8> = (0..64u32 << 20).map(|i| (i % 251) as u8).collect();
    nginx.serve_file(&body);
    let (dir, manifests) = manifest_dir();
    write_manifest(&manifests, "web.yaml", &service_yaml("default", "web", 80, &nginx.ports, ""));
    let config = dir.path().join("edgemesh.yaml");
    write_config(&config, "drainTimeout: 20s\n");
    let mut agent = agent_with_config(&manifests, &config, &[], Some("info,edgemesh=debug"));
    let vip = agent.vip("default", "web").unwrap();

    // A client that reads slowly: 64 MiB at 16 MiB/s, about four seconds.
    let out = dir.path().join("big");
    let mut curl = Command::new("curl")
        .args(["-sS", "--limit-rate", "16M", "-o", out.to_str().unwrap(), &format!("http://{vip}/big")])
        .stdout(Stdio::null())
        .spawn()
        .expect("curl is installed");
    eventually(Duration::from_secs(10), "the transfer to be under way", || {
        std::fs::metadata(&out).ok().filter(|m| m.len() > 4 << 20)
    });
    agent.signal("TERM");
    let signalled = Instant::now();

    // Draining: new connections are refused, names still resolve.
    eventually(Duration::from_secs(2), "new connections to be refused", || {
        TcpStream::connect_timeout(&format!("{vip}:80").parse().unwrap(), Duration::from_secs(1)).is_err().then_some(())
    });
    assert_eq!(agent.dig(&["+short", "web.default.svc.cluster.local"]).trim(), vip, "DNS answers during the drain");
    assert!(std::fs::metadata(&out).unwrap().len() < 64 << 20, "still in flight when the drain began");

    let status = curl.wait().unwrap();
    let finished = Instant::now();
    assert!(status.success(), "the transfer completes; log:\n{}", agent.log());
    assert!(std::fs::read(&out).unwrap() == body, "byte-exact");
    let exit = agent.wait_exit(Duration::from_secs(10));
    assert_eq!(exit.code(), Some(0));
    let after = finished.elapsed();
    assert!(after < Duration::from_secs(2), "the agent exits once the transfer ends ({after:?} after it)");
    assert!(signalled.elapsed() < Duration::from_secs(15), "well before the 20 s grace period");
    let log = agent.log();
    // The transfer, and perhaps one probe of the refusal check above that the agent
    // accepted between the signal and closing its listeners (it finishes too).
    let draining = log.lines().find(|l| l.contains("draining")).unwrap_or_else(|| panic!("no drain line:\n{log}"));
    assert!(
        draining.contains("connections=1") || draining.contains("connections=2"),
        "the drain counts the transfer: {draining}"
    );
    assert!(log.contains("drain done: every connection finished"), "{log}");
}

#[test]
fn the_drain_closes_what_is_left_at_its_end_and_a_second_signal_stops_at_once() {
    // The grace period ends: the idle connection left is closed.
    let EchoAgent { mut agent, addr, _echo, _dir, .. } = EchoAgent::start("drainTimeout: 2s\n", Some("info"));
    let mut held = echo_connection(addr).expect("a proxied connection");
    agent.signal("TERM");
    let signalled = Instant::now();
    assert!(round_trip(&mut held, b"still flowing during the drain"));
    let exit = agent.wait_exit(Duration::from_secs(10));
    let took = signalled.elapsed();
    assert_eq!(exit.code(), Some(0));
    assert!(took >= Duration::from_secs(2) && took < Duration::from_secs(5), "exits right after the grace: {took:?}");
    let mut buf = [0u8; 8];
    assert!(matches!(held.read(&mut buf), Ok(0) | Err(_)), "the connection left was closed");
    let log = agent.log();
    assert!(log.contains("drain grace period (drainTimeout) over") && log.contains("closed=1"), "{log}");

    // A long grace, cut short by a second SIGTERM.
    let EchoAgent { mut agent, addr, _echo, _dir, .. } = EchoAgent::start("drainTimeout: 60s\n", Some("info"));
    let mut held = echo_connection(addr).expect("a proxied connection");
    agent.signal("TERM");
    eventually(Duration::from_secs(5), "the drain to start", || agent.log().contains("draining").then_some(()));
    assert!(round_trip(&mut held, b"draining"));
    agent.signal("TERM");
    let second = Instant::now();
    assert_eq!(agent.wait_exit(Duration::from_secs(10)).code(), Some(0));
    assert!(second.elapsed() < Duration::from_secs(3), "stops at once: {:?}", second.elapsed());
    assert!(matches!(held.read(&mut buf), Ok(0) | Err(_)), "the connection was closed");
    assert!(agent.log().contains("second stop signal"), "{}", agent.log());
}

/// PUT on the admin endpoint with curl: (status, body).
fn put(agent: &Agent, path_and_query: &str) -> (u16, String) {
    let out = Command::new("curl")
        .args(["-s", "-X", "PUT", "-w", "\n%{http_code}", &format!("http://{}{path_and_query}", agent.admin)])
        .output()
        .expect("curl is installed");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap();
    (code.parse().unwrap(), body.to_owned())
}

#[test]
fn put_logging_changes_what_is_logged_and_json_logs_parse_line_by_line() {
    let EchoAgent { agent, addr, _echo, _dir, .. } = EchoAgent::start("logLevel: info\nlogFormat: json\n", None);
    let (status, filter) = agent.try_get("/logging").unwrap();
    assert_eq!((status, filter.trim()), (200, "info,hickory_server=warn,libp2p_swarm=warn"));

    // At info, a proxied connection logs nothing; at trace, its close.
    drop(echo_connection(addr).unwrap());
    assert!(!agent.log().contains("connection closed"));
    let (status, body) = put(&agent, "/logging?level=info%2Cedgemesh_proxy%3Dtrace");
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        agent.try_get("/logging").unwrap().1.trim(),
        "info,edgemesh_proxy=trace,hickory_server=warn,libp2p_swarm=warn"
    );
    drop(echo_connection(addr).unwrap());
    eventually(Duration::from_secs(5), "the trace line", || agent.log().contains("connection closed").then_some(()));

    // A bad filter is a 400 that says why; the filter in force stays.
    let (status, body) = put(&agent, "/logging?level=info%2Cedgemesh%3Dloud");
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("invalid log filter"), "{body}");
    assert!(agent.try_get("/logging").unwrap().1.contains("edgemesh_proxy=trace"));
    let (status, body) = put(&agent, "/logging");
    assert_eq!(status, 400, "{body}");

    // Every line of the log is one JSON object.
    let log = agent.log();
    let lines: Vec<serde_json::Value> =
        log.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"))).collect();
    assert!(lines.iter().all(|l| l["level"].is_string() && l["timestamp"].is_string()), "{log}");
    assert!(
        lines.iter().any(|l| l["message"] == "log filter changed" && l["filter"].as_str().unwrap().contains("trace")),
        "{log}"
    );
}

/// One HTTP/1.1 request on a kept-alive connection to the node's nginx:
/// whether its page came back.
fn keep_alive_get(stream: &mut TcpStream) -> bool {
    if stream.write_all(b"GET / HTTP/1.1\r\nHost: web\r\n\r\n").is_err() {
        return false;
    }
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    while !got.ends_with(b"pod-nginx\n") {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => return false,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
    true
}

/// Node mode: a pod's kept-alive connection to a cluster IP goes on
/// during the drain while new ones are refused; at the grace period's end
/// it is closed, the agent exits, and its nftables table and VIP device
/// are gone.
#[test]
fn in_node_mode_the_drain_ends_with_the_table_and_device_removed() {
    use support::netns::{in_netns, require_root};
    use support::node::{Topology, service, start_agent};
    require_root();
    let t = Topology::new();
    let (dir, manifests) = manifest_dir();
    write_manifest(&manifests, "web.yaml", &service("web", &["10.96.0.10"], 80));
    let agent = start_agent(&t.node, &manifests, &dir.path().join("state"), &["--drain-timeout", "3s"]);
    assert!(t.node.tables().contains("edgemesh") && t.node.links().contains("edge0"));
    let mut held = in_netns(&t.client.name, || TcpStream::connect("10.96.0.10:80").expect("a pod connects"));
    held.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    assert!(keep_alive_get(&mut held), "served before the drain");

    let signalled = Instant::now();
    let stopping = std::thread::spawn(move || agent.terminate());
    eventually(Duration::from_secs(2), "new connections to be refused", || {
        t.client.curl("http://10.96.0.10/").is_none().then_some(())
    });
    assert!(keep_alive_get(&mut held), "the established connection goes on during the drain");
    let exit = stopping.join().unwrap();
    let took = signalled.elapsed();
    assert_eq!(exit.code(), Some(0));
    assert!(took >= Duration::from_secs(3) && took < Duration::from_secs(7), "exits after the 3 s grace: {took:?}");
    let mut buf = [0u8; 8];
    assert!(matches!(held.read(&mut buf), Ok(0) | Err(_)), "the connection left was closed");
    assert!(!t.node.tables().contains("edgemesh"), "table left after the drain: {}", t.node.tables());
    assert!(!t.node.links().contains("edge0"), "device left after the drain: {}", t.node.links());
}

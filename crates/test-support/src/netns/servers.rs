//! Real servers and clients inside a namespace: nginx, a UDP and a TCP
//! echo, any program run in the background, and UDP/TCP load from a
//! namespace.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::{Netns, in_netns};
use crate::blocking::eventually;

/// nginx inside a namespace, answering `body` on each `listen` address
/// (`10.0.0.2:80`, `[fd00::2]:80`); stopped on drop.
pub struct NsNginx {
    child: Child,
    _dir: tempfile::TempDir,
}

impl NsNginx {
    pub fn start(ns: &Netns, listen: &[&str], body: &str) -> NsNginx {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().display().to_string();
        let listens: String = listen.iter().map(|l| format!("listen {l}; ")).collect();
        let conf = format!(
            "daemon off;\nmaster_process off;\nworker_processes 1;\npid {p}/nginx.pid;\nerror_log {p}/error.log;\n\
             events {{ worker_connections 256; }}\n\
             http {{\n  access_log off;\n  client_body_temp_path {p}/cb;\n  proxy_temp_path {p}/px;\n  \
             fastcgi_temp_path {p}/fc;\n  uwsgi_temp_path {p}/uw;\n  scgi_temp_path {p}/sc;\n  \
             server {{ {listens} location / {{ return 200 \"{body}\\n\"; }} }}\n}}\n"
        );
        std::fs::write(dir.path().join("nginx.conf"), conf).unwrap();
        let nginx = ["/usr/sbin/nginx", "nginx"].into_iter().find(|c| Path::new(c).exists()).unwrap_or("nginx");
        let child = ns
            .cmd(nginx)
            .args(["-p", &p, "-c", &format!("{p}/nginx.conf")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nginx is installed (apt-get install nginx)");
        let n = NsNginx { child, _dir: dir };
        let first = format!("http://{}/", listen[0]);
        eventually(Duration::from_secs(10), "nginx in its namespace", || {
            ns.exec(&["curl", "-sg", "-o", "/dev/null", &first]).status.success().then_some(())
        });
        n
    }
}

impl Drop for NsNginx {
    fn drop(&mut self) {
        // `ip netns exec` execs nginx: this is nginx's pid.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A UDP echo server in a namespace answering `echo:<datagram>`; stops on
/// drop.
pub struct UdpEcho {
    stop: Arc<AtomicBool>,
    /// Datagrams answered so far.
    pub served: Arc<AtomicU32>,
    /// The addresses datagrams came from (one per client socket, or per
    /// proxy session).
    pub sources: Arc<Mutex<HashSet<SocketAddr>>>,
}

impl UdpEcho {
    pub fn start(ns: &Netns, addr: &str) -> UdpEcho {
        let socket = {
            let addr = addr.to_owned();
            in_netns(&ns.name, move || std::net::UdpSocket::bind(addr).expect("bind the echo server"))
        };
        socket.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let served = Arc::new(AtomicU32::new(0));
        let sources = Arc::new(Mutex::new(HashSet::new()));
        let (s, n, seen) = (stop.clone(), served.clone(), sources.clone());
        std::thread::spawn(move || {
            let mut buf = [0u8; 2048];
            let mut last = None;
            while !s.load(Ordering::Relaxed) {
                if let Ok((len, from)) = socket.recv_from(&mut buf) {
                    let mut reply = b"echo:".to_vec();
                    reply.extend_from_slice(&buf[..len]);
                    let _ = socket.send_to(&reply, from);
                    n.fetch_add(1, Ordering::Relaxed);
                    if last != Some(from) {
                        seen.lock().unwrap().insert(from);
                        last = Some(from);
                    }
                }
            }
        });
        UdpEcho { stop, served, sources }
    }
}

impl Drop for UdpEcho {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Sends `count` datagrams to `to` from one socket inside `ns`, one at a
/// time, each answered (by a [`UdpEcho`] behind `to`) before the next;
/// checks that every answer comes from `to` itself. The count, or the
/// first problem.
pub fn udp_stream(ns: &Netns, to: &str, count: u32) -> Result<u32, String> {
    let to: SocketAddr = to.parse().unwrap();
    in_netns(&ns.name, move || {
        let local = if to.is_ipv6() { "[::]:0" } else { "0.0.0.0:0" };
        let socket = std::net::UdpSocket::bind(local).unwrap();
        socket.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let mut buf = [0u8; 2048];
        for i in 0..count {
            let msg = datagram(i);
            socket.send_to(msg.as_bytes(), to).map_err(|e| format!("send {i}: {e}"))?;
            let (n, from) = socket.recv_from(&mut buf).map_err(|e| format!("no answer to datagram {i}: {e}"))?;
            if from != to {
                return Err(format!("answer {i} came from {from}, not {to}"));
            }
            if buf[..n] != *format!("echo:{msg}").as_bytes() {
                return Err(format!("answer {i} is wrong: {:?}", String::from_utf8_lossy(&buf[..n.min(40)])));
            }
        }
        Ok(count)
    })
}

/// The `i`th test datagram of [`udp_stream`] and [`udp_window`]: numbered,
/// of varied length (tests add up the bytes they carried).
pub fn datagram(i: u32) -> String {
    format!("datagram {i} {}", "x".repeat((i % 700) as usize))
}

/// Sends `count` datagrams to `to` (a [`UdpEcho`] behind it) from one
/// socket inside `ns`, keeping at most `window` unanswered at once; one
/// unanswered for a second counts as lost and frees its place. Checks that
/// every answer comes from `to` and echoes a datagram sent. The number of
/// datagrams answered, or the first wrong answer.
pub fn udp_window(ns: &Netns, to: &str, count: u32, window: usize) -> Result<u32, String> {
    const LOST_AFTER: Duration = Duration::from_secs(1);
    let to: SocketAddr = to.parse().unwrap();
    in_netns(&ns.name, move || {
        let local = if to.is_ipv6() { "[::]:0" } else { "0.0.0.0:0" };
        let socket = std::net::UdpSocket::bind(local).unwrap();
        socket.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
        let mut answered = vec![false; count as usize];
        let mut outstanding: std::collections::VecDeque<(u32, Instant)> = Default::default();
        let (mut next, mut total) = (0u32, 0u32);
        let mut buf = [0u8; 2048];
        while next < count || !outstanding.is_empty() {
            while next < count && outstanding.len() < window {
                socket.send_to(datagram(next).as_bytes(), to).map_err(|e| format!("send {next}: {e}"))?;
                outstanding.push_back((next, Instant::now()));
                next += 1;
            }
            match socket.recv_from(&mut buf) {
                Ok((n, from)) => {
                    if from != to {
                        return Err(format!("an answer came from {from}, not {to}"));
                    }
                    let text = String::from_utf8_lossy(&buf[..n]);
                    let i = text
                        .strip_prefix("echo:datagram ")
                        .and_then(|rest| rest.split(' ').next()?.parse::<u32>().ok())
                        .filter(|i| *i < next && text == format!("echo:{}", datagram(*i)))
                        .ok_or_else(|| format!("wrong answer: {:?}", &text[..text.len().min(40)]))?;
                    if !std::mem::replace(&mut answered[i as usize], true) {
                        total += 1;
                    }
                    outstanding.retain(|(seq, _)| *seq != i);
                }
                Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
                Err(e) => return Err(format!("receive: {e}")),
            }
            while outstanding.front().is_some_and(|(_, sent)| sent.elapsed() > LOST_AFTER) {
                outstanding.pop_front();
            }
        }
        Ok(total)
    })
}

/// A TCP echo server in a namespace (one task per connection, any number
/// of connections); stops on drop.
pub struct TcpEcho {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    /// Connections accepted so far.
    pub accepted: Arc<AtomicU32>,
}

impl TcpEcho {
    pub fn start(ns: &Netns, addr: &str) -> TcpEcho {
        let listener = {
            let addr = addr.to_owned();
            in_netns(&ns.name, move || std::net::TcpListener::bind(addr).expect("bind the echo server"))
        };
        listener.set_nonblocking(true).unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let accepted = Arc::new(AtomicU32::new(0));
        let count = accepted.clone();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                let serve = async {
                    loop {
                        let Ok((mut conn, _)) = listener.accept().await else { continue };
                        count.fetch_add(1, Ordering::Relaxed);
                        tokio::spawn(async move {
                            let (mut r, mut w) = conn.split();
                            let _ = tokio::io::copy(&mut r, &mut w).await;
                        });
                    }
                };
                tokio::select! {
                    () = serve => {}
                    _ = stopped => {}
                }
            });
        });
        TcpEcho { stop: Some(stop), accepted }
    }
}

impl Drop for TcpEcho {
    fn drop(&mut self) {
        let _ = self.stop.take().map(|s| s.send(()));
    }
}

/// Opens `count` TCP connections to `to` (a [`TcpEcho`] behind it) from
/// inside `ns`, all at once: each sends a line and reads its echo, and
/// every connection stays open until all have had their answer (or
/// failed). The number that got their echo, or the first few failures.
pub fn tcp_echo_many(ns: &Netns, to: &str, count: usize, limit: Duration) -> Result<usize, String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let to: SocketAddr = to.parse().unwrap();
    in_netns(&ns.name, move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async move {
            let all_answered = Arc::new(tokio::sync::Barrier::new(count));
            let mut tasks = tokio::task::JoinSet::new();
            for i in 0..count {
                let all_answered = all_answered.clone();
                tasks.spawn(async move {
                    let exchange = async {
                        let mut conn = tokio::net::TcpStream::connect(to).await.map_err(|e| format!("connect: {e}"))?;
                        let line = format!("connection {i}\n");
                        conn.write_all(line.as_bytes()).await.map_err(|e| format!("write: {e}"))?;
                        let mut echo = vec![0u8; line.len()];
                        conn.read_exact(&mut echo).await.map_err(|e| format!("read: {e}"))?;
                        if echo != line.as_bytes() {
                            return Err(format!("wrong echo {:?}", String::from_utf8_lossy(&echo)));
                        }
                        Ok(conn)
                    };
                    let result = match tokio::time::timeout(limit, exchange).await {
                        Ok(r) => r,
                        Err(_) => Err(format!("no echo within {limit:?}")),
                    };
                    // Hold the connection until every other one has its echo.
                    all_answered.wait().await;
                    result.map(drop).map_err(|e| format!("connection {i}: {e}"))
                });
            }
            let (mut ok, mut failures) = (0, Vec::new());
            while let Some(r) = tasks.join_next().await {
                match r.unwrap() {
                    Ok(()) => ok += 1,
                    Err(e) => failures.push(e),
                }
            }
            if failures.is_empty() {
                Ok(ok)
            } else {
                failures.truncate(5);
                Err(format!("{ok} of {count} got their echo; failures: {failures:?}"))
            }
        })
    })
}

/// A program running in the background inside a namespace, killed on drop.
pub struct NsProcess {
    child: Child,
}

impl NsProcess {
    /// Starts `args` in `ns`, its output discarded.
    pub fn spawn(ns: &Netns, args: &[&str]) -> NsProcess {
        let child = ns
            .cmd(args[0])
            .args(&args[1..])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("{args:?} in {}: {e}", ns.name));
        NsProcess { child }
    }
}

impl Drop for NsProcess {
    fn drop(&mut self) {
        // `ip netns exec` execs the program: this is its pid.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// dnsmasq (`dnsmasq-base`) in `ns` as an upstream resolver of a test's
/// own: bound to `listen:port` only (nowhere else in the namespace, and
/// nowhere outside it), no resolv.conf and no hosts file, answering only
/// what `records` (dnsmasq options such as
/// `--host-record=example.edge.test,203.0.113.7` or `--txt-record=...`)
/// define. Returns once it answers `probe` (`[name, type]`) over TCP;
/// stopped on drop.
pub fn dnsmasq(ns: &Netns, listen: &str, port: u16, records: &[String], probe: [&str; 2]) -> NsProcess {
    let (listen_at, port_at) = (format!("--listen-address={listen}"), format!("--port={port}"));
    let mut args = vec![
        "dnsmasq",
        "--keep-in-foreground",
        "--conf-file=/dev/null",
        "--no-resolv",
        "--no-hosts",
        "--pid-file=",
        "--bind-interfaces",
        &listen_at,
        &port_at,
    ];
    args.extend(records.iter().map(String::as_str));
    let process = NsProcess::spawn(ns, &args);
    let (server, port) = (format!("@{listen}"), port.to_string());
    let dig = ["dig", &server, "-p", &port, "+tcp", "+short", "+time=1", "+tries=1", probe[0], probe[1]];
    eventually(Duration::from_secs(10), "dnsmasq answers in the namespace (apt-get install dnsmasq-base)", || {
        let out = ns.exec(&dig);
        (!String::from_utf8_lossy(&out.stdout).trim().is_empty()).then_some(())
    });
    process
}

//! The SOCKS5 entry as operators use it (issue #16): SSH to a node through
//! the entry on another node, across the tunnel, with Debian's sshd and
//! OpenBSD netcat's SOCKS5 client (`nc -X 5`) as ssh's ProxyCommand.
//!
//! ```text
//!  node-a 10.0.0.2 ──┐                    node-b 10.0.0.3
//!   ssh -> nc -X 5 -> entry 127.0.0.1:10800 ═ tunnel ═> agent b -> sshd 127.0.0.1:22
//!                    └─ bridge ─────────────┘                    echo 10.0.0.3:7000 (service "echo")
//! ```
//!
//! node-b's agent lets only port 22 of its host through (its
//! `socks.allowedPorts`, the default, with SOCKS on there; none with it
//! off), whatever node-a's entry lists; a
//! service name reaches the service's endpoint through node-a's proxy; with
//! a credentials file the entry wants a login. sshd runs with a host key
//! and an authorized key made for the test in a temp dir, in a mount
//! namespace of its own where `/run` is a fresh tmpfs (for its privilege
//! separation directory), so nothing outside temp dirs is touched.
//!
//! In node mode the entry listens on the node-local address, where pods
//! routed through the node reach it too, and a service's cluster IP is
//! intercepted like any connection from the node (`support::node`).
//!
//! As root (namespaces, nftables); CI runs as root.

mod support;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use edgemesh_test_support::socks5::{self, Refusal};
use support::eventually_every;
use support::mesh::{Node, lan_pair, service, wait_for_peer};
use support::netns::{Netns, NsProcess, TcpEcho, in_netns, require_root};
use support::node::{DNS, Topology, start_agent};
use support::write_manifest;

const ENTRY: &str = "127.0.0.1:10800";

/// sshd in `ns` on 127.0.0.1:22, accepting `key`'s public half for root.
struct Sshd {
    _process: NsProcess,
    log: std::path::PathBuf,
}

impl Sshd {
    fn start(ns: &Netns, dir: &Path, key: &Path) -> Sshd {
        let host_key = dir.join("host_key");
        keygen(&host_key);
        let authorized = dir.join("authorized_keys");
        std::fs::copy(key.with_extension("pub"), &authorized).unwrap();
        let config = dir.join("sshd_config");
        let log = dir.join("sshd.log");
        std::fs::write(
            &config,
            format!(
                "ListenAddress 127.0.0.1:22\nHostKey {}\nAuthorizedKeysFile {}\nPidFile none\nUsePAM no\n\
                 StrictModes no\nPermitRootLogin prohibit-password\nPasswordAuthentication no\n\
                 KbdInteractiveAuthentication no\n",
                host_key.display(),
                authorized.display()
            ),
        )
        .unwrap();
        let script = format!(
            "mount -t tmpfs tmpfs /run && mkdir -m 0755 /run/sshd && exec /usr/sbin/sshd -D -e -E {} -f {}",
            log.display(),
            config.display()
        );
        let process = NsProcess::spawn(ns, &["unshare", "--mount", "--propagation", "private", "sh", "-c", &script]);
        let sshd = Sshd { _process: process, log };
        eventually_every(Duration::from_millis(100), Duration::from_secs(10), "sshd listening in node-b", || {
            ns.exec(&["nc", "-z", "127.0.0.1", "22"]).status.success().then_some(())
        });
        sshd
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// An ed25519 key pair without passphrase at `path` (and `path.pub`).
fn keygen(path: &Path) {
    let out = Command::new("ssh-keygen").args(["-q", "-t", "ed25519", "-N", "", "-f"]).arg(path).output().unwrap();
    assert!(out.status.success(), "ssh-keygen: {}", String::from_utf8_lossy(&out.stderr));
}

/// `ssh root@<host> <command>` from `ns` through the SOCKS5 entry at
/// [`ENTRY`] (`nc -X 5` as the ProxyCommand): its status and output.
fn ssh(ns: &Netns, key: &Path, host: &str, command: &str) -> (bool, String) {
    let out = ns.exec(&[
        "ssh",
        "-F",
        "/dev/null",
        "-o",
        "BatchMode=yes",
        "-o",
        "StrictHostKeyChecking=no",
        "-o",
        "UserKnownHostsFile=/dev/null",
        "-o",
        "ConnectTimeout=20",
        "-o",
        &format!("ProxyCommand=nc -X 5 -x {ENTRY} %h %p"),
        "-i",
        key.to_str().unwrap(),
        &format!("root@{host}"),
        command,
    ]);
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

/// A CONNECT from inside `ns` through [`ENTRY`]; on success, the first
/// four bytes back after sending "SSH-" (sshd's banner, or an echo).
fn connect(ns: &Netns, login: Option<(&'static str, &'static str)>, host: &str, port: u16) -> Result<String, Refusal> {
    let host = host.to_owned();
    in_netns(&ns.name, move || {
        let mut s = socks5::connect(ENTRY.parse().unwrap(), login, &host, port)?;
        let back = socks5::echo(&mut s, b"SSH-").map_err(Refusal::Io)?;
        Ok(String::from_utf8_lossy(&back).into_owned())
    })
}

fn code(result: Result<String, Refusal>) -> u8 {
    match result {
        Err(Refusal::Reply(code)) => code,
        other => panic!("expected a SOCKS5 refusal, got {other:?}"),
    }
}

#[test]
fn ssh_to_another_node_through_the_entry_and_only_where_that_node_allows() {
    require_root();
    let (_lan, a, b) = lan_pair();
    let keys = tempfile::tempdir().unwrap();
    let key = keys.path().join("id_ed25519");
    keygen(&key);
    let sshd = Sshd::start(&b.ns, keys.path(), &key);
    // On node-b's host, a port its list does not have (node-a's does).
    let _other = TcpEcho::start(&b.ns, "127.0.0.1:2222");
    let _echo = TcpEcho::start(&b.ns, "10.0.0.3:7000");
    let cluster = [a.object("10.0.0.2"), b.object("10.0.0.3"), service("echo", "TCP", 7000, "node-b", "10.0.0.3")];
    a.manifests(&cluster);
    b.manifests(&cluster);
    // node-b: SOCKS on, socks.allowedPorts the default [22].
    let b_config = b.path("agent.yaml");
    std::fs::write(&b_config, "socks:\n  enabled: true\n").unwrap();
    let agent_b = b.start(&["--config", b_config.to_str().unwrap()]);
    let agent_a = a.start(&["--config", &write_config(&a, "")]);
    wait_for_peer(&agent_a, "node-b", "node-a to find node-b", |_| true);

    // ssh node-b, through the tunnel: the session runs on node-b.
    let (ok, out) = ssh(&a.ns, &key, "node-b", "ip -o -4 addr show dev eth0");
    assert!(
        ok && out.contains("10.0.0.3/24"),
        "ssh through the entry: {out}\nsshd:\n{}\nagent a:\n{}",
        sshd.log(),
        agent_a.log()
    );
    assert!(sshd.log().contains("Accepted publickey for root"), "{}", sshd.log());
    // The same through the blocking client: the SSH banner comes back.
    assert_eq!(connect(&a.ns, None, "node-b", 22).unwrap(), "SSH-");

    // Port 2222 of node-b's host: node-a lists it, node-b does not, and
    // node-b decides: "connection not allowed by ruleset".
    assert_eq!(code(connect(&a.ns, None, "node-b", 2222)), 2);
    let (ok, out) = ssh(&a.ns, &key, "node-b", "true");
    assert!(ok, "still served after a refusal: {out}");
    // node-a's own host by name: its own list (2222 listed, nothing there).
    assert_eq!(code(connect(&a.ns, None, "node-a", 2222)), 5);
    assert_eq!(code(connect(&a.ns, None, "node-a", 8080)), 2);
    // A service by name and by VIP: node-a's proxy sends it to node-b's endpoint.
    assert_eq!(connect(&a.ns, None, "echo.default", 7000).unwrap(), "SSH-");
    let vip = agent_a.vip("default", "echo").expect("echo has a VIP on node-a");
    assert_eq!(connect(&a.ns, None, &vip, 7000).unwrap(), "SSH-");
    assert_eq!(connect(&a.ns, None, "echo.default.svc.cluster.local", 7000).unwrap(), "SSH-");
    // Unknown names: "host unreachable"; an address of no service neither.
    assert_eq!(code(connect(&a.ns, None, "node-z", 22)), 4);
    assert_eq!(code(connect(&a.ns, None, "10.0.0.3", 22)), 4);
    let metrics = agent_a.get("/metrics").unwrap();
    for series in [
        "edgemesh_socks_connections_total{result=\"ok\"} 6",
        "edgemesh_socks_connections_total{result=\"not_allowed\"} 2",
    ] {
        assert!(metrics.contains(series), "{series} in\n{metrics}");
    }

    // With a credentials file, a login is required and checked.
    drop(agent_a);
    std::fs::write(a.path("socks-users"), "ops:s3cret\n").unwrap();
    let agent_a = a.start(&["--config", &write_config(&a, "  credentialsFile: socks-users\n")]);
    wait_for_peer(&agent_a, "node-b", "node-a to find node-b again", |_| true);
    assert!(matches!(connect(&a.ns, None, "node-b", 22), Err(Refusal::NoMethod)));
    assert!(matches!(connect(&a.ns, Some(("ops", "wrong")), "node-b", 22), Err(Refusal::BadLogin)));
    assert_eq!(connect(&a.ns, Some(("ops", "s3cret")), "node-b", 22).unwrap(), "SSH-");
    let (ok, _) = ssh(&a.ns, &key, "node-b", "true");
    assert!(!ok, "nc -X 5 offers no login: refused");

    // A node that never turned SOCKS on exposes no host port, not even
    // the default list's 22.
    drop(agent_b);
    let _agent_b = b.start(&[]);
    wait_for_peer(&agent_a, "node-b", "node-a to find node-b without SOCKS", |_| true);
    assert_eq!(code(connect(&a.ns, Some(("ops", "s3cret")), "node-b", 22)), 2);
    eprintln!(
        "SOCKS5 entry log lines of node-a:\n{}",
        agent_a.log().lines().filter(|l| l.contains("SOCKS")).collect::<Vec<_>>().join("\n")
    );
}

/// node-a's config file: the entry on, its list [22, 2222], and `extra`
/// lines of the `socks` section; its path.
fn write_config(a: &Node, extra: &str) -> String {
    let config = a.path("agent.yaml");
    std::fs::write(&config, format!("socks:\n  enabled: true\n  allowedPorts: [22, 2222]\n{extra}")).unwrap();
    config.to_str().unwrap().to_owned()
}

#[test]
fn in_node_mode_the_entry_is_on_the_node_local_address_and_reaches_cluster_ips() {
    require_root();
    let t = Topology::new();
    let (dir, manifests) = support::manifest_dir();
    write_manifest(&manifests, "web.yaml", &support::node::service("web", &["10.96.0.10"], 80));
    let config = dir.path().join("agent.yaml");
    std::fs::write(&config, "socks:\n  enabled: true\n").unwrap();
    let _agent = start_agent(&t.node, &manifests, &dir.path().join("state"), &["--config", config.to_str().unwrap()]);
    let entry = format!("{DNS}:10800");
    // curl as the SOCKS5 client: by name (resolved by the entry), and by
    // cluster IP, from the node and from a pod routed through it.
    for ns in [&t.node, &t.client] {
        for url in ["http://web.default/", "http://web.default.svc.cluster.local/", "http://10.96.0.10/"] {
            let got = ns.curl_with(&["--socks5-hostname", &entry], url);
            assert_eq!(got.as_deref(), Some("pod-nginx\n"), "{url} from {}", ns.name);
        }
    }
    // Not on 127.0.0.1 in node mode, and nothing unknown reached.
    assert_eq!(t.node.curl_with(&["--socks5-hostname", "127.0.0.1:10800"], "http://web.default/"), None);
    assert_eq!(
        t.node.curl_with(&["--socks5-hostname", &entry], "http://10.244.1.2/"),
        None,
        "a pod address is no service"
    );
}

//! Our agent leaves an EdgeMesh agent on the same node its ports, device
//! and addresses (issue #21), without EdgeMesh itself (CI cannot build it;
//! bench/coexist_edgemesh.sh runs the real one, results in bench/results/).
//! As root, the agent in a node's namespace with its defaults and the
//! tunnel on (mDNS too); then the sockets EdgeMesh v1.17 opens there, with
//! its socket options: mDNS on `0.0.0.0:5353` with `SO_REUSEADDR` (Go's
//! `net.ListenMulticastUDP`), the tunnel on TCP `0.0.0.0:20006`, and DNS on
//! `169.254.96.16:53` (UDP, TCP) of its own device `edgemesh0`. In node
//! mode, the switch's DNS address leaves `169.254.96.16:53` and the device
//! `edgemesh0` alone. A control: with our DNS on `127.0.0.1:5353` (the
//! default before), EdgeMesh's mDNS bind fails, as the issue found.

mod support;

use std::io::ErrorKind;
use std::net::SocketAddr;
use std::time::Duration;

use socket2::{Domain, Protocol, Socket, Type};
use support::netns::{Netns, NsAgent, in_netns, require_root};

/// Binds `addr` in `ns` as EdgeMesh does: UDP with `SO_REUSEADDR` (and,
/// for the mDNS port, only that), TCP listening.
fn bind_like_edgemesh(ns: &Netns, addr: &str, udp: bool) -> std::io::Result<()> {
    let addr: SocketAddr = addr.parse().unwrap();
    in_netns(&ns.name, move || {
        let socket = if udp {
            Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?
        } else {
            Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP))?
        };
        socket.set_reuse_address(true)?;
        socket.bind(&addr.into())?;
        if !udp {
            socket.listen(16)?;
        }
        Ok(())
    })
}

/// EdgeMesh's device with its address, as EdgeMesh makes it (a bridge).
fn edgemesh_device(ns: &Netns) {
    let run = |args: &[&str]| assert!(ns.exec(args).status.success(), "{args:?}");
    run(&["ip", "link", "add", "edgemesh0", "type", "bridge"]);
    run(&["ip", "addr", "add", "169.254.96.16/32", "dev", "edgemesh0"]);
    run(&["ip", "link", "set", "edgemesh0", "up"]);
}

fn start_agent(ns: &Netns, dir: &std::path::Path, extra: &[&str]) -> NsAgent {
    let (manifests, state) = (dir.join("manifests"), dir.join("state"));
    std::fs::create_dir_all(&manifests).unwrap();
    let mut args = vec![
        "--node-name",
        "n1",
        "--manifest-dir",
        manifests.to_str().unwrap(),
        "--state-dir",
        state.to_str().unwrap(),
        "--dns-upstream",
        "127.0.0.1:9",
        "--tunnel",
    ];
    args.extend_from_slice(extra);
    NsAgent::start(ns, &args, Duration::from_secs(15))
}

fn edgemesh_sockets_bind(ns: &Netns) {
    for (addr, udp) in
        [("0.0.0.0:5353", true), ("0.0.0.0:20006", false), ("169.254.96.16:53", true), ("169.254.96.16:53", false)]
    {
        let proto = if udp { "udp" } else { "tcp" };
        bind_like_edgemesh(ns, addr, udp).unwrap_or_else(|e| panic!("EdgeMesh's {proto} {addr} is taken: {e}"));
    }
}

#[test]
fn with_its_defaults_our_agent_leaves_edgemeshs_ports_device_and_address_free() {
    require_root();
    let ns = Netns::new("coexist");
    ns.exec(&["ip", "link", "set", "lo", "up"]);
    let dir = tempfile::tempdir().unwrap();
    edgemesh_device(&ns);
    let agent = start_agent(&ns, dir.path(), &[]);
    let config = agent.json("/config");
    assert_eq!(config["dns"]["listen"], "127.0.0.1:15053", "{config}");
    assert_eq!(config["tunnel"]["mdns"], true, "mDNS on: ours shares 5353 with EdgeMesh's");
    edgemesh_sockets_bind(&ns);
    assert!(ns.links().contains("edgemesh0"), "EdgeMesh's device is left alone");
    drop(agent);

    // Node mode with the switch's DNS address: EdgeMesh keeps its address,
    // its device and its ports; ours is edge0.
    let dir = tempfile::tempdir().unwrap();
    let agent = start_agent(&ns, dir.path(), &["--intercept", "nftables", "--dns-listen", "169.254.96.17:53"]);
    edgemesh_sockets_bind(&ns);
    let show =
        |dev: &str| String::from_utf8_lossy(&ns.exec(&["ip", "-br", "addr", "show", "dev", dev]).stdout).into_owned();
    assert!(show("edgemesh0").contains("169.254.96.16/32"), "{}", show("edgemesh0"));
    assert!(
        show("edge0").contains("169.254.96.17/32") && !show("edge0").contains("169.254.96.16"),
        "{}",
        show("edge0")
    );
    drop(agent);
}

#[test]
fn control_a_dns_server_on_the_mdns_port_takes_it_from_edgemesh() {
    require_root();
    let ns = Netns::new("coexist0");
    ns.exec(&["ip", "link", "set", "lo", "up"]);
    let dir = tempfile::tempdir().unwrap();
    let _agent = start_agent(&ns, dir.path(), &["--dns-listen", "127.0.0.1:5353", "--no-mdns"]);
    let err = bind_like_edgemesh(&ns, "0.0.0.0:5353", true).expect_err("EdgeMesh's mDNS socket bound beside ours");
    assert_eq!(err.kind(), ErrorKind::AddrInUse, "{err}");
}

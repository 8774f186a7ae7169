//! The VIP device (`edge0` by default): makes the VIP range an address
//! range of this node.
//!
//! VIPs in `127.0.0.0/8` are local already (the loopback device holds the
//! whole range). A VIP range outside it, such as EdgeMesh's `9.251.0.0/16`,
//! is routed nowhere until something claims it: the agent creates a device
//! of its own and adds a `local` route for the range on it
//! (`ip route add local 9.251.0.0/16 dev edge0`, which goes to the `local`
//! routing table), so that connections and datagrams to any VIP, from local
//! processes and from pods routed through the node, are delivered on this
//! node, where nftables redirects them (TCP) or the UDP listeners take them.
//! One route covers the whole range: no address per service to add or
//! remove as services come and go.
//!
//! The device is a `dummy` link where the kernel has the type, otherwise an
//! empty bridge (a bridge without ports forwards nothing and holds local
//! routes just as well). It is driven with `ip` (iproute2), like `nft`
//! for the table: no netlink library in the agent, and the same operator
//! vocabulary in errors and docs.
//!
//! Ownership: the agent owns the device of its name and nothing else. At
//! start, a device of that name that is a dummy or a bridge without ports
//! is one left by an earlier run (crash) and is replaced; any other device
//! of that name (a veth, a bridge with ports, a physical link) is someone
//! else's: the agent refuses to start rather than touch it. On clean stop
//! the device goes, and its routes with it.

use std::io;
use std::net::IpAddr;
use std::process::Stdio;

use tokio::process::Command;

/// Why the device could not be set up or removed.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error(
        "cannot run `{program}`: it is not installed; install iproute2 (e.g. `apt-get install iproute2`), \
         or run without interception (--intercept none)"
    )]
    IpMissing { program: String },

    #[error(
        "cannot set up the VIP device {name}: {detail}; this needs root or the CAP_NET_ADMIN capability \
         (run the agent as root, or e.g. `setcap cap_net_admin+ep` on it and on ip)"
    )]
    Permission { name: String, detail: String },

    #[error(
        "a device named {name} exists and is not one the agent made ({what}); it is left alone: \
         choose another name with --vip-device, or remove it"
    )]
    Foreign { name: String, what: String },

    #[error("cannot run `{program}`: {source}")]
    Spawn { program: String, source: io::Error },

    #[error("`ip {args}` failed: {stderr}")]
    Ip { args: String, stderr: String },
}

/// A range of addresses (`9.251.0.0/16`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Range {
    pub addr: IpAddr,
    pub prefix: u8,
}

impl Range {
    /// Whether the range lies in the loopback range (already local).
    pub fn is_loopback(&self) -> bool {
        match self.addr {
            IpAddr::V4(v4) => v4.is_loopback() && self.prefix >= 8,
            IpAddr::V6(v6) => v6.is_loopback() && self.prefix == 128,
        }
    }
}

impl std::fmt::Display for Range {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// The `ip` program (a path, or a name looked up in `PATH`).
#[derive(Clone, Debug)]
pub struct Ip {
    program: String,
    /// Arguments before ip's own (e.g. `-n NS` in tests).
    leading: Vec<String>,
}

impl Default for Ip {
    fn default() -> Self {
        Self { program: "ip".into(), leading: Vec::new() }
    }
}

impl Ip {
    /// `ip -n NS`: acts in network namespace `netns`.
    pub fn in_netns(netns: &str) -> Self {
        Self { program: "ip".into(), leading: vec!["-n".into(), netns.into()] }
    }

    /// Runs `ip args`; stdout on success, `Err((stderr, error))` on failure.
    async fn run(&self, name: &str, args: &[&str]) -> Result<Result<String, String>, DeviceError> {
        let out = Command::new(&self.program)
            .args(&self.leading)
            .args(args)
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output()
            .await
            .map_err(|source| {
                if source.kind() == io::ErrorKind::NotFound {
                    DeviceError::IpMissing { program: self.program.clone() }
                } else {
                    DeviceError::Spawn { program: self.program.clone(), source }
                }
            })?;
        if out.status.success() {
            return Ok(Ok(String::from_utf8_lossy(&out.stdout).into_owned()));
        }
        let stderr = String::from_utf8_lossy(&out.stderr).trim().to_owned();
        if stderr.contains("Operation not permitted") || stderr.contains("Permission denied") {
            return Err(DeviceError::Permission { name: name.to_owned(), detail: stderr });
        }
        Ok(Err(stderr))
    }

    /// Runs `ip args`, which must succeed.
    async fn must(&self, name: &str, args: &[&str]) -> Result<String, DeviceError> {
        self.run(name, args).await?.map_err(|stderr| DeviceError::Ip { args: args.join(" "), stderr })
    }
}

/// The agent's VIP device, up, with a local route per VIP range.
#[derive(Debug)]
pub struct VipDevice {
    name: String,
    ip: Ip,
    kind: &'static str,
    routes: Vec<Range>,
}

impl VipDevice {
    /// Creates device `name` (replacing one left by an earlier run) with a
    /// local route for each range outside the loopback range.
    pub async fn create(name: &str, ranges: &[Range], ip: Ip) -> Result<Self, DeviceError> {
        if let Some(what) = existing(&ip, name).await? {
            match what {
                Existing::Ours(kind) => {
                    tracing::info!(device = name, kind, "replacing the VIP device left by an earlier run");
                    ip.must(name, &["link", "del", "dev", name]).await?;
                }
                Existing::Foreign(what) => return Err(DeviceError::Foreign { name: name.to_owned(), what }),
            }
        }
        let kind = match ip.run(name, &["link", "add", name, "type", "dummy"]).await? {
            Ok(_) => "dummy",
            Err(stderr) if stderr.contains("Unknown device type") || stderr.contains("not supported") => {
                tracing::debug!(device = name, "no dummy link type in this kernel; using an empty bridge");
                ip.must(name, &["link", "add", name, "type", "bridge"]).await?;
                "bridge"
            }
            Err(stderr) => {
                return Err(DeviceError::Ip { args: format!("link add {name} type dummy"), stderr });
            }
        };
        let mut device = VipDevice { name: name.to_owned(), ip, kind, routes: Vec::new() };
        if let Err(e) = device.configure(ranges).await {
            // Leave nothing half made.
            let _ = device.ip.run(name, &["link", "del", "dev", name]).await;
            return Err(e);
        }
        tracing::info!(device = name, kind, routes = ?device.routes.iter().map(ToString::to_string).collect::<Vec<_>>(),
            "VIP device in place");
        Ok(device)
    }

    async fn configure(&mut self, ranges: &[Range]) -> Result<(), DeviceError> {
        let name = self.name.clone();
        self.ip.must(&name, &["link", "set", "dev", &name, "up"]).await?;
        for range in ranges.iter().filter(|r| !r.is_loopback()) {
            let cidr = range.to_string();
            let family = if range.addr.is_ipv4() { "-4" } else { "-6" };
            self.ip.must(&name, &[family, "route", "add", "local", &cidr, "dev", &name]).await?;
            self.routes.push(*range);
        }
        Ok(())
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `dummy` or `bridge`.
    pub fn kind(&self) -> &'static str {
        self.kind
    }

    /// The ranges routed locally through the device.
    pub fn routes(&self) -> &[Range] {
        &self.routes
    }

    /// Deletes the device and its routes (clean stop).
    pub async fn remove(self) -> Result<(), DeviceError> {
        self.ip.must(&self.name, &["link", "del", "dev", &self.name]).await?;
        tracing::info!(device = %self.name, "VIP device removed");
        Ok(())
    }
}

enum Existing {
    /// A dummy, or a bridge without ports: what the agent makes.
    Ours(&'static str),
    Foreign(String),
}

/// What a device named `name` is, if there is one.
async fn existing(ip: &Ip, name: &str) -> Result<Option<Existing>, DeviceError> {
    let details = match ip.run(name, &["-d", "-o", "link", "show", "dev", name]).await? {
        Ok(out) => out,
        Err(stderr) if stderr.contains("does not exist") => return Ok(None),
        Err(stderr) => return Err(DeviceError::Ip { args: format!("-d -o link show dev {name}"), stderr }),
    };
    Ok(Some(classify(&details, || async { ip.must(name, &["-o", "link", "show", "master", name]).await }).await?))
}

/// Reads `ip -d -o link show` output: the kind follows the link line after a
/// `\` separator (`\    bridge forward_delay ...`, `\    dummy ...`).
async fn classify<F, Fut>(details: &str, ports: F) -> Result<Existing, DeviceError>
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = Result<String, DeviceError>>,
{
    let kind = details.split('\\').skip(2).find_map(|part| part.split_whitespace().next()).unwrap_or("");
    match kind {
        "dummy" => Ok(Existing::Ours("dummy")),
        "bridge" => {
            let ports = ports().await?;
            if ports.trim().is_empty() {
                Ok(Existing::Ours("bridge"))
            } else {
                let n = ports.lines().filter(|l| !l.trim().is_empty()).count();
                Ok(Existing::Foreign(format!("a bridge with {n} port(s)")))
            }
        }
        "" => Ok(Existing::Foreign("a device of no special kind (physical?)".into())),
        other => Ok(Existing::Foreign(format!("a {other} device"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        let r = |s: &str, p| Range { addr: s.parse().unwrap(), prefix: p };
        assert!(r("127.251.0.0", 16).is_loopback());
        assert!(!r("9.251.0.0", 16).is_loopback());
        assert!(!r("0.0.0.0", 0).is_loopback(), "a range wider than loopback is not loopback");
        assert_eq!(r("9.251.0.0", 16).to_string(), "9.251.0.0/16");
    }

    #[tokio::test]
    async fn the_kind_of_an_existing_device() {
        let no_ports = || async { Ok(String::new()) };
        let bridge = "2: edge0: <BROADCAST,UP> mtu 1500\\    link/ether 46:ec brd ff:ff promiscuity 0 \\    bridge forward_delay 1500 stp_state 0";
        assert!(matches!(classify(bridge, no_ports).await.unwrap(), Existing::Ours("bridge")));
        let with_port = || async { Ok("5: veth0: <UP> master edge0\n".to_owned()) };
        assert!(matches!(classify(bridge, with_port).await.unwrap(), Existing::Foreign(w) if w.contains("1 port")));
        let veth = "3: edge0@if2: <UP> mtu 1500\\    link/ether 1e:1a brd ff:ff \\    veth addrgenmode eui64";
        assert!(matches!(classify(veth, no_ports).await.unwrap(), Existing::Foreign(w) if w.contains("veth")));
        let dummy =
            "4: edge0: <UP> mtu 1500\\    link/ether 1e:1a brd ff:ff promiscuity 0 \\    dummy addrgenmode eui64";
        assert!(matches!(classify(dummy, no_ports).await.unwrap(), Existing::Ours("dummy")));
    }

    #[tokio::test]
    async fn a_missing_ip_says_what_to_install() {
        let ip = Ip { program: "/nonexistent/ip".into(), leading: Vec::new() };
        let err = VipDevice::create("edge0", &[], ip).await.unwrap_err();
        assert!(err.to_string().contains("apt-get install iproute2"), "{err}");
    }
}

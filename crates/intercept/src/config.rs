//! The `intercept` section of the agent's config, and the interceptor's
//! set-up made from it.

use std::net::IpAddr;
use std::path::PathBuf;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::{DEFAULT_MARK, DEFAULT_PORT, DEFAULT_TABLE, DEFAULT_VIP_DEVICE, DeviceSpec, Nft, TableScope, TableSpec};

/// How connections to service addresses reach the proxy.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum InterceptMode {
    /// A listener per service VIP and port; clients use the VIPs (from DNS).
    #[default]
    None,
    /// An nftables table redirects connections to cluster IPs and VIPs to
    /// one transparent port (needs root or CAP_NET_ADMIN, and `nft`).
    Nftables,
    /// The kernel fast path (issue #15): BPF programs on the cgroup's
    /// socket hooks connect clients straight to local endpoints, and send
    /// the rest to the service's VIP, where the proxy listens (needs
    /// CAP_BPF, CAP_PERFMON and CAP_NET_ADMIN, cgroup v2). Node ports are served as in
    /// nftables mode, by a table that holds them only (and `nft`).
    Ebpf,
}

impl FromStr for InterceptMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "none" => Ok(Self::None),
            "nftables" => Ok(Self::Nftables),
            "ebpf" => Ok(Self::Ebpf),
            _ => Err(format!("unknown interception mode {s:?} (none, nftables or ebpf)")),
        }
    }
}

/// What `intercept.mode: ebpf` does when the kernel or the process lacks
/// what the fast path needs.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Fallback {
    /// The agent refuses to start, saying what is missing.
    #[default]
    None,
    /// The agent runs in nftables mode, and says so.
    Nftables,
}

/// Default bpffs directory of the fast path's pinned programs and maps.
pub const DEFAULT_BPF_PIN_PATH: &str = "/sys/fs/bpf/edgemesh";

/// Interception settings (keys in camelCase).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct InterceptConfig {
    /// `none`, `nftables` or `ebpf`.
    pub mode: InterceptMode,
    /// Port of the transparent listener (all addresses) that intercepted
    /// connections are redirected to.
    pub port: u16,
    /// Name of the agent's nftables table (family `inet`); the agent
    /// replaces it at start and deletes it at stop. Mode `ebpf` names its
    /// node-port table after it: `<table>_nodeports`.
    pub table: String,
    /// Mark of the agent's own upstream connections, which the table lets
    /// pass (must not be used by other software on the node).
    pub mark: u32,
    /// Name of the agent's VIP device (made at start in nftables mode,
    /// removed at stop), which holds the node-local DNS address and the
    /// VIPs (outside 127.0.0.0/8) as addresses of this node; empty for none.
    pub vip_device: String,
    /// `ebpf`: the cgroup v2 directory the programs attach to (they see
    /// every process in it and below); none: the cgroup v2 root.
    pub cgroup_path: Option<PathBuf>,
    /// `ebpf`: the bpffs directory the programs and maps are pinned under
    /// (bpffs is mounted at /sys/fs/bpf if it is not).
    pub bpf_pin_path: PathBuf,
    /// `ebpf`: leave the programs and maps in place when the agent stops,
    /// so local traffic flows while it restarts; false: a stop removes them.
    pub keep_on_exit: bool,
    /// `ebpf`: what to do without kernel support.
    pub fallback: Fallback,
}

impl Default for InterceptConfig {
    fn default() -> Self {
        Self {
            mode: InterceptMode::None,
            port: DEFAULT_PORT,
            table: DEFAULT_TABLE.into(),
            mark: DEFAULT_MARK,
            vip_device: DEFAULT_VIP_DEVICE.into(),
            cgroup_path: None,
            bpf_pin_path: DEFAULT_BPF_PIN_PATH.into(),
            keep_on_exit: true,
            fallback: Fallback::None,
        }
    }
}

impl InterceptConfig {
    /// Whether interception with nftables is on (a transparent port).
    pub fn enabled(&self) -> bool {
        self.mode == InterceptMode::Nftables
    }

    /// The table of mode `ebpf`, which holds node ports only: named apart
    /// from nftables mode's, so neither mode mistakes the other's for its own.
    pub fn node_port_table(&self) -> String {
        format!("{}_nodeports", self.table)
    }

    /// Whether the agent serves real cluster IPs (nftables or ebpf): node
    /// mode's VIP range, DNS address and VIP device.
    pub fn node_mode(&self) -> bool {
        self.mode != InterceptMode::None
    }

    /// The interceptor's set-up: the table (every service address in
    /// nftables mode; node ports only in mode `ebpf`, where the fast path
    /// serves the rest), the other mode's table to delete if an earlier run
    /// left it, and the VIP device (unless `vipDevice` is empty) holding
    /// `fixed` (the node-local DNS address).
    pub fn setup(&self, fixed: Vec<IpAddr>) -> InterceptSetup {
        let (port, mark) = (self.port, self.mark);
        let (table, other_mode_table) = match self.mode {
            InterceptMode::None => (None, None),
            InterceptMode::Nftables => {
                let table = TableSpec { name: self.table.clone(), port, mark, scope: TableScope::Every };
                (Some(table), Some(self.node_port_table()))
            }
            InterceptMode::Ebpf => {
                let table = TableSpec { name: self.node_port_table(), port, mark, scope: TableScope::NodePorts };
                (Some(table), Some(self.table.clone()))
            }
        };
        InterceptSetup {
            table,
            other_mode_table,
            nft: Nft::default(),
            device: (!self.vip_device.is_empty()).then(|| DeviceSpec { name: self.vip_device.clone(), fixed }),
        }
    }

    /// Problems with these settings, each naming its key.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        let table = &self.table;
        if table.is_empty()
            || table.len() > 64
            || !table.starts_with(|c: char| c.is_ascii_alphabetic())
            || !table.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            problems.push(format!(
                "intercept.table {table:?} is not a valid nftables table name (a letter, then letters, digits, _ or -)"
            ));
        }
        if self.node_mode() {
            let dev = &self.vip_device;
            if dev.len() > 15 || dev == "." || dev == ".." || dev.chars().any(|c| c == '/' || c.is_whitespace()) {
                problems.push(format!(
                    "intercept.vipDevice {dev:?} is not a valid device name (at most 15 characters, no '/' or spaces)"
                ));
            }
        }
        if self.node_mode() {
            if self.port == 0 {
                problems.push(format!(
                    "intercept.port must be a fixed port (not 0) with intercept.mode {}",
                    if self.enabled() { "nftables" } else { "ebpf (node ports)" }
                ));
            }
            if self.mark == 0 {
                problems.push("intercept.mark must not be 0 (unmarked traffic is everyone's)".into());
            }
        }
        problems.extend(self.ebpf_problems());
        problems
    }

    fn ebpf_problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if let Some(cgroup) = &self.cgroup_path
            && !cgroup.is_absolute()
        {
            problems.push(format!("intercept.cgroupPath {} must be an absolute path", cgroup.display()));
        }
        let pins = &self.bpf_pin_path;
        let escapes = pins.components().any(|c| c == std::path::Component::ParentDir);
        if !pins.starts_with("/sys/fs/bpf") || pins.components().count() < 5 || escapes {
            problems.push(format!(
                "intercept.bpfPinPath {} must be a directory under /sys/fs/bpf (the bpffs the agent mounts), e.g. {DEFAULT_BPF_PIN_PATH}",
                pins.display()
            ));
        }
        if self.fallback != Fallback::None && self.mode != InterceptMode::Ebpf {
            problems.push("intercept.fallback applies only with intercept.mode ebpf".into());
        }
        problems
    }
}

/// What [`Interceptor::start`](crate::Interceptor::start) sets up.
#[derive(Clone, Debug)]
pub struct InterceptSetup {
    /// The nftables table; `None`: the VIP device only.
    pub table: Option<TableSpec>,
    /// A table an earlier run in the other mode may have left (mode
    /// `ebpf`'s node-port table in nftables mode, and the reverse): deleted
    /// at start, as its rules would send traffic where this mode does not
    /// serve it.
    pub other_mode_table: Option<String>,
    pub nft: Nft,
    /// The VIP device; `None` for none (VIPs outside the loopback range
    /// are then reachable only if something else routes them here).
    pub device: Option<DeviceSpec>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ebpf() -> InterceptConfig {
        InterceptConfig { mode: InterceptMode::Ebpf, ..InterceptConfig::default() }
    }

    #[test]
    fn ebpf_mode_has_a_node_port_table_of_its_own_and_its_defaults_are_valid() {
        let c = ebpf();
        assert_eq!(c.problems(), Vec::<String>::new());
        assert!(c.node_mode() && !c.enabled(), "node mode, not nftables mode");
        let setup = c.setup(vec![]);
        let table = setup.table.expect("a table for node ports");
        assert_eq!((table.name.as_str(), table.scope), ("edgemesh_nodeports", TableScope::NodePorts));
        assert_eq!((table.port, table.mark), (DEFAULT_PORT, DEFAULT_MARK));
        assert_eq!(setup.other_mode_table.as_deref(), Some("edgemesh"), "nftables mode's, if left");
        let nftables = InterceptConfig { mode: InterceptMode::Nftables, ..c.clone() }.setup(vec![]);
        let table = nftables.table.expect("nftables mode's table");
        assert_eq!((table.name.as_str(), table.scope), ("edgemesh", TableScope::Every));
        assert_eq!(nftables.other_mode_table.as_deref(), Some("edgemesh_nodeports"));
        assert!(c.keep_on_exit);
        assert_eq!(c.bpf_pin_path, std::path::Path::new(DEFAULT_BPF_PIN_PATH));
        assert_eq!("ebpf".parse::<InterceptMode>(), Ok(InterceptMode::Ebpf));
        assert!("bpf".parse::<InterceptMode>().unwrap_err().contains("none, nftables or ebpf"));
    }

    #[test]
    fn each_bad_ebpf_key_is_named() {
        let cases = [
            (InterceptConfig { cgroup_path: Some("sys/fs/cgroup".into()), ..ebpf() }, "intercept.cgroupPath"),
            (InterceptConfig { bpf_pin_path: "/tmp/pins".into(), ..ebpf() }, "intercept.bpfPinPath"),
            (InterceptConfig { bpf_pin_path: "/sys/fs/bpf".into(), ..ebpf() }, "intercept.bpfPinPath"),
            (InterceptConfig { bpf_pin_path: "/sys/fs/bpf/../x".into(), ..ebpf() }, "intercept.bpfPinPath"),
            (InterceptConfig { fallback: Fallback::Nftables, ..InterceptConfig::default() }, "intercept.fallback"),
            (InterceptConfig { vip_device: "a/b".into(), ..ebpf() }, "intercept.vipDevice"),
            (InterceptConfig { port: 0, ..ebpf() }, "intercept.port"),
            (InterceptConfig { mark: 0, ..ebpf() }, "intercept.mark"),
        ];
        for (config, key) in cases {
            let problems = config.problems();
            assert_eq!(problems.len(), 1, "{key}: {problems:?}");
            assert!(problems[0].starts_with(key), "{key}: {problems:?}");
        }
        let fine =
            InterceptConfig { fallback: Fallback::Nftables, cgroup_path: Some("/sys/fs/cgroup/x".into()), ..ebpf() };
        assert_eq!(fine.problems(), Vec::<String>::new());
    }
}

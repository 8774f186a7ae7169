//! The `intercept` section of the agent's config, and the interceptor's
//! set-up made from it.

use std::net::IpAddr;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::{DEFAULT_MARK, DEFAULT_PORT, DEFAULT_TABLE, DEFAULT_VIP_DEVICE, DeviceSpec, Nft, TableSpec};

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
}

impl FromStr for InterceptMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "none" => Ok(Self::None),
            "nftables" => Ok(Self::Nftables),
            _ => Err(format!("unknown interception mode {s:?} (none or nftables)")),
        }
    }
}

/// Interception settings (keys in camelCase).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct InterceptConfig {
    /// `none` or `nftables`.
    pub mode: InterceptMode,
    /// Port of the transparent listener (all addresses) that intercepted
    /// connections are redirected to.
    pub port: u16,
    /// Name of the agent's nftables table (family `inet`); the agent
    /// replaces it at start and deletes it at stop.
    pub table: String,
    /// Mark of the agent's own upstream connections, which the table lets
    /// pass (must not be used by other software on the node).
    pub mark: u32,
    /// Name of the agent's VIP device (made at start in nftables mode,
    /// removed at stop), which holds the node-local DNS address and the
    /// VIPs (outside 127.0.0.0/8) as addresses of this node; empty for none.
    pub vip_device: String,
}

impl Default for InterceptConfig {
    fn default() -> Self {
        Self {
            mode: InterceptMode::None,
            port: DEFAULT_PORT,
            table: DEFAULT_TABLE.into(),
            mark: DEFAULT_MARK,
            vip_device: DEFAULT_VIP_DEVICE.into(),
        }
    }
}

impl InterceptConfig {
    /// Whether interception is on.
    pub fn enabled(&self) -> bool {
        self.mode == InterceptMode::Nftables
    }

    /// The interceptor's set-up: the table, and the VIP device (unless
    /// `vipDevice` is empty) holding `fixed` (the node-local DNS address).
    pub fn setup(&self, fixed: Vec<IpAddr>) -> InterceptSetup {
        InterceptSetup {
            table: TableSpec { name: self.table.clone(), port: self.port, mark: self.mark },
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
        if self.enabled() {
            if self.port == 0 {
                problems.push("intercept.port must be a fixed port (not 0) with intercept.mode nftables".into());
            }
            if self.mark == 0 {
                problems.push("intercept.mark must not be 0 (unmarked traffic is everyone's)".into());
            }
            let dev = &self.vip_device;
            if dev.len() > 15 || dev == "." || dev == ".." || dev.chars().any(|c| c == '/' || c.is_whitespace()) {
                problems.push(format!(
                    "intercept.vipDevice {dev:?} is not a valid device name (at most 15 characters, no '/' or spaces)"
                ));
            }
        }
        problems
    }
}

/// What [`Interceptor::start`](crate::Interceptor::start) sets up.
#[derive(Clone, Debug)]
pub struct InterceptSetup {
    pub table: TableSpec,
    pub nft: Nft,
    /// The VIP device; `None` for none (VIPs outside the loopback range
    /// are then reachable only if something else routes them here).
    pub device: Option<DeviceSpec>,
}

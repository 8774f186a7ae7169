//! The `gateway` section of the agent's config.

use std::net::{IpAddr, Ipv4Addr};

use serde::{Deserialize, Serialize};

/// The edge gateway (see the README's "The edge gateway").
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct GatewayConfig {
    /// Serve the Gateways of `className` in this process (`edgemesh gateway`
    /// turns it on).
    pub enabled: bool,
    /// The GatewayClass this gateway serves (a Gateway's
    /// `spec.gatewayClassName`); EdgeMesh's Istio Gateways are taken as
    /// class `edgemesh`.
    pub class_name: String,
    /// The address listeners bind (every listener's port on it).
    pub listen_address: IpAddr,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            class_name: crate::istio::ISTIO_CLASS.to_owned(),
            listen_address: Ipv4Addr::UNSPECIFIED.into(),
        }
    }
}

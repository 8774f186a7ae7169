//! The `gateway` section of the agent's config.

use std::net::{IpAddr, Ipv4Addr};

use serde::{Deserialize, Serialize};

use crate::tls::CertificateFile;

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
    /// The certificates HTTPS listeners' `certificateRefs` name, as PEM
    /// files: each stands for the Secret `namespace/name`. Files are read
    /// again when they change (rotation without a restart).
    pub certificates: Vec<CertificateFile>,
    /// At most this many connections at once per listening port (0: only
    /// the `http` section's limit).
    pub max_connections_per_listener: usize,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            class_name: crate::istio::ISTIO_CLASS.to_owned(),
            listen_address: Ipv4Addr::UNSPECIFIED.into(),
            certificates: Vec::new(),
            max_connections_per_listener: 0,
        }
    }
}

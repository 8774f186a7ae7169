//! The `gateway` section of the agent's config.

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

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
    /// Standalone certificates for HTTPS listeners' `certificateRefs`:
    /// `{namespace, name, certFile, keyFile}` (PEM), read at each compile
    /// (see [`crate::FileCertificates`]). In Kubernetes mode the Secrets.
    pub certificates: Vec<CertificateFile>,
    /// How long a TLS client may take to complete its handshake (HTTPS) or
    /// send its ClientHello (TLS passthrough).
    #[serde(with = "edgemesh_core::duration")]
    pub tls_handshake_timeout: Duration,
    /// Connections each listening port serves at once, of any protocol
    /// (0: no bound of its own).
    pub max_connections_per_listener: usize,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            class_name: crate::istio::ISTIO_CLASS.to_owned(),
            listen_address: Ipv4Addr::UNSPECIFIED.into(),
            certificates: Vec::new(),
            tls_handshake_timeout: crate::tls::HANDSHAKE_TIMEOUT,
            max_connections_per_listener: 0,
        }
    }
}

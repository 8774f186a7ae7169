//! Errors, worded for the operator: what failed, where, and what to check.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use edgemesh_core::ServiceKey;

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error(
        "cannot listen on {addr} for service {service}: {source}; is another process (or another agent) \
         using this address, and is the VIP range local to this node?"
    )]
    Bind { service: ServiceKey, addr: SocketAddr, source: io::Error },

    #[error("endpoint {addr} refused the connection; is the pod listening on its targetPort?")]
    Refused { addr: SocketAddr },

    #[error(
        "endpoint {addr} did not accept the connection within {timeout:?}; is the pod running and its \
         network reachable from this node?"
    )]
    TimedOut { addr: SocketAddr, timeout: Duration },

    #[error("cannot connect to endpoint {addr}: {source}; check the route from this node to the pod network")]
    Connect { addr: SocketAddr, source: io::Error },

    #[error(
        "endpoint {addr} on node {node} refused the connection through the tunnel; is the pod listening on \
         its targetPort?"
    )]
    RemoteRefused { node: String, addr: SocketAddr },

    #[error("cannot reach endpoint {addr} on node {node} through the tunnel: {source}; see /peers for that node")]
    Remote { node: String, addr: SocketAddr, source: io::Error },

    #[error(
        "endpoint {addr} on node {node} was not connected through the tunnel within {timeout:?}; is the node \
         up and its agent reachable (see /peers)?"
    )]
    RemoteTimedOut { node: String, addr: SocketAddr, timeout: Duration },

    #[error(
        "service {service} port {port} has no ready endpoints; are its pods Ready and does its selector \
         match them?"
    )]
    NoBackends { service: ServiceKey, port: u16 },

    #[error(
        "service {service} port {port} has no {family} endpoints (only endpoints of the other family, which \
         an {family} address never forwards to, as with kube-proxy); connection refused"
    )]
    NoBackendsInFamily { service: ServiceKey, port: u16, family: &'static str },

    #[error("all {tried} endpoints of service {service} port {port} failed; the last one: {last}")]
    AllBackendsFailed { service: ServiceKey, port: u16, tried: usize, last: Box<ProxyError> },

    #[error(
        "connection to {addr} reset: the proxy is at its limit of {max} connections; raise the limit \
         (and the open-files limit) or find the client opening so many"
    )]
    OverLimit { addr: SocketAddr, max: usize },

    #[error(
        "connection to {addr} reset: service {service} is at its limit of {max} connections \
         (proxy.maxConnectionsPerService); other services are unaffected"
    )]
    ServiceOverLimit { service: ServiceKey, addr: SocketAddr, max: usize },

    #[error(
        "UDP datagram dropped: the proxy is at its limit of {max} UDP sessions and this port has none to \
         close; raise proxy.maxUdpSessions or shorten edgemesh.io/udp-idle-timeout"
    )]
    UdpSessionLimit { max: usize },
}

impl ProxyError {
    /// Classifies a failed connect to `addr` (after waiting up to `timeout`).
    pub fn connect(addr: SocketAddr, source: io::Error, timeout: Duration) -> Self {
        match source.kind() {
            io::ErrorKind::ConnectionRefused => ProxyError::Refused { addr },
            io::ErrorKind::TimedOut => ProxyError::TimedOut { addr, timeout },
            _ => ProxyError::Connect { addr, source },
        }
    }

    /// Classifies a failed tunnel open to `addr` on `node`.
    pub fn remote(node: &str, addr: SocketAddr, source: io::Error) -> Self {
        match source.kind() {
            io::ErrorKind::ConnectionRefused => ProxyError::RemoteRefused { node: node.to_owned(), addr },
            _ => ProxyError::Remote { node: node.to_owned(), addr, source },
        }
    }

    /// Whether this failure ejects the endpoint for a while: it refused or
    /// did not answer, or its node cannot be reached (skipped, retried
    /// later). Other local errors (no route, no descriptors) say nothing
    /// about the endpoint.
    pub fn ejects(&self) -> bool {
        matches!(
            self,
            ProxyError::Refused { .. }
                | ProxyError::TimedOut { .. }
                | ProxyError::RemoteRefused { .. }
                | ProxyError::Remote { .. }
                | ProxyError::RemoteTimedOut { .. }
        )
    }

    /// Whether this is the service working as specified rather than a
    /// problem to warn about: an address of a family the service has no
    /// endpoints in refuses, as kube-proxy's does.
    pub fn is_expected(&self) -> bool {
        matches!(self, ProxyError::NoBackendsInFamily { .. })
    }

    /// A short label for structured logs (their `kind` field).
    pub fn kind(&self) -> &'static str {
        match self {
            ProxyError::Bind { .. } => "bind",
            ProxyError::Refused { .. } => "refused",
            ProxyError::TimedOut { .. } => "timeout",
            ProxyError::Connect { .. } => "connect",
            ProxyError::RemoteRefused { .. } => "remote_refused",
            ProxyError::Remote { .. } => "remote",
            ProxyError::RemoteTimedOut { .. } => "remote_timeout",
            ProxyError::NoBackends { .. } => "no_backends",
            ProxyError::NoBackendsInFamily { .. } => "no_backends_in_family",
            ProxyError::AllBackendsFailed { .. } => "all_backends_failed",
            ProxyError::OverLimit { .. } => "over_limit",
            ProxyError::ServiceOverLimit { .. } => "service_over_limit",
            ProxyError::UdpSessionLimit { .. } => "udp_session_limit",
        }
    }
}

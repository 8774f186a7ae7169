//! Errors of the DNS server; each message names the address and what to check.

use std::io;
use std::net::SocketAddr;

/// What can go wrong starting or running the DNS server.
#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    #[error(
        "cannot bind the DNS {proto} socket on {addr}: {source}; is another DNS server (systemd-resolved, dnsmasq, \
         a second agent) listening there, and may this process bind that port (root or CAP_NET_BIND_SERVICE below 1024)?"
    )]
    Bind {
        proto: &'static str,
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },

    #[error("invalid cluster domain {domain:?}: {reason}; expected a DNS name such as \"cluster.local\"")]
    ClusterDomain { domain: String, reason: String },

    #[error("invalid DNS setting {setting}: {reason}")]
    Config { setting: &'static str, reason: String },

    #[error("the DNS {proto} socket on {addr} failed: {source}")]
    Socket {
        proto: &'static str,
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
}

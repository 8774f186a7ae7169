//! What the agent asks of the kernel for one service port: the backends
//! the kernel may pick from, how it picks, and where a client goes when
//! the kernel can pick none for it.

use std::net::SocketAddr;
use std::time::Duration;

/// How the kernel picks among a service's backends.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Pick {
    /// In turn: a per-service counter the hooks advance with an atomic
    /// add, so one client's successive connects alternate exactly.
    #[default]
    RoundRobin,
    /// Uniformly at random (`bpf_get_prandom_u32`).
    Random,
}

/// A backend the kernel may connect a client to directly.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FastBackend {
    pub addr: SocketAddr,
    /// Reachable only from the host's network namespace (a loopback
    /// address): clients in other namespaces never get it.
    pub host_only: bool,
}

impl FastBackend {
    /// A backend every client can reach (a pod IP).
    pub fn direct(addr: SocketAddr) -> FastBackend {
        FastBackend { addr, host_only: false }
    }

    /// A backend only host-namespace clients can reach (a loopback address).
    pub fn host_only(addr: SocketAddr) -> FastBackend {
        FastBackend { addr, host_only: true }
    }
}

/// One service port as the kernel serves it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FastService {
    /// What the kernel may pick from (duplicates are ignored).
    pub backends: Vec<FastBackend>,
    pub pick: Pick,
    /// ClientIP affinity: a client keeps its backend while it reconnects
    /// within this time of its last connect. The client is identified by
    /// its network namespace (`bpf_get_netns_cookie`, as Cilium's socket
    /// LB does): at connect time the source address is not chosen yet, so
    /// every socket of one pod (or of the host) shares one affinity.
    /// Kept to whole seconds (rounded up).
    pub affinity: Option<Duration>,
    /// The agent's own listener for this service port (its VIP:port):
    /// used when the kernel can pick no backend for this client (none
    /// listed, or only host_only ones and the client is in another
    /// namespace). None: leave the connection untouched.
    pub agent: Option<SocketAddr>,
}

impl FastService {
    /// Every client goes to the agent's listener at `agent`.
    pub fn via_agent(agent: SocketAddr) -> FastService {
        FastService { agent: Some(agent), ..FastService::default() }
    }
}

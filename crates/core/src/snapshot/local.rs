//! Backends on this node, indexed for the tunnel's "no open proxy" check:
//! an agent dials, on behalf of another node, only an address that is a
//! backend of one of its own endpoints.
//!
//! Kept up to date service by service as the snapshot changes (work
//! proportional to the changed service), and holding only this node's
//! backends, so it stays small however many services there are.

use std::net::SocketAddr;

use imbl::HashMap;

use crate::service::Protocol;
use crate::snapshot::ServiceEntry;

/// Every (backend, protocol) of a service port whose endpoint is on this
/// node, with how many service ports list it.
#[derive(Clone, Debug, Default)]
pub(super) struct LocalBackends {
    refs: HashMap<(SocketAddr, Protocol), u32>,
}

impl LocalBackends {
    pub(super) fn contains(&self, addr: SocketAddr, protocol: Protocol) -> bool {
        self.refs.contains_key(&(addr, protocol))
    }

    pub(super) fn len(&self) -> usize {
        self.refs.len()
    }

    /// Swaps what `old` contributed (if any) for what `new` contributes.
    pub(super) fn replace(&mut self, node: &str, old: Option<&ServiceEntry>, new: Option<&ServiceEntry>) {
        // Most changes touch other nodes' endpoints: nothing to do, no allocation.
        if node.is_empty() || on_node(node, old).eq(on_node(node, new)) {
            return;
        }
        // Allocates only when the service has backends on this node.
        let mut delta: std::collections::HashMap<(SocketAddr, Protocol), i64> = std::collections::HashMap::new();
        for key in on_node(node, old) {
            *delta.entry(key).or_default() -= 1;
        }
        for key in on_node(node, new) {
            *delta.entry(key).or_default() += 1;
        }
        for (key, d) in delta.into_iter().filter(|(_, d)| *d != 0) {
            let count = i64::from(self.refs.get(&key).copied().unwrap_or(0)) + d;
            match u32::try_from(count) {
                Ok(n) if n > 0 => {
                    self.refs.insert(key, n);
                }
                _ => {
                    self.refs.remove(&key);
                }
            }
        }
    }
}

/// The backends of `entry` (if any) on `node`, with their port's protocol.
fn on_node<'a>(node: &'a str, entry: Option<&'a ServiceEntry>) -> impl Iterator<Item = (SocketAddr, Protocol)> + 'a {
    entry.into_iter().flat_map(|e| &e.ports).flat_map(move |port| {
        port.backends.iter().filter(move |b| b.node_name.as_deref() == Some(node)).map(move |b| (b.addr, port.protocol))
    })
}

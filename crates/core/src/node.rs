//! Nodes as the data plane sees them: which libp2p peer speaks for a node
//! name, where the node can be reached, and which networks are its pods'.
//!
//! The tunnel binds a peer's claimed node name to its key with the peer ID
//! that the Node object carries in [`PEER_ID_ANNOTATION`]; a node without
//! the annotation has no bound peer.

use std::net::IpAddr;
use std::sync::Arc;

use ipnet::IpNet;
use serde::Serialize;

use crate::object::NodeObject;

/// Annotation on a Node: the libp2p peer ID of the node's agent.
pub const PEER_ID_ANNOTATION: &str = "edgemesh.io/peer-id";

/// One node in the snapshot.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeEntry {
    pub name: Arc<str>,
    /// The [`PEER_ID_ANNOTATION`] value, trimmed; `None` when absent or
    /// blank. Not parsed here: the tunnel owns the peer ID format.
    pub peer_id: Option<Arc<str>>,
    /// `InternalIP` and `ExternalIP` addresses, in the order the source gave.
    pub addresses: Vec<IpAddr>,
    /// The node's pod CIDRs (`spec.podCIDRs`): DNS answers queries from
    /// this node's own ones.
    pub pod_cidrs: Vec<IpNet>,
}

impl From<&NodeObject> for NodeEntry {
    fn from(node: &NodeObject) -> Self {
        let peer_id =
            node.meta.annotations.get(PEER_ID_ANNOTATION).map(|v| v.trim()).filter(|v| !v.is_empty()).map(Arc::from);
        NodeEntry {
            name: Arc::from(node.meta.name.as_str()),
            peer_id,
            addresses: node.addresses.clone(),
            pod_cidrs: node.pod_cidrs.clone(),
        }
    }
}

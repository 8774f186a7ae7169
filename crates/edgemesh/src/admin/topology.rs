//! `/topology`: what the topology page (`/ui`) draws, joined here once
//! rather than in the page: the Node objects of the snapshot (`/nodes`),
//! each with this node's link to it from the tunnel's peers (`/peers`), and
//! the connected peers that are no known node (relays, mostly).
//!
//! Only this node's own links are known: an agent never sees how two other
//! nodes are connected to each other.

use std::collections::HashMap;

use edgemesh_core::NodeEntry;
use edgemesh_tunnel::{ConnectionType, PeerStatus};
use serde::Serialize;

use super::AdminState;

/// The topology as the agent knows it now.
pub(super) fn of(state: &AdminState) -> Topology {
    let snap = state.snapshots.borrow().clone();
    let tunnel = state.tunnel.as_ref().map(|t| TunnelView { peer_id: t.peer_id().to_string(), peers: t.peers() });
    Topology::build(&state.config.node_name, snap.generation, snap.nodes().map(|n| &**n), tunnel)
}

/// The page's data (JSON keys in camelCase, like the rest of the admin JSON).
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Topology {
    /// This node's name.
    pub node: String,
    /// This node's peer ID (None: the tunnel is off).
    pub peer_id: Option<String>,
    /// Whether the tunnel is on; with it off, every other node's link is
    /// [`LinkKind::Unknown`].
    pub tunnel: bool,
    /// The snapshot the nodes come from.
    pub generation: u64,
    /// Every known node, this one included, sorted by name.
    pub nodes: Vec<TopologyNode>,
    /// Connected peers that are no known node: relays, and agents whose
    /// Node object (or name claim) is missing. Sorted by peer ID.
    pub others: Vec<OtherPeer>,
}

/// A known node and this node's link to it.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TopologyNode {
    pub name: String,
    /// From its `edgemesh.io/peer-id` annotation.
    pub peer_id: Option<String>,
    /// Its Node object's addresses.
    pub addresses: Vec<String>,
    pub link: Link,
}

/// This node's link to another (or [`LinkKind::Local`] for itself).
#[derive(Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Link {
    pub kind: LinkKind,
    /// Why the link is down, in words for the operator.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<&'static str>,
    /// The relay a relayed link goes through, when its address names one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub via: Option<Relay>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rtt_ms: Option<f64>,
    /// Proxied connections and UDP sessions open over it.
    pub open_streams: usize,
    /// Seconds since the path last changed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub since_seconds: Option<f64>,
    /// Remote addresses of its connections.
    pub addresses: Vec<String>,
}

/// How this node reaches another.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LinkKind {
    /// This node itself.
    Local,
    /// A direct tunnel connection (possibly hole punched).
    Direct,
    /// Only connections through a relay.
    Relayed,
    /// A known node with no tunnel connection.
    #[default]
    Down,
    /// The tunnel is off: this node has no way to know.
    Unknown,
}

/// A relay a link goes through.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Relay {
    pub peer_id: String,
    /// Its node name, when it is a known node or a connected peer with an
    /// accepted name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// Its address, the part of the circuit address before `/p2p/<relay>`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
}

/// A connected peer that is no known node.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct OtherPeer {
    pub peer_id: String,
    /// Its accepted node name (an agent whose Node object is missing).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    pub connection: LinkKind,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rtt_ms: Option<f64>,
    pub addresses: Vec<String>,
    /// It holds a relay reservation for this node.
    pub relay_reserved: bool,
    /// A relayed link to a known node goes through it.
    pub relays_links: bool,
}

/// The tunnel's side of the picture: this node's peer ID and its peers.
pub struct TunnelView {
    pub peer_id: String,
    pub peers: Vec<PeerStatus>,
}

impl Topology {
    /// Joins the snapshot's `nodes` with the tunnel's peers (None: the
    /// tunnel is off). This node is `this_node`, listed even without a Node
    /// object of its own.
    pub fn build<'a>(
        this_node: &str,
        generation: u64,
        nodes: impl IntoIterator<Item = &'a NodeEntry>,
        tunnel: Option<TunnelView>,
    ) -> Topology {
        let nodes: Vec<&NodeEntry> = nodes.into_iter().collect();
        let own_peer_id = tunnel.as_ref().map(|t| t.peer_id.clone());
        let peers = tunnel.map(|t| t.peers);
        let names = NameBook::new(&nodes, peers.as_deref().unwrap_or_default());

        let mut claimed = vec![false; peers.as_ref().map_or(0, Vec::len)];
        let mut out: Vec<TopologyNode> = nodes
            .iter()
            .map(|node| {
                let link = if *node.name == *this_node {
                    Link { kind: LinkKind::Local, ..Link::default() }
                } else {
                    match &peers {
                        None => Link { kind: LinkKind::Unknown, ..Link::default() },
                        Some(peers) => match peer_of(node, peers) {
                            Some(i) => {
                                claimed[i] = true;
                                link_of(&peers[i], &names)
                            }
                            None => down(node),
                        },
                    }
                };
                TopologyNode {
                    name: node.name.to_string(),
                    peer_id: node.peer_id.as_deref().map(str::to_owned),
                    addresses: node.addresses.iter().map(ToString::to_string).collect(),
                    link,
                }
            })
            .collect();
        if !nodes.iter().any(|n| *n.name == *this_node) {
            out.push(TopologyNode {
                name: this_node.to_owned(),
                peer_id: own_peer_id.clone(),
                addresses: Vec::new(),
                link: Link { kind: LinkKind::Local, ..Link::default() },
            });
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));

        let vias: Vec<&str> = out.iter().filter_map(|n| n.link.via.as_ref()).map(|v| v.peer_id.as_str()).collect();
        let mut others: Vec<OtherPeer> = peers
            .iter()
            .flatten()
            .zip(claimed)
            .filter(|(_, claimed)| !claimed)
            .map(|(peer, _)| OtherPeer {
                peer_id: peer.peer_id.clone(),
                node: peer.node.clone(),
                connection: kind_of(peer.connection),
                rtt_ms: peer.rtt_ms,
                addresses: peer.addresses.clone(),
                relay_reserved: peer.relay_reserved,
                relays_links: vias.contains(&peer.peer_id.as_str()),
            })
            .collect();
        others.sort_by(|a, b| a.peer_id.cmp(&b.peer_id));
        Topology {
            node: this_node.to_owned(),
            peer_id: own_peer_id,
            tunnel: peers.is_some(),
            generation,
            nodes: out,
            others,
        }
    }
}

/// The peer that speaks for `node`: the one whose name claim for it was
/// accepted, else the one with its annotated peer ID.
fn peer_of(node: &NodeEntry, peers: &[PeerStatus]) -> Option<usize> {
    peers
        .iter()
        .position(|p| p.trusted && p.node.as_deref() == Some(&*node.name))
        .or_else(|| node.peer_id.as_deref().and_then(|id| peers.iter().position(|p| p.peer_id == id)))
}

fn down(node: &NodeEntry) -> Link {
    let reason = match node.peer_id {
        None => "its Node object has no edgemesh.io/peer-id annotation",
        Some(_) => "no tunnel connection",
    };
    Link { kind: LinkKind::Down, reason: Some(reason), ..Link::default() }
}

fn link_of(peer: &PeerStatus, names: &NameBook) -> Link {
    let kind = kind_of(peer.connection);
    let via = match kind {
        LinkKind::Relayed => peer.addresses.iter().find_map(|a| relay_of(a)).map(|mut relay| {
            relay.node = names.name_of(&relay.peer_id);
            relay
        }),
        _ => None,
    };
    Link {
        kind,
        reason: None,
        via,
        rtt_ms: peer.rtt_ms,
        open_streams: peer.open_streams,
        since_seconds: Some(peer.path_changed_seconds_ago),
        addresses: peer.addresses.clone(),
    }
}

fn kind_of(connection: ConnectionType) -> LinkKind {
    match connection {
        ConnectionType::Direct => LinkKind::Direct,
        ConnectionType::Relayed => LinkKind::Relayed,
    }
}

/// The relay of a circuit address `<relay address>/p2p/<relay>/p2p-circuit[/p2p/<target>]`.
fn relay_of(address: &str) -> Option<Relay> {
    let (before, _) = address.split_once("/p2p-circuit")?;
    let (relay_addr, peer_id) = before.rsplit_once("/p2p/")?;
    if peer_id.is_empty() || peer_id.contains('/') {
        return None;
    }
    let address = (!relay_addr.is_empty()).then(|| relay_addr.to_owned());
    Some(Relay { peer_id: peer_id.to_owned(), node: None, address })
}

/// Node names by peer ID: accepted name claims first, then annotations.
struct NameBook(HashMap<String, String>);

impl NameBook {
    fn new(nodes: &[&NodeEntry], peers: &[PeerStatus]) -> NameBook {
        let mut names = HashMap::new();
        for node in nodes {
            if let Some(id) = &node.peer_id {
                names.insert(id.to_string(), node.name.to_string());
            }
        }
        for peer in peers.iter().filter(|p| p.trusted) {
            if let Some(node) = &peer.node {
                names.insert(peer.peer_id.clone(), node.clone());
            }
        }
        NameBook(names)
    }

    fn name_of(&self, peer_id: &str) -> Option<String> {
        self.0.get(peer_id).cloned()
    }
}

#[cfg(test)]
mod tests;

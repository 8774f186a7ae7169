//! `v1/Node`: the name, annotations (the tunnel's peer ID) and the
//! addresses other nodes can dial.

use edgemesh_core::object::NodeObject;

use super::{Cx, NameRule, ip_addr, meta};
use crate::problem::{ConvertError, Problem};
use crate::schema::Document;

/// The `status.addresses` types that hold an IP address another node can
/// dial; the others (`Hostname`, `InternalDNS`, `ExternalDNS`) are skipped.
pub const NODE_ADDRESS_TYPES: [&str; 2] = ["InternalIP", "ExternalIP"];

pub(super) fn node(doc: Document, mut cx: Cx) -> Result<NodeObject, ConvertError> {
    let meta = meta(doc.metadata, NameRule::ClusterScoped, &mut cx)?;
    let listed = doc.status.and_then(|s| s.addresses).unwrap_or_default();
    let mut addresses = Vec::with_capacity(listed.len());
    for (i, entry) in listed.iter().enumerate() {
        let field = format!("status.addresses[{i}]");
        let missing = |what: &str| cx.err_at(entry, Problem::MissingField { field: format!("{field}.{what}") });
        let Some(address_type) = &entry.value.address_type else { return Err(missing("type")) };
        let Some(address) = &entry.value.address else { return Err(missing("address")) };
        if !NODE_ADDRESS_TYPES.contains(&address_type.value.as_str()) {
            continue;
        }
        let ip = ip_addr(address, format!("{field}.address"), &cx)?;
        if !addresses.contains(&ip) {
            addresses.push(ip);
        }
    }
    Ok(NodeObject { meta, addresses })
}

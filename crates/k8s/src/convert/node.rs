//! `v1/Node`: the name, annotations (the tunnel's peer ID), the addresses
//! other nodes can dial, and the pod CIDRs (whose DNS queries are the
//! node's).

use edgemesh_core::object::NodeObject;
use ipnet::IpNet;

use super::{Cx, NameRule, ip_addr, meta};
use crate::problem::{ConvertError, Problem};
use crate::schema::{Document, Located, NodeSpec};

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
    let (pod_cidrs, problems) = pod_cidrs(doc.node_spec.unwrap_or_default(), &cx);
    for error in problems {
        tracing::warn!(line = error.line, %error, "skipping a pod CIDR of a Node; its other pod CIDRs are kept");
    }
    Ok(NodeObject { meta, addresses, pod_cidrs })
}

/// `spec.podCIDRs`, or `spec.podCIDR` when that list is empty (clusters
/// before dual-stack set only the one): the valid ones, each once, and an
/// error for each invalid one. A bad entry does not cost the node its
/// other CIDRs, nor its addresses (the tunnel needs those).
fn pod_cidrs(spec: NodeSpec, cx: &Cx) -> (Vec<IpNet>, Vec<ConvertError>) {
    let listed: Vec<(String, Located<String>)> = match spec.pod_cidrs.filter(|l| !l.is_empty()) {
        Some(list) => list.into_iter().enumerate().map(|(i, c)| (format!("spec.podCIDRs[{i}]"), c)).collect(),
        None => spec.pod_cidr.into_iter().map(|c| ("spec.podCIDR".to_owned(), c)).collect(),
    };
    let mut cidrs = Vec::with_capacity(listed.len());
    let mut problems = Vec::new();
    for (field, cidr) in listed {
        match cidr.value.trim().parse::<IpNet>() {
            // Host bits set (`10.244.1.5/24`) mean the network.
            Ok(net) if !cidrs.contains(&net.trunc()) => cidrs.push(net.trunc()),
            Ok(_) => {}
            Err(_) => problems.push(cx.err_at(&cidr, Problem::BadCidr { field, value: cidr.value.clone() })),
        }
    }
    (cidrs, problems)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(pod_cidr: Option<&str>, pod_cidrs: Option<&[&str]>) -> NodeSpec {
        let located = |s: &str| Located { value: s.to_owned(), line: 0 };
        NodeSpec {
            pod_cidr: pod_cidr.map(located),
            pod_cidrs: pod_cidrs.map(|l| l.iter().map(|s| located(s)).collect()),
        }
    }

    fn cx() -> Cx {
        Cx { base: 0, line: 3, object: "Node edge-1".into() }
    }

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter().map(|s| s.parse().unwrap()).collect()
    }

    #[test]
    fn pod_cidrs_come_from_the_list_or_else_the_single_field() {
        let dual = spec(Some("10.244.1.0/24"), Some(&["10.244.1.0/24", "fd00:244:1::/64"]));
        assert_eq!(pod_cidrs(dual, &cx()), (nets(&["10.244.1.0/24", "fd00:244:1::/64"]), vec![]));
        let old = spec(Some("10.244.1.0/24"), None);
        assert_eq!(pod_cidrs(old, &cx()).0, nets(&["10.244.1.0/24"]));
        let empty_list = spec(Some("10.244.1.0/24"), Some(&[]));
        assert_eq!(pod_cidrs(empty_list, &cx()).0, nets(&["10.244.1.0/24"]));
        assert_eq!(pod_cidrs(spec(None, None), &cx()), (vec![], vec![]));
        // Host bits are the network's; repeats count once.
        let sloppy = spec(None, Some(&["10.244.1.7/24", "10.244.1.0/24"]));
        assert_eq!(pod_cidrs(sloppy, &cx()).0, nets(&["10.244.1.0/24"]));
    }

    #[test]
    fn a_bad_pod_cidr_is_named_with_its_node_and_the_good_ones_are_kept() {
        let mixed = spec(None, Some(&["10.244.1.0/33", "fd00:244:1::/64", "pods"]));
        let (cidrs, problems) = pod_cidrs(mixed, &cx());
        assert_eq!(cidrs, nets(&["fd00:244:1::/64"]));
        let messages: Vec<String> = problems.iter().map(ToString::to_string).collect();
        assert_eq!(
            messages,
            [
                "Node edge-1: spec.podCIDRs[0] \"10.244.1.0/33\" is not a valid CIDR (an address and a prefix \
                 length, such as 10.244.1.0/24)",
                "Node edge-1: spec.podCIDRs[2] \"pods\" is not a valid CIDR (an address and a prefix length, such \
                 as 10.244.1.0/24)",
            ]
        );
        assert_eq!(problems[0].line, 3, "at the object when the value's line is unknown");
        let (cidrs, problems) = pod_cidrs(spec(Some("10.244.1.0"), None), &cx());
        assert!(cidrs.is_empty());
        assert!(problems[0].to_string().contains("spec.podCIDR \"10.244.1.0\""), "{problems:?}");
    }
}

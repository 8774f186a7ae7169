//! The fast path: plain block YAML, as kubectl and generators write it,
//! straight into the [`schema`](edgemesh_k8s::schema) structs.
//!
//! serde-saphyr stays the reference: the fast path takes a document only
//! when it is sure of the outcome, and returns `None` for anything else
//! (YAML outside the subset [`tree`] reads, a value of the wrong type, a
//! scalar YAML might read as null, a boolean or a number where a string is
//! wanted...), so errors and their lines always come from serde-saphyr.
//! Each function here mirrors a serde struct of `schema`; the property
//! test in `tests.rs` checks both paths give the same objects and errors.

use std::collections::BTreeMap;

use edgemesh_k8s::schema::{
    ClientIpConfig, Conditions, Document, EndpointAddress, EndpointPort, IntOrString, Kind, Located, Metadata,
    NodeAddress, NodeSpec, NodeStatus, ServicePort, ServiceSpec, SessionAffinityConfig, SliceEndpoint, Subset,
};

mod tree;

use tree::Node;

/// Entries of a mapping, in document order.
type Entries<'a> = [(&'a str, Node<'a>)];

/// One document's text into its top-level object, or `None` when the slow
/// path must decide.
pub(crate) fn document(text: &str) -> Option<Located<Document>> {
    let root = tree::parse(text)?;
    located(&root, document_of)
}

fn document_of(node: &Node<'_>) -> Option<Document> {
    let Node::Map { entries, .. } = node else { return None };
    let mut doc = Document::default();
    // As schema's `Document`: once the kind is known, other kinds' fields are skipped.
    let mut kind: Option<Kind> = None;
    let wants = |kind: Option<Kind>, k: Kind| kind.is_none_or(|have| have == k);
    for (key, value) in entries {
        match *key {
            "apiVersion" => doc.api_version = opt_string(value)?,
            "kind" => {
                doc.kind = opt_string(value)?;
                kind = doc.kind.as_ref().map(|k| Kind::of(&k.value));
            }
            "metadata" => doc.metadata = opt(value, metadata)?,
            "spec" if kind == Some(Kind::Node) => doc.node_spec = opt(value, node_spec)?,
            // A DestinationRule's spec is read whole, by the slow path.
            "spec" if kind == Some(Kind::DestinationRule) => return None,
            // So is a routing object's (the gateway's).
            "spec" if kind == Some(Kind::Routing) => return None,
            "spec" if wants(kind, Kind::Service) => doc.spec = opt(value, service_spec)?,
            "addressType" if wants(kind, Kind::EndpointSlice) => doc.address_type = opt_string(value)?,
            "endpoints" if wants(kind, Kind::EndpointSlice) => doc.endpoints = opt_list(value, slice_endpoint)?,
            "ports" if wants(kind, Kind::EndpointSlice) => doc.ports = opt_list(value, endpoint_port)?,
            "subsets" if wants(kind, Kind::Endpoints) => {
                doc.subsets = opt(value, |n| seq(n, |item| subset(entries_of(item)?)))?
            }
            "status" if wants(kind, Kind::Node) => doc.status = opt(value, node_status)?,
            "items" if wants(kind, Kind::List) => doc.items = opt_list(value, document_of)?,
            _ => {}
        }
    }
    Some(doc)
}

fn metadata(node: &Node<'_>) -> Option<Metadata> {
    let mut m = Metadata::default();
    for (key, value) in entries_of(node)? {
        match *key {
            "name" => m.name = opt_string(value)?,
            "namespace" => m.namespace = opt_string(value)?,
            "labels" => m.labels = opt(value, string_map)?,
            "annotations" => m.annotations = opt(value, string_map)?,
            _ => {}
        }
    }
    Some(m)
}

fn service_spec(node: &Node<'_>) -> Option<ServiceSpec> {
    let mut s = ServiceSpec::default();
    for (key, value) in entries_of(node)? {
        match *key {
            "type" => s.service_type = opt_string(value)?,
            "clusterIP" => s.cluster_ip = opt_string(value)?,
            "clusterIPs" => s.cluster_ips = opt_list(value, string)?,
            "ports" => s.ports = opt_list(value, service_port)?,
            "sessionAffinity" => s.session_affinity = opt_string(value)?,
            "sessionAffinityConfig" => s.session_affinity_config = opt(value, session_affinity_config)?,
            "internalTrafficPolicy" => s.internal_traffic_policy = opt_string(value)?,
            "trafficDistribution" => s.traffic_distribution = opt_string(value)?,
            "ipFamilies" => s.ip_families = opt_list(value, string)?,
            "ipFamilyPolicy" => s.ip_family_policy = opt_string(value)?,
            _ => {}
        }
    }
    Some(s)
}

fn session_affinity_config(node: &Node<'_>) -> Option<SessionAffinityConfig> {
    let mut c = SessionAffinityConfig::default();
    for (key, value) in entries_of(node)? {
        if *key == "clientIP" {
            c.client_ip = opt(value, |n| {
                let mut ip = ClientIpConfig::default();
                for (key, value) in entries_of(n)? {
                    if *key == "timeoutSeconds" {
                        ip.timeout_seconds = opt_located(value, int)?;
                    }
                }
                Some(ip)
            })?;
        }
    }
    Some(c)
}

fn service_port(node: &Node<'_>) -> Option<ServicePort> {
    let mut p =
        ServicePort { name: None, protocol: None, port: None, target_port: None, node_port: None, app_protocol: None };
    for (key, value) in entries_of(node)? {
        match *key {
            "name" => p.name = opt_string(value)?,
            "protocol" => p.protocol = opt_string(value)?,
            "port" => p.port = opt_located(value, int)?,
            "targetPort" => p.target_port = opt_located(value, int_or_string)?,
            "nodePort" => p.node_port = opt_located(value, int)?,
            "appProtocol" => p.app_protocol = opt_string(value)?,
            _ => {}
        }
    }
    Some(p)
}

fn slice_endpoint(node: &Node<'_>) -> Option<SliceEndpoint> {
    let mut e = SliceEndpoint { addresses: None, conditions: None, node_name: None, hostname: None };
    for (key, value) in entries_of(node)? {
        match *key {
            "addresses" => e.addresses = opt_list(value, string)?,
            "conditions" => {
                e.conditions = opt(value, |n| {
                    let mut c = Conditions { ready: None };
                    for (key, value) in entries_of(n)? {
                        if *key == "ready" {
                            c.ready = opt(value, boolean)?;
                        }
                    }
                    Some(c)
                })?
            }
            "nodeName" => e.node_name = opt(value, string)?,
            "hostname" => e.hostname = opt(value, string)?,
            _ => {}
        }
    }
    Some(e)
}

fn endpoint_port(node: &Node<'_>) -> Option<EndpointPort> {
    let mut p = EndpointPort { name: None, port: None, protocol: None };
    for (key, value) in entries_of(node)? {
        match *key {
            "name" => p.name = opt_string(value)?,
            "port" => p.port = opt_located(value, int)?,
            "protocol" => p.protocol = opt_string(value)?,
            _ => {}
        }
    }
    Some(p)
}

fn subset(entries: &Entries<'_>) -> Option<Subset> {
    let mut s = Subset { addresses: None, not_ready_addresses: None, ports: None };
    for (key, value) in entries {
        match *key {
            "addresses" => s.addresses = opt_list(value, endpoint_address)?,
            "notReadyAddresses" => s.not_ready_addresses = opt_list(value, endpoint_address)?,
            "ports" => s.ports = opt_list(value, endpoint_port)?,
            _ => {}
        }
    }
    Some(s)
}

fn endpoint_address(node: &Node<'_>) -> Option<EndpointAddress> {
    let mut a = EndpointAddress { ip: None, hostname: None, node_name: None };
    for (key, value) in entries_of(node)? {
        match *key {
            "ip" => a.ip = opt_string(value)?,
            "hostname" => a.hostname = opt(value, string)?,
            "nodeName" => a.node_name = opt(value, string)?,
            _ => {}
        }
    }
    Some(a)
}

fn node_spec(node: &Node<'_>) -> Option<NodeSpec> {
    let mut s = NodeSpec::default();
    for (key, value) in entries_of(node)? {
        match *key {
            "podCIDR" => s.pod_cidr = opt_string(value)?,
            "podCIDRs" => s.pod_cidrs = opt_list(value, string)?,
            _ => {}
        }
    }
    Some(s)
}

fn node_status(node: &Node<'_>) -> Option<NodeStatus> {
    let mut s = NodeStatus::default();
    for (key, value) in entries_of(node)? {
        if *key == "addresses" {
            s.addresses = opt_list(value, |n| {
                let mut a = NodeAddress { address_type: None, address: None };
                for (key, value) in entries_of(n)? {
                    match *key {
                        "type" => a.address_type = opt_string(value)?,
                        "address" => a.address = opt_string(value)?,
                        _ => {}
                    }
                }
                Some(a)
            })?;
        }
    }
    Some(s)
}

// ---------------------------------------------------------------------------
// Shapes and scalars, each as serde-saphyr reads it (`None`: not sure).

fn entries_of<'n, 'a>(node: &'n Node<'a>) -> Option<&'n Entries<'a>> {
    match node {
        Node::Map { entries, .. } => Some(entries),
        _ => None,
    }
}

/// Whether a node is YAML's null: nothing, `~` or `null` (plain).
fn is_null(node: &Node<'_>) -> bool {
    match node {
        Node::Empty => true,
        Node::Scalar { text, plain: true, .. } => matches!(*text, "~" | "null" | "Null" | "NULL"),
        _ => false,
    }
}

/// An `Option<T>` field: null is `None`.
fn opt<T>(node: &Node<'_>, f: impl FnOnce(&Node<'_>) -> Option<T>) -> Option<Option<T>> {
    if is_null(node) { Some(None) } else { f(node).map(Some) }
}

fn located<T>(node: &Node<'_>, f: impl FnOnce(&Node<'_>) -> Option<T>) -> Option<Located<T>> {
    Some(Located { value: f(node)?, line: node.line() })
}

fn opt_located<T>(node: &Node<'_>, f: impl FnOnce(&Node<'_>) -> Option<T>) -> Option<Option<Located<T>>> {
    opt(node, |n| located(n, f))
}

fn opt_string(node: &Node<'_>) -> Option<Option<Located<String>>> {
    opt_located(node, string)
}

fn seq<T>(node: &Node<'_>, f: impl Fn(&Node<'_>) -> Option<T>) -> Option<Vec<T>> {
    let Node::Seq { items, .. } = node else { return None };
    items.iter().map(f).collect()
}

/// A list of located values.
fn list<T>(node: &Node<'_>, f: impl Fn(&Node<'_>) -> Option<T>) -> Option<Vec<Located<T>>> {
    let Node::Seq { items, .. } = node else { return None };
    items.iter().map(|item| located(item, &f)).collect()
}

fn opt_list<T>(node: &Node<'_>, f: impl Fn(&Node<'_>) -> Option<T>) -> Option<Option<Vec<Located<T>>>> {
    opt(node, |n| list(n, f))
}

/// A string: any scalar but null and keywords whose spelling YAML 1.1 and
/// 1.2 read differently (`yes`, `On`, `NULL` in another case...).
fn string(node: &Node<'_>) -> Option<String> {
    match node {
        Node::Scalar { text, plain: false, .. } => Some((*text).to_owned()),
        Node::Scalar { text, plain: true, .. } if !tree::is_keyword(text) && *text != "~" => Some((*text).to_owned()),
        _ => None,
    }
}

fn string_map(node: &Node<'_>) -> Option<BTreeMap<String, String>> {
    entries_of(node)?.iter().map(|(k, v)| Some(((*k).to_owned(), string(v)?))).collect()
}

/// A plain decimal integer without leading zeros, `+` or `_` (YAML 1.1
/// octal, hex, `1_000`... are left to serde-saphyr).
fn int(node: &Node<'_>) -> Option<i64> {
    let Node::Scalar { text, plain: true, .. } = node else { return None };
    let digits = text.strip_prefix('-').unwrap_or(text);
    let decimal = *text == "0"
        || (!digits.is_empty()
            && digits.len() <= 18
            && !digits.starts_with('0')
            && digits.bytes().all(|b| b.is_ascii_digit()));
    if decimal { text.parse().ok() } else { None }
}

/// `targetPort`: a plain decimal, or a port name (lowercase letters, digits
/// and `-`, starting with a letter), or any quoted string.
fn int_or_string(node: &Node<'_>) -> Option<IntOrString> {
    match node {
        Node::Scalar { text, plain: false, .. } => Some(IntOrString::Str((*text).to_owned())),
        Node::Scalar { text, plain: true, .. } => {
            if let Some(n) = int(node) {
                return Some(IntOrString::Int(n));
            }
            let name = text.as_bytes().first().is_some_and(u8::is_ascii_lowercase)
                && text.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !tree::is_keyword(text);
            name.then(|| IntOrString::Str((*text).to_owned()))
        }
        _ => None,
    }
}

fn boolean(node: &Node<'_>) -> Option<bool> {
    match node {
        Node::Scalar { text: "true", plain: true, .. } => Some(true),
        Node::Scalar { text: "false", plain: true, .. } => Some(false),
        _ => None,
    }
}

#[cfg(test)]
mod tests;

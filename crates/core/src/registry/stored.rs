//! The registry's own copy of an endpoint object: only what building a
//! service's entry reads, in as few allocations as the data allows.
//!
//! A source's [`EndpointSet`] spends an allocation on every endpoint's
//! address list (almost always one address), every node name and every port
//! name, plus metadata the registry never reads; at 10,000 services that was
//! about 60,000 small allocations. Here an endpoint keeps one address
//! inline, and node and port names are the shared copies of
//! [`SharedNames`].

use std::net::IpAddr;
use std::sync::Arc;

use smallvec::SmallVec;

use super::names::SharedNames;
use crate::object::{EndpointSet, ObjectId};
use crate::service::Protocol;

/// One endpoint object of a service.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct StoredSet {
    pub(super) key: ObjectId,
    pub(super) subsets: Box<[StoredSubset]>,
}

/// Endpoints that share one port list.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct StoredSubset {
    pub(super) endpoints: Box<[StoredEndpoint]>,
    pub(super) ports: Box<[StoredPort]>,
}

/// One endpoint (a pod).
#[derive(Debug, PartialEq, Eq)]
pub(super) struct StoredEndpoint {
    /// One address needs no allocation of its own.
    pub(super) addresses: SmallVec<[IpAddr; 1]>,
    pub(super) ready: bool,
    pub(super) node_name: Option<Arc<str>>,
    pub(super) hostname: Option<Box<str>>,
}

/// A port of a subset; `name` matches the service port's name.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct StoredPort {
    pub(super) name: Arc<str>,
    pub(super) port: u16,
    pub(super) protocol: Protocol,
}

impl StoredSet {
    /// The registry's copy of `set`, its names shared through `names`.
    pub(super) fn new(set: EndpointSet, names: &mut SharedNames) -> Self {
        let subsets = set
            .subsets
            .into_iter()
            .map(|subset| StoredSubset {
                endpoints: subset
                    .endpoints
                    .into_iter()
                    .map(|ep| StoredEndpoint {
                        addresses: SmallVec::from_slice(&ep.addresses),
                        ready: ep.ready,
                        node_name: ep.node_name.as_deref().map(|n| names.get(n)),
                        hostname: ep.hostname.map(String::into_boxed_str),
                    })
                    .collect(),
                ports: subset
                    .ports
                    .into_iter()
                    .map(|p| StoredPort { name: names.get(&p.name), port: p.port, protocol: p.protocol })
                    .collect(),
            })
            .collect();
        Self { key: ObjectId::new(set.kind, &set.meta.namespace, &set.meta.name), subsets }
    }
}

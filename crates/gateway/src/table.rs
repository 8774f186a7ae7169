//! A listener's route table: every (hostname, match) of every rule
//! attached to it, in the Gateway API's precedence order, and the lookup
//! of a request (the first entry whose hostname and match both hold).
//!
//! Order: the most specific hostname first (a precise name, then longer
//! wildcards, then routes that name no host), then the match's precedence
//! ([`Match::precedence`]), then the oldest route, then `namespace/name`,
//! then rule and match order. Because every entry competes, a request for
//! `shop.example.com` that no rule of the `shop.example.com` route matches
//! still reaches a matching rule of a `*.example.com` or host-less route,
//! as the API's precedence (rather than a virtual-host split) reads.
//!
//! GRPCRoutes' entries come first, in gRPC precedence (see [`crate::grpc`]),
//! and only gRPC requests look at them.
//!
//! Lookup is a scan in that order over the entries whose hostname can
//! hold: [`RouteTable::sort`] indexes the precise hostnames (all of which
//! come before any wildcard in each kind's part, so those of the request's
//! host, then the wildcards and host-less entries, is the same order), so
//! that a request does not compare its host with every other route's.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use crate::backend::Backends;
use crate::compile::ObjectRef;
use crate::filter::Filters;
use crate::grpc::GrpcRank;
use crate::hostname::Hostname;
use crate::matching::{Match, PathMatch, RequestView};

/// What a matched rule does.
#[derive(Debug)]
pub struct RouteAction {
    /// The route and the index of the rule in it.
    pub route: ObjectRef,
    pub rule: usize,
    pub backends: Backends,
    pub filters: Filters,
    pub timeouts: Timeouts,
}

/// A rule's `timeouts`: the whole request, and each try to a backend.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Timeouts {
    pub request: Option<Duration>,
    pub backend_request: Option<Duration>,
}

/// Where an entry stands when hostnames and matches tie.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Order {
    /// RFC 3339 creation time (older first); empty when unknown.
    pub created: String,
    /// `namespace/name`.
    pub route: String,
    pub rule: usize,
    pub matched: usize,
}

#[derive(Debug)]
struct Entry {
    host: Hostname,
    matcher: Match,
    /// A GRPCRoute's entry: the characters its method match names.
    grpc: Option<GrpcRank>,
    order: Order,
    action: Arc<RouteAction>,
}

/// A request's route.
#[derive(Clone, Copy, Debug)]
pub struct Routed<'a> {
    pub action: &'a Arc<RouteAction>,
    /// The `PathPrefix` that matched (normalized), for `ReplacePrefixMatch`.
    pub matched_prefix: Option<&'a str>,
}

/// One listener's routes.
#[derive(Debug, Default)]
pub struct RouteTable {
    entries: Vec<Entry>,
    /// The GRPCRoutes' part of `entries` and the HTTPRoutes', indexed.
    grpc: Part,
    http: Part,
}

/// The entries of one kind, in precedence order, by hostname: those of
/// each precise hostname, and those of wildcards and no hostname.
#[derive(Debug, Default)]
struct Part {
    exact: HashMap<String, Vec<usize>, BuildFnv>,
    others: Vec<usize>,
}

/// FNV-1a: hostnames are short, and hashing one is on every request's
/// path (SipHash costs several times as much). The keys are the
/// configuration's; a client's host is only looked up, so it cannot make
/// the map slow.
#[derive(Clone, Copy, Debug, Default)]
struct BuildFnv;

struct Fnv(u64);

impl std::hash::BuildHasher for BuildFnv {
    type Hasher = Fnv;

    fn build_hasher(&self) -> Fnv {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
}

impl std::hash::Hasher for Fnv {
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3);
        }
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

impl RouteTable {
    /// Adds one (hostname, match) of a rule; call [`RouteTable::sort`] once all are in.
    pub fn push(&mut self, host: Hostname, matcher: Match, order: Order, action: Arc<RouteAction>) {
        self.entries.push(Entry { host, matcher, grpc: None, order, action });
    }

    /// Adds one (hostname, match) of a GRPCRoute's rule (see [`crate::grpc`]).
    pub fn push_grpc(
        &mut self,
        host: Hostname,
        matcher: Match,
        rank: GrpcRank,
        order: Order,
        action: Arc<RouteAction>,
    ) {
        self.entries.push(Entry { host, matcher, grpc: Some(rank), order, action });
    }

    /// Puts the entries in precedence order: GRPCRoutes' before
    /// HTTPRoutes' (they are never compared: a gRPC request tries the
    /// first, then the second), each by its kind's precedence.
    pub fn sort(&mut self) {
        self.entries.sort_by(|a, b| {
            b.grpc.is_some().cmp(&a.grpc.is_some()).then_with(|| {
                let by_match = match (a.grpc, b.grpc) {
                    (Some(ra), Some(rb)) => {
                        rb.cmp(&ra).then_with(|| b.matcher.headers.len().cmp(&a.matcher.headers.len()))
                    }
                    _ => b.matcher.precedence(&a.matcher),
                };
                b.host.specificity(&a.host).then(by_match).then_with(|| a.order.cmp(&b.order))
            })
        });
        self.grpc = Part::default();
        self.http = Part::default();
        for (i, entry) in self.entries.iter().enumerate() {
            let part = if entry.grpc.is_some() { &mut self.grpc } else { &mut self.http };
            match &entry.host {
                Hostname::Exact(name) => part.exact.entry(name.clone()).or_default().push(i),
                Hostname::Wildcard(_) | Hostname::Any => part.others.push(i),
            }
        }
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// The route of a request for `host` (lowercase, no port: see
    /// [`crate::hostname::request_host`]), or None (answered 404).
    /// A gRPC request (`content-type: application/grpc...`) tries the
    /// GRPCRoutes first; other requests only the HTTPRoutes.
    pub fn route(&self, host: &str, request: &RequestView<'_>) -> Option<Routed<'_>> {
        // (Only a table with GRPCRoutes looks at the content type.)
        let grpc = !(self.grpc.exact.is_empty() && self.grpc.others.is_empty()) && is_grpc(request);
        let entry = if grpc { self.find(&self.grpc, host, request) } else { None };
        let entry = entry.or_else(|| self.find(&self.http, host, request))?;
        let matched_prefix = match &entry.matcher.path {
            PathMatch::Prefix(p) => Some(p.as_str()),
            _ => None,
        };
        Some(Routed { action: &entry.action, matched_prefix })
    }

    /// The first entry of `part` for `host` whose match holds: those of
    /// that precise hostname, then the wildcards and host-less ones.
    fn find(&self, part: &Part, host: &str, request: &RequestView<'_>) -> Option<&Entry> {
        if let Some(exact) = part.exact.get(host) {
            for &i in exact {
                let entry = &self.entries[i];
                if entry.matcher.matches(request) {
                    return Some(entry);
                }
            }
        }
        for &i in &part.others {
            let entry = &self.entries[i];
            if entry.host.matches(host) && entry.matcher.matches(request) {
                return Some(entry);
            }
        }
        None
    }

    /// The order entries are tried in, as `host route#rule` (for status and tests).
    pub fn describe(&self) -> Vec<String> {
        self.entries.iter().map(|e| format!("{} {}#{}", e.host, e.order.route, e.order.rule)).collect()
    }
}

/// Whether a request is a gRPC call (its content type).
fn is_grpc(request: &RequestView<'_>) -> bool {
    request
        .headers
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().get(..16).is_some_and(|p| p.eq_ignore_ascii_case(b"application/grpc")))
}

impl PartialEq for RouteAction {
    fn eq(&self, other: &Self) -> bool {
        self.route == other.route && self.rule == other.rule
    }
}

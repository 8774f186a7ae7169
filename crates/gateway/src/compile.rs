//! Gateway API objects to route tables, in one pass, with every object's
//! status conditions. Nothing here fails as a whole: a listener, route,
//! rule or reference that is wrong is left out and says why in its
//! conditions (the names and reasons the Gateway API defines), and the
//! rest is compiled.
//!
//! - Gateways: those of the configured GatewayClass. Listeners
//!   (`listener`): `HTTP`; `HTTPS` (TLS terminated with the Secrets of
//!   `tls.certificateRefs`); `TLS` with `tls.mode: Passthrough`; `TCP`.
//!   Others are `UnsupportedProtocol`. A second listener on a port with
//!   the same hostname, or another protocol, is `Conflicted`. A
//!   certificate that is missing, unreadable or not granted is
//!   `ResolvedRefs: False` (`InvalidCertificateRef`, `RefNotPermitted`).
//! - Routes (`attach`): HTTPRoutes and GRPCRoutes on HTTP and HTTPS
//!   listeners, TLSRoutes on TLS passthrough listeners, TCPRoutes on TCP
//!   listeners (narrowed by `allowedRoutes.kinds`; a kind the listener
//!   cannot serve is `InvalidRouteKinds`). A route attaches to a Gateway
//!   (optionally one listener by `sectionName`, or by `port`) when the
//!   listener allows the route's namespace and kind and their hostnames
//!   intersect.
//! - Rules (`rules`): an invalid match, filter or timeout drops that rule
//!   only (`PartiallyInvalid`); a route with no valid rule is not
//!   `Accepted`.
//! - backendRefs: Services by name and port, in the route's namespace or
//!   another one that grants it (ReferenceGrant); an unresolved one keeps
//!   its weight and its requests are answered 500, its connections reset
//!   (`ResolvedRefs: False`).

mod attach;
mod listener;
mod rules;

use std::collections::BTreeMap;
use std::sync::Arc;

pub use self::rules::parse_duration;
use crate::hostname::Hostname;
use crate::l4::L4Table;
use crate::schema::{Gateway, GrpcRoute, HttpRoute, ReferenceGrant, TcpRoute, TlsRoute};
use crate::table::RouteTable;
use crate::tls::{CertificateStore, NoCertificates, SniCertificates};

/// `kind namespace/name`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectRef {
    pub kind: &'static str,
    pub namespace: String,
    pub name: String,
}

impl std::fmt::Display for ObjectRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}/{}", self.kind, self.namespace, self.name)
    }
}

/// A status condition, as the API writes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Condition {
    /// `Accepted`, `Programmed`, `ResolvedRefs`, `Conflicted`, `PartiallyInvalid`.
    pub kind: &'static str,
    pub status: bool,
    pub reason: &'static str,
    pub message: String,
    pub observed_generation: Option<i64>,
}

/// The Services that exist, for backendRefs.
pub trait ServiceLookup {
    /// Ok when Service `namespace/name` exists and has `port`; else why not.
    fn check(&self, namespace: &str, name: &str, port: u16) -> Result<(), String>;
}

/// A listener's status.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ListenerStatus {
    pub name: String,
    /// Its port, when valid: the report says `Programmed: False` while the
    /// port cannot be bound.
    pub port: Option<u16>,
    /// The route kinds it takes (its protocol's, narrowed by
    /// `allowedRoutes.kinds`): the status's `supportedKinds`.
    pub supported_kinds: Vec<&'static str>,
    pub attached_routes: usize,
    pub conditions: Vec<Condition>,
}

/// A Gateway's status.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GatewayStatus {
    pub conditions: Vec<Condition>,
    pub listeners: Vec<ListenerStatus>,
}

/// A route's status towards one of its parentRefs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouteParentStatus {
    /// The Gateway, and the listener when the parentRef names one.
    pub parent: ObjectRef,
    pub section: Option<String>,
    pub conditions: Vec<Condition>,
}

/// How a served port's connections are served.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// HTTP requests through the route table.
    Http,
    /// TLS terminated (certificate by SNI), then as `Http`.
    Https,
    /// TLS passed through by the ClientHello's server name (TLSRoute).
    TlsPassthrough,
    /// Every connection to the port's TCPRoute.
    Tcp,
}

impl Protocol {
    /// The route kinds a listener of this protocol can serve.
    pub fn route_kinds(self) -> &'static [&'static str] {
        match self {
            Protocol::Http | Protocol::Https => &["HTTPRoute", "GRPCRoute"],
            Protocol::TlsPassthrough => &["TLSRoute"],
            Protocol::Tcp => &["TCPRoute"],
        }
    }
}

/// The result: one route table per served port, and every object's status.
#[derive(Debug, Default)]
pub struct Compiled {
    /// HTTP and HTTPS ports: HTTPRoutes' and GRPCRoutes' rules.
    pub tables: BTreeMap<u16, RouteTable>,
    /// Every port a listener is served on, and its Gateway (listeners of
    /// one port share it; the first Gateway names it).
    pub ports: BTreeMap<u16, ObjectRef>,
    /// How each port of `ports` is served.
    pub protocols: BTreeMap<u16, Protocol>,
    /// HTTPS ports: the certificates, by listener hostname.
    pub tls: BTreeMap<u16, SniCertificates>,
    /// HTTPS ports whose listeners require client certificates
    /// (`frontendValidation`), and the check.
    pub client_auth: BTreeMap<u16, Arc<dyn rustls::server::danger::ClientCertVerifier>>,
    /// TLS passthrough and TCP ports: TLSRoutes' and TCPRoutes' rules.
    pub l4: BTreeMap<u16, L4Table>,
    pub gateways: BTreeMap<ObjectRef, GatewayStatus>,
    pub routes: BTreeMap<ObjectRef, Vec<RouteParentStatus>>,
}

/// Every object [`compile_objects`] reads.
#[derive(Clone, Copy, Debug, Default)]
pub struct Objects<'a> {
    pub gateways: &'a [Gateway],
    pub http_routes: &'a [HttpRoute],
    pub grpc_routes: &'a [GrpcRoute],
    pub tls_routes: &'a [TlsRoute],
    pub tcp_routes: &'a [TcpRoute],
    pub grants: &'a [ReferenceGrant],
}

/// A listener that may take routes.
pub(crate) struct ServedListener {
    gateway: ObjectRef,
    index: usize,
    name: String,
    port: u16,
    protocol: Protocol,
    hostname: Hostname,
    namespaces: AllowedNamespaces,
    /// The route kinds it takes.
    kinds: Vec<&'static str>,
    attached: usize,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum AllowedNamespaces {
    Same,
    All,
}

fn condition(
    kind: &'static str,
    status: bool,
    reason: &'static str,
    message: impl Into<String>,
    generation: Option<i64>,
) -> Condition {
    Condition { kind, status, reason, message: message.into(), observed_generation: generation }
}

/// Compiles the Gateways of `class`, the HTTPRoutes and ReferenceGrants,
/// for HTTP listeners only: the others are `UnsupportedProtocol` (their
/// ports are not in [`Compiled::ports`], so listeners that serve every
/// port as HTTP never bind them). [`compile_objects`] serves them all.
pub fn compile(
    class: &str,
    gateways: &[Gateway],
    routes: &[HttpRoute],
    grants: &[ReferenceGrant],
    services: &dyn ServiceLookup,
) -> Compiled {
    let objects = Objects { gateways, http_routes: routes, grants, ..Objects::default() };
    compile_with(class, &objects, services, &NoCertificates, true)
}

/// Compiles the Gateways of `class` and every route kind, with the
/// certificates of HTTPS listeners from `certificates`. Its ports are
/// served by protocol only by listeners given the compiled objects
/// ([`crate::listeners::GatewayListeners::with_routes`]).
pub fn compile_objects(
    class: &str,
    objects: &Objects<'_>,
    services: &dyn ServiceLookup,
    certificates: &dyn CertificateStore,
) -> Compiled {
    compile_with(class, objects, services, certificates, false)
}

fn compile_with(
    class: &str,
    objects: &Objects<'_>,
    services: &dyn ServiceLookup,
    certificates: &dyn CertificateStore,
    http_only: bool,
) -> Compiled {
    let mut out = Compiled::default();
    let mut listeners = Vec::new();
    let mut ours: Vec<&Gateway> = objects.gateways.iter().filter(|g| g.spec.gateway_class_name == class).collect();
    ours.sort_by(|a, b| {
        let key = |g: &Gateway| {
            (
                g.metadata.creation_timestamp.clone().unwrap_or_default(),
                g.metadata.namespace().to_owned(),
                g.metadata.name.clone(),
            )
        };
        key(a).cmp(&key(b))
    });
    let mut ports = listener::Ports::new(certificates, objects.grants, http_only);
    for gateway in ours {
        let id = ObjectRef {
            kind: "Gateway",
            namespace: gateway.metadata.namespace().to_owned(),
            name: gateway.metadata.name.clone(),
        };
        let status = ports.compile_gateway(gateway, &id, &mut listeners);
        out.gateways.insert(id, status);
    }
    (out.tls, out.client_auth) = ports.into_tls();
    for l in &listeners {
        out.ports.entry(l.port).or_insert_with(|| l.gateway.clone());
        out.protocols.entry(l.port).or_insert(l.protocol);
    }
    attach::all(objects, services, &mut listeners, &mut out);
    for table in out.tables.values_mut() {
        table.sort();
    }
    for table in out.l4.values_mut() {
        table.sort();
    }
    for l in &listeners {
        if let Some(listener) = out.gateways.get_mut(&l.gateway).and_then(|g| g.listeners.get_mut(l.index)) {
            listener.attached_routes = l.attached;
        }
    }
    out
}

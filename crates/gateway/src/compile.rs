//! Gateway API objects to route tables, in one pass, with every object's
//! status conditions. Nothing here fails as a whole: a listener, route,
//! rule or reference that is wrong is left out and says why in its
//! conditions (the names and reasons the Gateway API defines), and the
//! rest is compiled.
//!
//! - Gateways: those of the configured GatewayClass. Listeners: `HTTP`
//!   (others are not served yet and say so: `UnsupportedProtocol`); a
//!   second listener on a port with the same hostname, or another
//!   protocol, is `Conflicted`.
//! - HTTPRoutes attach to a Gateway (optionally one listener by
//!   `sectionName`, or by `port`) when the listener allows the route's
//!   namespace and kind and their hostnames intersect.
//! - Rules: an invalid match, filter or timeout drops that rule only
//!   (`PartiallyInvalid`); a route with no valid rule is not `Accepted`.
//! - backendRefs: Services by name and port, in the route's namespace or
//!   another one that grants it (ReferenceGrant); an unresolved one keeps
//!   its weight and its requests are answered 500 (`ResolvedRefs: False`).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use crate::backend::{Backends, ServiceRef, Target};
use crate::filter::{Filters, PathRewrite};
use crate::hostname::Hostname;
use crate::matching::{Match, PathMatch, catch_all};
use crate::schema::{self, GROUP, Gateway, HttpRoute, ReferenceGrant};
use crate::table::{Order, RouteAction, RouteTable, Timeouts};

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

/// The result: one route table per served port, and every object's status.
#[derive(Debug, Default)]
pub struct Compiled {
    pub tables: BTreeMap<u16, RouteTable>,
    /// Every port a listener is served on, and its Gateway (listeners of
    /// one port share it; the first Gateway names it).
    pub ports: BTreeMap<u16, ObjectRef>,
    pub gateways: BTreeMap<ObjectRef, GatewayStatus>,
    pub routes: BTreeMap<ObjectRef, Vec<RouteParentStatus>>,
}

/// A listener that may take routes.
struct ServedListener {
    gateway: ObjectRef,
    index: usize,
    name: String,
    port: u16,
    hostname: Hostname,
    namespaces: AllowedNamespaces,
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

/// Compiles the Gateways of `class`, the HTTPRoutes and ReferenceGrants.
pub fn compile(
    class: &str,
    gateways: &[Gateway],
    routes: &[HttpRoute],
    grants: &[ReferenceGrant],
    services: &dyn ServiceLookup,
) -> Compiled {
    let mut out = Compiled::default();
    let mut listeners = Vec::new();
    let mut taken: BTreeMap<u16, (String, BTreeSet<Hostname>)> = BTreeMap::new();
    let mut ours: Vec<&Gateway> = gateways.iter().filter(|g| g.spec.gateway_class_name == class).collect();
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
    for gateway in ours {
        let id = ObjectRef {
            kind: "Gateway",
            namespace: gateway.metadata.namespace().to_owned(),
            name: gateway.metadata.name.clone(),
        };
        let status = compile_gateway(gateway, &id, &mut taken, &mut listeners);
        out.gateways.insert(id, status);
    }

    for l in &listeners {
        out.ports.entry(l.port).or_insert_with(|| l.gateway.clone());
    }
    let mut sorted: Vec<&HttpRoute> = routes.iter().collect();
    sorted.sort_by(|a, b| (a.metadata.namespace(), &a.metadata.name).cmp(&(b.metadata.namespace(), &b.metadata.name)));
    for route in sorted {
        let id = ObjectRef {
            kind: "HTTPRoute",
            namespace: route.metadata.namespace().to_owned(),
            name: route.metadata.name.clone(),
        };
        let statuses = attach_route(route, &id, &mut listeners, &mut out.tables, grants, services);
        out.routes.insert(id, statuses);
    }
    for table in out.tables.values_mut() {
        table.sort();
    }
    for l in &listeners {
        if let Some(listener) = out.gateways.get_mut(&l.gateway).and_then(|g| g.listeners.get_mut(l.index)) {
            listener.attached_routes = l.attached;
        }
    }
    out
}

fn compile_gateway(
    gateway: &Gateway,
    id: &ObjectRef,
    taken: &mut BTreeMap<u16, (String, BTreeSet<Hostname>)>,
    served: &mut Vec<ServedListener>,
) -> GatewayStatus {
    let generation = gateway.metadata.generation;
    let mut status = GatewayStatus::default();
    let mut names = BTreeSet::new();
    let mut programmed = 0;
    for (index, l) in gateway.spec.listeners.iter().enumerate() {
        let mut conditions = Vec::new();
        let mut problem = |reason: &'static str, message: String| {
            conditions.push(condition("Accepted", false, reason, message, generation));
        };
        let port = u16::try_from(l.port).ok().filter(|p| *p > 0);
        let hostname = l.hostname.as_deref().map(Hostname::parse).transpose();
        if l.name.is_empty() || !names.insert(l.name.clone()) {
            problem("Invalid", format!("listener {index}: a name, unique in the Gateway, is required"));
        } else if port.is_none() {
            problem("Invalid", format!("listener {}: port {} is out of range (1-65535)", l.name, l.port));
        } else if let Err(why) = &hostname {
            problem("Invalid", format!("listener {}: hostname: {why}", l.name));
        } else if l.protocol != "HTTP" {
            problem(
                "UnsupportedProtocol",
                format!("listener {}: protocol {:?} is not served yet (HTTP is)", l.name, l.protocol),
            );
        }
        let namespaces =
            match l.allowed_routes.as_ref().and_then(|a| a.namespaces.as_ref()).and_then(|n| n.from.as_deref()) {
                None | Some("Same") => Some(AllowedNamespaces::Same),
                Some("All") => Some(AllowedNamespaces::All),
                Some(other) => {
                    conditions.push(condition(
                        "Accepted",
                        false,
                        "UnsupportedValue",
                        format!(
                            "listener {}: allowedRoutes.namespaces.from {other:?} is not supported (Same or All)",
                            l.name
                        ),
                        generation,
                    ));
                    None
                }
            };
        let kinds_ok = l.allowed_routes.as_ref().and_then(|a| a.kinds.as_ref()).is_none_or(|kinds| {
            kinds.iter().any(|k| k.kind == "HTTPRoute" && k.group.as_deref().unwrap_or(GROUP) == GROUP)
        });
        if !kinds_ok {
            conditions.push(condition(
                "ResolvedRefs",
                false,
                "InvalidRouteKinds",
                format!("listener {}: allowedRoutes.kinds names no kind this listener serves (HTTPRoute)", l.name),
                generation,
            ));
        }
        if conditions.is_empty()
            && let (Some(port), Ok(hostname), Some(namespaces)) = (port, hostname, namespaces)
        {
            let hostname = hostname.unwrap_or(Hostname::Any);
            let (protocol, hosts) = taken.entry(port).or_insert_with(|| (l.protocol.clone(), BTreeSet::new()));
            if *protocol != l.protocol {
                conditions.push(condition(
                    "Conflicted",
                    true,
                    "ProtocolConflict",
                    format!("port {port} is served as {protocol}"),
                    generation,
                ));
            } else if !hosts.insert(hostname.clone()) {
                conditions.push(condition(
                    "Conflicted",
                    true,
                    "HostnameConflict",
                    format!("another listener serves port {port} for hostname {hostname}"),
                    generation,
                ));
            } else {
                served.push(ServedListener {
                    gateway: id.clone(),
                    index,
                    name: l.name.clone(),
                    port,
                    hostname,
                    namespaces,
                    attached: 0,
                });
                programmed += 1;
                conditions.push(condition("Accepted", true, "Accepted", "", generation));
                conditions.push(condition("ResolvedRefs", true, "ResolvedRefs", "", generation));
                conditions.push(condition("Programmed", true, "Programmed", "", generation));
            }
        }
        if !conditions.iter().any(|c| c.kind == "Programmed") {
            conditions.push(condition(
                "Programmed",
                false,
                "Invalid",
                "not served: see the other conditions",
                generation,
            ));
        }
        status.listeners.push(ListenerStatus { name: l.name.clone(), attached_routes: 0, conditions });
    }
    status.conditions.push(condition("Accepted", true, "Accepted", "", generation));
    status.conditions.push(if programmed > 0 {
        condition("Programmed", true, "Programmed", format!("{programmed} listener(s) served"), generation)
    } else {
        condition("Programmed", false, "Invalid", "no listener can be served", generation)
    });
    status
}

/// Attaches `route` to the listeners its parentRefs name and that accept it.
fn attach_route(
    route: &HttpRoute,
    id: &ObjectRef,
    listeners: &mut [ServedListener],
    tables: &mut BTreeMap<u16, RouteTable>,
    grants: &[ReferenceGrant],
    services: &dyn ServiceLookup,
) -> Vec<RouteParentStatus> {
    let generation = route.metadata.generation;
    let hostnames: Result<Vec<Hostname>, String> = route
        .spec
        .hostnames
        .iter()
        .enumerate()
        .map(|(i, h)| Hostname::parse(h).map_err(|e| format!("spec.hostnames[{i}]: {e}")))
        .collect();
    let (rules, rule_problems, resolve_problems) = compile_rules(route, id, grants, services);
    let mut statuses = Vec::new();
    for parent in &route.spec.parent_refs {
        let gateway = ObjectRef {
            kind: "Gateway",
            namespace: parent.namespace.clone().unwrap_or_else(|| id.namespace.clone()),
            name: parent.name.clone(),
        };
        let mut conditions = Vec::new();
        let accepted =
            |reason: &'static str, message: String| condition("Accepted", false, reason, message, generation);
        let kind_ok = parent.kind.as_deref().unwrap_or("Gateway") == "Gateway"
            && parent.group.as_deref().unwrap_or(GROUP) == GROUP;
        let candidates: Vec<usize> = listeners
            .iter()
            .enumerate()
            .filter(|(_, l)| l.gateway == gateway)
            .filter(|(_, l)| parent.section_name.as_ref().is_none_or(|s| *s == l.name))
            .filter(|(_, l)| parent.port.is_none_or(|p| i64::from(l.port) == p))
            .map(|(i, _)| i)
            .collect();
        if !kind_ok {
            conditions.push(accepted("NotAllowedByListeners", "parentRefs: only Gateways are parents here".to_owned()));
        } else if let Err(why) = &hostnames {
            conditions.push(accepted("UnsupportedValue", why.clone()));
        } else if rules.is_empty() {
            conditions.push(accepted("UnsupportedValue", format!("no valid rule: {}", rule_problems.join("; "))));
        } else if candidates.is_empty() {
            conditions.push(accepted(
                "NoMatchingParent",
                format!("{gateway} has no served listener that this parentRef names"),
            ));
        } else {
            let hostnames = hostnames.as_deref().unwrap_or_default();
            let (mut attached, mut by_namespace, mut by_hostname) = (0, 0, 0);
            for i in candidates {
                let l = &mut listeners[i];
                if l.namespaces == AllowedNamespaces::Same && l.gateway.namespace != id.namespace {
                    by_namespace += 1;
                    continue;
                }
                let hosts: Vec<Hostname> = if hostnames.is_empty() {
                    vec![l.hostname.clone()]
                } else {
                    hostnames.iter().filter_map(|h| l.hostname.intersect(h)).collect()
                };
                if hosts.is_empty() {
                    by_hostname += 1;
                    continue;
                }
                let table = tables.entry(l.port).or_default();
                for host in hosts {
                    for (rule, matches) in &rules {
                        for (m, matcher) in matches.iter().enumerate() {
                            let order = Order {
                                created: route.metadata.creation_timestamp.clone().unwrap_or_default(),
                                route: format!("{}/{}", id.namespace, id.name),
                                rule: rule.rule,
                                matched: m,
                            };
                            table.push(host.clone(), matcher.clone(), order, rule.clone());
                        }
                    }
                }
                l.attached += 1;
                attached += 1;
            }
            if attached > 0 {
                conditions.push(condition("Accepted", true, "Accepted", "", generation));
            } else if by_hostname > 0 {
                conditions.push(accepted(
                    "NoMatchingListenerHostname",
                    "no listener's hostname intersects the route's hostnames".to_owned(),
                ));
            } else {
                conditions.push(accepted(
                    "NotAllowedByListeners",
                    format!("{by_namespace} listener(s) allow routes from their own namespace only"),
                ));
            }
        }
        if !rule_problems.is_empty() && !rules.is_empty() {
            conditions.push(condition(
                "PartiallyInvalid",
                true,
                "UnsupportedValue",
                rule_problems.join("; "),
                generation,
            ));
        }
        conditions.push(match resolve_problems.first() {
            None => condition("ResolvedRefs", true, "ResolvedRefs", "", generation),
            Some((reason, _)) => condition(
                "ResolvedRefs",
                false,
                reason,
                resolve_problems.iter().map(|(_, m)| m.as_str()).collect::<Vec<_>>().join("; "),
                generation,
            ),
        });
        statuses.push(RouteParentStatus { parent: gateway, section: parent.section_name.clone(), conditions });
    }
    statuses
}

type CompiledRule = (Arc<RouteAction>, Vec<Match>);

/// The route's valid rules (action and matches), the problems of the
/// invalid ones, and the references that did not resolve (reason, message).
#[allow(clippy::type_complexity)]
fn compile_rules(
    route: &HttpRoute,
    id: &ObjectRef,
    grants: &[ReferenceGrant],
    services: &dyn ServiceLookup,
) -> (Vec<CompiledRule>, Vec<String>, Vec<(&'static str, String)>) {
    let (mut rules, mut problems, mut unresolved) = (Vec::new(), Vec::new(), Vec::new());
    for (index, rule) in route.spec.rules.iter().enumerate() {
        let field = format!("spec.rules[{index}]");
        match compile_rule(rule, &field) {
            Err(why) => problems.push(why),
            Ok((matches, filters, timeouts)) => {
                let mut targets = Vec::new();
                for (i, backend) in rule.backend_refs.iter().enumerate() {
                    let at = format!("{field}.backendRefs[{i}]");
                    let weight = match u32::try_from(backend.weight.unwrap_or(1)) {
                        Ok(w) if w <= 1_000_000 => w,
                        _ => {
                            problems.push(format!(
                                "{at}.weight {} is out of range (0-1000000)",
                                backend.weight.unwrap_or(1)
                            ));
                            continue;
                        }
                    };
                    let target = match resolve(backend, &at, id, grants, services) {
                        Ok(service) => Target::Service(service),
                        Err((reason, why)) => {
                            unresolved.push((reason, why.clone()));
                            Target::Invalid(why)
                        }
                    };
                    targets.push((target, weight));
                }
                let action =
                    RouteAction { route: id.clone(), rule: index, backends: Backends::new(targets), filters, timeouts };
                rules.push((Arc::new(action), matches));
            }
        }
    }
    (rules, problems, unresolved)
}

fn compile_rule(rule: &schema::HttpRouteRule, field: &str) -> Result<(Vec<Match>, Filters, Timeouts), String> {
    let matches = if rule.matches.is_empty() {
        vec![catch_all()]
    } else {
        rule.matches
            .iter()
            .enumerate()
            .map(|(i, m)| Match::compile(m, &format!("{field}.matches[{i}]")))
            .collect::<Result<Vec<_>, _>>()?
    };
    let filters = Filters::compile(&rule.filters, field)?;
    if matches!(filters.path_rewrite(), Some(PathRewrite::Prefix(_)))
        && matches.iter().any(|m| !matches!(m.path, PathMatch::Prefix(_)))
    {
        return Err(format!("{field}: ReplacePrefixMatch needs every match of the rule to be a PathPrefix"));
    }
    let timeouts = match &rule.timeouts {
        None => Timeouts::default(),
        Some(t) => {
            let parse = |v: &Option<String>, key: &str| {
                v.as_deref()
                    .map(|d| parse_duration(d).map_err(|why| format!("{field}.timeouts.{key} {d:?}: {why}")))
                    .transpose()
            };
            let request = parse(&t.request, "request")?.filter(|d| !d.is_zero());
            let backend_request = parse(&t.backend_request, "backendRequest")?.filter(|d| !d.is_zero());
            if let (Some(r), Some(b)) = (request, backend_request)
                && b > r
            {
                return Err(format!("{field}.timeouts.backendRequest must not exceed timeouts.request"));
            }
            Timeouts { request, backend_request }
        }
    };
    Ok((matches, filters, timeouts))
}

/// A backendRef as a Service reference, or why it cannot be one.
fn resolve(
    backend: &schema::HttpBackendRef,
    field: &str,
    route: &ObjectRef,
    grants: &[ReferenceGrant],
    services: &dyn ServiceLookup,
) -> Result<ServiceRef, (&'static str, String)> {
    let group = backend.group.as_deref().unwrap_or("");
    let kind = backend.kind.as_deref().unwrap_or("Service");
    if !group.is_empty() || kind != "Service" {
        return Err((
            "InvalidKind",
            format!("{field}: {kind} (group {group:?}) is not a kind this gateway sends to (Service)"),
        ));
    }
    let namespace = backend.namespace.clone().unwrap_or_else(|| route.namespace.clone());
    let port = backend
        .port
        .and_then(|p| u16::try_from(p).ok())
        .filter(|p| *p > 0)
        .ok_or_else(|| ("UnsupportedValue", format!("{field}.port: a Service reference needs a port (1-65535)")))?;
    if namespace != route.namespace && !granted(grants, &route.namespace, &namespace, &backend.name) {
        return Err((
            "RefNotPermitted",
            format!(
                "{field}: Service {namespace}/{} is in another namespace and no ReferenceGrant there allows HTTPRoutes from {}",
                backend.name, route.namespace
            ),
        ));
    }
    services
        .check(&namespace, &backend.name, port)
        .map_err(|why| ("BackendNotFound", format!("{field}: Service {namespace}/{}:{port}: {why}", backend.name)))?;
    Ok(ServiceRef { namespace, name: backend.name.clone(), port })
}

/// Whether a ReferenceGrant in `to_namespace` lets HTTPRoutes of `from_namespace` refer to Service `name`.
fn granted(grants: &[ReferenceGrant], from_namespace: &str, to_namespace: &str, name: &str) -> bool {
    grants.iter().filter(|g| g.metadata.namespace() == to_namespace).any(|g| {
        g.spec.from.iter().any(|f| f.group == GROUP && f.kind == "HTTPRoute" && f.namespace == from_namespace)
            && g.spec
                .to
                .iter()
                .any(|t| t.group.is_empty() && t.kind == "Service" && t.name.as_deref().is_none_or(|n| n == name))
    })
}

/// A Gateway API duration: one or more `<number><unit>` with units `h`,
/// `m`, `s`, `ms` (`1h30m`, `500ms`, `0s`).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let mut total = Duration::ZERO;
    let mut rest = text;
    if rest.is_empty() {
        return Err("empty".to_owned());
    }
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 || digits > 5 {
            return Err("expected up to 5 digits and a unit (h, m, s, ms), e.g. 10s or 1h30m".to_owned());
        }
        let n: u64 = rest[..digits].parse().map_err(|_| "not a number".to_owned())?;
        rest = &rest[digits..];
        let (unit, len) = if rest.starts_with("ms") {
            (Duration::from_millis(1), 2)
        } else {
            match rest.as_bytes().first() {
                Some(b'h') => (Duration::from_secs(3600), 1),
                Some(b'm') => (Duration::from_secs(60), 1),
                Some(b's') => (Duration::from_secs(1), 1),
                _ => return Err("a unit (h, m, s or ms) must follow each number".to_owned()),
            }
        };
        rest = &rest[len..];
        total += unit * u32::try_from(n).map_err(|_| "too large".to_owned())?;
    }
    Ok(total)
}

//! Routes' rules: matches, filters, timeouts and weighted backends, for
//! each route kind; backendRefs resolved to Services (ReferenceGrants for
//! other namespaces).

use std::sync::Arc;
use std::time::Duration;

use super::{ObjectRef, ServiceLookup};
use crate::backend::{Backends, ServiceRef, Target};
use crate::filter::{Filters, PathRewrite};
use crate::grpc::{self, GrpcRank};
use crate::l4::L4Action;
use crate::matching::{Match, PathMatch, catch_all};
use crate::schema::{self, GROUP, GrpcRoute, HttpBackendRef, HttpRoute, L4RouteSpec, ReferenceGrant};
use crate::table::{RouteAction, Timeouts};

/// A route's valid rules, the problems of its invalid ones
/// (`PartiallyInvalid`), and its references that did not resolve
/// (`ResolvedRefs`: reason, message).
pub(super) struct Rules<R> {
    pub(super) valid: Vec<R>,
    pub(super) problems: Vec<String>,
    pub(super) unresolved: Vec<(&'static str, String)>,
}

impl<R> Default for Rules<R> {
    fn default() -> Self {
        Self { valid: Vec::new(), problems: Vec::new(), unresolved: Vec::new() }
    }
}

/// What backendRefs are resolved against.
#[derive(Clone, Copy)]
pub(super) struct Refs<'a> {
    pub(super) route: &'a ObjectRef,
    pub(super) grants: &'a [ReferenceGrant],
    pub(super) services: &'a dyn ServiceLookup,
}

impl<R> Rules<R> {
    /// A rule's backends with their weights; an out-of-range weight drops
    /// that backend (a problem), an unresolved reference keeps its share.
    fn backends(&mut self, refs: &[HttpBackendRef], field: &str, ctx: Refs<'_>) -> Backends {
        let mut targets = Vec::new();
        for (i, backend) in refs.iter().enumerate() {
            let at = format!("{field}.backendRefs[{i}]");
            let weight = match u32::try_from(backend.weight.unwrap_or(1)) {
                Ok(w) if w <= 1_000_000 => w,
                _ => {
                    self.problems
                        .push(format!("{at}.weight {} is out of range (0-1000000)", backend.weight.unwrap_or(1)));
                    continue;
                }
            };
            let target = match resolve(backend, &at, ctx) {
                Ok(service) => Target::Service(service),
                Err((reason, why)) => {
                    self.unresolved.push((reason, why.clone()));
                    Target::Invalid(why)
                }
            };
            targets.push((target, weight));
        }
        Backends::new(targets)
    }
}

/// An HTTPRoute's rules: each one's action and matches.
pub(super) fn http_rules(route: &HttpRoute, ctx: Refs<'_>) -> Rules<(Arc<RouteAction>, Vec<Match>)> {
    let mut out = Rules::default();
    for (index, rule) in route.spec.rules.iter().enumerate() {
        let field = format!("spec.rules[{index}]");
        match compile_rule(rule, &field) {
            Err(why) => out.problems.push(why),
            Ok((matches, filters, timeouts)) => {
                let backends = out.backends(&rule.backend_refs, &field, ctx);
                let action = RouteAction { route: ctx.route.clone(), rule: index, backends, filters, timeouts };
                out.valid.push((Arc::new(action), matches));
            }
        }
    }
    out
}

/// A GRPCRoute rule's action and its matches with their gRPC rank.
pub(super) type GrpcRule = (Arc<RouteAction>, Vec<(Match, GrpcRank)>);

/// A GRPCRoute's rules: each one's action and matches (as HTTP matches on
/// `/<service>/<method>`, with their gRPC rank). Header modifier filters
/// apply; the others are not defined for gRPC here.
pub(super) fn grpc_rules(route: &GrpcRoute, ctx: Refs<'_>) -> Rules<GrpcRule> {
    let mut out = Rules::default();
    for (index, rule) in route.spec.rules.iter().enumerate() {
        let field = format!("spec.rules[{index}]");
        let compiled = (|| {
            let matches = if rule.matches.is_empty() {
                vec![(catch_all(), GrpcRank::default())]
            } else {
                rule.matches
                    .iter()
                    .enumerate()
                    .map(|(i, m)| grpc::compile_match(m, &format!("{field}.matches[{i}]")))
                    .collect::<Result<Vec<_>, _>>()?
            };
            for (i, f) in rule.filters.iter().enumerate() {
                if !matches!(f.kind.as_str(), "RequestHeaderModifier" | "ResponseHeaderModifier") {
                    return Err(format!(
                        "{field}.filters[{i}].type {:?} is not supported on a GRPCRoute (RequestHeaderModifier, ResponseHeaderModifier)",
                        f.kind
                    ));
                }
            }
            Ok((matches, Filters::compile(&rule.filters, &field)?))
        })();
        match compiled {
            Err(why) => out.problems.push(why),
            Ok((matches, filters)) => {
                let backends = out.backends(&rule.backend_refs, &field, ctx);
                let action = RouteAction {
                    route: ctx.route.clone(),
                    rule: index,
                    backends,
                    filters,
                    timeouts: Timeouts::default(),
                };
                out.valid.push((Arc::new(action), matches));
            }
        }
    }
    out
}

/// A TLSRoute's or TCPRoute's rule: its weighted backends. One rule is
/// served (the API's v1alpha2 gives several rules no way to choose
/// between them); the others are problems.
pub(super) fn l4_rules(spec: &L4RouteSpec, ctx: Refs<'_>) -> Rules<Arc<L4Action>> {
    let mut out = Rules::default();
    for (index, rule) in spec.rules.iter().enumerate() {
        let field = format!("spec.rules[{index}]");
        if index > 0 {
            out.problems.push(format!("{field}: only the first rule of a {} is served", ctx.route.kind));
            continue;
        }
        if rule.backend_refs.is_empty() {
            out.problems.push(format!("{field}.backendRefs: a {} rule needs at least one", ctx.route.kind));
            continue;
        }
        let backends = out.backends(&rule.backend_refs, &field, ctx);
        out.valid.push(Arc::new(L4Action { route: ctx.route.clone(), rule: index, backends }));
    }
    out
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
fn resolve(backend: &HttpBackendRef, field: &str, ctx: Refs<'_>) -> Result<ServiceRef, (&'static str, String)> {
    let route = ctx.route;
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
    if namespace != route.namespace
        && !granted(ctx.grants, route.kind, &route.namespace, &namespace, "Service", &backend.name)
    {
        return Err((
            "RefNotPermitted",
            format!(
                "{field}: Service {namespace}/{} is in another namespace and no ReferenceGrant there allows {}s from {}",
                backend.name, route.kind, route.namespace
            ),
        ));
    }
    ctx.services
        .check(&namespace, &backend.name, port)
        .map_err(|why| ("BackendNotFound", format!("{field}: Service {namespace}/{}:{port}: {why}", backend.name)))?;
    Ok(ServiceRef { namespace, name: backend.name.clone(), port })
}

/// Whether a ReferenceGrant in `to_namespace` lets `from_kind`s (of this
/// API group) of `from_namespace` refer to the core `to_kind` `name`
/// (a Service, a Secret).
pub(super) fn granted(
    grants: &[ReferenceGrant],
    from_kind: &str,
    from_namespace: &str,
    to_namespace: &str,
    to_kind: &str,
    name: &str,
) -> bool {
    grants.iter().filter(|g| g.metadata.namespace() == to_namespace).any(|g| {
        g.spec.from.iter().any(|f| f.group == GROUP && f.kind == from_kind && f.namespace == from_namespace)
            && g.spec
                .to
                .iter()
                .any(|t| t.group.is_empty() && t.kind == to_kind && t.name.as_deref().is_none_or(|n| n == name))
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

//! Routes of every kind attached to the listeners their parentRefs name
//! and that accept them (namespace, kind, hostname), their rules placed in
//! those listeners' ports' tables, and each parentRef's conditions.

use std::sync::Arc;

use super::rules::{self, Refs, Rules};
use super::{
    AllowedNamespaces, Compiled, ObjectRef, Objects, RouteParentStatus, ServedListener, ServiceLookup, condition,
};
use crate::hostname::Hostname;
use crate::schema::{GROUP, Metadata, ParentRef};
use crate::table::Order;

/// Attaches every route of `objects` to `listeners`, into `out`.
pub(super) fn all(
    objects: &Objects<'_>,
    services: &dyn ServiceLookup,
    listeners: &mut [ServedListener],
    out: &mut Compiled,
) {
    let grants = objects.grants;
    for route in sorted(objects.http_routes, |r| &r.metadata) {
        let id = object("HTTPRoute", &route.metadata);
        let rules = rules::http_rules(route, Refs { route: &id, grants, services });
        let target = Target {
            id: &id,
            metadata: &route.metadata,
            parents: &route.spec.parent_refs,
            hostnames: &route.spec.hostnames,
        };
        let statuses = attach(&target, &rules, listeners, |l, hosts| {
            let table = out.tables.entry(l.port).or_default();
            for host in hosts {
                for (action, matches) in &rules.valid {
                    for (m, matcher) in matches.iter().enumerate() {
                        table.push(
                            host.clone(),
                            matcher.clone(),
                            order(&route.metadata, &id, action.rule, m),
                            action.clone(),
                        );
                    }
                }
            }
        });
        out.routes.insert(id, statuses);
    }
    for route in sorted(objects.grpc_routes, |r| &r.metadata) {
        let id = object("GRPCRoute", &route.metadata);
        let rules = rules::grpc_rules(route, Refs { route: &id, grants, services });
        let target = Target {
            id: &id,
            metadata: &route.metadata,
            parents: &route.spec.parent_refs,
            hostnames: &route.spec.hostnames,
        };
        let statuses = attach(&target, &rules, listeners, |l, hosts| {
            let table = out.tables.entry(l.port).or_default();
            for host in hosts {
                for (action, matches) in &rules.valid {
                    for (m, (matcher, rank)) in matches.iter().enumerate() {
                        let at = order(&route.metadata, &id, action.rule, m);
                        table.push_grpc(host.clone(), matcher.clone(), *rank, at, action.clone());
                    }
                }
            }
        });
        out.routes.insert(id, statuses);
    }
    let tls = sorted(objects.tls_routes, |r| &r.metadata).into_iter().map(|r| ("TLSRoute", &r.metadata, &r.spec));
    let tcp = sorted(objects.tcp_routes, |r| &r.metadata).into_iter().map(|r| ("TCPRoute", &r.metadata, &r.spec));
    for (kind, metadata, spec) in tls.chain(tcp) {
        let id = object(kind, metadata);
        let rules = rules::l4_rules(spec, Refs { route: &id, grants, services });
        let hostnames: &[String] = if kind == "TCPRoute" { &[] } else { &spec.hostnames };
        let target = Target { id: &id, metadata, parents: &spec.parent_refs, hostnames };
        let statuses = attach(&target, &rules, listeners, |l, hosts| {
            let table = out.l4.entry(l.port).or_default();
            for host in hosts {
                for action in &rules.valid {
                    table.push(host.clone(), order(metadata, &id, action.rule, 0), Arc::clone(action));
                }
            }
        });
        out.routes.insert(id, statuses);
    }
}

/// Routes of one kind in `namespace/name` order.
fn sorted<T>(routes: &[T], metadata: impl Fn(&T) -> &Metadata) -> Vec<&T> {
    let mut sorted: Vec<&T> = routes.iter().collect();
    sorted.sort_by(|a, b| {
        let (a, b) = (metadata(a), metadata(b));
        (a.namespace(), &a.name).cmp(&(b.namespace(), &b.name))
    });
    sorted
}

fn object(kind: &'static str, metadata: &Metadata) -> ObjectRef {
    ObjectRef { kind, namespace: metadata.namespace().to_owned(), name: metadata.name.clone() }
}

fn order(metadata: &Metadata, id: &ObjectRef, rule: usize, matched: usize) -> Order {
    Order {
        created: metadata.creation_timestamp.clone().unwrap_or_default(),
        route: format!("{}/{}", id.namespace, id.name),
        rule,
        matched,
    }
}

/// What a route of any kind attaches with.
struct Target<'a> {
    id: &'a ObjectRef,
    metadata: &'a Metadata,
    parents: &'a [ParentRef],
    hostnames: &'a [String],
}

/// Attaches the route to the listeners its parentRefs name and that accept
/// it; `place` puts its rules in a listener's table for the hostnames
/// where the listener and the route meet.
fn attach<R>(
    route: &Target<'_>,
    rules: &Rules<R>,
    listeners: &mut [ServedListener],
    mut place: impl FnMut(&ServedListener, Vec<Hostname>),
) -> Vec<RouteParentStatus> {
    let id = route.id;
    let generation = route.metadata.generation;
    let hostnames: Result<Vec<Hostname>, String> = route
        .hostnames
        .iter()
        .enumerate()
        .map(|(i, h)| Hostname::parse(h).map_err(|e| format!("spec.hostnames[{i}]: {e}")))
        .collect();
    let mut statuses = Vec::new();
    for parent in route.parents {
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
        } else if rules.valid.is_empty() {
            conditions.push(accepted("UnsupportedValue", format!("no valid rule: {}", rules.problems.join("; "))));
        } else if candidates.is_empty() {
            conditions.push(accepted(
                "NoMatchingParent",
                format!("{gateway} has no served listener that this parentRef names"),
            ));
        } else {
            let hostnames = hostnames.as_deref().unwrap_or_default();
            let (mut attached, mut by_namespace, mut by_kind, mut by_hostname) = (0, 0, 0, 0);
            for i in candidates {
                let l = &mut listeners[i];
                if !l.kinds.contains(&id.kind) {
                    by_kind += 1;
                    continue;
                }
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
                place(l, hosts);
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
                let mut why = Vec::new();
                if by_namespace > 0 {
                    why.push(format!("{by_namespace} listener(s) allow routes from their own namespace only"));
                }
                if by_kind > 0 {
                    why.push(format!(
                        "{by_kind} listener(s) do not take {}s (protocol or allowedRoutes.kinds)",
                        id.kind
                    ));
                }
                conditions.push(accepted("NotAllowedByListeners", why.join("; ")));
            }
        }
        if !rules.problems.is_empty() && !rules.valid.is_empty() {
            conditions.push(condition(
                "PartiallyInvalid",
                true,
                "UnsupportedValue",
                rules.problems.join("; "),
                generation,
            ));
        }
        conditions.push(match rules.unresolved.first() {
            None => condition("ResolvedRefs", true, "ResolvedRefs", "", generation),
            Some((reason, _)) => condition(
                "ResolvedRefs",
                false,
                reason,
                rules.unresolved.iter().map(|(_, m)| m.as_str()).collect::<Vec<_>>().join("; "),
                generation,
            ),
        });
        statuses.push(RouteParentStatus { parent: gateway, section: parent.section_name.clone(), conditions });
    }
    statuses
}

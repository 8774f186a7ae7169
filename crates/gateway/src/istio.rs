//! EdgeMesh's gateway objects, for migration: the subset of Istio's
//! `networking.istio.io` `Gateway` and `VirtualService` that EdgeMesh's
//! documentation and examples use, translated into Gateway API objects
//! ([`schema::Gateway`], [`schema::HttpRoute`]) that then compile like any
//! other, so one routing model serves both.
//!
//! Translated:
//! - Gateway `servers[]`: `port.number`, `port.protocol` (`HTTP`, `HTTPS`,
//!   `TCP`, `TLS`), `hosts` (one listener per host; `*` or `ns/*`: any
//!   host), `tls.mode` `SIMPLE` with `credentialName` (an HTTPS listener
//!   whose certificate is that Secret), `PASSTHROUGH` on `TLS` servers;
//!   `MUTUAL` also checks client certificates against the Secret's `ca.crt`
//!   (`cipherSuites` and protocol bounds are noted, not applied). The
//!   Gateway's `selector` is ignored: every gateway serves
//!   every Gateway of its class, and EdgeMesh's objects are taken as class
//!   `edgemesh` ([`ISTIO_CLASS`]).
//! - VirtualService `gateways` (`name` or `namespace/name`; `mesh` is
//!   refused), `hosts`, `http[]` with `match[].uri` (`exact`, `prefix`,
//!   `regex`), `route[].destination` (`host`: a Service's short name,
//!   `name.namespace` or FQDN; `port.number`) and `weight`, and `timeout`.
//!
//! Everything else (header and method matches, rewrites, redirects,
//! retries, faults, mirrors, `tcp`/`tls` routes) is refused by name in the
//! [`Translation::refused`] list, never silently dropped; a rule with a
//! refused field is left out whole, so that it cannot route differently
//! than its author meant.
//!
//! Istio picks the first `http` rule that matches, in order; the Gateway
//! API picks the most specific match. The translation keeps the rules but
//! not Istio's order: where an earlier, broader `prefix` hides a later
//! rule under Istio (so that the later one never matched in EdgeMesh), the
//! later one now takes its requests, and [`Translation::notes`] says so.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::schema::{self, Metadata};

/// The GatewayClass translated Istio Gateways get.
pub const ISTIO_CLASS: &str = "edgemesh";

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default)]
pub struct IstioGateway {
    pub metadata: Metadata,
    pub spec: IstioGatewaySpec,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default)]
pub struct IstioGatewaySpec {
    pub servers: Vec<Server>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Server {
    pub port: ServerPort,
    pub hosts: Vec<String>,
    pub tls: Option<ServerTls>,
    pub name: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default)]
pub struct ServerPort {
    pub number: i64,
    pub name: Option<String>,
    pub protocol: String,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ServerTls {
    pub mode: Option<String>,
    pub credential_name: Option<String>,
    pub https_redirect: Option<bool>,
    /// Not applied (see the notes the translation writes).
    pub cipher_suites: Vec<String>,
    pub min_protocol_version: Option<String>,
    pub max_protocol_version: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default)]
pub struct VirtualService {
    pub metadata: Metadata,
    pub spec: VirtualServiceSpec,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default)]
pub struct VirtualServiceSpec {
    pub hosts: Vec<String>,
    pub gateways: Vec<String>,
    pub http: Vec<HttpRoute>,
    pub tcp: Vec<serde::de::IgnoredAny>,
    pub tls: Vec<serde::de::IgnoredAny>,
}

/// One `http` rule; the fields EdgeMesh never supported are kept as
/// present/absent so that they can be refused by name.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default)]
pub struct HttpRoute {
    pub name: Option<String>,
    #[serde(rename = "match")]
    pub matches: Vec<HttpMatch>,
    pub route: Vec<RouteDestination>,
    pub timeout: Option<String>,
    #[serde(flatten)]
    pub other: BTreeMap<String, serde::de::IgnoredAny>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default)]
pub struct HttpMatch {
    pub uri: Option<StringMatch>,
    #[serde(flatten)]
    pub other: BTreeMap<String, serde::de::IgnoredAny>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default)]
pub struct StringMatch {
    pub exact: Option<String>,
    pub prefix: Option<String>,
    pub regex: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default)]
pub struct RouteDestination {
    pub destination: Destination,
    pub weight: Option<i64>,
    #[serde(flatten)]
    pub other: BTreeMap<String, serde::de::IgnoredAny>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default)]
pub struct Destination {
    pub host: String,
    pub port: Option<DestinationPort>,
    pub subset: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default)]
pub struct DestinationPort {
    pub number: i64,
}

/// The Gateway API objects EdgeMesh's objects become, and what could not be.
#[derive(Debug, Default)]
pub struct Translation {
    pub gateways: Vec<schema::Gateway>,
    pub routes: Vec<schema::HttpRoute>,
    /// Istio lets a VirtualService send to a Service of any namespace; the
    /// Gateway API needs a ReferenceGrant for that. One is made for exactly
    /// each such (route namespace, Service) a translated route names.
    pub grants: Vec<schema::ReferenceGrant>,
    /// `Kind namespace/name: field: why`, for each refused part.
    pub refused: Vec<String>,
    /// Where the translated routes behave differently than under Istio.
    pub notes: Vec<String>,
}

/// Translates Istio Gateways and VirtualServices (`cluster_domain` for
/// FQDN destination hosts, e.g. `cluster.local`).
pub fn translate(gateways: &[IstioGateway], services: &[VirtualService], cluster_domain: &str) -> Translation {
    let mut out = Translation::default();
    for gateway in gateways {
        out.gateways.push(translate_gateway(gateway, &mut out.refused, &mut out.notes));
    }
    for vs in services {
        if let Some(route) = translate_virtual_service(vs, cluster_domain, &mut out) {
            out.routes.push(route);
        }
    }
    out.grants = implied_grants(&out.routes);
    out
}

/// The grants Istio's semantics imply for `routes`' cross-namespace backends.
fn implied_grants(routes: &[schema::HttpRoute]) -> Vec<schema::ReferenceGrant> {
    let mut pairs = std::collections::BTreeSet::new();
    for route in routes {
        let from = route.metadata.namespace();
        for backend in route.spec.rules.iter().flat_map(|r| &r.backend_refs) {
            if let Some(to) = backend.namespace.as_deref().filter(|to| *to != from) {
                pairs.insert((to.to_owned(), from.to_owned(), backend.name.clone()));
            }
        }
    }
    pairs
        .into_iter()
        .map(|(to, from, name)| schema::ReferenceGrant {
            metadata: Metadata { name: format!("istio-{from}-to-{name}"), namespace: Some(to), ..Default::default() },
            spec: schema::ReferenceGrantSpec {
                from: vec![schema::GrantFrom {
                    group: schema::GROUP.to_owned(),
                    kind: "HTTPRoute".to_owned(),
                    namespace: from,
                }],
                to: vec![schema::GrantTo { group: String::new(), kind: "Service".to_owned(), name: Some(name) }],
            },
        })
        .collect()
}

fn translate_gateway(gateway: &IstioGateway, refused: &mut Vec<String>, notes: &mut Vec<String>) -> schema::Gateway {
    let id = format!("Gateway {}/{}", gateway.metadata.namespace(), gateway.metadata.name);
    let mut listeners = Vec::new();
    for (i, server) in gateway.spec.servers.iter().enumerate() {
        let field = format!("{id}: spec.servers[{i}]");
        let protocol = match (server.port.protocol.to_ascii_uppercase().as_str(), &server.tls) {
            ("HTTP", None) => "HTTP",
            ("HTTP" | "HTTPS", Some(tls)) => {
                if tls.https_redirect == Some(true) {
                    refused.push(format!("{field}.tls.httpsRedirect: use an HTTPRoute RequestRedirect instead"));
                    continue;
                }
                match tls.mode.as_deref().unwrap_or("SIMPLE") {
                    "SIMPLE" | "MUTUAL" if tls.credential_name.is_some() => {
                        tls_notes(&field, tls, notes);
                        "HTTPS"
                    }
                    mode => {
                        refused.push(format!(
                            "{field}.tls: mode {mode:?} without credentialName cannot be served (SIMPLE with credentialName)"
                        ));
                        continue;
                    }
                }
            }
            ("HTTPS", None) => {
                refused.push(format!("{field}: protocol HTTPS needs tls.credentialName"));
                continue;
            }
            ("TCP", _) => "TCP",
            ("TLS", _) => "TLS",
            (other, _) => {
                refused.push(format!("{field}.port.protocol {other:?} is not translated (HTTP, HTTPS, TCP, TLS)"));
                continue;
            }
        };
        let base = server.port.name.clone().or_else(|| server.name.clone()).unwrap_or_else(|| format!("server-{i}"));
        let hosts: Vec<Option<String>> =
            if server.hosts.is_empty() { vec![None] } else { server.hosts.iter().map(|h| listener_host(h)).collect() };
        for (j, host) in hosts.into_iter().enumerate() {
            let name = if j == 0 { base.clone() } else { format!("{base}-{j}") };
            // `credentialName`: a Secret in the Gateway's namespace;
            // `PASSTHROUGH`: TLS by SNI, not terminated.
            let tls = match (protocol, &server.tls) {
                ("HTTPS", Some(tls)) => {
                    let secret: Vec<schema::SecretRef> = tls
                        .credential_name
                        .iter()
                        .map(|name| schema::SecretRef { name: name.clone(), ..Default::default() })
                        .collect();
                    // MUTUAL: client certificates checked against the same
                    // Secret's ca.crt, as Istio (and EdgeMesh) read it.
                    let frontend_validation = (tls.mode.as_deref() == Some("MUTUAL"))
                        .then(|| schema::FrontendValidation { ca_certificate_refs: secret.clone() });
                    Some(schema::ListenerTls { mode: None, certificate_refs: secret, frontend_validation })
                }
                ("TLS", Some(tls)) if tls.mode.as_deref() == Some("PASSTHROUGH") => {
                    Some(schema::ListenerTls { mode: Some("Passthrough".to_owned()), ..Default::default() })
                }
                _ => None,
            };
            listeners.push(schema::Listener {
                name,
                hostname: host,
                port: server.port.number,
                protocol: protocol.to_owned(),
                tls,
                // Istio binds VirtualServices of any namespace to a Gateway they name.
                allowed_routes: Some(schema::AllowedRoutes {
                    namespaces: Some(schema::RouteNamespaces { from: Some("All".to_owned()) }),
                    kinds: None,
                }),
                tls_group: Some(base.clone()),
            });
        }
    }
    schema::Gateway {
        metadata: gateway.metadata.clone(),
        spec: schema::GatewaySpec { gateway_class_name: ISTIO_CLASS.to_owned(), listeners },
    }
}

/// What a served TLS server's settings do here that differs from Istio:
/// its cipher suites and protocol bounds are not applied (rustls serves TLS
/// 1.2 and 1.3 with its AEAD suites only).
fn tls_notes(field: &str, tls: &ServerTls, notes: &mut Vec<String>) {
    if !tls.cipher_suites.is_empty() {
        notes.push(format!(
            "{field}.tls.cipherSuites: not applied; served with rustls' AEAD suites (AES-GCM, ChaCha20-Poly1305), never CBC"
        ));
    }
    if tls.min_protocol_version.is_some() || tls.max_protocol_version.is_some() {
        notes.push(format!("{field}.tls.min/maxProtocolVersion: not applied; served with TLS 1.2 and 1.3"));
    }
}

/// An Istio host (`*`, `ns/host`, `host`) as a listener's hostname.
fn listener_host(host: &str) -> Option<String> {
    let host = host.rsplit_once('/').map_or(host, |(_, h)| h);
    (host != "*").then(|| host.to_owned())
}

fn translate_virtual_service(
    vs: &VirtualService,
    cluster_domain: &str,
    out: &mut Translation,
) -> Option<schema::HttpRoute> {
    let namespace = vs.metadata.namespace().to_owned();
    let id = format!("VirtualService {namespace}/{}", vs.metadata.name);
    if !vs.spec.tcp.is_empty() || !vs.spec.tls.is_empty() {
        out.refused.push(format!("{id}: spec.tcp and spec.tls routes are not translated yet (only http)"));
    }
    let mut parent_refs = Vec::new();
    for (i, g) in vs.spec.gateways.iter().enumerate() {
        if g == "mesh" {
            out.refused.push(format!("{id}: spec.gateways[{i}] \"mesh\": sidecar routing has no counterpart"));
            continue;
        }
        let (ns, name) =
            g.split_once('/').map_or((namespace.clone(), g.clone()), |(n, g)| (n.to_owned(), g.to_owned()));
        parent_refs.push(schema::ParentRef { name, namespace: Some(ns), ..Default::default() });
    }
    if parent_refs.is_empty() || vs.spec.http.is_empty() {
        return None;
    }
    let hostnames: Vec<String> = vs.spec.hosts.iter().filter_map(|h| listener_host(h)).collect();
    let mut rules = Vec::new();
    let mut prefixes_before: Vec<(usize, String)> = Vec::new();
    for (i, http) in vs.spec.http.iter().enumerate() {
        let field = format!("{id}: spec.http[{i}]");
        match translate_rule(http, &field, &namespace, cluster_domain) {
            Err(why) => out.refused.push(why),
            Ok((rule, paths)) => {
                // A catch-all rule's path is `/`; a regex is no path to compare.
                let has_regex = http.matches.iter().any(|m| m.uri.as_ref().is_some_and(|u| u.regex.is_some()));
                let all_prefixes = http.matches.iter().all(|m| m.uri.as_ref().is_some_and(|u| u.prefix.is_some()));
                let own = if paths.is_empty() { vec!["/".to_owned()] } else { paths };
                // Shadowed: every path under an earlier prefix, and more
                // specific than it (an equal prefix ties, and ties keep rule order).
                let shadowed_by = |earlier: &str| {
                    own.iter().all(|p| crate::matching::prefix_matches(normalized(earlier), p))
                        && !(all_prefixes && own.iter().all(|p| normalized(p) == normalized(earlier)))
                };
                if !has_regex
                    && let Some((j, earlier)) = prefixes_before.iter().find(|(_, earlier)| shadowed_by(earlier))
                {
                    out.notes.push(format!(
                        "{field}: under Istio's first-match order spec.http[{j}] (prefix {earlier:?}) took all of its requests; here the more specific rule takes them"
                    ));
                }
                if all_prefixes {
                    prefixes_before.extend(own.into_iter().map(|p| (i, p)));
                }
                rules.push(rule);
            }
        }
    }
    (!rules.is_empty()).then(|| schema::HttpRoute {
        metadata: vs.metadata.clone(),
        spec: schema::HttpRouteSpec { parent_refs, hostnames, rules },
    })
}

/// A prefix as the Gateway API compares it: no trailing `/` but the root.
fn normalized(prefix: &str) -> &str {
    let trimmed = prefix.trim_end_matches('/');
    if trimmed.is_empty() { "/" } else { trimmed }
}

/// One `http` rule; with the paths its matches name (for the order note).
fn translate_rule(
    http: &HttpRoute,
    field: &str,
    namespace: &str,
    cluster_domain: &str,
) -> Result<(schema::HttpRouteRule, Vec<String>), String> {
    if let Some(key) = http.other.keys().next() {
        return Err(format!("{field}.{key} is not translated (EdgeMesh's gateway did not support it either)"));
    }
    let mut matches = Vec::new();
    let mut paths = Vec::new();
    for (j, m) in http.matches.iter().enumerate() {
        if let Some(key) = m.other.keys().next() {
            return Err(format!("{field}.match[{j}].{key} is not translated (only uri)"));
        }
        let Some(uri) = &m.uri else { continue };
        let (kind, value) = match (&uri.exact, &uri.prefix, &uri.regex) {
            (Some(v), None, None) => ("Exact", v),
            (None, Some(v), None) => ("PathPrefix", v),
            (None, None, Some(v)) => ("RegularExpression", v),
            _ => return Err(format!("{field}.match[{j}].uri: exactly one of exact, prefix, regex")),
        };
        paths.push(value.clone());
        matches.push(schema::HttpRouteMatch {
            path: Some(schema::PathMatch { kind: Some(kind.to_owned()), value: Some(value.clone()) }),
            ..Default::default()
        });
    }
    let mut backend_refs = Vec::new();
    for (j, r) in http.route.iter().enumerate() {
        let at = format!("{field}.route[{j}]");
        if let Some(key) = r.other.keys().next() {
            return Err(format!("{at}.{key} is not translated"));
        }
        if r.destination.subset.is_some() {
            return Err(format!("{at}.destination.subset: subsets have no counterpart"));
        }
        let (name, ns) = destination_service(&r.destination.host, namespace, cluster_domain).ok_or_else(|| {
            format!("{at}.destination.host {:?} is not a Service of this cluster", r.destination.host)
        })?;
        let port = r.destination.port.as_ref().map(|p| p.number);
        backend_refs.push(schema::HttpBackendRef {
            name,
            namespace: (ns != namespace).then_some(ns),
            port,
            // Istio: weights add up to 100 when given; without any, equal shares.
            weight: Some(r.weight.unwrap_or(if http.route.iter().any(|d| d.weight.is_some()) { 0 } else { 1 })),
            ..Default::default()
        });
    }
    let timeouts = http.timeout.clone().map(|t| schema::HttpRouteTimeouts { request: Some(t), backend_request: None });
    Ok((schema::HttpRouteRule { name: http.name.clone(), matches, filters: Vec::new(), backend_refs, timeouts }, paths))
}

/// `web`, `web.shop`, `web.shop.svc`, `web.shop.svc.<domain>` -> (name, namespace).
fn destination_service(host: &str, namespace: &str, cluster_domain: &str) -> Option<(String, String)> {
    let host = host.trim_end_matches('.');
    let host = host.strip_suffix(&format!(".{cluster_domain}")).unwrap_or(host);
    let host = host.strip_suffix(".svc").unwrap_or(host);
    match host.split('.').collect::<Vec<_>>().as_slice() {
        [name] if !name.is_empty() => Some(((*name).to_owned(), namespace.to_owned())),
        [name, ns] if !name.is_empty() && !ns.is_empty() => Some(((*name).to_owned(), (*ns).to_owned())),
        _ => None,
    }
}

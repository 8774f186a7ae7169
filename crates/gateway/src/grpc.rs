//! GRPCRoute matches, compiled into HTTP matches: a gRPC call is a `POST`
//! of `/<package.Service>/<Method>` over HTTP/2, so a method match is a
//! path match (`Exact` service and method: that exact path; a service
//! alone: the `/<service>` path prefix; a method alone, or
//! `RegularExpression`: an anchored regular expression over the path),
//! and header matches are header matches.
//!
//! Precedence between GRPCRoute rules is the API's for gRPC: the hostname
//! (as for HTTPRoutes), then the most characters of a matching service,
//! then of a matching method, then the most header matches; then the
//! oldest route, `namespace/name`, rule order. [`GrpcRank`] carries the
//! service and method lengths ([`crate::table`] applies it). GRPCRoute
//! rules are not merged with HTTPRoute rules: a gRPC request tries the
//! GRPCRoutes first and falls back to HTTPRoutes; other requests never
//! match a GRPCRoute.

use crate::matching::Match;
use crate::schema;

/// The characters a gRPC match names, for precedence.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct GrpcRank {
    pub service: usize,
    pub method: usize,
}

/// Compiles one GRPCRoute match; `field` names it in errors.
pub fn compile_match(m: &schema::GrpcRouteMatch, field: &str) -> Result<(Match, GrpcRank), String> {
    let (path, rank) = match &m.method {
        None => (None, GrpcRank::default()),
        Some(method) => method_path(method, &format!("{field}.method"))?,
    };
    let http = schema::HttpRouteMatch { path, headers: m.headers.clone(), query_params: Vec::new(), method: None };
    Ok((Match::compile(&http, field)?, rank))
}

/// A method match as a path match.
fn method_path(m: &schema::GrpcMethodMatch, field: &str) -> Result<(Option<schema::PathMatch>, GrpcRank), String> {
    let service = m.service.as_deref().filter(|s| !s.is_empty());
    let method = m.method.as_deref().filter(|s| !s.is_empty());
    if service.is_none() && method.is_none() {
        return Err(format!("{field}: one of service and method is required"));
    }
    let rank = GrpcRank { service: service.map_or(0, str::len), method: method.map_or(0, str::len) };
    let path = |kind: &str, value: String| schema::PathMatch { kind: Some(kind.to_owned()), value: Some(value) };
    match m.kind.as_deref().unwrap_or("Exact") {
        "Exact" => {
            if let Some(s) = service
                && !valid_service(s)
            {
                return Err(format!("{field}.service {s:?} is not a gRPC service name (package.Service)"));
            }
            if let Some(name) = method
                && !valid_method(name)
            {
                return Err(format!("{field}.method {name:?} is not a gRPC method name"));
            }
            let p = match (service, method) {
                (Some(s), Some(name)) => path("Exact", format!("/{s}/{name}")),
                (Some(s), None) => path("PathPrefix", format!("/{s}")),
                (None, Some(name)) => path("RegularExpression", format!("/[^/]+/{}", regex::escape(name))),
                (None, None) => unreachable!("checked above"),
            };
            Ok((Some(p), rank))
        }
        "RegularExpression" => {
            for (key, pattern) in [("service", service), ("method", method)] {
                if let Some(p) = pattern {
                    regex::Regex::new(p)
                        .map_err(|e| format!("{field}.{key} {p:?} is not a regular expression: {e}"))?;
                }
            }
            let value = format!("/(?:{})/(?:{})", service.unwrap_or("[^/]+"), method.unwrap_or("[^/]+"));
            Ok((Some(path("RegularExpression", value)), rank))
        }
        other => Err(format!("{field}.type {other:?} is not supported (Exact or RegularExpression)")),
    }
}

/// `package.Service`: dot-separated identifiers (the API's pattern).
fn valid_service(s: &str) -> bool {
    let s = s.strip_prefix('.').unwrap_or(s);
    !s.is_empty() && s.split('.').all(valid_method)
}

/// An identifier: a letter or `_`, then letters, digits, `_`.
fn valid_method(s: &str) -> bool {
    let mut bytes = s.bytes();
    bytes.next().is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

#[cfg(test)]
mod tests {
    use http::{HeaderMap, Method};

    use super::*;
    use crate::matching::RequestView;

    fn compile(yaml: &str) -> Result<(Match, GrpcRank), String> {
        let m: schema::GrpcRouteMatch = serde_saphyr::from_str(yaml).unwrap();
        compile_match(&m, "m")
    }

    fn calls(m: &Match, path: &str) -> bool {
        let headers = HeaderMap::new();
        m.matches(&RequestView { method: &Method::POST, path, query: None, headers: &headers })
    }

    #[test]
    fn method_matches_become_path_matches() {
        let (exact, rank) = compile("method: {service: edgemesh.test.Echo, method: Unary}").unwrap();
        assert!(calls(&exact, "/edgemesh.test.Echo/Unary"));
        assert!(!calls(&exact, "/edgemesh.test.Echo/Bidi"));
        assert_eq!(rank, GrpcRank { service: 18, method: 5 });
        let (service, _) = compile("method: {service: edgemesh.test.Echo}").unwrap();
        assert!(calls(&service, "/edgemesh.test.Echo/Bidi"));
        assert!(!calls(&service, "/edgemesh.test.EchoX/Bidi"), "a whole service name, not a prefix of one");
        let (method, _) = compile("method: {method: Unary}").unwrap();
        assert!(calls(&method, "/a.B/Unary"));
        assert!(!calls(&method, "/a.B/UnaryX"));
        let (re, _) = compile("method: {type: RegularExpression, service: 'edgemesh\\..*', method: 'Un.*'}").unwrap();
        assert!(calls(&re, "/edgemesh.test.Echo/Unary"));
        assert!(!calls(&re, "/other.Echo/Unary"));
        let (any, rank) = compile("headers: [{name: x-tenant, value: blue}]").unwrap();
        assert!(!calls(&any, "/a.B/C"), "the header is required");
        assert_eq!(rank, GrpcRank::default());
    }

    #[test]
    fn invalid_method_matches_name_their_field() {
        for (yaml, want) in [
            ("method: {}", "m.method: one of service and method is required"),
            ("method: {service: 'a/b', method: X}", "m.method.service \"a/b\" is not a gRPC service name"),
            ("method: {service: a.B, method: '1x'}", "m.method.method \"1x\" is not a gRPC method name"),
            ("method: {type: RegularExpression, method: '('}", "m.method.method \"(\" is not a regular expression"),
            ("method: {type: Prefix, method: X}", "m.method.type \"Prefix\" is not supported"),
        ] {
            let err = compile(yaml).unwrap_err();
            assert!(err.starts_with(want), "{yaml}: {err}");
        }
    }
}

//! One HTTPRoute match, compiled: a path (`Exact`, `PathPrefix` element by
//! element, `RegularExpression` anchored at both ends), a method, header
//! and query parameter conditions, all of which must hold; and the Gateway
//! API's precedence between matches of different rules and routes.
//!
//! Precedence (highest first), as the Gateway API orders it: an `Exact`
//! path, then the longest `PathPrefix`, then a method, then the most
//! headers, then the most query parameters; further ties go to the oldest
//! route, then `namespace/name` alphabetically, then rule and match order
//! ([`crate::table`] applies those). `RegularExpression` paths are
//! implementation-specific in the API; here they rank between `Exact` and
//! `PathPrefix` (as Envoy Gateway ranks them), longer patterns first, so
//! that a catch-all `PathPrefix: /` never hides them.
//!
//! The request's path and query are matched as they arrive (no
//! percent-decoding); header names case-insensitively, values exactly.

use std::cmp::Ordering;

use http::{HeaderMap, HeaderName, Method};
use regex::Regex;

use crate::schema;

/// What a match looks at in a request.
#[derive(Clone, Copy, Debug)]
pub struct RequestView<'a> {
    pub method: &'a Method,
    pub path: &'a str,
    pub query: Option<&'a str>,
    pub headers: &'a HeaderMap,
}

#[derive(Clone, Debug)]
pub enum PathMatch {
    Exact(String),
    /// Without a trailing `/` (but `/` itself).
    Prefix(String),
    Regex(Regex),
}

#[derive(Clone, Debug)]
pub enum ValueMatch {
    Exact(String),
    Regex(Regex),
}

impl ValueMatch {
    fn compile(m: &schema::ValueMatch, field: &str) -> Result<ValueMatch, String> {
        match m.kind.as_deref().unwrap_or("Exact") {
            "Exact" => Ok(ValueMatch::Exact(m.value.clone())),
            "RegularExpression" => anchored(&m.value).map(ValueMatch::Regex).map_err(|e| format!("{field}.value: {e}")),
            other => Err(format!("{field}.type {other:?} is not supported (Exact or RegularExpression)")),
        }
    }

    fn matches(&self, value: &str) -> bool {
        match self {
            ValueMatch::Exact(v) => v == value,
            ValueMatch::Regex(r) => r.is_match(value),
        }
    }
}

/// A compiled HTTPRoute match.
#[derive(Clone, Debug)]
pub struct Match {
    pub path: PathMatch,
    pub method: Option<Method>,
    pub headers: Vec<(HeaderName, ValueMatch)>,
    pub query: Vec<(String, ValueMatch)>,
}

/// The catch-all a rule without matches has: `PathPrefix: /`.
pub fn catch_all() -> Match {
    Match { path: PathMatch::Prefix("/".to_owned()), method: None, headers: Vec::new(), query: Vec::new() }
}

impl Match {
    /// Compiles `m`; `field` names it in errors (`spec.rules[0].matches[1]`).
    pub fn compile(m: &schema::HttpRouteMatch, field: &str) -> Result<Match, String> {
        let path = match &m.path {
            None => PathMatch::Prefix("/".to_owned()),
            Some(p) => {
                let value = p.value.as_deref().unwrap_or("/");
                let kind = p.kind.as_deref().unwrap_or("PathPrefix");
                match kind {
                    "Exact" | "PathPrefix" => {
                        check_path(value).map_err(|why| format!("{field}.path.value {value:?}: {why}"))?;
                        if kind == "Exact" {
                            PathMatch::Exact(value.to_owned())
                        } else {
                            PathMatch::Prefix(normalize_prefix(value))
                        }
                    }
                    "RegularExpression" => {
                        PathMatch::Regex(anchored(value).map_err(|e| format!("{field}.path.value: {e}"))?)
                    }
                    other => {
                        return Err(format!(
                            "{field}.path.type {other:?} is not supported (Exact, PathPrefix or RegularExpression)"
                        ));
                    }
                }
            }
        };
        let method = match &m.method {
            None => None,
            Some(name) => Some(
                Method::from_bytes(name.as_bytes()).map_err(|_| format!("{field}.method {name:?} is not a method"))?,
            ),
        };
        let mut headers: Vec<(HeaderName, ValueMatch)> = Vec::new();
        for (i, h) in m.headers.iter().enumerate() {
            let at = format!("{field}.headers[{i}]");
            let name = HeaderName::from_bytes(h.name.as_bytes())
                .map_err(|_| format!("{at}.name {:?} is not a header name", h.name))?;
            // Only the first entry of a name counts, as the API says.
            if !headers.iter().any(|(n, _)| *n == name) {
                headers.push((name, ValueMatch::compile(h, &at)?));
            }
        }
        let mut query: Vec<(String, ValueMatch)> = Vec::new();
        for (i, q) in m.query_params.iter().enumerate() {
            let at = format!("{field}.queryParams[{i}]");
            if q.name.is_empty() {
                return Err(format!("{at}.name is required"));
            }
            if !query.iter().any(|(n, _)| *n == q.name) {
                query.push((q.name.clone(), ValueMatch::compile(q, &at)?));
            }
        }
        Ok(Match { path, method, headers, query })
    }

    /// Whether `req` satisfies every condition.
    pub fn matches(&self, req: &RequestView<'_>) -> bool {
        let path_ok = match &self.path {
            PathMatch::Exact(p) => req.path == p,
            PathMatch::Prefix(p) => prefix_matches(p, req.path),
            PathMatch::Regex(r) => r.is_match(req.path),
        };
        path_ok
            && self.method.as_ref().is_none_or(|m| m == req.method)
            && self
                .headers
                .iter()
                .all(|(name, want)| req.headers.get_all(name).iter().any(|v| v.to_str().is_ok_and(|v| want.matches(v))))
            && self.query.iter().all(|(name, want)| query_param(req.query, name).is_some_and(|v| want.matches(v)))
    }

    /// The Gateway API's precedence of `self` over `other`, on the match
    /// alone (`Greater`: `self` wins).
    pub fn precedence(&self, other: &Match) -> Ordering {
        let path_rank = |m: &Match| match &m.path {
            PathMatch::Exact(p) => (3, p.len()),
            PathMatch::Regex(r) => (2, r.as_str().len()),
            PathMatch::Prefix(p) => (1, p.len()),
        };
        path_rank(self)
            .cmp(&path_rank(other))
            .then(self.method.is_some().cmp(&other.method.is_some()))
            .then(self.headers.len().cmp(&other.headers.len()))
            .then(self.query.len().cmp(&other.query.len()))
    }
}

/// Whether `path` is under `prefix`, element by element: `/abc` covers
/// `/abc`, `/abc/` and `/abc/def`, not `/abcd`.
pub fn prefix_matches(prefix: &str, path: &str) -> bool {
    prefix == "/" || (path.starts_with(prefix) && matches!(path.as_bytes().get(prefix.len()), None | Some(b'/')))
}

fn normalize_prefix(value: &str) -> String {
    let trimmed = value.trim_end_matches('/');
    if trimmed.is_empty() { "/".to_owned() } else { trimmed.to_owned() }
}

/// The rules the API sets for `Exact` and `PathPrefix` values.
fn check_path(value: &str) -> Result<(), &'static str> {
    if !value.starts_with('/') {
        return Err("must start with '/'");
    }
    if value.contains("//") || value.contains("/./") || value.contains("/../") || value.ends_with("/..") {
        return Err("must not contain '//', '/./' or '/../'");
    }
    if value.contains('?') || value.contains('#') || value.to_ascii_lowercase().contains("%2f") {
        return Err("must not contain '?', '#' or an encoded '/'");
    }
    Ok(())
}

fn anchored(pattern: &str) -> Result<Regex, String> {
    Regex::new(&format!("^(?:{pattern})$")).map_err(|e| format!("{pattern:?} is not a regular expression: {e}"))
}

/// The first value of query parameter `name` (names case-sensitive).
pub fn query_param<'a>(query: Option<&'a str>, name: &str) -> Option<&'a str> {
    query?.split('&').find_map(|pair| {
        let (n, v) = pair.split_once('=').unwrap_or((pair, ""));
        (n == name).then_some(v)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn compile(yaml: &str) -> Match {
        let m: schema::HttpRouteMatch = serde_saphyr::from_str(yaml).unwrap();
        Match::compile(&m, "m").unwrap()
    }

    fn view<'a>(method: &'a Method, path: &'a str, query: Option<&'a str>, headers: &'a HeaderMap) -> RequestView<'a> {
        RequestView { method, path, query, headers }
    }

    #[test]
    fn prefixes_match_whole_path_elements() {
        let m = compile("path: {type: PathPrefix, value: /abc/}");
        let h = HeaderMap::new();
        for (path, want) in [("/abc", true), ("/abc/", true), ("/abc/def", true), ("/abcd", false), ("/ab", false)] {
            assert_eq!(m.matches(&view(&Method::GET, path, None, &h)), want, "{path}");
        }
        assert!(compile("{}").matches(&view(&Method::GET, "/anything", None, &h)), "no path: PathPrefix /");
    }

    #[test]
    fn exact_regex_method_headers_and_query_all_must_hold() {
        let m = compile(
            "path: {type: RegularExpression, value: '/v[0-9]+/items'}\nmethod: POST\n\
             headers: [{name: X-Tenant, value: blue}]\nqueryParams: [{name: debug, value: '1'}]",
        );
        let mut h = HeaderMap::new();
        h.insert("x-tenant", "blue".parse().unwrap());
        assert!(m.matches(&view(&Method::POST, "/v2/items", Some("a=b&debug=1"), &h)));
        assert!(!m.matches(&view(&Method::GET, "/v2/items", Some("debug=1"), &h)), "method");
        assert!(!m.matches(&view(&Method::POST, "/v2/items/x", Some("debug=1"), &h)), "anchored at the end");
        assert!(!m.matches(&view(&Method::POST, "/v2/items", Some("debug=2"), &h)), "query value");
        assert!(!m.matches(&view(&Method::POST, "/v2/items", Some("debug=1"), &HeaderMap::new())), "header");
        let exact = compile("path: {type: Exact, value: /login}");
        assert!(exact.matches(&view(&Method::GET, "/login", None, &h)));
        assert!(!exact.matches(&view(&Method::GET, "/login/", None, &h)));
    }

    #[test]
    fn precedence_follows_the_gateway_api_order() {
        let order = [
            "path: {type: Exact, value: /a}",
            "path: {type: RegularExpression, value: '/a.*'}",
            "path: {type: PathPrefix, value: /a/b}",
            "path: {type: PathPrefix, value: /a}\nmethod: GET",
            "path: {type: PathPrefix, value: /a}\nheaders: [{name: x, value: '1'}, {name: y, value: '2'}]",
            "path: {type: PathPrefix, value: /a}\nheaders: [{name: x, value: '1'}]",
            "path: {type: PathPrefix, value: /a}\nqueryParams: [{name: q, value: '1'}]",
            "path: {type: PathPrefix, value: /a}",
        ];
        let compiled: Vec<Match> = order.iter().map(|y| compile(y)).collect();
        for (i, a) in compiled.iter().enumerate() {
            for (j, b) in compiled.iter().enumerate() {
                assert_eq!(a.precedence(b), j.cmp(&i), "{} vs {}", order[i], order[j]);
            }
        }
    }

    #[test]
    fn invalid_matches_name_their_field() {
        for (yaml, want) in [
            ("path: {type: Exact, value: nope}", "m.path.value \"nope\": must start with '/'"),
            ("path: {type: Glob, value: /x}", "m.path.type \"Glob\" is not supported"),
            ("path: {type: RegularExpression, value: '('}", "m.path.value: \"(\" is not a regular expression"),
            ("headers: [{name: 'bad name', value: x}]", "m.headers[0].name \"bad name\" is not a header name"),
            ("method: 'G T'", "m.method \"G T\" is not a method"),
        ] {
            let m: schema::HttpRouteMatch = serde_saphyr::from_str(yaml).unwrap();
            let err = Match::compile(&m, "m").unwrap_err();
            assert!(err.starts_with(want), "{yaml}: {err}");
        }
    }
}

//! What a matched rule does besides choosing a backend: the Gateway API's
//! `RequestHeaderModifier`, `ResponseHeaderModifier`, `RequestRedirect` and
//! `URLRewrite` filters, compiled once and applied per request.

use http::StatusCode;
use http::header::{HeaderMap, HeaderName, HeaderValue};

use crate::schema;

/// Header edits: `set` replaces, `add` appends, `remove` deletes (in that order).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct HeaderEdits {
    pub set: Vec<(HeaderName, HeaderValue)>,
    pub add: Vec<(HeaderName, HeaderValue)>,
    pub remove: Vec<HeaderName>,
}

impl HeaderEdits {
    fn compile(m: &schema::HeaderModifier, field: &str) -> Result<HeaderEdits, String> {
        let pair = |h: &schema::HeaderValue, at: String| -> Result<(HeaderName, HeaderValue), String> {
            let name = HeaderName::from_bytes(h.name.as_bytes())
                .map_err(|_| format!("{at}.name {:?} is not a header name", h.name))?;
            let value = HeaderValue::from_str(&h.value)
                .map_err(|_| format!("{at}.value {:?} is not a header value", h.value))?;
            Ok((name, value))
        };
        let set =
            m.set.iter().enumerate().map(|(i, h)| pair(h, format!("{field}.set[{i}]"))).collect::<Result<_, _>>()?;
        let add =
            m.add.iter().enumerate().map(|(i, h)| pair(h, format!("{field}.add[{i}]"))).collect::<Result<_, _>>()?;
        let remove = m
            .remove
            .iter()
            .enumerate()
            .map(|(i, n)| {
                HeaderName::from_bytes(n.as_bytes())
                    .map_err(|_| format!("{field}.remove[{i}] {n:?} is not a header name"))
            })
            .collect::<Result<_, _>>()?;
        Ok(HeaderEdits { set, add, remove })
    }

    pub fn apply(&self, headers: &mut HeaderMap) {
        for (name, value) in &self.set {
            headers.insert(name.clone(), value.clone());
        }
        for (name, value) in &self.add {
            headers.append(name.clone(), value.clone());
        }
        for name in &self.remove {
            headers.remove(name);
        }
    }
}

/// A path modifier of a redirect or rewrite.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PathRewrite {
    Full(String),
    /// Replaces the matched `PathPrefix` (only valid on prefix matches).
    Prefix(String),
}

impl PathRewrite {
    fn compile(p: &schema::PathModifier, field: &str) -> Result<PathRewrite, String> {
        let value = |v: &Option<String>, key: &str| -> Result<String, String> {
            let v = v.clone().ok_or_else(|| format!("{field}.{key} is required for type {:?}", p.kind))?;
            if v.starts_with('/') { Ok(v) } else { Err(format!("{field}.{key} {v:?} must start with '/'")) }
        };
        match p.kind.as_str() {
            "ReplaceFullPath" => Ok(PathRewrite::Full(value(&p.replace_full_path, "replaceFullPath")?)),
            "ReplacePrefixMatch" => Ok(PathRewrite::Prefix(value(&p.replace_prefix_match, "replacePrefixMatch")?)),
            other => Err(format!("{field}.type {other:?} is not supported (ReplaceFullPath or ReplacePrefixMatch)")),
        }
    }

    /// The new path for `path`, which matched `matched_prefix` (normalized,
    /// `/` for the root) when the match was a prefix.
    pub fn apply(&self, path: &str, matched_prefix: Option<&str>) -> String {
        match self {
            PathRewrite::Full(p) => p.clone(),
            PathRewrite::Prefix(replacement) => {
                let prefix = matched_prefix.filter(|p| *p != "/").unwrap_or("");
                let rest = path.strip_prefix(prefix).unwrap_or(path);
                let joined = format!("{}{rest}", replacement.trim_end_matches('/'));
                if joined.is_empty() {
                    "/".to_owned()
                } else if joined.starts_with('/') {
                    joined
                } else {
                    format!("/{joined}")
                }
            }
        }
    }
}

/// `RequestRedirect`: the rule answers with a redirect itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Redirect {
    pub scheme: Option<String>,
    pub hostname: Option<String>,
    pub path: Option<PathRewrite>,
    pub port: Option<u16>,
    pub status: StatusCode,
}

/// What a redirect needs from the request it answers.
#[derive(Clone, Copy, Debug)]
pub struct Origin<'a> {
    pub scheme: &'a str,
    /// Without a port.
    pub host: &'a str,
    pub listener_port: u16,
    pub path: &'a str,
    pub query: Option<&'a str>,
    pub matched_prefix: Option<&'a str>,
}

fn well_known_port(scheme: &str) -> Option<u16> {
    match scheme {
        "http" => Some(80),
        "https" => Some(443),
        _ => None,
    }
}

impl Redirect {
    /// The `Location` for a request from `origin`. The port follows the
    /// API: the filter's, else the redirect scheme's well-known one, else
    /// the listener's; it is left out where it is the scheme's well-known port.
    pub fn location(&self, origin: Origin<'_>) -> String {
        let scheme = self.scheme.as_deref().unwrap_or(origin.scheme);
        let host = self.hostname.as_deref().unwrap_or(origin.host);
        let port =
            self.port.or_else(|| self.scheme.as_deref().and_then(well_known_port)).unwrap_or(origin.listener_port);
        let path =
            self.path.as_ref().map_or_else(|| origin.path.to_owned(), |p| p.apply(origin.path, origin.matched_prefix));
        let host = if host.contains(':') { format!("[{host}]") } else { host.to_owned() };
        let authority = if well_known_port(scheme) == Some(port) { host } else { format!("{host}:{port}") };
        match origin.query {
            Some(q) => format!("{scheme}://{authority}{path}?{q}"),
            None => format!("{scheme}://{authority}{path}"),
        }
    }
}

/// `URLRewrite`: the request goes on with a new host and/or path.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Rewrite {
    pub hostname: Option<String>,
    pub path: Option<PathRewrite>,
}

/// Every filter of one rule.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Filters {
    pub request_headers: Option<HeaderEdits>,
    pub response_headers: Option<HeaderEdits>,
    pub redirect: Option<Redirect>,
    pub rewrite: Option<Rewrite>,
}

impl Filters {
    /// Compiles a rule's `filters` (`field` names the rule). Each type may
    /// appear once; a redirect and a rewrite exclude each other.
    pub fn compile(filters: &[schema::HttpRouteFilter], field: &str) -> Result<Filters, String> {
        let mut out = Filters::default();
        for (i, f) in filters.iter().enumerate() {
            let at = format!("{field}.filters[{i}]");
            let missing = |key: &str| format!("{at}.{key} is required for type {:?}", f.kind);
            let twice = || format!("{at}: a second {} filter (each type may appear once per rule)", f.kind);
            match f.kind.as_str() {
                "RequestHeaderModifier" => {
                    let m = f.request_header_modifier.as_ref().ok_or_else(|| missing("requestHeaderModifier"))?;
                    let edits = HeaderEdits::compile(m, &format!("{at}.requestHeaderModifier"))?;
                    if out.request_headers.replace(edits).is_some() {
                        return Err(twice());
                    }
                }
                "ResponseHeaderModifier" => {
                    let m = f.response_header_modifier.as_ref().ok_or_else(|| missing("responseHeaderModifier"))?;
                    let edits = HeaderEdits::compile(m, &format!("{at}.responseHeaderModifier"))?;
                    if out.response_headers.replace(edits).is_some() {
                        return Err(twice());
                    }
                }
                "RequestRedirect" => {
                    let r = f.request_redirect.as_ref().ok_or_else(|| missing("requestRedirect"))?;
                    let redirect = compile_redirect(r, &format!("{at}.requestRedirect"))?;
                    if out.redirect.replace(redirect).is_some() {
                        return Err(twice());
                    }
                }
                "URLRewrite" => {
                    let r = f.url_rewrite.as_ref().ok_or_else(|| missing("urlRewrite"))?;
                    let path = r
                        .path
                        .as_ref()
                        .map(|p| PathRewrite::compile(p, &format!("{at}.urlRewrite.path")))
                        .transpose()?;
                    let hostname =
                        r.hostname.as_ref().map(|h| check_host(h, &format!("{at}.urlRewrite.hostname"))).transpose()?;
                    if out.rewrite.replace(Rewrite { hostname, path }).is_some() {
                        return Err(twice());
                    }
                }
                other => {
                    return Err(format!(
                        "{at}.type {other:?} is not supported (RequestHeaderModifier, ResponseHeaderModifier, RequestRedirect, URLRewrite)"
                    ));
                }
            }
        }
        if out.redirect.is_some() && out.rewrite.is_some() {
            return Err(format!("{field}: RequestRedirect and URLRewrite cannot be used together"));
        }
        Ok(out)
    }

    /// The path modifier of the redirect or rewrite, if any.
    pub fn path_rewrite(&self) -> Option<&PathRewrite> {
        self.redirect.as_ref().and_then(|r| r.path.as_ref()).or_else(|| self.rewrite.as_ref()?.path.as_ref())
    }
}

fn compile_redirect(r: &schema::RequestRedirect, field: &str) -> Result<Redirect, String> {
    let scheme = match r.scheme.as_deref() {
        None => None,
        Some(s @ ("http" | "https")) => Some(s.to_owned()),
        Some(other) => return Err(format!("{field}.scheme {other:?} is not supported (http or https)")),
    };
    let port = r
        .port
        .map(|p| {
            u16::try_from(p)
                .ok()
                .filter(|p| *p > 0)
                .ok_or_else(|| format!("{field}.port {p} is out of range (1-65535)"))
        })
        .transpose()?;
    let status = match r.status_code.unwrap_or(302) {
        code @ (301 | 302 | 303 | 307 | 308) => {
            StatusCode::from_u16(u16::try_from(code).unwrap_or(302)).unwrap_or(StatusCode::FOUND)
        }
        other => return Err(format!("{field}.statusCode {other} is not supported (301, 302, 303, 307 or 308)")),
    };
    let path = r.path.as_ref().map(|p| PathRewrite::compile(p, &format!("{field}.path"))).transpose()?;
    let hostname = r.hostname.as_ref().map(|h| check_host(h, &format!("{field}.hostname"))).transpose()?;
    Ok(Redirect { scheme, hostname, path, port, status })
}

fn check_host(host: &str, field: &str) -> Result<String, String> {
    match crate::hostname::Hostname::parse(host) {
        Ok(crate::hostname::Hostname::Exact(h)) => Ok(h),
        Ok(_) => Err(format!("{field} {host:?} must be a precise hostname, not a wildcard")),
        Err(why) => Err(format!("{field}: {why}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filters(yaml: &str) -> Result<Filters, String> {
        let f: Vec<schema::HttpRouteFilter> = serde_saphyr::from_str(yaml).unwrap();
        Filters::compile(&f, "rule")
    }

    #[test]
    fn prefix_replacement_follows_the_conformance_cases() {
        let one = PathRewrite::Prefix("/one".into());
        assert_eq!(one.apply("/prefix/one/two", Some("/prefix/one")), "/one/two");
        assert_eq!(one.apply("/prefix/one", Some("/prefix/one")), "/one");
        assert_eq!(one.apply("/prefix/one/", Some("/prefix/one")), "/one/");
        let root = PathRewrite::Prefix("/".into());
        assert_eq!(root.apply("/strip-prefix/three", Some("/strip-prefix")), "/three");
        assert_eq!(root.apply("/strip-prefix", Some("/strip-prefix")), "/");
        assert_eq!(PathRewrite::Prefix("/x".into()).apply("/a", Some("/")), "/x/a");
        assert_eq!(PathRewrite::Full("/full".into()).apply("/a/b", Some("/a")), "/full");
    }

    #[test]
    fn redirects_derive_the_port_as_the_api_says() {
        let origin = Origin {
            scheme: "http",
            host: "shop.example.com",
            listener_port: 8080,
            path: "/a",
            query: Some("x=1"),
            matched_prefix: Some("/a"),
        };
        let to_https = filters("[{type: RequestRedirect, requestRedirect: {scheme: https, statusCode: 301}}]").unwrap();
        let r = to_https.redirect.unwrap();
        assert_eq!(r.status, StatusCode::MOVED_PERMANENTLY);
        assert_eq!(r.location(origin), "https://shop.example.com/a?x=1", "the scheme's port, left out");
        let same_scheme = filters("[{type: RequestRedirect, requestRedirect: {hostname: other.example.com}}]").unwrap();
        let r = same_scheme.redirect.unwrap();
        assert_eq!(r.status, StatusCode::FOUND);
        assert_eq!(r.location(origin), "http://other.example.com:8080/a?x=1", "the listener's port");
        let with_port = filters(
            "[{type: RequestRedirect, requestRedirect: {port: 80, path: {type: ReplacePrefixMatch, replacePrefixMatch: /b}}}]",
        )
        .unwrap();
        assert_eq!(with_port.redirect.unwrap().location(origin), "http://shop.example.com/b?x=1");
    }

    #[test]
    fn header_edits_set_add_and_remove() {
        let f = filters(
            "[{type: RequestHeaderModifier, requestHeaderModifier: {set: [{name: X-Env, value: prod}], \
             add: [{name: X-Trace, value: gw}], remove: [X-Debug]}}]",
        )
        .unwrap();
        let mut h = HeaderMap::new();
        h.insert("x-env", "dev".parse().unwrap());
        h.insert("x-trace", "client".parse().unwrap());
        h.insert("x-debug", "1".parse().unwrap());
        f.request_headers.unwrap().apply(&mut h);
        assert_eq!(h.get_all("x-env").iter().collect::<Vec<_>>(), ["prod"]);
        assert_eq!(h.get_all("x-trace").iter().collect::<Vec<_>>(), ["client", "gw"]);
        assert!(h.get("x-debug").is_none());
    }

    #[test]
    fn bad_filters_say_which_and_why() {
        for (yaml, want) in [
            ("[{type: RequestMirror}]", "rule.filters[0].type \"RequestMirror\" is not supported"),
            ("[{type: RequestRedirect}]", "rule.filters[0].requestRedirect is required"),
            (
                "[{type: RequestRedirect, requestRedirect: {statusCode: 200}}]",
                "rule.filters[0].requestRedirect.statusCode 200",
            ),
            (
                "[{type: RequestRedirect, requestRedirect: {}}, {type: URLRewrite, urlRewrite: {hostname: a.b}}]",
                "rule: RequestRedirect and URLRewrite cannot be used together",
            ),
            (
                "[{type: URLRewrite, urlRewrite: {path: {type: ReplaceFullPath}}}]",
                "rule.filters[0].urlRewrite.path.replaceFullPath is required",
            ),
        ] {
            let err = filters(yaml).unwrap_err();
            assert!(err.starts_with(want), "{yaml}: {err}");
        }
    }
}

//! Which service ports the agent proxies per HTTP request rather than per
//! connection (issue #16), and the per-service HTTP settings read from
//! annotations.
//!
//! A port is HTTP when its `appProtocol` says so (`http`, or
//! `kubernetes.io/h2c` / `http2` for HTTP/2 to the endpoints), or, without
//! an `appProtocol`, when its name does (`http`, `http-*`: HTTP/1.1;
//! `grpc`, `grpc-*`: HTTP/2, which gRPC needs). The annotation
//! `edgemesh.io/protocol: tcp` keeps every port of a service on the L4
//! path.

use std::time::Duration;

use serde::Serialize;

/// The annotation that opts a service out of HTTP-aware proxying
/// (`edgemesh.io/protocol: tcp`).
pub const PROTOCOL_ANNOTATION: &str = "edgemesh.io/protocol";
/// Per-service timeout of one try of an HTTP request (e.g. `2s`).
pub const HTTP_PER_TRY_TIMEOUT_ANNOTATION: &str = "edgemesh.io/http-per-try-timeout";
/// Per-service timeout of a whole HTTP request, retries included (e.g. `15s`).
pub const HTTP_TIMEOUT_ANNOTATION: &str = "edgemesh.io/http-timeout";

/// What a service port speaks, as far as the proxy cares.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AppProtocol {
    /// Opaque bytes: proxied per connection (L4).
    #[default]
    Tcp,
    /// HTTP, HTTP/1.1 to the endpoints.
    Http1,
    /// HTTP, HTTP/2 cleartext (prior knowledge) to the endpoints.
    Http2,
}

impl AppProtocol {
    /// Classifies a TCP service port from its `appProtocol` (if set), its
    /// name, and whether the service opted out (`edgemesh.io/protocol:
    /// tcp`). An `appProtocol` that names something else (`tcp`, `redis`,
    /// `https`) keeps the port on L4 even when its name says `http`.
    pub fn classify(app_protocol: Option<&str>, port_name: &str, opted_out: bool) -> AppProtocol {
        if opted_out {
            return AppProtocol::Tcp;
        }
        match app_protocol.map(str::trim) {
            Some(p) if p.eq_ignore_ascii_case("http") => AppProtocol::Http1,
            Some(p) if p.eq_ignore_ascii_case("kubernetes.io/h2c") || p.eq_ignore_ascii_case("http2") => {
                AppProtocol::Http2
            }
            Some(p) if !p.is_empty() => AppProtocol::Tcp,
            _ => {
                let name = port_name.to_ascii_lowercase();
                if name == "http" || name.starts_with("http-") {
                    AppProtocol::Http1
                } else if name == "grpc" || name.starts_with("grpc-") {
                    AppProtocol::Http2
                } else {
                    AppProtocol::Tcp
                }
            }
        }
    }

    /// Whether the port is proxied per HTTP request.
    pub fn is_http(self) -> bool {
        self != AppProtocol::Tcp
    }
}

/// A service's HTTP settings (annotations); `None`: the agent's `http`
/// config decides.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HttpPolicy {
    /// `edgemesh.io/http-per-try-timeout`.
    #[serde(skip_serializing_if = "Option::is_none", with = "opt_millis")]
    pub per_try_timeout: Option<Duration>,
    /// `edgemesh.io/http-timeout`.
    #[serde(skip_serializing_if = "Option::is_none", with = "opt_millis")]
    pub timeout: Option<Duration>,
}

mod opt_millis {
    use std::time::Duration;

    pub fn serialize<S: serde::Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_u64(u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
            None => s.serialize_none(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::AppProtocol::{self, Http1, Http2, Tcp};

    #[test]
    fn ports_are_classified_by_app_protocol_then_name() {
        let cases: &[(Option<&str>, &str, bool, AppProtocol)] = &[
            (Some("http"), "web", false, Http1),
            (Some("kubernetes.io/h2c"), "", false, Http2),
            (Some("http2"), "x", false, Http2),
            (Some("HTTP"), "x", false, Http1),
            (None, "http", false, Http1),
            (None, "http-metrics", false, Http1),
            (None, "grpc", false, Http2),
            (None, "grpc-api", false, Http2),
            (None, "https", false, Tcp),
            (None, "httpx", false, Tcp),
            (None, "", false, Tcp),
            (Some("tcp"), "http", false, Tcp),
            (Some("redis"), "grpc", false, Tcp),
            (Some("http"), "http", true, Tcp),
            (None, "grpc", true, Tcp),
        ];
        for &(app, name, out, want) in cases {
            assert_eq!(
                AppProtocol::classify(app, name, out),
                want,
                "appProtocol {app:?}, name {name:?}, opted out {out}"
            );
        }
    }
}

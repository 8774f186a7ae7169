//! Headers a proxy must change (RFC 9110 §7.6): hop-by-hop headers are
//! removed from requests and responses, the forwarding headers are
//! extended with the client (`X-Forwarded-For`, `X-Forwarded-Proto`,
//! RFC 7239 `Forwarded`). Pure functions on header maps.

use std::net::IpAddr;

use hyper::header::{self, Entry, HeaderMap, HeaderName, HeaderValue};

static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
static HTTP2_SETTINGS: HeaderName = HeaderName::from_static("http2-settings");

/// The headers that are hop-by-hop whether or not `Connection` lists them
/// (`Connection` itself included), each with its bit in a set of them.
/// Names are compared, not looked up: a request or response has a handful
/// of headers, and most have none of these, so one pass over them is
/// cheaper than a lookup per name.
fn always_hop_by_hop(name: &HeaderName) -> u8 {
    if name == header::CONNECTION {
        CONNECTION
    } else if name == header::TRANSFER_ENCODING {
        1 << 1
    } else if name == header::UPGRADE {
        1 << 2
    } else if name == header::TE {
        TE
    } else if *name == KEEP_ALIVE {
        1 << 4
    } else if *name == PROXY_CONNECTION {
        1 << 5
    } else if *name == HTTP2_SETTINGS {
        1 << 6
    } else {
        0
    }
}

const CONNECTION: u8 = 1;
const TE: u8 = 1 << 3;

/// The names of [`always_hop_by_hop`]'s bits, in bit order.
fn hop_by_hop_names() -> [&'static HeaderName; 7] {
    [
        &header::CONNECTION,
        &header::TRANSFER_ENCODING,
        &header::UPGRADE,
        &header::TE,
        &KEEP_ALIVE,
        &PROXY_CONNECTION,
        &HTTP2_SETTINGS,
    ]
}

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");

/// The protocol an HTTP/1.1 request asks to switch to, when it is an
/// upgrade the front passes through (`Connection: upgrade` and an
/// `Upgrade` header; WebSocket and the like). `Upgrade: h2c` is not one:
/// it is answered over HTTP/1.1 (RFC 9113 §3.1 lets a server ignore it).
pub fn upgrade(headers: &HeaderMap) -> Option<HeaderValue> {
    if !connection_lists(headers, "upgrade") {
        return None;
    }
    let protocol = headers.get(header::UPGRADE)?;
    let h2c = protocol.to_str().is_ok_and(|p| p.split(',').any(|p| p.trim().eq_ignore_ascii_case("h2c")));
    (!h2c).then(|| protocol.clone())
}

/// Whether the client speaks gRPC (`content-type: application/grpc*`).
pub fn is_grpc(headers: &HeaderMap) -> bool {
    headers.get(header::CONTENT_TYPE).is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

/// Removes hop-by-hop headers: `Connection` and every header it lists,
/// `Keep-Alive`, `Proxy-Connection`, `Transfer-Encoding` (hyper frames the
/// body for the next hop), `Upgrade` and `HTTP2-Settings`, `TE` except its
/// `trailers` (gRPC needs `te: trailers`). With `upgrade`, the pass-through
/// upgrade keeps `Upgrade` and `Connection: upgrade`.
pub fn strip_hop_by_hop(headers: &mut HeaderMap, upgrade: Option<&HeaderValue>) {
    let present = headers.keys().fold(0, |set, name| set | always_hop_by_hop(name));
    if present != 0 {
        remove_hop_by_hop(headers, present);
    }
    if let Some(protocol) = upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, protocol.clone());
    }
}

/// [`strip_hop_by_hop`]'s removals, for a map that has the hop-by-hop
/// headers of the set `present`. The common case (`Connection:
/// keep-alive` or `close`) allocates nothing: tokens that name no header
/// to remove besides the ones removed anyway are not parsed as names.
fn remove_hop_by_hop(headers: &mut HeaderMap, present: u8) {
    if present & CONNECTION != 0 {
        let listed: Vec<HeaderName> = tokens(headers, &header::CONNECTION)
            .filter(|token| !token.eq_ignore_ascii_case("close") && !token.eq_ignore_ascii_case("keep-alive"))
            .filter_map(|token| HeaderName::from_bytes(token.as_bytes()).ok())
            .filter(|name| always_hop_by_hop(name) == 0)
            .collect();
        for name in listed {
            headers.remove(name);
        }
    }
    let trailers = present & TE != 0
        && tokens(headers, &header::TE)
            .any(|t| t.split(';').next().is_some_and(|t| t.trim().eq_ignore_ascii_case("trailers")));
    for (bit, name) in hop_by_hop_names().into_iter().enumerate() {
        if present & (1 << bit) != 0 {
            headers.remove(name);
        }
    }
    if trailers {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
}

/// The comma-separated tokens of every `name` header, trimmed.
fn tokens<'a>(headers: &'a HeaderMap, name: &HeaderName) -> impl Iterator<Item = &'a str> {
    headers.get_all(name).iter().filter_map(|v| v.to_str().ok()).flat_map(|v| v.split(',')).map(str::trim)
}

/// Whether `Connection` lists `token`.
fn connection_lists(headers: &HeaderMap, token: &str) -> bool {
    tokens(headers, &header::CONNECTION).any(|t| t.eq_ignore_ascii_case(token))
}

/// A client's forwarding header values, made once per connection.
#[derive(Clone, Debug)]
pub struct Forwarding {
    /// `X-Forwarded-For`'s element: the address.
    xff: HeaderValue,
    /// `Forwarded`'s element: `for=<node>;proto=http` (or `https`).
    forwarded: HeaderValue,
    /// `X-Forwarded-Proto`: `http`, or `https` on a terminated TLS session.
    proto: HeaderValue,
}

impl Forwarding {
    /// A client connected in cleartext.
    pub fn new(client: IpAddr) -> Self {
        Self::with_tls(client, false)
    }

    /// A client connected over TLS (`https`) or not.
    pub fn with_tls(client: IpAddr, tls: bool) -> Self {
        let proto = if tls { "https" } else { "http" };
        let client = client.to_canonical();
        let node = match client {
            IpAddr::V4(ip) => ip.to_string(),
            // RFC 7239 §6: an IPv6 node is bracketed, and then quoted.
            IpAddr::V6(ip) => format!("\"[{ip}]\""),
        };
        let value = |text: String| HeaderValue::try_from(text).expect("an address is a valid header value");
        Self {
            xff: value(client.to_string()),
            forwarded: value(format!("for={node};proto={proto}")),
            proto: HeaderValue::from_static(proto),
        }
    }
}

/// Appends the client to `X-Forwarded-For` and `Forwarded` (joining earlier
/// proxies' values into one line each) and sets `X-Forwarded-Proto` (`http`
/// or `https`).
pub fn add_forwarding(headers: &mut HeaderMap, client: &Forwarding) {
    // Room for the three at once: the map hyper parsed has none to spare.
    headers.reserve(3);
    append(headers, &X_FORWARDED_FOR, &client.xff);
    append(headers, &header::FORWARDED, &client.forwarded);
    headers.insert(X_FORWARDED_PROTO.clone(), client.proto.clone());
}

/// Sets `name` to its present values and `value`, comma-separated (one
/// lookup of `name`).
fn append(headers: &mut HeaderMap, name: &HeaderName, value: &HeaderValue) {
    let mut earlier = match headers.entry(name) {
        Entry::Vacant(vacant) => {
            vacant.insert(value.clone());
            return;
        }
        Entry::Occupied(earlier) => earlier,
    };
    let mut joined: Vec<u8> = Vec::new();
    for value in earlier.iter() {
        joined.extend_from_slice(value.as_bytes());
        joined.extend_from_slice(b", ");
    }
    joined.extend_from_slice(value.as_bytes());
    // Joined valid values are valid.
    if let Ok(joined) = HeaderValue::from_bytes(&joined) {
        earlier.insert(joined);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (k, v) in pairs {
            m.append(HeaderName::from_bytes(k.as_bytes()).unwrap(), HeaderValue::from_str(v).unwrap());
        }
        m
    }

    #[test]
    fn hop_by_hop_headers_go_and_end_to_end_ones_stay() {
        let mut h = map(&[
            ("connection", "keep-alive, X-Hop"),
            ("x-hop", "1"),
            ("keep-alive", "timeout=5"),
            ("proxy-connection", "keep-alive"),
            ("transfer-encoding", "chunked"),
            ("te", "gzip, trailers"),
            ("upgrade", "websocket"),
            ("x-end", "2"),
            ("content-type", "text/plain"),
        ]);
        strip_hop_by_hop(&mut h, None);
        let mut names: Vec<_> = h.keys().map(|k| k.as_str()).collect();
        names.sort();
        assert_eq!(names, ["content-type", "te", "x-end"]);
        assert_eq!(h["te"], "trailers", "gRPC's te: trailers is kept");
    }

    #[test]
    fn te_without_trailers_goes() {
        let mut h = map(&[("te", "gzip")]);
        strip_hop_by_hop(&mut h, None);
        assert!(h.is_empty());
    }

    #[test]
    fn websocket_is_passed_through_and_h2c_is_not() {
        let ws = map(&[("connection", "keep-alive, Upgrade"), ("upgrade", "websocket"), ("sec-websocket-key", "k")]);
        let protocol = upgrade(&ws).expect("an upgrade");
        let mut h = ws.clone();
        strip_hop_by_hop(&mut h, Some(&protocol));
        assert_eq!(h["connection"], "upgrade");
        assert_eq!(h["upgrade"], "websocket");
        assert_eq!(h["sec-websocket-key"], "k");

        let h2c = map(&[("connection", "Upgrade, HTTP2-Settings"), ("upgrade", "h2c"), ("http2-settings", "AAMA")]);
        assert_eq!(upgrade(&h2c), None);
        let mut h = h2c.clone();
        strip_hop_by_hop(&mut h, None);
        assert!(h.is_empty(), "{h:?}");

        assert_eq!(upgrade(&map(&[("upgrade", "websocket")])), None, "Upgrade alone is no upgrade");
    }

    #[test]
    fn forwarding_headers_append_the_client() {
        let mut h = map(&[("x-forwarded-for", "10.0.0.1"), ("forwarded", "for=10.0.0.1")]);
        add_forwarding(&mut h, &Forwarding::new("192.0.2.7".parse().unwrap()));
        assert_eq!(h["x-forwarded-for"], "10.0.0.1, 192.0.2.7");
        assert_eq!(h["forwarded"], "for=10.0.0.1, for=192.0.2.7;proto=http");
        assert_eq!(h["x-forwarded-proto"], "http");

        let mut h = HeaderMap::new();
        add_forwarding(&mut h, &Forwarding::new("2001:db8::7".parse().unwrap()));
        assert_eq!(h["x-forwarded-for"], "2001:db8::7");
        assert_eq!(h["forwarded"], "for=\"[2001:db8::7]\";proto=http");

        let mut h = HeaderMap::new();
        add_forwarding(&mut h, &Forwarding::new("::ffff:192.0.2.9".parse().unwrap()));
        assert_eq!(h["x-forwarded-for"], "192.0.2.9", "a v4-mapped client is its IPv4 address");

        let mut h = map(&[("x-forwarded-proto", "http")]);
        add_forwarding(&mut h, &Forwarding::with_tls("192.0.2.7".parse().unwrap(), true));
        assert_eq!(h["forwarded"], "for=192.0.2.7;proto=https");
        assert_eq!(h["x-forwarded-proto"], "https", "a terminated TLS session is https, whatever the client said");
    }

    #[test]
    fn grpc_is_told_by_its_content_type() {
        assert!(is_grpc(&map(&[("content-type", "application/grpc")])));
        assert!(is_grpc(&map(&[("content-type", "application/grpc+proto")])));
        assert!(!is_grpc(&map(&[("content-type", "application/json")])));
    }
}

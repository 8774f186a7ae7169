//! Hostnames of listeners and routes: precise (`shop.example.com`) or a
//! wildcard (`*.example.com`, which matches `a.example.com` and
//! `b.a.example.com` but not `example.com`), as the Gateway API defines
//! them; their intersection (a route attaches to a listener only where
//! their hostnames meet); and their specificity, which picks the virtual
//! host a request lands in (a precise name over any wildcard, a longer
//! wildcard over a shorter one).

use std::borrow::Cow;
use std::cmp::Ordering;
use std::fmt;

/// One hostname pattern.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Hostname {
    /// Any host (neither the listener nor the route names one).
    Any,
    /// A precise name, lowercase.
    Exact(String),
    /// `*.<suffix>`: the suffix with its leading dot, lowercase (`.example.com`).
    Wildcard(String),
}

impl Hostname {
    /// Parses a listener's or route's hostname: lowercase DNS labels, or a
    /// wildcard first label; no port, no IP address.
    pub fn parse(text: &str) -> Result<Hostname, String> {
        let lower = text.to_ascii_lowercase();
        let (wildcard, rest) = match lower.strip_prefix("*.") {
            Some(rest) => (true, rest),
            None => (false, lower.as_str()),
        };
        if rest.is_empty() || rest.len() > 253 {
            return Err(format!("{text:?} is not a hostname"));
        }
        for label in rest.split('.') {
            let valid = !label.is_empty()
                && label.len() <= 63
                && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-');
            if !valid {
                return Err(format!(
                    "{text:?} is not a hostname: label {label:?} (letters, digits and '-'; a wildcard only as `*.` first)"
                ));
            }
        }
        if !wildcard && rest.split('.').all(|l| l.bytes().all(|b| b.is_ascii_digit())) {
            return Err(format!("{text:?} is an IP address, not a hostname"));
        }
        Ok(if wildcard { Hostname::Wildcard(format!(".{rest}")) } else { Hostname::Exact(rest.to_owned()) })
    }

    /// Whether a request for `host` (lowercase, no port) is for this pattern.
    pub fn matches(&self, host: &str) -> bool {
        match self {
            Hostname::Any => true,
            Hostname::Exact(name) => name == host,
            Hostname::Wildcard(suffix) => host.len() > suffix.len() && host.ends_with(suffix.as_str()),
        }
    }

    /// Where a listener's hostname (`self`) and a route's (`other`) meet:
    /// the more specific of the two when one covers the other, else None.
    pub fn intersect(&self, other: &Hostname) -> Option<Hostname> {
        match (self, other) {
            (Hostname::Any, h) | (h, Hostname::Any) => Some(h.clone()),
            (Hostname::Exact(a), Hostname::Exact(b)) => (a == b).then(|| self.clone()),
            (Hostname::Wildcard(_), Hostname::Exact(name)) => self.matches(name).then(|| other.clone()),
            (Hostname::Exact(name), Hostname::Wildcard(_)) => other.matches(name).then(|| self.clone()),
            (Hostname::Wildcard(a), Hostname::Wildcard(b)) => {
                if a.ends_with(b.as_str()) {
                    Some(self.clone())
                } else if b.ends_with(a.as_str()) {
                    Some(other.clone())
                } else {
                    None
                }
            }
        }
    }

    /// How specific: precise names first, then wildcards by length, then Any.
    /// `Ordering::Greater` is more specific.
    pub fn specificity(&self, other: &Hostname) -> Ordering {
        let rank = |h: &Hostname| match h {
            Hostname::Exact(n) => (2, n.len()),
            Hostname::Wildcard(s) => (1, s.len()),
            Hostname::Any => (0, 0),
        };
        rank(self).cmp(&rank(other))
    }
}

impl fmt::Display for Hostname {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Hostname::Any => f.write_str("*"),
            Hostname::Exact(n) => f.write_str(n),
            Hostname::Wildcard(s) => write!(f, "*{s}"),
        }
    }
}

/// The host a request is for: its `Host` header or URI authority,
/// lowercase, without a port or an IPv6 literal's brackets' port.
/// Borrowed when the authority needs no lowercasing (what clients send):
/// every request of a gateway listener asks this.
pub fn request_host(authority: &str) -> Cow<'_, str> {
    let (host, upper) = if let Some(rest) = authority.strip_prefix('[') {
        let host = rest.split(']').next().unwrap_or(rest);
        (host, host.bytes().any(|b| b.is_ascii_uppercase()))
    } else {
        // One pass: the last ':' (the digits after it are a port) and
        // whether anything needs lowercasing (a port's digits never do).
        let bytes = authority.as_bytes();
        let (mut colon, mut upper) = (None, false);
        for (i, b) in bytes.iter().enumerate() {
            if *b == b':' {
                colon = Some(i);
            }
            upper |= b.is_ascii_uppercase();
        }
        match colon {
            Some(i) if bytes[i + 1..].iter().all(u8::is_ascii_digit) => (&authority[..i], upper),
            _ => (authority, upper),
        }
    };
    let mut host = host;
    while let Some(rest) = host.strip_suffix('.') {
        host = rest;
    }
    if upper { Cow::Owned(host.to_ascii_lowercase()) } else { Cow::Borrowed(host) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(text: &str) -> Hostname {
        Hostname::parse(text).unwrap()
    }

    #[test]
    fn wildcards_match_one_or_more_labels_but_not_the_bare_suffix() {
        let w = h("*.example.com");
        assert!(w.matches("a.example.com"));
        assert!(w.matches("b.a.example.com"));
        assert!(!w.matches("example.com"));
        assert!(!w.matches("aexample.com"));
        assert!(h("Shop.Example.com").matches("shop.example.com"));
    }

    #[test]
    fn bad_hostnames_say_why() {
        for bad in ["", "*", "a..b", "-a.com", "a_b.com", "10.0.0.1", "foo.*.com", "a.com:80"] {
            assert!(Hostname::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn intersections_keep_the_more_specific_side() {
        assert_eq!(h("*.example.com").intersect(&h("a.example.com")), Some(h("a.example.com")));
        assert_eq!(h("a.example.com").intersect(&h("*.example.com")), Some(h("a.example.com")));
        assert_eq!(h("*.example.com").intersect(&h("*.a.example.com")), Some(h("*.a.example.com")));
        assert_eq!(h("*.a.example.com").intersect(&h("*.example.com")), Some(h("*.a.example.com")));
        assert_eq!(h("a.example.com").intersect(&h("b.example.com")), None);
        assert_eq!(h("*.example.com").intersect(&h("example.com")), None);
        assert_eq!(h("*.example.com").intersect(&h("*.example.org")), None);
        assert_eq!(Hostname::Any.intersect(&h("x.org")), Some(h("x.org")));
    }

    #[test]
    fn request_hosts_lose_ports_and_case() {
        assert_eq!(request_host("Shop.Example.com:8080"), "shop.example.com");
        assert_eq!(request_host("shop.example.com."), "shop.example.com");
        assert_eq!(request_host("[fd00::1]:80"), "fd00::1");
        assert_eq!(request_host("shop"), "shop");
        assert_eq!(request_host("shop:"), "shop", "an empty port");
        assert_eq!(request_host("a:b:80"), "a:b");
        assert_eq!(request_host("shop:http"), "shop:http", "not a port");
        assert!(matches!(request_host("shop.example.com:80"), Cow::Borrowed("shop.example.com")));
    }
}

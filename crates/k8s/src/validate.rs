//! Kubernetes' naming and range rules (the subset `kubectl` enforces on the
//! fields the agent reads). Each check returns why a value is invalid.

/// The longest DNS label (RFC 1123 / RFC 1035).
const LABEL_MAX: usize = 63;
/// The longest DNS subdomain (RFC 1123).
const SUBDOMAIN_MAX: usize = 253;
/// The longest IANA service name (RFC 6335).
const IANA_SVC_MAX: usize = 15;

const DNS1123_LABEL: &str = "must consist of lower case alphanumeric characters or '-', \
     and must start and end with an alphanumeric character (e.g. 'my-name' or '123-abc')";
const DNS1035_LABEL: &str = "must consist of lower case alphanumeric characters or '-', start with an \
     alphabetic character, and end with an alphanumeric character (e.g. 'my-name' or 'abc-123')";
const DNS1123_SUBDOMAIN: &str = "must consist of lower case alphanumeric characters, '-' or '.', \
     and must start and end with an alphanumeric character (e.g. 'example.com')";

fn lower_alnum(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit()
}

/// Shape shared by label rules: `[a-z0-9-]`, ending in alphanumeric.
fn label_body(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty() && b.iter().all(|&c| lower_alnum(c) || c == b'-') && lower_alnum(b[b.len() - 1])
}

/// An RFC 1123 label: namespaces, port names.
pub fn dns1123_label(s: &str) -> Result<(), &'static str> {
    if s.len() > LABEL_MAX {
        return Err("must be no more than 63 characters");
    }
    if !label_body(s) || !lower_alnum(s.as_bytes()[0]) {
        return Err(DNS1123_LABEL);
    }
    Ok(())
}

/// An RFC 1035 label: Service names (they become DNS names and env vars).
pub fn dns1035_label(s: &str) -> Result<(), &'static str> {
    if s.len() > LABEL_MAX {
        return Err("must be no more than 63 characters");
    }
    if !label_body(s) || !s.as_bytes()[0].is_ascii_lowercase() {
        return Err(DNS1035_LABEL);
    }
    Ok(())
}

/// An RFC 1123 subdomain: EndpointSlice and Endpoints names.
pub fn dns1123_subdomain(s: &str) -> Result<(), &'static str> {
    if s.len() > SUBDOMAIN_MAX {
        return Err("must be no more than 253 characters");
    }
    if !s.split('.').all(|l| label_body(l) && lower_alnum(l.as_bytes()[0])) {
        return Err(DNS1123_SUBDOMAIN);
    }
    Ok(())
}

/// An IANA service name (RFC 6335): a container port name in `targetPort`.
pub fn iana_svc_name(s: &str) -> Result<(), &'static str> {
    if s.is_empty() || s.len() > IANA_SVC_MAX {
        return Err("must be 1 to 15 characters");
    }
    if !s.bytes().all(|c| lower_alnum(c) || c == b'-') {
        return Err("must contain only lower case alphanumeric characters or '-'");
    }
    if !s.bytes().any(|c| c.is_ascii_lowercase()) {
        return Err("must contain at least one letter");
    }
    if s.contains("--") {
        return Err("must not contain consecutive hyphens");
    }
    if s.starts_with('-') || s.ends_with('-') {
        return Err("must not begin or end with a hyphen");
    }
    Ok(())
}

/// A qualified name (Kubernetes' `IsQualifiedName`): `name` or
/// `prefix/name`, the prefix a DNS subdomain, the name 1-63 alphanumeric
/// characters, '-', '_' or '.', starting and ending alphanumeric. A
/// service port's `appProtocol` (`http`, `kubernetes.io/h2c`).
pub fn qualified_name(s: &str) -> Result<(), &'static str> {
    let name = match s.split_once('/') {
        Some((prefix, name)) => {
            if prefix.is_empty() || dns1123_subdomain(prefix).is_err() {
                return Err("its prefix (before '/') must be a lower case DNS subdomain (e.g. 'example.com')");
            }
            name
        }
        None => s,
    };
    if name.is_empty() || name.len() > LABEL_MAX {
        return Err("its name part must be 1 to 63 characters");
    }
    let b = name.as_bytes();
    let alnum = |c: &u8| c.is_ascii_alphanumeric();
    if !alnum(&b[0]) || !alnum(&b[b.len() - 1]) || !b.iter().all(|c| alnum(c) || b"-_.".contains(c)) {
        return Err("its name part must consist of alphanumeric characters, '-', '_' or '.', \
             and must start and end with an alphanumeric character (e.g. 'http' or 'kubernetes.io/h2c')");
    }
    Ok(())
}

/// A TCP/UDP port number, 1-65535.
pub fn port(n: i64) -> Option<u16> {
    u16::try_from(n).ok().filter(|&p| p != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels() {
        assert!(dns1035_label("web-1").is_ok());
        assert!(dns1035_label("1web").is_err());
        assert!(dns1123_label("1web").is_ok());
        for bad in ["", "Web", "web-", "-web", "we_b", &"a".repeat(64)] {
            assert!(dns1035_label(bad).is_err(), "{bad}");
            assert!(dns1123_label(bad).is_err(), "{bad}");
        }
        assert!(dns1123_subdomain("web-abc.x1").is_ok());
        for bad in ["", "web..x", ".web", "web.", "Web"] {
            assert!(dns1123_subdomain(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn service_names_and_ports() {
        assert!(iana_svc_name("http").is_ok());
        assert!(iana_svc_name("h2c-web").is_ok());
        for bad in ["", "8080", "a--b", "-ab", "ab-", "Http", "abcdefghijklmnop"] {
            assert!(iana_svc_name(bad).is_err(), "{bad}");
        }
        for good in ["http", "HTTP2", "kubernetes.io/h2c", "kubernetes.io/ws", "my_proto.v1"] {
            assert!(qualified_name(good).is_ok(), "{good}");
        }
        for bad in
            ["", "/http", "Example.com/http", "kubernetes.io/", "http/", "-http", "h2c!", "a/b/c", &"a".repeat(64)]
        {
            assert!(qualified_name(bad).is_err(), "{bad}");
        }
        assert_eq!(port(1), Some(1));
        assert_eq!(port(65535), Some(65535));
        assert_eq!(port(0), None);
        assert_eq!(port(65536), None);
        assert_eq!(port(-1), None);
    }
}

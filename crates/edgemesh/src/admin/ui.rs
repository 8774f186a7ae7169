//! `/ui`: the live topology page. One HTML document with its style and
//! script inline, built into the binary from `ui/page.html`, `ui/page.css`
//! and `ui/page.js` (no CDN, no build step): it reads `/topology` and
//! `/metrics` every 2 s and draws the nodes, this node's link to each, and
//! the traffic per service (rates from two successive readings).

use std::sync::LazyLock;

use bytes::Bytes;
use http_body_util::Full;
use hyper::Response;
use hyper::header::{CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE};

const HTML: &str = include_str!("ui/page.html");
const CSS: &str = include_str!("ui/page.css");
const JS: &str = include_str!("ui/page.js");

/// The page, its style and script put in place once.
static PAGE: LazyLock<Bytes> =
    LazyLock::new(|| Bytes::from(HTML.replacen("/* page.css */", CSS, 1).replacen("/* page.js */", JS, 1)));

/// Inline style and script only; data from this origin only.
const POLICY: &str = "default-src 'none'; connect-src 'self'; style-src 'unsafe-inline'; \
                      script-src 'unsafe-inline'; img-src data:; base-uri 'none'; form-action 'none'";

pub(super) fn page() -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(PAGE.clone()));
    let headers = resp.headers_mut();
    headers.insert(CONTENT_TYPE, "text/html; charset=utf-8".parse().expect("static header"));
    headers.insert(CACHE_CONTROL, "no-store".parse().expect("static header"));
    headers.insert(CONTENT_SECURITY_POLICY, POLICY.parse().expect("static header"));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn style_and_script_are_inlined_and_reference_nothing_outside() {
        let page = std::str::from_utf8(&PAGE).unwrap();
        assert!(page.contains(CSS.trim()) && page.contains(JS.trim()));
        assert!(!page.contains("/* page.css */") && !page.contains("/* page.js */"));
        // (The SVG namespace is a name, not a place the page loads from.)
        let page = page.replace("http://www.w3.org/2000/svg", "");
        for outside in ["http://", "https://", "//cdn", "src=", "<link", "url(", "import "] {
            assert!(!page.contains(outside), "the page loads nothing from elsewhere: {outside}");
        }
    }
}

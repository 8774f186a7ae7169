//! `/logging`: `GET` shows the log filter in force; `PUT` or `POST`
//! `/logging?level=<filter>` replaces it (a level such as `debug`, or
//! `tracing` directives such as `info,edgemesh_dns=debug`, URL-encoded).
//! A bad filter is a 400 saying why; the filter in force stays.

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};

use super::AdminState;
use super::routes::text;

pub(super) fn route(state: &AdminState, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let logging = &state.lifecycle.logging;
    match *req.method() {
        Method::GET | Method::HEAD => text(StatusCode::OK, &format!("{}\n", logging.current())),
        Method::PUT | Method::POST => match level(req.uri().query().unwrap_or_default()) {
            Err(why) => text(StatusCode::BAD_REQUEST, &format!("{why}\n")),
            Ok(filter) => match logging.set(&filter) {
                Ok(in_force) => text(StatusCode::OK, &format!("{in_force}\n")),
                Err(why) => text(StatusCode::BAD_REQUEST, &format!("{why}\n")),
            },
        },
        _ => text(StatusCode::METHOD_NOT_ALLOWED, "GET, PUT or POST /logging?level=<filter>\n"),
    }
}

/// The `level` parameter of a query string, decoded.
fn level(query: &str) -> Result<String, String> {
    let value = query
        .split('&')
        .find_map(|pair| pair.strip_prefix("level="))
        .ok_or("no level given; use /logging?level=<filter>, e.g. level=debug")?;
    percent_decode(value).ok_or_else(|| format!("the level {value:?} is not valid URL encoding"))
}

/// `%XX` escapes and `+` (a space) decoded; `None` for a broken escape or
/// text that is not UTF-8.
fn percent_decode(text: &str) -> Option<String> {
    let mut out = Vec::with_capacity(text.len());
    let mut bytes = text.bytes();
    while let Some(b) = bytes.next() {
        out.push(match b {
            b'%' => {
                let hex = [bytes.next()?, bytes.next()?];
                u8::from_str_radix(std::str::from_utf8(&hex).ok()?, 16).ok()?
            }
            b'+' => b' ',
            b => b,
        });
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_level_parameter_is_found_and_decoded() {
        assert_eq!(level("level=debug").unwrap(), "debug");
        assert_eq!(level("x=1&level=info%2Cedgemesh_dns%3Ddebug").unwrap(), "info,edgemesh_dns=debug");
        assert!(level("lvl=debug").unwrap_err().contains("no level given"));
        assert!(level("level=%4").is_err());
    }
}

//! What the client gets back: the endpoint's response, or one the front
//! makes for a [`DispatchError`] (a short text for HTTP clients, a gRPC
//! status for gRPC clients: never a dropped connection), with a body that
//! tells the connection when the request is over.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use edgemesh_core::ServiceKey;
use http_body_util::{Either, Full};
use hyper::body::{Body, Frame, SizeHint};
use hyper::header::{self, HeaderValue};
use hyper::{Response, StatusCode};

use crate::{DispatchError, UpstreamBody};

/// The response body: the endpoint's, or the front's own text; `done` is
/// dropped when the body ends (or the client goes), which ends the
/// request's time and, for its connection, its time in flight.
pub struct FrontBody<D> {
    inner: Either<UpstreamBody, Full<Bytes>>,
    done: Option<D>,
}

impl<D> FrontBody<D> {
    pub fn upstream(body: UpstreamBody, done: D) -> Self {
        Self { inner: Either::Left(body), done: Some(done) }
    }

    pub fn local(text: Bytes, done: D) -> Self {
        Self { inner: Either::Right(Full::new(text)), done: Some(done) }
    }
}

impl<D: Unpin> Body for FrontBody<D> {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        let frame = Pin::new(&mut this.inner).poll_frame(cx);
        if matches!(frame, Poll::Ready(None | Some(Err(_)))) {
            this.done = None;
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The response for a request that `error` kept from any endpoint, to a
/// client of `service`'s `port`: its status and a short text, or for a
/// gRPC client an HTTP 200 with only a `grpc-status` (14 UNAVAILABLE, 4
/// DEADLINE_EXCEEDED) and a `grpc-message` (gRPC's "Trailers-Only").
pub fn error_response(error: &DispatchError, service: &ServiceKey, port: u16, grpc: bool) -> (Response<()>, Bytes) {
    let text = explain(error, service, port);
    if grpc {
        let response = Response::builder()
            .status(StatusCode::OK)
            .header(header::CONTENT_TYPE, "application/grpc")
            .header("grpc-status", error.grpc_status())
            .header("grpc-message", percent_encode(&text))
            .body(())
            .expect("valid static parts");
        return (response, Bytes::new());
    }
    let mut response = Response::builder()
        .status(error.status())
        .header(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"))
        .body(())
        .expect("valid static parts");
    if let DispatchError::Redirect { location, .. } = error {
        // A route's redirect target is made of the request's own parts and
        // the route's checked values; one that is no header value is a 500.
        match HeaderValue::try_from(location.as_str()) {
            Ok(value) => {
                response.headers_mut().insert(header::LOCATION, value);
            }
            Err(_) => *response.status_mut() = StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
    (response, Bytes::from(format!("{text}\n")))
}

/// One line naming the service and what to check.
fn explain(error: &DispatchError, service: &ServiceKey, port: u16) -> String {
    let hint = match error {
        DispatchError::NoEndpoints { .. } => "are its pods running and ready?",
        // A failed connect's reason asks its own question already.
        DispatchError::EndpointFailed { reason, .. } if reason.ends_with('?') => {
            return format!("edgemesh: service {service} port {port}: {error}");
        }
        DispatchError::EndpointFailed { .. } => "is the pod listening on its targetPort, and speaking HTTP?",
        DispatchError::Timeout { .. } => "is the endpoint overloaded? edgemesh.io/http-timeout sets the limit",
        // The gateway's own answers: `service` is the Gateway, `port` its listener's.
        DispatchError::NoRoute { .. } => {
            return format!(
                "edgemesh: gateway {service} port {port}: {error}; no HTTPRoute of this listener matches it"
            );
        }
        DispatchError::Redirect { .. } => return format!("edgemesh: {error}"),
        DispatchError::NoBackend { .. } => {
            return format!("edgemesh: gateway {service} port {port}: {error}; see the route's ResolvedRefs condition");
        }
        DispatchError::Misdirected { host, .. } => {
            return format!("edgemesh: gateway {service} port {port}: {error}; open a new connection for {host}");
        }
    };
    format!("edgemesh: service {service} port {port}: {error}; {hint}")
}

/// `grpc-message` is percent-encoded: anything but printable ASCII, and
/// `%` itself.
fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if (0x20..0x7f).contains(&byte) && byte != b'%' {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn web() -> ServiceKey {
        ServiceKey::new("default", "web")
    }

    #[test]
    fn errors_become_their_status_with_a_text_naming_the_service() {
        let none = DispatchError::NoEndpoints { service: "default/web".into(), port: 80 };
        let (response, body) = error_response(&none, &web(), 80, false);
        assert_eq!(response.status(), 503);
        let body = std::str::from_utf8(&body).unwrap();
        assert!(body.starts_with("edgemesh: service default/web port 80:"), "{body}");
        assert!(body.contains("ready"), "{body}");

        let failed = DispatchError::EndpointFailed { endpoint: "10.0.0.7:80".parse().unwrap(), reason: "reset".into() };
        assert_eq!(error_response(&failed, &web(), 80, false).0.status(), 502);
        let refused = DispatchError::EndpointFailed {
            endpoint: "10.0.0.7:80".parse().unwrap(),
            reason: "endpoint 10.0.0.7:80 refused the connection; is the pod listening on its targetPort?".into(),
        };
        let body = error_response(&refused, &web(), 80, false).1;
        assert_eq!(std::str::from_utf8(&body).unwrap().matches("targetPort").count(), 1, "one hint, not two");
        let late = DispatchError::Timeout { timeout: Duration::from_secs(15) };
        let (response, body) = error_response(&late, &web(), 80, false);
        assert_eq!(response.status(), 504);
        assert!(std::str::from_utf8(&body).unwrap().contains("http-timeout"));
    }

    #[test]
    fn grpc_clients_get_a_trailers_only_status() {
        let late = DispatchError::Timeout { timeout: Duration::from_millis(1500) };
        let (response, body) = error_response(&late, &web(), 50051, true);
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["grpc-status"], "4");
        assert_eq!(response.headers()["content-type"], "application/grpc");
        assert!(body.is_empty());
        let failed =
            DispatchError::EndpointFailed { endpoint: "10.0.0.7:80".parse().unwrap(), reason: "100% é".into() };
        let (response, _) = error_response(&failed, &web(), 50051, true);
        assert_eq!(response.headers()["grpc-status"], "14");
        let message = response.headers()["grpc-message"].to_str().unwrap();
        assert!(message.contains("100%25 %C3%A9"), "{message}");
    }
}

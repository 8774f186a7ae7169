//! What went wrong with one request, and the response the client gets:
//! a short text body for HTTP clients, a gRPC status for gRPC clients
//! (`content-type: application/grpc`), never a dropped connection.

use std::net::SocketAddr;

use hyper::StatusCode;

/// Why a request got no response from an endpoint.
#[derive(Debug, thiserror::Error)]
pub enum DispatchError {
    /// The service port has no ready endpoint (none, or all ejected).
    #[error("service {service} port {port} has no ready endpoint")]
    NoEndpoints { service: String, port: u16 },
    /// The endpoint could not be reached, reset the connection, or sent a
    /// malformed response (after the retries allowed).
    #[error("endpoint {endpoint} failed: {reason}")]
    EndpointFailed { endpoint: SocketAddr, reason: String },
    /// The request's timeout (or the last try's) expired.
    #[error("no response within {timeout:?}")]
    Timeout { timeout: std::time::Duration },
    /// A gateway listener has no route for the request (404).
    #[error("no route for {host}{path}")]
    NoRoute { host: String, path: String },
    /// The request's route answers with a redirect (`RequestRedirect`).
    #[error("redirected to {location}")]
    Redirect { status: StatusCode, location: String },
    /// The request's route has no backend it may use for this request: no
    /// backendRefs, or the one picked does not resolve (500, as the
    /// Gateway API requires).
    #[error("{reason}")]
    NoBackend { reason: String },
    /// A gateway's HTTPS request for a host another listener serves than
    /// the one its TLS session was made for (421: the client retries on a
    /// new connection).
    #[error("{host} is not served by the listener this TLS connection was made for (server name {server_name})")]
    Misdirected { host: String, server_name: String },
}

impl DispatchError {
    /// The HTTP status for the client: 503, 502, 504; for a gateway's
    /// own answers 404, the redirect's, 500, 421.
    pub fn status(&self) -> StatusCode {
        match self {
            DispatchError::NoEndpoints { .. } => StatusCode::SERVICE_UNAVAILABLE,
            DispatchError::EndpointFailed { .. } => StatusCode::BAD_GATEWAY,
            DispatchError::Timeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            DispatchError::NoRoute { .. } => StatusCode::NOT_FOUND,
            DispatchError::Redirect { status, .. } => *status,
            DispatchError::NoBackend { .. } => StatusCode::INTERNAL_SERVER_ERROR,
            DispatchError::Misdirected { .. } => StatusCode::MISDIRECTED_REQUEST,
        }
    }

    /// The gRPC status code for gRPC clients: UNAVAILABLE (14),
    /// DEADLINE_EXCEEDED (4), UNIMPLEMENTED (12: no route), INTERNAL (13),
    /// UNAVAILABLE also for a misdirected request (a new connection helps),
    /// UNKNOWN (2: a redirect, which gRPC does not follow).
    pub fn grpc_status(&self) -> u32 {
        match self {
            DispatchError::NoEndpoints { .. }
            | DispatchError::EndpointFailed { .. }
            | DispatchError::Misdirected { .. } => 14,
            DispatchError::Timeout { .. } => 4,
            DispatchError::NoRoute { .. } => 12,
            DispatchError::NoBackend { .. } => 13,
            DispatchError::Redirect { .. } => 2,
        }
    }
}

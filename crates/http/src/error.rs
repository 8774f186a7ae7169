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
}

impl DispatchError {
    /// The HTTP status for the client: 503, 502, 504.
    pub fn status(&self) -> StatusCode {
        match self {
            DispatchError::NoEndpoints { .. } => StatusCode::SERVICE_UNAVAILABLE,
            DispatchError::EndpointFailed { .. } => StatusCode::BAD_GATEWAY,
            DispatchError::Timeout { .. } => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    /// The gRPC status code for gRPC clients: UNAVAILABLE (14) or
    /// DEADLINE_EXCEEDED (4).
    pub fn grpc_status(&self) -> u32 {
        match self {
            DispatchError::NoEndpoints { .. } | DispatchError::EndpointFailed { .. } => 14,
            DispatchError::Timeout { .. } => 4,
        }
    }
}

//! A service source that lists and watches the Kubernetes API, or KubeEdge's
//! metaServer (a Kubernetes-compatible API on each edge node), and emits the
//! same [`SourceEvent`](edgemesh_core::SourceEvent)s as the manifests source.
//!
//! ```text
//!  API server / metaServer ──list+watch──> watchers (kube-runtime, back-off)
//!  Services, EndpointSlices | Endpoints, Nodes,              │ events
//!  DestinationRules (optional CRD)                           │
//!                                        convert (validate) <┘
//!                                              │ objects
//!                      diff against what was sent ──> EventSink
//! ```
//!
//! - [`config`]: [`KubeConfig`], the `kube` section of the agent's config.
//! - [`client`]: which API (URL, kubeconfig, in-cluster) and the client;
//!   installs the ring TLS provider.
//! - [`source`]: [`KubeSource`], the watch loop and the diff that deletes
//!   what vanished across a re-list.
//! - `convert`: API objects into the shared wire model of `edgemesh_k8s`,
//!   whose rules and messages turn them into `edgemesh_core` objects (the
//!   same as the manifests source's); services labelled
//!   [`SERVICE_PROXY_NAME_LABEL`] are excluded, as EdgeMesh does.
//! - `health`: which watches fail, published as the shared
//!   [`SourceHealth`](edgemesh_core::SourceHealth) (connected, or
//!   disconnected since when and why) for `/readyz` and `/services`.
//! - [`routing`]: the edge gateway's objects (Gateway API, Istio Gateway
//!   and VirtualService), optional CRDs watched only for the gateway.
//! - [`status`]: the edge gateway's status written back to its objects.
//! - [`secrets`]: `kubernetes.io/tls` Secrets for the gateway's HTTPS
//!   listeners, in memory only.
//! - [`rule`]: Istio DestinationRules (an optional CRD), EdgeMesh's
//!   per-service load-balancing strategies.
//! - `backoff`: exponential back-off with jitter that really grows.
//! - [`error`]: the error type, [`KubeError`], whose messages say what to check.
#![forbid(unsafe_code)]
#![warn(clippy::unwrap_used)] // outside tests: an error with context, or an `expect` naming the invariant

mod backoff;
pub mod client;
pub mod config;
mod convert;
pub mod error;
mod health;
pub mod routing;
pub mod rule;
pub mod secrets;
pub mod source;
pub mod status;

/// The API objects' conversions, for the fuzz targets (`fuzz/`) only: not an API.
#[doc(hidden)]
pub mod fuzzing {
    pub use crate::convert::{endpoint_slice, endpoints, excluded, node, service};
}

pub use client::{ApiEndpoint, install_crypto_provider};
pub use config::KubeConfig;
pub use convert::SERVICE_PROXY_NAME_LABEL;
pub use edgemesh_k8s::ConvertError;
pub use error::KubeError;
pub use source::{KubeSource, KubeSourceConfig};

//! Errors of the Kubernetes source: they say what to check.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum KubeError {
    #[error("invalid Kubernetes API URL {url:?}: {reason}")]
    BadUrl { url: String, reason: String },
    #[error("cannot use kubeconfig {}: {reason}", path.display())]
    Kubeconfig { path: PathBuf, reason: String },
    #[error(
        "cannot find the Kubernetes API: {0}; pass --kube-api URL (e.g. KubeEdge metaServer http://127.0.0.1:10550) \
         or --kubeconfig FILE, or run in a pod with a service account"
    )]
    Infer(String),
    #[error("cannot build the Kubernetes client: {0}")]
    Client(String),
}

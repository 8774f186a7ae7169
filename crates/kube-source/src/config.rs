//! The `kube` section of the agent's config: which API the source reads.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::ApiEndpoint;

/// Where the Kubernetes source finds its API (keys in camelCase).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct KubeConfig {
    /// API URL, e.g. KubeEdge metaServer `http://127.0.0.1:10550` (plain
    /// HTTP, no authentication). Wins over `kubeconfig`.
    pub api: Option<String>,
    /// Kubeconfig file. With neither set: the pod's service account, else
    /// `$KUBECONFIG` or `~/.kube/config`.
    pub kubeconfig: Option<PathBuf>,
}

impl KubeConfig {
    /// The API these settings name.
    pub fn endpoint(&self) -> ApiEndpoint {
        match (&self.api, &self.kubeconfig) {
            (Some(url), _) => ApiEndpoint::Url(url.clone()),
            (None, Some(path)) => ApiEndpoint::Kubeconfig(path.clone()),
            (None, None) => ApiEndpoint::Infer,
        }
    }

    /// Names the API for the persistent cache, so that it never serves
    /// state another API wrote.
    pub fn identity(&self) -> String {
        match self.endpoint() {
            ApiEndpoint::Url(url) => format!("kube:{url}"),
            ApiEndpoint::Kubeconfig(path) => format!("kube:kubeconfig:{}", path.display()),
            ApiEndpoint::Infer => "kube:in-cluster".to_string(),
        }
    }
}

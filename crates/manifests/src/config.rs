//! The `manifests` section of the agent's config.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Settings of the manifests source (keys in camelCase).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct ManifestsConfig {
    /// Directory of Kubernetes manifests (`*.yaml`, `*.yml`) to serve.
    pub dir: PathBuf,
    /// How often the directory is checked for changes.
    #[serde(with = "edgemesh_core::duration")]
    pub poll_interval: Duration,
}

impl Default for ManifestsConfig {
    fn default() -> Self {
        Self { dir: PathBuf::from("/etc/edgemesh/manifests"), poll_interval: Duration::from_millis(200) }
    }
}

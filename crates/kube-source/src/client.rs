//! Building the Kubernetes client: metaServer URL, kubeconfig file, or the
//! environment (in-cluster service account, then `$KUBECONFIG` /
//! `~/.kube/config`).

use std::path::PathBuf;
use std::time::Duration;

use kube::config::{KubeConfigOptions, Kubeconfig};

use crate::error::KubeError;

/// Where the API is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ApiEndpoint {
    /// A URL such as KubeEdge metaServer's `http://127.0.0.1:10550`: plain
    /// HTTP, no authentication (or https with the system's roots).
    Url(String),
    /// A kubeconfig file (its current context).
    Kubeconfig(PathBuf),
    /// In-cluster service account when running in a pod, else `$KUBECONFIG`
    /// or `~/.kube/config`.
    Infer,
}

/// kube panics when both rustls providers are compiled in and none is the
/// default (QUIC pulls in aws-lc); pick ring explicitly, once.
pub fn install_crypto_provider() {
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        // Fails only if another thread installed one meanwhile: fine.
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
}

/// A client for `endpoint`; no request is made yet.
pub async fn client(endpoint: &ApiEndpoint) -> Result<kube::Client, KubeError> {
    kube::Client::try_from(config(endpoint).await?).map_err(|e| KubeError::Client(e.to_string()))
}

/// A client whose answers are reported to the source's health, and the API's URL.
pub(crate) async fn observed_client(
    endpoint: &ApiEndpoint,
    health: std::sync::Arc<edgemesh_core::SourceHealth>,
) -> Result<(kube::Client, std::sync::Arc<crate::health::Link>), KubeError> {
    let config = config(endpoint).await?;
    let link = std::sync::Arc::new(crate::health::Link::new(config.cluster_url.to_string(), health));
    let builder = kube::client::ClientBuilder::try_from(config).map_err(|e| KubeError::Client(e.to_string()))?;
    Ok((builder.with_layer(&crate::health::Observe(link.clone())).build(), link))
}

async fn config(endpoint: &ApiEndpoint) -> Result<kube::Config, KubeError> {
    install_crypto_provider();
    let mut config = match endpoint {
        ApiEndpoint::Url(url) => {
            let uri: http::Uri =
                url.parse().map_err(|e| KubeError::BadUrl { url: url.clone(), reason: format!("{e}") })?;
            if uri.scheme().is_none() || uri.host().is_none() {
                return Err(KubeError::BadUrl {
                    url: url.clone(),
                    reason: "expected e.g. http://127.0.0.1:10550".into(),
                });
            }
            let plain = uri.scheme_str() == Some("http");
            let mut config = kube::Config::new(uri);
            if plain {
                // No TLS, so no trust roots: without this kube loads the
                // system's CA certificates all the same and fails where
                // there are none (a FROM scratch image, a minimal node).
                config.root_cert = Some(Vec::new());
            }
            config
        }
        ApiEndpoint::Kubeconfig(path) => {
            let kc = Kubeconfig::read_from(path)
                .map_err(|e| KubeError::Kubeconfig { path: path.clone(), reason: e.to_string() })?;
            kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
                .await
                .map_err(|e| KubeError::Kubeconfig { path: path.clone(), reason: e.to_string() })?
        }
        ApiEndpoint::Infer => kube::Config::infer().await.map_err(|e| KubeError::Infer(e.to_string()))?,
    };
    // A watch is idle for minutes; a request that gets no answer is not.
    config.connect_timeout = Some(Duration::from_secs(5));
    config.read_timeout = None;
    Ok(config)
}

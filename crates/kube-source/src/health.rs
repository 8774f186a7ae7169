//! The source's connection health: which watches fail, published as the
//! shared [`SourceHealth`] that `/readyz` and `/services` show.
//!
//! A watch error marks its resource failing. A resumed watch that the API
//! accepts yields no event, so answers are seen in the client instead: a
//! layer marks the resource of every successful response healthy. The
//! source is connected when no resource is failing; the outage is logged
//! once when it starts and once when it ends.

use std::collections::HashSet;
use std::error::Error;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use edgemesh_core::SourceHealth;
use http::{Request, Response};
use kube::client::Body;

/// Shared by the watch loop (errors) and the client layer (answers).
#[derive(Debug)]
pub(crate) struct Link {
    /// The API, to name it in errors.
    url: String,
    failing: Mutex<HashSet<String>>,
    health: Arc<SourceHealth>,
}

impl Link {
    pub(crate) fn new(url: String, health: Arc<SourceHealth>) -> Self {
        Self { url, failing: Mutex::new(HashSet::new()), health }
    }

    /// Requests for `resource` (a plural such as `services`) fail.
    pub(crate) fn failed(&self, resource: &str, error: &(dyn Error + 'static)) {
        let mut failing = self.failing.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        failing.insert(resource.to_owned());
        let error = format!("{} (API {})", chain(error), self.url);
        if self.health.disconnected(&error) {
            tracing::warn!(
                %error,
                "lost the Kubernetes API; serving the last known state (stale) and retrying with back-off \
                 (check --kube-api / --kubeconfig and that metaServer or the API server is up)"
            );
        }
    }

    /// The API answered a request for `resource`.
    pub(crate) fn answered(&self, resource: &str) {
        let mut failing = self.failing.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        failing.remove(resource);
        if failing.is_empty()
            && let Some(outage) = self.health.connected()
        {
            tracing::info!(outage = ?outage, "the Kubernetes API answers again; watches resumed, state is live");
        }
    }
}

/// `error: cause: cause`, without the repetitions of errors that also
/// print their source.
fn chain(error: &(dyn Error + 'static)) -> String {
    let mut s = error.to_string();
    let mut next = error.source();
    while let Some(e) = next {
        let msg = e.to_string();
        if !s.contains(&msg) {
            s.push_str(": ");
            s.push_str(&msg);
        }
        next = e.source();
    }
    s
}

/// The client layer that reports answers to the [`Link`].
#[derive(Clone)]
pub(crate) struct Observe(pub(crate) Arc<Link>);

impl<S> tower::Layer<S> for Observe {
    type Service = Observed<S>;

    fn layer(&self, inner: S) -> Observed<S> {
        Observed { inner, link: self.0.clone() }
    }
}

pub(crate) struct Observed<S> {
    inner: S,
    link: Arc<Link>,
}

impl<S, B> tower::Service<Request<Body>> for Observed<S>
where
    S: tower::Service<Request<Body>, Response = Response<B>>,
    S::Future: Send + 'static,
{
    type Response = Response<B>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Response<B>, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        // `/api/v1/services`, `/apis/discovery.k8s.io/v1/endpointslices`, ...
        let resource = req.uri().path().rsplit('/').next().unwrap_or_default().to_owned();
        let link = self.link.clone();
        let response = self.inner.call(req);
        Box::pin(async move {
            let response = response.await?;
            if response.status().is_success() {
                link.answered(&resource);
            }
            Ok(response)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use edgemesh_core::Connection;

    #[derive(Debug, thiserror::Error)]
    #[error("failed to start watching: {0}")]
    struct Outer(#[source] ClientError);

    #[derive(Debug, thiserror::Error)]
    #[error("client error (Connect)")]
    struct ClientError(#[source] std::io::Error);

    #[test]
    fn connected_again_only_when_every_failing_resource_answers() {
        let health = SourceHealth::new();
        let link = Link::new("http://127.0.0.1:10550".into(), health.clone());
        link.answered("services");
        assert_eq!(health.report().connection, Connection::Connected);

        let refused =
            Outer(ClientError(std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "connection refused")));
        link.failed("services", &refused);
        link.failed("endpointslices", &refused);
        let r = health.report();
        assert_eq!(r.connection, Connection::Disconnected);
        assert_eq!(
            r.last_error.as_deref(),
            Some("failed to start watching: client error (Connect): connection refused (API http://127.0.0.1:10550)")
        );
        link.answered("services");
        assert_eq!(health.report().connection, Connection::Disconnected, "endpointslices still fail");
        link.answered("endpointslices");
        assert_eq!(health.report().connection, Connection::Connected);
    }
}

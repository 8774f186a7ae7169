//! The gateway's status written back to its Gateways and routes in
//! Kubernetes (the Kubernetes source only): after each compile the desired
//! status of every such object is handed over here, and each one that
//! differs from what was last written is written (see
//! `edgemesh_kube::status`: read, merge, patch only on a change). A failed
//! write is retried every few seconds; the compile never waits for the API.

use std::collections::HashMap;
use std::time::Duration;

use edgemesh_core::{RoutingKind, Snapshot};
use edgemesh_gateway::report::GatewayReport;
use edgemesh_gateway::status;
use edgemesh_kube::status::{StatusWriter, Written};
use serde_json::Value;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// An object whose status the gateway writes.
pub type StatusKey = (RoutingKind, String, String);

/// How soon a failed write is tried again.
const RETRY: Duration = Duration::from_secs(5);

/// The desired status of each Gateway API Gateway and route of
/// `snapshot` that `report` covers (translated Istio objects have no
/// Gateway API object to write to).
pub fn desired(report: &GatewayReport, snapshot: &Snapshot) -> HashMap<StatusKey, Value> {
    let present: std::collections::HashSet<StatusKey> = snapshot
        .routing_objects()
        .filter(|o| {
            matches!(
                o.kind,
                RoutingKind::Gateway
                    | RoutingKind::HttpRoute
                    | RoutingKind::GrpcRoute
                    | RoutingKind::TlsRoute
                    | RoutingKind::TcpRoute
            )
        })
        .map(|o| (o.kind, o.meta.namespace.clone(), o.meta.name.clone()))
        .collect();
    let gateways = report
        .gateways
        .iter()
        .map(|g| ((RoutingKind::Gateway, g.namespace.clone(), g.name.clone()), status::gateway(g)));
    let routes = report.routes.iter().filter_map(|r| {
        let kind = route_kind(r.kind)?;
        Some(((kind, r.namespace.clone(), r.name.clone()), status::route(r)))
    });
    gateways.chain(routes).filter(|(key, _)| present.contains(key)).collect()
}

/// The kind of a route as the report names it (`HTTPRoute`, ...).
fn route_kind(kind: &str) -> Option<RoutingKind> {
    [RoutingKind::HttpRoute, RoutingKind::GrpcRoute, RoutingKind::TlsRoute, RoutingKind::TcpRoute]
        .into_iter()
        .find(|k| k.kind() == kind)
}

/// Writes what `desired` holds until `shutdown`.
pub async fn run(
    writer: StatusWriter,
    mut desired: watch::Receiver<HashMap<StatusKey, Value>>,
    shutdown: CancellationToken,
) {
    let mut written: HashMap<StatusKey, Value> = HashMap::new();
    let mut failing = false;
    loop {
        let wanted = desired.borrow_and_update().clone();
        written.retain(|key, _| wanted.contains_key(key));
        let mut failed = false;
        for (key, value) in &wanted {
            if written.get(key) == Some(value) {
                continue;
            }
            let (kind, namespace, name) = key;
            match writer.write(*kind, namespace, name, value, status::merge).await {
                Ok(outcome) => {
                    if outcome == Written::Changed {
                        tracing::debug!(kind = kind.label(), %namespace, %name, "gateway status written");
                    }
                    written.insert(key.clone(), value.clone());
                }
                Err(e) => {
                    if !failing {
                        tracing::warn!(kind = kind.label(), %namespace, %name, error = %e, "cannot write the gateway's status; retrying");
                    }
                    failed = true;
                }
            }
        }
        failing = failed;
        let retry = async {
            if failed {
                tokio::time::sleep(RETRY).await;
            } else {
                std::future::pending::<()>().await;
            }
        };
        tokio::select! {
            changed = desired.changed() => if changed.is_err() { return },
            () = retry => {}
            () = shutdown.cancelled() => return,
        }
    }
}

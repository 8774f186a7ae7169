//! `/services/<namespace>/<name>`: one service as in `/services`, plus each
//! of its service ports' endpoints with their passive health from the proxy
//! (consecutive failures, ejected for how long). What `edgemesh status
//! service NS/NAME` shows.

use bytes::Bytes;
use edgemesh_core::{ServiceEntry, ServiceKey};
use edgemesh_proxy::pools::PortHealth;
use http_body_util::Full;
use hyper::{Response, StatusCode};
use serde::Serialize;

use super::AdminState;
use super::routes::{json, text};

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ServiceDump<'a> {
    /// This agent's node (endpoints with this `nodeName` are local).
    node_name: &'a str,
    generation: u64,
    service: &'a ServiceEntry,
    /// The proxy's pools of the service (none while it has not applied the
    /// service, or for a headless one).
    ports: Vec<PortHealth>,
}

/// Answers for `rest`, the path after `/services/`.
pub(super) fn route(state: &AdminState, rest: &str) -> Response<Full<Bytes>> {
    let Some((namespace, name)) = rest.split_once('/').filter(|(ns, n)| !ns.is_empty() && !n.is_empty()) else {
        return text(StatusCode::BAD_REQUEST, &format!("bad service {rest:?}: use /services/<namespace>/<name>\n"));
    };
    let key = ServiceKey::new(namespace, name);
    let snap = state.snapshots.borrow().clone();
    let Some(entry) = snap.service(&key) else {
        return text(StatusCode::NOT_FOUND, &format!("no service {namespace}/{name}\n"));
    };
    json(&ServiceDump {
        node_name: &state.config.node_name,
        generation: snap.generation,
        service: entry,
        ports: state.proxy.pools.service_health(&key).unwrap_or_default(),
    })
}

//! The admin endpoint's routes: one function per path, each reading what it
//! shows from [`AdminState`].

use bytes::Bytes;
use edgemesh_cache::StateReport;
use edgemesh_core::{NodeEntry, ServiceEntry};
use edgemesh_metrics::Format;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{ACCEPT, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use serde::Serialize;

use super::AdminState;

#[derive(Serialize)]
struct ServicesDump<'a> {
    /// Live or from cache, and how old.
    state: StateReport,
    generation: u64,
    synced: bool,
    count: usize,
    services: Vec<&'a ServiceEntry>,
}

#[derive(Serialize)]
struct NodesDump<'a> {
    generation: u64,
    nodes: Vec<&'a NodeEntry>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct PeersDump {
    /// This node's own peer ID.
    peer_id: String,
    peers: Vec<edgemesh_tunnel::PeerStatus>,
}

pub(super) fn route(state: &AdminState, req: Request<Incoming>) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD && req.uri().path() != "/logging" {
        return text(StatusCode::METHOD_NOT_ALLOWED, "only GET\n");
    }
    match req.uri().path() {
        "/healthz" => text(StatusCode::OK, "ok\n"),
        "/readyz" => match state.not_ready_reason() {
            None => {
                let fallback = state.intercept_fallback.as_ref().map(|why| {
                    format!("; warning: intercept.mode ebpf fell back to nftables (intercept.fallback): {why}")
                });
                let report = state.state_report().describe();
                text(StatusCode::OK, &format!("ready ({report}){}\n", fallback.unwrap_or_default()))
            }
            Some(why) => text(StatusCode::SERVICE_UNAVAILABLE, &format!("not ready: {why}\n")),
        },
        "/services" => {
            let snap = state.snapshots.borrow().clone();
            let dump = ServicesDump {
                state: state.state_report(),
                generation: snap.generation,
                synced: snap.synced,
                count: snap.len(),
                services: snap.services().map(|s| &**s).collect(),
            };
            json(&dump)
        }
        p if p.starts_with("/services/") => super::service::route(state, &p["/services/".len()..]),
        "/nodes" => {
            let snap = state.snapshots.borrow().clone();
            json(&NodesDump { generation: snap.generation, nodes: snap.nodes().map(|n| &**n).collect() })
        }
        "/gateway" => match &state.gateway {
            Some(reports) => json(&**reports.load()),
            None => text(StatusCode::NOT_FOUND, "the edge gateway is off (gateway.enabled)\n"),
        },
        "/peers" => match &state.tunnel {
            Some(tunnel) => json(&PeersDump { peer_id: tunnel.peer_id().to_string(), peers: tunnel.peers() }),
            None => text(StatusCode::NOT_FOUND, "the tunnel is off (tunnel.enabled)\n"),
        },
        "/config" => json(&*state.lifecycle.config()),
        "/reload" => super::reload::route(state),
        "/logging" => super::logging::route(state, &req),
        "/metrics" => metrics(state, &req),
        "/topology" => json(&super::topology::of(state)),
        "/ui" => super::ui::page(),
        _ => text(
            StatusCode::NOT_FOUND,
            "not found; try /healthz, /readyz, /services, /services/<ns>/<name>, /nodes, /peers, /config, /reload, /logging, \
             /metrics, /topology, /ui\n",
        ),
    }
}

fn metrics(state: &AdminState, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let format = Format::negotiate(req.headers().get(ACCEPT).and_then(|v| v.to_str().ok()));
    let mut resp = Response::new(Full::new(Bytes::from(state.metrics.encode(format))));
    resp.headers_mut().insert(CONTENT_TYPE, format.content_type().parse().expect("static header"));
    resp
}

pub(super) fn text(status: StatusCode, body: &str) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body.to_owned())));
    *resp.status_mut() = status;
    resp.headers_mut().insert(CONTENT_TYPE, "text/plain; charset=utf-8".parse().expect("static header"));
    resp
}

pub(super) fn json<T: Serialize>(value: &T) -> Response<Full<Bytes>> {
    match serde_json::to_vec_pretty(value) {
        Ok(mut body) => {
            body.push(b'\n');
            let mut resp = Response::new(Full::new(Bytes::from(body)));
            resp.headers_mut().insert(CONTENT_TYPE, "application/json".parse().expect("static header"));
            resp
        }
        Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, &format!("cannot encode JSON: {e}\n")),
    }
}

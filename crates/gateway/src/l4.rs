//! Connections that are not HTTP requests: `TLS` `Passthrough` listeners
//! (TLSRoute: the ClientHello's server name picks the route, the TLS bytes
//! go through untouched) and `TCP` listeners (TCPRoute: every connection
//! to the port). The route's weighted backends pick a Service, and the
//! connection is forwarded by the agent's L4 path
//! ([`edgemesh_proxy::connection::forward`]: the Service's pool, its pick
//! and passive health, a local dial spliced or a tunnel stream).

use std::net::SocketAddr;
use std::sync::Arc;

use edgemesh_proxy::L4Dial;
use tokio::net::TcpStream;

use crate::backend::{Backends, Target};
use crate::compile::ObjectRef;
use crate::hostname::Hostname;
use crate::serve::{GatewayRouting, ListenerContext};
use crate::table::Order;

/// What a TLSRoute's or TCPRoute's rule does: its weighted backends.
#[derive(Debug)]
pub struct L4Action {
    pub route: ObjectRef,
    pub rule: usize,
    pub backends: Backends,
}

#[derive(Debug)]
struct Entry {
    host: Hostname,
    order: Order,
    action: Arc<L4Action>,
}

/// One TLS passthrough or TCP listener port's routes.
#[derive(Debug, Default)]
pub struct L4Table {
    entries: Vec<Entry>,
}

impl L4Table {
    /// Adds a rule for `host` ([`Hostname::Any`] for TCP); call
    /// [`L4Table::sort`] once all are in.
    pub fn push(&mut self, host: Hostname, order: Order, action: Arc<L4Action>) {
        self.entries.push(Entry { host, order, action });
    }

    /// The most specific hostname first, then the oldest route, then
    /// `namespace/name`, then rule order (the HTTPRoute tie-breaks).
    pub fn sort(&mut self) {
        self.entries.sort_by(|a, b| b.host.specificity(&a.host).then_with(|| a.order.cmp(&b.order)));
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The rule for a connection whose ClientHello names `sni` (None: no
    /// name, or a TCP connection).
    pub fn route(&self, sni: Option<&str>) -> Option<&Arc<L4Action>> {
        let entry = self.entries.iter().find(|e| match sni {
            Some(name) => e.host.matches(name),
            None => e.host == Hostname::Any,
        })?;
        Some(&entry.action)
    }

    /// The order entries are tried in, as `host route#rule`.
    pub fn describe(&self) -> Vec<String> {
        self.entries.iter().map(|e| format!("{} {}#{}", e.host, e.order.route, e.order.rule)).collect()
    }
}

/// Closes `client` with a reset: the client sees a refusal, not an
/// orderly end that could pass for a complete answer.
fn refuse(client: TcpStream) {
    let _ = socket2::SockRef::from(&client).set_linger(Some(std::time::Duration::ZERO));
}

/// Serves one connection to a TLS passthrough listener.
pub(crate) async fn passthrough(client: TcpStream, peer: SocketAddr, ctx: ListenerContext, routing: GatewayRouting) {
    let port = ctx.pool.port;
    let sni = match tokio::time::timeout(routing.handshake_timeout, crate::sni::peek_server_name(&client)).await {
        Ok(Ok(sni)) => sni,
        Ok(Err(why)) => {
            tracing::debug!(%peer, port, %why, "TLS passthrough: not a ClientHello; connection refused");
            return refuse(client);
        }
        Err(_) => {
            tracing::debug!(%peer, port, "TLS passthrough: no complete ClientHello in time; connection refused");
            return refuse(client);
        }
    };
    let action = routing.routes.load().l4.get(&port).and_then(|t| t.route(sni.as_deref())).cloned();
    let Some(action) = action else {
        tracing::debug!(%peer, port, ?sni, "TLS passthrough: no TLSRoute for the server name");
        return refuse(client);
    };
    forward(client, peer, &ctx, &routing, &action).await;
}

/// Serves one connection to a TCP listener.
pub(crate) async fn tcp(client: TcpStream, peer: SocketAddr, ctx: ListenerContext, routing: GatewayRouting) {
    let port = ctx.pool.port;
    let action = routing.routes.load().l4.get(&port).and_then(|t| t.route(None)).cloned();
    let Some(action) = action else {
        tracing::debug!(%peer, port, "TCP listener: no TCPRoute attached");
        return refuse(client);
    };
    forward(client, peer, &ctx, &routing, &action).await;
}

/// Picks the rule's backend and forwards through its pool.
async fn forward(
    client: TcpStream,
    peer: SocketAddr,
    ctx: &ListenerContext,
    routing: &GatewayRouting,
    action: &L4Action,
) {
    let route =
        || format!("{} {}/{} rule {}", action.route.kind, action.route.namespace, action.route.name, action.rule);
    let service = match action.backends.pick() {
        Some(Target::Service(service)) => service,
        Some(Target::Invalid(why)) => {
            tracing::debug!(%peer, route = %route(), %why, "connection refused: the backendRef does not resolve");
            return refuse(client);
        }
        None => {
            tracing::debug!(%peer, route = %route(), "connection refused: the rule has no backend");
            return refuse(client);
        }
    };
    let Some((pool, reach)) = routing.pools.pool(service) else {
        tracing::debug!(%peer, route = %route(), %service, "connection refused: this agent serves no such Service port");
        return refuse(client);
    };
    let dial = L4Dial {
        reach,
        connect_timeout: ctx.connect_timeout,
        upstream_mark: ctx.upstream_mark,
        idle_timeout: edgemesh_proxy::DEFAULT_IDLE_TIMEOUT,
        max_duration: std::time::Duration::ZERO,
    };
    edgemesh_proxy::connection::forward(client, peer.ip(), &pool, &dial).await;
}

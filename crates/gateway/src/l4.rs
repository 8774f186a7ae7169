//! Connections that are not HTTP requests: `TLS` `Passthrough` listeners
//! (TLSRoute: the ClientHello's server name picks the route, the TLS bytes
//! go through untouched) and `TCP` listeners (TCPRoute: every connection
//! to the port). The route's weighted backends pick a Service, and the
//! connection is forwarded by the agent's L4 path
//! ([`edgemesh_proxy::connection::forward`]: the Service's pool, its pick
//! and passive health, a local dial spliced or a tunnel stream).
//!
//! Drain ([`L4Connections`]): a connection goes on for as long as the
//! route that took it would still take it. When a compile takes that away
//! (the route deleted or detached, its hostnames no longer covering the
//! connection's server name, another route now taking it, the listener or
//! its port gone), the connection gets a grace period (the agent's
//! `drainTimeout`, as at SIGTERM) to end by itself, and is then closed;
//! the port refuses new connections for that route at once (a port still
//! served resets them; a port gone is closed). A route restored within the
//! grace keeps its connections. Changes to a route's backends do not
//! touch its open connections (as endpoint changes do not).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use edgemesh_proxy::L4Dial;
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

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
    forward(client, peer, &ctx, &routing, &action, sni).await;
}

/// Serves one connection to a TCP listener.
pub(crate) async fn tcp(client: TcpStream, peer: SocketAddr, ctx: ListenerContext, routing: GatewayRouting) {
    let port = ctx.pool.port;
    let action = routing.routes.load().l4.get(&port).and_then(|t| t.route(None)).cloned();
    let Some(action) = action else {
        tracing::debug!(%peer, port, "TCP listener: no TCPRoute attached");
        return refuse(client);
    };
    forward(client, peer, &ctx, &routing, &action, None).await;
}

/// Picks the rule's backend and forwards through its pool, until the
/// connection ends or its drain closes it.
async fn forward(
    client: TcpStream,
    peer: SocketAddr,
    ctx: &ListenerContext,
    routing: &GatewayRouting,
    action: &Arc<L4Action>,
    sni: Option<String>,
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
    let open = routing.l4.open(sni.map(String::into_boxed_str), action.clone());
    // A compile that took the route between the lookup above and this
    // registration was swept before the connection was there to see: the
    // connection is refused as a new one without its route is. (Registered
    // first, then checked: a later compile's sweep finds it.)
    let port = ctx.pool.port;
    let sni = open.sni();
    if routing.routes.load().l4.get(&port).and_then(|t| t.route(sni)).is_none_or(|a| a.route != action.route) {
        tracing::debug!(%peer, route = %route(), "connection refused: its route went as it was accepted");
        return refuse(client);
    }
    let forwarded = edgemesh_proxy::connection::forward(client, peer.ip(), &pool, &dial);
    if until_closed(forwarded, &open.close).await.is_none() {
        tracing::debug!(%peer, route = %route(), "connection closed: its route went and the drain grace is over");
    }
}

/// Runs `work` until it ends (Some) or `close` is cancelled (None: `work`
/// dropped, which closes its sockets). The token is polled once, which
/// registers the task's waker with it; later wake-ups read its flag only.
async fn until_closed<T>(work: impl std::future::Future<Output = T>, close: &CancellationToken) -> Option<T> {
    let cancelled = close.cancelled();
    tokio::pin!(work, cancelled);
    let mut registered = false;
    std::future::poll_fn(|cx| {
        if !registered {
            registered = true;
            if cancelled.as_mut().poll(cx).is_ready() {
                return std::task::Poll::Ready(None);
            }
        } else if close.is_cancelled() {
            return std::task::Poll::Ready(None);
        }
        work.as_mut().poll(cx).map(Some)
    })
    .await
}

/// A port's open L4 connections, each with the route that took it and the
/// server name it was routed by, for the drain (see the module docs).
#[derive(Debug)]
pub struct L4Connections {
    port: u16,
    inner: Mutex<Open>,
}

#[derive(Debug, Default)]
struct Open {
    next_id: u64,
    /// Sweeps so far: a drain's mark.
    sweeps: u64,
    connections: HashMap<u64, Connection>,
}

#[derive(Debug)]
struct Connection {
    sni: Option<Box<str>>,
    action: Arc<L4Action>,
    close: CancellationToken,
    /// The sweep that found it without its route (None: it has it).
    draining: Option<u64>,
}

/// One registered connection; unregisters it when dropped.
pub(crate) struct Registered {
    connections: Arc<L4Connections>,
    id: u64,
    sni: Option<Box<str>>,
    /// Cancelled when its drain's grace is over.
    pub(crate) close: CancellationToken,
}

impl Registered {
    /// The server name it was routed by.
    pub(crate) fn sni(&self) -> Option<&str> {
        self.sni.as_deref()
    }
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.connections.lock().connections.remove(&self.id);
    }
}

impl L4Connections {
    /// The connections of listener port `port`.
    pub fn new(port: u16) -> Self {
        Self { port, inner: Mutex::default() }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Open> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Registers a connection that `action` took, by server name `sni`.
    pub(crate) fn open(self: &Arc<Self>, sni: Option<Box<str>>, action: Arc<L4Action>) -> Registered {
        let close = CancellationToken::new();
        let mut open = self.lock();
        let id = open.next_id;
        open.next_id += 1;
        open.connections.insert(id, Connection { sni: sni.clone(), action, close: close.clone(), draining: None });
        Registered { connections: self.clone(), id, sni, close }
    }

    /// Connections open now.
    pub fn len(&self) -> usize {
        self.lock().connections.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Checks every connection against `table` (the port's routes in the
    /// current compile; None: the port serves none). Those whose route no
    /// longer takes them start draining: they are closed `grace` from now
    /// unless a later sweep finds their route back. Returns how many
    /// started draining. Runs on a tokio runtime (the grace's timer).
    pub fn sweep(self: &Arc<Self>, table: Option<&L4Table>, grace: Duration) -> usize {
        let mut open = self.lock();
        open.sweeps += 1;
        let mark = open.sweeps;
        let mut started = 0;
        for connection in open.connections.values_mut() {
            let routed = table.and_then(|t| t.route(connection.sni.as_deref()));
            if routed.is_some_and(|a| a.route == connection.action.route) {
                connection.draining = None;
            } else if connection.draining.is_none() {
                connection.draining = Some(mark);
                started += 1;
            }
        }
        drop(open);
        if started > 0 {
            tracing::info!(
                port = self.port,
                connections = started,
                ?grace,
                "gateway L4 connections lost their route (route or listener removed): they may finish within the grace, then are closed"
            );
            let connections = self.clone();
            tokio::spawn(async move {
                tokio::time::sleep(grace).await;
                connections.close_drained(mark);
            });
        }
        started
    }

    /// Closes the connections the sweep `mark` found without their route
    /// and no later one found with it.
    fn close_drained(&self, mark: u64) {
        let open = self.lock();
        let mut closed = 0;
        for connection in open.connections.values().filter(|c| c.draining == Some(mark)) {
            connection.close.cancel();
            closed += 1;
        }
        if closed > 0 {
            tracing::info!(
                port = self.port,
                closed,
                "gateway L4 connections closed: their route went and the drain grace is over"
            );
        }
    }
}

//! The listener: a task per client, bounded in number, whose handshake must
//! finish within `socks.handshakeTimeout`; then the connect (bounded by the
//! connect timeout) and the copy both ways until either side closes.

use std::io;
use std::net::{Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use edgemesh_core::RegistryHandle;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::handshake::{self, HandshakeError, Reply};
use crate::metrics::SocksMetrics;
use crate::route::{Names, Route, route};
use crate::{Credentials, HostIo, NodeHosts, SocksConfig};

/// What the entry needs from the rest of the agent.
pub struct SocksEnv {
    pub node_name: String,
    /// The cluster domain (`dns.clusterDomain`).
    pub cluster_domain: String,
    pub snapshots: RegistryHandle,
    /// Other nodes' hosts; `None` without the tunnel (only this node's host
    /// and services are reachable).
    pub hosts: Option<Arc<dyn NodeHosts>>,
    /// Bound on connecting to a host port or a service address.
    pub connect_timeout: Duration,
}

/// The bound SOCKS5 entry, not yet serving.
pub struct SocksServer {
    listener: TcpListener,
    shared: Arc<Shared>,
}

struct Shared {
    config: SocksConfig,
    credentials: Option<Credentials>,
    env: SocksEnv,
    cluster_domain: String,
    metrics: SocksMetrics,
}

/// Why the entry cannot start.
#[derive(Debug, thiserror::Error)]
pub enum SocksError {
    #[error(transparent)]
    Credentials(#[from] crate::CredentialsError),
    #[error("cannot listen for SOCKS5 clients on {addr} (socks.listen): {source}")]
    Bind { addr: SocketAddr, source: io::Error },
}

impl SocksServer {
    /// Reads the credentials file (if any) and binds `listen`.
    pub async fn bind(config: SocksConfig, listen: SocketAddr, env: SocksEnv) -> Result<Self, SocksError> {
        let credentials = config.credentials_file.as_deref().map(Credentials::from_file).transpose()?;
        let listener = TcpListener::bind(listen).await.map_err(|source| SocksError::Bind { addr: listen, source })?;
        let cluster_domain = env.cluster_domain.trim_matches('.').to_ascii_lowercase();
        let shared = Shared { config, credentials, env, cluster_domain, metrics: SocksMetrics::default() };
        Ok(Self { listener, shared: Arc::new(shared) })
    }

    /// Registers `edgemesh_socks_*` into `registry` (the agent's `edgemesh_` one).
    pub fn with_metrics(mut self, registry: &mut edgemesh_metrics::Registry) -> Self {
        if let Some(shared) = Arc::get_mut(&mut self.shared) {
            shared.metrics = SocksMetrics::register(registry);
        }
        self
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves clients until `stop`; open connections are dropped then.
    pub async fn run(self, stop: CancellationToken) {
        let limit = Arc::new(Semaphore::new(self.shared.config.max_connections));
        let tracker = TaskTracker::new();
        let mut limit_logged = false;
        tracing::info!(
            listen = %self.listener.local_addr().map_or_else(|e| e.to_string(), |a| a.to_string()),
            allowed_ports = ?self.shared.config.allowed_ports,
            logins = self.shared.credentials.as_ref().map_or(0, Credentials::len),
            "SOCKS5 entry listening"
        );
        loop {
            let (client, peer) = tokio::select! {
                _ = stop.cancelled() => break,
                accepted = self.listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        // Out of descriptors and the like: pause rather than spin.
                        tracing::warn!(error = %e, "SOCKS5 accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
            };
            let Ok(permit) = limit.clone().try_acquire_owned() else {
                if !limit_logged {
                    tracing::warn!(
                        max = self.shared.config.max_connections,
                        "socks.maxConnections reached: new clients are closed"
                    );
                    limit_logged = true;
                }
                self.shared.metrics.count("limit");
                continue;
            };
            limit_logged = false;
            let (shared, stop) = (self.shared.clone(), stop.clone());
            tracker.spawn(async move {
                let _permit = permit;
                tokio::select! {
                    _ = stop.cancelled() => {}
                    _ = serve(&shared, client, peer) => {}
                }
            });
        }
        tracker.close();
        tracker.wait().await;
    }
}

/// One client, start to end.
async fn serve(shared: &Shared, mut client: TcpStream, peer: SocketAddr) {
    let _ = client.set_nodelay(true);
    let _active = ActiveGuard::new(&shared.metrics);
    let destination = match timeout(shared.config.handshake_timeout, handshake(shared, &mut client)).await {
        Ok(Ok(destination)) => destination,
        Ok(Err(Refusal { result, reason })) => {
            tracing::debug!(%peer, %reason, "SOCKS5 client refused");
            shared.metrics.count(result);
            return;
        }
        Err(_) => {
            tracing::debug!(%peer, timeout = ?shared.config.handshake_timeout, "SOCKS5 handshake too slow: closed");
            shared.metrics.count("malformed");
            return;
        }
    };
    let (upstream, reply) = match connect(shared, &destination).await {
        Ok(upstream) => (Some(upstream), Reply::Succeeded),
        Err(reply) => (None, reply),
    };
    shared.metrics.count(reply.label());
    if client.write_all(&reply.encode()).await.is_err() {
        return;
    }
    let Some(mut upstream) = upstream else {
        tracing::debug!(%peer, destination = %destination, ?reply, "SOCKS5 CONNECT refused");
        return;
    };
    match tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
        Ok((sent, received)) => {
            tracing::trace!(%peer, destination = %destination, sent, received, "SOCKS5 connection closed")
        }
        Err(e) => {
            tracing::debug!(%peer, destination = %destination, error = %e, "SOCKS5 connection ended with an error")
        }
    }
}

/// A handshake that ended without a request to connect, and its metric label.
struct Refusal {
    result: &'static str,
    reason: String,
}

impl From<HandshakeError> for Refusal {
    fn from(e: HandshakeError) -> Self {
        Refusal { result: "malformed", reason: e.to_string() }
    }
}

/// Greeting, authentication, request; replies to whatever it refuses.
async fn handshake<S: AsyncRead + AsyncWrite + Unpin>(
    shared: &Shared,
    client: &mut S,
) -> Result<handshake::Destination, Refusal> {
    let methods = handshake::read_greeting(client).await?;
    let wanted = if shared.credentials.is_some() { handshake::METHOD_PASSWORD } else { handshake::METHOD_NONE };
    if !methods.contains(&wanted) {
        let _ = client.write_all(&[handshake::VERSION, handshake::METHOD_UNACCEPTABLE]).await;
        return Err(Refusal { result: "auth", reason: format!("offers methods {methods:?}, not {wanted}") });
    }
    write(client, &[handshake::VERSION, wanted]).await?;
    if let Some(credentials) = &shared.credentials {
        let login = handshake::read_login(client).await?;
        let ok = credentials.accepts(&login);
        write(client, &[handshake::AUTH_VERSION, if ok { 0 } else { 1 }]).await?;
        if !ok {
            return Err(Refusal {
                result: "auth",
                reason: format!("wrong login for user {:?}", String::from_utf8_lossy(&login.user)),
            });
        }
    }
    match handshake::read_request(client).await {
        Ok(request) => Ok(request.destination),
        Err(e) => {
            if let Some(reply) = e.reply() {
                let _ = client.write_all(&reply.encode()).await;
                return Err(Refusal { result: reply.label(), reason: e.to_string() });
            }
            Err(e.into())
        }
    }
}

async fn write<S: AsyncWrite + Unpin>(client: &mut S, bytes: &[u8]) -> Result<(), Refusal> {
    client.write_all(bytes).await.map_err(|e| Refusal::from(HandshakeError::Io(e)))
}

/// Connects to where `destination` routes, or says which reply refuses it.
async fn connect(shared: &Shared, destination: &handshake::Destination) -> Result<Box<dyn HostIo>, Reply> {
    let route = {
        let hosts = shared.env.hosts.as_deref();
        let is_node = |name: &str| hosts.is_some_and(|h| h.is_node(name));
        let names = Names {
            this_node: &shared.env.node_name,
            cluster_domain: &shared.cluster_domain,
            allowed_ports: &shared.config.allowed_ports,
            is_node: &is_node,
        };
        route(destination, &shared.env.snapshots.borrow(), &names)
    };
    let connect_timeout = shared.env.connect_timeout;
    let opened = match route {
        Route::ThisHost(port) => timeout(connect_timeout, this_host(port)).await,
        Route::NodeHost { node, port } => {
            let hosts = shared.env.hosts.as_ref().ok_or(Reply::HostUnreachable)?;
            // The tunnel bounds its own wait (dial, relay, the remote's connect).
            Ok(hosts.open(&node, port).await)
        }
        Route::Service { addr, .. } => {
            timeout(connect_timeout, async { TcpStream::connect(addr).await.map(|s| Box::new(s) as Box<dyn HostIo>) })
                .await
        }
        Route::NotAllowed => return Err(Reply::NotAllowed),
        Route::NoSuchPort(_) => return Err(Reply::ConnectionRefused),
        Route::Unknown => return Err(Reply::HostUnreachable),
    };
    match opened {
        Ok(Ok(stream)) => Ok(stream),
        Ok(Err(e)) => {
            tracing::debug!(%destination, error = %e, "SOCKS5 connect failed");
            Err(reply_for(&e))
        }
        Err(_) => Err(Reply::HostUnreachable),
    }
}

/// A port of this host: IPv4 loopback, else IPv6 loopback (a server may
/// listen on `::1` only).
async fn this_host(port: u16) -> io::Result<Box<dyn HostIo>> {
    let stream = match TcpStream::connect((std::net::Ipv4Addr::LOCALHOST, port)).await {
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
            TcpStream::connect((Ipv6Addr::LOCALHOST, port)).await.map_err(|_| e)?
        }
        other => other?,
    };
    Ok(Box::new(stream))
}

fn reply_for(e: &io::Error) -> Reply {
    match e.kind() {
        io::ErrorKind::PermissionDenied => Reply::NotAllowed,
        io::ErrorKind::ConnectionRefused | io::ErrorKind::ConnectionReset => Reply::ConnectionRefused,
        io::ErrorKind::NetworkUnreachable | io::ErrorKind::NetworkDown => Reply::NetworkUnreachable,
        io::ErrorKind::HostUnreachable
        | io::ErrorKind::TimedOut
        | io::ErrorKind::NotConnected
        | io::ErrorKind::AddrNotAvailable => Reply::HostUnreachable,
        _ => Reply::GeneralFailure,
    }
}

/// Holds one on `edgemesh_socks_connections_active`.
struct ActiveGuard<'a>(&'a SocksMetrics);

impl<'a> ActiveGuard<'a> {
    fn new(metrics: &'a SocksMetrics) -> Self {
        metrics.active.inc();
        Self(metrics)
    }
}

impl Drop for ActiveGuard<'_> {
    fn drop(&mut self) {
        self.0.active.dec();
    }
}

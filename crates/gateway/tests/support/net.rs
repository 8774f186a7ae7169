//! A whole gateway on loopback, as the agent runs it (listeners reconciled
//! from the compiled objects, the HTTP front and dispatcher, the L4 path),
//! and what surrounds it in tests: a test CA, certificates in memory or in
//! files, HTTP, TLS and TCP backends, pools of Service ports.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use edgemesh_core::{AppProtocol, Backend, LbStrategy, ServiceKey};
use edgemesh_gateway::backend::ServiceRef;
use edgemesh_gateway::listeners::{GatewayListeners, ListenerSettings};
use edgemesh_gateway::metrics::GatewayTlsMetrics;
use edgemesh_gateway::schema::{Gateway, GrpcRoute, HttpRoute, ReferenceGrant, TcpRoute, TlsRoute};
use edgemesh_gateway::tls::{CertificatePem, CertificateStore};
use edgemesh_gateway::{Compiled, GatewayUpstream, Objects, ServicePools, compile_objects};
use edgemesh_http::{Dispatcher, HttpConfig, HttpProxy};
use edgemesh_metrics::Registry;
use edgemesh_proxy::Reach;
use edgemesh_proxy::pool::{Pool, Targets};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use rustls::pki_types::{CertificateDer, ServerName};
use serde::Deserialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::Services;

/// Every object of a multi-document YAML file, by kind.
#[derive(Default)]
pub struct Loaded {
    pub gateways: Vec<Gateway>,
    pub http: Vec<HttpRoute>,
    pub grpc: Vec<GrpcRoute>,
    pub tls: Vec<TlsRoute>,
    pub tcp: Vec<TcpRoute>,
    pub grants: Vec<ReferenceGrant>,
}

#[derive(Deserialize)]
struct Kind {
    kind: String,
}

impl Loaded {
    /// Each document read as the kind it names (kinds whose fields
    /// differ, such as GRPCRoute's and HTTPRoute's `method`, cannot be
    /// read as one another).
    pub fn parse(yaml: &str) -> Loaded {
        let mut out = Loaded::default();
        let mut documents = vec![String::new()];
        for line in yaml.lines() {
            if line.trim_end() == "---" {
                documents.push(String::new());
            } else {
                let last = documents.last_mut().unwrap();
                last.push_str(line);
                last.push('\n');
            }
        }
        for doc in documents.iter().filter(|d| !d.trim().is_empty()) {
            let kind: Kind = serde_saphyr::from_str(doc).unwrap();
            match kind.kind.as_str() {
                "Gateway" => out.gateways.push(serde_saphyr::from_str(doc).unwrap()),
                "HTTPRoute" => out.http.push(serde_saphyr::from_str(doc).unwrap()),
                "GRPCRoute" => out.grpc.push(serde_saphyr::from_str(doc).unwrap()),
                "TLSRoute" => out.tls.push(serde_saphyr::from_str(doc).unwrap()),
                "TCPRoute" => out.tcp.push(serde_saphyr::from_str(doc).unwrap()),
                "ReferenceGrant" => out.grants.push(serde_saphyr::from_str(doc).unwrap()),
                other => panic!("kind {other}"),
            }
        }
        out
    }

    /// Compiled for GatewayClass `edgemesh`.
    pub fn compile(&self, services: &[(&str, u16)], certificates: &dyn CertificateStore) -> Compiled {
        let mut known: BTreeMap<String, Vec<u16>> = BTreeMap::new();
        for (service, port) in services {
            known.entry((*service).to_owned()).or_default().push(*port);
        }
        let objects = Objects {
            gateways: &self.gateways,
            http_routes: &self.http,
            grpc_routes: &self.grpc,
            tls_routes: &self.tls,
            tcp_routes: &self.tcp,
            grants: &self.grants,
        };
        compile_objects("edgemesh", &objects, &Services(known), certificates)
    }
}

/// A test certificate authority.
pub struct Ca {
    cert: rcgen::Certificate,
    key: rcgen::KeyPair,
}

/// A certificate the CA issued: its PEM (chain and key) and its DER, to
/// tell which one a server presented.
#[derive(Clone)]
pub struct Issued {
    pub pem: CertificatePem,
    pub der: Vec<u8>,
}

impl Ca {
    pub fn new() -> Ca {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.distinguished_name.push(rcgen::DnType::CommonName, "edgemesh gateway test CA");
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        Ca { cert, key }
    }

    pub fn pem(&self) -> String {
        self.cert.pem()
    }

    /// A certificate for `names` (DNS SANs).
    pub fn issue(&self, names: &[&str]) -> Issued {
        let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
        let mut params = rcgen::CertificateParams::new(names.clone()).unwrap();
        params.distinguished_name.push(rcgen::DnType::CommonName, names[0].clone());
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.cert, &self.key).unwrap();
        let pem = CertificatePem { chain: cert.pem().into_bytes(), key: key.serialize_pem().into_bytes(), ca: None };
        Issued { pem, der: cert.der().to_vec() }
    }

    /// A rustls client trusting this CA only.
    pub fn client(&self) -> tokio_rustls::TlsConnector {
        self.connector(true)
    }

    /// As [`Ca::client`], never resuming a session: every connection is a
    /// full handshake.
    pub fn client_without_resumption(&self) -> tokio_rustls::TlsConnector {
        self.connector(false)
    }

    /// A client config trusting this CA only, offering `alpn`.
    pub fn client_config_with_alpn(&self, alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.cert.der().clone()).unwrap();
        let mut config = rustls::ClientConfig::builder_with_provider(edgemesh_gateway::tls::provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Arc::new(config)
    }

    fn connector(&self, resume: bool) -> tokio_rustls::TlsConnector {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.cert.der().clone()).unwrap();
        let config = rustls::ClientConfig::builder_with_provider(edgemesh_gateway::tls::provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let mut config = config;
        if !resume {
            config.resumption = rustls::client::Resumption::disabled();
        }
        tokio_rustls::TlsConnector::from(Arc::new(config))
    }
}

/// Secrets in memory, changed by tests.
#[derive(Default)]
pub struct MemoryCertificates(pub Mutex<BTreeMap<(String, String), CertificatePem>>);

impl MemoryCertificates {
    pub fn set(&self, namespace: &str, name: &str, pem: CertificatePem) {
        self.0.lock().unwrap().insert((namespace.to_owned(), name.to_owned()), pem);
    }
}

impl CertificateStore for MemoryCertificates {
    fn certificate(&self, namespace: &str, name: &str) -> Result<CertificatePem, String> {
        self.0
            .lock()
            .unwrap()
            .get(&(namespace.to_owned(), name.to_owned()))
            .cloned()
            .ok_or_else(|| "no such Secret".into())
    }
}

/// An HTTP/1.1 backend answering `<name> proto=<x-forwarded-proto> host=<host>`.
pub async fn http_backend(name: &'static str) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { return };
            let service = service_fn(move |req: Request<Incoming>| async move {
                let header = |n: &str| req.headers().get(n).map(|v| v.to_str().unwrap().to_owned()).unwrap_or_default();
                let body = format!("{name} proto={} host={}", header("x-forwarded-proto"), header("host"));
                Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(body))))
            });
            tokio::spawn(hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service));
        }
    });
    addr
}

/// A TCP backend that writes `<name>\n` to each connection, then echoes
/// what it reads until the client closes.
pub async fn tcp_backend(name: &'static str) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else { return };
            tokio::spawn(async move {
                let _ = stream.write_all(format!("{name}\n").as_bytes()).await;
                let mut buf = [0u8; 1024];
                while let Ok(n) = stream.read(&mut buf).await {
                    if n == 0 || stream.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    addr
}

/// A TLS backend (its own certificate) that writes `<name>\n` on each
/// session, then echoes.
pub async fn tls_backend(name: &'static str, cert: &Issued) -> SocketAddr {
    use rustls::pki_types::PrivateKeyDer;
    use rustls::pki_types::pem::PemObject;
    let chain = vec![CertificateDer::from(cert.der.clone())];
    let key = PrivateKeyDer::from_pem_slice(&cert.pem.key).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(edgemesh_gateway::tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { return };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut session) = acceptor.accept(stream).await else { return };
                let _ = session.write_all(format!("{name}\n").as_bytes()).await;
                let _ = session.flush().await;
                let mut buf = [0u8; 1024];
                while let Ok(n) = session.read(&mut buf).await {
                    if n == 0 || session.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                    let _ = session.flush().await;
                }
            });
        }
    });
    addr
}

/// Pools of Service ports, each with one endpoint, and how this node
/// reaches endpoints.
#[derive(Default)]
pub struct StaticPools(pub BTreeMap<ServiceRef, Arc<Pool>>, pub Reach);

impl StaticPools {
    pub fn with(self, namespace: &str, name: &str, port: u16, endpoint: SocketAddr, app: AppProtocol) -> Self {
        self.with_on(namespace, name, port, endpoint, app, None)
    }

    /// As [`StaticPools::with`], the endpoint on node `node` (None: unknown).
    pub fn with_on(
        mut self,
        namespace: &str,
        name: &str,
        port: u16,
        endpoint: SocketAddr,
        app: AppProtocol,
        node: Option<&str>,
    ) -> Self {
        let backend = Backend { addr: endpoint, node_name: node.map(Into::into) };
        let mut targets = Targets::new(LbStrategy::RoundRobin, Arc::from(vec![backend]));
        targets.app_protocol = app;
        let frontend = SocketAddr::from(([127, 0, 0, 1], port));
        let service = ServiceRef { namespace: namespace.into(), name: name.into(), port };
        self.0.insert(service, Arc::new(Pool::new(ServiceKey::new(namespace, name), frontend, targets)));
        self
    }
}

impl ServicePools for StaticPools {
    fn pool(&self, service: &ServiceRef) -> Option<(Arc<Pool>, Reach)> {
        self.0.get(service).map(|p| (p.clone(), self.1.clone()))
    }
}

/// A loopback address of this test process's own (all of 127/8 is
/// local), so that fixed listener ports do not meet another test's.
pub fn own_loopback(salt: u8) -> IpAddr {
    let pid = std::process::id();
    IpAddr::from([127, 100 + (pid % 100) as u8, ((pid / 100) % 250) as u8, 10 + salt])
}

/// The test gateways' TLS handshake timeout.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(2);

/// The test gateways' grace for L4 connections whose route went.
pub const L4_DRAIN: Duration = Duration::from_millis(1500);

/// A running gateway: its compiled objects (swap them to change it) and
/// its listeners.
pub struct RunningGateway {
    pub routes: Arc<ArcSwap<Compiled>>,
    pub listeners: GatewayListeners,
    pub ip: IpAddr,
    /// The dispatcher's and the TLS handshakes' series.
    pub registry: Registry,
}

impl RunningGateway {
    /// Serves `compiled` on `ip` with `pools`, as the agent does.
    pub async fn start(compiled: Compiled, pools: StaticPools, ip: IpAddr) -> RunningGateway {
        Self::start_with(compiled, pools, ip, 0).await
    }

    /// As [`RunningGateway::start`], at most `max_connections` per listener (0: no bound).
    pub async fn start_with(
        compiled: Compiled,
        pools: StaticPools,
        ip: IpAddr,
        max_connections: usize,
    ) -> RunningGateway {
        let pools: Arc<dyn ServicePools> = Arc::new(pools);
        // (Named as the agent's registry names its series.)
        let mut registry = Registry::with_prefix("edgemesh");
        let dispatcher = Dispatcher::new(&HttpConfig::default(), &mut registry);
        let routes = Arc::new(ArcSwap::from_pointee(compiled));
        let upstream = GatewayUpstream::new(routes.clone(), pools.clone(), Arc::new(dispatcher), "http");
        let front = Arc::new(HttpProxy::new(Arc::new(upstream), HttpConfig::default()));
        let settings =
            ListenerSettings { ip, connect_timeout: Duration::from_secs(1), upstream_mark: None, workers: 2 };
        let mut listeners = GatewayListeners::new(settings, front)
            .with_routes(routes.clone(), pools)
            .with_handshake_timeout(HANDSHAKE_TIMEOUT)
            .with_max_connections(max_connections)
            .with_metrics(GatewayTlsMetrics::register(&mut registry))
            .with_l4_drain(|| L4_DRAIN);
        let failed = listeners.reconcile(routes.load().ports.clone()).await;
        assert!(failed.is_empty(), "{failed:?}");
        RunningGateway { routes, listeners, ip, registry }
    }

    /// Swaps in a new compile (as the agent does when objects or
    /// certificates change) and reconciles the listeners.
    pub async fn update(&mut self, compiled: Compiled) {
        self.routes.store(Arc::new(compiled));
        let failed = self.listeners.reconcile(self.routes.load().ports.clone()).await;
        assert!(failed.is_empty(), "{failed:?}");
    }

    pub fn addr(&self, port: u16) -> SocketAddr {
        SocketAddr::new(self.ip, port)
    }

    /// The value of the series `name{labels}` (labels as the text format
    /// writes them) in a scrape of the registry; 0 when it is not there.
    pub fn metric(&self, name: &str, labels: &str) -> f64 {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry).unwrap();
        let series = format!("{name}{{{labels}}} ");
        text.lines().find_map(|l| l.strip_prefix(&series)).map_or(0.0, |v| v.parse().unwrap())
    }

    /// Waits (up to 5 s) until `name{labels}` is `want`: a handshake is
    /// counted when the gateway's side of it ends, which may come after the
    /// client's. The value last read.
    pub async fn metric_reaches(&self, name: &str, labels: &str, want: f64) -> f64 {
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            let value = self.metric(name, labels);
            if value == want || std::time::Instant::now() > deadline {
                return value;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// A TLS session to `addr` for server name `name`; the certificate the
/// server presented (DER).
pub async fn tls_connect(
    connector: &tokio_rustls::TlsConnector,
    addr: SocketAddr,
    name: &str,
) -> std::io::Result<(tokio_rustls::client::TlsStream<TcpStream>, Vec<u8>)> {
    let tcp = TcpStream::connect(addr).await?;
    let session = connector.connect(ServerName::try_from(name.to_owned()).unwrap(), tcp).await?;
    let presented = session.get_ref().1.peer_certificates().and_then(|c| c.first()).map(|c| c.to_vec());
    Ok((session, presented.unwrap_or_default()))
}

/// One HTTP/1.1 GET on `stream` (kept alive); the status and body (which
/// must have a Content-Length).
pub async fn get<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    stream: &mut S,
    host: &str,
    path: &str,
) -> std::io::Result<(u16, String)> {
    stream.write_all(format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n").as_bytes()).await?;
    let mut buf = Vec::new();
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_string();
            let status: u16 = head.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
            let length: usize = head
                .lines()
                .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse().unwrap()))
                .unwrap_or(0);
            while buf.len() < end + 4 + length {
                let mut chunk = [0u8; 4096];
                let n = stream.read(&mut chunk).await?;
                if n == 0 {
                    return Err(std::io::ErrorKind::UnexpectedEof.into());
                }
                buf.extend_from_slice(&chunk[..n]);
            }
            return Ok((status, String::from_utf8_lossy(&buf[end + 4..end + 4 + length]).to_string()));
        }
        let mut chunk = [0u8; 4096];
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Runs curl with `args`; its stdout, and whether it succeeded.
pub async fn curl(args: &[&str]) -> (bool, String) {
    let out = tokio::process::Command::new("curl").args(["-sS", "--max-time", "10"]).args(args).output().await.unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

//! The gateway alone, outside the agent (for trying a listener or a
//! profile without sources or a proxy; bench/gateway.sh measures the
//! agent's own gateway): Gateway API objects from a file, certificates
//! from PEM files, each Service port one endpoint; served as the agent
//! serves them (HTTP front, dispatcher, listeners with routing), on two
//! runtime threads.
//!
//! ```text
//! gateway_serve --objects FILE --listen IP
//!     [--cert NAMESPACE/NAME=CERT.pem,KEY.pem]...
//!     [--service NAMESPACE/NAME:PORT=ADDR[,h2]]...
//! ```

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use edgemesh_core::{AppProtocol, Backend, LbStrategy, ServiceKey};
use edgemesh_gateway::backend::ServiceRef;
use edgemesh_gateway::listeners::{GatewayListeners, ListenerSettings};
use edgemesh_gateway::schema::{Gateway, GrpcRoute, HttpRoute, ReferenceGrant, TcpRoute, TlsRoute};
use edgemesh_gateway::{
    CertificateFile, FileCertificates, GatewayUpstream, Objects, ServiceLookup, ServicePools, compile_objects,
};
use edgemesh_http::{Dispatcher, HttpConfig, HttpProxy};
use edgemesh_metrics::Registry;
use edgemesh_proxy::Reach;
use edgemesh_proxy::pool::{Pool, Targets};

struct Pools(BTreeMap<ServiceRef, Arc<Pool>>);

impl ServicePools for Pools {
    fn pool(&self, service: &ServiceRef) -> Option<(Arc<Pool>, Reach)> {
        self.0.get(service).map(|p| (p.clone(), Reach::direct()))
    }
}

impl ServiceLookup for Pools {
    fn check(&self, namespace: &str, name: &str, port: u16) -> Result<(), String> {
        let key = ServiceRef { namespace: namespace.into(), name: name.into(), port };
        self.0.contains_key(&key).then_some(()).ok_or_else(|| "not given with --service".into())
    }
}

fn fail(why: String) -> ! {
    eprintln!("gateway_serve: {why}");
    std::process::exit(2)
}

fn main() {
    let mut args = std::env::args().skip(1);
    let (mut objects, mut listen, mut certs, mut pools) = (None, None, Vec::new(), BTreeMap::new());
    while let Some(flag) = args.next() {
        let value = args.next().unwrap_or_else(|| fail(format!("{flag} needs a value")));
        match flag.as_str() {
            "--objects" => objects = Some(value),
            "--listen" => listen = Some(value.parse::<IpAddr>().unwrap_or_else(|e| fail(format!("--listen: {e}")))),
            "--cert" => {
                let (secret, files) = value.split_once('=').unwrap_or_else(|| fail(format!("--cert {value}")));
                let (namespace, name) = secret.split_once('/').unwrap_or_else(|| fail(format!("--cert {value}")));
                let (cert, key) = files.split_once(',').unwrap_or_else(|| fail(format!("--cert {value}")));
                certs.push(CertificateFile {
                    namespace: namespace.into(),
                    name: name.into(),
                    cert_file: cert.into(),
                    key_file: key.into(),
                    ca_file: None,
                });
            }
            "--service" => {
                let (service, target) = value.split_once('=').unwrap_or_else(|| fail(format!("--service {value}")));
                let (target, app) = match target.split_once(',') {
                    Some((t, "h2")) => (t, AppProtocol::Http2),
                    _ => (target, AppProtocol::Http1),
                };
                let (namespace, rest) = service.split_once('/').unwrap_or_else(|| fail(format!("--service {value}")));
                let (name, port) = rest.split_once(':').unwrap_or_else(|| fail(format!("--service {value}")));
                let port: u16 = port.parse().unwrap_or_else(|e| fail(format!("--service {value}: {e}")));
                let addr: SocketAddr = target.parse().unwrap_or_else(|e| fail(format!("--service {value}: {e}")));
                let mut targets =
                    Targets::new(LbStrategy::RoundRobin, Arc::from(vec![Backend { addr, node_name: None }]));
                targets.app_protocol = app;
                let pool =
                    Pool::new(ServiceKey::new(namespace, name), SocketAddr::from(([127, 0, 0, 1], port)), targets);
                pools.insert(ServiceRef { namespace: namespace.into(), name: name.into(), port }, Arc::new(pool));
            }
            other => fail(format!("unknown flag {other}")),
        }
    }
    let objects = objects.unwrap_or_else(|| fail("--objects is required".into()));
    let yaml = std::fs::read_to_string(&objects).unwrap_or_else(|e| fail(format!("{objects}: {e}")));
    let pools = Arc::new(Pools(pools));
    let certs = FileCertificates::new(certs);
    let compiled = compile(&yaml, &pools, &certs);
    for (id, status) in &compiled.gateways {
        for l in &status.listeners {
            for c in l.conditions.iter().filter(|c| !c.status && c.kind != "Conflicted") {
                eprintln!("{id} listener {}: {} {}: {}", l.name, c.kind, c.reason, c.message);
            }
        }
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    runtime.block_on(async move {
        let mut registry = Registry::default();
        let dispatcher = Dispatcher::new(&HttpConfig::default(), &mut registry);
        let routes = Arc::new(ArcSwap::from_pointee(compiled));
        let upstream = GatewayUpstream::new(routes.clone(), pools.clone(), Arc::new(dispatcher), "http");
        let front = Arc::new(HttpProxy::new(Arc::new(upstream), HttpConfig::default()));
        let ip = listen.unwrap_or_else(|| fail("--listen is required".into()));
        let settings =
            ListenerSettings { ip, connect_timeout: Duration::from_secs(2), upstream_mark: None, workers: 0 };
        let mut listeners = GatewayListeners::new(settings, front).with_routes(routes.clone(), pools);
        let failed = listeners.reconcile(routes.load().ports.clone()).await;
        if !failed.is_empty() {
            fail(format!("{failed:?}"));
        }
        eprintln!("gateway_serve: serving {:?}", listeners.bound());
        let _ = tokio::signal::ctrl_c().await;
    });
}

/// Every document of `yaml` read as the kind it names, compiled.
fn compile(yaml: &str, pools: &Pools, certs: &FileCertificates) -> edgemesh_gateway::Compiled {
    #[derive(serde::Deserialize)]
    struct Kind {
        kind: String,
    }
    let mut gateways: Vec<Gateway> = Vec::new();
    let mut http: Vec<HttpRoute> = Vec::new();
    let mut grpc: Vec<GrpcRoute> = Vec::new();
    let mut tls: Vec<TlsRoute> = Vec::new();
    let mut tcp: Vec<TcpRoute> = Vec::new();
    let mut grants: Vec<ReferenceGrant> = Vec::new();
    for doc in yaml.split("\n---\n").filter(|d| !d.trim().is_empty()) {
        let kind: Kind = parse(doc);
        match kind.kind.as_str() {
            "Gateway" => gateways.push(parse(doc)),
            "HTTPRoute" => http.push(parse(doc)),
            "GRPCRoute" => grpc.push(parse(doc)),
            "TLSRoute" => tls.push(parse(doc)),
            "TCPRoute" => tcp.push(parse(doc)),
            "ReferenceGrant" => grants.push(parse(doc)),
            other => fail(format!("objects: kind {other} is not read")),
        }
    }
    let objects = Objects {
        gateways: &gateways,
        http_routes: &http,
        grpc_routes: &grpc,
        tls_routes: &tls,
        tcp_routes: &tcp,
        grants: &grants,
    };
    compile_objects("edgemesh", &objects, pools, certs)
}

fn parse<T: serde::de::DeserializeOwned>(doc: &str) -> T {
    serde_saphyr::from_str(doc).unwrap_or_else(|e| fail(format!("objects: {e}")))
}

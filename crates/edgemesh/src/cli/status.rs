//! `edgemesh status`: asks a running agent's admin endpoint what it serves
//! and prints it as kubectl-like tables, or as one JSON/YAML document.
//!
//! - `client`: HTTP GETs to the admin endpoint.
//! - `report`: `edgemesh status`: services, peers, DNS counters, source.
//! - `service`: `edgemesh status service NS/NAME`: one service's endpoints
//!   with their passive health.
//! - `gateway`: `edgemesh status gateway`: the edge gateway's ports,
//!   Gateways, listeners and routes with their conditions.
//! - `metrics`: the DNS counters, read from `/metrics`.
//! - `table`: the table layout.

mod client;
mod gateway;
mod metrics;
mod report;
mod service;
mod table;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand, ValueEnum};
use hyper::StatusCode;
use serde::Serialize;

use self::client::AdminClient;
use self::metrics::DnsCounters;
use self::report::{Overview, PeerDoc, PeerRow, ServiceRow, ServicesDoc, SourceStatus};
use self::service::{ServiceDetail, ServiceDetailDoc};
use crate::config::{AdminConfig, Config};

/// Flags of `edgemesh status`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// The agent's admin endpoint (host:port). Default: admin.listen of
    /// --config, else 127.0.0.1:15020.
    #[arg(long, value_name = "ADDR", global = true)]
    pub admin: Option<String>,

    /// The agent's config file, for its admin address.
    #[arg(long, short = 'c', value_name = "FILE", global = true)]
    pub config: Option<PathBuf>,

    /// Output format.
    #[arg(long, short = 'o', value_enum, default_value_t = Output::Table, global = true)]
    pub output: Output,

    #[command(subcommand)]
    pub what: Option<StatusCommand>,
}

#[derive(Debug, Subcommand)]
pub enum StatusCommand {
    /// One service, with each endpoint's node, readiness and passive health
    /// (ejected until when, consecutive failures).
    Service {
        /// The service, as NAMESPACE/NAME.
        #[arg(value_name = "NS/NAME")]
        service: String,
    },
    /// The edge gateway: its ports, each Gateway and listener, each route
    /// and its parents, with their Accepted/Programmed/ResolvedRefs
    /// conditions and what is wrong.
    Gateway,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Table,
    Json,
    Yaml,
}

/// Why `edgemesh status` printed nothing useful.
#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    #[error(
        "cannot reach the agent's admin endpoint at {addr} ({source}); is the agent running? --admin ADDR sets the address"
    )]
    Unreachable { addr: String, source: std::io::Error },
    #[error("the agent's admin endpoint at {addr} did not answer {path} within 5 s")]
    Timeout { addr: String, path: String },
    #[error("the connection to the admin endpoint at {addr} broke during {path}: {reason}")]
    Broken { addr: String, path: String, reason: String },
    #[error("{path} answered {status}: {body}")]
    Http { path: String, status: StatusCode, body: String },
    #[error("cannot read the answer to {path}: {reason}")]
    Decode { path: String, reason: String },
    #[error("no service {0}; `edgemesh status` lists them")]
    NoService(String),
    #[error("bad service name {0:?}: give it as NAMESPACE/NAME")]
    BadName(String),
    #[error("{0}")]
    Config(#[from] crate::config::ConfigError),
    #[error("cannot encode the output: {0}")]
    Encode(String),
}

impl StatusArgs {
    /// The admin endpoint to ask: `--admin`, else the config file's, else
    /// the default; an unspecified listen address is asked on loopback.
    pub fn admin_addr(&self) -> Result<String, StatusError> {
        if let Some(addr) = &self.admin {
            return Ok(addr.clone());
        }
        let listen = match &self.config {
            Some(file) => Config::from_file(file)?.admin.listen,
            None => AdminConfig::default().listen,
        };
        Ok(loopback_if_unspecified(listen).to_string())
    }
}

fn loopback_if_unspecified(mut addr: SocketAddr) -> SocketAddr {
    if addr.ip().is_unspecified() {
        addr.set_ip(if addr.is_ipv6() {
            std::net::Ipv6Addr::LOCALHOST.into()
        } else {
            std::net::Ipv4Addr::LOCALHOST.into()
        });
    }
    addr
}

/// Runs `edgemesh status`; errors are printed on stderr, exit code 1.
pub fn run(args: &StatusArgs) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("edgemesh: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let printed = runtime.block_on(async {
        let client = AdminClient { addr: args.admin_addr()? };
        match &args.what {
            None => print(&overview(&client).await?, args.output, Overview::render),
            Some(StatusCommand::Service { service }) => {
                print(&service_detail(&client, service).await?, args.output, ServiceDetail::render)
            }
            Some(StatusCommand::Gateway) => {
                let doc: gateway::GatewayDoc = match client.get("/gateway").await? {
                    (StatusCode::OK, body) => serde_json::from_str(&body)
                        .map_err(|e| StatusError::Decode { path: "/gateway".into(), reason: e.to_string() })?,
                    (status, body) => {
                        return Err(StatusError::Http {
                            path: "/gateway".into(),
                            status,
                            body: body.trim().to_owned(),
                        });
                    }
                };
                print(&doc, args.output, gateway::GatewayDoc::render)
            }
        }
    });
    match printed {
        Ok(text) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("edgemesh: {e}");
            ExitCode::FAILURE
        }
    }
}

fn print<T: Serialize>(value: &T, output: Output, table: impl Fn(&T) -> String) -> Result<String, StatusError> {
    let encode = |e: &dyn std::fmt::Display| StatusError::Encode(e.to_string());
    match output {
        Output::Table => Ok(table(value)),
        Output::Json => serde_json::to_string_pretty(value).map(|s| s + "\n").map_err(|e| encode(&e)),
        Output::Yaml => serde_saphyr::to_string(value).map_err(|e| encode(&e)),
    }
}

async fn overview(client: &AdminClient) -> Result<Overview, StatusError> {
    // Readiness first: it is the one answer a starting agent gives in full.
    let (ready, readiness) = match client.get("/readyz").await? {
        (StatusCode::OK, body) => (true, body),
        (StatusCode::SERVICE_UNAVAILABLE, body) => (false, body),
        (status, body) => return Err(StatusError::Http { path: "/readyz".into(), status, body }),
    };
    let services: ServicesDoc = client.json("/services").await?;
    let config: serde_json::Value = client.json("/config").await?;
    let node = config["nodeName"].as_str().unwrap_or_default().to_owned();
    let peers = match client.get("/peers").await? {
        (StatusCode::OK, body) => {
            #[derive(serde::Deserialize)]
            struct PeersDoc {
                peers: Vec<PeerDoc>,
            }
            let doc: PeersDoc = serde_json::from_str(&body)
                .map_err(|e| StatusError::Decode { path: "/peers".into(), reason: e.to_string() })?;
            Some(doc.peers.into_iter().map(PeerRow::of).collect())
        }
        // The tunnel is off.
        (StatusCode::NOT_FOUND, _) => None,
        (status, body) => return Err(StatusError::Http { path: "/peers".into(), status, body }),
    };
    let dns = DnsCounters::from_text(&client.get_ok("/metrics").await?);
    Ok(Overview {
        source: SourceStatus::of(ready, &readiness, &services),
        services: services.services.iter().map(|s| ServiceRow::of(s, &node)).collect(),
        node,
        peers,
        dns,
    })
}

async fn service_detail(client: &AdminClient, name: &str) -> Result<ServiceDetail, StatusError> {
    let valid = |s: &str| !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.');
    let Some((namespace, service)) = name.split_once('/').filter(|(ns, n)| valid(ns) && valid(n)) else {
        return Err(StatusError::BadName(name.to_owned()));
    };
    let path = format!("/services/{namespace}/{service}");
    match client.get(&path).await? {
        (StatusCode::OK, body) => {
            let doc: ServiceDetailDoc =
                serde_json::from_str(&body).map_err(|e| StatusError::Decode { path, reason: e.to_string() })?;
            Ok(ServiceDetail::of(doc))
        }
        // (An older agent's 404 for the whole route says "not found; try ...".)
        (StatusCode::NOT_FOUND, body) if body.starts_with("no service") => Err(StatusError::NoService(name.to_owned())),
        (status, body) => Err(StatusError::Http { path, status, body: body.trim().to_owned() }),
    }
}

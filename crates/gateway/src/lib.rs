//! The edge gateway (issue #17): Gateway API objects in, per-listener
//! route tables and the objects' status out, and the listeners that serve
//! them (HTTP, HTTPS, TLS passthrough, TCP).
//!
//! ```text
//!  Gateway, HTTPRoute, GRPCRoute, TLSRoute, TCPRoute, ReferenceGrant   Secrets (CertificateStore)
//!        │ compile_objects (one pass; every problem becomes a condition)  │
//!        ▼                                                                ▼
//!  Compiled { protocols: port -> HTTP | HTTPS | TLS passthrough | TCP,
//!             tables: port -> RouteTable (HTTP, gRPC), tls: port -> SniCertificates,
//!             l4: port -> L4Table (TLSRoute, TCPRoute), status: conditions per object }
//!        │ swapped whole (ArcSwap); each connection and request reads the current one
//!        ▼
//!  listener accept -> HTTP: front -> RouteTable::route(request) -> Routed (backends, filters)
//!                  -> HTTPS: TLS handshake (certificate by SNI) -> front -> ...
//!                  -> TLS: peek ClientHello SNI -> L4Table -> backend -> agent's L4 path
//!                  -> TCP: L4Table -> backend -> agent's L4 path
//! ```
//!
//! - [`schema`]: the objects' fields this crate reads, spelled as the API
//!   spells them; every field optional, so that a missing one becomes a
//!   condition instead of a parse error.
//! - [`hostname`]: listener and route hostnames (exact and `*.` wildcard),
//!   their intersection and the specificity that orders them.
//! - [`matching`]: one compiled match (path, method, headers, query) and
//!   the Gateway API's precedence between matches.
//! - [`table`]: a listener's route table: virtual hosts by hostname, rules
//!   in precedence order, and the lookup of a request.
//! - [`filter`]: what a matched rule does to the request and response
//!   (header modifiers, redirect, URL rewrite).
//! - [`backend`]: a rule's weighted backends and the smooth weighted round
//!   robin that picks one per request.
//! - [`compile`](mod@compile): objects to tables, with the status conditions.
//! - [`grpc`]: GRPCRoute matches as HTTP matches, and their precedence.
//! - [`tls`]: HTTPS listeners' certificates (a store, PEM files, SNI
//!   choice, reload by compile) and TLS settings.
//! - [`sni`]: a ClientHello's server name, read without terminating TLS.
//! - [`l4`]: TLS passthrough (TLSRoute) and TCP (TCPRoute) listeners,
//!   forwarded through the agent's L4 path; their connections drained
//!   (a grace, then closed) when their route goes.
//! - [`config`]: the agent config's `gateway` section.
//! - [`istio`]: EdgeMesh's Istio `Gateway` and `VirtualService`, translated
//!   into Gateway API objects (migration).
//! - [`objects`]: the objects a source delivered (whole, as JSON) read into
//!   the schema, Istio's translated: the input of `compile`.
//! - [`report`]: what is served and every object's status, for the admin
//!   endpoint's `/gateway`.
//! - [`status`]: that status shaped as the Gateway API's CRDs define it,
//!   merged over what an object has, for writing back to Kubernetes.
//! - [`serve`]: a listener's requests, routed and sent through the
//!   agent's HTTP front and dispatcher; on HTTPS, a request for another
//!   listener's host than the TLS session's is answered 421.
//! - [`listeners`]: the bound ports, reconciled against the objects.
//! - [`metrics`]: the TLS handshake series.
//! - [`workers`]: the threads the listeners' connections run on.
#![forbid(unsafe_code)]

pub mod backend;
pub mod compile;
pub mod config;
pub mod filter;
pub mod grpc;
pub mod hostname;
pub mod istio;
pub mod l4;
pub mod listeners;
pub mod matching;
pub mod metrics;
pub mod objects;
pub mod report;
pub mod schema;
pub mod serve;
pub mod sni;
pub mod status;
pub mod table;
pub mod tls;
pub mod workers;

pub use compile::{Compiled, Condition, ObjectRef, Objects, Protocol, ServiceLookup, compile, compile_objects};
pub use config::GatewayConfig;
pub use serve::{GatewayUpstream, ServicePools};
pub use table::{RouteTable, Routed};
pub use tls::{CertificateFile, CertificatePem, CertificateStore, FileCertificates};

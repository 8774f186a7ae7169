//! The edge gateway's routing (issue #17), independent of any listener or
//! HTTP engine: Gateway API objects in, per-listener route tables and the
//! objects' status out.
//!
//! ```text
//!  Gateway, HTTPRoute, ReferenceGrant (schema: serde, from the API or manifests)
//!        │ compile (one pass over every object; every problem becomes a condition)
//!        ▼
//!  Compiled { tables: listener port -> RouteTable, status: conditions per object }
//!        │ RouteTable::route(request)         (per request, no allocation but the result)
//!        ▼
//!  Routed { action: rule's backends (weighted), filters, timeouts; the matched prefix }
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
//! - [`compile`]: objects to tables, with the status conditions.
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
//!   agent's HTTP front and dispatcher.
//! - [`listeners`]: the bound ports, reconciled against the objects.
#![forbid(unsafe_code)]

pub mod backend;
pub mod compile;
pub mod config;
pub mod filter;
pub mod hostname;
pub mod istio;
pub mod listeners;
pub mod matching;
pub mod objects;
pub mod report;
pub mod schema;
pub mod serve;
pub mod status;
pub mod table;

pub use compile::{Compiled, Condition, ObjectRef, ServiceLookup, compile};
pub use config::GatewayConfig;
pub use serve::{GatewayUpstream, ServicePools};
pub use table::{RouteTable, Routed};

//! The Kubernetes objects the agent reads, once for every source: the
//! subset of `v1/Service`, `discovery.k8s.io/v1/EndpointSlice`,
//! `v1/Endpoints` and `v1/Node` it uses, Kubernetes' rules for them, and
//! their conversion into `edgemesh_core` objects.
//!
//! ```text
//!  manifests source: YAML ──serde-saphyr / fast path──┐
//!                                                     ├─> schema::Document ──convert (validate)──> Object
//!  kube source: k8s-openapi types ──field by field────┘                            │
//!                                                                   ConvertError (line, object, Problem)
//! ```
//!
//! - [`schema`]: plain serde structs, every field optional and located (its
//!   line in the file, when read from one).
//! - [`convert`]: validation and conversion; the one place a rule or a
//!   message is written.
//! - [`validate`]: Kubernetes' name and port rules.
//! - [`problem`]: [`Problem`], the rule an object breaks, and
//!   [`ConvertError`], which object and where.
//!
//! Light on purpose (no Kubernetes client types): the manifests source
//! builds without kube and k8s-openapi.
#![forbid(unsafe_code)]
#![warn(clippy::unwrap_used)] // outside tests: an error with context, or an `expect` naming the invariant

pub mod convert;
pub mod problem;
pub mod schema;
pub mod validate;

pub use convert::{NODE_ADDRESS_TYPES, ParsedObject, SERVICE_NAME_LABEL};
pub use problem::{ConvertError, Problem};

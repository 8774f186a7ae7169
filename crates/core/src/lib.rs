//! The service model shared by every part of the agent.
//!
//! Data flows one way: a *source* (manifests directory, Kubernetes API)
//! emits [`SourceEvent`]s about [`Object`]s; the [`registry`] is the single
//! owner of service state and turns those events into immutable
//! [`Snapshot`]s; consumers (DNS, proxy, admin) read snapshots and never
//! mutate anything.
//!
//! - [`object`]: what sources produce (Service, EndpointSlice / Endpoints, Node).
//! - [`service`]: small value types (keys, ports, protocols, strategies).
//! - [`app_protocol`]: which ports are proxied per HTTP request, and the
//!   per-service HTTP settings.
//! - [`snapshot`]: the immutable view consumers read.
//! - [`node`]: nodes in the snapshot (peer ID, addresses), for the tunnel.
//! - [`vip`]: virtual IP allocation, a pool per family, and which services
//!   get a VIP of which family.
//! - [`registry`]: the task that owns state and publishes snapshots.
//! - [`health`]: whether a source is connected, for the admin endpoint.
//! - [`metrics`]: what the source delivered and the registry holds, for
//!   `/metrics`.
//! - [`clock`]: wall-clock time, injectable for the ages reported.
//! - [`duration`]: how settings write durations (`250ms`, `2s`).
//! - [`log_limit`]: one log line per interval for events that repeat.
#![forbid(unsafe_code)]
#![warn(clippy::unwrap_used)] // outside tests: an error with context, or an `expect` naming the invariant

pub mod app_protocol;
pub mod build;
pub mod clock;
pub mod duration;
pub mod health;
pub mod log_limit;
pub mod metrics;
pub mod node;
pub mod object;
pub mod registry;
pub mod service;
pub mod snapshot;
pub mod vip;

pub use app_protocol::{AppProtocol, HttpPolicy};
pub use clock::Clock;
pub use health::{Connection, SourceHealth, SourceReport};
pub use log_limit::LogLimiter;
pub use node::{NodeEntry, PEER_ID_ANNOTATION};
pub use object::{
    DestinationRuleObject, EndpointSet, EndpointSubset, NodeObject, Object, ObjectId, ObjectKey, ObjectKind,
    RoutingKind, RoutingObject, ServiceObject, SourceEvent,
};
pub use registry::{EventSink, EventStream, Registry, RegistryConfig, RegistryHandle, VipPolicy};
pub use service::{
    DEFAULT_UDP_IDLE_TIMEOUT, HashKey, InternalTrafficPolicy, IpFamily, IpFamilyPolicy, LbStrategy, Protocol,
    ServiceKey, SessionAffinity, TargetPort, TrafficDistribution, UDP_IDLE_TIMEOUT_ANNOTATION,
};
pub use snapshot::{Backend, EndpointInfo, ResolvedPort, ServiceEntry, Snapshot};

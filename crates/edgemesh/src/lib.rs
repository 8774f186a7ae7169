//! The edgemesh agent as a library: the binary (`main.rs`) parses its
//! command line into a [`Config`] and hands it to [`Agent::build`] and
//! [`Agent::run`]; in-process tests do the same with their own [`Deps`].
//!
//! - [`config`]: the configuration: the agent's own keys, and each
//!   component's section as that component's crate defines it.
//! - [`cli`]: the command line; flags are a documented subset of the
//!   config's keys, written into the same structure ([`cli::flags`]).
//! - [`agent`]: [`Agent::build`] binds every socket; [`Agent::run`] runs
//!   source, cache relay, registry, DNS, proxy, tunnel, interceptor, SOCKS5
//!   entry and admin until stopped or until one of them fails, then drains them.
//! - [`lifecycle`]: config reloads (SIGHUP, file changes), the drain at
//!   SIGTERM, logs (text or JSON, filter changeable at runtime).
//! - [`host`]: what the host decides for unset settings (node name,
//!   resolvers), behind a trait.
//! - [`admin`]: `/healthz`, `/readyz`, `/services`, `/nodes`, `/peers`, `/config`.
//! - [`tunnel`]: the adapter between the tunnel and the rest: the node
//!   directory, the proxy's [`Remote`](edgemesh_proxy::Remote) over it,
//!   and other nodes' hosts for the SOCKS5 entry (`edgemesh-socks`).
//! - `limits`: process limits (open files).
#![forbid(unsafe_code)]
#![warn(clippy::unwrap_used)] // outside tests: an error with context, or an `expect` naming the invariant

pub mod admin;
pub mod agent;
pub mod cli;
pub mod config;
pub mod host;
pub mod lifecycle;
pub mod limits;
pub mod tunnel;

pub use agent::{Agent, DRAIN_DEADLINE, Deps};
pub use config::Config;
pub use host::{FixedHost, Host, SystemHost};

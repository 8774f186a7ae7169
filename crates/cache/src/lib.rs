//! Offline autonomy: a persistent cache of the last applied service objects.
//!
//! Edge uplinks fail for hours and agents restart meanwhile. The cache sits
//! between a source (Kubernetes API or manifests) and the registry:
//!
//! ```text
//!  source ──events──> relay ──events──> registry
//!                       │ write-through, one redb transaction per batch (up to 4,096
//!                       │ events; the next one is written while these are passed on)
//!                   state-dir/cache.redb
//! ```
//!
//! - At start the relay replays the cached objects and reports the registry
//!   synced at once, so the agent is ready (from cache) within a second even
//!   when the source cannot be reached.
//! - Every change from the source is written through before it is passed on.
//! - When the source has delivered its first full view, cached objects it
//!   did not mention are deleted, and the state is reported live.
//! - A corrupt or incompatible file is reported, moved aside and rebuilt;
//!   an unusable state directory disables the cache, never the agent.
//!
//! Modules: [`store`] (the redb file), [`codec`] (its values), [`relay`] (the task and its
//! [`CacheStatus`]), [`error`].
#![forbid(unsafe_code)]

pub mod codec;
pub mod error;
pub mod relay;
pub mod store;

pub use error::CacheError;
pub use relay::{CacheStatus, Origin, StateReport, relay};
pub use store::{Loaded, Store};

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
//! - A corrupt or incompatible file is reported, moved aside and rebuilt.
//! - A state directory that cannot be written (full, read-only) never stops
//!   the agent: what the file holds is still read and served, changes are
//!   served from memory and kept, and the writes are retried until the file
//!   holds the current state again (`writer`).
//!
//! Modules: [`store`] (the redb file), [`codec`] (its values), [`relay`] (the task),
//! `writer` (write-through and retries), [`status`] ([`CacheStatus`], for the admin
//! endpoint), [`error`].
#![forbid(unsafe_code)]
#![warn(clippy::unwrap_used)] // outside tests: an error with context, or an `expect` naming the invariant

pub mod codec;
pub mod error;
pub mod relay;
pub mod status;
pub mod store;
mod writer;

pub use error::CacheError;
pub use relay::relay;
pub use status::{CacheStatus, Origin, StateReport};
pub use store::{Changes, Loaded, Store};
pub use writer::{RETRY_FIRST, RETRY_MAX};

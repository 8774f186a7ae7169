//! The kernel fast path (issue #15): BPF programs on the cgroup v2
//! socket-address hooks rewrite a connection to a service address into a
//! direct connection to one of its backends (or to the agent's own
//! listener when the kernel cannot serve the client), so no proxy sits in
//! the data path.
//!
//! Layout, in the order data flows:
//! - `bpf/edgemesh.bpf.c`: the programs (connect4/6, sendmsg4/6,
//!   recvmsg4/6, getpeername4/6) and their maps; built by `build.rs`;
//! - [`support`]: what the kernel and the process must have, and the
//!   error that says what is missing;
//! - [`loader`]: loads, attaches and pins the programs under a bpffs
//!   directory, adopts pinned state at start, and removes it;
//! - [`FastService`]: what the agent asks of the kernel for one service
//!   port (backends, round robin or random, ClientIP affinity, host-only
//!   backends, the agent's listener as the fallback);
//! - [`plan`]: the pure part of the map writer, the ordered map operations
//!   that take a service from what the maps hold to a new `FastService`;
//! - [`writer`]: applies those operations to the kernel's maps;
//! - `destroy`: destroys the connected UDP sockets of a backend that went
//!   away ([`destroy_udp_sockets_to`], sock_diag `SOCK_DESTROY`);
//! - `netns`: namespace cookies and work inside other namespaces;
//! - `abi`: the map keys and values, laid out as the C side has them.
#![warn(clippy::unwrap_used)] // outside tests: an error with context, or an `expect` naming the invariant

// The map layouts implement aya's unsafe `Pod` (see their SAFETY comments).
#[allow(unsafe_code)]
mod abi;
mod destroy;
pub mod error;
pub mod loader;
mod netns;
pub mod plan;
mod service;
pub mod support;
pub mod writer;

pub use destroy::destroy_udp_sockets_to;
pub use error::Error;
pub use loader::{FastPath, Options};
pub use plan::{MapOp, Protocol, ServicePort, ServiceRecord, ServiceTable, SlotList};
pub use service::{FastBackend, FastService, Pick};
pub use writer::MapWriter;

/// The compiled BPF object (from clang, or the checked-in copy).
pub(crate) static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/edgemesh.bpf.o"));

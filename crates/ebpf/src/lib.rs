//! The kernel fast path (issue #15, foundation): BPF programs on the
//! cgroup v2 socket-address hooks rewrite a connection to a service address
//! into a direct connection to one of its backends, so no proxy sits in the
//! data path. Not yet wired into the agent.
//!
//! Layout, in the order data flows:
//! - `bpf/edgemesh.bpf.c`: the programs (connect4/6, sendmsg4/6,
//!   recvmsg4/6, getpeername4/6) and their maps; built by `build.rs`;
//! - [`support`]: what the kernel and the process must have, and the
//!   error that says what is missing;
//! - [`loader`]: loads, attaches and pins the programs under a bpffs
//!   directory, adopts pinned state at start, and removes it;
//! - [`plan`]: the pure part of the map writer, the ordered map operations
//!   that take a service from its old backends to its new ones;
//! - [`writer`]: applies those operations to the kernel's maps;
//! - `abi`: the map keys and values, laid out as the C side has them.

mod abi;
pub mod error;
pub mod loader;
pub mod plan;
pub mod support;
pub mod writer;

pub use error::Error;
pub use loader::{FastPath, Options};
pub use plan::{MapOp, Protocol, ServicePort, ServiceTable};
pub use writer::MapWriter;

/// The compiled BPF object (from clang, or the checked-in copy).
pub(crate) static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/edgemesh.bpf.o"));

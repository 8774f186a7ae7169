//! A service source that reads a directory of Kubernetes manifests and
//! follows its changes, emitting [`SourceEvent`](edgemesh_core::SourceEvent)s
//! to the registry.
//!
//! ```text
//!  dir/*.yaml ──poll──> watch ──text──> parse ──documents──> fast, else serde-saphyr
//!                         │                                     │ edgemesh_k8s::schema
//!                         │     edgemesh_k8s::convert (validate) <┘
//!                         │                 │ objects with lines
//!                         └──> index (per-file diff, duplicates) ──> EventSink
//! ```
//!
//! - [`config`]: [`ManifestsConfig`], the `manifests` section of the agent's config.
//! - [`watch`]: [`ManifestSource`], the polling loop: stat, read changed
//!   files, hash, parse, report problems once; `watch::dir` lists the
//!   directory and tracks whether it can be read (missing is not empty).
//! - `index`: which file holds which object; turns one file's new objects
//!   into exactly the Apply/Delete events that changed.
//! - [`parse`]: [`parse_manifest`]: splits a file into YAML documents with
//!   their start lines and parses them (in parallel for large files).
//! - `fast`: the fast path for plain block YAML into the same structs,
//!   falling back to serde-saphyr for anything else.
//! - [`error`]: [`ManifestError`], always with a line and a reason.
//!
//! The wire format (`edgemesh_k8s::schema`), its validation and conversion
//! into `edgemesh_core` objects are shared with the Kubernetes source, in
//! `edgemesh_k8s`; this crate keeps what is specific to files: YAML text,
//! lines, the directory and its changes.
//!
//! Supported kinds: `v1/Service`, `discovery.k8s.io/v1/EndpointSlice`,
//! `v1/Endpoints`, `v1/Node` and `v1/List` of those; other kinds are skipped.
#![forbid(unsafe_code)]
#![warn(clippy::unwrap_used)] // outside tests: an error with context, or an `expect` naming the invariant

pub mod config;
pub mod error;
mod fast;
mod index;
pub mod parse;
pub mod watch;

pub use config::ManifestsConfig;
pub use edgemesh_k8s::Problem;
pub use error::ManifestError;
pub use parse::{ParsedObject, parse_manifest};
pub use watch::{ManifestSource, is_manifest_file};

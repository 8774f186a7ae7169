//! Persistent cache of the last applied service objects (work in progress).
#![forbid(unsafe_code)]

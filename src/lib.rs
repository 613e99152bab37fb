//! strata: containers on a userspace layered file system. The `strata` binary (`src/main.rs`
//! and its command-line edge, `src/cli/`) is built on this library; the library has no CLI
//! and no `anyhow`: every module's errors are its own `thiserror` enum.
//!
//! Modules, bottom to top; an import only ever points down this list (the test
//! `fuse-tests/layering.rs` keeps it so):
//! - leaves: `sys` (thin safe wrappers over system calls; the only module with `unsafe`),
//!   `digest` (sha256 digests), `time` (RFC 3339 timestamps), `logsink` (where `tracing`
//!   lines go: standard error, through a writer that cannot fail), `paths` (where the state
//!   of the user running strata lives: root or rootless defaults);
//! - `layer` (the content-addressed store of extracted, indexed read-only layers) and
//!   `rwlayer` (a container's writable layer in sled);
//! - `image` (image records, tags, the OCI/Docker archive formats) and `fs` (the merged view
//!   of layers served over FUSE, read-only or writable, and the change set of a writable
//!   view);
//! - `net` (bridges, veth pairs, addresses, published ports, `/etc/hosts`);
//! - `runtime` (containers: records, the shim, namespaces, mounts, exec, logs);
//! - `diff` (a container's changes, commit and export; per-layer and image-to-image reports);
//! - `snapshotter` (containerd's snapshots API over gRPC: snapshots as writable layers,
//!   merged views and strata layers, served by one process).
//!
//! The design these follow is the team's design document (outside this repository); the
//! README describes what is built.

#![deny(unsafe_code)]

pub mod diff;
pub mod digest;
pub mod fs;
pub mod image;
pub mod layer;
pub mod logsink;
pub mod net;
pub mod paths;
pub mod runtime;
pub mod rwlayer;
pub mod snapshotter;
pub mod sys;
pub mod time;

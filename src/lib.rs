//! strata: containers on a userspace layered file system.
//!
//! The modules follow `DESIGN.md`: `digest` and `sys` are leaf utilities; `layer` owns the
//! content-addressed layer store; `image` owns image records and the archive formats; `fs` is
//! the merged view served over FUSE; `cli` is the command-line edge.

pub mod cli;
pub mod diff;
pub mod digest;
pub mod fs;
pub mod image;
pub mod layer;
pub mod logsink;
pub mod net;
pub mod runtime;
pub mod rwlayer;
pub mod sys;

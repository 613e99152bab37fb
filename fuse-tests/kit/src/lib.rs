//! strata's test kit: everything the tests that mount real file systems, the differential
//! tester and the crash test share, in one place.
//!
//! Used as a dev-dependency by the integration tests under `fuse-tests/` and by the tools
//! under `tools/` (cargo examples). Every mount it makes is unmounted in `Drop`, so a failing
//! test leaves no mount behind; every wait is bounded.
#![allow(clippy::new_without_default)]

pub mod backend;
pub mod common;
pub mod crashtest;
pub mod difftest;
pub mod harness;
pub mod root;
pub mod rootless;

pub use common::*;
pub use root::{ContainerRoot, DEADLINE};

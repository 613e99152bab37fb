//! strata's test kit: everything the tests that mount real file systems, the differential
//! tester and the crash test share, in one place.
//!
//! Used as a dev-dependency by the integration tests under `fuse-tests/` and by the tools
//! under `tools/` (cargo examples). Every mount it makes is unmounted in `Drop`, so a failing
//! test leaves no mount behind; every wait is bounded.
//!
//! - `paths`: the repository, the `strata` binary, `target/tmp`, the sample image;
//! - `cli`: running `strata` (with a deadline); `root`: the [`ContainerRoot`] fixture of the
//!   tests that run containers;
//! - `mounts`: mount points, guards, waiting for and killing daemons;
//! - `overlay`: kernel overlayfs from GNU-tar-extracted layers (the oracle);
//! - `snapshot`: one [`Snapshot`] of a mounted tree, and [`assert_same_tree`];
//! - `backend`: the two writable backends (kernel overlayfs, strata) of `fuse-tests/rw_ops`;
//! - `posix`: syscall helpers of the writable-mount scenarios; `probe`: HTTP GETs and bounded
//!   retries against what containers serve;
//! - `rng`, `stratabin`, `tools`: what the testers share (seeded randomness, strata state roots
//!   and writable mounts, the tools' start-up);
//! - `difftest`, `crashtest`: the engines of the differential tester and the crash test.
#![allow(clippy::new_without_default)]

pub mod backend;
pub mod cli;
pub mod crashtest;
pub mod difftest;
pub mod mounts;
pub mod overlay;
pub mod paths;
pub mod posix;
pub mod probe;
pub mod rng;
pub mod root;
pub mod rootless;
pub mod snapshot;
pub mod stratabin;
pub mod tools;

pub use cli::{Out, output_within, run, strata, strata_io, strata_io_env, strata_ok};
pub use mounts::{MountGuard, is_mounted, kill9, unmount, wait_exit, wait_unmounted};
pub use overlay::{Overlay, OverlayOracle, extract_lowers, implied_dirs};
pub use paths::{
    SAMPLE_IMAGE, layer_tars, repo, sample_image, sample_layers, strata_bin, target_tmp,
    try_sample_image,
};
pub use probe::{eventually, http_get, udp_socket_in};
pub use rng::{Rng, fill};
pub use root::{ContainerRoot, DEADLINE};
pub use snapshot::{Snapshot, assert_same_tree};
pub use stratabin::{Strata, StrataMount};
pub use tools::tool_inputs;

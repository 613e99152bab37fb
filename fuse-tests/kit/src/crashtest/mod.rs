//! Crash test engine: a seeded write workload runs in a child process on a writable mount
//! while the FUSE daemon is killed with SIGKILL at a random moment; then the dead mount is
//! cleaned up (`strata umount`), the same `--layer` is mounted again, and every write the
//! workload had made durable (fsync/fdatasync returned) must be there, byte for byte.
//!
//! Used by `tools/crashtest/main.rs` (50 trials) and `fuse-tests/crashtest.rs` (5 in CI).
//!
//! The journal. The workload writes one line per event to `JOURNAL/journal`, outside the
//! mount, BEFORE it issues each mutating call ("intents": `create`, `write`, `trunc`,
//! `rename`, `unlink`, `chmod`), and AFTER each successful fsync/fdatasync (`durable ID SIZE
//! SHA256`), directory fsync following a create/rename (`durable-name ID PATH`) or unlink
//! (`durable-unlink ID`), or fsync after a chmod (`durable-mode ID MODE`); the durable lines
//! are followed by an fsync of the journal. Write data is derived from a seed stored in the
//! line, and the original bytes of the lower files it modifies are copied to
//! `JOURNAL/base-ID` first, so replaying the journal rebuilds exactly what each file held at
//! each durable point ("exactly what content is now guaranteed"; the SHA-256 in the line
//! cross-checks the replay against the workload's own model).
//!
//! What is guaranteed after the crash (POSIX, as ext4 gives it): for each file, the content
//! at its last `durable` line, except byte ranges written or truncated after that line (those
//! may hold the old or the new bytes, or any mix); the size exactly when nothing changed
//! since. A file is found at its last durable name or at a later, not yet durable rename
//! target — at exactly one of them; a name durably renamed away is gone; a durably unlinked
//! file is under none of its names (one whose unlink was not yet durable may be at its name
//! or gone); a file shows the mode last made durable unless chmod'ed since; the workload's
//! directories hold no names it never created.
//!
//! The crash in kernel mode (`--kernel`, for testing this engine against kernel overlayfs):
//! the workload process itself is SIGKILLed, and the overlay is detached (`umount -l`,
//! without sync) and mounted again on the same upper directory. No data is lost there
//! (the page cache survives), so it checks the journal, replay and verification plumbing.
//!
//! One file a part: `workload` (the child process and its journal), `replay` (what the
//! journal says), `verify` (the remounted tree against it), `trial` (running trials: the
//! crash, the remount, the summary).

mod replay;
mod trial;
mod verify;
mod workload;

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

pub use replay::{FileState, Ranges, Replay, replay};
pub use trial::{Config, Spawner, Summary, TrialFailure, run, spawn_with};
pub use verify::{check_content, verify};
pub use workload::child_main;

/// What the workload child needs (passed as JSON).
#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct ChildArgs {
    pub mnt: PathBuf,
    pub journal_dir: PathBuf,
    pub seed: u64,
    pub max_ops: usize,
    pub max_secs: u64,
}

/// Lower files the workload modifies in place (per-chunk copy-up under strata): two of
/// these per trial.
pub const LOWER_FILES: &[&str] = &[
    "srv/files/sparse-16M",
    "bin/busybox",
    "etc/motd",
    "www/index.html",
    "srv/hardlinks/a/original.txt",
];

/// The directory the workload creates its files in (and `WORKDIR/sub`).
pub const WORKDIR: &str = "crash";

/// Exit codes of the child.
pub const CHILD_DONE: i32 = 0;
pub const CHILD_STOPPED: i32 = 1;

fn sha(d: &[u8]) -> String {
    hex::encode(Sha256::digest(d))
}

/// Applies a write at `off` to a file's expected bytes, growing it as needed.
fn apply_write(model: &mut Vec<u8>, off: u64, data: &[u8]) {
    let end = off as usize + data.len();
    if model.len() < end {
        model.resize(end, 0);
    }
    model[off as usize..end].copy_from_slice(data);
}

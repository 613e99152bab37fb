//! The differential tester's engine: seeded random sequences of file system operations,
//! applied to kernel overlayfs (side A, the reference) and to a strata writable mount of the
//! same image (side B), compared after every operation and, at the end, as whole trees.
//!
//! Used by `tools/difftest/main.rs` (the CLI, a cargo example) and by `fuse-tests/difftest.rs`
//! (the CI run). With `Config::strata = None` both sides are kernel overlayfs mounts of the
//! same layers (`--both-kernel`): everything must compare equal, which checks the engine
//! itself.
//!
//! How a sequence runs: both sides are mounted fresh (overlay: unmount, empty upper and work,
//! mount; strata: a new mount point and an empty `--layer` directory), then each operation runs
//! on A, then on B, and the results must be equal: the return value, or the errno; data read
//! back; `stat` fields (see [`compare_stat`]); directory listings; xattr names and values.
//! Then every open descriptor is closed and both trees are compared ([`compare_trees`]).
//!
//! Operations address paths relative to the mount root and resolve them with
//! `openat2(RESOLVE_IN_ROOT)` (the parent directory, then an `*at` call on the last name), so
//! a symlink in the image (`srv/symlinks/absolute` → `/etc/passwd`) resolves inside the mount
//! as it would in a container and never reaches the host. Device nodes are never opened (the
//! operation reports `skipped` on both sides): the kernel side would open the host's device.
//!
//! On a mismatch, the sequence is shrunk by delta debugging (re-running subsequences on fresh
//! mounts, bounded in runs and time) and the minimal failing sequence is reported with the
//! seed.
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::ffi::CString;
use std::fmt;
use std::os::fd::{AsFd, AsRawFd, IntoRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::{Overlay, Rng, Strata, StrataMount};
use anyhow::Context as _;

pub use crate::snapshot::{Meta, Snapshot, St, show};
use rustix::fs::{AtFlags, Mode, OFlags, ResolveFlags};
use sha2::{Digest as _, Sha256};

mod compare;
mod display;
mod exec;
mod generate;
mod ops;
mod shrink;
mod trees;

pub use compare::*;
pub use exec::*;
pub use generate::*;
pub use ops::*;
pub use trees::*;

pub struct Config {
    /// The sample image directory (`layers/*.tar`, `oci/`).
    pub image_dir: PathBuf,
    /// The strata binary for side B; `None`: side B is kernel overlayfs too (self-test).
    pub strata: Option<PathBuf>,
    /// Where to create the work directory (default: the system temp dir).
    pub work_parent: Option<PathBuf>,
    /// Most fresh-mount runs spent shrinking one failure.
    pub shrink_runs: usize,
    /// Most time spent shrinking one failure.
    pub shrink_time: Duration,
    /// An operation (or the final comparison) taking longer than this aborts the process
    /// with a report: a hung FUSE request would otherwise hang the test forever.
    pub op_timeout: Duration,
    /// Deliberate misbehaviour of side B (engine self-test).
    pub fault: Option<Fault>,
    /// Shrink failures (off: report the first mismatch only, e.g. to survey many seeds).
    pub shrink: bool,
    pub verbose: bool,
    /// More arguments for strata's `mount --rw` (e.g. `--io passthrough`).
    pub mount_args: Vec<String>,
}

impl Config {
    pub fn new(image_dir: &Path, strata: Option<PathBuf>) -> Config {
        Config {
            image_dir: image_dir.to_path_buf(),
            strata,
            work_parent: None,
            shrink_runs: 400,
            shrink_time: Duration::from_secs(180),
            op_timeout: Duration::from_secs(60),
            fault: None,
            mount_args: Vec::new(),
            shrink: true,
            verbose: false,
        }
    }
}

pub enum Outcome {
    Clean,
    /// `at`: the index of the operation whose results differ, or `None` for the final tree
    /// comparison.
    Mismatch {
        at: Option<usize>,
        msg: String,
    },
}

/// A failing seed, its first mismatch, and the shrunk sequence.
pub struct Failure {
    pub seed: u64,
    pub ops: usize,
    pub at: Option<usize>,
    pub msg: String,
    pub minimal: Vec<Op>,
    pub minimal_msg: String,
    pub minimal_at: Option<usize>,
    pub shrink_runs: usize,
    pub reproduced: bool,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let at = |a: Option<usize>| match a {
            Some(i) => format!("at operation #{i}"),
            None => "in the final tree comparison".to_string(),
        };
        writeln!(
            f,
            "MISMATCH: seed {} ({} operations), {}:\n  {}",
            self.seed,
            self.ops,
            at(self.at),
            self.msg
        )?;
        if !self.reproduced {
            writeln!(
                f,
                "  (did not reproduce on fresh mounts: nondeterministic; nothing shrunk)"
            )?;
        }
        writeln!(
            f,
            "minimal failing sequence ({} operations, shrunk in {} runs):",
            self.minimal.len(),
            self.shrink_runs,
        )?;
        for (i, op) in self.minimal.iter().enumerate() {
            writeln!(f, "  {i:3}: {op}")?;
        }
        writeln!(
            f,
            "which fails {}:\n  {}",
            at(self.minimal_at),
            self.minimal_msg
        )?;
        write!(f, "reproduce: --seed {} --ops {}", self.seed, self.ops)
    }
}

/// Aborts the process with a report when an operation hangs (bounded waits everywhere,
/// including inside a FUSE request): kills the strata daemons we started and detaches the
/// mounts first, so nothing is left behind.
struct Watchdog {
    state: Arc<Mutex<WatchState>>,
}

#[derive(Default)]
struct WatchState {
    deadline: Option<Instant>,
    what: String,
    pids: Vec<i32>,
    mounts: Vec<PathBuf>,
    stop: bool,
}

impl Watchdog {
    fn start() -> Watchdog {
        let state = Arc::new(Mutex::new(WatchState::default()));
        let s = state.clone();
        std::thread::spawn(move || {
            loop {
                std::thread::sleep(Duration::from_millis(100));
                let st = s.lock().unwrap();
                if st.stop {
                    return;
                }
                if st.deadline.is_some_and(|d| Instant::now() > d) {
                    eprintln!("difftest: HUNG: {}", st.what);
                    for &p in &st.pids {
                        crate::kill9(p);
                    }
                    for m in &st.mounts {
                        let _ = strata::sys::unmount_lazy(m);
                    }
                    std::process::exit(3);
                }
            }
        });
        Watchdog { state }
    }
    fn arm(&self, limit: Duration, what: impl FnOnce() -> String) {
        let mut s = self.state.lock().unwrap();
        s.deadline = Some(Instant::now() + limit);
        s.what = what();
    }
    fn disarm(&self) {
        self.state.lock().unwrap().deadline = None;
    }
    fn watch(&self, pid: Option<i32>, mounts: &[&Path]) {
        let mut s = self.state.lock().unwrap();
        s.pids = pid.into_iter().collect();
        s.mounts = mounts.iter().map(|m| m.to_path_buf()).collect();
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.state.lock().unwrap().stop = true;
    }
}

/// Side B's file system.
enum SideB {
    Kernel(Overlay),
    Strata {
        strata: Box<Strata>,
        /// The live mount of the current run.
        current: Option<StrataMount>,
        /// Detached mounts whose daemons may still be exiting: (pid, their directory).
        exiting: Vec<(i32, PathBuf)>,
        runs: u64,
        base: PathBuf,
    },
}

impl SideB {
    /// A fresh, pristine mount; returns its mount point and daemon pid (strata).
    fn fresh(&mut self) -> anyhow::Result<(PathBuf, Option<i32>)> {
        match self {
            SideB::Kernel(o) => {
                o.reset()?;
                o.mount()?;
                Ok((o.mnt.clone(), None))
            }
            SideB::Strata {
                strata: st,
                current,
                exiting,
                runs,
                base,
            } => {
                if let Some(m) = current.take() {
                    let dir = m.mnt.parent().unwrap().to_path_buf();
                    exiting.push((m.detach(), dir));
                }
                // A daemon exits on its own a moment after its mount goes away; remove the
                // directories of those that have, and wait for the oldest when many pile up.
                exiting.retain(|(pid, dir)| {
                    if strata::sys::process_alive(*pid) {
                        return true;
                    }
                    let _ = std::fs::remove_dir_all(dir);
                    false
                });
                while exiting.len() > 4 {
                    let (pid, dir) = exiting.remove(0);
                    StrataMount::finish(pid);
                    let _ = std::fs::remove_dir_all(dir);
                }
                *runs += 1;
                let dir = base.join(format!("s{runs}"));
                std::fs::create_dir_all(&dir)?;
                let m = StrataMount::mount(st, &dir.join("mnt"), &dir.join("layer"))?;
                let out = (m.mnt.clone(), Some(m.pid));
                *current = Some(m);
                Ok(out)
            }
        }
    }
}

impl Drop for SideB {
    fn drop(&mut self) {
        if let SideB::Strata {
            current, exiting, ..
        } = self
        {
            drop(current.take());
            for (pid, _) in exiting.drain(..) {
                StrataMount::finish(pid);
            }
        }
    }
}

/// Runs sequences against a pair of fresh mounts per run.
/// strata's `fs::view::LOWER_MIN`: with `--io passthrough`, lower files this big are read
/// through passthrough to the lower file.
const LOWER_PASSTHROUGH_MIN: u64 = 1 << 20;

pub struct Tester {
    pub cfg: Config,
    pub pool: Pool,
    /// Operations of passing seeds (all compared equal).
    pub ops_clean: u64,
    /// Fresh-mount runs so far (including shrinking).
    pub runs: u64,
    watchdog: Watchdog,
    a: Overlay,
    b: SideB,
    /// Side B is strata with `--io passthrough`.
    lower_passthrough: bool,
    /// Last: removed after everything above is unmounted.
    _work: tempfile::TempDir,
}

impl Tester {
    pub fn new(cfg: Config) -> anyhow::Result<Tester> {
        let work = match &cfg.work_parent {
            Some(p) => tempfile::Builder::new().prefix("difftest-").tempdir_in(p)?,
            None => tempfile::Builder::new().prefix("difftest-").tempdir()?,
        };
        let layers = crate::layer_tars(&cfg.image_dir);
        anyhow::ensure!(
            !layers.is_empty(),
            "no layers in {}",
            cfg.image_dir.display()
        );
        let lowers = crate::extract_lowers(&layers, &work.path().join("lowers"))?;
        let a = Overlay::new(&lowers, &work.path().join("kernel"))?;
        let b = match &cfg.strata {
            None => SideB::Kernel(Overlay::new(&lowers, &work.path().join("kernel-b"))?),
            Some(bin) => SideB::Strata {
                strata: Box::new(Strata {
                    mount_args: cfg.mount_args.clone(),
                    ..Strata::load(bin, &work.path().join("root"), &cfg.image_dir)?
                }),
                current: None,
                exiting: Vec::new(),
                runs: 0,
                base: work.path().join("strata"),
            },
        };
        a.mount()?;
        let pool = Pool::learn(&a.mnt, &lowers)?;
        a.unmount()?;
        let lower_passthrough = matches!(b, SideB::Strata { .. })
            && cfg
                .mount_args
                .windows(2)
                .any(|w| w[0] == "--io" && w[1] == "passthrough")
            || cfg.mount_args.iter().any(|a| a == "--io=passthrough");
        Ok(Tester {
            lower_passthrough,
            cfg,
            pool,
            ops_clean: 0,
            runs: 0,
            watchdog: Watchdog::start(),
            a,
            b,
            _work: work,
        })
    }

    pub fn side_b_name(&self) -> &'static str {
        match self.b {
            SideB::Kernel(_) => "kernel overlayfs (--both-kernel)",
            SideB::Strata { .. } => "strata",
        }
    }

    /// Runs `ops` on a fresh pair of mounts and compares.
    pub fn run_ops(&mut self, ops: &[Op]) -> anyhow::Result<Outcome> {
        self.run(&mut ops.to_vec(), None)
    }

    /// Runs `ops` on fresh mounts; with `generator`, first generates `n` operations into `ops`,
    /// one at a time, each from the kernel side's results so far.
    fn run(
        &mut self,
        ops: &mut Vec<Op>,
        mut generator: Option<(&mut Gen, usize)>,
    ) -> anyhow::Result<Outcome> {
        self.runs += 1;
        self.a.reset()?;
        self.a.mount()?;
        let (mnt_b, pid) = self.b.fresh()?;
        let mnt_a = self.a.mnt.clone();
        self.watchdog
            .watch(pid, &[mnt_a.as_path(), mnt_b.as_path()]);
        let mut a = Side::open(&mnt_a, None)?;
        let mut b = Side::open(&mnt_b, self.cfg.fault)?;
        let mut times = Times::of(ops);
        let limit = self.cfg.op_timeout;
        for i in 0.. {
            match &mut generator {
                Some((g, n)) if i < *n => {
                    let op = g.op();
                    if let Op::Utimens { mtime, .. } = &op {
                        times.explicit.insert(*mtime);
                    }
                    ops.push(op);
                }
                _ if i < ops.len() => {}
                _ => break,
            }
            let op = &ops[i];
            self.watchdog
                .arm(limit, || format!("operation #{i} did not return: {op}"));
            let parent_before = match op {
                Op::Rename { from, .. } => parent_mtime(&mnt_a, from),
                _ => None,
            };
            // With `--io passthrough`, strata refuses to open for writing or to truncate a big
            // file of the image while a descriptor reads it through its lower file (ETXTBSY,
            // see `fs::rwopen`); kernel overlayfs switches that descriptor to the copy. That
            // intended difference is not compared: such an operation refused on side B is not
            // run on side A, so both trees stay the same.
            let early_b = match op {
                Op::Open { path, flags, .. }
                    if self.lower_passthrough
                        && (flags & libc::O_ACCMODE as u32 != 0
                            || flags & libc::O_TRUNC as u32 != 0) =>
                {
                    Some(path)
                }
                Op::WriteFile { path, .. } | Op::Truncate { path, .. }
                    if self.lower_passthrough =>
                {
                    Some(path)
                }
                _ => None,
            }
            .map(|path| (path, b.exec(op)));
            let ra = match &early_b {
                Some((path, Err(libc::ETXTBSY))) if b.reading(path, LOWER_PASSTHROUGH_MIN) => {
                    a.refused(op)
                }
                _ => a.exec(op),
            };
            // Kernel overlayfs copies a lower source directory up before it checks the target,
            // so a rename that then fails (ENOTEMPTY, …) still stamps the source's parent with
            // the current time (a failed renameat2 changed `d15`'s mtime, seed 5948); strata's
            // failed rename changes nothing, as POSIX says. That intended difference is not
            // compared: an explicit mtime the kernel's parent lost that way stops being one.
            if let (Op::Rename { from, .. }, Err(_), Some(before)) = (op, &ra, parent_before)
                && times.explicit.contains(&before)
                && parent_mtime(&mnt_a, from) != Some(before)
            {
                times.explicit.remove(&before);
            }
            // Kernel overlayfs may refuse a directory rename with EXDEV (e.g. a redirect
            // longer than redirect_max); strata renames natively (DESIGN §4). That intended
            // difference is not compared: the rename is skipped on side B, so both trees
            // stay the same.
            let rb = if let Some((_, rb)) = early_b {
                rb
            } else if matches!(op, Op::Rename { .. }) && ra == Err(libc::EXDEV) {
                ra.clone()
            } else {
                b.exec(op)
            };
            let diff = compare_results(&ra, &rb, &times, &mnt_a, &mnt_b);
            self.watchdog.disarm();
            if self.cfg.verbose {
                eprintln!("  #{i} {op} → {}", show_res(&ra));
            }
            if let Some(msg) = diff {
                return Ok(Outcome::Mismatch {
                    at: Some(i),
                    msg: format!("{op}\n  {msg}"),
                });
            }
            if let Some((g, _)) = &mut generator {
                g.observe(op, &ra);
            }
        }
        a.close_all();
        b.close_all();
        self.watchdog
            .arm(limit, || "the final tree comparison did not finish".into());
        let sa = Snapshot::try_take(&mnt_a);
        let sb = Snapshot::try_take(&mnt_b);
        self.watchdog.disarm();
        let sa = sa.map_err(|e| anyhow::anyhow!("walking the kernel tree: {e}"))?;
        let outcome = match sb {
            Err(e) => Outcome::Mismatch {
                at: None,
                msg: format!("walking strata's tree failed: {e}"),
            },
            Ok(sb) => match compare_trees(&sa, &sb, &times) {
                Some(msg) => Outcome::Mismatch { at: None, msg },
                None => Outcome::Clean,
            },
        };
        Ok(outcome)
    }

    /// Generates and runs one seed; on a mismatch, shrinks it.
    pub fn run_seed(&mut self, seed: u64, n: usize) -> anyhow::Result<Option<Failure>> {
        let mut generator = Gen::new(seed, &self.pool);
        let mut ops = Vec::with_capacity(n);
        match self.run(&mut ops, Some((&mut generator, n)))? {
            Outcome::Clean => {
                self.ops_clean += ops.len() as u64;
                Ok(None)
            }
            Outcome::Mismatch { at, msg } => {
                let (minimal, minimal_at, minimal_msg, runs, reproduced) = if self.cfg.shrink {
                    self.shrink(&ops, at, &msg)?
                } else {
                    let keep = at.map_or(ops.len(), |i| i + 1);
                    (ops[..keep].to_vec(), at, msg.clone(), 0, true)
                };
                Ok(Some(Failure {
                    seed,
                    ops: n,
                    at,
                    msg,
                    minimal,
                    minimal_msg,
                    minimal_at,
                    shrink_runs: runs,
                    reproduced,
                }))
            }
        }
    }
}

/// The mtime of the directory holding `path` (relative to `mnt`), not following a final link.
fn parent_mtime(mnt: &Path, path: &[u8]) -> Option<(i64, i64)> {
    let p = mnt.join(std::ffi::OsStr::from_bytes(path));
    let m = std::fs::symlink_metadata(p.parent()?).ok()?;
    Some((m.mtime(), m.mtime_nsec()))
}

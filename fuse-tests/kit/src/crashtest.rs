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
#![allow(dead_code)]

use std::collections::BTreeSet;
use std::fs::File;
use std::io::{Read as _, Write as _};
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use crate::{Overlay, Rng, Strata};
use anyhow::{Context as _, bail};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

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

// ---------------------------------------------------------------------------------------
// The workload (child process).

struct Journal {
    f: File,
    dir: PathBuf,
}

impl Journal {
    fn create(dir: &Path) -> std::io::Result<Journal> {
        std::fs::create_dir_all(dir)?;
        let f = File::options()
            .create(true)
            .append(true)
            .open(dir.join("journal"))?;
        Ok(Journal {
            f,
            dir: dir.to_path_buf(),
        })
    }
    /// An intent: written (one write(2)) before the call it announces. The host does not
    /// crash, only the FUSE daemon, so the page cache holds it without an fsync.
    fn intent(&mut self, line: &str) -> std::io::Result<()> {
        self.f.write_all(format!("{line}\n").as_bytes())
    }
    /// A durable record: written and fsync'ed.
    fn durable(&mut self, line: &str) -> std::io::Result<()> {
        self.intent(line)?;
        self.f.sync_all()
    }
}

struct WFile {
    id: usize,
    path: String,
    f: File,
    model: Vec<u8>,
    lower: bool,
    unlinked: bool,
}

fn sha(d: &[u8]) -> String {
    hex::encode(Sha256::digest(d))
}

fn fsync_dir(p: &Path) -> std::io::Result<()> {
    File::open(p)?.sync_all()
}

/// Runs the workload; never returns. Exit status [`CHILD_DONE`] after `max_ops`
/// operations, [`CHILD_STOPPED`] at the first error (the daemon was killed, normally).
pub fn child_main(json: &str) -> ! {
    let args: ChildArgs = match serde_json::from_str(json) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("crashtest child: bad arguments: {e}");
            std::process::exit(2);
        }
    };
    match workload(&args) {
        Ok(n) => {
            eprintln!("crashtest child: completed {n} operations");
            std::process::exit(CHILD_DONE)
        }
        Err(e) => {
            eprintln!("crashtest child: stopped: {e}");
            std::process::exit(CHILD_STOPPED)
        }
    }
}

fn workload(a: &ChildArgs) -> Result<usize, String> {
    let mut j = Journal::create(&a.journal_dir).map_err(|e| format!("journal: {e}"))?;
    let m = &a.mnt;
    let e = |what: String| move |err: std::io::Error| format!("{what}: {err}");
    let work = m.join(WORKDIR);
    std::fs::create_dir(&work).map_err(e("mkdir crash".into()))?;
    std::fs::create_dir(work.join("sub")).map_err(e("mkdir crash/sub".into()))?;
    fsync_dir(&work).map_err(e("fsync crash".into()))?;
    fsync_dir(m).map_err(e("fsync /".into()))?;
    j.durable(&format!("dir {WORKDIR}"))
        .map_err(e("journal".into()))?;

    let mut rng = Rng::new(a.seed);
    let mut files: Vec<WFile> = Vec::new();
    let mut lowers: Vec<&str> = LOWER_FILES.to_vec();
    for _ in 0..2 {
        let i = rng.below(lowers.len() as u64) as usize;
        let path = lowers.remove(i);
        let id = files.len();
        let model = std::fs::read(m.join(path)).map_err(e(format!("read {path}")))?;
        let blob = a.journal_dir.join(format!("base-{id}"));
        let mut b = File::create(&blob).map_err(e("base blob".into()))?;
        b.write_all(&model).map_err(e("base blob".into()))?;
        b.sync_all().map_err(e("base blob".into()))?;
        j.durable(&format!("base {id} {path}"))
            .map_err(e("journal".into()))?;
        let f = File::options()
            .read(true)
            .write(true)
            .open(m.join(path))
            .map_err(e(format!("open {path}")))?;
        files.push(WFile {
            id,
            path: path.to_string(),
            f,
            model,
            lower: true,
            unlinked: false,
        });
    }

    let started = Instant::now();
    let mut done = 0;
    for k in 0..a.max_ops {
        if started.elapsed() > Duration::from_secs(a.max_secs) {
            break;
        }
        match rng.weighted(&[8, 45, 8, 25, 10, 4, 4]) {
            0 if files.len() < 10 => {
                let id = files.len();
                let path = if rng.chance(50) {
                    format!("{WORKDIR}/f{k}")
                } else {
                    format!("{WORKDIR}/sub/f{k}")
                };
                j.intent(&format!("create {id} {path}"))
                    .map_err(e("journal".into()))?;
                let f = File::options()
                    .read(true)
                    .write(true)
                    .create_new(true)
                    .mode(0o644)
                    .open(m.join(&path))
                    .map_err(e(format!("create {path}")))?;
                f.sync_all().map_err(e(format!("fsync {path}")))?;
                fsync_dir(m.join(&path).parent().unwrap())
                    .map_err(e(format!("fsync dir of {path}")))?;
                j.durable(&format!("durable-name {id} {path}"))
                    .map_err(e("journal".into()))?;
                j.durable(&format!("durable {id} 0 {}", sha(b"")))
                    .map_err(e("journal".into()))?;
                files.push(WFile {
                    id,
                    path,
                    f,
                    model: Vec::new(),
                    lower: false,
                    unlinked: false,
                });
            }
            1 => {
                let i = rng.below(files.len() as u64) as usize;
                let wf = &mut files[i];
                let size = wf.model.len() as u64;
                let off = match rng.below(10) {
                    0..=5 => rng.below(size + 1),
                    6..=7 => rng.below(size + 65536),
                    _ => rng.below((size + 1).max(1 << 20)),
                };
                let len = match rng.below(10) {
                    0..=3 => rng.range(1, 512),
                    4..=7 => rng.range(512, 65536),
                    _ => rng.range(65536, 262_144),
                } as usize;
                let dseed = rng.next_u64();
                j.intent(&format!("write {} {off} {len} {dseed}", wf.id))
                    .map_err(e("journal".into()))?;
                let data = crate::fill(dseed, len);
                wf.f.write_all_at(&data, off)
                    .map_err(e(format!("write {}", wf.path)))?;
                apply_write(&mut wf.model, off, &data);
            }
            2 => {
                let i = rng.below(files.len() as u64) as usize;
                let wf = &mut files[i];
                let size = wf.model.len() as u64;
                let new = match rng.below(4) {
                    0 => rng.below(size + 1),
                    1 => size + rng.below(100_000),
                    _ => size.saturating_sub(rng.below(4096)),
                };
                j.intent(&format!("trunc {} {new}", wf.id))
                    .map_err(e("journal".into()))?;
                wf.f.set_len(new)
                    .map_err(e(format!("truncate {}", wf.path)))?;
                wf.model.resize(new as usize, 0);
            }
            3 => {
                let i = rng.below(files.len() as u64) as usize;
                let wf = &mut files[i];
                if rng.chance(50) {
                    wf.f.sync_data()
                } else {
                    wf.f.sync_all()
                }
                .map_err(e(format!("fsync {}", wf.path)))?;
                j.durable(&format!(
                    "durable {} {} {}",
                    wf.id,
                    wf.model.len(),
                    sha(&wf.model)
                ))
                .map_err(e("journal".into()))?;
            }
            4 => {
                let movable: Vec<usize> = files
                    .iter()
                    .filter(|f| !f.lower && !f.unlinked)
                    .map(|f| f.id)
                    .collect();
                if movable.is_empty() {
                    continue;
                }
                let wf = &mut files[*rng.pick(&movable)];
                let new = if rng.chance(50) {
                    format!("{WORKDIR}/r{k}")
                } else {
                    format!("{WORKDIR}/sub/r{k}")
                };
                j.intent(&format!("rename {} {new}", wf.id))
                    .map_err(e("journal".into()))?;
                std::fs::rename(m.join(&wf.path), m.join(&new))
                    .map_err(e(format!("rename {} {new}", wf.path)))?;
                let old = std::mem::replace(&mut wf.path, new.clone());
                if rng.chance(60) {
                    fsync_dir(m.join(&old).parent().unwrap()).map_err(e("fsync old dir".into()))?;
                    fsync_dir(m.join(&new).parent().unwrap()).map_err(e("fsync new dir".into()))?;
                    j.durable(&format!("durable-name {} {new}", wf.id))
                        .map_err(e("journal".into()))?;
                }
            }
            5 => {
                // Unlink (the file stays open: later writes and fsyncs go to the orphan).
                let movable: Vec<usize> = files
                    .iter()
                    .filter(|f| !f.lower && !f.unlinked)
                    .map(|f| f.id)
                    .collect();
                if movable.is_empty() {
                    continue;
                }
                let wf = &mut files[*rng.pick(&movable)];
                j.intent(&format!("unlink {}", wf.id))
                    .map_err(e("journal".into()))?;
                std::fs::remove_file(m.join(&wf.path)).map_err(e(format!("unlink {}", wf.path)))?;
                wf.unlinked = true;
                if rng.chance(60) {
                    fsync_dir(m.join(&wf.path).parent().unwrap()).map_err(e("fsync dir".into()))?;
                    j.durable(&format!("durable-unlink {}", wf.id))
                        .map_err(e("journal".into()))?;
                }
            }
            6 => {
                let live: Vec<usize> = files
                    .iter()
                    .filter(|f| !f.lower && !f.unlinked)
                    .map(|f| f.id)
                    .collect();
                if live.is_empty() {
                    continue;
                }
                let wf = &mut files[*rng.pick(&live)];
                let mode = 0o600 | rng.below(0o100) as u32;
                j.intent(&format!("chmod {} {mode}", wf.id))
                    .map_err(e("journal".into()))?;
                wf.f.set_permissions(std::fs::Permissions::from_mode(mode))
                    .map_err(e(format!("chmod {}", wf.path)))?;
                if rng.chance(60) {
                    wf.f.sync_all().map_err(e(format!("fsync {}", wf.path)))?;
                    j.durable(&format!("durable-mode {} {mode}", wf.id))
                        .map_err(e("journal".into()))?;
                }
            }
            _ => continue,
        }
        done += 1;
    }
    Ok(done)
}

fn apply_write(model: &mut Vec<u8>, off: u64, data: &[u8]) {
    let end = off as usize + data.len();
    if model.len() < end {
        model.resize(end, 0);
    }
    model[off as usize..end].copy_from_slice(data);
}

// ---------------------------------------------------------------------------------------
// Replaying the journal.

/// Byte ranges `[start, end)`, kept sorted and merged.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Ranges(pub Vec<(u64, u64)>);

impl Ranges {
    pub fn add(&mut self, s: u64, e: u64) {
        if s >= e {
            return;
        }
        self.0.push((s, e));
        self.0.sort();
        let mut out: Vec<(u64, u64)> = Vec::new();
        for &(s, e) in &self.0 {
            match out.last_mut() {
                Some(last) if s <= last.1 => last.1 = last.1.max(e),
                _ => out.push((s, e)),
            }
        }
        self.0 = out;
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
    /// The parts of `[0, len)` outside these ranges.
    pub fn complement(&self, len: u64) -> Vec<(u64, u64)> {
        let mut out = Vec::new();
        let mut at = 0;
        for &(s, e) in &self.0 {
            if s >= len {
                break;
            }
            if s > at {
                out.push((at, s));
            }
            at = at.max(e);
        }
        if at < len {
            out.push((at, len));
        }
        out
    }
}

/// One file as the journal describes it.
#[derive(Clone, Debug, Default)]
pub struct FileState {
    /// The content the workload last made durable (`None`: nothing yet).
    pub durable: Option<Vec<u8>>,
    /// Ranges written or truncated since then.
    pub dirty: Ranges,
    /// The name made durable last (the lower path for lower files).
    pub durable_path: Option<String>,
    /// Names it was renamed to (or created at) after that, not yet durable.
    pub later_paths: Vec<String>,
    /// The content after every intent so far (the workload's view).
    pub model: Vec<u8>,
    /// Unlinked (intent seen): it may be gone from its name.
    pub unlinked: bool,
    /// The unlink is durable: no name may show it.
    pub durably_unlinked: bool,
    /// The permission bits made durable last, and whether a chmod came after them.
    pub durable_mode: Option<u32>,
    pub mode_dirty: bool,
}

/// Everything the journal says.
#[derive(Clone, Debug, Default)]
pub struct Replay {
    pub files: Vec<FileState>,
    /// Names durably renamed away (must not exist).
    pub gone: BTreeSet<String>,
    /// Every name the workload ever used under its directory.
    pub known: BTreeSet<String>,
    /// Durable records seen.
    pub durable_records: usize,
    /// Intents seen.
    pub intents: usize,
}

/// Replays a journal. `base` gives the original bytes of lower file `id` (`JOURNAL/base-ID`).
/// A torn last line (no newline: the writer died in the middle) is ignored.
pub fn replay(
    text: &str,
    base: &dyn Fn(usize) -> std::io::Result<Vec<u8>>,
) -> anyhow::Result<Replay> {
    let mut r = Replay::default();
    let complete = match text.rfind('\n') {
        Some(i) => &text[..=i],
        None => "",
    };
    for (n, line) in complete.lines().enumerate() {
        let w: Vec<&str> = line.split(' ').collect();
        let num = |i: usize| -> anyhow::Result<u64> {
            w.get(i)
                .and_then(|s| s.parse().ok())
                .with_context(|| format!("journal line {}: {line:?}", n + 1))
        };
        let file = |r: &mut Replay, id: u64| -> anyhow::Result<usize> {
            let id = id as usize;
            if id > r.files.len() + 1000 {
                bail!("journal line {}: id {id} out of range", n + 1);
            }
            if r.files.len() <= id {
                r.files.resize(id + 1, FileState::default());
            }
            Ok(id)
        };
        match w[0] {
            "dir" => {}
            "base" => {
                let id = file(&mut r, num(1)?)?;
                let content = base(id).with_context(|| format!("base blob of file {id}"))?;
                let f = &mut r.files[id];
                f.model = content.clone();
                f.durable = Some(content);
                f.durable_path = Some(w[2].to_string());
                r.durable_records += 1;
            }
            "create" => {
                let id = file(&mut r, num(1)?)?;
                r.known.insert(w[2].to_string());
                r.files[id].later_paths.push(w[2].to_string());
                r.intents += 1;
            }
            "write" => {
                let id = file(&mut r, num(1)?)?;
                let (off, len, seed) = (num(2)?, num(3)?, num(4)?);
                let f = &mut r.files[id];
                apply_write(&mut f.model, off, &crate::fill(seed, len as usize));
                f.dirty.add(off, off + len);
                r.intents += 1;
            }
            "trunc" => {
                let id = file(&mut r, num(1)?)?;
                let size = num(2)?;
                let f = &mut r.files[id];
                let from = size.min(f.model.len() as u64);
                f.model.resize(size as usize, 0);
                f.dirty.add(from, u64::MAX);
                r.intents += 1;
            }
            "rename" => {
                let id = file(&mut r, num(1)?)?;
                r.known.insert(w[2].to_string());
                r.files[id].later_paths.push(w[2].to_string());
                r.intents += 1;
            }
            "durable" => {
                let id = file(&mut r, num(1)?)?;
                let f = &mut r.files[id];
                let (size, want) = (num(2)?, w.get(3).copied().unwrap_or(""));
                if f.model.len() as u64 != size || sha(&f.model) != want {
                    bail!(
                        "journal line {}: replayed content of file {id} ({} bytes) does not \
                         match the workload's ({size} bytes, sha256 {want})",
                        n + 1,
                        f.model.len()
                    );
                }
                f.durable = Some(f.model.clone());
                f.dirty = Ranges::default();
                r.durable_records += 1;
            }
            "unlink" => {
                let id = file(&mut r, num(1)?)?;
                r.files[id].unlinked = true;
                r.intents += 1;
            }
            "durable-unlink" => {
                let id = file(&mut r, num(1)?)?;
                let f = &mut r.files[id];
                f.durably_unlinked = true;
                r.gone.extend(f.durable_path.iter().cloned());
                r.gone.extend(f.later_paths.iter().cloned());
                r.durable_records += 1;
            }
            "chmod" => {
                let id = file(&mut r, num(1)?)?;
                r.files[id].mode_dirty = true;
                r.intents += 1;
            }
            "durable-mode" => {
                let id = file(&mut r, num(1)?)?;
                let mode = num(2)? as u32;
                let f = &mut r.files[id];
                f.durable_mode = Some(mode);
                f.mode_dirty = false;
                r.durable_records += 1;
            }
            "durable-name" => {
                let id = file(&mut r, num(1)?)?;
                let f = &mut r.files[id];
                let new = w[2].to_string();
                if let Some(old) = f.durable_path.take()
                    && old != new
                {
                    r.gone.insert(old);
                }
                // Earlier un-synced names are now superseded too.
                for p in f.later_paths.drain(..) {
                    if p != new {
                        r.gone.insert(p);
                    }
                }
                f.durable_path = Some(new);
                r.durable_records += 1;
            }
            other => bail!("journal line {}: unknown record {other:?}", n + 1),
        }
    }
    Ok(r)
}

/// Checks one file's bytes against what was guaranteed.
pub fn check_content(got: &[u8], durable: &[u8], dirty: &Ranges) -> Result<(), String> {
    if dirty.is_empty() && got.len() != durable.len() {
        return Err(format!(
            "size {} but {} bytes were fsync'ed and nothing changed since",
            got.len(),
            durable.len()
        ));
    }
    for (s, e) in dirty.complement(durable.len() as u64) {
        let (s, e) = (s as usize, e as usize);
        if got.len() < e {
            return Err(format!(
                "size {}: fsync'ed bytes {s}..{e} are missing",
                got.len()
            ));
        }
        if got[s..e] != durable[s..e] {
            let i = s + got[s..e]
                .iter()
                .zip(&durable[s..e])
                .position(|(a, b)| a != b)
                .unwrap();
            return Err(format!(
                "byte {i} is {:#04x}, fsync'ed {:#04x} (range {s}..{e} untouched since the fsync)",
                got[i], durable[i]
            ));
        }
    }
    Ok(())
}

/// Verifies the remounted tree at `mnt` against the replayed journal; returns the number of
/// fsync'ed bytes checked.
pub fn verify(mnt: &Path, r: &Replay) -> Result<u64, Vec<String>> {
    let mut errors = Vec::new();
    let mut checked = 0u64;
    for (id, f) in r.files.iter().enumerate() {
        let mut candidates: Vec<&String> = f.durable_path.iter().collect();
        candidates.extend(f.later_paths.iter());
        let found: Vec<&String> = candidates
            .iter()
            .copied()
            .filter(|p| std::fs::symlink_metadata(mnt.join(p)).is_ok_and(|m| m.is_file()))
            .collect();
        if f.durably_unlinked {
            // `gone` holds its names: checked below.
            continue;
        }
        match (found.len(), &f.durable_path) {
            (0, Some(_)) if f.unlinked => continue,
            (0, Some(p)) => {
                errors.push(format!(
                    "file {id}: missing (durable name {p}; later names {:?})",
                    f.later_paths
                ));
                continue;
            }
            (0, None) => continue,
            (1, _) => {}
            _ => {
                errors.push(format!(
                    "file {id}: present under several names {found:?} (rename not atomic)"
                ));
                continue;
            }
        }
        if let (Some(mode), false) = (f.durable_mode, f.mode_dirty)
            && let Ok(m) = std::fs::symlink_metadata(mnt.join(found[0]))
            && m.mode() & 0o7777 != mode
        {
            errors.push(format!(
                "file {id} ({}): mode {:o}, fsync'ed {mode:o}",
                found[0],
                m.mode() & 0o7777
            ));
        }
        let Some(durable) = &f.durable else {
            continue;
        };
        match std::fs::read(mnt.join(found[0])) {
            Err(e) => errors.push(format!("file {id} ({}): read: {e}", found[0])),
            Ok(got) => match check_content(&got, durable, &f.dirty) {
                Ok(()) => {
                    checked += dirty_free_len(durable.len() as u64, &f.dirty);
                }
                Err(e) => errors.push(format!("file {id} ({}): {e}", found[0])),
            },
        }
    }
    for p in &r.gone {
        if std::fs::symlink_metadata(mnt.join(p)).is_ok() {
            errors.push(format!("{p}: durably renamed away or unlinked, but exists"));
        }
    }
    for dir in [WORKDIR.to_string(), format!("{WORKDIR}/sub")] {
        let Ok(rd) = std::fs::read_dir(mnt.join(&dir)) else {
            if r.durable_records > 0 {
                errors.push(format!("{dir}: cannot list"));
            }
            continue;
        };
        for e in rd.flatten() {
            let name = format!("{dir}/{}", e.file_name().to_string_lossy());
            if name != format!("{WORKDIR}/sub") && !r.known.contains(&name) {
                errors.push(format!("{name}: a name the workload never created"));
            }
        }
    }
    if errors.is_empty() {
        Ok(checked)
    } else {
        Err(errors)
    }
}

fn dirty_free_len(len: u64, dirty: &Ranges) -> u64 {
    dirty.complement(len).iter().map(|(s, e)| e - s).sum()
}

// ---------------------------------------------------------------------------------------
// Trials.

/// Starts the workload child for given arguments, its stderr going to the given file.
pub type Spawner = Box<dyn Fn(&ChildArgs, &Path) -> std::io::Result<Child>>;

pub struct Config {
    pub image_dir: PathBuf,
    /// The strata binary; `None`: kernel overlayfs, crashing by killing the workload.
    pub strata: Option<PathBuf>,
    pub trials: usize,
    pub first_seed: u64,
    /// Operations per workload (it is usually killed long before).
    pub max_ops: usize,
    /// Starts the workload child for these arguments (re-executing the tool or the test).
    pub spawn: Spawner,
    /// Keep each trial's directory (journal, layer) after a failure.
    pub keep: bool,
    pub verbose: bool,
}

#[derive(Default, Debug)]
pub struct Summary {
    pub trials: usize,
    pub durable_records: usize,
    pub intents: usize,
    pub bytes_checked: u64,
    /// Trials where the workload was still running at the kill.
    pub killed_mid_workload: usize,
}

pub struct TrialFailure {
    pub seed: u64,
    pub kill_after_ms: u64,
    pub errors: Vec<String>,
    pub dir: Option<PathBuf>,
}

impl std::fmt::Display for TrialFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "CRASH TEST FAILED: seed {} (kill after {} ms):",
            self.seed, self.kill_after_ms
        )?;
        for e in self.errors.iter().take(30) {
            writeln!(f, "  {e}")?;
        }
        if let Some(d) = &self.dir {
            writeln!(f, "  trial directory kept: {}", d.display())?;
        }
        write!(f, "reproduce the workload: --seed {} --trials 1", self.seed)
    }
}

/// The mount under test.
enum Target {
    Strata(Strata),
    Kernel(Vec<PathBuf>),
}

/// Cleans up a trial whatever happens: kills the workload if still running, unmounts.
struct TrialGuard {
    child: Option<Child>,
    mnt: PathBuf,
    strata: Option<Strata>,
    overlay: Option<Overlay>,
}

impl Drop for TrialGuard {
    fn drop(&mut self) {
        if let Some(c) = &mut self.child {
            if c.try_wait().ok().flatten().is_none() {
                crate::kill9(c.id() as i32);
            }
            let _ = c.wait();
        }
        if let Some(s) = &self.strata {
            let pid = s.daemon_pid(&self.mnt);
            if s.umount(&self.mnt).is_err() {
                crate::unmount(&self.mnt);
            }
            if let Some(pid) = pid {
                crate::StrataMount::finish(pid);
            }
        }
        drop(self.overlay.take());
        crate::unmount(&self.mnt);
    }
}

pub fn run(cfg: &Config) -> anyhow::Result<Result<Summary, TrialFailure>> {
    let work = tempfile::Builder::new().prefix("crashtest-").tempdir()?;
    let target = match &cfg.strata {
        Some(bin) => Target::Strata(Strata::load(
            bin,
            &work.path().join("root"),
            &cfg.image_dir,
        )?),
        None => Target::Kernel(crate::extract_lowers(
            &crate::layer_tars(&cfg.image_dir),
            &work.path().join("lowers"),
        )?),
    };
    let mut sum = Summary::default();
    for seed in cfg.first_seed..cfg.first_seed + cfg.trials as u64 {
        let dir = work.path().join(format!("t{seed}"));
        std::fs::create_dir_all(&dir)?;
        let kill_after_ms = Rng::new(seed ^ 0xc4a5).range(20, 700);
        match trial(cfg, &target, &dir, seed, kill_after_ms, &mut sum) {
            Ok(errors) if errors.is_empty() => {
                sum.trials += 1;
                let _ = std::fs::remove_dir_all(&dir);
                if cfg.verbose {
                    println!("  trial seed {seed}: ok (kill after {kill_after_ms} ms)");
                }
            }
            Ok(errors) => {
                let kept = if cfg.keep {
                    let keep = std::env::temp_dir().join(format!("crashtest-failed-{seed}"));
                    let _ = std::fs::remove_dir_all(&keep);
                    std::fs::rename(&dir, &keep).ok().map(|_| keep)
                } else {
                    None
                };
                return Ok(Err(TrialFailure {
                    seed,
                    kill_after_ms,
                    errors,
                    dir: kept,
                }));
            }
            Err(e) => {
                return Ok(Err(TrialFailure {
                    seed,
                    kill_after_ms,
                    errors: vec![format!("{e:#}")],
                    dir: None,
                }));
            }
        }
    }
    Ok(Ok(sum))
}

/// One trial; returns the verification errors (empty: passed).
fn trial(
    cfg: &Config,
    target: &Target,
    dir: &Path,
    seed: u64,
    kill_after_ms: u64,
    sum: &mut Summary,
) -> anyhow::Result<Vec<String>> {
    let mnt = dir.join("mnt");
    let layer = dir.join("layer");
    let jdir = dir.join("journal");
    std::fs::create_dir_all(&mnt)?;
    std::fs::create_dir_all(&jdir)?;
    let mut g = TrialGuard {
        child: None,
        mnt: mnt.clone(),
        strata: None,
        overlay: None,
    };
    let mount = |g: &mut TrialGuard| -> anyhow::Result<Option<i32>> {
        match target {
            Target::Strata(s) => {
                let pid = s.mount_rw(&mnt, &layer)?;
                g.strata = Some(s.clone());
                Ok(Some(pid))
            }
            Target::Kernel(lowers) => {
                if g.overlay.is_none() {
                    g.overlay = Some(Overlay::new(lowers, dir)?);
                }
                g.overlay.as_ref().unwrap().mount()?;
                Ok(None)
            }
        }
    };
    let daemon = mount(&mut g).context("first mount")?;

    let args = ChildArgs {
        mnt: mnt.clone(),
        journal_dir: jdir.clone(),
        seed,
        max_ops: cfg.max_ops,
        max_secs: 20,
    };
    let stderr_path = dir.join("child.stderr");
    g.child = Some((cfg.spawn)(&args, &stderr_path).context("starting the workload")?);
    let child_err = || std::fs::read_to_string(&stderr_path).unwrap_or_default();

    // Wait for the kill moment, noticing an early end of the workload.
    let t = Instant::now();
    let mut early_exit = None;
    while t.elapsed() < Duration::from_millis(kill_after_ms) {
        if let Some(st) = g.child.as_mut().unwrap().try_wait()? {
            early_exit = Some(st);
            break;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    // The crash.
    match daemon {
        Some(pid) => crate::kill9(pid),
        None => crate::kill9(g.child.as_ref().unwrap().id() as i32),
    }
    if let Some(st) = early_exit {
        if st.code() != Some(CHILD_DONE) {
            bail!(
                "the workload failed before the crash ({st}): {}",
                child_err().trim()
            );
        }
    } else {
        sum.killed_mid_workload += 1;
    }
    // The workload sees ENOTCONN and stops (bounded wait).
    let c = g.child.as_mut().unwrap();
    let t = Instant::now();
    loop {
        if c.try_wait()?.is_some() {
            break;
        }
        if t.elapsed() > Duration::from_secs(20) {
            crate::kill9(c.id() as i32);
            let _ = c.wait();
            bail!("the workload hung for 20 s after the daemon was killed");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    g.child = None;
    if cfg.verbose {
        println!("    child: {}", child_err().trim());
    }

    // Clean up the dead mount, remount the same layer.
    match target {
        Target::Strata(s) => {
            let pid = daemon.unwrap();
            anyhow::ensure!(
                crate::wait_exit(pid, Duration::from_secs(10)),
                "the daemon survived SIGKILL"
            );
            s.umount(&mnt)
                .context("`strata umount` of the dead mount")?;
            anyhow::ensure!(
                !crate::is_mounted(&mnt),
                "still mounted after `strata umount` of the dead mount"
            );
        }
        Target::Kernel(_) => {
            // `umount -l` without sync: nothing is flushed on purpose.
            strata::sys::unmount_lazy(&mnt)?;
            anyhow::ensure!(crate::unmount(&mnt), "overlay did not go away");
        }
    }
    mount(&mut g).context("mounting the same layer again after the crash")?;

    let text = std::fs::read_to_string(jdir.join("journal")).unwrap_or_default();
    let replayed = replay(&text, &|id| std::fs::read(jdir.join(format!("base-{id}"))))?;
    sum.durable_records += replayed.durable_records;
    sum.intents += replayed.intents;
    let mut errors = match verify(&mnt, &replayed) {
        Ok(n) => {
            sum.bytes_checked += n;
            Vec::new()
        }
        Err(e) => e,
    };
    if let Err(e) = probe(&mnt) {
        errors.push(format!("the remounted file system does not work: {e}"));
    }
    if !errors.is_empty() {
        errors.push(format!("workload: {}", child_err().trim()));
    }
    // Regular unmount (the guard's `strata umount`), then the daemon must be gone.
    drop(g);
    anyhow::ensure!(!crate::is_mounted(&mnt), "still mounted after umount");
    Ok(errors)
}

/// The remounted file system works: create, write, fsync, read back, list, unlink.
fn probe(mnt: &Path) -> Result<(), String> {
    let p = mnt.join(WORKDIR).join("probe");
    let e = |w: &'static str| move |err: std::io::Error| format!("{w}: {err}");
    std::fs::create_dir_all(mnt.join(WORKDIR)).map_err(e("mkdir"))?;
    let mut f = File::create(&p).map_err(e("create"))?;
    f.write_all(b"probe\n").map_err(e("write"))?;
    f.sync_all().map_err(e("fsync"))?;
    drop(f);
    let mut s = String::new();
    File::open(&p)
        .and_then(|mut f| f.read_to_string(&mut s))
        .map_err(e("read"))?;
    if s != "probe\n" {
        return Err(format!("read back {s:?}"));
    }
    let listed = std::fs::read_dir(mnt.join(WORKDIR))
        .map_err(e("readdir"))?
        .flatten()
        .any(|d| d.file_name() == "probe");
    if !listed {
        return Err("probe not listed".into());
    }
    std::fs::remove_file(&p).map_err(e("unlink"))?;
    Ok(())
}

/// Spawns `exe` with `args` (the tool re-executing itself as the workload child).
pub fn spawn_with(
    mut cmd: Command,
    args: &ChildArgs,
    stderr: &Path,
    env_var: Option<&str>,
    arg: Option<&str>,
) -> std::io::Result<Child> {
    let json = serde_json::to_string(args).unwrap();
    if let Some(v) = env_var {
        cmd.env(v, &json);
    }
    if let Some(a) = arg {
        cmd.arg(a).arg(&json);
    }
    cmd.stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(File::create(stderr)?)
        .spawn()
}

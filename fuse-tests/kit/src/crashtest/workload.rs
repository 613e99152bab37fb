//! The workload, run in the child process: seeded creates, writes, truncates, renames,
//! unlinks and chmods on the mount, each preceded by its intent line in the journal and
//! followed, once fsync'ed, by its durable line.
//!
//! Never does: check anything; it stops at the first error (normally the daemon's death).

use std::fs::File;
use std::io::Write as _;
use std::os::unix::fs::{FileExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::time::{Duration, Instant};

use super::{CHILD_DONE, CHILD_STOPPED, ChildArgs, LOWER_FILES, WORKDIR, apply_write, sha};
use crate::Rng;

struct Journal {
    f: File,
}

impl Journal {
    fn create(dir: &Path) -> std::io::Result<Journal> {
        std::fs::create_dir_all(dir)?;
        let f = File::options()
            .create(true)
            .append(true)
            .open(dir.join("journal"))?;
        Ok(Journal { f })
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

//! Running trials: start the workload, kill the daemon (or, in kernel mode, the workload) at a
//! random moment, clean up and remount, replay and verify; the summary and failures.
//!
//! Never does: leave a mount or a process behind (`TrialGuard` cleans up on every path).

use std::fs::File;
use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use super::replay::replay;
use super::verify::verify;
use super::{CHILD_DONE, ChildArgs, WORKDIR};
use crate::{Overlay, Rng, Strata};
use anyhow::{Context as _, bail};

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
    /// More arguments for strata's `mount --rw` (e.g. `--io passthrough`).
    pub mount_args: Vec<String>,
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
        Some(bin) => Target::Strata(Strata {
            mount_args: cfg.mount_args.clone(),
            ..Strata::load(bin, &work.path().join("root"), &cfg.image_dir)?
        }),
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

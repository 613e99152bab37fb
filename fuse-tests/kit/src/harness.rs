//! Test harness shared by the differential tester (`tools/difftest`) and the crash test
//! (`tools/crashtest`): a seeded PRNG, the sample image for the tools, kernel overlayfs lower
//! directories built with GNU tar (independently of strata's own tar code), writable kernel
//! overlayfs mounts, and writable strata mounts through the real `strata` binary.
//!
//! Included with `#[path]` by the tools (cargo examples) and by `fuse-tests/` (which cannot
//! share `fuse-tests/common`: it uses `env!("CARGO_BIN_EXE_strata")`, which cargo only sets
//! for integration tests). Everything that mounts also unmounts in `Drop`, so a failing run
//! leaves no mount behind; every wait is bounded.
#![allow(dead_code)]

use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// The name the sample image is loaded under (`images/build.py`).
pub const SAMPLE_IMAGE: &str = "strata-sample:latest";

/// SplitMix64: small, fast, and the same sequence on every machine, which is all a seeded
/// test needs.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed ^ 0x5eed_5eed_5eed_5eed)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// Uniform in `0..n` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
    /// Uniform in `lo..hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi - lo)
    }
    /// True with probability `pct`%.
    pub fn chance(&mut self, pct: u64) -> bool {
        self.below(100) < pct
    }
    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }
    /// Index into `weights`, chosen with probability proportional to the weight.
    pub fn weighted(&mut self, weights: &[u32]) -> usize {
        let total: u64 = weights.iter().map(|&w| w as u64).sum();
        let mut x = self.below(total);
        for (i, &w) in weights.iter().enumerate() {
            if x < w as u64 {
                return i;
            }
            x -= w as u64;
        }
        weights.len() - 1
    }
}

/// `len` deterministic bytes derived from `seed` (the data of a write, rebuilt by a verifier).
pub fn fill(seed: u64, len: usize) -> Vec<u8> {
    let mut r = Rng::new(seed);
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        out.extend_from_slice(&r.next_u64().to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Runs a command; its stdout, or an error with its stderr.
pub fn run(cmd: &mut Command) -> anyhow::Result<String> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The layer tars of a sample image directory, bottom first.
pub fn layer_tars(image: &Path) -> Vec<PathBuf> {
    (1..)
        .map(|i| image.join("layers").join(format!("{i}.tar")))
        .take_while(|p| p.exists())
        .collect()
}

/// Extracts each layer tar with GNU tar (as root, numeric owners, xattrs) into
/// `dir/l0`, `dir/l1`, … and puts them in overlay form: `.wh.NAME` becomes a 0/0 character
/// device, `.wh..wh..opq` the `trusted.overlay.opaque` xattr. Directories a tar only implies
/// (GNU tar creates them with the current time and default attributes) get the attributes of
/// the same directory in the layers below, so the overlay shows the image's attributes.
/// Returns the lower directories, bottom first.
pub fn extract_lowers(layers: &[PathBuf], dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut lowers: Vec<PathBuf> = Vec::new();
    for (i, tar) in layers.iter().enumerate() {
        let l = dir.join(format!("l{i}"));
        std::fs::create_dir_all(&l)?;
        run(Command::new("tar")
            .args(["--xattrs", "--xattrs-include=*", "--numeric-owner", "-xpf"])
            .arg(tar)
            .arg("-C")
            .arg(&l))?;
        to_overlay_form(&l)?;
        for rel in implied_dirs(tar)? {
            let below = lowers
                .iter()
                .rev()
                .map(|b| b.join(rel_path(&rel)))
                .find(|p| std::fs::symlink_metadata(p).is_ok_and(|m| m.is_dir()));
            if let Some(src) = below {
                copy_dir_attrs(&src, &l.join(rel_path(&rel)))?;
            }
        }
        lowers.push(l);
    }
    Ok(lowers)
}

fn rel_path(rel: &[u8]) -> &Path {
    if rel.is_empty() {
        Path::new(".")
    } else {
        Path::new(OsStr::from_bytes(rel))
    }
}

/// Directories a tar has entries below but no entry for (including its root).
fn implied_dirs(tar: &Path) -> anyhow::Result<Vec<Vec<u8>>> {
    let mut explicit = BTreeSet::new();
    let mut parents = BTreeSet::new();
    let mut a = tar::Archive::new(std::fs::File::open(tar)?);
    for e in a.entries()? {
        let e = e?;
        let p = e.path_bytes().into_owned();
        let p: Vec<&[u8]> = p
            .split(|&b| b == b'/')
            .filter(|c| !c.is_empty() && *c != b".")
            .collect();
        if e.header().entry_type().is_dir() {
            explicit.insert(p.join(&b'/'));
        }
        for i in 0..p.len() {
            parents.insert(p[..i].join(&b'/'));
        }
    }
    Ok(parents.difference(&explicit).cloned().collect())
}

fn copy_dir_attrs(src: &Path, dst: &Path) -> anyhow::Result<()> {
    let m = std::fs::symlink_metadata(src)?;
    rustix::fs::chown(
        dst,
        Some(rustix::fs::Uid::from_raw(m.uid())),
        Some(rustix::fs::Gid::from_raw(m.gid())),
    )?;
    rustix::fs::chmod(dst, rustix::fs::Mode::from_raw_mode(m.mode() & 0o7777))?;
    set_times(dst, &m)?;
    Ok(())
}

fn set_times(p: &Path, m: &std::fs::Metadata) -> anyhow::Result<()> {
    let ts = rustix::fs::Timestamps {
        last_access: rustix::fs::Timespec {
            tv_sec: m.atime(),
            tv_nsec: m.atime_nsec() as _,
        },
        last_modification: rustix::fs::Timespec {
            tv_sec: m.mtime(),
            tv_nsec: m.mtime_nsec() as _,
        },
    };
    rustix::fs::utimensat(
        rustix::fs::CWD,
        p,
        &ts,
        rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
    )?;
    Ok(())
}

/// Converts aufs-style whiteouts under `dir` to overlayfs form, keeping directory mtimes.
fn to_overlay_form(dir: &Path) -> anyhow::Result<()> {
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let meta = std::fs::symlink_metadata(&d)?;
        let mut touched = false;
        for e in std::fs::read_dir(&d)? {
            let e = e?;
            let name = e.file_name();
            let name = name.as_bytes();
            if name == b".wh..wh..opq" {
                std::fs::remove_file(e.path())?;
                rustix::fs::lsetxattr(
                    &d,
                    "trusted.overlay.opaque",
                    b"y",
                    rustix::fs::XattrFlags::empty(),
                )?;
                touched = true;
            } else if let Some(hidden) = name.strip_prefix(b".wh.") {
                std::fs::remove_file(e.path())?;
                rustix::fs::mknodat(
                    rustix::fs::CWD,
                    d.join(OsStr::from_bytes(hidden)),
                    rustix::fs::FileType::CharacterDevice,
                    rustix::fs::Mode::empty(),
                    rustix::fs::makedev(0, 0),
                )?;
                touched = true;
            } else if e.file_type()?.is_dir() {
                stack.push(e.path());
            }
        }
        if touched {
            set_times(&d, &meta)?;
        }
    }
    Ok(())
}

pub fn is_mounted(p: &Path) -> bool {
    strata::sys::mount_at(p).is_some()
}

/// Unmounts `p` (plain, then lazily), bounded: returns whether it is no longer a mount point.
pub fn unmount(p: &Path) -> bool {
    for i in 0..100 {
        if !is_mounted(p) {
            return true;
        }
        let flags = if i < 3 {
            rustix::mount::UnmountFlags::empty()
        } else {
            rustix::mount::UnmountFlags::DETACH
        };
        let _ = rustix::mount::unmount(p, flags);
        std::thread::sleep(Duration::from_millis(if i < 3 { 0 } else { 20 }));
    }
    !is_mounted(p)
}

/// A writable kernel overlayfs mount of `lowers` with its own upper and work directories,
/// with the options the differential tester needs (`redirect_dir=on` so lower directories
/// rename without EXDEV, `index=on` so hard links to lower files stay hard links).
pub struct Overlay {
    pub mnt: PathBuf,
    pub upper: PathBuf,
    pub work: PathBuf,
    lowers: Vec<PathBuf>,
}

impl Overlay {
    /// Prepares `base/{mnt,upper,work}`; does not mount.
    pub fn new(lowers: &[PathBuf], base: &Path) -> anyhow::Result<Self> {
        let o = Overlay {
            mnt: base.join("mnt"),
            upper: base.join("upper"),
            work: base.join("work"),
            lowers: lowers.to_vec(),
        };
        for d in [&o.mnt, &o.upper, &o.work] {
            std::fs::create_dir_all(d)?;
        }
        Ok(o)
    }

    pub fn mount(&self) -> anyhow::Result<()> {
        let lowerdir: Vec<String> = self
            .lowers
            .iter()
            .rev()
            .map(|p| p.display().to_string())
            .collect();
        let opts = format!(
            "lowerdir={},upperdir={},workdir={},redirect_dir=on,index=on,metacopy=off",
            lowerdir.join(":"),
            self.upper.display(),
            self.work.display()
        );
        run(Command::new("mount")
            .args(["-t", "overlay", "overlay", "-o", "nodev", "-o"])
            .arg(opts)
            .arg(&self.mnt))?;
        Ok(())
    }

    pub fn unmount(&self) -> anyhow::Result<()> {
        if !unmount(&self.mnt) {
            bail!("could not unmount {}", self.mnt.display());
        }
        Ok(())
    }

    /// Unmounts and empties upper and work: the next `mount` is the pristine image again.
    pub fn reset(&self) -> anyhow::Result<()> {
        self.unmount()?;
        for d in [&self.upper, &self.work] {
            std::fs::remove_dir_all(d)?;
            std::fs::create_dir(d)?;
        }
        Ok(())
    }
}

impl Drop for Overlay {
    fn drop(&mut self) {
        unmount(&self.mnt);
    }
}

/// The `strata` binary with a state root that holds the sample image.
#[derive(Clone, Debug)]
pub struct Strata {
    pub bin: PathBuf,
    pub root: PathBuf,
    pub image: String,
}

impl Strata {
    /// Loads the sample image (`image_dir/oci`) into `root`.
    pub fn load(bin: &Path, root: &Path, image_dir: &Path) -> anyhow::Result<Self> {
        let s = Strata {
            bin: bin.to_path_buf(),
            root: root.to_path_buf(),
            image: SAMPLE_IMAGE.to_string(),
        };
        s.cmd(&[OsStr::new("load"), image_dir.join("oci").as_os_str()])?;
        Ok(s)
    }

    pub fn cmd(&self, args: &[&OsStr]) -> anyhow::Result<String> {
        run(Command::new(&self.bin)
            .arg("--root")
            .arg(&self.root)
            .args(args)
            .env("RUST_LOG", "strata=warn"))
    }

    /// `strata mount --rw IMAGE MNT --layer LAYER -d`; returns the daemon's pid.
    pub fn mount_rw(&self, mnt: &Path, layer: &Path) -> anyhow::Result<i32> {
        self.cmd(&[
            OsStr::new("mount"),
            OsStr::new("--rw"),
            OsStr::new(&self.image),
            mnt.as_os_str(),
            OsStr::new("--layer"),
            layer.as_os_str(),
            OsStr::new("-d"),
        ])?;
        self.daemon_pid(mnt)
            .with_context(|| format!("no mount record for {} after mount", mnt.display()))
    }

    /// The pid of the daemon serving `mnt`, from `ROOT/mounts/*.json`.
    pub fn daemon_pid(&self, mnt: &Path) -> Option<i32> {
        let want = std::fs::canonicalize(mnt).unwrap_or_else(|_| mnt.to_path_buf());
        for e in std::fs::read_dir(self.root.join("mounts")).ok()?.flatten() {
            if e.path().extension() != Some(OsStr::new("json")) {
                continue;
            }
            let Ok(body) = std::fs::read(e.path()) else {
                continue;
            };
            let Ok(v) = serde_json::from_slice::<serde_json::Value>(&body) else {
                continue;
            };
            if v["mountpoint"].as_str().map(Path::new) == Some(want.as_path()) {
                return v["pid"].as_i64().map(|p| p as i32);
            }
        }
        None
    }

    /// `strata umount MNT`.
    pub fn umount(&self, mnt: &Path) -> anyhow::Result<()> {
        self.cmd(&[OsStr::new("umount"), mnt.as_os_str()])?;
        Ok(())
    }
}

/// Waits (bounded) until `pid` has exited; true if it did.
pub fn wait_exit(pid: i32, limit: Duration) -> bool {
    let t = Instant::now();
    while strata::sys::process_alive(pid) {
        if t.elapsed() > limit {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    true
}

/// SIGKILLs `pid`, a process this harness started (directly or through `strata mount -d`).
pub fn kill9(pid: i32) {
    if let Some(p) = rustix::process::Pid::from_raw(pid) {
        let _ = rustix::process::kill_process(p, rustix::process::Signal::KILL);
    }
}

/// A writable strata mount; on drop it is unmounted (kernel-side, which is fast: the daemon
/// then exits by itself; see [`StrataMount::finish`]) and the daemon is waited for, bounded.
pub struct StrataMount {
    pub mnt: PathBuf,
    pub layer: PathBuf,
    pub pid: i32,
    pub strata: Strata,
}

impl StrataMount {
    pub fn mount(strata: &Strata, mnt: &Path, layer: &Path) -> anyhow::Result<Self> {
        std::fs::create_dir_all(mnt)?;
        let pid = strata.mount_rw(mnt, layer)?;
        Ok(StrataMount {
            mnt: mnt.to_path_buf(),
            layer: layer.to_path_buf(),
            pid,
            strata: strata.clone(),
        })
    }

    /// Detaches the mount without waiting for the daemon; returns its pid so the caller can
    /// wait for it later (the daemon takes a while to exit after its mount goes away, and the
    /// tester does not need to wait for that before starting the next run elsewhere).
    pub fn detach(self) -> i32 {
        unmount(&self.mnt);
        let pid = self.pid;
        std::mem::forget(self);
        pid
    }

    /// Waits for a detached daemon to exit (bounded), SIGTERM then SIGKILL if it does not.
    pub fn finish(pid: i32) {
        if !wait_exit(pid, Duration::from_secs(10)) {
            let _ = strata::sys::terminate(pid);
            if !wait_exit(pid, Duration::from_secs(5)) {
                kill9(pid);
                wait_exit(pid, Duration::from_secs(5));
            }
        }
    }
}

impl Drop for StrataMount {
    fn drop(&mut self) {
        if self.strata.umount(&self.mnt).is_err() {
            unmount(&self.mnt);
        }
        StrataMount::finish(self.pid);
    }
}

/// The start-up of the tools (difftest, crashtest): they need root; the sample image is
/// `image`, else built; side B's strata binary is `strata`, else the one built next to the
/// tool, or none when the tool runs kernel overlayfs on both sides (`kernel_only`).
pub fn tool_inputs(
    image: Option<PathBuf>,
    strata: Option<PathBuf>,
    kernel_only: bool,
) -> anyhow::Result<(PathBuf, Option<PathBuf>)> {
    anyhow::ensure!(
        rustix::process::geteuid().is_root(),
        "needs root (kernel overlayfs and FUSE mounts)"
    );
    let image = match image {
        Some(p) => p,
        None => crate::common::try_sample_image()?,
    };
    if kernel_only {
        return Ok((image, None));
    }
    let strata = match strata {
        Some(p) => p,
        None => {
            let p = crate::common::strata_bin();
            anyhow::ensure!(
                p.exists(),
                "no strata binary next to this example: run `cargo build --release` first or \
                 pass --strata PATH"
            );
            p
        }
    };
    Ok((image, Some(strata)))
}

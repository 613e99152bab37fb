//! The two backends the writable-mount tests (`rw_ops.rs`) run every scenario against, behind
//! one trait: kernel overlayfs (the oracle: the sample image's layer tars extracted by GNU tar
//! into lowerdirs, plus an empty upperdir and workdir) and strata's `mount --rw` (the CLI).
//! Plus small syscall helpers the scenarios share.
#![allow(dead_code)]

use std::ffi::{CString, OsStr};
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::common::{self, MountGuard, is_mounted, wait_unmounted};

pub const SAMPLE: &str = "strata-sample:latest";

/// A way to mount the sample image writable, every change landing in a "layer" directory:
/// strata's sled layer, or kernel overlayfs's upperdir.
pub trait Backend {
    fn name(&self) -> &'static str;
    fn is_strata(&self) -> bool;
    /// Mounts the sample image writable at `mnt` (an existing empty directory), with its changes
    /// in `layer` (created if missing). `Err` carries the failure's message (stderr).
    fn try_mount_at(&self, layer: &Path, mnt: &Path) -> Result<(), String>;
    /// Unmounts `mnt` (the way a user would) and waits (bounded) until it is gone.
    fn unmount_at(&self, mnt: &Path) -> Result<(), String>;
    /// The processes serving the mount at `mnt` (strata's daemon; none for the kernel).
    fn daemon_pids(&self, _mnt: &Path) -> Vec<i32> {
        Vec::new()
    }
}

impl<'b> dyn Backend + 'b {
    /// A fresh instance: new temporary directory, empty layer, mounted.
    pub fn mount(&self) -> Mounted<'_, 'b> {
        // Every test wants the same umask; setting it in each is harmless.
        rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o022));
        let tmp = tempfile::tempdir().unwrap();
        let mnt = tmp.path().join("mnt");
        std::fs::create_dir(&mnt).unwrap();
        let layer = tmp.path().join("layer");
        let guard = MountGuard(mnt.clone());
        if let Err(e) = self.try_mount_at(&layer, &mnt) {
            panic!("{}: mount failed: {e}", self.name());
        }
        assert!(is_mounted(&mnt), "{}: not mounted after mount", self.name());
        Mounted {
            b: self,
            dir: tmp.path().to_path_buf(),
            mnt,
            layer,
            mounted: true,
            _guard: guard,
            _tmp: tmp,
        }
    }
}

/// One mounted instance. Unmounts on drop (also when the test panics).
pub struct Mounted<'a, 'b> {
    pub b: &'a (dyn Backend + 'b),
    /// The instance's temporary directory (holds `mnt` and `layer`; free for other files).
    pub dir: PathBuf,
    pub mnt: PathBuf,
    pub layer: PathBuf,
    mounted: bool,
    // Field order matters: the guard (lazy unmount) drops before the directory is removed.
    _guard: MountGuard,
    _tmp: tempfile::TempDir,
}

impl Mounted<'_, '_> {
    /// `rel` under the mount point.
    pub fn p(&self, rel: &str) -> PathBuf {
        self.mnt.join(rel)
    }

    pub fn strata(&self) -> bool {
        self.b.is_strata()
    }

    pub fn unmount(&mut self) {
        assert!(self.mounted, "already unmounted");
        if let Err(e) = self.b.unmount_at(&self.mnt) {
            panic!("{}: unmount failed: {e}", self.b.name());
        }
        self.mounted = false;
    }

    /// Mounts the same layer again (after [`Mounted::unmount`]).
    pub fn mount_again(&mut self) {
        assert!(!self.mounted, "still mounted");
        if let Err(e) = self.b.try_mount_at(&self.layer, &self.mnt) {
            panic!("{}: mount again failed: {e}", self.b.name());
        }
        self.mounted = true;
    }

    /// Unmount, then mount the same layer again.
    pub fn remount(&mut self) {
        self.unmount();
        self.mount_again();
    }

    /// Bytes the layer occupies on the host (allocated blocks of every file under it).
    pub fn layer_disk_usage(&self) -> u64 {
        disk_usage(&self.layer)
    }
}

impl Drop for Mounted<'_, '_> {
    fn drop(&mut self) {
        if self.mounted {
            let _ = self.b.unmount_at(&self.mnt);
        }
    }
}

/// Allocated bytes (st_blocks × 512) of everything under `p`.
pub fn disk_usage(p: &Path) -> u64 {
    let Ok(m) = std::fs::symlink_metadata(p) else {
        return 0;
    };
    let mut total = m.blocks() * 512;
    if m.is_dir() {
        for e in std::fs::read_dir(p).unwrap().flatten() {
            total += disk_usage(&e.path());
        }
    }
    total
}

// ---------------------------------------------------------------------------------------------
// Kernel overlayfs

/// Kernel overlayfs over the sample image's layers, writable: `layer` is the upperdir, and the
/// workdir is its sibling `<layer>.work`. Options: `redirect_dir=on` (renaming lower dirs works
/// instead of EXDEV), `index=on` (hard links survive copy-up, and an upperdir is exclusive to
/// one mount), `metacopy=off` (copy-up copies data, as most distributions configure it).
pub struct KernelOverlay {
    lowers: Vec<PathBuf>,
}

impl KernelOverlay {
    pub fn new() -> Self {
        KernelOverlay {
            lowers: shared_lowers().to_vec(),
        }
    }
}

impl Default for KernelOverlay {
    fn default() -> Self {
        Self::new()
    }
}

/// The lowerdirs, extracted once per sample-image version into the target dir (overlay never
/// writes to its lowerdirs, so every test's mount shares them).
fn shared_lowers() -> &'static [PathBuf] {
    static LOWERS: OnceLock<Vec<PathBuf>> = OnceLock::new();
    LOWERS.get_or_init(|| {
        let img = common::sample_image();
        let stamp = img.file_name().unwrap().to_string_lossy().into_owned();
        let dir = common::target_tmp().join(format!("rw-lowers-v1-{stamp}"));
        let lock = strata::sys::lock_file(&dir.with_extension("lock")).expect("lock lowers");
        let layers = common::sample_layers();
        if !dir.join("done").exists() {
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            common::extract_overlay_lowers(&layers, &dir);
            std::fs::write(dir.join("done"), b"").unwrap();
        }
        drop(lock);
        (0..layers.len())
            .map(|i| dir.join(format!("l{i}")))
            .collect()
    })
}

impl Backend for KernelOverlay {
    fn name(&self) -> &'static str {
        "kernel overlayfs"
    }

    fn is_strata(&self) -> bool {
        false
    }

    fn try_mount_at(&self, layer: &Path, mnt: &Path) -> Result<(), String> {
        if !layer.exists() {
            std::fs::create_dir_all(layer).map_err(|e| e.to_string())?;
        }
        let mut work = layer.as_os_str().to_owned();
        work.push(".work");
        let work = PathBuf::from(work);
        std::fs::create_dir_all(&work).map_err(|e| e.to_string())?;
        let lowerdir: Vec<String> = self
            .lowers
            .iter()
            .rev()
            .map(|p| p.display().to_string())
            .collect();
        let out = Command::new("mount")
            .args(["-t", "overlay", "overlay", "-o"])
            .arg(format!(
                "lowerdir={},upperdir={},workdir={},redirect_dir=on,index=on,metacopy=off",
                lowerdir.join(":"),
                layer.display(),
                work.display()
            ))
            .arg(mnt)
            .output()
            .map_err(|e| e.to_string())?;
        if !out.status.success() {
            return Err(format!(
                "mount -t overlay: exit {:?}: {}",
                out.status.code(),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        Ok(())
    }

    fn unmount_at(&self, mnt: &Path) -> Result<(), String> {
        // Tests run in parallel threads and some fork (without exec) to drop privileges: such
        // a child briefly holds copies of every descriptor of the process, including files
        // another test has open in this mount. So EBUSY is retried, bounded: 250 × 20 ms.
        let mut tries = 0;
        loop {
            match rustix::mount::unmount(mnt, rustix::mount::UnmountFlags::empty()) {
                Ok(()) => break,
                Err(rustix::io::Errno::BUSY) if tries < 250 => {
                    tries += 1;
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => return Err(format!("umount {}: {e}", mnt.display())),
            }
        }
        if !wait_unmounted(mnt) {
            return Err(format!("{} still mounted", mnt.display()));
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// strata

/// strata's CLI: `strata --root ROOT mount --rw strata-sample:latest MNT --layer LAYER -d`, with
/// its own state root holding the loaded sample image.
pub struct Strata {
    root: tempfile::TempDir,
}

impl Strata {
    pub fn new() -> Self {
        let root = tempfile::tempdir().unwrap();
        let oci = common::sample_image().join("oci");
        common::strata_ok(root.path(), &["load", oci.to_str().unwrap()]);
        Strata { root }
    }

    pub fn root(&self) -> &Path {
        self.root.path()
    }
}

impl Default for Strata {
    fn default() -> Self {
        Self::new()
    }
}

impl Backend for Strata {
    fn name(&self) -> &'static str {
        "strata"
    }

    fn is_strata(&self) -> bool {
        true
    }

    fn try_mount_at(&self, layer: &Path, mnt: &Path) -> Result<(), String> {
        let args: [&OsStr; 7] = [
            OsStr::new("mount"),
            OsStr::new("--rw"),
            OsStr::new(SAMPLE),
            mnt.as_os_str(),
            OsStr::new("--layer"),
            layer.as_os_str(),
            OsStr::new("-d"),
        ];
        let (code, _out, err) = common::strata(self.root.path(), &args);
        if code != 0 {
            return Err(format!("strata mount --rw: exit {code}: {err}"));
        }
        if !is_mounted(mnt) {
            return Err(format!(
                "strata mount --rw exited 0 but {} is not mounted",
                mnt.display()
            ));
        }
        Ok(())
    }

    fn unmount_at(&self, mnt: &Path) -> Result<(), String> {
        let (code, _out, err) =
            common::strata(self.root.path(), &[OsStr::new("umount"), mnt.as_os_str()]);
        if code != 0 {
            return Err(format!("strata umount: exit {code}: {err}"));
        }
        if !wait_unmounted(mnt) {
            return Err(format!("{} still mounted", mnt.display()));
        }
        Ok(())
    }

    /// From the mount records under `<root>/mounts/` and from the process table (a process
    /// whose arguments include the mount point).
    fn daemon_pids(&self, mnt: &Path) -> Vec<i32> {
        let mut pids = pids_with_args(&[mnt.as_os_str()]);
        if let Ok(rd) = std::fs::read_dir(self.root.path().join("mounts")) {
            for e in rd.flatten() {
                let Ok(body) = std::fs::read(e.path()) else {
                    continue;
                };
                let Ok(v) = serde_json::from_slice::<serde_json::Value>(&body) else {
                    continue;
                };
                let here = v["mountpoint"].as_str().map(Path::new) == Some(mnt);
                if let (true, Some(pid)) = (here, v["pid"].as_i64()) {
                    pids.push(pid as i32);
                }
            }
        }
        pids.sort();
        pids.dedup();
        pids
    }
}

// ---------------------------------------------------------------------------------------------
// Syscall helpers

/// The errno of a failed call; panics (naming `what`) if it succeeded.
pub fn errno_of<T: std::fmt::Debug>(r: io::Result<T>, what: &str) -> i32 {
    match r {
        Ok(v) => panic!("{what}: expected an error, got Ok({v:?})"),
        Err(e) => e
            .raw_os_error()
            .unwrap_or_else(|| panic!("{what}: not an OS error: {e}")),
    }
}

/// Asserts `r` failed with `want` (a libc errno).
#[track_caller]
pub fn expect_errno<T: std::fmt::Debug>(r: io::Result<T>, want: i32, what: &str) {
    let got = errno_of(r, what);
    assert_eq!(
        got,
        want,
        "{what}: got {} ({got}), want {} ({want})",
        io::Error::from_raw_os_error(got),
        io::Error::from_raw_os_error(want)
    );
}

/// rustix's result as std's.
pub fn rx<T>(r: rustix::io::Result<T>) -> io::Result<T> {
    r.map_err(Into::into)
}

pub fn cpath(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).unwrap()
}

pub fn read(p: &Path) -> Vec<u8> {
    std::fs::read(p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()))
}

pub fn read_str(p: &Path) -> String {
    String::from_utf8(read(p)).unwrap()
}

pub fn lstat(p: &Path) -> std::fs::Metadata {
    std::fs::symlink_metadata(p).unwrap_or_else(|e| panic!("lstat {}: {e}", p.display()))
}

pub fn fstat(fd: impl AsFd) -> rustix::fs::Stat {
    rustix::fs::fstat(fd).unwrap()
}

/// Opens with explicit flags (O_CLOEXEC added) relative to the cwd.
pub fn open(p: &Path, flags: rustix::fs::OFlags, mode: u32) -> io::Result<OwnedFd> {
    rx(rustix::fs::open(
        p,
        flags | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::from_raw_mode(mode),
    ))
}

/// Reads `len` bytes at `off` (short only at EOF).
pub fn pread(fd: impl AsFd, off: u64, len: usize) -> Vec<u8> {
    let mut buf = vec![0u8; len];
    let mut done = 0;
    while done < len {
        let n = rustix::io::pread(&fd, &mut buf[done..], off + done as u64).unwrap();
        if n == 0 {
            break;
        }
        done += n;
    }
    buf.truncate(done);
    buf
}

pub fn pwrite(fd: impl AsFd, off: u64, data: &[u8]) {
    let mut done = 0;
    while done < data.len() {
        done += rustix::io::pwrite(&fd, &data[done..], off + (done as u64)).unwrap();
    }
}

/// The names in a directory (without `.` and `..`), sorted.
pub fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("readdir {}: {e}", dir.display()))
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// Deterministic, non-repeating-looking bytes.
pub fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| ((i as u64 * 31 + seed as u64 * 7 + (i as u64 >> 12)) % 251) as u8)
        .collect()
}

/// Asserts two byte strings are equal, reporting the first difference instead of both blobs.
#[track_caller]
pub fn assert_bytes(got: &[u8], want: &[u8], what: &str) {
    if got == want {
        return;
    }
    let first = got
        .iter()
        .zip(want)
        .position(|(a, b)| a != b)
        .unwrap_or(got.len().min(want.len()));
    panic!(
        "{what}: contents differ (len {} vs want {}), first difference at byte {first}: got {:?}, want {:?}",
        got.len(),
        want.len(),
        &got[first..(first + 16).min(got.len())],
        &want[first..(first + 16).min(want.len())]
    );
}

/// Runs `f` in a forked child and returns its result (0 for success, else an errno, < 200),
/// or panics if the child does not finish within 10 s. `f` runs after `fork` in a
/// multi-threaded process: only plain libc calls on data prepared beforehand.
pub fn in_child(f: impl FnOnce() -> i32) -> i32 {
    // SAFETY: the child only makes raw system calls on memory prepared before the fork, then
    // `_exit`s; it never returns into the test harness.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork: {}", io::Error::last_os_error());
    if pid == 0 {
        let code = f();
        // SAFETY: leaving the child without running the parent's destructors.
        unsafe { libc::_exit(code.clamp(0, 199)) };
    }
    wait_child(pid, "forked child")
}

/// Like [`in_child`], but the child first `chdir`s to `cwd` (as root, so private temporary
/// directories above a mount point do not matter) and then drops to `uid`/`gid` with no
/// supplementary groups.
pub fn as_user(uid: u32, gid: u32, cwd: &Path, f: impl FnOnce() -> i32) -> i32 {
    let cwd = cpath(cwd);
    in_child(move || {
        // SAFETY: raw syscalls change the credentials of this (the child's only) thread.
        unsafe {
            if libc::chdir(cwd.as_ptr()) != 0 {
                libc::_exit(200);
            }
            if libc::syscall(libc::SYS_setgroups, 0usize, std::ptr::null::<libc::gid_t>()) != 0
                || libc::syscall(libc::SYS_setresgid, gid, gid, gid) != 0
                || libc::syscall(libc::SYS_setresuid, uid, uid, uid) != 0
            {
                libc::_exit(201);
            }
        }
        f()
    })
}

/// Waits (bounded: 10 s, then SIGKILL) for a forked child; returns its exit code.
pub fn wait_child(pid: libc::pid_t, what: &str) -> i32 {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut status = 0;
        // SAFETY: plain waitpid on our own child.
        let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        if r == pid {
            assert!(
                libc::WIFEXITED(status),
                "{what}: did not exit normally ({status:#x})"
            );
            let code = libc::WEXITSTATUS(status);
            assert!(code < 200, "{what}: set-up failed in the child ({code})");
            return code;
        }
        assert!(r == 0, "{what}: waitpid: {}", io::Error::last_os_error());
        if Instant::now() > deadline {
            // SAFETY: killing and reaping our own child.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
                libc::waitpid(pid, &mut status, 0);
            }
            panic!("{what}: still running after 10 s (killed)");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// `errno` after a failed libc call, for use in forked children.
pub fn last_errno() -> i32 {
    io::Error::last_os_error().raw_os_error().unwrap_or(199)
}

/// Processes (other than this one) whose command line has every one of `args` among its
/// arguments: how a test finds the daemon serving a mount.
pub fn pids_with_args(args: &[&OsStr]) -> Vec<i32> {
    let me = std::process::id() as i32;
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        if pid == me {
            continue;
        }
        let Ok(cmd) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let have: Vec<&[u8]> = cmd.split(|&b| b == 0).collect();
        if args.iter().all(|a| have.contains(&a.as_bytes())) {
            out.push(pid);
        }
    }
    out
}

//! Mount points: whether something is mounted, unmounting (bounded, lazily as a last resort),
//! a guard that unmounts on drop, and waiting for or killing the processes behind a mount.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Unmounts (lazily, so a failed test never leaves a busy mount behind) on drop.
pub struct MountGuard(pub PathBuf);

impl Drop for MountGuard {
    fn drop(&mut self) {
        for _ in 0..50 {
            if !is_mounted(&self.0) {
                return;
            }
            let _ = strata::sys::unmount_lazy(&self.0);
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

pub fn is_mounted(p: &Path) -> bool {
    strata::sys::mount_at(p).is_some()
}

/// Waits (bounded: 5 s) until `p` is no longer a mount point.
pub fn wait_unmounted(p: &Path) -> bool {
    for _ in 0..250 {
        if !is_mounted(p) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
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

/// What the mount daemons of state root `root` logged so far (`ROOT/mounts/*.log`, one per
/// live or recent mount; each mount starts its own).
pub fn daemon_logs(root: &Path) -> String {
    let mut all = String::new();
    let Ok(dir) = std::fs::read_dir(root.join("mounts")) else {
        return all;
    };
    for e in dir.flatten() {
        if e.path().extension() == Some(std::ffi::OsStr::new("log")) {
            all += &std::fs::read_to_string(e.path()).unwrap_or_default();
        }
    }
    all
}

/// A state root holding the sample image, a mount point and a writable layer directory, for
/// tests that read what strata's mount daemon logs: every mount runs with fuser's
/// per-request debug lines on (`RUST_LOG=strata=warn,fuser=debug`), plus `flags`.
pub struct LoggedMount {
    pub root: tempfile::TempDir,
    _dir: tempfile::TempDir,
    pub mnt: PathBuf,
    pub layer: PathBuf,
    flags: Vec<&'static str>,
}

impl LoggedMount {
    pub fn new(flags: &[&'static str]) -> LoggedMount {
        let root = tempfile::tempdir().unwrap();
        let oci = crate::paths::sample_image().join("oci");
        crate::cli::strata_ok(root.path(), &["load", oci.to_str().unwrap()]);
        let dir = tempfile::tempdir().unwrap();
        let mnt = dir.path().join("mnt");
        std::fs::create_dir(&mnt).unwrap();
        let layer = dir.path().join("layer");
        LoggedMount {
            root,
            _dir: dir,
            mnt,
            layer,
            flags: flags.to_vec(),
        }
    }

    /// `mount --rw` with the layer directory.
    pub fn mount(&self) {
        self.mount_rw(&[]);
    }

    /// `mount --rw` with the layer directory and `extra` flags.
    pub fn mount_rw(&self, extra: &[&str]) {
        let mut args = vec!["--rw", "--layer", self.layer.to_str().unwrap()];
        args.extend(extra);
        self.mount_with(&args);
    }

    /// `mount IMAGE MNT -d` with `extra` flags (read-only unless they say `--rw`).
    pub fn mount_with(&self, extra: &[&str]) {
        let mut args = vec![
            "mount",
            crate::paths::SAMPLE_IMAGE,
            self.mnt.to_str().unwrap(),
            "-d",
        ];
        args.extend(extra);
        args.extend(&self.flags);
        let out = crate::cli::strata_io_env(
            self.root.path(),
            &args,
            None,
            Duration::from_secs(60),
            &[("RUST_LOG", "strata=warn,fuser=debug")],
        );
        assert_eq!(out.code, 0, "mount {args:?}: {}", out.err);
        assert!(is_mounted(&self.mnt));
    }

    pub fn umount(&self) {
        crate::cli::strata_ok(self.root.path(), &["umount", self.mnt.to_str().unwrap()]);
        assert!(wait_unmounted(&self.mnt));
    }

    /// The daemon's log (its stderr) so far ([`daemon_logs`]).
    pub fn log(&self) -> String {
        daemon_logs(self.root.path())
    }
}

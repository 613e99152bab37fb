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

//! Thin safe wrappers over the system calls strata needs that std does not offer.
//!
//! Every `unsafe` block of the crate lives in this module, each with a `SAFETY:` line. Nothing
//! here knows about layers, images or containers.

// The one exception to the crate's `deny(unsafe_code)`.
#![allow(unsafe_code)]

use std::fs::File;
use std::io;
use std::path::Path;

use rustix::fs::{FlockOperation, flock};

pub mod container;

/// Opens (creating if needed) `path` and blocks until this process holds an exclusive
/// `flock` on it. The lock is released when the returned file is dropped or the process dies.
pub fn lock_file(path: &Path) -> io::Result<File> {
    let f = File::options()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)?;
    flock(&f, FlockOperation::LockExclusive)?;
    Ok(f)
}

/// Like [`lock_file`], for lock files that their holder may unlink (so that nothing is
/// left behind): the lock returned is on the file that is at `path` now, never on one that
/// was unlinked while this process waited for it.
pub fn lock_file_linked(path: &Path) -> io::Result<File> {
    use std::os::unix::fs::MetadataExt;
    // Each retry means another holder unlinked the file in between: bounded, since a
    // holder unlinks only when its layer is gone.
    for _ in 0..10_000 {
        let f = lock_file(path)?;
        let held = f.metadata()?;
        match std::fs::metadata(path) {
            Ok(now) if now.ino() == held.ino() && now.dev() == held.dev() => return Ok(f),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    Err(io::Error::other(format!(
        "{}: the lock file keeps being replaced",
        path.display()
    )))
}

/// Like [`lock_file`] but returns `Ok(None)` instead of waiting when another holder has it.
pub fn try_lock_file(path: &Path) -> io::Result<Option<File>> {
    let f = File::options()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)?;
    match flock(&f, FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => Ok(Some(f)),
        Err(rustix::io::Errno::WOULDBLOCK) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Whether another process holds the `flock` on `path` (its holder is alive: a lock dies with
/// its process). `false` when nobody does, or when it cannot be told (the file's directory is
/// gone).
pub fn lock_held(path: &Path) -> bool {
    match try_lock_file(path) {
        Ok(Some(_)) => false,
        Ok(None) => true,
        Err(_) => false,
    }
}

/// Waits for the child `pid` to end: its exit code, or 128 + the signal that ended it (as a
/// shell reports it). `None` when it cannot be waited for (not a child of this process).
pub fn wait_exit(pid: i32) -> Option<i32> {
    let p = rustix::process::Pid::from_raw(pid)?;
    loop {
        match rustix::process::waitpid(Some(p), rustix::process::WaitOptions::empty()) {
            Ok(Some((_, st))) => {
                if let Some(code) = st.exit_status() {
                    return Some(code);
                }
                if let Some(sig) = st.terminating_signal() {
                    return Some(128 + sig);
                }
            }
            Ok(None) | Err(rustix::io::Errno::INTR) => {}
            Err(_) => return None,
        }
    }
}

/// Flushes the file system holding `path` to disk.
pub fn syncfs(path: &Path) -> io::Result<()> {
    let f = File::open(path)?;
    rustix::fs::syncfs(&f)?;
    Ok(())
}

/// Whether a process with this pid exists and has not exited: a zombie (exited, not yet
/// reaped by its parent or init) counts as gone.
pub fn process_alive(pid: i32) -> bool {
    let Some(p) = rustix::process::Pid::from_raw(pid) else {
        return false;
    };
    let exists = match rustix::process::test_kill_process(p) {
        Ok(()) => true,
        Err(e) => e == rustix::io::Errno::PERM,
    };
    if !exists {
        return false;
    }
    // /proc/PID/stat: "pid (comm) S ..."; comm may contain spaces and parentheses.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            stat.rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().next())
                != Some("Z")
        }
        Err(_) => false,
    }
}

/// Start time of a process (clock ticks since boot, field 22 of `/proc/PID/stat`): with the
/// pid, it names one process for good (a pid alone may be reused).
pub fn process_start_time(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may contain spaces and parentheses: split after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// Whether the process `pid` that started at `start` (see [`process_start_time`]) still
/// runs: a zombie, which waits for its parent to reap it, runs no more.
pub fn process_runs(pid: i32, start: u64) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    let Some(rest) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
        return false;
    };
    let mut f = rest.split_whitespace();
    let state = f.next();
    let started = f.nth(18).and_then(|s| s.parse::<u64>().ok());
    started == Some(start) && !matches!(state, Some("Z" | "X" | "x"))
}

/// Restores the default action of SIGPIPE (the Rust runtime ignores it), so a command whose
/// output pipe closes ends like any Unix tool. Call before any thread exists.
pub fn default_sigpipe() {
    // SAFETY: signal(2) with SIG_DFL installs no handler and touches no memory of ours; called
    // at start-up while the process is single-threaded.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

/// Makes glibc's malloc serve every allocation of `bytes` or more with a mapping of its own
/// and keeps that threshold fixed (glibc raises it as large blocks are freed, after which a
/// large zeroed allocation is carved from the heap and written with zeros: resident at
/// once, even where it is never used). For a process that opens many sled databases, whose
/// page tables are multi-MiB zeroed arrays that stay almost empty. No effect off glibc.
pub fn malloc_mmap_threshold(bytes: usize) {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let bytes = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
        // SAFETY: mallopt(3) only sets a parameter of the allocator, which it reads under its
        // own locks; it touches no memory of ours.
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, bytes);
        }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    let _ = bytes;
}

/// Makes glibc's malloc share at most `n` arenas among all threads (its default is eight per
/// core, one per thread that allocates at the same time as another), so memory one thread
/// frees is reused by the others instead of staying resident in an arena of its own. No effect
/// off glibc.
pub fn malloc_arena_max(n: usize) {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let n = libc::c_int::try_from(n).unwrap_or(libc::c_int::MAX);
        // SAFETY: mallopt(3) only sets a parameter of the allocator, which it reads under its
        // own locks; it touches no memory of ours.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, n);
        }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    let _ = n;
}

/// Gives the free memory of every malloc arena back to the kernel (glibc's `malloc_trim`:
/// the free pages inside the heaps too, not only their tops). No effect off glibc.
pub fn malloc_trim() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim(3) only walks the allocator's own free lists under its own locks and
    // releases pages no allocation uses; it touches no memory of ours.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Sends SIGTERM to `pid` (a process strata started).
pub fn terminate(pid: i32) -> io::Result<()> {
    let pid = rustix::process::Pid::from_raw(pid)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "invalid pid"))?;
    rustix::process::kill_process(pid, rustix::process::Signal::TERM)?;
    Ok(())
}

/// Detaches the mount at `path` now (`umount2(MNT_DETACH)`); the kernel finishes the unmount
/// when the last user lets go.
pub fn unmount_lazy(path: &Path) -> io::Result<()> {
    rustix::mount::unmount(path, rustix::mount::UnmountFlags::DETACH)?;
    Ok(())
}

/// The file system type and source of the mount whose mount point is exactly `path`
/// (the top-most one), from `/proc/self/mountinfo`.
pub fn mount_at(path: &Path) -> Option<(String, String)> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let want = path.as_os_str().as_encoded_bytes();
    let mut found = None;
    for line in info.lines() {
        let mut fields = line.split(' ');
        let Some(mp) = fields.nth(4) else { continue };
        if unescape_mountinfo(mp) != want {
            continue;
        }
        let mut rest = line.split(" - ").nth(1).unwrap_or("").split(' ');
        let fstype = rest.next().unwrap_or("").to_string();
        let source = rest.next().unwrap_or("").to_string();
        found = Some((fstype, source));
    }
    found
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape_mountinfo(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_unescape() {
        assert_eq!(unescape_mountinfo(r"/mnt/a\040b"), b"/mnt/a b");
        assert_eq!(unescape_mountinfo(r"/x\134y"), b"/x\\y");
        assert_eq!(unescape_mountinfo("/plain"), b"/plain");
    }

    #[test]
    fn finds_the_root_mount() {
        assert!(mount_at(Path::new("/")).is_some());
    }

    #[test]
    fn a_zombie_runs_no_more() {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id() as i32;
        let start = process_start_time(pid).unwrap();
        // Exited but not reaped: a zombie, bounded wait for it to get there.
        for _ in 0..500 {
            if !process_runs(pid, start) {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        assert!(!process_runs(pid, start));
        assert!(
            process_start_time(pid).is_some(),
            "still in /proc until reaped"
        );
        child.wait().unwrap();
        assert!(process_runs(
            std::process::id() as i32,
            process_start_time(std::process::id() as i32).unwrap()
        ));
    }
}

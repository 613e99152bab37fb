//! Small syscall helpers the writable-mount scenarios share: errno checks, reads and writes
//! at offsets, running a closure in a child process (as another user).

use std::ffi::{CString, OsStr};
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::time::{Duration, Instant};

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

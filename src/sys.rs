//! Thin safe wrappers over the system calls strata needs that std does not offer.
//!
//! Every `unsafe` block of the crate lives in this module, each with a `SAFETY:` line. Nothing
//! here knows about layers, images or containers.

use std::fs::File;
use std::io;
use std::path::Path;

use rustix::fs::{FlockOperation, flock};

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

/// Flushes the file system holding `path` to disk.
pub fn syncfs(path: &Path) -> io::Result<()> {
    let f = File::open(path)?;
    rustix::fs::syncfs(&f)?;
    Ok(())
}

/// Whether a process with this pid exists (signal 0 probe; EPERM still means it exists).
pub fn process_alive(pid: i32) -> bool {
    let Some(pid) = rustix::process::Pid::from_raw(pid) else {
        return false;
    };
    match rustix::process::test_kill_process(pid) {
        Ok(()) => true,
        Err(e) => e == rustix::io::Errno::PERM,
    }
}

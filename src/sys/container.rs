//! The system calls the container runtime needs beyond what `rustix` offers safely: fork,
//! execve, signal dispositions, namespaces, mount attributes, inherited descriptors and
//! network interface flags. Every `unsafe` block has its `SAFETY:` line; nothing here knows
//! about containers.

use std::ffi::{CStr, CString, c_char};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

/// Which side of a [`fork`] the caller is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fork {
    Child,
    Parent(i32),
}

/// The number of threads of this process.
pub fn thread_count() -> io::Result<usize> {
    Ok(std::fs::read_dir("/proc/self/task")?.count())
}

/// `fork(2)`, refused unless this process has exactly one thread: the child of a
/// multithreaded process may inherit locks (allocator, stdio) held by threads that do not
/// exist in it.
pub fn fork() -> io::Result<Fork> {
    let n = thread_count()?;
    if n != 1 {
        return Err(io::Error::other(format!(
            "refusing to fork a process with {n} threads"
        )));
    }
    // SAFETY: the process is single-threaded (checked above; only this thread could start
    // another), so the child gets a consistent copy of every lock and of the allocator.
    let pid = unsafe { libc::fork() };
    match pid {
        -1 => Err(io::Error::last_os_error()),
        0 => Ok(Fork::Child),
        p => Ok(Fork::Parent(p)),
    }
}

/// `fork(2)` into new namespaces: `clone(2)` with fork semantics (no new stack, `SIGCHLD` to
/// the parent) and the namespace flags of `flags`. The child is the first process of every
/// namespace asked for; with `NEWUSER` it gets the other namespaces owned by its new user
/// namespace, which is how an ordinary user may make a pid namespace at all. Refused, like
/// [`fork`], unless this process has exactly one thread.
pub fn fork_into(flags: rustix::thread::UnshareFlags) -> io::Result<Fork> {
    use rustix::thread::UnshareFlags as U;
    let namespaces =
        U::NEWNS | U::NEWUTS | U::NEWIPC | U::NEWNET | U::NEWPID | U::NEWCGROUP | U::NEWUSER;
    if !namespaces.contains(flags) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "only namespace flags may be given to fork_into",
        ));
    }
    let n = thread_count()?;
    if n != 1 {
        return Err(io::Error::other(format!(
            "refusing to fork a process with {n} threads"
        )));
    }
    let clone_flags = u64::from(flags.bits()) | libc::SIGCHLD as u64;
    // SAFETY: clone with a null stack and no CLONE_VM/CLONE_SETTLS/CLONE_*TID flags (only
    // namespace flags, checked above) behaves as fork: the child runs on a copy of this
    // address space. The process is single-threaded (checked above), so the child gets a
    // consistent copy of every lock and of the allocator. The unused pointer arguments are
    // null.
    let pid = unsafe {
        libc::syscall(
            libc::SYS_clone,
            clone_flags,
            std::ptr::null_mut::<libc::c_void>(),
            std::ptr::null_mut::<libc::c_int>(),
            std::ptr::null_mut::<libc::c_int>(),
            0u64,
        )
    };
    match pid {
        -1 => Err(io::Error::last_os_error()),
        0 => Ok(Fork::Child),
        p => Ok(Fork::Parent(p as i32)),
    }
}

/// Ends the calling process at once: no destructors, no atexit handlers, no stdio flush (a
/// forked child must not flush or drop what its parent owns).
pub fn exit_now(code: i32) -> ! {
    // SAFETY: `_exit` has no preconditions and does not return.
    unsafe { libc::_exit(code) }
}

/// `execve(2)`. Returns only on failure, with the error.
pub fn execve(path: &CStr, argv: &[CString], envp: &[CString]) -> io::Error {
    let mut args: Vec<*const c_char> = argv.iter().map(|a| a.as_ptr()).collect();
    args.push(std::ptr::null());
    let mut env: Vec<*const c_char> = envp.iter().map(|e| e.as_ptr()).collect();
    env.push(std::ptr::null());
    // SAFETY: `path` and every string of `argv` and `envp` are NUL-terminated and outlive the
    // call; both pointer arrays end with a null pointer, as execve requires.
    unsafe { libc::execve(path.as_ptr(), args.as_ptr(), env.as_ptr()) };
    io::Error::last_os_error()
}

/// Resets every catchable signal to its default action and unblocks all signals, as a new
/// program expects (ignored signals survive execve: Rust ignores SIGPIPE, for one).
pub fn reset_signals() -> io::Result<()> {
    for sig in 1..=libc::SIGRTMAX() {
        if sig == libc::SIGKILL || sig == libc::SIGSTOP {
            continue;
        }
        // SAFETY: SIG_DFL is a valid disposition for every catchable signal; numbers the C
        // library reserves for itself fail with EINVAL, which is ignored.
        unsafe { libc::signal(sig, libc::SIG_DFL) };
    }
    // SAFETY: `set` is a properly sized sigset_t, initialised by sigemptyset before use; the
    // old-mask pointer may be null.
    let r = unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut())
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Marks every descriptor from `first` up close-on-exec, so no descriptor of the runtime
/// leaks into the container's program.
pub fn cloexec_from(first: u32) -> io::Result<()> {
    // SAFETY: close_range with CLOSE_RANGE_CLOEXEC closes nothing; it only sets a flag on the
    // descriptors of this process.
    let r = unsafe { libc::close_range(first, u32::MAX, libc::CLOSE_RANGE_CLOEXEC as i32) };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Takes ownership of descriptor `fd`, which the parent process passed to this one by
/// number (on the command line), and marks it close-on-exec.
pub fn take_inherited_fd(fd: RawFd) -> io::Result<OwnedFd> {
    if fd < 3 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("descriptor {fd} is a standard stream"),
        ));
    }
    // SAFETY: fcntl(F_GETFD) only queries the descriptor table; any integer is acceptable.
    if unsafe { libc::fcntl(fd, libc::F_GETFD) } == -1 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the descriptor is open (checked above) and was handed to this process for it
    // alone to own: nothing else in this process refers to that number.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    rustix::io::fcntl_setfd(&owned, rustix::io::FdFlags::CLOEXEC)?;
    Ok(owned)
}

/// A duplicate of `fd` that is *not* close-on-exec, for a child process to inherit.
pub fn dup_inheritable(fd: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    let new = rustix::io::dup(fd)?;
    rustix::io::fcntl_setfd(&new, rustix::io::FdFlags::empty())?;
    Ok(new)
}

/// `unshare(2)` of namespaces. Refuses `CLONE_FILES`/`CLONE_FS`-style flags: only
/// namespace flags are accepted.
pub fn unshare_namespaces(flags: rustix::thread::UnshareFlags) -> io::Result<()> {
    use rustix::thread::UnshareFlags as U;
    let namespaces = U::NEWNS | U::NEWUTS | U::NEWIPC | U::NEWNET | U::NEWPID | U::NEWCGROUP;
    if !namespaces.contains(flags) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "only namespace flags may be unshared",
        ));
    }
    // SAFETY: only namespace flags (checked above): no descriptor table or fs context is
    // unshared between threads, which is what makes unshare unsafe.
    unsafe { rustix::thread::unshare_unsafe(flags) }?;
    Ok(())
}

const MOUNT_ATTR_RDONLY: u64 = 0x1;
const MOUNT_ATTR_NODEV: u64 = 0x4;

/// Makes the mount tree at `fd` (from `open_tree`, `fsmount`, or any descriptor of a mount
/// root) read-only, recursively when asked (`mount_setattr(2)`).
pub fn mount_set_readonly(fd: BorrowedFd<'_>, recursive: bool) -> io::Result<()> {
    mount_set_attr(fd, MOUNT_ATTR_RDONLY, recursive)
}

/// Makes the mount tree at `fd` `nodev` (device nodes on it cannot be opened), recursively
/// when asked.
pub fn mount_set_nodev(fd: BorrowedFd<'_>, recursive: bool) -> io::Result<()> {
    mount_set_attr(fd, MOUNT_ATTR_NODEV, recursive)
}

fn mount_set_attr(fd: BorrowedFd<'_>, set: u64, recursive: bool) -> io::Result<()> {
    #[repr(C)]
    struct MountAttr {
        attr_set: u64,
        attr_clr: u64,
        propagation: u64,
        userns_fd: u64,
    }
    let attr = MountAttr {
        attr_set: set,
        attr_clr: 0,
        propagation: 0,
        userns_fd: 0,
    };
    let mut flags = libc::AT_EMPTY_PATH;
    if recursive {
        flags |= libc::AT_RECURSIVE;
    }
    // SAFETY: a valid descriptor, an empty NUL-terminated path (AT_EMPTY_PATH), and a pointer
    // to a `struct mount_attr` whose size is passed along, as mount_setattr requires.
    let r = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            fd.as_raw_fd(),
            c"".as_ptr(),
            flags,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Brings network interface `name` up (`SIOCSIFFLAGS` with `IFF_UP`), e.g. `lo` of a new
/// network namespace.
pub fn interface_up(name: &str) -> io::Result<()> {
    let bytes = name.as_bytes();
    if bytes.is_empty() || bytes.len() >= libc::IFNAMSIZ {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "bad interface name",
        ));
    }
    // SAFETY: socket(2) takes no pointers; the result is checked before use.
    let raw = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `raw` is a fresh descriptor that nothing else owns.
    let sock = unsafe { OwnedFd::from_raw_fd(raw) };
    // SAFETY: an all-zero ifreq is a valid value (a C struct of integers and arrays).
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(bytes) {
        *dst = *src as c_char;
    }
    // SAFETY: `req` is a valid ifreq with a NUL-terminated name (zeroed tail); the ioctl
    // fills `ifru_flags`.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: SIOCGIFFLAGS initialised the `ifru_flags` member of the union.
    unsafe { req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short };
    // SAFETY: as above; SIOCSIFFLAGS reads the name and the flags.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Makes the terminal on `fd` the controlling terminal of this (session leader) process.
pub fn set_controlling_terminal(fd: impl AsFd) -> io::Result<()> {
    rustix::process::ioctl_tiocsctty(fd)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inherited_fd_numbers_are_checked() {
        assert!(take_inherited_fd(1).is_err());
        assert!(take_inherited_fd(987_654).is_err());
    }

    #[test]
    fn unshare_refuses_non_namespace_flags() {
        assert!(unshare_namespaces(rustix::thread::UnshareFlags::FILES).is_err());
    }
}

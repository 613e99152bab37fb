//! The container's first process, between the shim's `fork` and `execve`: namespaces, the
//! FUSE rootfs (mounted here, inside the container's own mount namespace, so the host's
//! mount table never shows it), /proc, /sys, /dev, the /etc files, volumes, `pivot_root`,
//! masked and read-only paths, hostname, loopback, capabilities, user, and the exec itself.
//! Also the last steps of `exec` (user, capabilities, PATH search), which `strata exec`
//! shares.
//!
//! It talks to the shim over two close-on-exec pipes: `M` ("the rootfs is mounted, answer
//! its INIT") one way, `G` ("it is served, go on") the other; a failure is `E` + exit code +
//! message; end-of-file after `G` means execve succeeded.

use std::convert::Infallible;
use std::ffi::CString;
use std::io::{self, Read};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::Path;

use rustix::fs::{FileType, Mode, OFlags};
use rustix::mount::{MountFlags, MountPropagationFlags, UnmountFlags};
use rustix::process::Signal;
use rustix::thread::{CapabilitySet, CapabilitySets, UnshareFlags};

use super::mountplan::{self, MountOps};
use super::mounts::{self, BindFlags, Leaf};
use super::seccomp::Seccomp;
use super::spec::{self, Process, Spec};
use super::user::{self, ExecUser};
use crate::sys::container as csys;

/// Why the container's process could not be started, and the exit code that says so.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fail {
    pub code: i32,
    pub msg: String,
}

/// Exit code of strata's own failures.
pub const EXIT_RUNTIME: i32 = 125;
pub const EXIT_CANNOT_EXECUTE: i32 = 126;
pub const EXIT_NOT_FOUND: i32 = 127;

fn fail(what: impl std::fmt::Display) -> impl FnOnce(io::Error) -> Fail {
    move |e| Fail {
        code: EXIT_RUNTIME,
        msg: format!("{what}: {e}"),
    }
}

fn fail_errno(what: impl std::fmt::Display) -> impl FnOnce(rustix::io::Errno) -> Fail {
    move |e| Fail {
        code: EXIT_RUNTIME,
        msg: format!("{what}: {}", io::Error::from(e)),
    }
}

/// What one end of the pipe said.
#[derive(Debug)]
pub enum Msg {
    Byte(u8),
    Fail(Fail),
    Eof,
}

fn write_all(fd: BorrowedFd<'_>, mut buf: &[u8]) -> io::Result<()> {
    while !buf.is_empty() {
        match rustix::io::write(fd, buf) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => buf = &buf[n..],
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

pub fn send_byte(fd: BorrowedFd<'_>, b: u8) -> io::Result<()> {
    write_all(fd, &[b])
}

pub fn send_fail(fd: BorrowedFd<'_>, f: &Fail) {
    let mut buf = vec![b'E'];
    buf.extend_from_slice(&f.code.to_le_bytes());
    buf.extend_from_slice(f.msg.as_bytes());
    let _ = write_all(fd, &buf);
}

/// Reads one message: a byte, a failure (which runs to end-of-file), or end-of-file.
pub fn recv(fd: &OwnedFd) -> io::Result<Msg> {
    let mut f = std::fs::File::from(fd.try_clone()?);
    let mut b = [0u8; 1];
    loop {
        match f.read(&mut b) {
            Ok(0) => return Ok(Msg::Eof),
            Ok(_) => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    if b[0] != b'E' {
        return Ok(Msg::Byte(b[0]));
    }
    let mut rest = Vec::new();
    f.read_to_end(&mut rest)?;
    let code = rest
        .get(..4)
        .and_then(|c| c.try_into().ok())
        .map(i32::from_le_bytes)
        .unwrap_or(EXIT_RUNTIME);
    let msg = String::from_utf8_lossy(rest.get(4..).unwrap_or_default()).into_owned();
    Ok(Msg::Fail(Fail { code, msg }))
}

/// The standard streams of the container's process.
pub struct ChildIo {
    pub stdin: OwnedFd,
    pub stdout: OwnedFd,
    pub stderr: OwnedFd,
}

/// Everything the container's first process needs; built by the shim before `fork`.
pub struct Child<'a> {
    pub spec: &'a Spec,
    pub rootfs: &'a Path,
    /// Where the init sends the FUSE connection it opened and mounted.
    pub fuse_to_shim: OwnedFd,
    pub to_shim: OwnedFd,
    pub from_shim: OwnedFd,
    pub io: ChildIo,
    /// With a terminal: where the pty's master goes.
    pub console: Option<OwnedFd>,
}

/// The namespaces the shim clones the init into: pid, mount, uts, ipc, the network unless
/// the spec shares the host's, and a user namespace first when `rootless` (which then owns
/// the others, so no privilege is needed).
pub fn namespaces(spec: &Spec, rootless: bool) -> UnshareFlags {
    let mut flags =
        UnshareFlags::NEWPID | UnshareFlags::NEWNS | UnshareFlags::NEWUTS | UnshareFlags::NEWIPC;
    if spec.linux.namespaces.iter().any(|n| n.kind == "network") {
        flags |= UnshareFlags::NEWNET;
    }
    if rootless {
        flags |= UnshareFlags::NEWUSER;
    }
    flags
}

/// Runs in the forked child: never returns.
pub fn child_main(c: Child<'_>) -> ! {
    let Err(f) = run_child(&c);
    send_fail(c.to_shim.as_fd(), &f);
    csys::exit_now(f.code)
}

fn run_child(c: &Child<'_>) -> Result<Infallible, Fail> {
    // If the shim dies, so does the container (it cannot serve the rootfs any more).
    rustix::process::set_parent_process_death_signal(Some(Signal::KILL))
        .map_err(fail_errno("PR_SET_PDEATHSIG"))?;
    // (A shim that died before this line is noticed below: the `G` never comes.)
    rustix::process::setsid().map_err(fail_errno("setsid"))?;
    rustix::stdio::dup2_stdin(&c.io.stdin).map_err(fail_errno("stdin"))?;
    rustix::stdio::dup2_stdout(&c.io.stdout).map_err(fail_errno("stdout"))?;
    rustix::stdio::dup2_stderr(&c.io.stderr).map_err(fail_errno("stderr"))?;
    // `U`: our ids are mapped (in a user namespace of our own, without root), go on.
    match recv(&c.from_shim) {
        Ok(Msg::Byte(b'U')) => {}
        _ => csys::exit_now(EXIT_RUNTIME),
    }

    // Our namespaces came with the clone (see `namespaces`). Nothing mounted from here on propagates to the host.
    rustix::mount::mount_change(
        "/",
        MountPropagationFlags::DOWNSTREAM | MountPropagationFlags::REC,
    )
    .map_err(fail_errno("making / a slave mount"))?;
    rustix::process::umask(Mode::empty());

    // The rootfs: no nosuid (setuid programs of the image behave as under Docker), nodev
    // (device nodes work only in the container's own /dev tmpfs). The connection is opened
    // here: the kernel mounts it only in the user namespace that opened it.
    let fuse = open_fuse()?;
    let data = format!(
        "fd={},rootmode=40000,user_id=0,group_id=0,allow_other,default_permissions",
        fuse.as_raw_fd()
    );
    let data = CString::new(data).map_err(|_| Fail {
        code: EXIT_RUNTIME,
        msg: "bad FUSE mount options".into(),
    })?;
    rustix::mount::mount(
        "strata",
        c.rootfs,
        "fuse.strata",
        MountFlags::NODEV | MountFlags::NOATIME,
        Some(data.as_c_str()),
    )
    .map_err(fail_errno(format!(
        "mounting the rootfs on {}",
        c.rootfs.display()
    )))?;
    super::tty::send_fd(c.fuse_to_shim.as_fd(), fuse.as_fd())
        .map_err(fail("handing the rootfs's FUSE connection to the shim"))?;
    drop(fuse);
    send_byte(c.to_shim.as_fd(), b'M').map_err(fail("telling the shim"))?;
    match recv(&c.from_shim) {
        Ok(Msg::Byte(b'G')) => {}
        _ => csys::exit_now(EXIT_RUNTIME),
    }

    let root = rustix::fs::open(
        c.rootfs,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(fail_errno("opening the rootfs"))?;
    rustix::system::sethostname(c.spec.hostname.as_bytes()).map_err(fail_errno("sethostname"))?;
    if c.spec.linux.namespaces.iter().any(|n| n.kind == "network") {
        csys::interface_up("lo").map_err(fail("bringing up lo"))?;
    }

    mountplan::mount_rootfs(
        &mut InRoot(root.as_fd()),
        &c.spec.mounts,
        &c.spec.linux.devices,
        &c.spec.process.cwd,
    )
    .map_err(plan_fail)?;

    rustix::mount::mount_change(
        c.rootfs,
        MountPropagationFlags::PRIVATE | MountPropagationFlags::REC,
    )
    .map_err(fail_errno("making the rootfs private"))?;
    rustix::process::fchdir(&root).map_err(fail_errno("chdir to the rootfs"))?;
    rustix::process::pivot_root(".", ".").map_err(fail_errno("pivot_root"))?;
    rustix::mount::unmount(".", UnmountFlags::DETACH)
        .map_err(fail_errno("detaching the old root"))?;
    rustix::process::chdir("/").map_err(fail_errno("chdir /"))?;
    drop(root);

    mountplan::protect(
        &mut AtNewRoot,
        &c.spec.linux.masked_paths,
        &c.spec.linux.readonly_paths,
    )
    .map_err(plan_fail)?;
    if c.spec.root.readonly {
        let slash = rustix::fs::open("/", OFlags::PATH | OFlags::CLOEXEC, Mode::empty())
            .map_err(fail_errno("opening /"))?;
        csys::mount_set_readonly(slash.as_fd(), false).map_err(fail("making / read-only"))?;
    }
    rustix::process::umask(Mode::from_raw_mode(0o022));
    Err(exec_process(
        &c.spec.process,
        c.spec.linux.seccomp.as_ref(),
        c.console.as_ref().map(|f| f.as_fd()),
    ))
}

/// Opens `/dev/fuse`; when it is not open to the user (mode 0600, as on minimal systems),
/// says how desktop distributions ship it.
fn open_fuse() -> Result<OwnedFd, Fail> {
    use std::os::unix::fs::PermissionsExt;
    match rustix::fs::open("/dev/fuse", OFlags::RDWR | OFlags::CLOEXEC, Mode::empty()) {
        Ok(fd) => Ok(fd),
        Err(e @ (rustix::io::Errno::ACCESS | rustix::io::Errno::PERM))
            if std::fs::metadata("/dev/fuse")
                .is_ok_and(|m| m.permissions().mode() & 0o006 != 0o006) =>
        {
            Err(Fail {
                code: EXIT_RUNTIME,
                msg: format!(
                    "opening /dev/fuse: {}: containers without root need /dev/fuse open to all \
                     users (mode 0666, as desktop distributions ship it; as root: chmod 0666 \
                     /dev/fuse)",
                    io::Error::from(e)
                ),
            })
        }
        Err(e) => Err(fail_errno("opening /dev/fuse")(e)),
    }
}

fn plan_fail(e: mountplan::PlanError) -> Fail {
    fail(e.what)(e.source)
}

/// The kernel under a plan's steps before `pivot_root`: every target resolved inside the
/// rootfs (see `mounts`).
struct InRoot<'a>(BorrowedFd<'a>);

impl MountOps for InRoot<'_> {
    fn source_is_dir(&self, source: &Path) -> io::Result<bool> {
        Ok(std::fs::metadata(source)?.is_dir())
    }
    fn host_device(&self, path: &str) -> io::Result<(char, u32, u32)> {
        let st = rustix::fs::stat(path)?;
        let kind = match FileType::from_raw_mode(st.st_mode) {
            FileType::BlockDevice => 'b',
            FileType::CharacterDevice => 'c',
            _ => '-',
        };
        Ok((
            kind,
            rustix::fs::major(st.st_rdev),
            rustix::fs::minor(st.st_rdev),
        ))
    }
    fn kind_of(&self, path: &str) -> io::Result<Option<bool>> {
        match mounts::resolve(self.0, path) {
            Ok(fd) => mounts::is_dir(&fd).map(Some),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }
    fn bind(
        &mut self,
        source: &Path,
        target: &str,
        leaf: Leaf,
        flags: BindFlags,
    ) -> io::Result<()> {
        let target = mounts::ensure(self.0, target, leaf)?;
        let tree = mounts::bind_tree(source, flags)?;
        mounts::attach(&tree, &target)
    }
    fn new_fs(&mut self, kind: &str, options: &[String], target: &str) -> io::Result<()> {
        let tree = mounts::new_fs(kind, options)?;
        let target = mounts::ensure(self.0, target, Leaf::Dir)?;
        if !mounts::is_dir(&target)? {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "the target is not a directory",
            ));
        }
        mounts::attach(&tree, &target)
    }
    fn symlink(&mut self, target: &str, link: &str) -> io::Result<()> {
        let (dir, name) = link.rsplit_once('/').unwrap_or(("", link));
        let dir = mounts::ensure(self.0, if dir.is_empty() { "/" } else { dir }, Leaf::Dir)?;
        match rustix::fs::symlinkat(target, &dir, name) {
            Ok(()) | Err(rustix::io::Errno::EXIST) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
    fn ensure_dir(&mut self, path: &str) -> io::Result<()> {
        mounts::ensure(self.0, path, Leaf::Dir).map(drop)
    }
}

/// The kernel under a plan's steps after `pivot_root`: paths of the new root (its own /proc
/// and /sys), nothing created.
struct AtNewRoot;

impl MountOps for AtNewRoot {
    fn source_is_dir(&self, source: &Path) -> io::Result<bool> {
        Ok(std::fs::metadata(source)?.is_dir())
    }
    fn host_device(&self, _: &str) -> io::Result<(char, u32, u32)> {
        Err(io::Error::other("no device nodes after pivot_root"))
    }
    fn kind_of(&self, path: &str) -> io::Result<Option<bool>> {
        match std::fs::symlink_metadata(path) {
            Ok(m) => Ok(Some(m.is_dir())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }
    fn bind(&mut self, source: &Path, target: &str, _: Leaf, flags: BindFlags) -> io::Result<()> {
        mounts::attach_path(&mounts::bind_tree(source, flags)?, target)
    }
    fn new_fs(&mut self, kind: &str, options: &[String], target: &str) -> io::Result<()> {
        mounts::attach_path(&mounts::new_fs(kind, options)?, target)
    }
    fn symlink(&mut self, _: &str, link: &str) -> io::Result<()> {
        Err(io::Error::other(format!(
            "{link}: nothing is made after pivot_root"
        )))
    }
    fn ensure_dir(&mut self, path: &str) -> io::Result<()> {
        Err(io::Error::other(format!(
            "{path}: nothing is made after pivot_root"
        )))
    }
}

/// The last steps of starting a process in the container (also used by `exec`, already
/// inside the container's namespaces and root): user, capabilities, no_new_privs, working
/// directory, clean signals and descriptors, the seccomp filter, then execve with a PATH
/// search. Returns only on failure.
pub fn exec_process(
    p: &Process,
    seccomp: Option<&Seccomp>,
    console: Option<BorrowedFd<'_>>,
) -> Fail {
    match prepare_and_exec(p, seccomp, console) {
        Err(f) => f,
        Ok(never) => match never {},
    }
}

fn prepare_and_exec(
    p: &Process,
    seccomp: Option<&Seccomp>,
    console: Option<BorrowedFd<'_>>,
) -> Result<Infallible, Fail> {
    if p.args.is_empty() {
        return Err(Fail {
            code: EXIT_RUNTIME,
            msg: "no command".into(),
        });
    }
    let who = resolve_user(&p.user)?;
    if p.terminal {
        let sock = console.ok_or_else(|| Fail {
            code: EXIT_RUNTIME,
            msg: "a terminal was asked for but nobody takes it".into(),
        })?;
        let master = super::tty::open_console(who.uid).map_err(fail("allocating a terminal"))?;
        super::tty::send_fd(sock, master.as_fd()).map_err(fail("handing over the terminal"))?;
    }
    let mut env = p.env.clone();
    if !env.iter().any(|e| e.starts_with("HOME=")) {
        env.push(format!("HOME={}", who.home));
    }
    drop_privileges(p, &who)?;
    rustix::process::chdir(p.cwd.as_str()).map_err(|e| Fail {
        code: EXIT_CANNOT_EXECUTE,
        msg: format!("chdir to {}: {}", p.cwd, io::Error::from(e)),
    })?;
    csys::reset_signals().map_err(fail("resetting signals"))?;
    csys::cloexec_from(3).map_err(fail("closing descriptors"))?;
    // Last: from here on only what the profile allows (execve, write to the status pipe,
    // exit) runs before the command.
    if let Some(s) = seccomp {
        super::seccomp::load(s).map_err(|msg| Fail {
            code: EXIT_RUNTIME,
            msg,
        })?;
    }
    exec_search(&p.args, &env)
}

fn resolve_user(u: &spec::User) -> Result<ExecUser, Fail> {
    let wanted = match &u.username {
        Some(name) => name.clone(),
        None if u.gid == 0 => u.uid.to_string(),
        None => format!("{}:{}", u.uid, u.gid),
    };
    let passwd = std::fs::read_to_string("/etc/passwd").ok();
    let group = std::fs::read_to_string("/etc/group").ok();
    let mut who =
        user::resolve(&wanted, passwd.as_deref(), group.as_deref()).map_err(|msg| Fail {
            code: EXIT_RUNTIME,
            msg,
        })?;
    for g in &u.additional_gids {
        if !who.groups.contains(g) {
            who.groups.push(*g);
        }
    }
    Ok(who)
}

fn drop_privileges(p: &Process, who: &ExecUser) -> Result<(), Fail> {
    let last: u32 = std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(40)
        .min(63);
    let bounding = spec::cap_mask(&p.capabilities.bounding);
    for cap in 0..=last {
        if bounding & (1u64 << cap) != 0 {
            continue;
        }
        match rustix::thread::remove_capability_from_bounding_set(CapabilitySet::from_bits_retain(
            1u64 << cap,
        )) {
            Ok(()) | Err(rustix::io::Errno::INVAL) => {}
            Err(e) => return Err(fail_errno(format!("dropping capability {cap}"))(e)),
        }
    }
    let _ = rustix::thread::clear_ambient_capability_set();
    let groups: Vec<rustix::process::Gid> = who
        .groups
        .iter()
        .map(|g| rustix::process::Gid::from_raw(*g))
        .collect();
    match rustix::thread::set_thread_groups(&groups) {
        Ok(()) => {}
        // A user namespace that maps only its user denies setgroups: the supplementary
        // groups stay the user's own (unmapped, shown as nobody), none of the image's.
        Err(rustix::io::Errno::PERM) if setgroups_denied() => {}
        Err(e) => return Err(fail_errno("setgroups")(e)),
    }
    let gid = rustix::process::Gid::from_raw(who.gid);
    let uid = rustix::process::Uid::from_raw(who.uid);
    rustix::thread::set_thread_res_gid(gid, gid, gid).map_err(unmapped("gid", who.gid))?;
    rustix::thread::set_thread_res_uid(uid, uid, uid).map_err(unmapped("uid", who.uid))?;
    let (effective, permitted, inheritable) = if who.uid == 0 {
        (
            spec::cap_mask(&p.capabilities.effective),
            spec::cap_mask(&p.capabilities.permitted),
            spec::cap_mask(&p.capabilities.inheritable),
        )
    } else {
        (0, 0, 0)
    };
    rustix::thread::set_capabilities(
        None,
        CapabilitySets {
            effective: CapabilitySet::from_bits_retain(effective & permitted),
            permitted: CapabilitySet::from_bits_retain(permitted),
            inheritable: CapabilitySet::from_bits_retain(inheritable),
        },
    )
    .map_err(fail_errno("capset"))?;
    if p.no_new_privileges {
        rustix::thread::set_no_new_privs(true).map_err(fail_errno("no_new_privs"))?;
    }
    Ok(())
}

/// Whether this process's user namespace denies `setgroups` (only its user mapped).
fn setgroups_denied() -> bool {
    std::fs::read_to_string("/proc/self/setgroups").is_ok_and(|s| s.trim() == "deny")
}

/// The error of setuid/setgid: an id the user namespace does not map gets a sentence.
fn unmapped(kind: &'static str, id: u32) -> impl FnOnce(rustix::io::Errno) -> Fail {
    move |e| {
        if e == rustix::io::Errno::INVAL {
            Fail {
                code: EXIT_RUNTIME,
                msg: format!(
                    "set{kind} {id}: the {kind} is not mapped in the container's user namespace: \
                     without root only the user is mapped (as 0) unless it has subordinate ids \
                     in /etc/sub{kind} (newuidmap/newgidmap, Debian package uidmap)"
                ),
            }
        } else {
            fail_errno(format!("set{kind}"))(e)
        }
    }
}

fn cstrings(v: &[String]) -> Result<Vec<CString>, Fail> {
    v.iter()
        .map(|s| CString::new(s.as_str()))
        .collect::<Result<_, _>>()
        .map_err(|_| Fail {
            code: EXIT_RUNTIME,
            msg: "an argument or environment variable contains a NUL byte".into(),
        })
}

/// Docker's wording: `exec: "x": permission denied`.
fn errno_text(e: &io::Error) -> String {
    match e.raw_os_error() {
        Some(libc::ENOENT) => "no such file or directory".into(),
        Some(libc::EACCES) => "permission denied".into(),
        Some(libc::ENOEXEC) => "exec format error".into(),
        Some(libc::EISDIR) => "is a directory".into(),
        Some(libc::ENOTDIR) => "not a directory".into(),
        Some(libc::ELOOP) => "too many levels of symbolic links".into(),
        Some(libc::ETXTBSY) => "text file busy".into(),
        _ => e.to_string(),
    }
}

fn exec_fail(prog: &str, e: &io::Error) -> Fail {
    let code = match e.raw_os_error() {
        Some(libc::ENOENT) => EXIT_NOT_FOUND,
        _ => EXIT_CANNOT_EXECUTE,
    };
    Fail {
        code,
        msg: format!("exec: {prog:?}: {}", errno_text(e)),
    }
}

fn exec_search(args: &[String], env: &[String]) -> Result<Infallible, Fail> {
    let argv = cstrings(args)?;
    let envp = cstrings(env)?;
    let prog = args[0].as_str();
    if prog.contains('/') {
        let path = cstrings(&[prog.to_string()])?;
        let e = csys::execve(&path[0], &argv, &envp);
        return Err(exec_fail(prog, &e));
    }
    let search = env
        .iter()
        .find_map(|e| e.strip_prefix("PATH="))
        .unwrap_or(spec::DEFAULT_PATH);
    let mut denied = false;
    for dir in search.split(':') {
        let dir = if dir.is_empty() { "." } else { dir };
        let full = cstrings(&[format!("{dir}/{prog}")])?;
        let e = csys::execve(&full[0], &argv, &envp);
        match e.raw_os_error() {
            Some(libc::ENOENT) | Some(libc::ENOTDIR) => {}
            Some(libc::EACCES) => denied = true,
            _ => return Err(exec_fail(prog, &e)),
        }
    }
    Err(if denied {
        Fail {
            code: EXIT_CANNOT_EXECUTE,
            msg: format!("exec: {prog:?}: permission denied"),
        }
    } else {
        Fail {
            code: EXIT_NOT_FOUND,
            msg: format!("exec: {prog:?}: executable file not found in $PATH"),
        }
    })
}

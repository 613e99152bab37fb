//! `exec`: a new process in a running container. The caller (single-threaded) moves its
//! *children* into the container's pid namespace, forks, and the child joins the container's
//! cgroups, ipc, uts, net and mount namespaces, takes its root, and finishes like the
//! container's init (user, capabilities, no_new_privs, PATH search). The exit code comes
//! back through `waitpid`; exec failures (126, 127) through a close-on-exec pipe.

use std::os::fd::{AsFd, OwnedFd};

use rustix::fs::{Mode, OFlags};
use rustix::pipe::{PipeFlags, pipe_with};
use rustix::thread::LinkNameSpaceType;
use tracing::info_span;

use super::init::{self, EXIT_RUNTIME, Fail, Msg};
use super::spec::{self, Process};
use super::store::{self, Container, Status};
use super::{RuntimeError, cgroups, tty};
use crate::sys::container::{self as csys, Fork};

/// What `exec` runs.
#[derive(Debug, Clone, Default)]
pub struct ExecOptions {
    pub command: Vec<String>,
    pub env: Vec<String>,
    pub workdir: Option<String>,
    pub user: Option<String>,
    pub interactive: bool,
    /// Allocate a terminal in the container; the caller's stdin/stdout are copied to it.
    pub tty: bool,
}

fn sys_err(what: &str) -> impl FnOnce(rustix::io::Errno) -> RuntimeError + '_ {
    move |e| RuntimeError::Sys {
        what: what.to_string(),
        source: e.into(),
    }
}

/// The process spec of an exec: the container's, with the command, extra environment,
/// working directory and user replaced.
pub fn exec_process(c: &Container, opts: &ExecOptions) -> Result<Process, RuntimeError> {
    if opts.command.is_empty() {
        return Err(RuntimeError::InvalidArg {
            what: "command",
            value: String::new(),
            why: "exec needs a command".into(),
        });
    }
    let mut p = c.spec.process.clone();
    p.args = opts.command.clone();
    p.env = spec::merge_env(&p.env, &opts.env);
    p.terminal = opts.tty;
    if opts.tty && !p.env.iter().any(|e| e.starts_with("TERM=")) {
        p.env.push("TERM=xterm".into());
    }
    if let Some(w) = &opts.workdir {
        if !w.starts_with('/') {
            return Err(RuntimeError::InvalidArg {
                what: "working directory",
                value: w.clone(),
                why: "must be an absolute path".into(),
            });
        }
        p.cwd = spec::clean_path(w);
    }
    if let Some(u) = &opts.user {
        p.user = spec::user_field(Some(u))?;
    }
    Ok(p)
}

/// Runs `opts.command` in the running container `c`; `started` gets the new process's host
/// PID (for signal forwarding). Returns its exit code (128 + n after signal n).
pub fn exec(
    c: &Container,
    opts: &ExecOptions,
    started: &mut dyn FnMut(i32),
) -> Result<i32, RuntimeError> {
    let _s = info_span!("exec", id = c.short_id()).entered();
    let process = exec_process(c, opts)?;
    let pid = c.state.pid;
    let alive = c.state.status == Status::Running
        && store::shim_alive(&c.dir)
        && store::same_process(pid, c.state.pid_start);
    if !alive {
        return Err(RuntimeError::NotRunning(c.meta.name.clone()));
    }
    let open_ns = |ns: &str| {
        rustix::fs::open(
            format!("/proc/{pid}/ns/{ns}").as_str(),
            OFlags::RDONLY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(sys_err("opening the container's namespaces"))
    };
    let pid_ns = open_ns("pid")?;
    // A container started without root has a user namespace of its own: join it first (its
    // owner may), which gives the rights to join the others.
    let user_ns = {
        let theirs = open_ns("user")?;
        let ours = rustix::fs::stat("/proc/self/ns/user").map_err(sys_err("/proc/self/ns/user"))?;
        let t = rustix::fs::fstat(&theirs).map_err(sys_err("the container's user namespace"))?;
        (t.st_ino != ours.st_ino || t.st_dev != ours.st_dev).then_some(theirs)
    };
    let others: Vec<(OwnedFd, LinkNameSpaceType)> = vec![
        (
            open_ns("ipc")?,
            LinkNameSpaceType::InterProcessCommunication,
        ),
        (open_ns("uts")?, LinkNameSpaceType::HostNameAndNISDomainName),
        (open_ns("net")?, LinkNameSpaceType::Network),
        (open_ns("mnt")?, LinkNameSpaceType::Mount),
    ];
    let root = rustix::fs::open(
        format!("/proc/{pid}/root").as_str(),
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(sys_err("opening the container's root"))?;
    // The descriptors now pin the namespaces: make sure they are the container's.
    if !store::same_process(pid, c.state.pid_start) {
        return Err(RuntimeError::NotRunning(c.meta.name.clone()));
    }
    let stdin: OwnedFd = if opts.interactive {
        rustix::io::fcntl_dupfd_cloexec(std::io::stdin(), 3).map_err(sys_err("stdin"))?
    } else {
        rustix::fs::open("/dev/null", OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty())
            .map_err(sys_err("opening /dev/null"))?
    };
    let own_pidns = rustix::fs::open(
        "/proc/self/ns/pid",
        OFlags::RDONLY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(sys_err("opening /proc/self/ns/pid"))?;
    let (err_r, err_w) = pipe_with(PipeFlags::CLOEXEC).map_err(sys_err("pipe"))?;
    let (console_parent, console_child) = if opts.tty {
        let (a, b) = tty::console_pair().map_err(|source| RuntimeError::Sys {
            what: "socketpair".into(),
            source,
        })?;
        (Some(a), Some(b))
    } else {
        (None, None)
    };
    let enter = |err_w: &OwnedFd| -> ! {
        let f = enter_and_exec(c, &others, &root, &stdin, &process, console_child.as_ref());
        init::send_fail(err_w.as_fd(), &f);
        csys::exit_now(f.code)
    };
    // `waiter` is the process to reap for the exit code; `child` the command itself.
    let (waiter, child) = match &user_ns {
        None => {
            rustix::thread::move_into_link_name_space(
                pid_ns.as_fd(),
                Some(LinkNameSpaceType::ProcessID),
            )
            .map_err(sys_err("joining the container's pid namespace"))?;
            let forked = csys::fork();
            // Threads can only be made again in our own pid namespace.
            let back = rustix::thread::move_into_link_name_space(
                own_pidns.as_fd(),
                Some(LinkNameSpaceType::ProcessID),
            );
            let child = match forked {
                Ok(Fork::Child) => {
                    drop(err_r);
                    drop(console_parent);
                    enter(&err_w)
                }
                Ok(Fork::Parent(p)) => p,
                Err(source) => {
                    return Err(RuntimeError::Sys {
                        what: "fork".into(),
                        source,
                    });
                }
            };
            back.map_err(sys_err("returning to strata's pid namespace"))?;
            (child, child)
        }
        // The container's own user namespace (started without root): an intermediate
        // process joins it and the pid namespace, which there is no way back from, forks the
        // command, reports its PID and passes its exit code on.
        Some(u) => {
            let (pid_r, pid_w) = pipe_with(PipeFlags::CLOEXEC).map_err(sys_err("pipe"))?;
            let waiter = match csys::fork() {
                Ok(Fork::Child) => {
                    drop((err_r, console_parent, pid_r));
                    let joined = rustix::thread::move_into_link_name_space(
                        u.as_fd(),
                        Some(LinkNameSpaceType::User),
                    )
                    .and_then(|()| {
                        rustix::thread::move_into_link_name_space(
                            pid_ns.as_fd(),
                            Some(LinkNameSpaceType::ProcessID),
                        )
                    });
                    if let Err(e) = joined {
                        init::send_fail(
                            err_w.as_fd(),
                            &Fail {
                                code: EXIT_RUNTIME,
                                msg: format!(
                                    "joining the container's namespaces: {}",
                                    std::io::Error::from(e)
                                ),
                            },
                        );
                        csys::exit_now(EXIT_RUNTIME);
                    }
                    match csys::fork() {
                        Ok(Fork::Child) => {
                            drop(pid_w);
                            enter(&err_w)
                        }
                        Ok(Fork::Parent(p)) => {
                            drop(err_w);
                            let _ = rustix::io::write(&pid_w, &p.to_le_bytes());
                            drop(pid_w);
                            csys::exit_now(wait(p))
                        }
                        Err(e) => {
                            init::send_fail(
                                err_w.as_fd(),
                                &Fail {
                                    code: EXIT_RUNTIME,
                                    msg: format!("fork: {e}"),
                                },
                            );
                            csys::exit_now(EXIT_RUNTIME)
                        }
                    }
                }
                Ok(Fork::Parent(p)) => p,
                Err(source) => {
                    return Err(RuntimeError::Sys {
                        what: "fork".into(),
                        source,
                    });
                }
            };
            drop(pid_w);
            let mut buf = [0u8; 4];
            let child = match rustix::io::read(&pid_r, &mut buf) {
                Ok(4) => i32::from_le_bytes(buf),
                // It failed before forking: the reason is on the error pipe.
                _ => waiter,
            };
            (waiter, child)
        }
    };
    drop(err_w);
    drop(stdin);
    drop(console_child);
    let master = match &console_parent {
        Some(sock) => tty::recv_fd(sock.as_fd()).map_err(|source| RuntimeError::Sys {
            what: "receiving the terminal".into(),
            source,
        })?,
        None => None,
    };
    let msg = init::recv(&err_r).map_err(|source| RuntimeError::Sys {
        what: "waiting for the exec".into(),
        source,
    })?;
    if let Msg::Fail(f) = msg {
        let _ = wait(waiter);
        return Err(RuntimeError::Exec {
            code: f.code,
            msg: f.msg,
        });
    }
    let output = master.map(|m| serve_terminal(m, opts.interactive));
    started(child);
    let code = wait(waiter);
    if let Some(done) = output {
        // Background processes may keep the terminal open: do not wait for them long.
        let _ = done.recv_timeout(std::time::Duration::from_secs(2));
    }
    Ok(code)
}

/// Copies the terminal's output to our stdout (the returned channel says when it ended),
/// our stdin to it with `interactive`, and our terminal's size to it (now and on SIGWINCH).
fn serve_terminal(master: OwnedFd, interactive: bool) -> std::sync::mpsc::Receiver<()> {
    let stdout = std::io::stdout();
    tty::init_winsize(master.as_fd(), Some(stdout.as_fd()));
    if let (Ok(out), Ok(m)) = (tty::dup_file(&stdout), tty::dup_file(&master))
        && let Ok(mut signals) =
            signal_hook::iterator::Signals::new([signal_hook::consts::SIGWINCH])
    {
        std::thread::spawn(move || {
            for _ in signals.forever() {
                tty::copy_winsize(out.as_fd(), m.as_fd());
            }
        });
    }
    if interactive
        && let (Ok(input), Ok(m)) = (tty::dup_file(std::io::stdin()), tty::dup_file(&master))
    {
        std::thread::spawn(move || tty::copy(input, m));
    }
    let (tx, rx) = std::sync::mpsc::channel();
    if let Ok(out) = tty::dup_file(&stdout) {
        std::thread::spawn(move || {
            tty::copy(std::fs::File::from(master), out);
            let _ = tx.send(());
        });
    }
    rx
}

fn enter_and_exec(
    c: &Container,
    namespaces: &[(OwnedFd, LinkNameSpaceType)],
    root: &OwnedFd,
    stdin: &OwnedFd,
    process: &Process,
    console: Option<&OwnedFd>,
) -> Fail {
    let f = |what: &str, e: std::io::Error| Fail {
        code: EXIT_RUNTIME,
        msg: format!("{what}: {e}"),
    };
    // Cgroup paths are host paths: join before leaving the host's mount namespace.
    if let Err(e) = cgroups::add(&c.state.cgroups, 0) {
        return Fail {
            code: EXIT_RUNTIME,
            msg: e.to_string(),
        };
    }
    for (fd, kind) in namespaces {
        if let Err(e) = rustix::thread::move_into_link_name_space(fd.as_fd(), Some(*kind)) {
            return f("setns", e.into());
        }
    }
    if let Err(e) = rustix::process::fchdir(root)
        .and_then(|()| rustix::process::chroot("."))
        .and_then(|()| rustix::process::chdir("/"))
    {
        return f("entering the container's root", e.into());
    }
    if let Err(e) = rustix::stdio::dup2_stdin(stdin) {
        return f("stdin", e.into());
    }
    // A terminal needs a session of its own to be the controlling terminal of.
    if console.is_some()
        && let Err(e) = rustix::process::setsid()
    {
        return f("setsid", e.into());
    }
    init::exec_process(
        process,
        c.spec.linux.seccomp.as_ref(),
        console.map(|c| c.as_fd()),
    )
}

fn wait(pid: i32) -> i32 {
    crate::sys::wait_exit(pid).unwrap_or(EXIT_RUNTIME)
}

//! The per-container shim (`strata __shim ID`): a detached process (its own session) that
//! owns one run of a container. It holds `shim.lock` for its whole life, forks the
//! container's init while still single-threaded, serves the FUSE rootfs that the init
//! mounted inside its own mount namespace, puts the init in its cgroups, records the state,
//! copies the container's output to the log (and to an attached client), waits for the
//! init, and tears everything down: when it exits, nothing of the container is left but its
//! records and its writable layer.
//!
//! To the `start` that spawned it, the shim writes lines on a status pipe: `ready PID`, or
//! `failed CODE MESSAGE`, and later `exit CODE` once the container is gone (and removed, with
//! `--rm`).

use std::fs::File;
use std::io::Write;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rustix::fs::{Mode, OFlags};
use rustix::pipe::{PipeFlags, pipe_with};
use rustix::process::{Pid, Signal};
use tracing::{info, info_span, warn};

use super::init::{self, Child, ChildIo, EXIT_RUNTIME, Fail, Msg};
use super::store::{self, Container, Containers, LOG_FILE, ROOTFS_DIR, RW_DIR, SHIM_LOCK, Status};
use super::{RuntimeError, cgroups, logs, tty, userns};
use crate::fs;
use crate::image::ImageStore;
use crate::sys;
use crate::sys::container::{self as csys, Fork};

/// FUSE worker threads per container.
const FUSE_THREADS: usize = 2;
/// How long the shim waits for the FUSE session to end once the container is gone.
const SESSION_END_WAIT: Duration = Duration::from_secs(10);

/// Descriptors the spawning `start` passed by number.
#[derive(Debug, Clone, Default)]
pub struct ShimArgs {
    pub id: String,
    pub status_fd: Option<i32>,
    pub attach_out: Option<i32>,
    pub attach_err: Option<i32>,
}

struct Reporter {
    out: Option<File>,
}

impl Reporter {
    fn say(&mut self, line: &str) {
        if let Some(f) = self.out.as_mut()
            && (writeln!(f, "{line}").is_err() || f.flush().is_err())
        {
            self.out = None;
        }
    }
}

fn take(fd: Option<i32>) -> Result<Option<File>, RuntimeError> {
    fd.map(|n| {
        csys::take_inherited_fd(n)
            .map(File::from)
            .map_err(|source| RuntimeError::Sys {
                what: format!("inherited descriptor {n}"),
                source,
            })
    })
    .transpose()
}

/// Runs the shim; the result is the shim process's exit code.
pub fn run(root: &Path, args: ShimArgs) -> Result<i32, RuntimeError> {
    // A new session: no terminal signal or hang-up of the caller reaches the shim.
    let _ = rustix::process::setsid();
    crate::rwlayer::tune_allocator();
    let mut status = Reporter {
        out: take(args.status_fd)?,
    };
    let attach_out = take(args.attach_out)?;
    let attach_err = take(args.attach_err)?;
    let containers = Containers::open(root)?;
    let dir = containers.dir_of(&args.id);
    let lock_path = dir.join(SHIM_LOCK);
    let _lock = sys::lock_file(&lock_path).map_err(store::io_err(&lock_path))?;
    let span = info_span!("shim", id = super::names::short(&args.id));
    let _g = span.enter();
    let mut c = match containers.load(&args.id) {
        Ok(c) => c,
        Err(e) => {
            status.say(&format!("failed {EXIT_RUNTIME} {e}"));
            return Ok(0);
        }
    };
    if c.state.status == Status::Running {
        // We hold the shim lock, so the shim that recorded this is dead.
        super::mark_dead(&mut c)?;
    }

    let started = Instant::now();
    let running = match launch(root, &c) {
        Ok(r) => r,
        Err(f) => {
            warn!(code = f.code, msg = %f.msg, "start failed");
            let mut st = c.state.clone();
            st.exit_code = f.code;
            st.error = f.msg.clone();
            st.pid = 0;
            store::write_state(&c.dir, &st)?;
            if c.meta.auto_remove {
                let _ = super::delete_container(root, &containers, &c, true);
            }
            status.say(&format!("failed {} {}", f.code, f.msg.replace('\n', " ")));
            return Ok(0);
        }
    };
    info!(
        pid = running.pid,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "container started"
    );

    let log_path = c.dir.join(LOG_FILE);
    let log = File::options()
        .create(true)
        .append(true)
        .open(&log_path)
        .map_err(store::io_err(&log_path))?;
    let log = Arc::new(Mutex::new(log));
    let mut pumps = Vec::new();
    let mut spawn_pump = |src: OwnedFd, stream: &'static str, attach: Option<File>| {
        let log = log.clone();
        pumps.push(std::thread::spawn(move || {
            logs::pump(File::from(src), stream, log, attach)
        }));
    };
    match running.io {
        RunIo::Pipes { out, err } => {
            spawn_pump(out, "stdout", attach_out);
            spawn_pump(err, "stderr", attach_err);
        }
        RunIo::Tty { master } => {
            serve_terminal(&master, c.meta.open_stdin, attach_out.as_ref());
            spawn_pump(master, "stdout", attach_out);
        }
    }
    c.state = store::State {
        status: Status::Running,
        pid: running.pid,
        pid_start: store::process_start_time(running.pid).unwrap_or(0),
        shim_pid: std::process::id() as i32,
        exit_code: 0,
        error: String::new(),
        started_at: super::time::now(),
        finished_at: c.state.finished_at.clone(),
        cgroups: running.cgroups.clone(),
    };
    store::write_state(&c.dir, &c.state)?;
    status.say(&format!("ready {}", running.pid));

    let code = {
        let _s = info_span!("wait", pid = running.pid).entered();
        wait_exit(running.pid)
    };
    info!(code, "container exited");
    let dropped = crate::logsink::dropped();
    if dropped > 0 {
        warn!(
            dropped,
            "log lines were dropped while the log's disk refused them"
        );
    }
    for p in pumps {
        let _ = p.join();
    }
    finish_session(&running.session);
    cgroups::remove(&running.cgroups);
    crate::net::detach(&c.id, &c.dir);
    c.state.status = Status::Exited;
    c.state.exit_code = code;
    c.state.pid = 0;
    c.state.pid_start = 0;
    c.state.finished_at = super::time::now();
    c.state.cgroups.clear();
    store::write_state(&c.dir, &c.state)?;
    if c.meta.auto_remove {
        let _s = info_span!("auto_remove").entered();
        if let Err(e) = super::delete_container(root, &containers, &c, true) {
            warn!(error = %e, "--rm: removing the container failed");
        }
    }
    status.say(&format!("exit {code}"));
    Ok(0)
}

/// Sizes the container's terminal like the attached client's (and again on each SIGWINCH,
/// which the client forwards), and copies the shim's stdin (the client's, with `-i`) into it.
fn serve_terminal(master: &OwnedFd, open_stdin: bool, client: Option<&File>) {
    tty::init_winsize(master.as_fd(), client.map(|c| c.as_fd()));
    if let (Some(out), Ok(m)) = (
        client.and_then(|o| tty::dup_file(o).ok()),
        tty::dup_file(master),
    ) && let Ok(mut signals) =
        signal_hook::iterator::Signals::new([signal_hook::consts::SIGWINCH])
    {
        std::thread::spawn(move || {
            for _ in signals.forever() {
                tty::copy_winsize(out.as_fd(), m.as_fd());
            }
        });
    }
    if open_stdin
        && let (Ok(input), Ok(m)) = (tty::dup_file(std::io::stdin()), tty::dup_file(master))
    {
        std::thread::spawn(move || tty::copy(input, m));
    }
}

/// Waits for the init; its exit code, or 128 + the signal that killed it.
fn wait_exit(pid: i32) -> i32 {
    sys::wait_exit(pid).unwrap_or(EXIT_RUNTIME)
}

/// Waits (bounded) for the FUSE session thread: it ends when the kernel aborts the
/// connection as the container's mount namespace goes away, after flushing the layer.
fn finish_session(done: &mpsc::Receiver<std::io::Result<()>>) {
    match done.recv_timeout(SESSION_END_WAIT) {
        Ok(Ok(())) => info!("rootfs session ended"),
        Ok(Err(e)) => warn!(error = %e, "rootfs session ended with an error"),
        Err(_) => warn!("rootfs session still open; exiting anyway (the kernel aborts it)"),
    }
}

/// The container's output: two pipes, or the master of its terminal.
enum RunIo {
    Pipes { out: OwnedFd, err: OwnedFd },
    Tty { master: OwnedFd },
}

struct Running {
    pid: i32,
    io: RunIo,
    cgroups: Vec<PathBuf>,
    session: mpsc::Receiver<std::io::Result<()>>,
}

/// Kills and reaps the forked init and removes its cgroups unless disarmed.
struct ChildGuard {
    pid: i32,
    cgroups: Vec<PathBuf>,
    session: Option<mpsc::Receiver<std::io::Result<()>>>,
    /// The container's directory: whatever of its network was made is undone on failure
    /// (detach does nothing where nothing was made).
    dir: PathBuf,
    id: String,
    armed: bool,
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        if let Some(p) = Pid::from_raw(self.pid) {
            let _ = rustix::process::kill_process(p, Signal::KILL);
            let _ = wait_exit(self.pid);
        }
        if let Some(s) = &self.session {
            finish_session(s);
        }
        cgroups::remove(&self.cgroups);
        crate::net::detach(&self.id, &self.dir);
    }
}

fn fail_io(what: &str) -> impl FnOnce(std::io::Error) -> Fail + '_ {
    move |e| Fail {
        code: EXIT_RUNTIME,
        msg: format!("{what}: {e}"),
    }
}

fn fail_errno(what: &str) -> impl FnOnce(rustix::io::Errno) -> Fail + '_ {
    move |e| Fail {
        code: EXIT_RUNTIME,
        msg: format!("{what}: {}", std::io::Error::from(e)),
    }
}

fn fail_rt(e: impl std::fmt::Display) -> Fail {
    Fail {
        code: EXIT_RUNTIME,
        msg: e.to_string(),
    }
}

/// Forks the init, serves its rootfs, and returns once it has exec'd the command.
fn launch(root: &Path, c: &Container) -> Result<Running, Fail> {
    let _s = info_span!("launch").entered();
    let (sync_r, sync_w) = pipe_with(PipeFlags::CLOEXEC).map_err(fail_errno("pipe"))?;
    let (go_r, go_w) = pipe_with(PipeFlags::CLOEXEC).map_err(fail_errno("pipe"))?;
    let (out_r, out_w) = pipe_with(PipeFlags::CLOEXEC).map_err(fail_errno("pipe"))?;
    let (err_r, err_w) = pipe_with(PipeFlags::CLOEXEC).map_err(fail_errno("pipe"))?;
    let (console_parent, console_child) = if c.spec.process.terminal {
        let (a, b) = tty::console_pair().map_err(fail_io("socketpair"))?;
        (Some(a), Some(b))
    } else {
        (None, None)
    };
    let stdin: OwnedFd = if c.meta.open_stdin {
        rustix::io::fcntl_dupfd_cloexec(std::io::stdin(), 3).map_err(fail_errno("stdin"))?
    } else {
        rustix::fs::open("/dev/null", OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty())
            .map_err(fail_errno("opening /dev/null"))?
    };
    // The init opens /dev/fuse itself (the kernel mounts a FUSE connection only in the user
    // namespace that opened it) and hands it over on this socket.
    let (fuse_parent, fuse_child) = tty::console_pair().map_err(fail_io("socketpair"))?;
    let rootfs = c.dir.join(ROOTFS_DIR);
    // Without root, the init gets a user namespace of its own first, which owns its other
    // namespaces; its ids are mapped below, before it goes on.
    let rootless = crate::paths::Mode::current() == crate::paths::Mode::Rootless;
    let mut id_maps = rootless.then(userns::IdMaps::of_current_user);
    // On a user network without root, the container shares the user namespace of the user's
    // network namespace (a veth joins only namespaces of one owner): the shim joins it now,
    // for good, and the init is created in it.
    if let Some(maps) = id_maps.as_ref().filter(|_| c.meta.net.user_network()) {
        let write = |pid: i32| maps.write(pid).map_err(|e| e.to_string());
        let userns = crate::net::rootless::enter(&c.id, &c.dir, &write).map_err(fail_rt)?;
        if let Err(e) = crate::net::rootless::join(&userns) {
            crate::net::detach(&c.id, &c.dir);
            return Err(fail_rt(e));
        }
        id_maps = None;
    }
    let flags = init::namespaces(&c.spec, id_maps.is_some());

    // The child is PID 1 of a new pid namespace, in all its namespaces from the start.
    let pid = match csys::fork_into(flags) {
        Ok(Fork::Child) => {
            drop(sync_r);
            drop(go_w);
            drop(out_r);
            drop(err_r);
            drop(console_parent);
            drop(fuse_parent);
            init::child_main(Child {
                spec: &c.spec,
                rootfs: &rootfs,
                fuse_to_shim: fuse_child,
                to_shim: sync_w,
                from_shim: go_r,
                io: ChildIo {
                    stdin,
                    stdout: out_w,
                    stderr: err_w,
                },
                console: console_child,
            })
        }
        Ok(Fork::Parent(pid)) => pid,
        Err(e) if id_maps.is_some() && e.raw_os_error() == Some(libc::EPERM) => {
            crate::net::detach(&c.id, &c.dir);
            return Err(fail_rt(format!(
                "cannot create a user namespace ({e}): this host does not let ordinary users \
                 make one (see sysctl kernel.unprivileged_userns_clone and \
                 user.max_user_namespaces)"
            )));
        }
        Err(e) => {
            // Undoes `rootless::enter` (a user network without root), if it was made.
            crate::net::detach(&c.id, &c.dir);
            return Err(fail_io("clone")(e));
        }
    };
    drop((sync_w, go_r, out_w, err_w, stdin, console_child, fuse_child));
    let mut guard = ChildGuard {
        pid,
        cgroups: vec![],
        session: None,
        dir: c.dir.clone(),
        id: c.id.clone(),
        armed: true,
    };

    if let Some(maps) = &id_maps {
        maps.write(pid).map_err(fail_rt)?;
    }
    init::send_byte(go_w.as_fd(), b'U').map_err(fail_io("releasing the container's init"))?;
    // The network namespace exists: pasta (without root) starts now and gets ready while
    // the rootfs opens; a bridge is wired below.
    let member = crate::net::Member {
        id: &c.id,
        name: &c.meta.name,
        hostname: &c.spec.hostname,
        dir: &c.dir,
        net: &c.meta.net,
    };
    let attaching = crate::net::start_attach(root, &member, pid).map_err(fail_rt)?;

    let filesystem = {
        let _s = info_span!("open_rootfs", layers = c.meta.layers.len()).entered();
        let store = ImageStore::open(root).map_err(fail_rt)?;
        // Passthrough needs CAP_SYS_ADMIN in the initial user namespace (root's containers).
        let passthrough = c.meta.rootfs_passthrough && crate::fs::access::passthrough_possible();
        fs::read_write(store.layers(), &c.meta.layers, &c.dir.join(RW_DIR))
            .map_err(fail_rt)?
            .with_passthrough(passthrough)
    };
    let view = filesystem.view();
    match init::recv(&sync_r).map_err(fail_io("waiting for the container's init"))? {
        Msg::Byte(b'M') => {}
        Msg::Fail(f) => return Err(f),
        _ => {
            return Err(fail_rt(
                "the container's init died before mounting its rootfs",
            ));
        }
    }
    let fuse = tty::recv_fd(fuse_parent.as_fd())
        .map_err(fail_io("receiving the rootfs's FUSE connection"))?
        .ok_or_else(|| fail_rt("the container's init sent no FUSE connection"))?;
    // The init has opened /dev/fuse (which the device rule does not allow): its cgroups now,
    // before it goes on to run anything of the image's.
    guard.cgroups = cgroups::create(&c.id, &c.spec.linux.resources).map_err(fail_rt)?;
    // The v1 device rule is root's to write; without root the nodev mounts alone keep device
    // nodes shut (and a user namespace cannot open the host's devices anyway).
    if !rootless
        && let Some(dir) = cgroups::create_devices(&c.id, &c.spec.linux.devices).map_err(fail_rt)?
    {
        guard.cgroups.push(dir);
    }
    cgroups::add(&guard.cgroups, pid).map_err(fail_rt)?;
    // The init waits for `G`: its network now.
    attaching.finish(&member).map_err(fail_rt)?;
    let config = fs::read_write_config("strata", FUSE_THREADS);
    let session = {
        let _s = info_span!("fuse_init").entered();
        fuser::Session::from_fd(filesystem, fuse, fuser::SessionACL::All, config)
            .map_err(fail_io("answering the rootfs's FUSE INIT"))?
    };
    let (tx, rx) = mpsc::channel();
    std::thread::Builder::new()
        .name("rootfs".into())
        .spawn(move || {
            let _ = tx.send(session.run());
        })
        .map_err(fail_io("starting the rootfs session"))?;
    guard.session = Some(rx);
    // `strata diff` of the running container asks the live view (only we may open the layer).
    if let Err(e) = crate::fs::changes::serve::serve(&c.dir, view) {
        warn!(error = %e, "diff socket");
    }
    init::send_byte(go_w.as_fd(), b'G').map_err(fail_io("releasing the container's init"))?;
    // With a terminal, the init sends the pty master just before it execs (or fails).
    let master = match &console_parent {
        Some(sock) => tty::recv_fd(sock.as_fd()).map_err(fail_io("receiving the terminal"))?,
        None => None,
    };
    match init::recv(&sync_r).map_err(fail_io("waiting for the container's init"))? {
        Msg::Eof => {}
        Msg::Fail(f) => return Err(f),
        Msg::Byte(_) => return Err(fail_rt("unexpected message from the container's init")),
    }
    guard.armed = false;
    let session = guard.session.take().ok_or_else(|| fail_rt("no session"))?;
    let io = match master {
        Some(master) => RunIo::Tty { master },
        None if c.spec.process.terminal => return Err(fail_rt("the terminal never came")),
        None => RunIo::Pipes {
            out: out_r,
            err: err_r,
        },
    };
    Ok(Running {
        pid,
        io,
        cgroups: std::mem::take(&mut guard.cgroups),
        session,
    })
}

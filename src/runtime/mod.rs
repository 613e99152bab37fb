//! Containers: the launcher and the lifecycle (created → running → exited → removed), with
//! Docker's semantics.
//!
//! - `store`: the records under `<root>/containers/<id>/`; `spec`: the OCI-shaped
//!   `config.json` and how it is built from the image and the options; `volumes`.
//! - `shim`: the detached per-container process that serves the FUSE rootfs and supervises
//!   the container; `init`: the container's first process up to `execve`; `mountplan`: what
//!   is mounted where (through the `MountOps` seam, unit-tested without root); `mounts`: safe
//!   mounting inside an untrusted rootfs; `userns`: the id maps of containers without root;
//!   `cgroups`; `exec`; `logs`.
//!
//! A stopped container leaves no process and no mount: its mounts only ever exist in its own
//! mount namespace, which dies with it; the shim exits after it. A shim that died (`kill -9`)
//! takes the container with it (the init has `PDEATHSIG`), and the next command that looks
//! at the container records it as exited ([`Runtime::get`] reconciles).

pub mod cgroups;
pub mod exec;
pub mod init;
pub mod logs;
pub mod mountplan;
pub mod mounts;
pub mod names;
pub mod seccomp;
pub mod shim;
pub mod spec;
pub mod store;
pub mod tty;
pub mod user;
pub mod userns;
pub mod volumes;

/// Timestamps live in the leaf module `crate::time` (net needs them too).
pub use crate::time;

use std::fs::File;
use std::io::{self, BufRead, BufReader};
use std::os::fd::{AsFd, AsRawFd};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rustix::pipe::{PipeFlags, pipe_with};
use rustix::process::{Pid, Signal};
use tracing::{info, info_span, warn};

use crate::fs::MountError;
use crate::image::{ImageError, ImageStore};
use crate::sys;
use crate::sys::container as csys;
pub use spec::CreateOptions;
pub use store::{Container, Containers, State, Status};
use volumes::Volumes;

/// The hidden CLI subcommand that runs a shim (`strata __shim ID`).
pub const SHIM_SUBCOMMAND: &str = "__shim";
/// How long `stop`, `rm -f` and `kill` wait for a SIGKILLed container to be gone.
const KILL_WAIT: Duration = Duration::from_secs(10);
/// How long `start` waits for the shim to say the command runs.
const START_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("no such container: {0}")]
    NoSuchContainer(String),
    #[error("{0} matches more than one container ID; give more digits")]
    Ambiguous(String),
    #[error("the container name {name:?} is already in use by container {id}")]
    NameInUse { name: String, id: String },
    #[error("invalid container name {0:?}: use [a-zA-Z0-9][a-zA-Z0-9_.-]+")]
    InvalidName(String),
    #[error("container {0} is running: stop it first, or use -f")]
    Running(String),
    #[error("container {0} is not running")]
    NotRunning(String),
    #[error("no command specified: the image has no Entrypoint or Cmd; give one after the image")]
    NoCommand,
    #[error(transparent)]
    Net(#[from] crate::net::NetError),
    #[error("invalid {what} {value:?}: {why}")]
    InvalidArg {
        what: &'static str,
        value: String,
        why: String,
    },
    #[error("no such volume: {0}")]
    NoSuchVolume(String),
    #[error("volume {name} is in use by container(s) {containers}")]
    VolumeInUse { name: String, containers: String },
    #[error("duplicate mount point {0}")]
    DuplicateMount(String),
    #[error("cgroups: {0}")]
    Cgroup(String),
    #[error("the container's user namespace: {0}")]
    UserNamespace(String),
    #[error("{0}")]
    Shim(String),
    /// The command could not be started: `code` is 126 (cannot execute), 127 (not found) or
    /// 125 (anything else strata could not set up).
    #[error("{msg}")]
    Exec { code: i32, msg: String },
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{path}: {source}")]
    Json {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("{what}: {source}")]
    Sys { what: String, source: io::Error },
    #[error(transparent)]
    Image(#[from] ImageError),
    #[error(transparent)]
    Mount(#[from] MountError),
}

impl RuntimeError {
    /// The exit code a CLI returns for this error (Docker's: 125 unless the command itself
    /// could not be run).
    pub fn exit_code(&self) -> i32 {
        match self {
            RuntimeError::Exec { code, .. } => *code,
            _ => init::EXIT_RUNTIME,
        }
    }
}

fn sys_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> RuntimeError {
    let what = what.into();
    move |source| RuntimeError::Sys { what, source }
}

/// How `start` connects the caller to the container.
#[derive(Debug, Clone, Copy, Default)]
pub struct StartIo {
    /// Stream the container's stdout/stderr to ours, and wait for the exit code.
    pub attach: bool,
}

/// A started container (attached or not).
pub struct Started {
    pub id: String,
    /// The container's init as the host sees it.
    pub pid: i32,
    shim: std::process::Child,
    status: BufReader<File>,
}

impl Started {
    /// The shim's PID (it resizes the container's terminal on SIGWINCH).
    pub fn shim_pid(&self) -> i32 {
        self.shim.id() as i32
    }

    /// Waits until the container has exited (and, with `--rm`, is removed); its exit code.
    pub fn wait(mut self) -> Result<i32, RuntimeError> {
        let mut line = String::new();
        let mut code = None;
        loop {
            line.clear();
            match self.status.read_line(&mut line) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
            if let Some(c) = line.trim().strip_prefix("exit ") {
                code = c.parse::<i32>().ok();
            }
        }
        let _ = self.shim.wait();
        code.ok_or_else(|| {
            RuntimeError::Shim(format!(
                "the shim of container {} ended without reporting an exit code",
                names::short(&self.id)
            ))
        })
    }
}

/// The container runtime of one state root.
#[derive(Debug, Clone)]
pub struct Runtime {
    root: PathBuf,
    containers: Containers,
}

impl Runtime {
    pub fn open(root: &Path) -> Result<Self, RuntimeError> {
        let root = std::path::absolute(root).map_err(store::io_err(root))?;
        let containers = Containers::open(&root)?;
        Ok(Runtime { root, containers })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn containers(&self) -> &Containers {
        &self.containers
    }

    pub fn volumes(&self) -> Result<Volumes, RuntimeError> {
        Volumes::open(&self.root)
    }

    /// A container by name or ID, its state reconciled with reality.
    pub fn get(&self, reference: &str) -> Result<Container, RuntimeError> {
        let id = self.containers.resolve(reference)?;
        self.load(&id)
    }

    fn load(&self, id: &str) -> Result<Container, RuntimeError> {
        let mut c = self.containers.load(id)?;
        reconcile(&mut c)?;
        Ok(c)
    }

    /// Records every container as a user of its image's layers (see `image::users`).
    /// Containers created by a strata from before layer users were recorded have no record;
    /// `rmi` calls this first, so it can never delete the layers under such a container.
    /// Recording a container again changes nothing.
    pub fn record_layer_users(&self) -> Result<(), RuntimeError> {
        let images = ImageStore::open(&self.root)?;
        for c in self.list()? {
            let Ok(image) = images.resolve(&c.meta.image_id) else {
                continue; // its image is gone; so is what a record would protect
            };
            images.hold(
                &image,
                crate::image::User::Container {
                    id: c.id.clone(),
                    name: c.meta.name.clone(),
                    dir: c.dir.clone(),
                },
            )?;
        }
        Ok(())
    }

    /// Every container, oldest first.
    pub fn list(&self) -> Result<Vec<Container>, RuntimeError> {
        let mut out = Vec::new();
        for id in self.containers.ids()? {
            match self.load(&id) {
                Ok(c) => out.push(c),
                // Removed meanwhile.
                Err(RuntimeError::NoSuchContainer(_)) => {}
                Err(RuntimeError::Io { source, .. })
                    if source.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        out.sort_by(|a, b| a.meta.created.cmp(&b.meta.created));
        Ok(out)
    }

    /// `create`: records a new container from an image and the options.
    pub fn create(
        &self,
        opts: &CreateOptions,
        cwd: &Path,
        host_env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Container, RuntimeError> {
        let _s = info_span!("create", image = opts.image).entered();
        let images = ImageStore::open(&self.root)?;
        let image = images.resolve(&opts.image)?;
        let config = images.config(&image)?;
        // Check everything the user typed before creating anything.
        let mut vol_args = Vec::new();
        for v in &opts.volumes {
            vol_args.push(spec::parse_volume(v, cwd)?);
        }
        let mut dests: Vec<String> = vol_args.iter().map(|v| v.dest().to_string()).collect();
        for t in &opts.tmpfs {
            dests.push(spec::parse_tmpfs(t)?.0);
        }
        for (i, d) in dests.iter().enumerate() {
            if dests[..i].contains(d) {
                return Err(RuntimeError::DuplicateMount(d.clone()));
            }
        }
        for d in spec::image_volumes(&config, &dests) {
            vol_args.push(spec::VolumeArg::Anonymous { dest: d });
        }
        let mut env_from_files = Vec::new();
        for f in &opts.env_files {
            let text = std::fs::read_to_string(f).map_err(store::io_err(f))?;
            env_from_files.extend(spec::parse_env_file(&text, host_env));
        }
        if let Some(s) = &opts.stop_signal {
            spec::parse_signal(s)?;
        }
        let rootfs_passthrough = spec::rootfs_passthrough(&opts.storage_opt)?;
        let exposed: Vec<String> = config.config.exposed_ports.keys().cloned().collect();
        let (net, _warnings) = crate::net::plan(&self.root, &opts.net, &exposed)?;

        let id = names::new_id().map_err(sys_err("random ID"))?;
        // The directory first: a name whose owner directory exists is taken (see
        // `reserve_name`), so no concurrent `create` can mistake ours for a stale one.
        let dir = self.containers.dir_of(&id);
        if let Err(e) = std::fs::create_dir_all(dir.join(store::ROOTFS_DIR)) {
            // All or nothing: a full disk may let `containers/<id>` be made but not its
            // `rootfs/`, which would leave a directory no command lists.
            let _ = std::fs::remove_dir_all(&dir);
            return Err(store::io_err(&dir)(e));
        }
        let reserved = match &opts.name {
            Some(n) => self.containers.reserve_name(n, &id).map(|()| n.clone()),
            None => {
                let mut attempt = 0;
                loop {
                    let n = match names::random_name(attempt) {
                        Ok(n) => n,
                        Err(e) => break Err(sys_err("random name")(e)),
                    };
                    match self.containers.reserve_name(&n, &id) {
                        Ok(()) => break Ok(n),
                        Err(RuntimeError::NameInUse { .. }) if attempt < 50 => attempt += 1,
                        Err(e) => break Err(e),
                    }
                }
            }
        };
        let name = match reserved {
            Ok(n) => n,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&dir);
                return Err(e);
            }
        };
        let volumes = self.volumes()?;
        let vlock = volumes.lock()?;
        let mut made_anonymous: Vec<String> = Vec::new();
        let result = (|| {
            let mut mounts = Vec::new();
            for v in &vol_args {
                mounts.push(match v {
                    spec::VolumeArg::Bind {
                        host,
                        dest,
                        read_only,
                    } => {
                        if !host.exists() {
                            std::fs::create_dir_all(host).map_err(store::io_err(host))?;
                        }
                        spec::VolumeMount {
                            kind: "bind".into(),
                            name: None,
                            anonymous: false,
                            source: host.clone(),
                            destination: dest.clone(),
                            read_only: *read_only,
                        }
                    }
                    spec::VolumeArg::Named {
                        name,
                        dest,
                        read_only,
                    } => {
                        let info = volumes.create(Some(name), false)?;
                        spec::VolumeMount {
                            kind: "volume".into(),
                            name: Some(info.name),
                            anonymous: false,
                            source: info.mountpoint,
                            destination: dest.clone(),
                            read_only: *read_only,
                        }
                    }
                    spec::VolumeArg::Anonymous { dest } => {
                        let info = volumes.create(None, true)?;
                        made_anonymous.push(info.name.clone());
                        spec::VolumeMount {
                            kind: "volume".into(),
                            name: Some(info.name),
                            anonymous: true,
                            source: info.mountpoint,
                            destination: dest.clone(),
                            read_only: false,
                        }
                    }
                });
            }
            let spec = spec::build(
                opts,
                spec::BuildInput {
                    image: &config,
                    id: &id,
                    container_dir: &dir,
                    volumes: &mounts,
                    env_from_files,
                    host_env,
                },
            )?;
            let mut spec = spec;
            let resolv = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
            let (hosts, resolv) = if net.own_namespace() {
                (
                    crate::net::hosts_file(&spec.hostname),
                    spec::resolv_conf(&resolv),
                )
            } else {
                spec.linux.namespaces.retain(|n| n.kind != "network");
                let h = std::fs::read_to_string("/etc/hosts").unwrap_or_default();
                (h, resolv)
            };
            for (file, body) in [
                ("hostname", format!("{}\n", spec.hostname)),
                ("hosts", hosts),
                ("resolv.conf", resolv),
            ] {
                let p = dir.join(file);
                std::fs::write(&p, body).map_err(store::io_err(&p))?;
            }
            let meta = store::ContainerMeta {
                id: id.clone(),
                name: name.clone(),
                created: time::now(),
                image: opts.image.clone(),
                image_id: image.id.to_string(),
                layers: image.layers.clone(),
                stop_signal: opts
                    .stop_signal
                    .clone()
                    .or(config.config.stop_signal.clone()),
                stop_timeout: opts.stop_timeout,
                auto_remove: opts.auto_remove,
                open_stdin: opts.interactive,
                tty: opts.tty,
                volumes: mounts,
                exposed_ports: config.config.exposed_ports.keys().cloned().collect(),
                net: net.clone(),
                rootfs_passthrough,
            };
            store::write_json(&dir.join(store::CONFIG_FILE), &spec)?;
            store::write_state(&dir, &State::created())?;
            // The container uses the image's layers until `rm` deletes its directory.
            images.hold(
                &image,
                crate::image::User::Container {
                    id: id.clone(),
                    name: name.clone(),
                    dir: dir.clone(),
                },
            )?;
            // Last: a directory with container.json is a complete container.
            store::write_json(&dir.join(store::META_FILE), &meta)?;
            Ok(Container {
                id: id.clone(),
                dir: dir.clone(),
                meta,
                spec,
                state: State::created(),
            })
        })();
        match result {
            Ok(c) => {
                info!(id = c.short_id(), name = c.meta.name, "created");
                Ok(c)
            }
            Err(e) => {
                for v in &made_anonymous {
                    let _ = volumes.remove(v);
                }
                drop(vlock);
                let _ = std::fs::remove_dir_all(&dir);
                self.containers.release_name(&name, &id);
                Err(e)
            }
        }
    }

    /// `start`: spawns the shim and returns once the command runs (or could not be run).
    /// Starting a running container does nothing.
    pub fn start(&self, reference: &str, io: StartIo) -> Result<Option<Started>, RuntimeError> {
        let id = self.containers.resolve(reference)?;
        let _lock = self.containers.lock(&id)?;
        let c = self.load(&id)?;
        if c.state.status == Status::Running {
            return Ok(None);
        }
        let _s = info_span!("start", id = c.short_id()).entered();
        let exe = std::env::current_exe().map_err(sys_err("locating the strata executable"))?;
        let (status_r, status_w) =
            pipe_with(PipeFlags::CLOEXEC).map_err(|e| sys_err("pipe")(e.into()))?;
        // Only the shim may hold the write end: with a copy of our own, a shim that died
        // without a word would never give us end-of-file.
        let status_w = {
            let inheritable = csys::dup_inheritable(status_w.as_fd()).map_err(sys_err("pipe"))?;
            drop(status_w);
            inheritable
        };
        let mut cmd = Command::new(exe);
        cmd.arg("--root")
            .arg(&self.root)
            .arg(SHIM_SUBCOMMAND)
            .arg(&id)
            .arg("--status-fd")
            .arg(status_w.as_raw_fd().to_string());
        let mut keep = vec![status_w];
        if io.attach {
            let out = csys::dup_inheritable(io::stdout().as_fd()).map_err(sys_err("stdout"))?;
            let err = csys::dup_inheritable(io::stderr().as_fd()).map_err(sys_err("stderr"))?;
            cmd.arg("--attach-out")
                .arg(out.as_raw_fd().to_string())
                .arg("--attach-err")
                .arg(err.as_raw_fd().to_string());
            keep.push(out);
            keep.push(err);
        }
        let shim_log = c.dir.join(store::SHIM_LOG_FILE);
        let log = File::options()
            .create(true)
            .append(true)
            .open(&shim_log)
            .map_err(store::io_err(&shim_log))?;
        let log2 = log.try_clone().map_err(store::io_err(&shim_log))?;
        cmd.stdin(if io.attach && c.meta.open_stdin {
            Stdio::inherit()
        } else {
            Stdio::null()
        })
        .stdout(log)
        .stderr(log2);
        let mut shim = cmd.spawn().map_err(sys_err("starting the shim"))?;
        drop(keep);
        // The first line, with a deadline: a shim stuck before it (a hung volume source,
        // say) is killed, and its container with it.
        let (tx, rx) = std::sync::mpsc::channel();
        let reader = BufReader::new(File::from(status_r));
        std::thread::spawn(move || {
            let mut reader = reader;
            let mut line = String::new();
            let _ = reader.read_line(&mut line);
            let _ = tx.send((line, reader));
        });
        let (line, status) = match rx.recv_timeout(START_TIMEOUT) {
            Ok(got) => got,
            Err(_) => {
                let _ = shim.kill();
                let _ = shim.wait();
                return Err(RuntimeError::Shim(format!(
                    "container {} did not start within {} s; its shim was killed",
                    c.short_id(),
                    START_TIMEOUT.as_secs()
                )));
            }
        };
        let line = line.trim_end();
        if let Some(pid) = line.strip_prefix("ready ") {
            return Ok(Some(Started {
                id: id.clone(),
                pid: pid.parse().unwrap_or(0),
                shim,
                status,
            }));
        }
        let _ = shim.wait();
        if let Some(rest) = line.strip_prefix("failed ") {
            let (code, msg) = rest.split_once(' ').unwrap_or((rest, ""));
            return Err(RuntimeError::Exec {
                code: code.parse().unwrap_or(init::EXIT_RUNTIME),
                msg: msg.to_string(),
            });
        }
        let why = log_tail(&shim_log, 5);
        Err(RuntimeError::Shim(format!(
            "the shim of container {} exited without starting it{}",
            c.short_id(),
            if why.is_empty() {
                String::new()
            } else {
                format!(": {why}")
            }
        )))
    }

    /// `stop`: the stop signal (the image's StopSignal, else SIGTERM), then SIGKILL after
    /// `timeout` seconds (the container's `--stop-timeout`, else 10). Returns once the
    /// container and its shim are gone. Stopping a stopped container does nothing.
    pub fn stop(&self, reference: &str, timeout: Option<u64>) -> Result<Container, RuntimeError> {
        let id = self.containers.resolve(reference)?;
        let lock = self.containers.lock(&id)?;
        let c = self.load(&id)?;
        if c.state.status != Status::Running {
            return Ok(c);
        }
        let _s = info_span!("stop", id = c.short_id()).entered();
        let sig = match &c.meta.stop_signal {
            Some(s) => spec::parse_signal(s)?,
            None => libc::SIGTERM,
        };
        let t = Duration::from_secs(timeout.or(c.meta.stop_timeout).unwrap_or(10));
        signal_init(&c, sig)?;
        if !wait_gone(&c.dir, t) {
            info!(timeout_s = t.as_secs(), "still running: SIGKILL");
            signal_init(&c, libc::SIGKILL)?;
            if !wait_gone(&c.dir, KILL_WAIT) {
                return Err(RuntimeError::Shim(format!(
                    "container {} did not stop within {} s of SIGKILL",
                    c.short_id(),
                    KILL_WAIT.as_secs()
                )));
            }
        }
        drop(lock);
        match self.load(&id) {
            Ok(c) => Ok(c),
            // Removed by its own --rm.
            Err(RuntimeError::NoSuchContainer(_)) => Ok(c),
            Err(e) => Err(e),
        }
    }

    /// `kill`: sends `signal` to the container's init.
    pub fn kill(&self, reference: &str, signal: i32) -> Result<Container, RuntimeError> {
        let id = self.containers.resolve(reference)?;
        let _lock = self.containers.lock(&id)?;
        let c = self.load(&id)?;
        if c.state.status != Status::Running {
            return Err(RuntimeError::NotRunning(c.meta.name.clone()));
        }
        signal_init(&c, signal)?;
        Ok(c)
    }

    /// `wait`: blocks until the container is not running; its exit code.
    pub fn wait(&self, reference: &str) -> Result<i32, RuntimeError> {
        let id = self.containers.resolve(reference)?;
        let c = self.load(&id)?;
        if c.state.status == Status::Running {
            while store::shim_alive(&c.dir) {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        match self.load(&id) {
            Ok(c) => Ok(c.state.exit_code),
            Err(e) => Err(e),
        }
    }

    /// `rm`: deletes the container and its writable layer (`force`: kills it first;
    /// `volumes`: also its anonymous volumes).
    pub fn remove(
        &self,
        reference: &str,
        force: bool,
        volumes: bool,
    ) -> Result<String, RuntimeError> {
        let id = self.containers.resolve(reference)?;
        let _lock = self.containers.lock(&id)?;
        let c = self.load(&id)?;
        let _s = info_span!("rm", id = c.short_id()).entered();
        if c.state.status == Status::Running {
            if !force {
                return Err(RuntimeError::Running(c.meta.name.clone()));
            }
            signal_init(&c, libc::SIGKILL)?;
            if !wait_gone(&c.dir, KILL_WAIT) {
                return Err(RuntimeError::Shim(format!(
                    "container {} did not stop within {} s of SIGKILL",
                    c.short_id(),
                    KILL_WAIT.as_secs()
                )));
            }
        }
        match self.containers.load(&id) {
            Ok(c) => delete_container(&self.root, &self.containers, &c, volumes)?,
            // Its own --rm was faster.
            Err(RuntimeError::NoSuchContainer(_)) => {}
            Err(e) => return Err(e),
        }
        Ok(id)
    }

    /// Containers (by name) whose volumes include `name`.
    fn volume_users(&self, name: &str) -> Result<Vec<String>, RuntimeError> {
        let mut users = Vec::new();
        for id in self.containers.ids()? {
            if let Ok(c) = self.containers.load(&id)
                && c.meta
                    .volumes
                    .iter()
                    .any(|v| v.name.as_deref() == Some(name))
            {
                users.push(c.meta.name.clone());
            }
        }
        Ok(users)
    }

    /// `volume rm`: refused while any container (running or not) uses the volume.
    pub fn remove_volume(&self, name: &str) -> Result<(), RuntimeError> {
        let volumes = self.volumes()?;
        let _l = volumes.lock()?;
        volumes.get(name)?;
        let users = self.volume_users(name)?;
        if !users.is_empty() {
            return Err(RuntimeError::VolumeInUse {
                name: name.into(),
                containers: users.join(", "),
            });
        }
        volumes.remove(name)
    }

    /// Names of the containers using each volume.
    pub fn volume_usage(&self, name: &str) -> Result<Vec<String>, RuntimeError> {
        self.volume_users(name)
    }
}

fn signal_init(c: &Container, sig: i32) -> Result<(), RuntimeError> {
    if !store::same_process(c.state.pid, c.state.pid_start) {
        return Ok(()); // already gone
    }
    let (Some(pid), Some(sig)) = (Pid::from_raw(c.state.pid), Signal::from_named_raw(sig)) else {
        return Err(RuntimeError::InvalidArg {
            what: "signal",
            value: sig.to_string(),
            why: "not a signal".into(),
        });
    };
    match rustix::process::kill_process(pid, sig) {
        Ok(()) | Err(rustix::io::Errno::SRCH) => Ok(()),
        Err(e) => Err(sys_err(format!("signalling container {}", c.short_id()))(
            e.into(),
        )),
    }
}

/// Waits (bounded) until no shim holds the container.
fn wait_gone(dir: &Path, timeout: Duration) -> bool {
    let end = Instant::now() + timeout;
    loop {
        if !store::shim_alive(dir) {
            return true;
        }
        if Instant::now() >= end {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Brings a `running` record whose shim is dead back to reality: kills what is left of the
/// container, removes its cgroups, records it as exited.
fn reconcile(c: &mut Container) -> Result<(), RuntimeError> {
    if c.state.status != Status::Running {
        return Ok(());
    }
    let lock_path = c.dir.join(store::SHIM_LOCK);
    let Some(_lock) = sys::try_lock_file(&lock_path).map_err(store::io_err(&lock_path))? else {
        return Ok(()); // the shim is alive
    };
    // Read again under the lock: the shim may have finished just now.
    c.state = store::read_json(&c.dir.join(store::STATE_FILE))?;
    if c.state.status != Status::Running {
        return Ok(());
    }
    mark_dead(c)
}

/// Records a container whose shim died as exited (call with the shim lock held).
pub(crate) fn mark_dead(c: &mut Container) -> Result<(), RuntimeError> {
    let _s = info_span!("reconcile", id = c.short_id()).entered();
    warn!(
        shim_pid = c.state.shim_pid,
        "the container's shim died; cleaning up"
    );
    if store::same_process(c.state.pid, c.state.pid_start)
        && let Some(pid) = Pid::from_raw(c.state.pid)
    {
        let _ = rustix::process::kill_process(pid, Signal::KILL);
        let end = Instant::now() + KILL_WAIT;
        while store::same_process(c.state.pid, c.state.pid_start) && Instant::now() < end {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    cgroups::remove(&c.state.cgroups);
    crate::net::detach(&c.id, &c.dir);
    c.state.status = Status::Exited;
    c.state.exit_code = 128 + libc::SIGKILL;
    c.state.error = format!(
        "the shim (pid {}) died; the container was killed",
        c.state.shim_pid
    );
    c.state.pid = 0;
    c.state.pid_start = 0;
    c.state.finished_at = time::now();
    c.state.cgroups.clear();
    store::write_state(&c.dir, &c.state)
}

/// Deletes a stopped container's directory (writable layer, log, records) and name, and its
/// anonymous volumes when asked.
pub(crate) fn delete_container(
    root: &Path,
    containers: &Containers,
    c: &Container,
    anonymous_volumes: bool,
) -> Result<(), RuntimeError> {
    // Never delete through a mount (there is none on the host by design; be sure).
    let rootfs = c.dir.join(store::ROOTFS_DIR);
    if sys::mount_at(&rootfs).is_some() {
        return Err(RuntimeError::Shim(format!(
            "{} is a mount point; refusing to delete the container",
            rootfs.display()
        )));
    }
    let trash = c.dir.with_file_name(format!(".removing-{}", c.id));
    std::fs::rename(&c.dir, &trash).map_err(store::io_err(&c.dir))?;
    containers.release_name(&c.meta.name, &c.id);
    std::fs::remove_dir_all(&trash).map_err(store::io_err(&trash))?;
    if anonymous_volumes {
        let volumes = Volumes::open(root)?;
        let _l = volumes.lock()?;
        for v in c.meta.volumes.iter().filter(|v| v.anonymous) {
            if let Some(name) = &v.name
                && let Err(e) = volumes.remove(name)
            {
                warn!(volume = name, error = %e, "removing an anonymous volume failed");
            }
        }
    }
    info!(id = c.short_id(), "removed");
    // It no longer uses its image's layers: free them if `rmi -f` left them for it.
    match ImageStore::open(root) {
        Ok(images) => {
            let _ = images.release(&crate::image::User::Container {
                id: c.id.clone(),
                name: c.meta.name.clone(),
                dir: c.dir.clone(),
            });
            if let Err(e) = images.gc() {
                warn!(error = %e, "collecting unused layers failed");
            }
        }
        Err(e) => warn!(error = %e, "collecting unused layers failed"),
    }
    Ok(())
}

/// The last `lines` lines of a log file, from its last 64 KiB at most; nothing when it is
/// not a regular file (a log redirected to a device must not hang or flood the caller).
fn log_tail(path: &Path, lines: usize) -> String {
    use std::io::{Read, Seek, SeekFrom};
    let Ok(mut f) = File::open(path) else {
        return String::new();
    };
    let Ok(meta) = f.metadata() else {
        return String::new();
    };
    if !meta.is_file() {
        return String::new();
    }
    let keep = 64 * 1024;
    if meta.len() > keep && f.seek(SeekFrom::Start(meta.len() - keep)).is_err() {
        return String::new();
    }
    let mut buf = Vec::new();
    if f.take(keep).read_to_end(&mut buf).is_err() {
        return String::new();
    }
    let text = String::from_utf8_lossy(&buf);
    let last: Vec<&str> = text.lines().rev().take(lines).collect();
    last.into_iter().rev().collect::<Vec<_>>().join("\n")
}

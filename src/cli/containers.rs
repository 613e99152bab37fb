//! The container verbs (`run`, `create`, `start`, `stop`, `restart`, `rm`, `ps`, `logs`,
//! `exec`, `kill`, `wait`, `inspect`) and `volume …`, with Docker's flags and exit codes:
//! 125 for strata's own errors, 126 when the command cannot be executed, 127 when it is
//! not found, else the command's own (128 + n after signal n).

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use serde_json::{Value, json};

use crate::runtime::exec::ExecOptions;
use crate::runtime::logs::LogEntry;
use crate::runtime::store::{self, Container, Status};
use crate::runtime::{self, CreateOptions, Runtime, RuntimeError, StartIo, spec, time};

#[derive(Subcommand, Debug)]
pub enum ContainerCommand {
    /// Create and start a container; attached, it streams the output and returns the exit code.
    Run(RunArgs),
    /// Create a container without starting it.
    Create(CreateArgs),
    /// Start stopped containers (with the same writable layer).
    Start(StartArgs),
    /// Stop running containers: the stop signal, then SIGKILL after -t seconds.
    Stop(StopArgs),
    /// Stop, then start containers.
    Restart(StopArgs),
    /// Remove containers and their writable layers.
    Rm(RmArgs),
    /// List containers.
    Ps(PsArgs),
    /// Show a container's output.
    Logs(LogsArgs),
    /// Run a command in a running container.
    Exec(ExecArgs),
    /// Send a signal (default SIGKILL) to containers.
    Kill(KillArgs),
    /// Wait until containers stop; print their exit codes.
    Wait {
        /// Containers: name or ID.
        #[arg(required = true, value_name = "CONTAINER")]
        containers: Vec<String>,
    },
    /// Manage volumes.
    #[command(subcommand)]
    Volume(VolumeCommand),
    /// (internal) The per-container shim; started by `start`.
    #[command(name = "__shim", hide = true)]
    Shim(ShimArgs),
}

#[derive(Args, Debug, Clone)]
pub struct CreateArgs {
    /// Name of the container (unique; a random one otherwise).
    #[arg(long)]
    pub name: Option<String>,
    /// Set an environment variable (`K=V`, or `K` to pass the caller's value).
    #[arg(short = 'e', long = "env", value_name = "K=V")]
    pub env: Vec<String>,
    /// Read environment variables from a file.
    #[arg(long = "env-file", value_name = "FILE")]
    pub env_file: Vec<PathBuf>,
    /// Working directory inside the container.
    #[arg(short = 'w', long = "workdir", value_name = "DIR")]
    pub workdir: Option<String>,
    /// User: name, uid, name:group or uid:gid (names from the container's /etc/passwd, /etc/group).
    #[arg(short = 'u', long = "user")]
    pub user: Option<String>,
    /// Container host name (default: the short ID).
    #[arg(long)]
    pub hostname: Option<String>,
    /// Override the image's Entrypoint ("" clears it).
    #[arg(long)]
    pub entrypoint: Option<String>,
    /// Bind mount a volume: /host:/ctr[:ro], name:/ctr[:ro], or /ctr (anonymous).
    #[arg(short = 'v', long = "volume", value_name = "SPEC")]
    pub volumes: Vec<String>,
    /// Mount a tmpfs: /path[:size=64m,mode=1777,exec].
    #[arg(long, value_name = "PATH")]
    pub tmpfs: Vec<String>,
    /// Mount the container's root file system read-only.
    #[arg(long)]
    pub read_only: bool,
    /// Keep stdin open: the container reads the caller's stdin.
    #[arg(short = 'i', long)]
    pub interactive: bool,
    /// Allocate a pseudo-terminal.
    #[arg(short = 't', long)]
    pub tty: bool,
    /// Memory limit (e.g. 64m, 1g).
    #[arg(short = 'm', long)]
    pub memory: Option<String>,
    /// CPU limit (e.g. 0.5, 2).
    #[arg(long)]
    pub cpus: Option<f64>,
    /// Maximum number of processes.
    #[arg(long)]
    pub pids_limit: Option<i64>,
    /// Remove the container (and its anonymous volumes) when it exits.
    #[arg(long)]
    pub rm: bool,
    /// Signal to stop the container (default: the image's StopSignal, else SIGTERM).
    #[arg(long)]
    pub stop_signal: Option<String>,
    /// Seconds `stop` waits before SIGKILL (default 10).
    #[arg(long)]
    pub stop_timeout: Option<u64>,
    /// Security options: seccomp=unconfined, seccomp=PROFILE.json (Docker's format); the
    /// default is Docker's default seccomp profile.
    #[arg(long = "security-opt", value_name = "OPT")]
    pub security_opt: Vec<String>,
    /// Storage options of the rootfs: io=no-open (the default: no round trip per open) or
    /// io=passthrough (as root: big files read and written by the kernel itself, for one
    /// OPEN and one RELEASE round trip per open; see `strata mount --help`).
    #[arg(long = "storage-opt", value_name = "OPT")]
    pub storage_opt: Vec<String>,
    #[command(flatten)]
    pub net: super::network::NetArgs,
    /// Image name, name:tag or ID.
    pub image: String,
    /// Command and arguments (replace the image's Cmd).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub command: Vec<String>,
}

#[derive(Args, Debug, Clone)]
pub struct RunArgs {
    /// Run in the background and print the container ID.
    #[arg(short = 'd', long)]
    pub detach: bool,
    #[command(flatten)]
    pub create: CreateArgs,
}

#[derive(Args, Debug, Clone)]
pub struct StartArgs {
    /// Attach to the output and return the exit code.
    #[arg(short = 'a', long)]
    pub attach: bool,
    /// Containers: name or ID.
    #[arg(required = true, value_name = "CONTAINER")]
    pub containers: Vec<String>,
}

#[derive(Args, Debug, Clone)]
pub struct StopArgs {
    /// Seconds to wait before SIGKILL (default: the container's --stop-timeout, else 10).
    #[arg(short = 't', long = "time")]
    pub time: Option<u64>,
    /// Containers: name or ID.
    #[arg(required = true, value_name = "CONTAINER")]
    pub containers: Vec<String>,
}

#[derive(Args, Debug, Clone)]
pub struct RmArgs {
    /// Kill and remove running containers.
    #[arg(short = 'f', long)]
    pub force: bool,
    /// Also remove the containers' anonymous volumes.
    #[arg(short = 'v', long)]
    pub volumes: bool,
    /// Containers: name or ID.
    #[arg(required = true, value_name = "CONTAINER")]
    pub containers: Vec<String>,
}

#[derive(Args, Debug, Clone)]
pub struct PsArgs {
    /// Show all containers (default: running only).
    #[arg(short = 'a', long)]
    pub all: bool,
    /// Only IDs.
    #[arg(short = 'q', long)]
    pub quiet: bool,
    /// JSON output.
    #[arg(long)]
    pub json: bool,
    /// Do not truncate IDs and commands.
    #[arg(long)]
    pub no_trunc: bool,
}

#[derive(Args, Debug, Clone)]
pub struct LogsArgs {
    /// Follow: keep printing new output until the container stops.
    #[arg(short = 'f', long)]
    pub follow: bool,
    /// Only the last N lines.
    #[arg(short = 'n', long)]
    pub tail: Option<usize>,
    /// Prefix each line with its timestamp.
    #[arg(short = 't', long)]
    pub timestamps: bool,
    /// Container name or ID.
    pub container: String,
}

#[derive(Args, Debug, Clone)]
pub struct ExecArgs {
    /// Keep stdin open.
    #[arg(short = 'i', long)]
    pub interactive: bool,
    /// Allocate a pseudo-terminal.
    #[arg(short = 't', long)]
    pub tty: bool,
    /// Set environment variables.
    #[arg(short = 'e', long = "env", value_name = "K=V")]
    pub env: Vec<String>,
    /// Working directory inside the container.
    #[arg(short = 'w', long = "workdir")]
    pub workdir: Option<String>,
    /// User: name, uid, name:group or uid:gid.
    #[arg(short = 'u', long = "user")]
    pub user: Option<String>,
    /// Container name or ID.
    pub container: String,
    /// Command and arguments.
    #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
    pub command: Vec<String>,
}

#[derive(Args, Debug, Clone)]
pub struct KillArgs {
    /// Signal to send.
    #[arg(short = 's', long = "signal", default_value = "KILL")]
    pub signal: String,
    /// Containers: name or ID.
    #[arg(required = true, value_name = "CONTAINER")]
    pub containers: Vec<String>,
}

#[derive(Subcommand, Debug)]
pub enum VolumeCommand {
    /// Create a volume (a random name if none is given).
    Create {
        /// The volume's name.
        name: Option<String>,
    },
    /// List volumes.
    Ls {
        /// Only names.
        #[arg(short = 'q', long)]
        quiet: bool,
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// Show volumes as JSON.
    Inspect {
        /// Volume names.
        #[arg(required = true, value_name = "VOLUME")]
        names: Vec<String>,
    },
    /// Remove volumes (refused while a container uses them).
    Rm {
        /// Volume names.
        #[arg(required = true, value_name = "VOLUME")]
        names: Vec<String>,
    },
}

#[derive(Args, Debug, Clone)]
pub struct ShimArgs {
    pub id: String,
    #[arg(long)]
    pub status_fd: Option<i32>,
    #[arg(long)]
    pub attach_out: Option<i32>,
    #[arg(long)]
    pub attach_err: Option<i32>,
}

pub fn dispatch(root: &Path, cmd: ContainerCommand) -> anyhow::Result<i32> {
    match cmd {
        ContainerCommand::Run(a) => run(root, a),
        ContainerCommand::Create(a) => create(root, a),
        ContainerCommand::Start(a) => start(root, a),
        ContainerCommand::Stop(a) => stop(root, a),
        ContainerCommand::Restart(a) => restart(root, a),
        ContainerCommand::Rm(a) => rm(root, a),
        ContainerCommand::Ps(a) => ps(root, a),
        ContainerCommand::Logs(a) => logs(root, a),
        ContainerCommand::Exec(a) => exec(root, a),
        ContainerCommand::Kill(a) => kill(root, a),
        ContainerCommand::Wait { containers } => wait(root, &containers),
        ContainerCommand::Volume(v) => volume(root, v),
        ContainerCommand::Shim(a) => Ok(runtime::shim::run(
            root,
            runtime::shim::ShimArgs {
                id: a.id,
                status_fd: a.status_fd,
                attach_out: a.attach_out,
                attach_err: a.attach_err,
            },
        )?),
    }
}

fn host_env(k: &str) -> Option<String> {
    std::env::var(k).ok()
}

impl CreateArgs {
    fn options(&self, auto_remove: bool) -> anyhow::Result<CreateOptions> {
        if self.storage_opt.iter().any(|o| o == "io=passthrough")
            && !strata::fs::access::passthrough_possible()
        {
            eprintln!(
                "strata: warning: --storage-opt io=passthrough needs root (CAP_SYS_ADMIN); the rootfs opens files without it"
            );
        }
        Ok(CreateOptions {
            image: self.image.clone(),
            name: self.name.clone(),
            command: self.command.clone(),
            entrypoint: self.entrypoint.clone(),
            env: self.env.clone(),
            env_files: self.env_file.clone(),
            workdir: self.workdir.clone(),
            user: self.user.clone(),
            hostname: self.hostname.clone(),
            volumes: self.volumes.clone(),
            tmpfs: self.tmpfs.clone(),
            read_only: self.read_only,
            interactive: self.interactive,
            tty: self.tty,
            memory: self.memory.as_deref().map(spec::parse_bytes).transpose()?,
            cpus: self.cpus,
            pids_limit: self.pids_limit,
            auto_remove: auto_remove || self.rm,
            stop_signal: self.stop_signal.clone(),
            stop_timeout: self.stop_timeout,
            security_opt: self.security_opt.clone(),
            storage_opt: self.storage_opt.clone(),
            net: self.net.options(),
        })
    }
}

/// Prints an exec failure as Docker does and returns its exit code; other errors pass.
fn exec_failure(e: RuntimeError) -> anyhow::Result<i32> {
    match e {
        RuntimeError::Exec { code, msg } => {
            eprintln!("strata: {msg}");
            Ok(code)
        }
        e => Err(e.into()),
    }
}

/// Forwards SIGINT, SIGTERM, SIGHUP and SIGQUIT received by the CLI to `pid` (Docker's
/// sig-proxy), while `pid` is the process started at `start_time`.
fn proxy_signals(pid: i32) {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGQUIT, SIGTERM};
    let Ok(mut signals) = signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP, SIGQUIT])
    else {
        return;
    };
    let start = store::process_start_time(pid);
    std::thread::spawn(move || {
        for sig in signals.forever() {
            if let (Some(s), Some(p)) = (
                rustix::process::Signal::from_named_raw(sig),
                rustix::process::Pid::from_raw(pid),
            ) && store::process_start_time(pid) == start
            {
                let _ = rustix::process::kill_process(p, s);
            }
        }
    });
}

fn run(root: &Path, args: RunArgs) -> anyhow::Result<i32> {
    let rt = Runtime::open(root)?;
    let opts = args.create.options(false)?;
    let cwd = std::env::current_dir().context("current directory")?;
    let c = rt.create(&opts, &cwd, &host_env)?;
    if let Some(n) = runtime::userns::fallback_notice(root) {
        eprintln!("strata: note: {n}");
    }
    let started = match rt.start(
        &c.id,
        StartIo {
            attach: !args.detach,
        },
    ) {
        Ok(Some(s)) => s,
        Ok(None) => return Ok(0),
        Err(e) => return exec_failure(e),
    };
    if args.detach {
        println!("{}", c.id);
        return Ok(0);
    }
    attached(started, c.meta.tty && c.meta.open_stdin)
}

/// Waits for an attached container: signals go to it, the terminal (with -it) goes raw and
/// its size follows ours.
fn attached(started: runtime::Started, raw: bool) -> anyhow::Result<i32> {
    let _raw = raw.then(runtime::tty::RawMode::stdin).flatten();
    proxy_signals(started.pid);
    forward_winch(started.shim_pid());
    Ok(started.wait()?)
}

/// Forwards SIGWINCH to the shim, which resizes the container's terminal.
fn forward_winch(shim: i32) {
    let Ok(mut signals) = signal_hook::iterator::Signals::new([signal_hook::consts::SIGWINCH])
    else {
        return;
    };
    std::thread::spawn(move || {
        for _ in signals.forever() {
            if let Some(p) = rustix::process::Pid::from_raw(shim) {
                let _ = rustix::process::kill_process(p, rustix::process::Signal::WINCH);
            }
        }
    });
}

fn create(root: &Path, args: CreateArgs) -> anyhow::Result<i32> {
    let rt = Runtime::open(root)?;
    let opts = args.options(false)?;
    let cwd = std::env::current_dir().context("current directory")?;
    let c = rt.create(&opts, &cwd, &host_env)?;
    if let Some(n) = runtime::userns::fallback_notice(root) {
        eprintln!("strata: note: {n}");
    }
    println!("{}", c.id);
    Ok(0)
}

/// Runs `f` on each reference, printing the reference on success and the error otherwise;
/// fails (125) if any failed.
fn each(refs: &[String], mut f: impl FnMut(&str) -> anyhow::Result<()>) -> anyhow::Result<i32> {
    if let [one] = refs {
        f(one)?;
        println!("{one}");
        return Ok(0);
    }
    let mut failed = 0;
    for r in refs {
        match f(r) {
            Ok(()) => println!("{r}"),
            Err(e) => {
                eprintln!("strata: {e:#}");
                failed += 1;
            }
        }
    }
    if failed > 0 {
        bail!("{failed} of {} failed", refs.len());
    }
    Ok(0)
}

fn start(root: &Path, args: StartArgs) -> anyhow::Result<i32> {
    let rt = Runtime::open(root)?;
    if args.attach {
        if args.containers.len() != 1 {
            bail!("start -a takes exactly one container");
        }
        let c = rt.get(&args.containers[0])?;
        return match rt.start(&c.id, StartIo { attach: true }) {
            Ok(Some(s)) => attached(s, c.meta.tty && c.meta.open_stdin),
            Ok(None) => Ok(0),
            Err(e) => exec_failure(e),
        };
    }
    let mut code = 0;
    let r = each(&args.containers, |r| {
        match rt.start(r, StartIo::default()) {
            Ok(_) => Ok(()),
            Err(RuntimeError::Exec { code: c, msg }) => {
                code = c;
                Err(anyhow::anyhow!(msg))
            }
            Err(e) => Err(e.into()),
        }
    });
    if code != 0 && args.containers.len() == 1 {
        // The same message `run` prints, with the command's exit code (126, 127, 125).
        if let Err(e) = &r {
            eprintln!("strata: {e:#}");
        }
        return Ok(code);
    }
    r
}

fn stop(root: &Path, args: StopArgs) -> anyhow::Result<i32> {
    let rt = Runtime::open(root)?;
    each(&args.containers, |r| stop_one(&rt, r, args.time))
}

fn restart(root: &Path, args: StopArgs) -> anyhow::Result<i32> {
    let rt = Runtime::open(root)?;
    each(&args.containers, |r| {
        stop_one(&rt, r, args.time)?;
        rt.start(r, StartIo::default())?;
        Ok(())
    })
}

/// `stop` of one container. On a terminal, a stop that takes a while says what it waits for
/// and how long it still will (one line, rewritten each second, erased at the end).
fn stop_one(rt: &Runtime, reference: &str, time: Option<u64>) -> anyhow::Result<()> {
    use std::io::IsTerminal;
    let c = rt.get(reference)?;
    if c.state.status != Status::Running || !std::io::stderr().is_terminal() {
        rt.stop(reference, time)?;
        return Ok(());
    }
    let secs = time.or(c.meta.stop_timeout).unwrap_or(10);
    let signal = c
        .meta
        .stop_signal
        .clone()
        .unwrap_or_else(|| "SIGTERM".into());
    let name = c.meta.name.clone();
    let (done, ticks) = std::sync::mpsc::channel::<()>();
    let progress = std::thread::spawn(move || {
        let start = std::time::Instant::now();
        let mut shown = false;
        // Quiet for the first half second: most containers stop at once.
        let mut next = std::time::Duration::from_millis(500);
        loop {
            let wait = next.saturating_sub(start.elapsed());
            if ticks.recv_timeout(wait) != Err(std::sync::mpsc::RecvTimeoutError::Timeout) {
                break;
            }
            let left = secs.saturating_sub(start.elapsed().as_secs());
            let line = if left > 0 {
                format!(
                    "Waiting up to {secs} s for {name} to stop after {signal}: SIGKILL in {left} s"
                )
            } else {
                format!("{name} did not stop within {secs} s: SIGKILL sent, waiting for it to end")
            };
            eprint!("\r\x1b[K{line}");
            shown = true;
            next += std::time::Duration::from_secs(1);
        }
        if shown {
            eprint!("\r\x1b[K");
        }
    });
    let result = rt.stop(reference, time);
    let _ = done.send(());
    let _ = progress.join();
    result?;
    Ok(())
}

fn rm(root: &Path, args: RmArgs) -> anyhow::Result<i32> {
    let rt = Runtime::open(root)?;
    each(&args.containers, |r| {
        rt.remove(r, args.force, args.volumes)?;
        Ok(())
    })
}

fn kill(root: &Path, args: KillArgs) -> anyhow::Result<i32> {
    let rt = Runtime::open(root)?;
    let sig = spec::parse_signal(&args.signal)?;
    each(&args.containers, |r| {
        rt.kill(r, sig)?;
        Ok(())
    })
}

fn wait(root: &Path, refs: &[String]) -> anyhow::Result<i32> {
    let rt = Runtime::open(root)?;
    for r in refs {
        println!("{}", rt.wait(r)?);
    }
    Ok(0)
}

fn status_text(c: &Container) -> String {
    match c.state.status {
        Status::Created => "Created".into(),
        Status::Running => format!("Up {}", time::age(&c.state.started_at)),
        Status::Exited => format!(
            "Exited ({}) {} ago",
            c.state.exit_code,
            time::age(&c.state.finished_at)
        ),
    }
}

fn command_text(c: &Container, trunc: bool) -> String {
    let cmd = c.spec.process.args.join(" ");
    let cmd = if trunc && cmd.chars().count() > 20 {
        format!("{}…", cmd.chars().take(19).collect::<String>())
    } else {
        cmd
    };
    format!("\"{cmd}\"")
}

fn ps(root: &Path, args: PsArgs) -> anyhow::Result<i32> {
    let rt = Runtime::open(root)?;
    let mut list: Vec<Container> = rt
        .list()?
        .into_iter()
        .filter(|c| args.all || c.state.status == Status::Running)
        .collect();
    list.reverse(); // newest first, as Docker
    if args.quiet {
        for c in &list {
            println!("{}", if args.no_trunc { &c.id } else { c.short_id() });
        }
        return Ok(0);
    }
    if args.json {
        let v: Vec<Value> = list
            .iter()
            .map(|c| {
                json!({
                    "Id": c.id,
                    "Names": c.meta.name,
                    "Image": c.meta.image,
                    "ImageID": c.meta.image_id,
                    "Command": c.spec.process.args.join(" "),
                    "Created": c.meta.created,
                    "State": c.state.status.as_str(),
                    "Status": status_text(c),
                    "ExitCode": c.state.exit_code,
                    "Pid": c.state.pid,
                    "Mounts": c.meta.volumes.iter().map(|v| v.destination.clone()).collect::<Vec<_>>(),
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(0);
    }
    let mut rows = vec![[
        "CONTAINER ID".to_string(),
        "IMAGE".into(),
        "COMMAND".into(),
        "CREATED".into(),
        "STATUS".into(),
        "PORTS".into(),
        "NAMES".into(),
    ]];
    for c in &list {
        rows.push([
            if args.no_trunc {
                c.id.clone()
            } else {
                c.short_id().to_string()
            },
            c.meta.image.clone(),
            command_text(c, !args.no_trunc),
            format!("{} ago", time::age(&c.meta.created)),
            status_text(c),
            super::network::ports_text(c),
            c.meta.name.clone(),
        ]);
    }
    print_table(&rows);
    Ok(0)
}

fn print_table<const N: usize>(rows: &[[String; N]]) {
    let mut widths = [0usize; N];
    for r in rows {
        for (i, cell) in r.iter().enumerate() {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    let mut out = std::io::stdout().lock();
    for r in rows {
        let mut line = String::new();
        for (i, cell) in r.iter().enumerate() {
            if i + 1 == N {
                line.push_str(cell);
            } else {
                line.push_str(cell);
                line.push_str(&" ".repeat(widths[i] - cell.chars().count() + 3));
            }
        }
        let _ = writeln!(out, "{}", line.trim_end());
    }
}

fn logs(root: &Path, args: LogsArgs) -> anyhow::Result<i32> {
    let rt = Runtime::open(root)?;
    let c = rt.get(&args.container)?;
    let path = c.dir.join(store::LOG_FILE);
    let dir = c.dir.clone();
    let running = move || store::shim_alive(&dir);
    let mut stdout = std::io::stdout();
    let mut stderr = std::io::stderr();
    let mut emit = |e: &LogEntry| -> std::io::Result<()> {
        let w: &mut dyn Write = if e.stream == "stderr" {
            &mut stderr
        } else {
            &mut stdout
        };
        if args.timestamps {
            write!(w, "{} ", e.time)?;
        }
        w.write_all(e.log.as_bytes())?;
        w.flush()
    };
    match runtime::logs::read(&path, args.tail, args.follow, &running, &mut emit) {
        Ok(()) => Ok(0),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(0),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

fn exec(root: &Path, args: ExecArgs) -> anyhow::Result<i32> {
    let rt = Runtime::open(root)?;
    let c = rt.get(&args.container)?;
    let _raw = (args.tty && args.interactive)
        .then(runtime::tty::RawMode::stdin)
        .flatten();
    let opts = ExecOptions {
        command: args.command.clone(),
        env: args
            .env
            .iter()
            .filter_map(|e| {
                if e.contains('=') {
                    Some(e.clone())
                } else {
                    std::env::var(e).ok().map(|v| format!("{e}={v}"))
                }
            })
            .collect(),
        workdir: args.workdir.clone(),
        user: args.user.clone(),
        interactive: args.interactive,
        tty: args.tty,
    };
    match runtime::exec::exec(&c, &opts, &mut proxy_signals) {
        Ok(code) => Ok(code),
        Err(e) => exec_failure(e),
    }
}

/// `inspect`: containers by name or ID, images otherwise (Docker's order).
pub fn inspect(root: &Path, refs: &[String]) -> anyhow::Result<i32> {
    let rt = Runtime::open(root)?;
    let mut out = Vec::new();
    for r in refs {
        match rt.get(r) {
            Ok(c) => out.push(container_json(&c)),
            Err(RuntimeError::NoSuchContainer(_)) => match super::images::inspect_json(root, r) {
                Ok(v) => out.push(v),
                Err(e)
                    if matches!(
                        e.downcast_ref::<crate::image::ImageError>(),
                        Some(crate::image::ImageError::NotFound(_))
                    ) =>
                {
                    bail!("no such container or image: {r}")
                }
                Err(e) => return Err(e.context(format!("no such container: {r}"))),
            },
            Err(e) => return Err(e.into()),
        }
    }
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(0)
}

fn container_json(c: &Container) -> Value {
    let p = &c.spec.process;
    let res = &c.spec.linux.resources;
    json!({
        "Id": c.id,
        "Created": c.meta.created,
        "Path": p.args.first(),
        "Args": p.args.get(1..).unwrap_or_default(),
        "State": {
            "Status": c.state.status.as_str(),
            "Running": c.state.status == Status::Running,
            "Paused": false,
            "Restarting": false,
            "OOMKilled": false,
            "Dead": false,
            "Pid": c.state.pid,
            "ExitCode": c.state.exit_code,
            "Error": c.state.error,
            "StartedAt": c.state.started_at,
            "FinishedAt": c.state.finished_at,
        },
        "Image": c.meta.image_id,
        "ImageName": c.meta.image,
        "Name": format!("/{}", c.meta.name),
        "LogPath": c.dir.join(store::LOG_FILE),
        "StateDir": c.dir,
        "ShimPid": c.state.shim_pid,
        "Cgroups": c.state.cgroups,
        "HostConfig": {
            "AutoRemove": c.meta.auto_remove,
            "ReadonlyRootfs": c.spec.root.readonly,
            "StorageOpt": { "io": if c.meta.rootfs_passthrough { "passthrough" } else { "no-open" } },
            "Memory": res.memory.map(|m| m.limit).unwrap_or(0),
            "NanoCpus": res.cpu.map(|c| c.quota * 1_000_000_000 / c.period.max(1) as i64).unwrap_or(0),
            "PidsLimit": res.pids.map(|p| p.limit),
            "Binds": c.meta.volumes.iter().filter(|v| v.kind == "bind").map(|v| {
                format!("{}:{}{}", v.source.display(), v.destination, if v.read_only { ":ro" } else { "" })
            }).collect::<Vec<_>>(),
            "Tmpfs": c.spec.mounts.iter().filter(|m| m.kind == "tmpfs" && !m.destination.starts_with("/dev")).map(|m| m.destination.clone()).collect::<Vec<_>>(),
        },
        "Mounts": c.meta.volumes.iter().map(|v| json!({
            "Type": v.kind,
            "Name": v.name,
            "Source": v.source,
            "Destination": v.destination,
            "RW": !v.read_only,
            "Propagation": "rprivate",
        })).collect::<Vec<_>>(),
        "Config": {
            "Hostname": c.spec.hostname,
            "User": p.user.username.clone().unwrap_or_default(),
            "Env": p.env,
            "Cmd": p.args,
            "Image": c.meta.image,
            "WorkingDir": p.cwd,
            "OpenStdin": c.meta.open_stdin,
            "Tty": c.meta.tty,
            "StopSignal": c.meta.stop_signal,
            "ExposedPorts": c.meta.exposed_ports.iter().map(|p| (p.clone(), json!({}))).collect::<serde_json::Map<_, _>>(),
        },
        "NetworkSettings": super::network::settings_json(c),
        "Spec": c.spec,
    })
}

fn volume(root: &Path, cmd: VolumeCommand) -> anyhow::Result<i32> {
    let rt = Runtime::open(root)?;
    let volumes = rt.volumes()?;
    match cmd {
        VolumeCommand::Create { name } => {
            let v = {
                let _l = volumes.lock()?;
                volumes.create(name.as_deref(), false)?
            };
            println!("{}", v.name);
        }
        VolumeCommand::Ls { quiet, json } => {
            let list = volumes.list()?;
            if json {
                println!("{}", serde_json::to_string_pretty(&list)?);
            } else if quiet {
                for v in &list {
                    println!("{}", v.name);
                }
            } else {
                let mut rows = vec![["DRIVER".to_string(), "VOLUME NAME".into()]];
                rows.extend(list.iter().map(|v| [v.driver.clone(), v.name.clone()]));
                print_table(&rows);
            }
        }
        VolumeCommand::Inspect { names } => {
            let mut out = Vec::new();
            for n in &names {
                let v = volumes.get(n)?;
                let mut j = serde_json::to_value(&v)?;
                if let Some(o) = j.as_object_mut() {
                    o.insert("UsedBy".into(), json!(rt.volume_usage(n)?));
                }
                out.push(j);
            }
            println!("{}", serde_json::to_string_pretty(&out)?);
        }
        VolumeCommand::Rm { names } => {
            return each(&names, |n| {
                rt.remove_volume(n)?;
                Ok(())
            });
        }
    }
    Ok(0)
}

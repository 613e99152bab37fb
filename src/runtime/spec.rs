//! A container's `config.json`, shaped like the OCI runtime spec (process, root, hostname,
//! mounts, linux namespaces, devices, resources, masked and read-only paths), and how `run` /
//! `create` build it from an image's config and the command-line options.
//!
//! The shim executes exactly this file, so a runc-style `create/start` on a bundle is a thin
//! layer over it later.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::RuntimeError;
use super::seccomp::{self, Seccomp};
use crate::image::ImageConfig;

pub const OCI_VERSION: &str = "1.2.0";

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Spec {
    pub oci_version: String,
    pub process: Process,
    pub root: Root,
    pub hostname: String,
    pub mounts: Vec<Mount>,
    pub linux: Linux,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Process {
    pub terminal: bool,
    pub user: User,
    pub args: Vec<String>,
    pub env: Vec<String>,
    pub cwd: String,
    pub capabilities: Capabilities,
    pub no_new_privileges: bool,
}

/// Who the process runs as. `username` (an OCI field that Linux runtimes ignore) carries a
/// `name[:group]` that the container's own `/etc/passwd` and `/etc/group` resolve at start;
/// it wins over `uid`/`gid` when set.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct User {
    pub uid: u32,
    pub gid: u32,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub additional_gids: Vec<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Default)]
pub struct Capabilities {
    pub bounding: Vec<String>,
    pub effective: Vec<String>,
    pub permitted: Vec<String>,
    pub inheritable: Vec<String>,
    pub ambient: Vec<String>,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct Root {
    pub path: String,
    pub readonly: bool,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct Mount {
    pub destination: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub source: String,
    pub options: Vec<String>,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Linux {
    pub namespaces: Vec<Namespace>,
    pub devices: Vec<Device>,
    pub resources: Resources,
    pub masked_paths: Vec<String>,
    pub readonly_paths: Vec<String>,
    pub rootfs_propagation: String,
    /// The seccomp filter, resolved for this container; `None`: unconfined.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seccomp: Option<Seccomp>,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct Namespace {
    #[serde(rename = "type")]
    pub kind: String,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Device {
    pub path: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub major: u32,
    pub minor: u32,
    pub file_mode: u32,
    pub uid: u32,
    pub gid: u32,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Default)]
pub struct Resources {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<MemoryLimit>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<CpuLimit>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pids: Option<PidsLimit>,
}

impl Resources {
    pub fn is_empty(&self) -> bool {
        self.memory.is_none() && self.cpu.is_none() && self.pids.is_none()
    }
}

#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq)]
pub struct MemoryLimit {
    pub limit: i64,
}

#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq)]
pub struct CpuLimit {
    pub quota: i64,
    pub period: u64,
}

#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq)]
pub struct PidsLimit {
    pub limit: i64,
}

/// Docker's default capability set; every other capability is dropped.
pub const DEFAULT_CAPS: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

/// Every capability name with its number (Linux 5.9+).
pub const ALL_CAPS: &[(&str, u32)] = &[
    ("CAP_CHOWN", 0),
    ("CAP_DAC_OVERRIDE", 1),
    ("CAP_DAC_READ_SEARCH", 2),
    ("CAP_FOWNER", 3),
    ("CAP_FSETID", 4),
    ("CAP_KILL", 5),
    ("CAP_SETGID", 6),
    ("CAP_SETUID", 7),
    ("CAP_SETPCAP", 8),
    ("CAP_LINUX_IMMUTABLE", 9),
    ("CAP_NET_BIND_SERVICE", 10),
    ("CAP_NET_BROADCAST", 11),
    ("CAP_NET_ADMIN", 12),
    ("CAP_NET_RAW", 13),
    ("CAP_IPC_LOCK", 14),
    ("CAP_IPC_OWNER", 15),
    ("CAP_SYS_MODULE", 16),
    ("CAP_SYS_RAWIO", 17),
    ("CAP_SYS_CHROOT", 18),
    ("CAP_SYS_PTRACE", 19),
    ("CAP_SYS_PACCT", 20),
    ("CAP_SYS_ADMIN", 21),
    ("CAP_SYS_BOOT", 22),
    ("CAP_SYS_NICE", 23),
    ("CAP_SYS_RESOURCE", 24),
    ("CAP_SYS_TIME", 25),
    ("CAP_SYS_TTY_CONFIG", 26),
    ("CAP_MKNOD", 27),
    ("CAP_LEASE", 28),
    ("CAP_AUDIT_WRITE", 29),
    ("CAP_AUDIT_CONTROL", 30),
    ("CAP_SETFCAP", 31),
    ("CAP_MAC_OVERRIDE", 32),
    ("CAP_MAC_ADMIN", 33),
    ("CAP_SYSLOG", 34),
    ("CAP_WAKE_ALARM", 35),
    ("CAP_BLOCK_SUSPEND", 36),
    ("CAP_AUDIT_READ", 37),
    ("CAP_PERFMON", 38),
    ("CAP_BPF", 39),
    ("CAP_CHECKPOINT_RESTORE", 40),
];

/// The bit mask of capability names (unknown names are ignored).
pub fn cap_mask(names: &[String]) -> u64 {
    names
        .iter()
        .filter_map(|n| ALL_CAPS.iter().find(|(c, _)| c == n))
        .fold(0, |m, (_, bit)| m | (1u64 << bit))
}

/// runc's and Docker's masked paths: hidden behind `/dev/null` (files) or an empty read-only
/// tmpfs (directories).
pub const MASKED_PATHS: &[&str] = &[
    "/proc/asound",
    "/proc/acpi",
    "/proc/interrupts",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];

pub const READONLY_PATHS: &[&str] = &[
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// One `-v` volume of a container, as `create` resolved it.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct VolumeMount {
    /// `bind` (a host path) or `volume` (named or anonymous, under the state root).
    #[serde(rename = "type")]
    pub kind: String,
    /// The volume's name (volumes only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Anonymous volumes are deleted by `rm -v` and `--rm`.
    #[serde(default)]
    pub anonymous: bool,
    /// The host directory that is bind-mounted.
    pub source: PathBuf,
    pub destination: String,
    pub read_only: bool,
}

/// What the user asked for in `run`/`create`.
#[derive(Debug, Clone, Default)]
pub struct CreateOptions {
    pub image: String,
    pub name: Option<String>,
    /// Command and arguments after the image (replace the image's Cmd).
    pub command: Vec<String>,
    /// `--entrypoint` (replaces the image's Entrypoint and drops its Cmd). `Some("")` clears it.
    pub entrypoint: Option<String>,
    /// `-e K=V` or `-e K` (taken from `host_env`), after `--env-file` entries.
    pub env: Vec<String>,
    pub env_files: Vec<PathBuf>,
    pub workdir: Option<String>,
    pub user: Option<String>,
    pub hostname: Option<String>,
    pub volumes: Vec<String>,
    pub tmpfs: Vec<String>,
    pub read_only: bool,
    pub interactive: bool,
    pub tty: bool,
    pub memory: Option<i64>,
    pub cpus: Option<f64>,
    pub pids_limit: Option<i64>,
    pub auto_remove: bool,
    pub stop_signal: Option<String>,
    pub stop_timeout: Option<u64>,
    /// `--security-opt` (today: `seccomp=unconfined|default|FILE`).
    pub security_opt: Vec<String>,
    /// `--network`, `-p`, `-P`, `--network-alias`.
    pub net: crate::net::NetOptions,
}

fn invalid(what: &'static str, value: &str, why: impl Into<String>) -> RuntimeError {
    RuntimeError::InvalidArg {
        what,
        value: value.to_string(),
        why: why.into(),
    }
}

/// The process arguments: Docker's Entrypoint/Cmd rules.
pub fn command_line(
    image: &ImageConfig,
    opts: &CreateOptions,
) -> Result<Vec<String>, RuntimeError> {
    let mut args: Vec<String> = match &opts.entrypoint {
        Some(e) if e.is_empty() => vec![],
        Some(e) => vec![e.clone()],
        None => image.config.entrypoint.clone().unwrap_or_default(),
    };
    if !opts.command.is_empty() {
        args.extend(opts.command.iter().cloned());
    } else if opts.entrypoint.is_none() {
        args.extend(image.config.cmd.clone().unwrap_or_default());
    }
    if args.is_empty() {
        return Err(RuntimeError::NoCommand);
    }
    Ok(args)
}

/// Parses an env file: `KEY=VALUE` lines, `KEY` alone takes the host's value (dropped when
/// unset), blank lines and `#` comments are skipped.
pub fn parse_env_file(text: &str, host: &dyn Fn(&str) -> Option<String>) -> Vec<String> {
    text.lines()
        .map(|l| l.trim_start())
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| expand_env(l, host))
        .collect()
}

fn expand_env(entry: &str, host: &dyn Fn(&str) -> Option<String>) -> Option<String> {
    if entry.contains('=') {
        Some(entry.to_string())
    } else {
        host(entry).map(|v| format!("{entry}={v}"))
    }
}

/// Merges `KEY=VALUE` lists: later keys replace earlier ones in place.
pub fn merge_env(base: &[String], extra: &[String]) -> Vec<String> {
    let mut out: Vec<String> = base.to_vec();
    for e in extra {
        let key = e.split('=').next().unwrap_or(e);
        match out
            .iter_mut()
            .find(|o| o.split('=').next().unwrap_or(o) == key)
        {
            Some(slot) => *slot = e.clone(),
            None => out.push(e.clone()),
        }
    }
    out
}

/// A parsed `-v` argument before volumes are created.
#[derive(Debug, Clone, PartialEq)]
pub enum VolumeArg {
    Bind {
        host: PathBuf,
        dest: String,
        read_only: bool,
    },
    Named {
        name: String,
        dest: String,
        read_only: bool,
    },
    Anonymous {
        dest: String,
    },
}

impl VolumeArg {
    pub fn dest(&self) -> &str {
        match self {
            VolumeArg::Bind { dest, .. }
            | VolumeArg::Named { dest, .. }
            | VolumeArg::Anonymous { dest } => dest,
        }
    }
}

/// Parses `-v /host:/ctr[:ro|rw]`, `-v name:/ctr[:ro|rw]` or `-v /ctr`. Relative host paths
/// (`./x`, `../x`) are made absolute against `cwd`, as the Docker CLI does.
pub fn parse_volume(arg: &str, cwd: &Path) -> Result<VolumeArg, RuntimeError> {
    let parts: Vec<&str> = arg.split(':').collect();
    let bad = |why: &str| invalid("volume", arg, why);
    let dest_ok = |d: &str| -> Result<String, RuntimeError> {
        if !d.starts_with('/') {
            return Err(bad("the container path must be absolute"));
        }
        let clean = clean_path(d);
        if clean == "/" {
            return Err(bad("cannot mount a volume over the container's root"));
        }
        Ok(clean)
    };
    let (src, dest, mode) = match parts.as_slice() {
        [d] => return Ok(VolumeArg::Anonymous { dest: dest_ok(d)? }),
        [s, d] => (*s, *d, ""),
        [s, d, m] => (*s, *d, *m),
        _ => return Err(bad("expected SOURCE:DEST[:ro|rw] or DEST")),
    };
    let mut read_only = false;
    for opt in mode.split(',').filter(|o| !o.is_empty()) {
        match opt {
            "ro" => read_only = true,
            "rw" => read_only = false,
            "z" | "Z" | "rprivate" | "private" => {}
            o => return Err(bad(&format!("unknown option {o:?} (use ro or rw)"))),
        }
    }
    let dest = dest_ok(dest)?;
    if src.is_empty() {
        return Err(bad("empty source"));
    }
    if src.starts_with('/') || src.starts_with("./") || src.starts_with("../") || src == "." {
        let host = if src.starts_with('/') {
            PathBuf::from(src)
        } else {
            cwd.join(src)
        };
        return Ok(VolumeArg::Bind {
            host: PathBuf::from(clean_path(&host.to_string_lossy())),
            dest,
            read_only,
        });
    }
    if !super::names::valid_name(src) {
        return Err(bad(
            "a volume name must match [a-zA-Z0-9][a-zA-Z0-9_.-]+ (use an absolute path for a host directory)",
        ));
    }
    Ok(VolumeArg::Named {
        name: src.to_string(),
        dest,
        read_only,
    })
}

/// `--tmpfs /path[:options]`: the path and the mount options (Docker's defaults
/// `noexec,nosuid,nodev` unless given; `nodev` always).
pub fn parse_tmpfs(arg: &str) -> Result<(String, Vec<String>), RuntimeError> {
    let (path, opts) = match arg.split_once(':') {
        Some((p, o)) => (p, o),
        None => (arg, ""),
    };
    if !path.starts_with('/') || clean_path(path) == "/" {
        return Err(invalid("tmpfs", arg, "the path must be absolute and not /"));
    }
    let mut options: Vec<String> = vec!["nosuid".into(), "nodev".into(), "noexec".into()];
    for o in opts.split(',').filter(|o| !o.is_empty()) {
        match o {
            "exec" => options.retain(|x| x != "noexec"),
            "suid" => options.retain(|x| x != "nosuid"),
            // A tmpfs with usable device nodes would let a container (it has CAP_MKNOD)
            // open the host's disks.
            "dev" => {
                return Err(invalid(
                    "tmpfs",
                    arg,
                    "option dev is not allowed: device nodes open only in the container's /dev",
                ));
            }
            o if o.starts_with("size=") || o.starts_with("mode=") || o == "ro" || o == "rw" => {
                options.push(o.to_string())
            }
            o if ["noexec", "nosuid", "nodev"].contains(&o) => {}
            o => {
                return Err(invalid(
                    "tmpfs",
                    arg,
                    format!("unsupported option {o:?} (size=, mode=, ro, rw, exec, suid)"),
                ));
            }
        }
    }
    Ok((clean_path(path), options))
}

/// Parses Docker's memory sizes: `512m`, `1g`, `1048576`, `64k`, `1.5g`.
pub fn parse_bytes(s: &str) -> Result<i64, RuntimeError> {
    let t = s.trim().to_ascii_lowercase();
    let t = t.strip_suffix('b').unwrap_or(&t);
    let (num, mult) = match t.chars().last() {
        Some('k') => (&t[..t.len() - 1], 1i64 << 10),
        Some('m') => (&t[..t.len() - 1], 1 << 20),
        Some('g') => (&t[..t.len() - 1], 1 << 30),
        Some('t') => (&t[..t.len() - 1], 1 << 40),
        _ => (t, 1),
    };
    let v: f64 = num.parse().map_err(|_| {
        invalid(
            "size",
            s,
            "expected a number with an optional k, m, g suffix",
        )
    })?;
    if !(v.is_finite() && v > 0.0) {
        return Err(invalid("size", s, "must be positive"));
    }
    Ok((v * mult as f64) as i64)
}

/// Cleans an absolute path lexically: no `.`, no `..`, no double or trailing slashes.
pub fn clean_path(p: &str) -> String {
    let mut out: Vec<&str> = Vec::new();
    for c in p.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            c => out.push(c),
        }
    }
    format!("/{}", out.join("/"))
}

/// Signal names (`SIGTERM`, `TERM`) and numbers to a number.
pub fn parse_signal(s: &str) -> Result<i32, RuntimeError> {
    let t = s.trim();
    if let Ok(n) = t.parse::<i32>() {
        if (1..=64).contains(&n) {
            return Ok(n);
        }
        return Err(invalid("signal", s, "out of range"));
    }
    let upper = t.to_ascii_uppercase();
    let name = upper.strip_prefix("SIG").unwrap_or(&upper);
    const NAMES: &[(&str, i32)] = &[
        ("HUP", libc::SIGHUP),
        ("INT", libc::SIGINT),
        ("QUIT", libc::SIGQUIT),
        ("ILL", libc::SIGILL),
        ("TRAP", libc::SIGTRAP),
        ("ABRT", libc::SIGABRT),
        ("IOT", libc::SIGIOT),
        ("BUS", libc::SIGBUS),
        ("FPE", libc::SIGFPE),
        ("KILL", libc::SIGKILL),
        ("USR1", libc::SIGUSR1),
        ("SEGV", libc::SIGSEGV),
        ("USR2", libc::SIGUSR2),
        ("PIPE", libc::SIGPIPE),
        ("ALRM", libc::SIGALRM),
        ("TERM", libc::SIGTERM),
        ("STKFLT", libc::SIGSTKFLT),
        ("CHLD", libc::SIGCHLD),
        ("CONT", libc::SIGCONT),
        ("STOP", libc::SIGSTOP),
        ("TSTP", libc::SIGTSTP),
        ("TTIN", libc::SIGTTIN),
        ("TTOU", libc::SIGTTOU),
        ("URG", libc::SIGURG),
        ("XCPU", libc::SIGXCPU),
        ("XFSZ", libc::SIGXFSZ),
        ("VTALRM", libc::SIGVTALRM),
        ("PROF", libc::SIGPROF),
        ("WINCH", libc::SIGWINCH),
        ("IO", libc::SIGIO),
        ("PWR", libc::SIGPWR),
        ("SYS", libc::SIGSYS),
    ];
    if let Some((_, n)) = NAMES.iter().find(|(k, _)| *k == name) {
        return Ok(*n);
    }
    if let Some(off) = name.strip_prefix("RTMIN+")
        && let Ok(o) = off.parse::<i32>()
        && (0..=30).contains(&o)
    {
        return Ok(34 + o);
    }
    Err(invalid("signal", s, "unknown signal name"))
}

/// Splits `-u` into user and optional group, both as written.
pub fn split_user(u: &str) -> (&str, Option<&str>) {
    match u.split_once(':') {
        Some((a, b)) => (a, Some(b)),
        None => (u, None),
    }
}

/// The `User` of the spec for `-u` / the image's `User` (empty means root).
pub fn user_field(u: Option<&str>) -> Result<User, RuntimeError> {
    let Some(u) = u.filter(|u| !u.is_empty()) else {
        return Ok(User::default());
    };
    let (name, group) = split_user(u);
    if name.is_empty() || group.is_some_and(|g| g.is_empty()) {
        return Err(invalid("user", u, "expected user[:group] or uid[:gid]"));
    }
    // Numbers too are resolved at start: a uid that /etc/passwd knows gets its primary
    // group, supplementary groups and HOME from there.
    let numeric = |s: &str| s.parse::<u32>().ok();
    Ok(User {
        uid: numeric(name).unwrap_or(0),
        gid: group.and_then(numeric).unwrap_or(0),
        additional_gids: vec![],
        username: Some(u.to_string()),
    })
}

/// `/etc/resolv.conf` from the host's, without loopback name servers (unreachable from the
/// container's own network namespace), as Docker does.
pub fn resolv_conf(host: &str) -> String {
    let mut out = String::new();
    let mut servers = 0;
    for line in host.lines() {
        let t = line.trim();
        if let Some(ns) = t.strip_prefix("nameserver") {
            let ns = ns.trim();
            if ns.starts_with("127.") || ns == "::1" {
                continue;
            }
            servers += 1;
        }
        out.push_str(line);
        out.push('\n');
    }
    if servers == 0 {
        out.push_str("nameserver 8.8.8.8\nnameserver 8.8.4.4\n");
    }
    out
}

/// Everything `build` needs besides the options.
pub struct BuildInput<'a> {
    pub image: &'a ImageConfig,
    pub id: &'a str,
    pub container_dir: &'a Path,
    pub volumes: &'a [VolumeMount],
    pub env_from_files: Vec<String>,
    pub host_env: &'a dyn Fn(&str) -> Option<String>,
}

/// Builds the spec of a new container.
pub fn build(opts: &CreateOptions, input: BuildInput<'_>) -> Result<Spec, RuntimeError> {
    let image = input.image;
    let args = command_line(image, opts)?;
    let hostname = match &opts.hostname {
        Some(h) => {
            if h.is_empty() || h.len() > 63 || h.contains('/') || h.contains(char::is_whitespace) {
                return Err(invalid(
                    "hostname",
                    h,
                    "1 to 63 characters, no '/' or spaces",
                ));
            }
            h.clone()
        }
        // As Docker: a container on the host's network takes the host's name.
        None if opts.net.network.as_deref() == Some("host") => rustix::system::uname()
            .nodename()
            .to_string_lossy()
            .into_owned(),
        None => super::names::short(input.id).to_string(),
    };
    let mut env = image.config.env.clone();
    if !env.iter().any(|e| e.starts_with("PATH=")) {
        env.insert(0, format!("PATH={DEFAULT_PATH}"));
    }
    env = merge_env(&env, &[format!("HOSTNAME={hostname}")]);
    if opts.tty {
        env = merge_env(&env, &["TERM=xterm".to_string()]);
    }
    env = merge_env(&env, &input.env_from_files);
    let cli_env: Vec<String> = opts
        .env
        .iter()
        .filter_map(|e| expand_env(e, input.host_env))
        .collect();
    for e in &cli_env {
        if e.starts_with('=') {
            return Err(invalid("environment variable", e, "empty name"));
        }
    }
    env = merge_env(&env, &cli_env);

    let cwd = match opts
        .workdir
        .as_deref()
        .or(image.config.working_dir.as_deref())
    {
        None | Some("") => "/".to_string(),
        Some(w) if w.starts_with('/') => clean_path(w),
        Some(w) => {
            return Err(invalid("working directory", w, "must be an absolute path"));
        }
    };
    let user = user_field(opts.user.as_deref().or(image.config.user.as_deref()))?;
    let caps: Vec<String> = DEFAULT_CAPS.iter().map(|c| c.to_string()).collect();
    let seccomp = security_options(&opts.security_opt)?
        .profile()?
        .map(|p| seccomp::resolve(&p, &caps));
    let dir = input.container_dir;
    let mut mounts = vec![
        m("/proc", "proc", "proc", &["nosuid", "noexec", "nodev"]),
        m(
            "/dev",
            "tmpfs",
            "tmpfs",
            // nodev: the standard nodes are bind mounts of the host's (see init), and
            // nothing else made here opens.
            &["nosuid", "nodev", "strictatime", "mode=755", "size=65536k"],
        ),
        m(
            "/dev/pts",
            "devpts",
            "devpts",
            &[
                "nosuid",
                "noexec",
                "newinstance",
                "ptmxmode=0666",
                "mode=0620",
                "gid=5",
            ],
        ),
        m(
            "/sys",
            "sysfs",
            "sysfs",
            &["nosuid", "noexec", "nodev", "ro"],
        ),
        m(
            "/dev/mqueue",
            "mqueue",
            "mqueue",
            &["nosuid", "noexec", "nodev"],
        ),
        m(
            "/dev/shm",
            "tmpfs",
            "shm",
            &["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
        ),
    ];
    for (file, dest) in [
        ("hostname", "/etc/hostname"),
        ("hosts", "/etc/hosts"),
        ("resolv.conf", "/etc/resolv.conf"),
    ] {
        mounts.push(Mount {
            destination: dest.into(),
            kind: "bind".into(),
            source: dir.join(file).to_string_lossy().into_owned(),
            options: vec!["rbind".into(), "rprivate".into()],
        });
    }
    for v in input.volumes {
        let mut options = vec!["rbind".to_string(), "rprivate".to_string()];
        if v.read_only {
            options.push("ro".into());
        }
        mounts.push(Mount {
            destination: v.destination.clone(),
            kind: "bind".into(),
            source: v.source.to_string_lossy().into_owned(),
            options,
        });
    }
    for t in &opts.tmpfs {
        let (path, options) = parse_tmpfs(t)?;
        mounts.push(Mount {
            destination: path,
            kind: "tmpfs".into(),
            source: "tmpfs".into(),
            options,
        });
    }
    let dev = |path: &str, major, minor| Device {
        path: path.into(),
        kind: "c".into(),
        major,
        minor,
        file_mode: 0o666,
        uid: 0,
        gid: 0,
    };
    let mut resources = Resources::default();
    if let Some(mem) = opts.memory {
        if mem < 6 * 1024 * 1024 {
            return Err(invalid(
                "memory limit",
                &mem.to_string(),
                "the minimum is 6 MiB",
            ));
        }
        resources.memory = Some(MemoryLimit { limit: mem });
    }
    if let Some(cpus) = opts.cpus {
        if !(cpus.is_finite() && cpus > 0.0) {
            return Err(invalid(
                "cpus",
                &cpus.to_string(),
                "must be a positive number",
            ));
        }
        let period = 100_000u64;
        resources.cpu = Some(CpuLimit {
            quota: ((cpus * period as f64).round() as i64).max(1000),
            period,
        });
    }
    if let Some(p) = opts.pids_limit
        && p > 0
    {
        resources.pids = Some(PidsLimit { limit: p });
    }
    Ok(Spec {
        oci_version: OCI_VERSION.into(),
        process: Process {
            terminal: opts.tty,
            user,
            args,
            env,
            cwd,
            capabilities: Capabilities {
                bounding: caps.clone(),
                effective: caps.clone(),
                permitted: caps,
                inheritable: vec![],
                ambient: vec![],
            },
            no_new_privileges: true,
        },
        root: Root {
            path: "rootfs".into(),
            readonly: opts.read_only,
        },
        hostname,
        mounts,
        linux: Linux {
            namespaces: ["pid", "network", "ipc", "uts", "mount"]
                .iter()
                .map(|k| Namespace {
                    kind: k.to_string(),
                })
                .collect(),
            devices: vec![
                dev("/dev/null", 1, 3),
                dev("/dev/zero", 1, 5),
                dev("/dev/full", 1, 7),
                dev("/dev/random", 1, 8),
                dev("/dev/urandom", 1, 9),
                dev("/dev/tty", 5, 0),
            ],
            resources,
            masked_paths: MASKED_PATHS.iter().map(|p| p.to_string()).collect(),
            readonly_paths: READONLY_PATHS.iter().map(|p| p.to_string()).collect(),
            rootfs_propagation: "rslave".into(),
            seccomp,
        },
    })
}

/// `--security-opt` values: the seccomp choice (the last one wins, as Docker); anything
/// else is refused rather than silently ignored.
fn security_options(opts: &[String]) -> Result<seccomp::Choice, RuntimeError> {
    let mut choice = seccomp::Choice::Default;
    for o in opts {
        match seccomp::Choice::parse(o) {
            Some(c) => choice = c,
            None if o == "no-new-privileges" || o == "no-new-privileges:true" => {}
            None => {
                return Err(invalid(
                    "security option",
                    o,
                    "strata knows seccomp=unconfined, seccomp=PROFILE.json and \
                     no-new-privileges (always on)",
                ));
            }
        }
    }
    Ok(choice)
}

fn m(dest: &str, kind: &str, source: &str, options: &[&str]) -> Mount {
    Mount {
        destination: dest.into(),
        kind: kind.into(),
        source: source.into(),
        options: options.iter().map(|o| o.to_string()).collect(),
    }
}

/// The image's declared `Volumes` that no `-v` covers: each becomes an anonymous volume.
pub fn image_volumes(image: &ImageConfig, taken: &[String]) -> Vec<String> {
    let declared: BTreeMap<String, ()> = image
        .config
        .volumes
        .keys()
        .filter(|k| k.starts_with('/'))
        .map(|k| (clean_path(k), ()))
        .collect();
    declared
        .into_keys()
        .filter(|d| d != "/" && !taken.contains(d))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(entry: Option<Vec<&str>>, cmd: Option<Vec<&str>>) -> ImageConfig {
        let mut c: ImageConfig = serde_json::from_str(
            r#"{"architecture":"amd64","os":"linux","config":{},"rootfs":{"type":"layers","diff_ids":[]}}"#,
        )
        .unwrap();
        c.config.entrypoint = entry.map(|v| v.iter().map(|s| s.to_string()).collect());
        c.config.cmd = cmd.map(|v| v.iter().map(|s| s.to_string()).collect());
        c
    }

    fn opts(cmd: &[&str], entry: Option<&str>) -> CreateOptions {
        CreateOptions {
            command: cmd.iter().map(|s| s.to_string()).collect(),
            entrypoint: entry.map(String::from),
            ..Default::default()
        }
    }

    #[test]
    fn entrypoint_and_cmd_follow_docker() {
        let img = image(Some(vec!["/ep", "-x"]), Some(vec!["default"]));
        assert_eq!(
            command_line(&img, &opts(&[], None)).unwrap(),
            ["/ep", "-x", "default"]
        );
        assert_eq!(
            command_line(&img, &opts(&["mine"], None)).unwrap(),
            ["/ep", "-x", "mine"]
        );
        assert_eq!(
            command_line(&img, &opts(&[], Some("/other"))).unwrap(),
            ["/other"]
        );
        assert_eq!(command_line(&img, &opts(&["a"], Some(""))).unwrap(), ["a"]);
        let none = image(None, None);
        assert!(matches!(
            command_line(&none, &opts(&[], None)),
            Err(RuntimeError::NoCommand)
        ));
    }

    #[test]
    fn volumes_parse() {
        let cwd = Path::new("/work");
        assert_eq!(
            parse_volume("/srv/www:/www:ro", cwd).unwrap(),
            VolumeArg::Bind {
                host: "/srv/www".into(),
                dest: "/www".into(),
                read_only: true
            }
        );
        assert_eq!(
            parse_volume("./d:/x/", cwd).unwrap(),
            VolumeArg::Bind {
                host: "/work/d".into(),
                dest: "/x".into(),
                read_only: false
            }
        );
        assert_eq!(
            parse_volume("data:/var/lib/app", cwd).unwrap(),
            VolumeArg::Named {
                name: "data".into(),
                dest: "/var/lib/app".into(),
                read_only: false
            }
        );
        assert_eq!(
            parse_volume("/cache", cwd).unwrap(),
            VolumeArg::Anonymous {
                dest: "/cache".into()
            }
        );
        assert!(parse_volume("data:relative", cwd).is_err());
        assert!(parse_volume("/a:/", cwd).is_err());
        assert!(parse_volume("/a:/b:rx", cwd).is_err());
        assert!(parse_volume("bad/name:/b", cwd).is_err());
        assert_eq!(parse_volume("/a:/b/../c", cwd).unwrap().dest(), "/c");
    }

    #[test]
    fn env_rules() {
        let host = |k: &str| (k == "HOME_X").then(|| "v".to_string());
        assert_eq!(
            parse_env_file("# c\n\nA=1\nHOME_X\nMISSING\n B=2 3\n", &host),
            ["A=1", "HOME_X=v", "B=2 3"]
        );
        assert_eq!(
            merge_env(&["A=1".into(), "B=2".into()], &["B=3".into(), "C=4".into()]),
            ["A=1", "B=3", "C=4"]
        );
    }

    #[test]
    fn sizes_signals_tmpfs() {
        assert_eq!(parse_bytes("64m").unwrap(), 64 << 20);
        assert_eq!(parse_bytes("1g").unwrap(), 1 << 30);
        assert_eq!(parse_bytes("1048576").unwrap(), 1 << 20);
        assert!(parse_bytes("lots").is_err());
        assert_eq!(parse_signal("SIGTERM").unwrap(), 15);
        assert_eq!(parse_signal("kill").unwrap(), 9);
        assert_eq!(parse_signal("2").unwrap(), 2);
        assert!(parse_signal("SIGNOPE").is_err());
        let (p, o) = parse_tmpfs("/run:size=1m,exec").unwrap();
        assert_eq!(p, "/run");
        assert!(o.contains(&"size=1m".to_string()) && !o.contains(&"noexec".to_string()));
        assert!(parse_tmpfs("run").is_err());
    }

    #[test]
    fn resolv_conf_drops_loopback() {
        let out = resolv_conf("search x\nnameserver 127.0.0.53\n");
        assert!(out.contains("search x") && !out.contains("127.0.0.53"));
        assert!(out.contains("8.8.8.8"));
        let out = resolv_conf("nameserver 10.0.0.1\n");
        assert_eq!(out, "nameserver 10.0.0.1\n");
    }

    #[test]
    fn cap_masks() {
        let caps: Vec<String> = DEFAULT_CAPS.iter().map(|s| s.to_string()).collect();
        assert_eq!(cap_mask(&caps), 0xa80425fb);
    }
}

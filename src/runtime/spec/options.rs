//! What `run`/`create` were asked (`CreateOptions`), and the parsing of single option values:
//! sizes (`--memory`), signals (`--stop-signal`, `kill -s`), users (`-u`), `--security-opt`
//! and `--storage-opt`.
//!
//! Never does: build the spec (`build` does) or resolve names against the image's files.

use std::path::PathBuf;

use super::User;
use super::invalid;
use crate::runtime::RuntimeError;
use crate::runtime::seccomp;

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
    /// `--storage-opt` (today: `io=no-open|passthrough`, see [`rootfs_passthrough`]).
    pub storage_opt: Vec<String>,
    /// `--network`, `-p`, `-P`, `--network-alias`.
    pub net: crate::net::NetOptions,
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

/// `--security-opt` values: the seccomp choice (the last one wins, as Docker); anything
/// else is refused rather than silently ignored.
pub(super) fn security_options(opts: &[String]) -> Result<seccomp::Choice, RuntimeError> {
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

/// `--storage-opt` values: whether the rootfs (a writable mount) opens big files through
/// FUSE passthrough (`io=passthrough`, as `strata mount --rw --io passthrough`) or not
/// (`io=no-open`, the default; the last one wins); anything else is refused.
pub fn rootfs_passthrough(opts: &[String]) -> Result<bool, RuntimeError> {
    let mut on = false;
    for o in opts {
        match o.as_str() {
            "io=passthrough" => on = true,
            "io=no-open" => on = false,
            _ => {
                return Err(invalid(
                    "storage option",
                    o,
                    "strata knows io=no-open (the default) and io=passthrough",
                ));
            }
        }
    }
    Ok(on)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn storage_options() {
        let v = |s: &[&str]| s.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(!rootfs_passthrough(&[]).unwrap());
        assert!(rootfs_passthrough(&v(&["io=passthrough"])).unwrap());
        assert!(!rootfs_passthrough(&v(&["io=passthrough", "io=no-open"])).unwrap());
        let e = rootfs_passthrough(&v(&["size=10G"]))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("size=10G") && e.contains("io=passthrough"),
            "{e}"
        );
    }

    #[test]
    fn sizes_and_signals() {
        assert_eq!(parse_bytes("64m").unwrap(), 64 << 20);
        assert_eq!(parse_bytes("1g").unwrap(), 1 << 30);
        assert_eq!(parse_bytes("1048576").unwrap(), 1 << 20);
        assert!(parse_bytes("lots").is_err());
        assert_eq!(parse_signal("SIGTERM").unwrap(), 15);
        assert_eq!(parse_signal("kill").unwrap(), 9);
        assert_eq!(parse_signal("2").unwrap(), 2);
        assert!(parse_signal("SIGNOPE").is_err());
    }
}

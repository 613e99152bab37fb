//! Building a new container's spec from its image's config and the `run`/`create` options:
//! Docker's Entrypoint/Cmd rules, the environment, working directory and user, the standard
//! mounts (`/proc`, `/dev`, …, the bind-mounted `/etc` files, volumes, tmpfs), devices,
//! resource limits, masked and read-only paths, capabilities and seccomp.
//!
//! Never does: touch the filesystem or start anything; the caller writes the result.

use std::path::Path;

use super::caps::DEFAULT_CAPS;
use super::env::{expand_env, merge_env};
use super::oci::{
    Capabilities, CpuLimit, Device, Linux, MemoryLimit, Mount, Namespace, OCI_VERSION, PidsLimit,
    Process, Resources, Root, Spec,
};
use super::options::{CreateOptions, security_options, user_field};
use super::volumes::{VolumeMount, parse_tmpfs};
use super::{clean_path, invalid};
use crate::image::ImageConfig;
use crate::runtime::RuntimeError;
use crate::runtime::seccomp;

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
        None => crate::runtime::names::short(input.id).to_string(),
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

fn m(dest: &str, kind: &str, source: &str, options: &[&str]) -> Mount {
    Mount {
        destination: dest.into(),
        kind: kind.into(),
        source: source.into(),
        options: options.iter().map(|o| o.to_string()).collect(),
    }
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
}

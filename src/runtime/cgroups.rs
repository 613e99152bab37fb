//! Resource limits (`--memory`, `--cpus`, `--pids-limit`) through cgroups: for each
//! controller, cgroup v2 when the unified hierarchy has it, else the v1 hierarchy that has
//! it (hybrid hosts mount v1 controllers beside a mostly empty unified tree), else a clear
//! error. A container gets `strata/<id>` in each hierarchy it needs.
//!
//! Also the device rule (`create_devices`) on hosts with the v1 devices controller, for
//! every container.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tracing::{debug, warn};

use super::RuntimeError;
use super::spec::{Device, Resources};

#[derive(Debug, Clone, PartialEq)]
struct Hierarchy {
    mountpoint: PathBuf,
    v2: bool,
    /// v1: the controllers bound to it; v2: those listed in `cgroup.controllers`.
    controllers: Vec<String>,
}

fn unescape(s: &str) -> String {
    s.replace("\\040", " ")
        .replace("\\011", "\t")
        .replace("\\012", "\n")
        .replace("\\134", "\\")
}

fn hierarchies() -> Vec<Hierarchy> {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return vec![];
    };
    let mut out = Vec::new();
    for line in info.lines() {
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let Some(mp) = left.split(' ').nth(4) else {
            continue;
        };
        let mut r = right.split(' ');
        let fstype = r.next().unwrap_or("");
        let _source = r.next();
        let opts = r.next().unwrap_or("");
        let mountpoint = PathBuf::from(unescape(mp));
        match fstype {
            "cgroup2" => {
                let controllers = std::fs::read_to_string(mountpoint.join("cgroup.controllers"))
                    .unwrap_or_default()
                    .split_whitespace()
                    .map(String::from)
                    .collect();
                out.push(Hierarchy {
                    mountpoint,
                    v2: true,
                    controllers,
                });
            }
            "cgroup" => out.push(Hierarchy {
                mountpoint,
                v2: false,
                controllers: opts.split(',').map(String::from).collect(),
            }),
            _ => {}
        }
    }
    out
}

fn write(path: &Path, value: &str) -> Result<(), RuntimeError> {
    debug!(path = %path.display(), value, "cgroup write");
    std::fs::write(path, value)
        .map_err(|e| RuntimeError::Cgroup(format!("writing {value:?} to {}: {e}", path.display())))
}

fn controller_flag(c: &str) -> &'static str {
    match c {
        "memory" => "--memory",
        "cpu" => "--cpus",
        _ => "--pids-limit",
    }
}

/// Creates the container's cgroups with the limits of `res`; returns their directories
/// (empty when no limit is asked for).
pub fn create(id: &str, res: &Resources) -> Result<Vec<PathBuf>, RuntimeError> {
    let mut wanted: Vec<&str> = Vec::new();
    if res.memory.is_some() {
        wanted.push("memory");
    }
    if res.cpu.is_some() {
        wanted.push("cpu");
    }
    if res.pids.is_some() {
        wanted.push("pids");
    }
    if wanted.is_empty() {
        return Ok(vec![]);
    }
    if crate::paths::Mode::current() == crate::paths::Mode::Rootless {
        let flags: Vec<&str> = wanted
            .iter()
            .map(|c| match *c {
                "memory" => "--memory",
                "cpu" => "--cpus",
                _ => "--pids-limit",
            })
            .collect();
        return Err(RuntimeError::Cgroup(format!(
            "{} need root here: a container without root can only be limited in a cgroup v2 \
             subtree delegated to its user (as systemd's user@UID.service), and this host \
             delegates none; run without {}",
            flags.join(", "),
            if flags.len() == 1 { "it" } else { "them" }
        )));
    }
    let all = hierarchies();
    let mut dirs: Vec<(PathBuf, bool, Vec<&str>)> = Vec::new();
    for c in &wanted {
        let h = all
            .iter()
            .find(|h| h.v2 && h.controllers.iter().any(|x| x == c))
            .or_else(|| {
                all.iter()
                    .find(|h| !h.v2 && h.controllers.iter().any(|x| x == c))
            })
            .ok_or_else(|| {
                RuntimeError::Cgroup(format!(
                    "{} needs the {c} cgroup controller, but this host has it neither in a \
                     cgroup v2 hierarchy nor as a mounted cgroup v1 hierarchy",
                    controller_flag(c)
                ))
            })?;
        let dir = h.mountpoint.join("strata").join(id);
        match dirs.iter_mut().find(|(d, _, _)| *d == dir) {
            Some((_, _, cs)) => cs.push(c),
            None => dirs.push((dir, h.v2, vec![c])),
        }
    }
    let mut created = Vec::new();
    let result = (|| {
        for (dir, v2, controllers) in &dirs {
            let parent = dir.parent().unwrap_or(dir);
            if *v2 {
                let root = parent.parent().unwrap_or(parent);
                let enable: String = controllers
                    .iter()
                    .map(|c| format!("+{c}"))
                    .collect::<Vec<_>>()
                    .join(" ");
                std::fs::create_dir_all(parent).map_err(|e| {
                    RuntimeError::Cgroup(format!("creating {}: {e}", parent.display()))
                })?;
                write(&root.join("cgroup.subtree_control"), &enable)?;
                write(&parent.join("cgroup.subtree_control"), &enable)?;
            }
            std::fs::create_dir_all(dir)
                .map_err(|e| RuntimeError::Cgroup(format!("creating {}: {e}", dir.display())))?;
            created.push(dir.clone());
            for c in controllers {
                match (*c, *v2) {
                    ("memory", true) => {
                        if let Some(m) = res.memory {
                            write(&dir.join("memory.max"), &m.limit.to_string())?;
                            // Docker: without --memory-swap, swap may add as much again.
                            let swap = dir.join("memory.swap.max");
                            if swap.exists() {
                                write(&swap, &m.limit.to_string())?;
                            }
                        }
                    }
                    ("memory", false) => {
                        if let Some(m) = res.memory {
                            write(&dir.join("memory.limit_in_bytes"), &m.limit.to_string())?;
                        }
                    }
                    ("cpu", true) => {
                        if let Some(cpu) = res.cpu {
                            write(
                                &dir.join("cpu.max"),
                                &format!("{} {}", cpu.quota, cpu.period),
                            )?;
                        }
                    }
                    ("cpu", false) => {
                        if let Some(cpu) = res.cpu {
                            write(&dir.join("cpu.cfs_period_us"), &cpu.period.to_string())?;
                            write(&dir.join("cpu.cfs_quota_us"), &cpu.quota.to_string())?;
                        }
                    }
                    ("pids", _) => {
                        if let Some(p) = res.pids {
                            write(&dir.join("pids.max"), &p.limit.to_string())?;
                        }
                    }
                    _ => {}
                }
            }
        }
        Ok(())
    })();
    if let Err(e) = result {
        remove(&created);
        return Err(e);
    }
    Ok(created)
}

/// Docker's device rule, where the host has the cgroup v1 `devices` controller: the
/// container may make any node (`m`), but read or write only `devices` (the standard nodes),
/// the terminal nodes (`/dev/tty`, `/dev/console`, `/dev/ptmx`) and its own ptys (136:*).
/// Returns the cgroup's directory, or `None` when the host has no v1 devices hierarchy
/// (cgroup v2 only): there the `nodev` mounts the init sets up are the whole guarantee.
pub fn create_devices(id: &str, devices: &[Device]) -> Result<Option<PathBuf>, RuntimeError> {
    let Some(h) = hierarchies()
        .into_iter()
        .find(|h| !h.v2 && h.controllers.iter().any(|c| c == "devices"))
    else {
        debug!("no cgroup v1 devices hierarchy: device access rests on nodev mounts");
        return Ok(None);
    };
    let dir = h.mountpoint.join("strata").join(id);
    std::fs::create_dir_all(&dir)
        .map_err(|e| RuntimeError::Cgroup(format!("creating {}: {e}", dir.display())))?;
    let result = (|| {
        write(&dir.join("devices.deny"), "a")?;
        for rule in device_rules(devices) {
            write(&dir.join("devices.allow"), &rule)?;
        }
        Ok(())
    })();
    match result {
        Ok(()) => Ok(Some(dir)),
        Err(e) => {
            remove(std::slice::from_ref(&dir));
            Err(e)
        }
    }
}

fn device_rules(devices: &[Device]) -> Vec<String> {
    let mut rules = vec!["c *:* m".to_string(), "b *:* m".to_string()];
    rules.extend(
        devices
            .iter()
            .map(|d| format!("{} {}:{} rwm", d.kind, d.major, d.minor)),
    );
    for fixed in ["c 5:0 rwm", "c 5:1 rwm", "c 5:2 rwm", "c 136:* rwm"] {
        if !rules.iter().any(|r| r == fixed) {
            rules.push(fixed.to_string());
        }
    }
    rules
}

/// Moves process `pid` (0: the caller) into every cgroup of `dirs`.
pub fn add(dirs: &[PathBuf], pid: i32) -> Result<(), RuntimeError> {
    for d in dirs {
        write(&d.join("cgroup.procs"), &pid.to_string())?;
    }
    Ok(())
}

/// Removes the cgroups (bounded wait: the kernel lets go of exited tasks asynchronously).
pub fn remove(dirs: &[PathBuf]) {
    for d in dirs {
        for attempt in 0..200 {
            match std::fs::remove_dir(d) {
                Ok(()) => break,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => break,
                Err(e) => {
                    if attempt == 199 {
                        warn!(dir = %d.display(), error = %e, "cannot remove cgroup");
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_asked_nothing_created() {
        assert!(create("x", &Resources::default()).unwrap().is_empty());
    }

    #[test]
    fn device_rules_allow_only_the_standard_nodes() {
        let null = Device {
            path: "/dev/null".into(),
            kind: "c".into(),
            major: 1,
            minor: 3,
            file_mode: 0o666,
            uid: 0,
            gid: 0,
        };
        let rules = device_rules(&[null]);
        assert_eq!(
            rules,
            [
                "c *:* m",
                "b *:* m",
                "c 1:3 rwm",
                "c 5:0 rwm",
                "c 5:1 rwm",
                "c 5:2 rwm",
                "c 136:* rwm"
            ]
        );
        assert!(
            !rules
                .iter()
                .any(|r| r.starts_with('b') && r.ends_with("rwm"))
        );
    }

    #[test]
    fn mountinfo_escapes() {
        assert_eq!(unescape(r"/a\040b"), "/a b");
    }
}

//! The container records under `<root>/containers/`: one directory per container ID with
//! `container.json` (what `create` decided, written once), `config.json` (the OCI-shaped
//! spec), `state.json` (status, pids, times, exit code), the generated `/etc` files, `log`,
//! `shim.log`, the writable layer `rw/`, the empty mount point `rootfs/`, and two locks:
//! `lock` serialises lifecycle commands, `shim.lock` is held by the live shim for its whole
//! life (so "is the shim alive" never depends on a PID that may have been reused).
//! `<root>/containers/.names/<name>` maps names to IDs; creating it with `O_EXCL` is what
//! makes names unique.

use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::RuntimeError;
use super::spec::{Spec, VolumeMount};
use crate::digest::Digest;
use crate::sys;

pub const META_FILE: &str = "container.json";
pub const CONFIG_FILE: &str = "config.json";
pub const STATE_FILE: &str = "state.json";
pub const LOG_FILE: &str = "log";
pub const SHIM_LOG_FILE: &str = "shim.log";
/// Held by the live shim; the network's leases tell live from stale by it too.
pub const SHIM_LOCK: &str = crate::net::MEMBER_LOCK;
pub const LIFECYCLE_LOCK: &str = "lock";
pub const ROOTFS_DIR: &str = "rootfs";
pub const RW_DIR: &str = "rw";
const NAMES_DIR: &str = ".names";
/// Docker's "never" timestamp.
pub const ZERO_TIME: &str = "0001-01-01T00:00:00Z";

/// What `create` decided about a container; never changes afterwards.
#[derive(Serialize, Deserialize, Debug, Clone)]
#[serde(rename_all = "camelCase")]
pub struct ContainerMeta {
    pub id: String,
    pub name: String,
    pub created: String,
    /// The image reference as the user gave it.
    pub image: String,
    pub image_id: String,
    /// The image's layers, bottom first: the lower part of the rootfs.
    pub layers: Vec<Digest>,
    #[serde(default)]
    pub stop_signal: Option<String>,
    #[serde(default)]
    pub stop_timeout: Option<u64>,
    #[serde(default)]
    pub auto_remove: bool,
    #[serde(default)]
    pub open_stdin: bool,
    #[serde(default)]
    pub tty: bool,
    #[serde(default)]
    pub volumes: Vec<VolumeMount>,
    #[serde(default)]
    pub exposed_ports: Vec<String>,
    #[serde(default)]
    pub net: crate::net::ContainerNet,
    /// `--storage-opt io=passthrough`: the rootfs opens big files through FUSE passthrough.
    #[serde(default)]
    pub rootfs_passthrough: bool,
}

#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Created,
    Running,
    Exited,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Created => "created",
            Status::Running => "running",
            Status::Exited => "exited",
        }
    }
}

/// `state.json`; the field names are Docker's `State` in `inspect`.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "PascalCase")]
pub struct State {
    pub status: Status,
    /// The container's init as the host sees it (0 when not running).
    pub pid: i32,
    /// Its start time (field 22 of /proc/PID/stat), so a reused PID is never signalled.
    #[serde(default)]
    pub pid_start: u64,
    #[serde(default)]
    pub shim_pid: i32,
    pub exit_code: i32,
    #[serde(default)]
    pub error: String,
    pub started_at: String,
    pub finished_at: String,
    /// Cgroup directories created for the container's limits.
    #[serde(default)]
    pub cgroups: Vec<PathBuf>,
}

impl State {
    pub fn created() -> Self {
        State {
            status: Status::Created,
            pid: 0,
            pid_start: 0,
            shim_pid: 0,
            exit_code: 0,
            error: String::new(),
            started_at: ZERO_TIME.into(),
            finished_at: ZERO_TIME.into(),
            cgroups: vec![],
        }
    }
}

/// A container as read from its directory.
#[derive(Debug, Clone)]
pub struct Container {
    pub id: String,
    pub dir: PathBuf,
    pub meta: ContainerMeta,
    pub spec: Spec,
    pub state: State,
}

impl Container {
    pub fn name(&self) -> &str {
        &self.meta.name
    }
    pub fn short_id(&self) -> &str {
        super::names::short(&self.id)
    }
}

pub(crate) fn io_err(path: &Path) -> impl FnOnce(io::Error) -> RuntimeError + '_ {
    move |source| RuntimeError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Writes `value` as JSON to `path` atomically (temporary file + rename).
pub(crate) fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<(), RuntimeError> {
    let body = serde_json::to_vec_pretty(value).map_err(|source| RuntimeError::Json {
        path: path.to_path_buf(),
        source,
    })?;
    let tmp = path.with_extension("json.tmp");
    let mut f = File::create(&tmp).map_err(io_err(&tmp))?;
    f.write_all(&body).map_err(io_err(&tmp))?;
    f.write_all(b"\n").map_err(io_err(&tmp))?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(io_err(path))
}

pub(crate) fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T, RuntimeError> {
    let body = std::fs::read(path).map_err(io_err(path))?;
    serde_json::from_slice(&body).map_err(|source| RuntimeError::Json {
        path: path.to_path_buf(),
        source,
    })
}

/// The container records of one state root.
#[derive(Debug, Clone)]
pub struct Containers {
    dir: PathBuf,
}

impl Containers {
    pub fn open(root: &Path) -> Result<Self, RuntimeError> {
        let dir = root.join("containers");
        let names = dir.join(NAMES_DIR);
        std::fs::create_dir_all(&names).map_err(io_err(&names))?;
        Ok(Containers { dir })
    }

    pub fn dir_of(&self, id: &str) -> PathBuf {
        self.dir.join(id)
    }

    fn name_file(&self, name: &str) -> PathBuf {
        self.dir.join(NAMES_DIR).join(name)
    }

    /// IDs of every complete container record (a directory with its `container.json`).
    pub fn ids(&self) -> Result<Vec<String>, RuntimeError> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(&self.dir).map_err(io_err(&self.dir))? {
            let e = e.map_err(io_err(&self.dir))?;
            let name = e.file_name().to_string_lossy().into_owned();
            if name.len() == 64
                && name.bytes().all(|b| b.is_ascii_hexdigit())
                && e.path().join(META_FILE).exists()
            {
                out.push(name);
            }
        }
        out.sort();
        Ok(out)
    }

    /// A container by name, full ID or unique ID prefix.
    pub fn resolve(&self, reference: &str) -> Result<String, RuntimeError> {
        let r = reference.strip_prefix('/').unwrap_or(reference);
        if super::names::valid_name(r)
            && let Ok(id) = std::fs::read_to_string(self.name_file(r))
        {
            let id = id.trim().to_string();
            if self.dir_of(&id).join(META_FILE).exists() {
                return Ok(id);
            }
        }
        if r.is_empty() || !r.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(RuntimeError::NoSuchContainer(reference.into()));
        }
        let r = r.to_ascii_lowercase();
        let hits: Vec<String> = self
            .ids()?
            .into_iter()
            .filter(|id| id.starts_with(&r))
            .collect();
        match hits.len() {
            0 => Err(RuntimeError::NoSuchContainer(reference.into())),
            1 => Ok(hits.into_iter().next().unwrap_or_default()),
            _ => Err(RuntimeError::Ambiguous(reference.into())),
        }
    }

    /// Reads a container's files.
    pub fn load(&self, id: &str) -> Result<Container, RuntimeError> {
        let dir = self.dir_of(id);
        let meta_path = dir.join(META_FILE);
        if !meta_path.exists() {
            return Err(RuntimeError::NoSuchContainer(id.into()));
        }
        let meta: ContainerMeta = read_json(&meta_path)?;
        let spec: Spec = read_json(&dir.join(CONFIG_FILE))?;
        let state: State = read_json(&dir.join(STATE_FILE))?;
        Ok(Container {
            id: id.into(),
            dir,
            meta,
            spec,
            state,
        })
    }

    /// Claims `name` for `id`; fails when another container has it.
    pub fn reserve_name(&self, name: &str, id: &str) -> Result<(), RuntimeError> {
        if !super::names::valid_name(name) {
            return Err(RuntimeError::InvalidName(name.into()));
        }
        let path = self.name_file(name);
        loop {
            match File::options().write(true).create_new(true).open(&path) {
                Ok(mut f) => {
                    f.write_all(id.as_bytes()).map_err(io_err(&path))?;
                    return Ok(());
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                    let owner = std::fs::read_to_string(&path).unwrap_or_default();
                    let owner = owner.trim();
                    // A name left behind by a container that no longer exists is free again
                    // (a crash between the two steps of `rm`). A container being created
                    // has its directory before it takes a name.
                    if !owner.is_empty() && !self.dir_of(owner).exists() {
                        let _ = std::fs::remove_file(&path);
                        continue;
                    }
                    return Err(RuntimeError::NameInUse {
                        name: name.into(),
                        id: owner.into(),
                    });
                }
                Err(e) => return Err(io_err(&path)(e)),
            }
        }
    }

    /// Frees `name` if `id` holds it.
    pub fn release_name(&self, name: &str, id: &str) {
        let path = self.name_file(name);
        if std::fs::read_to_string(&path).is_ok_and(|o| o.trim() == id) {
            let _ = std::fs::remove_file(&path);
        }
    }

    /// The lifecycle lock of a container (start, stop, kill, rm take it in turn).
    pub fn lock(&self, id: &str) -> Result<File, RuntimeError> {
        let path = self.dir_of(id).join(LIFECYCLE_LOCK);
        if !self.dir_of(id).exists() {
            return Err(RuntimeError::NoSuchContainer(id.into()));
        }
        sys::lock_file(&path).map_err(io_err(&path))
    }
}

/// Whether a live shim holds the container's shim lock (when it cannot be told, the
/// directory is gone: nothing serves it).
pub fn shim_alive(dir: &Path) -> bool {
    sys::lock_held(&dir.join(SHIM_LOCK))
}

pub fn write_state(dir: &Path, state: &State) -> Result<(), RuntimeError> {
    write_json(&dir.join(STATE_FILE), state)
}

/// Start time of a process (clock ticks since boot, field 22 of /proc/PID/stat).
pub use crate::sys::process_start_time;

/// Whether `pid` is still the process that was recorded with start time `start`, and alive
/// (a zombie that nobody reaps counts as gone).
pub fn same_process(pid: i32, start: u64) -> bool {
    if pid <= 0 {
        return false;
    }
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    let Some(rest) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
        return false;
    };
    let mut f = rest.split_whitespace();
    let state = f.next().unwrap_or("");
    let started: Option<u64> = f.nth(18).and_then(|s| s.parse().ok());
    !matches!(state, "Z" | "X" | "x") && started == Some(start)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_stale_names_are_freed() {
        let tmp = tempfile::tempdir().unwrap();
        let c = Containers::open(tmp.path()).unwrap();
        let id = "a".repeat(64);
        std::fs::create_dir_all(c.dir_of(&id)).unwrap();
        c.reserve_name("web", &id).unwrap();
        // Still being created (no container.json yet): the name is taken all the same.
        assert!(c.reserve_name("web", &"c".repeat(64)).is_err());
        std::fs::write(c.dir_of(&id).join(META_FILE), b"{}").unwrap();
        assert!(matches!(
            c.reserve_name("web", &"b".repeat(64)),
            Err(RuntimeError::NameInUse { .. })
        ));
        assert_eq!(c.resolve("web").unwrap(), id);
        assert_eq!(c.resolve("aaaa").unwrap(), id);
        assert!(c.resolve("nope").is_err());
        std::fs::remove_dir_all(c.dir_of(&id)).unwrap();
        c.reserve_name("web", &"b".repeat(64)).unwrap();
        assert!(c.reserve_name("bad/name", &id).is_err());
    }

    #[test]
    fn start_time_of_self() {
        let me = std::process::id() as i32;
        let t = process_start_time(me).unwrap();
        assert!(same_process(me, t));
        assert!(!same_process(me, t + 1));
    }
}

//! Where strata keeps its state for the user running it: root or rootless.
//!
//! Owns the defaults (root: `/var/lib/strata` and `/run/strata`; any other user:
//! `$XDG_DATA_HOME/strata`, by default `~/.local/share/strata`, and `$XDG_RUNTIME_DIR/strata`
//! or the private fallback `/tmp/strata-UID`) and the checks that a state root or runtime
//! directory is the user's own before anything is written there. Must never create a state
//! root (the commands that write do that), never pick a path the user cannot write, and never
//! change the owner or mode of a directory that exists already.

use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};

/// The state root of root (Docker's `/var/lib/docker`).
pub const ROOT_STATE: &str = "/var/lib/strata";
/// The runtime directory of root.
pub const ROOT_RUNTIME: &str = "/run/strata";

/// Who strata runs as, which decides the defaults and how mounts are made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Effective uid 0: system-wide state, mounts by `mount(2)`.
    Root,
    /// Any other user: per-user state, mounts through `fusermount3`.
    Rootless,
}

impl Mode {
    /// The mode of this process: root is uid 0 of the initial user namespace. Root of a
    /// user namespace (a rootless container's shim that joined one, strata run inside a
    /// rootless container) cannot change the host, so it is rootless.
    pub fn current() -> Mode {
        if euid() == 0 && in_initial_user_namespace() {
            Mode::Root
        } else {
            Mode::Rootless
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Root => "root",
            Mode::Rootless => "rootless",
        }
    }
}

/// Whether this process runs in the initial user namespace (its uid map is the identity).
pub fn in_initial_user_namespace() -> bool {
    std::fs::read_to_string("/proc/self/uid_map")
        .map(|m| {
            let f: Vec<&str> = m.split_whitespace().collect();
            f == ["0", "0", "4294967295"]
        })
        .unwrap_or(false)
}

/// Where the system's package manager installs a program strata runs (pasta, slirp4netns,
/// newuidmap, iptables, …): the bin and sbin directories, whatever the caller's PATH (an
/// ordinary user's PATH has no sbin on Debian, and a setuid helper must not be looked up
/// along a user's PATH anyway).
pub fn system_program(name: &str) -> Option<PathBuf> {
    ["/usr/bin", "/bin", "/usr/sbin", "/sbin", "/usr/local/bin"]
        .iter()
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file())
}

/// The effective uid of this process.
pub fn euid() -> u32 {
    rustix::process::geteuid().as_raw()
}

/// Why a default could not be found or a directory is not the user's to use.
#[derive(Debug, thiserror::Error)]
pub enum PathError {
    #[error(
        "neither XDG_DATA_HOME nor HOME is set, so strata has no state root for uid {uid}: set HOME, or give one with --root DIR or STRATA_ROOT"
    )]
    NoHome { uid: u32 },
    #[error(
        "the state root {path} belongs to uid {owner}, not to you (uid {uid}): use a state root of your own (without --root and STRATA_ROOT strata uses {default}) or run strata as uid {owner}"
    )]
    ForeignRoot {
        path: PathBuf,
        owner: u32,
        uid: u32,
        default: String,
    },
    #[error("the state root {0} is not a directory: give a directory with --root or STRATA_ROOT")]
    RootNotADirectory(PathBuf),
    #[error(
        "cannot create the state root {path}: {parent} is not writable by you (uid {uid}); give a directory of yours with --root or STRATA_ROOT (without them strata uses {default})"
    )]
    RootNotCreatable {
        path: PathBuf,
        parent: PathBuf,
        uid: u32,
        default: String,
    },
    #[error(
        "the runtime directory {path} is not private to you (uid {uid}): it must be a directory owned by you with mode 0700; remove it or set XDG_RUNTIME_DIR to a directory of yours"
    )]
    UnsafeRuntimeDir { path: PathBuf, uid: u32 },
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> PathError + '_ {
    move |source| PathError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// An absolute path from an environment variable (the XDG base directory spec ignores
/// relative ones).
fn env_dir(name: &str) -> Option<PathBuf> {
    std::env::var_os(name)
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
}

/// The default state root of this user: `/var/lib/strata` for root, else
/// `$XDG_DATA_HOME/strata`, else `$HOME/.local/share/strata`.
pub fn default_state_root() -> Result<PathBuf, PathError> {
    if Mode::current() == Mode::Root {
        return Ok(PathBuf::from(ROOT_STATE));
    }
    if let Some(data) = env_dir("XDG_DATA_HOME") {
        return Ok(data.join("strata"));
    }
    match env_dir("HOME") {
        Some(home) => Ok(home.join(".local/share/strata")),
        None => Err(PathError::NoHome { uid: euid() }),
    }
}

/// How the default is shown in messages: the path, or what it would be.
fn default_shown() -> String {
    match default_state_root() {
        Ok(p) => p.display().to_string(),
        Err(_) => "$XDG_DATA_HOME/strata or ~/.local/share/strata".into(),
    }
}

/// Checks that this user may use `root` as its state root, changing nothing: an existing
/// root must be a directory owned by the user (root may use any); a missing one must be
/// creatable, i.e. its nearest existing ancestor writable by the user.
pub fn check_state_root(root: &Path) -> Result<(), PathError> {
    let uid = euid();
    match std::fs::metadata(root) {
        Ok(m) if !m.is_dir() => Err(PathError::RootNotADirectory(root.to_path_buf())),
        Ok(m) if uid != 0 && m.uid() != uid => Err(PathError::ForeignRoot {
            path: root.to_path_buf(),
            owner: m.uid(),
            uid,
            default: default_shown(),
        }),
        Ok(_) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            if uid == 0 {
                return Ok(());
            }
            let abs = std::path::absolute(root).map_err(io_err(root))?;
            let parent = abs
                .ancestors()
                .skip(1)
                .find(|a| a.exists())
                .unwrap_or(Path::new("/"));
            let writable = rustix::fs::access(
                parent,
                rustix::fs::Access::WRITE_OK | rustix::fs::Access::EXEC_OK,
            )
            .is_ok();
            if writable {
                Ok(())
            } else {
                Err(PathError::RootNotCreatable {
                    path: root.to_path_buf(),
                    parent: parent.to_path_buf(),
                    uid,
                    default: default_shown(),
                })
            }
        }
        Err(e) => Err(PathError::Io {
            path: root.to_path_buf(),
            source: e,
        }),
    }
}

/// The runtime directory of this user (sockets, pid files, per-user network state): root's
/// `/run/strata`, else `$XDG_RUNTIME_DIR/strata` when that is set, else `/tmp/strata-UID`.
/// Only computes the path; [`ensure_runtime_dir`] creates and checks it.
pub fn runtime_dir() -> PathBuf {
    if Mode::current() == Mode::Root {
        return PathBuf::from(ROOT_RUNTIME);
    }
    match env_dir("XDG_RUNTIME_DIR") {
        Some(run) => run.join("strata"),
        None => std::env::temp_dir().join(format!("strata-{}", outside_uid())),
    }
}

/// This process's effective uid as the parent user namespace sees it (the same uid outside
/// any user namespace): a rootless container's shim that joined the user's namespace still
/// finds the user's runtime directory.
pub fn outside_uid() -> u32 {
    let uid = euid();
    let Ok(map) = std::fs::read_to_string("/proc/self/uid_map") else {
        return uid;
    };
    map.lines()
        .filter_map(|l| {
            let f: Vec<u64> = l
                .split_whitespace()
                .filter_map(|x| x.parse().ok())
                .collect();
            let (inside, outside, count) = (*f.first()?, *f.get(1)?, *f.get(2)?);
            let u = u64::from(uid);
            (u >= inside && u - inside < count)
                .then(|| u32::try_from(outside + (u - inside)).ok())?
        })
        .next()
        .unwrap_or(uid)
}

/// Creates the runtime directory (mode 0700) when missing and checks that it is private to
/// this user: a directory (not a symlink) owned by the user with no access for others.
/// Another user could have made `/tmp/strata-UID` first: then it is refused, never used.
pub fn ensure_runtime_dir() -> Result<PathBuf, PathError> {
    let dir = runtime_dir();
    let uid = euid();
    match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound && uid == 0 => {
            std::fs::DirBuilder::new()
                .mode(0o700)
                .recursive(true)
                .create(&dir)
                .map_err(io_err(&dir))?;
        }
        Err(e) => {
            return Err(PathError::Io {
                path: dir,
                source: e,
            });
        }
    }
    if uid != 0 {
        check_private(&dir, uid)?;
    }
    Ok(dir)
}

/// `dir` is a directory (not a symlink to one) owned by `uid` with no access for others.
fn check_private(dir: &Path, uid: u32) -> Result<(), PathError> {
    let m = std::fs::symlink_metadata(dir).map_err(io_err(dir))?;
    if !m.is_dir() || m.uid() != uid || m.mode() & 0o077 != 0 {
        return Err(PathError::UnsafeRuntimeDir {
            path: dir.to_path_buf(),
            uid,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn root_may_use_any_existing_directory() {
        let d = tempfile::tempdir().unwrap();
        if euid() == 0 {
            check_state_root(d.path()).unwrap();
            check_state_root(&d.path().join("new/deeper")).unwrap();
        }
    }

    #[test]
    fn a_file_is_no_state_root() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("file");
        std::fs::write(&f, b"x").unwrap();
        let e = check_state_root(&f).unwrap_err();
        assert!(matches!(e, PathError::RootNotADirectory(_)), "{e}");
    }

    #[test]
    fn a_runtime_dir_must_be_private_to_its_user() {
        let d = tempfile::tempdir().unwrap();
        let mine = d.path().join("mine");
        std::fs::create_dir(&mine).unwrap();
        std::fs::set_permissions(&mine, std::fs::Permissions::from_mode(0o700)).unwrap();
        let me = std::fs::metadata(&mine).unwrap().uid();
        check_private(&mine, me).unwrap();
        // Someone else's (as another user made /tmp/strata-UID first), open to others, a
        // symlink to a private directory, a file: all refused.
        assert!(check_private(&mine, me + 4242).is_err());
        std::fs::set_permissions(&mine, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert!(check_private(&mine, me).is_err());
        std::fs::set_permissions(&mine, std::fs::Permissions::from_mode(0o700)).unwrap();
        let link = d.path().join("link");
        std::os::unix::fs::symlink(&mine, &link).unwrap();
        let e = check_private(&link, me).unwrap_err();
        assert!(e.to_string().contains("mode 0700"), "{e}");
        let file = d.path().join("file");
        std::fs::write(&file, b"").unwrap();
        assert!(check_private(&file, me).is_err());
    }

    #[test]
    fn a_missing_root_is_not_created_by_the_check() {
        let d = tempfile::tempdir().unwrap();
        std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        let r = d.path().join("state");
        let _ = check_state_root(&r);
        assert!(!r.exists());
    }
}

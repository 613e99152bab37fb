//! Mounting inside the container's rootfs without trusting it: every target is resolved with
//! `openat2(RESOLVE_IN_ROOT)` from a descriptor of the rootfs, so a symlink planted by the
//! image (`/data -> /etc`, `/x -> ../../..`) resolves inside the rootfs and can never put a
//! mount on the host. Missing targets are created (in the container's writable layer).
//! Mounts are attached with the new mount API (`open_tree`/`fsopen` + `move_mount` onto the
//! resolved descriptor), so no path is walked twice.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;

use rustix::fs::{Mode, OFlags, ResolveFlags};
use rustix::mount::{
    FsMountFlags, FsOpenFlags, MountAttrFlags, MoveMountFlags, OpenTreeFlags, fsconfig_create,
    fsconfig_set_flag, fsconfig_set_string, fsmount, fsopen, move_mount, open_tree,
};

use crate::sys::container::{mount_set_nodev, mount_set_readonly};

/// What to create at a missing mount target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Leaf {
    Dir,
    File,
}

fn in_root_flags() -> ResolveFlags {
    ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS
}

/// Components of an absolute container path; `.` and `..` are refused (the spec's paths are
/// cleaned when it is built).
fn components(path: &str) -> io::Result<Vec<&str>> {
    let parts: Vec<&str> = path.split('/').filter(|c| !c.is_empty()).collect();
    if parts.iter().any(|c| *c == "." || *c == "..") {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{path}: '.' and '..' are not allowed in a mount target"),
        ));
    }
    Ok(parts)
}

/// Opens `path` (absolute, in the container) under `root` as an `O_PATH` descriptor; symlinks
/// resolve as if `root` were `/`.
pub fn resolve(root: BorrowedFd<'_>, path: &str) -> io::Result<OwnedFd> {
    let rel = components(path)?.join("/");
    let rel = if rel.is_empty() { ".".to_string() } else { rel };
    Ok(rustix::fs::openat2(
        root,
        rel.as_str(),
        OFlags::PATH | OFlags::CLOEXEC,
        Mode::empty(),
        in_root_flags(),
    )?)
}

/// Like [`resolve`], creating what is missing: directories on the way, and a directory or
/// an empty file at the end.
pub fn ensure(root: BorrowedFd<'_>, path: &str, leaf: Leaf) -> io::Result<OwnedFd> {
    match resolve(root, path) {
        Ok(fd) => return Ok(fd),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let parts = components(path)?;
    for i in 0..parts.len() {
        let prefix = format!("/{}", parts[..=i].join("/"));
        match resolve(root, &prefix) {
            Ok(_) => continue,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        let parent = resolve(root, &format!("/{}", parts[..i].join("/")))?;
        let name = parts[i];
        let last = i + 1 == parts.len();
        let made = if last && leaf == Leaf::File {
            rustix::fs::openat(
                &parent,
                name,
                OFlags::CREATE | OFlags::EXCL | OFlags::WRONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::from_raw_mode(0o644),
            )
            .map(drop)
        } else {
            rustix::fs::mkdirat(&parent, name, Mode::from_raw_mode(0o755))
        };
        match made {
            Ok(()) => {}
            // Something is there that does not resolve: a symlink to a missing path.
            Err(rustix::io::Errno::EXIST) => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("{prefix} is a dangling symbolic link; refusing to mount through it"),
                ));
            }
            Err(e) => return Err(e.into()),
        }
    }
    resolve(root, path)
}

/// How a bind mount may be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BindFlags {
    pub readonly: bool,
    /// Device nodes under it cannot be opened (every bind of a container's volumes and
    /// files: no path but the runtime's own /dev nodes may open a device).
    pub nodev: bool,
}

/// A detached copy of the mount tree at host path `source` (recursive), with `flags` on
/// every mount of the copy.
pub fn bind_tree(source: &Path, flags: BindFlags) -> io::Result<OwnedFd> {
    let tree = open_tree(
        rustix::fs::CWD,
        source,
        OpenTreeFlags::OPEN_TREE_CLONE
            | OpenTreeFlags::OPEN_TREE_CLOEXEC
            | OpenTreeFlags::AT_RECURSIVE,
    )?;
    if flags.readonly {
        mount_set_readonly(tree.as_fd(), true)?;
    }
    if flags.nodev {
        mount_set_nodev(tree.as_fd(), true)?;
    }
    Ok(tree)
}

/// A new, detached instance of file system `fstype` with OCI-style `options`: flags
/// (`nosuid`, `nodev`, `noexec`, `ro`, `strictatime`, ...) become mount attributes, `key=value`
/// options go to the file system.
pub fn new_fs(fstype: &str, options: &[String]) -> io::Result<OwnedFd> {
    let fs = fsopen(fstype, FsOpenFlags::FSOPEN_CLOEXEC)?;
    let mut attrs = MountAttrFlags::empty();
    for o in options {
        match o.as_str() {
            "nosuid" => attrs |= MountAttrFlags::MOUNT_ATTR_NOSUID,
            "nodev" => attrs |= MountAttrFlags::MOUNT_ATTR_NODEV,
            "noexec" => attrs |= MountAttrFlags::MOUNT_ATTR_NOEXEC,
            "ro" => attrs |= MountAttrFlags::MOUNT_ATTR_RDONLY,
            "strictatime" => attrs |= MountAttrFlags::MOUNT_ATTR_STRICTATIME,
            "relatime" => attrs |= MountAttrFlags::MOUNT_ATTR_RELATIME,
            "noatime" => attrs |= MountAttrFlags::MOUNT_ATTR_NOATIME,
            "rw" | "newinstance" | "rprivate" | "private" | "rslave" | "slave" => {}
            kv => match kv.split_once('=') {
                Some((k, v)) => fsconfig_set_string(&fs, k, v)?,
                None => fsconfig_set_flag(&fs, kv)?,
            },
        }
    }
    fsconfig_create(&fs)?;
    Ok(fsmount(&fs, FsMountFlags::FSMOUNT_CLOEXEC, attrs)?)
}

/// Attaches a detached tree (from [`bind_tree`] or [`new_fs`]) on the resolved `target`.
pub fn attach(tree: &OwnedFd, target: &OwnedFd) -> io::Result<()> {
    Ok(move_mount(
        tree,
        "",
        target,
        "",
        MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH | MoveMountFlags::MOVE_MOUNT_T_EMPTY_PATH,
    )?)
}

/// Attaches a detached tree on an absolute path of the current root (after `pivot_root`,
/// for paths of the container's own /proc and /sys).
pub fn attach_path(tree: &OwnedFd, target: &str) -> io::Result<()> {
    Ok(move_mount(
        tree,
        "",
        rustix::fs::CWD,
        target,
        MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH,
    )?)
}

/// The kind of the file at an `O_PATH` descriptor.
pub fn is_dir(fd: &OwnedFd) -> io::Result<bool> {
    Ok(rustix::fs::fstat(fd)?.st_mode & libc::S_IFMT == libc::S_IFDIR)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn symlinks_resolve_inside_the_root() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("root");
        std::fs::create_dir_all(root.join("etc")).unwrap();
        std::fs::create_dir_all(root.join("tmp")).unwrap();
        std::os::unix::fs::symlink("/etc", root.join("data")).unwrap();
        std::os::unix::fs::symlink("../../../../../tmp", root.join("up")).unwrap();
        std::os::unix::fs::symlink("/nowhere", root.join("dangling")).unwrap();
        let rfd = rustix::fs::open(&root, OFlags::PATH | OFlags::DIRECTORY, Mode::empty()).unwrap();
        // /data -> /etc lands on root/etc, never the host's /etc.
        let fd = ensure(rfd.as_fd(), "/data/sub", Leaf::Dir).unwrap();
        drop(fd);
        assert!(root.join("etc/sub").is_dir());
        // ../.. is clamped at the root.
        ensure(rfd.as_fd(), "/up/made", Leaf::File).unwrap();
        assert!(root.join("tmp/made").is_file());
        assert!(ensure(rfd.as_fd(), "/dangling", Leaf::Dir).is_err());
        assert!(ensure(rfd.as_fd(), "/a/../b", Leaf::Dir).is_err());
    }
}

//! What this user may do with FUSE on this host, and how a mount is made and unmade for it.
//!
//! Owns the facts `strata info` shows and `mount` needs: is `/dev/fuse` usable, is
//! `fusermount3` installed, does `/etc/fuse.conf` allow `allow_other` to ordinary users, can
//! the kernel grant FUSE passthrough (CAP_SYS_ADMIN in the initial user namespace), does the
//! kernel offer FUSE over io_uring (fuse's `enable_uring` parameter). Turns a
//! missing piece into one sentence that names the fix. Must never change the host's
//! configuration (no chmod of `/dev/fuse`, no edit of `/etc/fuse.conf`).

use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::paths::{self, Mode};

/// The FUSE device.
pub const FUSE_DEVICE: &str = "/dev/fuse";
/// The FUSE configuration file that may allow `allow_other` to ordinary users.
pub const FUSE_CONF: &str = "/etc/fuse.conf";
/// The fuse module parameter that lets a FUSE server take requests through io_uring
/// (Linux 6.14+, off by default).
pub const ENABLE_URING: &str = "/sys/module/fuse/parameters/enable_uring";
/// The setuid mount helper of libfuse 3 (Debian package `fuse3`).
pub const FUSERMOUNT: &str = "fusermount3";

/// Why this user cannot mount.
#[derive(Debug, thiserror::Error)]
pub enum AccessError {
    #[error(
        "{FUSE_DEVICE} does not exist: load the fuse module (as root: modprobe fuse), or in a container pass the device (--device /dev/fuse)"
    )]
    NoDevice,
    #[error(
        "{FUSE_DEVICE} is not readable and writable by you (uid {uid}; it is mode {mode:04o}, owned by uid {owner}): as root run `chmod 0666 {FUSE_DEVICE}` (desktop distributions ship it so)"
    )]
    DeviceDenied { uid: u32, mode: u32, owner: u32 },
    #[error(
        "{FUSERMOUNT} is not installed, and mounting without root goes through it: install the fuse3 package (apt-get install fuse3)"
    )]
    NoFusermount,
    #[error(
        "--allow-other needs `user_allow_other` in {FUSE_CONF} when strata runs without root: as root add that line to {FUSE_CONF}, or mount without --allow-other"
    )]
    AllowOtherRefused,
    #[error("{FUSERMOUNT} -u {path}: {why}")]
    Unmount { path: PathBuf, why: String },
}

/// The facts about FUSE on this host for this user.
#[derive(Debug, Clone, serde::Serialize)]
pub struct FuseAccess {
    /// root or rootless.
    pub mode: &'static str,
    /// `/dev/fuse` exists.
    pub device: bool,
    /// `/dev/fuse` is readable and writable by this user.
    pub device_usable: bool,
    /// The device's permission bits, in octal (`"0666"`).
    pub device_mode: Option<String>,
    /// Where `fusermount3` is, if installed.
    pub fusermount3: Option<PathBuf>,
    /// `/etc/fuse.conf` has `user_allow_other`.
    pub user_allow_other: bool,
    /// The kernel can grant FUSE passthrough to this process.
    pub passthrough: bool,
    /// The kernel offers FUSE over io_uring: `None` when it has no such parameter.
    pub io_uring: Option<bool>,
}

impl FuseAccess {
    /// Looks at the host now.
    pub fn probe() -> FuseAccess {
        let meta = std::fs::metadata(FUSE_DEVICE)
            .ok()
            .filter(|m| m.file_type().is_char_device());
        FuseAccess {
            mode: Mode::current().as_str(),
            device: meta.is_some(),
            device_usable: meta.is_some() && device_usable(),
            device_mode: meta.map(|m| format!("{:04o}", m.mode() & 0o7777)),
            fusermount3: fusermount_path(),
            user_allow_other: user_allow_other(),
            passthrough: passthrough_possible(),
            io_uring: io_uring_enabled(),
        }
    }

    /// Checks that this user can mount: the device, and without root `fusermount3`.
    pub fn check_mountable(&self) -> Result<(), AccessError> {
        if !self.device {
            return Err(AccessError::NoDevice);
        }
        if !self.device_usable {
            let m = std::fs::metadata(FUSE_DEVICE).ok();
            return Err(AccessError::DeviceDenied {
                uid: paths::euid(),
                mode: m.as_ref().map_or(0, |m| m.mode() & 0o7777),
                owner: m.as_ref().map_or(0, |m| m.uid()),
            });
        }
        if Mode::current() == Mode::Rootless && self.fusermount3.is_none() {
            return Err(AccessError::NoFusermount);
        }
        Ok(())
    }

    /// The session ACL of a mount: root's mounts serve everyone (`allow_other`, as before);
    /// without root, `allow_other` is asked only when `/etc/fuse.conf` allows it or the
    /// caller asks for it (then its absence is an error, not a silent private mount).
    pub fn acl(&self, allow_other: bool) -> Result<fuser::SessionACL, AccessError> {
        if Mode::current() == Mode::Root || self.user_allow_other {
            return Ok(fuser::SessionACL::All);
        }
        if allow_other {
            return Err(AccessError::AllowOtherRefused);
        }
        Ok(fuser::SessionACL::Owner)
    }
}

fn device_usable() -> bool {
    use rustix::fs::Access;
    // Opening it would be the real test, but an open /dev/fuse with no mount is harmless only
    // until someone else's code reads it; access(2) answers for our uid and groups.
    rustix::fs::access(FUSE_DEVICE, Access::READ_OK | Access::WRITE_OK).is_ok()
}

/// `fusermount3` in `PATH` (then `/usr/bin`, `/bin`), as fuser looks for it.
pub fn fusermount_path() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/bin"), PathBuf::from("/bin")])
        .map(|d| d.join(FUSERMOUNT))
        .find(|p| p.is_file())
}

/// fuse's `enable_uring` parameter: `Some(true)` when set, `None` when the kernel lacks it.
pub fn io_uring_enabled() -> Option<bool> {
    let v = std::fs::read_to_string(ENABLE_URING).ok()?;
    Some(matches!(v.trim(), "Y" | "y" | "1"))
}

/// `/etc/fuse.conf` has a `user_allow_other` line.
pub fn user_allow_other() -> bool {
    conf_allows_other(&std::fs::read_to_string(FUSE_CONF).unwrap_or_default())
}

fn conf_allows_other(text: &str) -> bool {
    text.lines()
        .map(|l| l.split('#').next().unwrap_or("").trim())
        .any(|l| l == "user_allow_other")
}

/// FUSE passthrough needs CAP_SYS_ADMIN in the initial user namespace (the kernel checks it
/// when a backing file is registered): root outside any user namespace.
pub fn passthrough_possible() -> bool {
    Mode::current() == Mode::Root
}

/// Unmounts a FUSE mount lazily: `umount2(MNT_DETACH)` as root, `fusermount3 -u -z` (the
/// setuid helper that made it) for anyone else.
pub fn unmount(path: &Path) -> Result<(), AccessError> {
    match crate::sys::unmount_lazy(path) {
        Ok(()) => return Ok(()),
        Err(e) if e.raw_os_error() != Some(libc::EPERM) || Mode::current() == Mode::Root => {
            return Err(AccessError::Unmount {
                path: path.to_path_buf(),
                why: e.to_string(),
            });
        }
        Err(_) => {}
    }
    let helper = fusermount_path().ok_or(AccessError::NoFusermount)?;
    let out = Command::new(helper)
        .args(["-u", "-z", "--"])
        .arg(path)
        .output()
        .map_err(|e: io::Error| AccessError::Unmount {
            path: path.to_path_buf(),
            why: e.to_string(),
        })?;
    if out.status.success() {
        Ok(())
    } else {
        Err(AccessError::Unmount {
            path: path.to_path_buf(),
            why: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fuse_conf_lines() {
        assert!(conf_allows_other("user_allow_other\n"));
        assert!(conf_allows_other(
            "# c\n  user_allow_other  # yes\nmount_max = 5\n"
        ));
        assert!(!conf_allows_other("#user_allow_other\n"));
        assert!(!conf_allows_other("mount_max = 1000\n"));
        assert!(!conf_allows_other("user_allow_other_not\n"));
    }

    #[test]
    fn root_mounts_serve_everyone() {
        if Mode::current() == Mode::Root {
            let a = FuseAccess::probe();
            assert_eq!(a.acl(false).unwrap(), fuser::SessionACL::All);
            assert_eq!(a.acl(true).unwrap(), fuser::SessionACL::All);
        }
    }
}

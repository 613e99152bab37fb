//! The mount plan of a container: which file systems, binds and device nodes go where in its
//! rootfs before `pivot_root`, what is masked or made read-only after it, and the fallbacks
//! the kernel may force (no new sysfs in a user namespace without a network namespace of its
//! own, a devpts `gid=` that is not mapped, no mqueue in the kernel). It decides and orders;
//! every mount goes through [`MountOps`], which the container's init implements with the
//! kernel (see `init`, on top of `mounts`) and the unit tests below with a recording double,
//! so the plan is tested without root. Never touches the system itself.

use std::io;
use std::path::Path;

use super::mounts::{BindFlags, Leaf};
use super::spec::{Device, Mount};

/// What a plan needs done; paths are the container's (absolute), sources the host's.
pub trait MountOps {
    /// Whether the host path `source` is a directory (a bind's target is made to match).
    fn source_is_dir(&self, source: &Path) -> io::Result<bool>;
    /// The host's device node at `path`: `'b'` or `'c'`, major, minor.
    fn host_device(&self, path: &str) -> io::Result<(char, u32, u32)>;
    /// What is at `path` in the container: `None` if nothing, else whether a directory.
    fn kind_of(&self, path: &str) -> io::Result<Option<bool>>;
    /// Binds the host tree at `source` onto `target` (made as `leaf` if missing).
    fn bind(&mut self, source: &Path, target: &str, leaf: Leaf, flags: BindFlags)
    -> io::Result<()>;
    /// Mounts a new `kind` file system with OCI-style `options` on the directory `target`.
    fn new_fs(&mut self, kind: &str, options: &[String], target: &str) -> io::Result<()>;
    /// Makes the symbolic link `link` pointing to `target` (an existing one is kept).
    fn symlink(&mut self, target: &str, link: &str) -> io::Result<()>;
    /// Makes the directory `path` (and its parents) where missing.
    fn ensure_dir(&mut self, path: &str) -> io::Result<()>;
}

/// A step that failed: what it was, and why.
#[derive(Debug)]
pub struct PlanError {
    pub what: String,
    pub source: io::Error,
}

impl std::fmt::Display for PlanError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.what, self.source)
    }
}

fn step(what: impl FnOnce() -> String) -> impl FnOnce(io::Error) -> PlanError {
    move |source| PlanError {
        what: what(),
        source,
    }
}

/// The links every container's /dev has (to its own pts and /proc/self/fd).
const DEV_LINKS: [(&str, &str); 5] = [
    ("/dev/ptmx", "pts/ptmx"),
    ("/dev/fd", "/proc/self/fd"),
    ("/dev/stdin", "/proc/self/fd/0"),
    ("/dev/stdout", "/proc/self/fd/1"),
    ("/dev/stderr", "/proc/self/fd/2"),
];

/// Before `pivot_root`: the spec's `mounts` in order, the `devices` and the links of /dev,
/// and the working directory `cwd`.
pub fn mount_rootfs(
    ops: &mut dyn MountOps,
    mounts: &[Mount],
    devices: &[Device],
    cwd: &str,
) -> Result<(), PlanError> {
    for m in mounts {
        mount_one(ops, m).map_err(step(|| format!("mounting {} ({})", m.destination, m.kind)))?;
    }
    for d in devices {
        device(ops, d).map_err(step(|| format!("creating /dev: {}", d.path)))?;
    }
    ops.ensure_dir("/dev")
        .map_err(step(|| "creating /dev".to_string()))?;
    for (link, target) in DEV_LINKS {
        ops.symlink(target, link)
            .map_err(step(|| format!("creating /dev: {link}")))?;
    }
    ops.ensure_dir(cwd)
        .map_err(step(|| format!("creating the working directory {cwd}")))
}

fn mount_one(ops: &mut dyn MountOps, m: &Mount) -> io::Result<()> {
    let readonly = m.options.iter().any(|o| o == "ro");
    if m.kind == "bind" {
        let src = Path::new(&m.source);
        let leaf = if ops.source_is_dir(src)? {
            Leaf::Dir
        } else {
            Leaf::File
        };
        // Volumes and the /etc files never carry usable device nodes: a node made on a
        // volume (the container has CAP_MKNOD) must not open the host's disks.
        let flags = BindFlags {
            readonly,
            nodev: true,
        };
        return ops.bind(src, &m.destination, leaf, flags);
    }
    match ops.new_fs(&m.kind, &m.options, &m.destination) {
        Ok(()) => Ok(()),
        // A kernel without POSIX message queues: no /dev/mqueue, as runc does.
        Err(e) if m.kind == "mqueue" && e.raw_os_error() == Some(libc::ENODEV) => Ok(()),
        // In a user namespace without a network namespace of its own (`--network host`
        // without root) the kernel refuses a new sysfs: the host's, read-only, as podman does.
        Err(e) if m.kind == "sysfs" && e.raw_os_error() == Some(libc::EPERM) => ops.bind(
            Path::new("/sys"),
            &m.destination,
            Leaf::Dir,
            BindFlags {
                readonly: true,
                nodev: true,
            },
        ),
        // devpts's gid=5 (tty) is not mapped when only the user is (no subordinate ids).
        Err(e)
            if m.kind == "devpts"
                && e.raw_os_error() == Some(libc::EINVAL)
                && m.options.iter().any(|o| o.starts_with("gid=")) =>
        {
            let options: Vec<String> = m
                .options
                .iter()
                .filter(|o| !o.starts_with("gid="))
                .cloned()
                .collect();
            ops.new_fs(&m.kind, &options, &m.destination)
        }
        Err(e) => Err(e),
    }
}

/// A standard device node: a bind of the host's own node (which must be the node the spec
/// names) onto an empty file of the `nodev` /dev tmpfs. The bind is a mount of the host's
/// devtmpfs, so it opens; a node the container makes itself lands on a `nodev` mount and
/// cannot be opened.
fn device(ops: &mut dyn MountOps, d: &Device) -> io::Result<()> {
    let want = if d.kind == "b" { 'b' } else { 'c' };
    let (kind, major, minor) = ops
        .host_device(&d.path)
        .map_err(|e| io::Error::other(format!("the host's {}: {e}", d.path)))?;
    if (kind, major, minor) != (want, d.major, d.minor) {
        return Err(io::Error::other(format!(
            "the host's {} is not device {}:{}",
            d.path, d.major, d.minor
        )));
    }
    ops.bind(
        Path::new(&d.path),
        &d.path,
        Leaf::File,
        BindFlags {
            readonly: false,
            nodev: false,
        },
    )
}

/// After `pivot_root`: masked paths (an empty read-only tmpfs over a directory, /dev/null
/// over anything else) and read-only paths (a read-only bind of themselves); paths the image
/// does not have are skipped.
pub fn protect(
    ops: &mut dyn MountOps,
    masked: &[String],
    readonly: &[String],
) -> Result<(), PlanError> {
    for p in masked {
        mask(ops, p).map_err(step(|| format!("masking {p}")))?;
    }
    for p in readonly {
        let made = match ops.kind_of(p) {
            Ok(None) => Ok(()),
            Ok(Some(is_dir)) => ops.bind(
                Path::new(p),
                p,
                if is_dir { Leaf::Dir } else { Leaf::File },
                BindFlags {
                    readonly: true,
                    nodev: false,
                },
            ),
            Err(e) => Err(e),
        };
        made.map_err(step(|| format!("making {p} read-only")))?;
    }
    Ok(())
}

fn mask(ops: &mut dyn MountOps, path: &str) -> io::Result<()> {
    match ops.kind_of(path)? {
        None => Ok(()),
        Some(true) => ops.new_fs(
            "tmpfs",
            &["ro", "nosuid", "nodev", "noexec", "size=0"].map(String::from),
            path,
        ),
        Some(false) => ops.bind(
            Path::new("/dev/null"),
            path,
            Leaf::File,
            BindFlags {
                readonly: false,
                nodev: false,
            },
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::path::PathBuf;

    /// Records every operation; answers from what the test set up; fails the calls it was
    /// told to fail (by kind and errno) once.
    #[derive(Default)]
    struct Recorder {
        dirs: Vec<PathBuf>,
        devices: HashMap<String, (char, u32, u32)>,
        present: HashMap<String, bool>,
        fail_once: Vec<(String, i32)>,
        log: Vec<String>,
    }

    impl MountOps for Recorder {
        fn source_is_dir(&self, source: &Path) -> io::Result<bool> {
            Ok(self.dirs.iter().any(|d| d == source))
        }
        fn host_device(&self, path: &str) -> io::Result<(char, u32, u32)> {
            self.devices
                .get(path)
                .copied()
                .ok_or_else(|| io::Error::from_raw_os_error(libc::ENOENT))
        }
        fn kind_of(&self, path: &str) -> io::Result<Option<bool>> {
            Ok(self.present.get(path).copied())
        }
        fn bind(
            &mut self,
            source: &Path,
            target: &str,
            leaf: Leaf,
            flags: BindFlags,
        ) -> io::Result<()> {
            self.log.push(format!(
                "bind {} {target} {leaf:?}{}{}",
                source.display(),
                if flags.readonly { " ro" } else { "" },
                if flags.nodev { " nodev" } else { "" }
            ));
            Ok(())
        }
        fn new_fs(&mut self, kind: &str, options: &[String], target: &str) -> io::Result<()> {
            if let Some(i) = self.fail_once.iter().position(|(k, _)| k == kind) {
                let (_, errno) = self.fail_once.remove(i);
                self.log.push(format!("refused {kind}"));
                return Err(io::Error::from_raw_os_error(errno));
            }
            self.log
                .push(format!("fs {kind} {target} {}", options.join(",")));
            Ok(())
        }
        fn symlink(&mut self, target: &str, link: &str) -> io::Result<()> {
            self.log.push(format!("link {link} -> {target}"));
            Ok(())
        }
        fn ensure_dir(&mut self, path: &str) -> io::Result<()> {
            self.log.push(format!("dir {path}"));
            Ok(())
        }
    }

    fn m(dest: &str, kind: &str, source: &str, options: &[&str]) -> Mount {
        Mount {
            destination: dest.into(),
            kind: kind.into(),
            source: source.into(),
            options: options.iter().map(|o| o.to_string()).collect(),
        }
    }

    #[test]
    fn binds_are_nodev_and_match_their_source_and_dev_gets_its_nodes_and_links() {
        let mounts = [
            m("/proc", "proc", "proc", &["nosuid"]),
            m("/data", "bind", "/srv/data", &["rbind", "ro"]),
            m("/etc/hosts", "bind", "/state/hosts", &["rbind"]),
        ];
        let devices = [Device {
            path: "/dev/null".into(),
            kind: "c".into(),
            major: 1,
            minor: 3,
            file_mode: 0o666,
            uid: 0,
            gid: 0,
        }];
        let mut r = Recorder {
            dirs: vec!["/srv/data".into()],
            devices: HashMap::from([("/dev/null".to_string(), ('c', 1, 3))]),
            ..Recorder::default()
        };
        mount_rootfs(&mut r, &mounts, &devices, "/work").unwrap();
        assert_eq!(
            r.log[..4],
            [
                "fs proc /proc nosuid",
                "bind /srv/data /data Dir ro nodev",
                "bind /state/hosts /etc/hosts File nodev",
                "bind /dev/null /dev/null File",
            ]
        );
        assert_eq!(r.log[4], "dir /dev");
        assert!(r.log.contains(&"link /dev/ptmx -> pts/ptmx".to_string()));
        assert_eq!(r.log.last().unwrap(), "dir /work");
        // The host's node must be the one the spec names.
        let mut r = Recorder {
            devices: HashMap::from([("/dev/null".to_string(), ('b', 8, 0))]),
            ..Recorder::default()
        };
        let e = mount_rootfs(&mut r, &mounts, &devices, "/work").unwrap_err();
        assert!(e.to_string().contains("is not device 1:3"), "{e}");
    }

    #[test]
    fn the_kernels_refusals_have_their_fallbacks_and_others_name_the_mount() {
        let mounts = [
            m("/sys", "sysfs", "sysfs", &["ro"]),
            m("/dev/pts", "devpts", "devpts", &["newinstance", "gid=5"]),
            m("/dev/mqueue", "mqueue", "mqueue", &[]),
        ];
        let mut r = Recorder {
            fail_once: vec![
                ("sysfs".into(), libc::EPERM),
                ("devpts".into(), libc::EINVAL),
                ("mqueue".into(), libc::ENODEV),
            ],
            ..Recorder::default()
        };
        mount_rootfs(&mut r, &mounts, &[], "/").unwrap();
        assert_eq!(
            r.log[..5],
            [
                "refused sysfs",
                "bind /sys /sys Dir ro nodev",
                "refused devpts",
                "fs devpts /dev/pts newinstance",
                "refused mqueue",
            ]
        );
        // Any other refusal stops the plan, naming the mount.
        let mut r = Recorder {
            fail_once: vec![("tmpfs".into(), libc::ENOSPC)],
            ..Recorder::default()
        };
        let e = mount_rootfs(&mut r, &[m("/tmp", "tmpfs", "tmpfs", &[])], &[], "/").unwrap_err();
        assert_eq!(e.what, "mounting /tmp (tmpfs)");
    }

    #[test]
    fn masked_and_read_only_paths_after_pivot_root() {
        let masked = ["/proc/acpi", "/proc/kcore", "/proc/none"].map(String::from);
        let readonly = ["/proc/sys", "/proc/missing"].map(String::from);
        let mut r = Recorder {
            present: HashMap::from([
                ("/proc/acpi".to_string(), true),
                ("/proc/kcore".to_string(), false),
                ("/proc/sys".to_string(), true),
            ]),
            ..Recorder::default()
        };
        protect(&mut r, &masked, &readonly).unwrap();
        assert_eq!(
            r.log,
            [
                "fs tmpfs /proc/acpi ro,nosuid,nodev,noexec,size=0",
                "bind /dev/null /proc/kcore File",
                "bind /proc/sys /proc/sys Dir ro",
            ]
        );
    }
}

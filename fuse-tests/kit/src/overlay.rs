//! Kernel overlayfs, the oracle: layer tars extracted by GNU tar (independently of strata's
//! own tar code) into lower directories in overlay form, a read-only oracle mount, and a
//! writable mount with its own upper and work directories.

use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::bail;

use crate::cli::run;
use crate::mounts::{MountGuard, unmount};

/// Extracts each layer tar with GNU tar (as root, numeric owners, xattrs) into
/// `dir/l0`, `dir/l1`, … and puts them in overlay form: `.wh.NAME` becomes a 0/0 character
/// device, `.wh..wh..opq` the `trusted.overlay.opaque` xattr. Directories a tar only implies
/// (GNU tar creates them with the current time and default attributes) get the attributes of
/// the same directory in the layers below, so the overlay shows the image's attributes.
/// Returns the lower directories, bottom first.
pub fn extract_lowers(layers: &[PathBuf], dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut lowers: Vec<PathBuf> = Vec::new();
    for (i, tar) in layers.iter().enumerate() {
        let l = dir.join(format!("l{i}"));
        std::fs::create_dir_all(&l)?;
        run(Command::new("tar")
            .args(["--xattrs", "--xattrs-include=*", "--numeric-owner", "-xpf"])
            .arg(tar)
            .arg("-C")
            .arg(&l))?;
        to_overlay_form(&l)?;
        for rel in implied_dirs(tar)? {
            let below = lowers
                .iter()
                .rev()
                .map(|b| b.join(rel_path(&rel)))
                .find(|p| std::fs::symlink_metadata(p).is_ok_and(|m| m.is_dir()));
            if let Some(src) = below {
                copy_dir_attrs(&src, &l.join(rel_path(&rel)))?;
            }
        }
        lowers.push(l);
    }
    Ok(lowers)
}

fn rel_path(rel: &[u8]) -> &Path {
    if rel.is_empty() {
        Path::new(".")
    } else {
        Path::new(OsStr::from_bytes(rel))
    }
}

/// Directories a tar has entries below but no entry for (including its root).
pub fn implied_dirs(tar: &Path) -> anyhow::Result<Vec<Vec<u8>>> {
    let mut explicit = BTreeSet::new();
    let mut parents = BTreeSet::new();
    let mut a = tar::Archive::new(std::fs::File::open(tar)?);
    for e in a.entries()? {
        let e = e?;
        let p = e.path_bytes().into_owned();
        let p: Vec<&[u8]> = p
            .split(|&b| b == b'/')
            .filter(|c| !c.is_empty() && *c != b".")
            .collect();
        if e.header().entry_type().is_dir() {
            explicit.insert(p.join(&b'/'));
        }
        for i in 0..p.len() {
            parents.insert(p[..i].join(&b'/'));
        }
    }
    Ok(parents.difference(&explicit).cloned().collect())
}

fn copy_dir_attrs(src: &Path, dst: &Path) -> anyhow::Result<()> {
    let m = std::fs::symlink_metadata(src)?;
    rustix::fs::chown(
        dst,
        Some(rustix::fs::Uid::from_raw(m.uid())),
        Some(rustix::fs::Gid::from_raw(m.gid())),
    )?;
    rustix::fs::chmod(dst, rustix::fs::Mode::from_raw_mode(m.mode() & 0o7777))?;
    set_times(dst, &m)?;
    Ok(())
}

pub fn set_times(p: &Path, m: &std::fs::Metadata) -> anyhow::Result<()> {
    let ts = rustix::fs::Timestamps {
        last_access: rustix::fs::Timespec {
            tv_sec: m.atime(),
            tv_nsec: m.atime_nsec() as _,
        },
        last_modification: rustix::fs::Timespec {
            tv_sec: m.mtime(),
            tv_nsec: m.mtime_nsec() as _,
        },
    };
    rustix::fs::utimensat(
        rustix::fs::CWD,
        p,
        &ts,
        rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
    )?;
    Ok(())
}

/// Converts aufs-style whiteouts under `dir` to overlayfs form, keeping directory mtimes.
fn to_overlay_form(dir: &Path) -> anyhow::Result<()> {
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let meta = std::fs::symlink_metadata(&d)?;
        let mut touched = false;
        for e in std::fs::read_dir(&d)? {
            let e = e?;
            let name = e.file_name();
            let name = name.as_bytes();
            if name == b".wh..wh..opq" {
                std::fs::remove_file(e.path())?;
                rustix::fs::lsetxattr(
                    &d,
                    "trusted.overlay.opaque",
                    b"y",
                    rustix::fs::XattrFlags::empty(),
                )?;
                touched = true;
            } else if let Some(hidden) = name.strip_prefix(b".wh.") {
                std::fs::remove_file(e.path())?;
                rustix::fs::mknodat(
                    rustix::fs::CWD,
                    d.join(OsStr::from_bytes(hidden)),
                    rustix::fs::FileType::CharacterDevice,
                    rustix::fs::Mode::empty(),
                    rustix::fs::makedev(0, 0),
                )?;
                touched = true;
            } else if e.file_type()?.is_dir() {
                stack.push(e.path());
            }
        }
        if touched {
            set_times(&d, &meta)?;
        }
    }
    Ok(())
}

/// Kernel overlayfs over `layers` (bottom first), each extracted by GNU tar as root and put
/// in overlay form: `.wh.NAME` → 0/0 character device, `.wh..wh..opq` → the
/// `trusted.overlay.opaque` xattr. Independent of strata's own tar code on purpose.
pub struct OverlayOracle {
    pub mountpoint: PathBuf,
    _guard: MountGuard,
    _dir: tempfile::TempDir,
}

impl OverlayOracle {
    pub fn mount(layers: &[PathBuf]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let lowers = extract_lowers(layers, dir.path()).expect("extracting the layers");
        let mountpoint = dir.path().join("merged");
        std::fs::create_dir(&mountpoint).unwrap();
        let lowerdir: Vec<String> = lowers
            .iter()
            .rev()
            .map(|p| p.display().to_string())
            .collect();
        let st = Command::new("mount")
            .args(["-t", "overlay", "overlay", "-o"])
            .arg(format!("ro,lowerdir={}", lowerdir.join(":")))
            .arg(&mountpoint)
            .status()
            .unwrap();
        assert!(st.success(), "mount -t overlay failed");
        OverlayOracle {
            _guard: MountGuard(mountpoint.clone()),
            mountpoint,
            _dir: dir,
        }
    }
}

/// The options of a writable overlay over `lowers` (bottom first): `redirect_dir=on` (renaming
/// lower directories works instead of EXDEV), `index=on` (hard links survive copy-up, and an
/// upper directory is exclusive to one mount), `metacopy=off` (copy-up copies data, as most
/// distributions configure it).
pub fn writable_options(lowers: &[PathBuf], upper: &Path, work: &Path) -> String {
    let lowerdir: Vec<String> = lowers
        .iter()
        .rev()
        .map(|p| p.display().to_string())
        .collect();
    format!(
        "lowerdir={},upperdir={},workdir={},redirect_dir=on,index=on,metacopy=off",
        lowerdir.join(":"),
        upper.display(),
        work.display()
    )
}

/// A writable kernel overlayfs mount of `lowers` with its own upper and work directories,
/// with the options the differential tester needs (`redirect_dir=on` so lower directories
/// rename without EXDEV, `index=on` so hard links to lower files stay hard links).
pub struct Overlay {
    pub mnt: PathBuf,
    pub upper: PathBuf,
    pub work: PathBuf,
    lowers: Vec<PathBuf>,
}

impl Overlay {
    /// Prepares `base/{mnt,upper,work}`; does not mount.
    pub fn new(lowers: &[PathBuf], base: &Path) -> anyhow::Result<Self> {
        let o = Overlay {
            mnt: base.join("mnt"),
            upper: base.join("upper"),
            work: base.join("work"),
            lowers: lowers.to_vec(),
        };
        for d in [&o.mnt, &o.upper, &o.work] {
            std::fs::create_dir_all(d)?;
        }
        Ok(o)
    }

    pub fn mount(&self) -> anyhow::Result<()> {
        let opts = writable_options(&self.lowers, &self.upper, &self.work);
        run(Command::new("mount")
            .args(["-t", "overlay", "overlay", "-o", "nodev", "-o"])
            .arg(opts)
            .arg(&self.mnt))?;
        Ok(())
    }

    pub fn unmount(&self) -> anyhow::Result<()> {
        if !unmount(&self.mnt) {
            bail!("could not unmount {}", self.mnt.display());
        }
        Ok(())
    }

    /// Unmounts and empties upper and work: the next `mount` is the pristine image again.
    pub fn reset(&self) -> anyhow::Result<()> {
        self.unmount()?;
        for d in [&self.upper, &self.work] {
            std::fs::remove_dir_all(d)?;
            std::fs::create_dir(d)?;
        }
        Ok(())
    }
}

impl Drop for Overlay {
    fn drop(&mut self) {
        unmount(&self.mnt);
    }
}

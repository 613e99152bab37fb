//! An overlayfs upper directory as a layer: the directory that containerd's applier extracts a
//! layer tar into when a snapshotter hands it an `overlay` mount (whiteouts as 0/0 character
//! devices, opaque directories marked with the `trusted.overlay.opaque` xattr, everything else
//! as plain files with their owners, modes, times and xattrs) becomes a staged layer.
//!
//! No data is copied: each regular file gets a second name, `data/<n>` in the staging area (a
//! hard link; every name of a hard-link group shares one `n`), and the index is built from
//! `lstat` and the xattrs of a walk of the tree, children in name order (so the same tree always
//! gives the same index). `data/` is made `0700`, as the files keep the modes (setuid bits
//! among them) and xattrs the tree gave them.
//!
//! Never writes into the upper directory, never follows a symlink, never reads file data. The
//! directory is trusted to be what containerd wrote (it lives in the snapshotter's private
//! state), but what overlayfs alone could mean (redirects, metacopy files) is refused rather
//! than guessed, and names and device numbers are held to the limits extraction applies.

use std::collections::HashMap;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt};
use std::path::Path;

use super::LayerError;
use super::extract::{MAX_MAJOR, MAX_MINOR, MAX_PATH, MAX_XATTR, show};
use super::index::{Entry, Kind, LayerIndex};

/// The xattr namespace of overlayfs's own bookkeeping (the applier writes `opaque`; a kernel
/// mount of the snapshot may add `origin`, `impure` and the like, which carry no content).
const OVERLAY_XATTR_PREFIX: &[u8] = b"trusted.overlay.";
const OPAQUE_XATTR: &[u8] = b"trusted.overlay.opaque";
/// overlayfs xattrs whose meaning is content this conversion cannot reproduce.
const REFUSED_XATTRS: [&[u8]; 2] = [b"trusted.overlay.redirect", b"trusted.overlay.metacopy"];

/// Walks `upper` and links its regular files into `dir/data/` (which must not exist); the
/// layer's index. `dir` must be on the same file system as `upper`.
pub fn convert(upper: &Path, dir: &Path) -> Result<LayerIndex, LayerError> {
    let data = dir.join("data");
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&data)
        .map_err(|e| LayerError::io(&data, e))?;
    let mut w = Walk {
        data: &data,
        index: LayerIndex::default(),
        inodes: HashMap::new(),
    };
    // The upper directory's own attributes are the snapshotter's, not the layer's (containerd's
    // applier skips a tar's root entry): the root stays implicit, opaque when marked so.
    let opaque = read_xattrs(upper)?.iter().any(|(n, v)| is_opaque(n, v));
    w.index.entries.push(Entry {
        kind: Kind::Dir {
            opaque,
            implicit: true,
        },
        ..Entry::implicit_dir(Vec::new())
    });
    w.dir(upper, &[])?;
    Ok(w.finish())
}

struct Walk<'a> {
    data: &'a Path,
    index: LayerIndex,
    /// (device, inode) of a regular file with more than one name → its data file number.
    inodes: HashMap<(u64, u64), u32>,
}

fn is_opaque(name: &[u8], value: &[u8]) -> bool {
    name == OPAQUE_XATTR && value == b"y"
}

fn join(parent: &[u8], name: &[u8]) -> Vec<u8> {
    let mut p = parent.to_vec();
    if !p.is_empty() {
        p.push(b'/');
    }
    p.extend_from_slice(name);
    p
}

impl Walk<'_> {
    /// Adds the children of the directory `host` (the layer path `path`), depth first.
    fn dir(&mut self, host: &Path, path: &[u8]) -> Result<(), LayerError> {
        let io_err = |e| LayerError::io(host, e);
        let mut children: Vec<std::fs::DirEntry> = std::fs::read_dir(host)
            .map_err(io_err)?
            .collect::<Result<_, _>>()
            .map_err(io_err)?;
        children.sort_by_key(|c| c.file_name());
        for child in children {
            let name = child.file_name();
            let child_path = join(path, name.as_bytes());
            let host_path = child.path();
            if self.entry(&host_path, child_path.clone())? {
                self.dir(&host_path, &child_path)?;
            }
        }
        Ok(())
    }

    /// Adds one entry; whether it is a directory (to descend into).
    fn entry(&mut self, host: &Path, path: Vec<u8>) -> Result<bool, LayerError> {
        let bad = |why: String| LayerError::Hostile {
            path: show(&path),
            why,
        };
        if path.len() > MAX_PATH {
            return Err(bad("path longer than PATH_MAX".into()));
        }
        let meta = std::fs::symlink_metadata(host).map_err(|e| LayerError::io(host, e))?;
        let ft = meta.file_type();
        let mut xattrs = read_xattrs(host)?;
        let mut opaque = false;
        for (n, v) in &xattrs {
            if REFUSED_XATTRS.contains(&n.as_slice()) {
                return Err(bad(format!(
                    "overlayfs {} is not supported (the snapshot was mounted with redirect_dir or metacopy)",
                    show(n)
                )));
            }
            opaque |= is_opaque(n, v);
        }
        xattrs.retain(|(n, _)| !n.starts_with(OVERLAY_XATTR_PREFIX));
        if xattrs.iter().map(|(n, v)| n.len() + v.len()).sum::<usize>() > MAX_XATTR {
            return Err(bad("extended attributes larger than 64 KiB".into()));
        }
        let rdev = || {
            let (major, minor) = (
                rustix::fs::major(meta.rdev()),
                rustix::fs::minor(meta.rdev()),
            );
            if u64::from(major) > MAX_MAJOR || u64::from(minor) > MAX_MINOR {
                return Err(bad(format!("device number {major}:{minor} out of range")));
            }
            Ok((major, minor))
        };
        let kind = if ft.is_dir() {
            Kind::Dir {
                opaque,
                implicit: false,
            }
        } else if ft.is_file() {
            self.file(host, &meta)?
        } else if ft.is_symlink() {
            let target = std::fs::read_link(host).map_err(|e| LayerError::io(host, e))?;
            Kind::Symlink {
                target: target.as_os_str().as_bytes().to_vec(),
            }
        } else if ft.is_char_device() {
            match rdev()? {
                // overlayfs's whiteout: the path is deleted from the layers below.
                (0, 0) => Kind::Whiteout,
                (major, minor) => Kind::CharDev { major, minor },
            }
        } else if ft.is_block_device() {
            let (major, minor) = rdev()?;
            Kind::BlockDev { major, minor }
        } else if ft.is_fifo() {
            Kind::Fifo
        } else if ft.is_socket() {
            Kind::Socket
        } else {
            return Err(bad("a file of unknown type".into()));
        };
        let is_dir = kind.is_dir();
        let e = if kind == Kind::Whiteout {
            Entry {
                path,
                kind,
                mode: 0,
                uid: 0,
                gid: 0,
                mtime: 0,
                mtime_nsec: 0,
                xattrs: Vec::new(),
            }
        } else {
            Entry {
                path,
                kind,
                mode: meta.mode() & 0o7777,
                uid: meta.uid(),
                gid: meta.gid(),
                mtime: meta.mtime(),
                mtime_nsec: u32::try_from(meta.mtime_nsec()).unwrap_or(0),
                xattrs,
            }
        };
        self.index.entries.push(e);
        Ok(is_dir)
    }

    /// A regular file: its data file, linked (or, with more names, the one linked already).
    fn file(&mut self, host: &Path, meta: &std::fs::Metadata) -> Result<Kind, LayerError> {
        let key = (meta.dev(), meta.ino());
        if meta.nlink() > 1
            && let Some(&file) = self.inodes.get(&key)
        {
            return Ok(Kind::File {
                size: meta.len(),
                file,
                nlink: 1,
            });
        }
        let file = self.index.files;
        self.index.files = file.checked_add(1).ok_or_else(|| LayerError::Hostile {
            path: host.display().to_string(),
            why: "too many files".into(),
        })?;
        if meta.nlink() > 1 {
            self.inodes.insert(key, file);
        }
        if meta.len() > 0 {
            let dst = self.data.join(file.to_string());
            match std::fs::hard_link(host, &dst) {
                Ok(()) => {}
                // Another file system (a bind mount inside the state root): a copy.
                Err(e) if e.raw_os_error() == Some(libc::EXDEV) => {
                    std::fs::copy(host, &dst).map_err(|e| LayerError::io(&dst, e))?;
                }
                Err(e) => return Err(LayerError::io(&dst, e)),
            }
        }
        Ok(Kind::File {
            size: meta.len(),
            file,
            nlink: 1,
        })
    }

    /// Counts the names of each hard-link group.
    fn finish(mut self) -> LayerIndex {
        let mut names: HashMap<u32, u32> = HashMap::new();
        for e in &self.index.entries {
            if let Kind::File { file, .. } = e.kind {
                *names.entry(file).or_default() += 1;
            }
        }
        for e in &mut self.index.entries {
            if let Kind::File { file, nlink, .. } = &mut e.kind {
                *nlink = names.get(file).copied().unwrap_or(1);
            }
        }
        self.index
    }
}

/// Name and value pairs.
type Xattrs = Vec<(Vec<u8>, Vec<u8>)>;

/// The xattrs of `path` itself (not of a symlink's target), sorted by name; none where the
/// file system has none.
fn read_xattrs(path: &Path) -> Result<Xattrs, LayerError> {
    use rustix::io::Errno;
    let err = |e: Errno| LayerError::io(path, e.into());
    let mut names = vec![0u8; 256];
    let len = loop {
        match rustix::fs::llistxattr(path, &mut names[..]) {
            Ok(n) => break n,
            Err(Errno::RANGE) => {
                let want = rustix::fs::llistxattr_query(path).map_err(err)?;
                names.resize(want.max(names.len() * 2), 0);
            }
            Err(Errno::NOTSUP) => return Ok(Vec::new()),
            Err(e) => return Err(err(e)),
        }
    };
    let mut out = Vec::new();
    for name in names[..len].split(|&b| b == 0).filter(|n| !n.is_empty()) {
        let cname = std::ffi::OsStr::from_bytes(name);
        let mut value = vec![0u8; 256];
        let n = loop {
            match rustix::fs::lgetxattr(path, cname, &mut value[..]) {
                Ok(n) => break Some(n),
                Err(Errno::RANGE) => {
                    let want = rustix::fs::lgetxattr_query(path, cname).map_err(err)?;
                    if want > MAX_XATTR {
                        return Err(LayerError::Hostile {
                            path: path.display().to_string(),
                            why: "extended attributes larger than 64 KiB".into(),
                        });
                    }
                    value.resize(want.max(value.len() * 2), 0);
                }
                // Removed since it was listed.
                Err(Errno::NODATA) => break None,
                Err(e) => return Err(err(e)),
            }
        };
        if let Some(n) = n {
            value.truncate(n);
            out.push((name.to_vec(), value));
        }
    }
    out.sort();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustix::fs::{CWD, FileType, Mode, makedev, mknodat};
    use std::io;
    use std::os::unix::fs::PermissionsExt;

    /// Everything of a tree but link counts: paths, types, modes, owners, times, xattrs, data.
    fn listing(dir: &Path) -> Vec<String> {
        let mut out = Vec::new();
        let mut stack = vec![dir.to_path_buf()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).unwrap() {
                let p = e.unwrap().path();
                let m = std::fs::symlink_metadata(&p).unwrap();
                let data = if m.is_file() {
                    std::fs::read(&p).unwrap()
                } else {
                    Vec::new()
                };
                out.push(format!(
                    "{} {:o} {}:{} {} {}.{} {:?} {:?} {:?}",
                    p.strip_prefix(dir).unwrap().display(),
                    m.mode(),
                    m.uid(),
                    m.gid(),
                    m.rdev(),
                    m.mtime(),
                    m.mtime_nsec(),
                    read_xattrs(&p).unwrap(),
                    std::fs::read_link(&p).ok(),
                    data
                ));
                if m.is_dir() {
                    stack.push(p);
                }
            }
        }
        out.sort();
        out
    }

    fn mknod(p: &Path, ft: FileType, major: u32, minor: u32) -> io::Result<()> {
        mknodat(
            CWD,
            p,
            ft,
            Mode::from_raw_mode(0o644),
            makedev(major, minor),
        )
        .map_err(Into::into)
    }

    /// trusted.* xattrs and device nodes need root; without it those parts are left out.
    fn privileged(upper: &Path) -> bool {
        rustix::fs::lsetxattr(
            upper,
            "trusted.strata-probe",
            b"1",
            rustix::fs::XattrFlags::empty(),
        )
        .and_then(|_| rustix::fs::lremovexattr(upper, "trusted.strata-probe"))
        .is_ok()
    }

    fn set(p: &Path, name: &str, value: &[u8]) {
        rustix::fs::lsetxattr(p, name, value, rustix::fs::XattrFlags::empty()).unwrap();
    }

    fn entry<'a>(index: &'a LayerIndex, path: &str) -> &'a Entry {
        index
            .entries
            .iter()
            .find(|e| e.path == path.as_bytes())
            .unwrap_or_else(|| panic!("no entry {path}"))
    }

    #[test]
    fn an_upper_directory_becomes_an_index_and_linked_data_files() {
        let t = tempfile::tempdir().unwrap();
        let upper = t.path().join("upper");
        std::fs::create_dir(&upper).unwrap();
        let root = privileged(&upper);
        let u = |p: &str| upper.join(p);
        std::fs::create_dir(u("d")).unwrap();
        std::fs::write(u("d/setuid"), b"hello").unwrap();
        std::fs::set_permissions(u("d/setuid"), std::fs::Permissions::from_mode(0o4755)).unwrap();
        let when = std::time::UNIX_EPOCH + std::time::Duration::new(1_700_000_000, 123_456_789);
        std::fs::File::options()
            .write(true)
            .open(u("d/setuid"))
            .and_then(|f| f.set_modified(when))
            .unwrap();
        set(&u("d/setuid"), "user.comment", b"kept");
        std::fs::write(u("d/empty"), b"").unwrap();
        std::fs::write(u("a"), b"linked").unwrap();
        std::fs::hard_link(u("a"), u("d/b")).unwrap();
        std::os::unix::fs::symlink("../elsewhere/x", u("s")).unwrap();
        mknod(&u("p"), FileType::Fifo, 0, 0).unwrap();
        // A whiteout (0/0 character device; mknod of it needs no privilege since Linux 5.8).
        mknod(&u("gone"), FileType::CharacterDevice, 0, 0).unwrap();
        std::fs::set_permissions(u("d"), std::fs::Permissions::from_mode(0o750)).unwrap();
        if root {
            std::fs::create_dir(u("o")).unwrap();
            std::fs::write(u("o/new"), b"in the opaque dir").unwrap();
            set(&u("o"), "trusted.overlay.opaque", b"y");
            // Bookkeeping of a kernel mount: dropped.
            set(&u("d"), "trusted.overlay.impure", b"y");
            mknod(&u("null"), FileType::CharacterDevice, 1, 3).unwrap();
            mknod(&u("sda"), FileType::BlockDevice, 8, 0).unwrap();
        } else {
            eprintln!("not root: opaque directories and device nodes are not tried");
        }
        let before = listing(&upper);

        let staging = t.path().join("staging");
        std::fs::create_dir(&staging).unwrap();
        let index = convert(&upper, &staging).unwrap();

        // The upper directory is as it was (its files have a second name now, nothing else).
        assert_eq!(listing(&upper), before);
        // Directories before their children, children in name order, each path once.
        let paths: Vec<String> = index.entries.iter().map(|e| show(&e.path)).collect();
        let mut want = vec!["", "a", "d", "d/b", "d/empty", "d/setuid", "gone"];
        if root {
            want.extend(["null", "o", "o/new"]);
        }
        want.extend(["p", "s"]);
        if root {
            want.insert(want.len() - 1, "sda");
            want.sort();
        }
        assert_eq!(paths, want);
        assert_eq!(
            entry(&index, "").kind,
            Kind::Dir {
                opaque: false,
                implicit: true
            }
        );
        let d = entry(&index, "d");
        assert_eq!((d.mode, d.xattrs.len()), (0o750, 0), "{d:?}");
        let f = entry(&index, "d/setuid");
        assert_eq!(f.mode, 0o4755);
        assert_eq!((f.mtime, f.mtime_nsec), (1_700_000_000, 123_456_789));
        assert_eq!(f.xattrs, vec![(b"user.comment".to_vec(), b"kept".to_vec())]);
        let Kind::File {
            size: 5,
            file,
            nlink: 1,
        } = f.kind
        else {
            panic!("{f:?}");
        };
        let data = staging.join("data");
        assert_eq!(
            std::fs::read(data.join(file.to_string())).unwrap(),
            b"hello"
        );
        assert_eq!(
            std::fs::metadata(&data).unwrap().permissions().mode() & 0o777,
            0o700
        );
        // One data file for both names of the hard link; none for the empty file.
        let (a, b) = (entry(&index, "a"), entry(&index, "d/b"));
        assert_eq!(a.kind, b.kind);
        let Kind::File {
            size: 6,
            file,
            nlink: 2,
        } = a.kind
        else {
            panic!("{a:?}");
        };
        assert_eq!(
            std::fs::read(data.join(file.to_string())).unwrap(),
            b"linked"
        );
        let Kind::File { size: 0, file, .. } = entry(&index, "d/empty").kind else {
            panic!("empty");
        };
        assert!(!data.join(file.to_string()).exists());
        assert_eq!(index.files, if root { 4 } else { 3 });
        assert_eq!(
            std::fs::read_dir(&data).unwrap().count(),
            if root { 3 } else { 2 }
        );
        assert_eq!(
            entry(&index, "s").kind,
            Kind::Symlink {
                target: b"../elsewhere/x".to_vec()
            }
        );
        assert_eq!(entry(&index, "p").kind, Kind::Fifo);
        assert_eq!(entry(&index, "gone").kind, Kind::Whiteout);
        if root {
            let o = entry(&index, "o");
            assert_eq!(
                (&o.kind, o.xattrs.len()),
                (
                    &Kind::Dir {
                        opaque: true,
                        implicit: false
                    },
                    0
                )
            );
            assert_eq!(
                entry(&index, "null").kind,
                Kind::CharDev { major: 1, minor: 3 }
            );
            assert_eq!(
                entry(&index, "sda").kind,
                Kind::BlockDev { major: 8, minor: 0 }
            );
        }
    }

    #[test]
    fn an_opaque_upper_root_and_refused_overlay_features() {
        let t = tempfile::tempdir().unwrap();
        let upper = t.path().join("upper");
        std::fs::create_dir(&upper).unwrap();
        if !privileged(&upper) {
            eprintln!("not root: trusted.overlay.* xattrs cannot be set; nothing to test");
            return;
        }
        set(&upper, "trusted.overlay.opaque", b"y");
        let staging = t.path().join("s1");
        std::fs::create_dir(&staging).unwrap();
        let index = convert(&upper, &staging).unwrap();
        assert_eq!(
            index.entries[0].kind,
            Kind::Dir {
                opaque: true,
                implicit: true
            }
        );
        // A directory renamed through a kernel mount with redirect_dir: not a plain layer.
        std::fs::create_dir(upper.join("moved")).unwrap();
        set(&upper.join("moved"), "trusted.overlay.redirect", b"/old");
        let staging = t.path().join("s2");
        std::fs::create_dir(&staging).unwrap();
        let e = convert(&upper, &staging).expect_err("a redirect is refused");
        assert!(e.to_string().contains("trusted.overlay.redirect"), "{e}");
    }

    #[test]
    fn the_store_stages_and_publishes_an_upper_directory() {
        let t = tempfile::tempdir().unwrap();
        let store = crate::layer::LayerStore::open(t.path()).unwrap();
        let upper = t.path().join("upper");
        std::fs::create_dir_all(upper.join("etc")).unwrap();
        std::fs::write(upper.join("etc/motd"), b"hi\n").unwrap();
        let id = crate::digest::Digest::of(b"stands for the tar digest");
        let staged = store
            .stage_upper(&upper, |index, data| {
                assert_eq!(index.entries.len(), 3);
                assert_eq!(std::fs::read(data.join("0"))?, b"hi\n");
                Ok((id.clone(), 1536))
            })
            .unwrap();
        assert_eq!((staged.diff_id(), staged.tar_size), (&id, 1536));
        let index = staged.index.clone();
        let locks = store.lock(std::slice::from_ref(&id)).unwrap();
        store.commit(staged, &locks).unwrap();
        assert_eq!(store.index(&id).unwrap(), index);
        assert_eq!(
            std::fs::read(store.data_dir(&id).join("0")).unwrap(),
            b"hi\n"
        );
        // A digest that fails leaves nothing staged.
        let e = store
            .stage_upper(&upper, |_, _| Err(io::Error::other("no digest")))
            .expect_err("fails");
        assert!(e.to_string().contains("no digest"), "{e}");
        let staging = t.path().join("layers/.staging");
        assert_eq!(std::fs::read_dir(staging).unwrap().count(), 0);
    }
}

//! Host files the kernel may read and write an open file through (FUSE passthrough, which
//! a writable mount uses with `--io passthrough`; `rwopen` decides per open).
//!
//! Only a file whose every byte is in one host file qualifies: an unchanged lower file of at
//! least [`LOWER_MIN`], for reading only, or a file wholly in its backing file (whose length
//! is always the file's size: `to_backing`, `truncate` and `write` keep it so). Never hands
//! out a lower file for writing, a file that is partly copied up, or a small file whose bytes
//! are in its record.

use std::path::PathBuf;

use super::setid;
use super::{Res, View};
use crate::rwlayer::{Data, FileKind, Ts};

/// Lower files smaller than this are read through strata and the page cache: passthrough
/// saves nothing on them, and a lower file open through passthrough cannot be opened for
/// writing until it is closed (`rwopen`).
pub const LOWER_MIN: u64 = 1 << 20;

/// The host file that holds all of a file's bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HostFile {
    /// An unchanged lower file: the kernel may read it, never write it.
    Lower(PathBuf),
    /// The file's backing file in the writable layer.
    Backing(PathBuf),
}

/// What writes through a host file changed: read from the backing file with `fstat`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HostStamp {
    pub size: u64,
    pub mtime: Ts,
    pub ctime: Ts,
}

impl View {
    /// The host file an open of `ino` (for writing if `write`) may go through, if any.
    /// A file with a setuid or setgid bit is not handed out: a write by a caller without
    /// CAP_FSETID must drop those bits, which strata does (`write_as`) and the kernel's
    /// passthrough write does not.
    pub fn host_file(&self, ino: u64, write: bool) -> Res<Option<HostFile>> {
        let st = self.lock();
        if let Some(i) = st.inodes.get(&ino) {
            if i.kind != FileKind::File || setid::has_setid(i.perm) {
                return Ok(None);
            }
            return Ok(match i.data {
                Data::Lower { layer, file } if !write && i.size >= LOWER_MIN => {
                    Some(HostFile::Lower(self.lower_path(layer, file)?))
                }
                Data::Backing => Some(HostFile::Backing(self.layer.backing_path(ino))),
                _ => None,
            });
        }
        let n = self.lower_node(ino).ok_or(libc::ENOENT)?;
        Ok(match n.kind {
            super::NodeKind::File { file: Some(f) }
                if !write && n.size >= LOWER_MIN && !setid::has_setid(n.perm) =>
            {
                Some(HostFile::Lower(self.lower_path(n.layer, f)?))
            }
            _ => None,
        })
    }

    /// Gives the new, empty file `ino` an empty backing file, so it can be opened through
    /// passthrough from its creation on. Anything else is left alone.
    pub fn back_new_file(&self, ino: u64) -> Res<()> {
        let mut st = self.lock();
        let Some(i) = st.inodes.get(&ino) else {
            return Ok(());
        };
        if i.kind != FileKind::File || i.data != Data::None || i.size != 0 {
            return Ok(());
        }
        let mut i = i.clone();
        self.to_backing(ino, &mut i)?;
        self.put(&mut st, ino, i);
        Ok(())
    }

    /// Takes what writes through the backing file of `ino` changed into its record: the
    /// size, and the times if the file changed after `since` (its ctime then).
    pub fn take_host_writes(&self, ino: u64, now: &HostStamp, since: &Ts) -> Res<()> {
        let mut st = self.lock();
        let Some(i) = st.inodes.get(&ino) else {
            return Ok(()); // freed (unlinked and forgotten): nothing to record
        };
        if i.data != Data::Backing {
            return Ok(());
        }
        let changed = now.ctime > *since;
        if i.size == now.size && !changed {
            return Ok(());
        }
        let i = self.record_mut(&mut st, ino)?;
        i.size = now.size;
        if changed {
            i.mtime = now.mtime;
            i.ctime = i.ctime.max(now.ctime);
        }
        Ok(())
    }

    pub(super) fn lower_path(&self, layer: u16, file: u32) -> Res<PathBuf> {
        let dir = self.lower_data.get(layer as usize).ok_or(libc::EIO)?;
        Ok(dir.join(file.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{ME, ROOT, ino, view};
    use super::*;
    use crate::fs::view::SetAttr;
    use std::os::unix::fs::FileExt;

    #[test]
    fn only_whole_host_files_qualify_and_lower_ones_only_for_reading() {
        let tmp = tempfile::tempdir().unwrap();
        let v = view(tmp.path());
        let big = ino(&v, "d/big");
        let Some(HostFile::Lower(p)) = v.host_file(big, false).unwrap() else {
            panic!("an unchanged 1 MiB lower file is read through its lower file");
        };
        assert_eq!(std::fs::metadata(p).unwrap().len(), 1 << 20);
        assert_eq!(v.host_file(big, true).unwrap(), None, "never written there");
        // One chunk copied up: partly lower, partly backing, so no single host file.
        v.write(big, 10, b"x").unwrap();
        assert_eq!(v.host_file(big, false).unwrap(), None);
        // A small new file keeps its bytes in its record; a setuid file goes through strata.
        let small = v
            .make(ME, ROOT, b"small", libc::S_IFREG | 0o644, 0, None)
            .unwrap()
            .ino;
        v.write(small, 0, b"hi").unwrap();
        assert_eq!(v.host_file(small, false).unwrap(), None);
        let new = v
            .make(ME, ROOT, b"new", libc::S_IFREG | 0o644, 0, None)
            .unwrap()
            .ino;
        v.back_new_file(new).unwrap();
        let want = HostFile::Backing(v.layer.backing_path(new));
        assert_eq!(v.host_file(new, true).unwrap(), Some(want));
        let setuid = SetAttr {
            mode: Some(0o4755),
            ..SetAttr::default()
        };
        v.setattr(new, &setuid).unwrap();
        assert_eq!(v.host_file(new, false).unwrap(), None);
    }

    #[test]
    fn writes_through_the_backing_file_reach_the_record() {
        let tmp = tempfile::tempdir().unwrap();
        let v = view(tmp.path());
        let new = v
            .make(ME, ROOT, b"new", libc::S_IFREG | 0o644, 0, None)
            .unwrap()
            .ino;
        v.back_new_file(new).unwrap();
        let before = v.getattr(new).unwrap();
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(v.layer.backing_path(new))
            .unwrap();
        f.write_all_at(b"written by the kernel", 0).unwrap();
        let stamp = HostStamp {
            size: 21,
            mtime: Ts {
                sec: 2_000_000_000,
                nsec: 1,
            },
            ctime: Ts {
                sec: 2_000_000_000,
                nsec: 1,
            },
        };
        // Not changed since the mark: the size is taken, the times are not.
        v.take_host_writes(new, &stamp, &stamp.ctime).unwrap();
        let a = v.getattr(new).unwrap();
        assert_eq!((a.size, a.mtime), (21, before.mtime));
        // Changed since: the times too.
        v.take_host_writes(new, &stamp, &before.ctime).unwrap();
        let a = v.getattr(new).unwrap();
        assert_eq!((a.size, a.mtime, a.ctime), (21, stamp.mtime, stamp.ctime));
        assert_eq!(v.read(new, 0, 100).unwrap(), b"written by the kernel");
    }
}

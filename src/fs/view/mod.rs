//! The writable merged view: the immutable lower tree plus one writable layer, with the
//! POSIX semantics of every file system operation, as plain Rust (no FUSE types).
//!
//! Model. Every inode has one number for its whole life: lower inodes keep the number the
//! [`MergedTree`] gave them (also after copy-up), inodes created here get numbers from
//! [`FIRST_UPPER_INO`] up, never reused. A lower inode that changes gets a record in the
//! writable layer (metadata copy-up: no data is copied). A directory whose entries change is
//! *materialised*: its whole listing moves into the layer, so deletions need no whiteouts and
//! `rmdir` + `mkdir` is naturally opaque. File data is copied up per [`CHUNK`]: a lower file
//! being written keeps reading unchanged chunks from the lower layer.
//!
//! All state lives in memory (loaded in O(changes) at mount) and every change is written
//! through to the layer as one atomic batch before the operation returns; `fsync` makes it
//! durable. One mutex guards the state; file data I/O happens outside it.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};

use libc::c_int;
use tracing::warn;

mod data;

use super::tree::{MergedTree, Node, NodeKind};
use crate::rwlayer::{Batch, Data, FIRST_UPPER_INO, FileKind, Inode, RwError, RwLayer, Ts};

/// An errno value.
pub type Errno = c_int;
pub type Res<T> = Result<T, Errno>;

const MAX_NAME: usize = 255;

/// What `stat` says about an inode.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attr {
    pub ino: u64,
    pub blocks: u64,
    pub kind: FileKind,
    pub perm: u16,
    pub nlink: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub rdev: u32,
    pub atime: Ts,
    pub mtime: Ts,
    pub ctime: Ts,
}

/// Who asks: the caller's fsuid/fsgid, for the owner of new inodes.
#[derive(Clone, Copy, Debug)]
pub struct Caller {
    pub uid: u32,
    pub gid: u32,
}

/// A `setattr` request; `None` leaves a field alone.
#[derive(Clone, Debug, Default)]
pub struct SetAttr {
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
    pub atime: Option<Ts>,
    pub mtime: Option<Ts>,
    pub ctime: Option<Ts>,
}

/// `rename` flags (Linux `renameat2`).
pub const RENAME_NOREPLACE: u32 = 1;
pub const RENAME_EXCHANGE: u32 = 2;

struct State {
    inodes: HashMap<u64, Inode>,
    dirs: HashMap<u64, BTreeMap<Box<[u8]>, u64>>,
    chunks: HashMap<u64, Vec<u8>>,
    next_ino: u64,
    /// Open handles per inode: an unlinked inode lives until the last one closes.
    open: HashMap<u64, u32>,
}

/// The writable merged view of one mount.
pub struct View {
    lower: MergedTree,
    lower_data: Vec<PathBuf>,
    layer: RwLayer,
    st: Mutex<State>,
    /// Open backing files, so reads and writes do not open(2) per request.
    files: Mutex<HashMap<u64, Arc<File>>>,
}

/// Backing files kept open at most.
const OPEN_FILES: usize = 1024;

fn kind_of_node(k: &NodeKind) -> FileKind {
    match k {
        NodeKind::Dir { .. } => FileKind::Dir,
        NodeKind::File { .. } => FileKind::File,
        NodeKind::Symlink { .. } => FileKind::Symlink,
        NodeKind::Fifo => FileKind::Fifo,
        NodeKind::Socket => FileKind::Socket,
        NodeKind::CharDev { .. } => FileKind::CharDev,
        NodeKind::BlockDev { .. } => FileKind::BlockDev,
    }
}

fn kind_from_mode(mode: u32) -> Res<FileKind> {
    Ok(match mode & libc::S_IFMT {
        libc::S_IFREG | 0 => FileKind::File,
        libc::S_IFDIR => FileKind::Dir,
        libc::S_IFLNK => FileKind::Symlink,
        libc::S_IFIFO => FileKind::Fifo,
        libc::S_IFSOCK => FileKind::Socket,
        libc::S_IFCHR => FileKind::CharDev,
        libc::S_IFBLK => FileKind::BlockDev,
        _ => return Err(libc::EINVAL),
    })
}

fn check_name(name: &[u8]) -> Res<()> {
    if name.len() > MAX_NAME {
        Err(libc::ENAMETOOLONG)
    } else if name.is_empty() || name == b"." || name == b".." || name.contains(&b'/') {
        Err(libc::EINVAL)
    } else {
        Ok(())
    }
}

fn io_errno(e: std::io::Error) -> Errno {
    e.raw_os_error().unwrap_or(libc::EIO)
}

fn layer_errno(e: RwError) -> Errno {
    match e {
        RwError::Io { source, .. } => io_errno(source),
        other => {
            warn!(error = %other, "writable layer failure");
            libc::EIO
        }
    }
}

impl View {
    /// Opens the view of `lower` (whose data files are in `lower_data[layer]`) with `layer`.
    pub fn new(
        lower: MergedTree,
        lower_data: Vec<PathBuf>,
        layer: RwLayer,
    ) -> Result<Self, RwError> {
        let l = layer.load()?;
        let v = View {
            lower,
            lower_data,
            layer,
            st: Mutex::new(State {
                inodes: l.inodes,
                dirs: l.dirs,
                chunks: l.chunks,
                next_ino: l.next_ino,
                open: HashMap::new(),
            }),
            files: Mutex::new(HashMap::new()),
        };
        v.collect_orphans()?;
        Ok(v)
    }

    /// Inodes unlinked while open when the previous mount ended are garbage now.
    fn collect_orphans(&self) -> Result<(), RwError> {
        let mut st = self.lock();
        let orphans: Vec<u64> = st
            .inodes
            .iter()
            .filter(|(_, i)| i.nlink == 0)
            .map(|(&n, _)| n)
            .collect();
        if orphans.is_empty() {
            return Ok(());
        }
        let mut b = Batch::default();
        for ino in orphans {
            st.inodes.remove(&ino);
            st.chunks.remove(&ino);
            b.del_inode(ino);
            let _ = std::fs::remove_file(self.layer.backing_path(ino));
        }
        self.layer.apply(b)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.st.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn lower_node(&self, ino: u64) -> Option<&Node> {
        if ino >= FIRST_UPPER_INO {
            None
        } else {
            self.lower.get(ino)
        }
    }

    /// The record of `ino`: the layer's if it has one, else made from the lower node.
    fn inode(&self, st: &State, ino: u64) -> Res<Inode> {
        if let Some(i) = st.inodes.get(&ino) {
            return Ok(i.clone());
        }
        let n = self.lower_node(ino).ok_or(libc::ENOENT)?;
        let t = Ts {
            sec: n.mtime,
            nsec: n.mtime_nsec,
        };
        Ok(Inode {
            kind: kind_of_node(&n.kind),
            perm: n.perm,
            uid: n.uid,
            gid: n.gid,
            size: n.size,
            atime: t,
            mtime: t,
            ctime: t,
            nlink: n.nlink,
            rdev: match n.kind {
                NodeKind::CharDev { rdev } | NodeKind::BlockDev { rdev } => rdev,
                _ => 0,
            },
            parent: n.parent,
            target: match &n.kind {
                NodeKind::Symlink { target } => target.to_vec(),
                _ => vec![],
            },
            xattrs: n
                .xattrs
                .iter()
                .map(|(k, v)| (k.to_vec(), v.to_vec()))
                .collect(),
            data: match n.kind {
                NodeKind::File { file: Some(file) } => Data::Lower {
                    layer: n.layer,
                    file,
                },
                _ => Data::None,
            },
            materialized: false,
        })
    }

    /// 512-byte blocks allocated: the backing file's where all data is in this layer (sparse
    /// files stay sparse for `du`, `cp --sparse`, `tar -S`), the size's where data is lower.
    fn blocks(&self, ino: u64, i: &Inode) -> u64 {
        if i.kind != FileKind::File {
            return 0;
        }
        let by_size = i.size.div_ceil(512);
        if i.data != Data::Backing {
            return by_size;
        }
        let cached = self
            .files
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&ino)
            .cloned();
        let meta = match cached {
            Some(f) => f.metadata(),
            None => std::fs::metadata(self.layer.backing_path(ino)),
        };
        meta.map(|m| std::os::unix::fs::MetadataExt::blocks(&m))
            .unwrap_or(by_size)
    }

    fn attr_of(&self, ino: u64, i: &Inode) -> Attr {
        Attr {
            blocks: self.blocks(ino, i),
            ino,
            kind: i.kind,
            perm: i.perm,
            nlink: i.nlink,
            uid: i.uid,
            gid: i.gid,
            size: i.size,
            rdev: i.rdev,
            atime: i.atime,
            mtime: i.mtime,
            ctime: i.ctime,
        }
    }

    fn child(&self, st: &State, dir: u64, name: &[u8]) -> Res<Option<u64>> {
        if let Some(entries) = st.dirs.get(&dir) {
            return Ok(entries.get(name).copied());
        }
        let d = self.inode(st, dir)?;
        if d.kind != FileKind::Dir {
            return Err(libc::ENOTDIR);
        }
        if d.materialized {
            return Ok(None);
        }
        Ok(self.lower_node(dir).and_then(|n| n.child(name)))
    }

    fn children(&self, st: &State, dir: u64) -> Res<Vec<(Box<[u8]>, u64)>> {
        if let Some(entries) = st.dirs.get(&dir) {
            return Ok(entries.iter().map(|(n, &i)| (n.clone(), i)).collect());
        }
        let d = self.inode(st, dir)?;
        if d.kind != FileKind::Dir {
            return Err(libc::ENOTDIR);
        }
        if d.materialized {
            return Ok(vec![]);
        }
        Ok(match self.lower_node(dir).map(|n| &n.kind) {
            Some(NodeKind::Dir { children }) => children.to_vec(),
            _ => vec![],
        })
    }

    /// Saves `i` as the layer's record of `ino`.
    fn put(&self, st: &mut State, b: &mut Batch, ino: u64, i: Inode) {
        b.put_inode(ino, &i);
        st.inodes.insert(ino, i);
    }

    /// Moves a directory's listing into the layer (once), so its entries can change.
    fn materialize(&self, st: &mut State, b: &mut Batch, dir: u64) -> Res<()> {
        if st.dirs.contains_key(&dir) {
            return Ok(());
        }
        let entries = self.children(st, dir)?;
        let mut d = self.inode(st, dir)?;
        let mut map = BTreeMap::new();
        for (name, ino) in entries {
            b.put_dirent(dir, &name, ino);
            map.insert(name, ino);
        }
        st.dirs.insert(dir, map);
        d.materialized = true;
        self.put(st, b, dir, d);
        Ok(())
    }

    fn set_entry(&self, st: &mut State, b: &mut Batch, dir: u64, name: &[u8], ino: u64) -> Res<()> {
        self.materialize(st, b, dir)?;
        b.put_dirent(dir, name, ino);
        st.dirs.entry(dir).or_default().insert(name.into(), ino);
        Ok(())
    }

    fn remove_entry(&self, st: &mut State, b: &mut Batch, dir: u64, name: &[u8]) -> Res<()> {
        self.materialize(st, b, dir)?;
        b.del_dirent(dir, name);
        if let Some(d) = st.dirs.get_mut(&dir) {
            d.remove(name);
        }
        Ok(())
    }

    /// mtime and ctime of a directory whose entries changed; `nlink_delta` for subdirectories.
    fn touch_dir(
        &self,
        st: &mut State,
        b: &mut Batch,
        dir: u64,
        nlink_delta: i32,
        now: Ts,
    ) -> Res<()> {
        let mut d = self.inode(st, dir)?;
        d.mtime = now;
        d.ctime = now;
        d.nlink = d.nlink.saturating_add_signed(nlink_delta).max(2);
        self.put(st, b, dir, d);
        Ok(())
    }

    fn commit(&self, b: Batch) -> Res<()> {
        self.layer.apply(b).map_err(layer_errno)
    }

    /// What the writable layer changed, as `docker diff` lists it (see `fs::changes`).
    pub fn changes(&self) -> Vec<crate::fs::changes::Change> {
        let st = self.lock();
        crate::fs::changes::changes(&self.lower, &st.inodes, &st.dirs)
    }

    /// Every path of the merged tree, parents first (for `export`).
    pub fn everything(&self) -> Vec<crate::fs::changes::Change> {
        let st = self.lock();
        crate::fs::changes::everything(&self.lower, &st.inodes, &st.dirs)
    }

    // ---- queries -------------------------------------------------------------------------

    pub fn lookup(&self, parent: u64, name: &[u8]) -> Res<Attr> {
        if name.len() > MAX_NAME {
            return Err(libc::ENAMETOOLONG);
        }
        let st = self.lock();
        let ino = self.child(&st, parent, name)?.ok_or(libc::ENOENT)?;
        Ok(self.attr_of(ino, &self.inode(&st, ino)?))
    }

    pub fn getattr(&self, ino: u64) -> Res<Attr> {
        let st = self.lock();
        Ok(self.attr_of(ino, &self.inode(&st, ino)?))
    }

    pub fn readlink(&self, ino: u64) -> Res<Vec<u8>> {
        let st = self.lock();
        let i = self.inode(&st, ino)?;
        if i.kind != FileKind::Symlink {
            return Err(libc::EINVAL);
        }
        Ok(i.target)
    }

    /// The entries of a directory (without `.` and `..`), with their kinds, and its parent.
    pub fn readdir(&self, dir: u64) -> Res<(u64, Listing)> {
        let st = self.lock();
        let d = self.inode(&st, dir)?;
        if d.kind != FileKind::Dir {
            return Err(libc::ENOTDIR);
        }
        let mut out = Vec::new();
        for (name, ino) in self.children(&st, dir)? {
            let kind = match st.inodes.get(&ino) {
                Some(i) => i.kind,
                None => self
                    .lower_node(ino)
                    .map(|n| kind_of_node(&n.kind))
                    .unwrap_or(FileKind::File),
            };
            out.push((name, ino, kind));
        }
        let parent = if dir == super::tree::ROOT_INO {
            dir
        } else {
            d.parent
        };
        Ok((parent, out))
    }

    pub fn getxattr(&self, ino: u64, name: &[u8]) -> Res<Vec<u8>> {
        let st = self.lock();
        let i = self.inode(&st, ino)?;
        i.xattrs
            .into_iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v)
            .ok_or(libc::ENODATA)
    }

    pub fn listxattr(&self, ino: u64) -> Res<Vec<u8>> {
        let st = self.lock();
        let mut out = Vec::new();
        for (n, _) in self.inode(&st, ino)?.xattrs {
            out.extend_from_slice(&n);
            out.push(0);
        }
        Ok(out)
    }

    /// Total, free and available blocks (of 4 KiB) and free inodes where the layer lives.
    pub fn statfs(&self) -> Res<(u64, u64, u64, u64, u32)> {
        let s = rustix::fs::statvfs(self.layer.dir()).map_err(|e| e.raw_os_error())?;
        Ok((
            s.f_blocks,
            s.f_bfree,
            s.f_bavail,
            s.f_ffree,
            s.f_frsize as u32,
        ))
    }

    // ---- namespace changes ---------------------------------------------------------------

    /// Creates a new inode named `name` in `parent`: a file, directory, symlink or special file.
    pub fn make(
        &self,
        who: Caller,
        parent: u64,
        name: &[u8],
        mode: u32,
        rdev: u32,
        target: Option<&[u8]>,
    ) -> Res<Attr> {
        check_name(name)?;
        let kind = if target.is_some() {
            FileKind::Symlink
        } else {
            kind_from_mode(mode)?
        };
        let mut st = self.lock();
        let p = self.inode(&st, parent)?;
        if p.kind != FileKind::Dir {
            return Err(libc::ENOTDIR);
        }
        if p.nlink == 0 {
            return Err(libc::ENOENT);
        }
        if self.child(&st, parent, name)?.is_some() {
            return Err(libc::EEXIST);
        }
        let now = Ts::now();
        let mut perm = (mode & 0o7777) as u16;
        // BSD group semantics in a setgid directory, as the kernel gives local file systems.
        let gid = if p.perm & libc::S_ISGID as u16 != 0 {
            if kind == FileKind::Dir {
                perm |= libc::S_ISGID as u16;
            }
            p.gid
        } else {
            who.gid
        };
        if kind == FileKind::Symlink {
            perm = 0o777;
        }
        let ino = st.next_ino;
        st.next_ino += 1;
        let target = target.map(<[u8]>::to_vec).unwrap_or_default();
        let inode = Inode {
            kind,
            perm,
            uid: who.uid,
            gid,
            size: if kind == FileKind::Symlink {
                target.len() as u64
            } else {
                0
            },
            atime: now,
            mtime: now,
            ctime: now,
            nlink: if kind == FileKind::Dir { 2 } else { 1 },
            rdev: if matches!(kind, FileKind::CharDev | FileKind::BlockDev) {
                rdev
            } else {
                0
            },
            parent,
            target,
            xattrs: vec![],
            data: Data::None,
            materialized: kind == FileKind::Dir,
        };
        let mut b = Batch::default();
        b.set_next_ino(st.next_ino);
        if kind == FileKind::Dir {
            st.dirs.insert(ino, BTreeMap::new());
        }
        let attr = self.attr_of(ino, &inode);
        self.put(&mut st, &mut b, ino, inode);
        self.set_entry(&mut st, &mut b, parent, name, ino)?;
        self.touch_dir(
            &mut st,
            &mut b,
            parent,
            i32::from(kind == FileKind::Dir),
            now,
        )?;
        self.commit(b)?;
        Ok(attr)
    }

    /// A new name for an existing non-directory inode.
    pub fn link(&self, ino: u64, parent: u64, name: &[u8]) -> Res<Attr> {
        check_name(name)?;
        let mut st = self.lock();
        let mut i = self.inode(&st, ino)?;
        if i.kind == FileKind::Dir {
            return Err(libc::EPERM);
        }
        if self.child(&st, parent, name)?.is_some() {
            return Err(libc::EEXIST);
        }
        let now = Ts::now();
        let mut b = Batch::default();
        i.nlink += 1;
        i.ctime = now;
        let attr = self.attr_of(ino, &i);
        self.put(&mut st, &mut b, ino, i);
        self.set_entry(&mut st, &mut b, parent, name, ino)?;
        self.touch_dir(&mut st, &mut b, parent, 0, now)?;
        self.commit(b)?;
        Ok(attr)
    }

    /// Drops one name of `ino`; frees it when no name and no open handle is left.
    fn drop_link(&self, st: &mut State, b: &mut Batch, ino: u64, now: Ts) -> Res<()> {
        let mut i = self.inode(st, ino)?;
        i.nlink = if i.kind == FileKind::Dir {
            0
        } else {
            i.nlink.saturating_sub(1)
        };
        i.ctime = now;
        if i.nlink == 0 && st.open.get(&ino).copied().unwrap_or(0) == 0 {
            self.free(st, b, ino);
        } else {
            self.put(st, b, ino, i);
        }
        Ok(())
    }

    fn free(&self, st: &mut State, b: &mut Batch, ino: u64) {
        st.inodes.remove(&ino);
        st.chunks.remove(&ino);
        if let Some(entries) = st.dirs.remove(&ino) {
            for name in entries.keys() {
                b.del_dirent(ino, name);
            }
        }
        b.del_inode(ino);
        self.files
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&ino);
        let _ = std::fs::remove_file(self.layer.backing_path(ino));
    }

    pub fn unlink(&self, parent: u64, name: &[u8]) -> Res<()> {
        if name.len() > MAX_NAME {
            return Err(libc::ENAMETOOLONG);
        }
        let mut st = self.lock();
        let ino = self.child(&st, parent, name)?.ok_or(libc::ENOENT)?;
        if self.inode(&st, ino)?.kind == FileKind::Dir {
            return Err(libc::EISDIR);
        }
        let now = Ts::now();
        let mut b = Batch::default();
        self.remove_entry(&mut st, &mut b, parent, name)?;
        self.touch_dir(&mut st, &mut b, parent, 0, now)?;
        self.drop_link(&mut st, &mut b, ino, now)?;
        self.commit(b)
    }

    pub fn rmdir(&self, parent: u64, name: &[u8]) -> Res<()> {
        if name.len() > MAX_NAME {
            return Err(libc::ENAMETOOLONG);
        }
        let mut st = self.lock();
        let ino = self.child(&st, parent, name)?.ok_or(libc::ENOENT)?;
        if self.inode(&st, ino)?.kind != FileKind::Dir {
            return Err(libc::ENOTDIR);
        }
        if !self.children(&st, ino)?.is_empty() {
            return Err(libc::ENOTEMPTY);
        }
        let now = Ts::now();
        let mut b = Batch::default();
        self.remove_entry(&mut st, &mut b, parent, name)?;
        self.touch_dir(&mut st, &mut b, parent, -1, now)?;
        self.drop_link(&mut st, &mut b, ino, now)?;
        self.commit(b)
    }

    /// Whether directory `dir` is `ancestor` or lies below it.
    fn within(&self, st: &State, mut dir: u64, ancestor: u64) -> Res<bool> {
        // Bounded: a path has at most PATH_MAX / 2 components.
        for _ in 0..libc::PATH_MAX {
            if dir == ancestor {
                return Ok(true);
            }
            if dir == super::tree::ROOT_INO {
                return Ok(false);
            }
            dir = self.inode(st, dir)?.parent;
        }
        Ok(false)
    }

    pub fn rename(
        &self,
        parent: u64,
        name: &[u8],
        newparent: u64,
        newname: &[u8],
        flags: u32,
    ) -> Res<()> {
        if name.len() > MAX_NAME {
            return Err(libc::ENAMETOOLONG);
        }
        check_name(newname)?;
        if flags & !(RENAME_NOREPLACE | RENAME_EXCHANGE) != 0
            || flags & RENAME_NOREPLACE != 0 && flags & RENAME_EXCHANGE != 0
        {
            return Err(libc::EINVAL);
        }
        let mut st = self.lock();
        let src = self.child(&st, parent, name)?.ok_or(libc::ENOENT)?;
        let dst = self.child(&st, newparent, newname)?;
        if self.inode(&st, newparent)?.kind != FileKind::Dir {
            return Err(libc::ENOTDIR);
        }
        if flags & RENAME_NOREPLACE != 0 && dst.is_some() {
            return Err(libc::EEXIST);
        }
        if flags & RENAME_EXCHANGE != 0 && dst.is_none() {
            return Err(libc::ENOENT);
        }
        let src_i = self.inode(&st, src)?;
        let src_dir = src_i.kind == FileKind::Dir;
        // A directory may not move below itself.
        if src_dir && parent != newparent && self.within(&st, newparent, src)? {
            return Err(libc::EINVAL);
        }
        let now = Ts::now();
        let mut b = Batch::default();
        if flags & RENAME_EXCHANGE != 0 {
            let dst = dst.ok_or(libc::ENOENT)?;
            let mut dst_i = self.inode(&st, dst)?;
            if dst_i.kind == FileKind::Dir
                && parent != newparent
                && self.within(&st, parent, dst)?
            {
                return Err(libc::EINVAL);
            }
            self.set_entry(&mut st, &mut b, parent, name, dst)?;
            self.set_entry(&mut st, &mut b, newparent, newname, src)?;
            let dst_dir = dst_i.kind == FileKind::Dir;
            let mut src_i = src_i;
            src_i.parent = if src_dir { newparent } else { src_i.parent };
            src_i.ctime = now;
            dst_i.parent = if dst_dir { parent } else { dst_i.parent };
            dst_i.ctime = now;
            self.put(&mut st, &mut b, src, src_i);
            self.put(&mut st, &mut b, dst, dst_i);
            let delta = i32::from(dst_dir) - i32::from(src_dir);
            if parent != newparent {
                self.touch_dir(&mut st, &mut b, parent, delta, now)?;
                self.touch_dir(&mut st, &mut b, newparent, -delta, now)?;
            } else {
                self.touch_dir(&mut st, &mut b, parent, 0, now)?;
            }
            return self.commit(b);
        }
        if let Some(dst) = dst {
            if dst == src {
                return Ok(());
            }
            let dst_i = self.inode(&st, dst)?;
            match (src_dir, dst_i.kind == FileKind::Dir) {
                (true, false) => return Err(libc::ENOTDIR),
                (false, true) => return Err(libc::EISDIR),
                (true, true) if !self.children(&st, dst)?.is_empty() => {
                    return Err(libc::ENOTEMPTY);
                }
                _ => {}
            }
            if dst_i.kind == FileKind::Dir {
                self.touch_dir(&mut st, &mut b, newparent, -1, now)?;
            }
            self.drop_link(&mut st, &mut b, dst, now)?;
        }
        self.remove_entry(&mut st, &mut b, parent, name)?;
        self.set_entry(&mut st, &mut b, newparent, newname, src)?;
        let mut src_i = self.inode(&st, src)?;
        src_i.ctime = now;
        if src_dir {
            src_i.parent = newparent;
        }
        self.put(&mut st, &mut b, src, src_i);
        let moved = i32::from(src_dir && parent != newparent);
        self.touch_dir(&mut st, &mut b, parent, -moved, now)?;
        if parent != newparent {
            self.touch_dir(&mut st, &mut b, newparent, moved, now)?;
        }
        self.commit(b)
    }

    // ---- attributes ----------------------------------------------------------------------

    pub fn setattr(&self, ino: u64, set: &SetAttr) -> Res<Attr> {
        let mut st = self.lock();
        let mut i = self.inode(&st, ino)?;
        let now = Ts::now();
        let mut b = Batch::default();
        if let Some(size) = set.size {
            if i.kind == FileKind::Dir {
                return Err(libc::EISDIR);
            }
            if i.kind != FileKind::File {
                return Err(libc::EINVAL);
            }
            self.truncate(&mut st, &mut b, ino, &mut i, size)?;
            i.mtime = now;
        }
        if let Some(mode) = set.mode {
            i.perm = (mode & 0o7777) as u16;
        }
        if let Some(uid) = set.uid {
            i.uid = uid;
        }
        if let Some(gid) = set.gid {
            i.gid = gid;
        }
        if let Some(t) = set.atime {
            i.atime = t;
        }
        if let Some(t) = set.mtime {
            i.mtime = t;
        }
        i.ctime = set.ctime.unwrap_or(now);
        let attr = self.attr_of(ino, &i);
        self.put(&mut st, &mut b, ino, i);
        self.commit(b)?;
        Ok(attr)
    }

    pub fn setxattr(&self, ino: u64, name: &[u8], value: &[u8], flags: i32) -> Res<()> {
        let mut st = self.lock();
        let mut i = self.inode(&st, ino)?;
        let at = i.xattrs.iter().position(|(n, _)| n == name);
        match at {
            Some(_) if flags & libc::XATTR_CREATE != 0 => return Err(libc::EEXIST),
            None if flags & libc::XATTR_REPLACE != 0 => return Err(libc::ENODATA),
            Some(k) => i.xattrs[k].1 = value.to_vec(),
            None => {
                i.xattrs.push((name.to_vec(), value.to_vec()));
                i.xattrs.sort();
            }
        }
        i.ctime = Ts::now();
        let mut b = Batch::default();
        self.put(&mut st, &mut b, ino, i);
        self.commit(b)
    }

    pub fn removexattr(&self, ino: u64, name: &[u8]) -> Res<()> {
        let mut st = self.lock();
        let mut i = self.inode(&st, ino)?;
        let k = i
            .xattrs
            .iter()
            .position(|(n, _)| n == name)
            .ok_or(libc::ENODATA)?;
        i.xattrs.remove(k);
        i.ctime = Ts::now();
        let mut b = Batch::default();
        self.put(&mut st, &mut b, ino, i);
        self.commit(b)
    }
}

/// Directory entries with their kinds.
pub type Listing = Vec<(Box<[u8]>, u64, FileKind)>;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layer::{Entry, Kind, LayerIndex};
    use crate::rwlayer::CHUNK;
    use std::os::unix::fs::MetadataExt;

    const ROOT: u64 = super::super::tree::ROOT_INO;
    const BIG: u64 = 1 << 20;
    const ME: Caller = Caller { uid: 0, gid: 0 };

    fn pattern(len: u64) -> Vec<u8> {
        (0..len).map(|i| (i % 251) as u8 + 1).collect()
    }

    fn entry(path: &str, kind: Kind) -> Entry {
        Entry {
            path: path.into(),
            kind,
            mode: 0o755,
            uid: 0,
            gid: 0,
            mtime: 1,
            mtime_nsec: 0,
            xattrs: vec![],
        }
    }

    /// A lower layer with `d/big` (1 MiB of a pattern) and an empty `d/sub/`, and a view over
    /// it whose writable layer is `dir/layer`.
    fn view(dir: &std::path::Path) -> View {
        let data = dir.join("lower");
        std::fs::create_dir_all(&data).unwrap();
        std::fs::write(data.join("0"), pattern(BIG)).unwrap();
        let dirk = || Kind::Dir {
            opaque: false,
            implicit: false,
        };
        let index = LayerIndex {
            entries: vec![
                entry("", dirk()),
                entry("d", dirk()),
                entry(
                    "d/big",
                    Kind::File {
                        size: BIG,
                        file: 0,
                        nlink: 1,
                    },
                ),
                entry("d/sub", dirk()),
            ],
            files: 1,
        };
        let layer = RwLayer::open(&dir.join("layer"), "test").unwrap();
        View::new(MergedTree::build(&[index]), vec![data], layer).unwrap()
    }

    fn ino(v: &View, path: &str) -> u64 {
        path.split('/')
            .fold(ROOT, |at, name| v.lookup(at, name.as_bytes()).unwrap().ino)
    }

    #[test]
    fn one_byte_write_copies_one_chunk_and_keeps_the_rest() {
        let tmp = tempfile::tempdir().unwrap();
        let v = view(tmp.path());
        let big = ino(&v, "d/big");
        v.write(big, 300_000, b"X").unwrap();
        let mut want = pattern(BIG);
        want[300_000] = b'X';
        assert_eq!(v.read(big, 0, BIG as u32).unwrap(), want);
        assert_eq!(
            v.getattr(big).unwrap().ino,
            big,
            "copy-up changed the inode number"
        );
        let backing = std::fs::metadata(v.layer.backing_path(big)).unwrap();
        assert!(
            backing.blocks() * 512 <= CHUNK,
            "copied {} bytes for a 1-byte write",
            backing.blocks() * 512
        );
    }

    #[test]
    fn truncate_down_then_up_reads_zeros_and_metadata_changes_copy_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let v = view(tmp.path());
        let big = ino(&v, "d/big");
        v.setattr(
            big,
            &SetAttr {
                mode: Some(0o600),
                ..Default::default()
            },
        )
        .unwrap();
        assert!(!v.layer.backing_path(big).exists(), "chmod copied data");
        v.setattr(
            big,
            &SetAttr {
                size: Some(1000),
                ..Default::default()
            },
        )
        .unwrap();
        v.setattr(
            big,
            &SetAttr {
                size: Some(5000),
                ..Default::default()
            },
        )
        .unwrap();
        let got = v.read(big, 0, 5000).unwrap();
        assert_eq!(&got[..1000], &pattern(1000)[..]);
        assert!(
            got[1000..].iter().all(|&b| b == 0),
            "old lower bytes came back after truncate"
        );
    }

    #[test]
    fn namespace_changes_survive_reopen_with_stable_inodes() {
        let tmp = tempfile::tempdir().unwrap();
        let (moved, big, new) = {
            let v = view(tmp.path());
            let d = ino(&v, "d");
            v.rename(ROOT, b"d", ROOT, b"moved", 0).unwrap();
            let f = v
                .make(ME, d, b"new", libc::S_IFREG | 0o644, 0, None)
                .unwrap();
            v.write(f.ino, 0, b"hello").unwrap();
            v.link(ino(&v, "moved/big"), ROOT, b"link").unwrap();
            assert_eq!(v.rmdir(d, b"sub"), Ok(()));
            assert_eq!(v.rmdir(ROOT, b"moved"), Err(libc::ENOTEMPTY));
            assert_eq!(
                v.rename(ROOT, b"moved", d, b"x", 0),
                Err(libc::EINVAL),
                "dir moved into itself"
            );
            v.sync_all().unwrap();
            (d, ino(&v, "moved/big"), f.ino)
        };
        let v = view(tmp.path());
        assert_eq!(ino(&v, "moved"), moved);
        assert_eq!(ino(&v, "link"), big);
        assert_eq!(v.getattr(big).unwrap().nlink, 2);
        assert_eq!(v.read(ino(&v, "moved/new"), 0, 100).unwrap(), b"hello");
        assert_eq!(ino(&v, "moved/new"), new);
        assert_eq!(v.lookup(ROOT, b"d"), Err(libc::ENOENT));
        assert_eq!(v.lookup(moved, b"sub"), Err(libc::ENOENT));
    }

    #[test]
    fn unlinked_open_file_lives_until_release() {
        let tmp = tempfile::tempdir().unwrap();
        let v = view(tmp.path());
        let f = v
            .make(ME, ROOT, b"tmp", libc::S_IFREG | 0o644, 0, None)
            .unwrap();
        v.write(f.ino, 0, b"data").unwrap();
        v.open(f.ino).unwrap();
        v.unlink(ROOT, b"tmp").unwrap();
        assert_eq!(v.getattr(f.ino).unwrap().nlink, 0);
        assert_eq!(v.read(f.ino, 0, 10).unwrap(), b"data");
        v.release(f.ino).unwrap();
        assert_eq!(v.getattr(f.ino), Err(libc::ENOENT));
        assert!(!v.layer.backing_path(f.ino).exists());
    }
}

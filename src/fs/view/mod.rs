//! The writable merged view: the immutable lower tree plus one writable layer, with the
//! POSIX semantics of every file system operation, as plain Rust (no FUSE types).
//!
//! Model. Every inode has one number for its whole life: lower inodes keep the number the
//! [`MergedTree`] gave them (also after copy-up), inodes created here get numbers from
//! [`FIRST_UPPER_INO`] up, never reused. A lower inode that changes gets a record in the
//! writable layer (metadata copy-up: no data is copied). A directory whose entries change is
//! *materialised*: its whole listing moves into the layer, so deletions need no whiteouts and
//! `rmdir` + `mkdir` is naturally opaque. File data is copied up per [`CHUNK`]: a lower file
//! being written keeps reading unchanged chunks from the lower layer. Small files keep their
//! bytes inline in their record (no backing file; an empty file has none either).
//!
//! State. All of it lives in memory (loaded in O(changes) at mount) under one mutex that is
//! held only for in-memory work: never across file data I/O or database reads and writes;
//! except small files' bytes, which stay in memory only while they change (`inline`). A change
//! marks its records dirty; `writeback` writes dirty records to the layer coalesced, as one
//! atomic batch per interval, and always before `fsync`, `fsyncdir`, `sync_all` and drop
//! return. Owns: overlay and POSIX semantics of the writable mount. Never writes a lower layer.
//!
//! [`CHUNK`]: crate::rwlayer::CHUNK

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};

use libc::c_int;
use tracing::warn;

mod data;
mod host;
mod inline;
mod names;
pub mod setid;
mod writeback;

use super::tree::{MergedTree, Node, NodeKind};
use crate::rwlayer::{Data, FIRST_UPPER_INO, FileKind, Inode, RwError, RwLayer, Ts};
pub use host::{HostFile, HostStamp};
use writeback::Dirty;

/// An errno value.
pub type Errno = c_int;
pub type Res<T> = Result<T, Errno>;

const MAX_NAME: usize = 255;

/// Files up to this size keep their bytes in their inode record. sled writes a log message
/// larger than a quarter of its 512 KiB segment as a separate blob file; a leaf node holds up
/// to 17 records, so at 4 KiB a whole leaf (~72 KiB) stays in the log.
pub const INLINE_MAX: u64 = 4096;

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
    /// The kernel's references (lookup counts: `remember`/`forget`; an open file is one it
    /// references): an unlinked inode lives until they are gone.
    lookups: HashMap<u64, u64>,
    /// Records changed in memory and not yet written to the layer.
    dirty: Dirty,
    /// Inline files whose bytes are only in the layer (see `inline`), with the eviction that
    /// dropped them from memory; `evictions` counts those.
    stored: HashMap<u64, u64>,
    evictions: u64,
}

/// The writable merged view of one mount.
pub struct View {
    /// Shared with other views of the same lower chain in this process (see `fs::TreeCache`).
    lower: Arc<MergedTree>,
    lower_data: Vec<PathBuf>,
    layer: RwLayer,
    st: Mutex<State>,
    /// Open backing files, so reads and writes do not open(2) per request.
    files: Mutex<HashMap<u64, Arc<File>>>,
    /// Held by whoever writes dirty records to the layer, so batches land in order; counts
    /// the bytes written since the allocator was last trimmed (see `writeback`).
    flushing: Mutex<u64>,
    /// Wakes the write-behind thread early (see `writeback::BATCH_KEYS`).
    wake: Arc<writeback::Wake>,
    /// Backing files of freed inodes, deleted once their records' removal is durable.
    dead: Mutex<writeback::DeadFiles>,
}

/// The view's state, locked. Unlocking wakes the write-behind thread once enough records are
/// dirty, so batches stay small.
struct Locked<'a> {
    st: MutexGuard<'a, State>,
    wake: &'a writeback::Wake,
}

impl std::ops::Deref for Locked<'_> {
    type Target = State;
    fn deref(&self) -> &State {
        &self.st
    }
}

impl std::ops::DerefMut for Locked<'_> {
    fn deref_mut(&mut self) -> &mut State {
        &mut self.st
    }
}

impl Drop for Locked<'_> {
    fn drop(&mut self) {
        if self.st.dirty.wake_writer() {
            self.wake.notify();
        }
    }
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
        RwError::Database { why, .. } if why.contains("No space left") => libc::ENOSPC,
        other => {
            warn!(error = %other, "writable layer failure");
            libc::EIO
        }
    }
}

fn attr_of_inode(ino: u64, i: &Inode) -> Attr {
    Attr {
        blocks: if i.kind == FileKind::File {
            i.size.div_ceil(512)
        } else {
            0
        },
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

fn attr_of_node(ino: u64, n: &Node) -> Attr {
    let t = Ts {
        sec: n.mtime,
        nsec: n.mtime_nsec,
    };
    let kind = kind_of_node(&n.kind);
    Attr {
        ino,
        blocks: if kind == FileKind::File {
            n.size.div_ceil(512)
        } else {
            0
        },
        kind,
        perm: n.perm,
        nlink: n.nlink,
        uid: n.uid,
        gid: n.gid,
        size: n.size,
        rdev: match n.kind {
            NodeKind::CharDev { rdev } | NodeKind::BlockDev { rdev } => rdev,
            _ => 0,
        },
        atime: t,
        mtime: t,
        ctime: t,
    }
}

impl View {
    /// Opens the view of `lower` (whose data files are in `lower_data[layer]`) with `layer`.
    pub fn new(
        lower: impl Into<Arc<MergedTree>>,
        lower_data: Vec<PathBuf>,
        layer: RwLayer,
    ) -> Result<Self, RwError> {
        let l = layer.load()?;
        let v = View {
            lower: lower.into(),
            lower_data,
            layer,
            st: Mutex::new(State {
                inodes: l.inodes,
                dirs: l.dirs,
                chunks: l.chunks,
                next_ino: l.next_ino,
                lookups: HashMap::new(),
                dirty: Dirty::default(),
                stored: l.inline_left.into_iter().map(|ino| (ino, 0)).collect(),
                evictions: 0,
            }),
            files: Mutex::new(HashMap::new()),
            flushing: Mutex::new(0),
            wake: Arc::default(),
            dead: Mutex::default(),
        };
        v.collect_garbage()?;
        Ok(v)
    }

    fn lock(&self) -> Locked<'_> {
        Locked {
            st: self.st.lock().unwrap_or_else(|e| e.into_inner()),
            wake: &self.wake,
        }
    }

    fn lower_node(&self, ino: u64) -> Option<&Node> {
        if ino >= FIRST_UPPER_INO {
            None
        } else {
            self.lower.get(ino)
        }
    }

    /// The record of `ino`: the layer's if it has one, else made from the lower node. Clones:
    /// for changes; queries use [`attr`](Self::attr) and friends.
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

    /// The kind of `ino`, without copying its record.
    fn kind(&self, st: &State, ino: u64) -> Res<FileKind> {
        match st.inodes.get(&ino) {
            Some(i) => Ok(i.kind),
            None => self
                .lower_node(ino)
                .map(|n| kind_of_node(&n.kind))
                .ok_or(libc::ENOENT),
        }
    }

    /// `stat` of `ino` under the lock; `true` when its blocks must come from the backing file
    /// (see [`finish_attr`](Self::finish_attr), outside the lock).
    fn attr(&self, st: &State, ino: u64) -> Res<(Attr, bool)> {
        if let Some(i) = st.inodes.get(&ino) {
            let backing = i.kind == FileKind::File && i.data == Data::Backing;
            return Ok((attr_of_inode(ino, i), backing));
        }
        let n = self.lower_node(ino).ok_or(libc::ENOENT)?;
        Ok((attr_of_node(ino, n), false))
    }

    /// 512-byte blocks allocated, for files wholly in their backing file: the file's own, so
    /// sparse files stay sparse for `du`, `cp --sparse`, `tar -S`.
    fn finish_attr(&self, (mut a, backing): (Attr, bool)) -> Attr {
        if backing
            && let Ok(f) = self.backing(a.ino)
            && let Ok(m) = f.metadata()
        {
            a.blocks = std::os::unix::fs::MetadataExt::blocks(&m);
        }
        a
    }

    fn child(&self, st: &State, dir: u64, name: &[u8]) -> Res<Option<u64>> {
        if let Some(entries) = st.dirs.get(&dir) {
            return Ok(entries.get(name).copied());
        }
        if let Some(d) = st.inodes.get(&dir) {
            if d.kind != FileKind::Dir {
                return Err(libc::ENOTDIR);
            }
            if d.materialized {
                return Ok(None);
            }
        }
        let n = self.lower_node(dir).ok_or(libc::ENOENT)?;
        match n.kind {
            NodeKind::Dir { .. } => Ok(n.child(name)),
            _ => Err(libc::ENOTDIR),
        }
    }

    fn children(&self, st: &State, dir: u64) -> Res<Vec<(Box<[u8]>, u64)>> {
        if let Some(entries) = st.dirs.get(&dir) {
            return Ok(entries.iter().map(|(n, &i)| (n.clone(), i)).collect());
        }
        if let Some(d) = st.inodes.get(&dir) {
            if d.kind != FileKind::Dir {
                return Err(libc::ENOTDIR);
            }
            if d.materialized {
                return Ok(vec![]);
            }
        }
        match self.lower_node(dir).map(|n| &n.kind) {
            Some(NodeKind::Dir { children }) => Ok(children.to_vec()),
            Some(_) => Err(libc::ENOTDIR),
            None => Err(libc::ENOENT),
        }
    }

    /// Whether directory `dir` has no entries.
    fn is_empty_dir(&self, st: &State, dir: u64) -> Res<bool> {
        if let Some(entries) = st.dirs.get(&dir) {
            return Ok(entries.is_empty());
        }
        if st.inodes.get(&dir).is_some_and(|d| d.materialized) {
            return Ok(true);
        }
        match self.lower_node(dir).map(|n| &n.kind) {
            Some(NodeKind::Dir { children }) => Ok(children.is_empty()),
            Some(_) => Err(libc::ENOTDIR),
            None => Ok(true),
        }
    }

    /// The parent of directory `dir`.
    fn parent_of(&self, st: &State, dir: u64) -> Res<u64> {
        match st.inodes.get(&dir) {
            Some(i) => Ok(i.parent),
            None => Ok(self.lower_node(dir).ok_or(libc::ENOENT)?.parent),
        }
    }

    /// The layer's record of `ino` to change in place (copied up from the lower node the first
    /// time), marked dirty.
    fn record_mut<'a>(&self, st: &'a mut State, ino: u64) -> Res<&'a mut Inode> {
        if !st.inodes.contains_key(&ino) {
            let i = self.inode(st, ino)?;
            st.inodes.insert(ino, i);
        }
        st.dirty.inode(ino);
        st.inodes.get_mut(&ino).ok_or(libc::ENOENT)
    }

    /// Saves `i` as the layer's record of `ino`.
    fn put(&self, st: &mut State, ino: u64, i: Inode) {
        st.dirty.inode(ino);
        st.inodes.insert(ino, i);
    }

    /// Moves a directory's listing into the layer (once), so its entries can change.
    fn materialize(&self, st: &mut State, dir: u64) -> Res<()> {
        if st.dirs.contains_key(&dir) {
            return Ok(());
        }
        let entries = self.children(st, dir)?;
        let mut d = self.inode(st, dir)?;
        let mut map = BTreeMap::new();
        for (name, ino) in entries {
            st.dirty.dirent(dir, &name);
            map.insert(name, ino);
        }
        st.dirs.insert(dir, map);
        d.materialized = true;
        self.put(st, dir, d);
        Ok(())
    }

    fn set_entry(&self, st: &mut State, dir: u64, name: &[u8], ino: u64) -> Res<()> {
        self.materialize(st, dir)?;
        st.dirty.dirent(dir, name);
        st.dirs.entry(dir).or_default().insert(name.into(), ino);
        Ok(())
    }

    fn remove_entry(&self, st: &mut State, dir: u64, name: &[u8]) -> Res<()> {
        self.materialize(st, dir)?;
        st.dirty.dirent(dir, name);
        if let Some(d) = st.dirs.get_mut(&dir) {
            d.remove(name);
        }
        Ok(())
    }

    /// mtime and ctime of a directory whose entries changed; `nlink_delta` for subdirectories.
    fn touch_dir(&self, st: &mut State, dir: u64, nlink_delta: i32, now: Ts) -> Res<()> {
        let d = self.record_mut(st, dir)?;
        d.mtime = now;
        d.ctime = now;
        d.nlink = d.nlink.saturating_add_signed(nlink_delta).max(2);
        Ok(())
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
        let a = {
            let st = self.lock();
            let ino = self.child(&st, parent, name)?.ok_or(libc::ENOENT)?;
            self.attr(&st, ino)?
        };
        Ok(self.finish_attr(a))
    }

    pub fn getattr(&self, ino: u64) -> Res<Attr> {
        let a = self.attr(&self.lock(), ino)?;
        Ok(self.finish_attr(a))
    }

    pub fn readlink(&self, ino: u64) -> Res<Vec<u8>> {
        let st = self.lock();
        if let Some(i) = st.inodes.get(&ino) {
            return match i.kind {
                FileKind::Symlink => Ok(i.target.clone()),
                _ => Err(libc::EINVAL),
            };
        }
        match self.lower_node(ino).map(|n| &n.kind) {
            Some(NodeKind::Symlink { target }) => Ok(target.to_vec()),
            Some(_) => Err(libc::EINVAL),
            None => Err(libc::ENOENT),
        }
    }

    /// The entries of a directory (without `.` and `..`), with their kinds, and its parent.
    pub fn readdir(&self, dir: u64) -> Res<(u64, Listing)> {
        let st = self.lock();
        let parent = match st.inodes.get(&dir) {
            Some(d) if d.kind != FileKind::Dir => return Err(libc::ENOTDIR),
            Some(d) => d.parent,
            None => self.lower_node(dir).ok_or(libc::ENOENT)?.parent,
        };
        let mut out = Vec::new();
        for (name, ino) in self.children(&st, dir)? {
            let kind = self.kind(&st, ino).unwrap_or(FileKind::File);
            out.push((name, ino, kind));
        }
        let parent = if dir == super::tree::ROOT_INO {
            dir
        } else {
            parent
        };
        Ok((parent, out))
    }

    /// Runs `f` on the extended attributes of `ino`, without copying them.
    fn with_xattrs<R>(
        &self,
        ino: u64,
        f: impl FnOnce(&mut dyn Iterator<Item = (&[u8], &[u8])>) -> R,
    ) -> Res<R> {
        let st = self.lock();
        if let Some(i) = st.inodes.get(&ino) {
            return Ok(f(&mut i.xattrs.iter().map(|(k, v)| (&k[..], &v[..]))));
        }
        let n = self.lower_node(ino).ok_or(libc::ENOENT)?;
        Ok(f(&mut n.xattrs.iter().map(|(k, v)| (&k[..], &v[..]))))
    }

    pub fn getxattr(&self, ino: u64, name: &[u8]) -> Res<Vec<u8>> {
        self.with_xattrs(ino, |it| {
            let mut found = None;
            for (n, v) in it {
                if n == name {
                    found = Some(v.to_vec());
                    break;
                }
            }
            found
        })?
        .ok_or(libc::ENODATA)
    }

    pub fn listxattr(&self, ino: u64) -> Res<Vec<u8>> {
        self.with_xattrs(ino, |it| {
            let mut out = Vec::new();
            for (n, _) in it {
                out.extend_from_slice(n);
                out.push(0);
            }
            out
        })
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
}

/// Directory entries with their kinds.
pub type Listing = Vec<(Box<[u8]>, u64, FileKind)>;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layer::LayerIndex;
    use crate::layer::fixtures;
    use crate::rwlayer::CHUNK;
    use std::os::unix::fs::MetadataExt;

    pub(super) const ROOT: u64 = super::super::tree::ROOT_INO;
    const BIG: u64 = 1 << 20;
    pub(super) const ME: Caller = Caller { uid: 0, gid: 0 };

    pub(super) fn pattern(len: u64) -> Vec<u8> {
        (0..len).map(|i| (i % 251) as u8 + 1).collect()
    }

    /// A lower layer with `d/big` (1 MiB of a pattern) and an empty `d/sub/`, and a view over
    /// it whose writable layer is `dir/layer`.
    pub(super) fn view(dir: &std::path::Path) -> View {
        let data = dir.join("lower");
        std::fs::create_dir_all(&data).unwrap();
        std::fs::write(data.join("0"), pattern(BIG)).unwrap();
        let index = LayerIndex {
            entries: vec![
                fixtures::dir(""),
                fixtures::dir("d"),
                fixtures::file("d/big", BIG, 0),
                fixtures::dir("d/sub"),
            ],
            files: 1,
        };
        let layer = RwLayer::open(&dir.join("layer"), "test").unwrap();
        View::new(MergedTree::build(&[index]), vec![data], layer).unwrap()
    }

    pub(super) fn ino(v: &View, path: &str) -> u64 {
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
    fn unlinked_open_file_lives_until_the_kernel_forgets_it() {
        let tmp = tempfile::tempdir().unwrap();
        let v = view(tmp.path());
        let f = v
            .make(ME, ROOT, b"tmp", libc::S_IFREG | 0o644, 0, None)
            .unwrap();
        let data = pattern(3 * INLINE_MAX);
        v.write(f.ino, 0, &data).unwrap();
        // The entry reply the kernel got (and holds while the file is open).
        v.remember(&[f.ino]);
        v.unlink(ROOT, b"tmp").unwrap();
        assert_eq!(v.getattr(f.ino).unwrap().nlink, 0);
        assert_eq!(v.read(f.ino, 0, 1 << 20).unwrap(), data);
        v.forget(&[(f.ino, 1)]);
        assert_eq!(v.getattr(f.ino), Err(libc::ENOENT));
        v.sync_all().unwrap();
        assert!(!v.layer.backing_path(f.ino).exists());
    }

    #[test]
    fn small_files_stay_inline_until_they_outgrow_it() {
        let tmp = tempfile::tempdir().unwrap();
        let (small, grown, empty) = {
            let v = view(tmp.path());
            let mk = |n: &[u8]| v.make(ME, ROOT, n, libc::S_IFREG | 0o644, 0, None).unwrap();
            let (small, grown, empty) = (mk(b"small").ino, mk(b"grown").ino, mk(b"empty").ino);
            v.write(small, 0, b"hello").unwrap();
            v.write(small, 10, b"!").unwrap();
            v.write(grown, 0, b"head").unwrap();
            v.write(grown, INLINE_MAX, b"tail").unwrap();
            let gone = mk(b"gone").ino;
            v.write(gone, 0, &pattern(2 * INLINE_MAX)).unwrap();
            v.unlink(ROOT, b"gone").unwrap();
            v.sync_all().unwrap();
            for ino in [small, empty, gone] {
                assert!(
                    !v.layer.backing_path(ino).exists(),
                    "inode {ino} has a file"
                );
            }
            assert!(v.layer.backing_path(grown).exists());
            (small, grown, empty)
        };
        let v = view(tmp.path());
        assert_eq!(v.read(small, 0, 100).unwrap(), b"hello\0\0\0\0\0!");
        let g = v.read(grown, 0, 1 << 20).unwrap();
        assert_eq!(g.len() as u64, INLINE_MAX + 4);
        assert_eq!(&g[..4], b"head");
        assert!(g[4..INLINE_MAX as usize].iter().all(|&b| b == 0));
        assert_eq!(&g[INLINE_MAX as usize..], b"tail");
        assert_eq!(v.getattr(empty).unwrap().size, 0);
        assert_eq!(v.lookup(ROOT, b"gone"), Err(libc::ENOENT));
    }
}

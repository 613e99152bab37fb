//! The FUSE adapter for a read-only merged view: translates kernel requests into lookups on
//! the [`MergedTree`] and reads of layer data files.
//!
//! Thin by intent: no overlay logic lives here (that is `tree`). Regular files are served by
//! FUSE passthrough (the kernel reads the layer's data file directly) when the kernel allows
//! it, by `pread` otherwise. Every request that would modify anything gets `EROFS`.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::File;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{
    AccessFlags, BackingId, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags,
    Generation, INodeNo, InitFlags, KernelConfig, LockOwner, OpenFlags, RenameFlags, ReplyAttr,
    ReplyCreate, ReplyData, ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyOpen,
    ReplyStatfs, ReplyWrite, ReplyXattr, Request, TimeOrNow, WriteFlags,
};
use tracing::{debug, instrument, warn};

use super::tree::{MergedTree, Node, NodeKind};

/// Layers are immutable, so the kernel may cache names and attributes for as long as it likes.
const TTL: Duration = Duration::from_secs(365 * 24 * 3600);
/// Backing files kept registered with the kernel after their last close, so re-opening a hot
/// file costs no `open` + ioctl (each costs the kernel one `struct file`, about 1 KiB).
const BACKING_CACHE: usize = 64 * 1024;
/// Data files kept open for userspace reads (these count against the daemon's open-files
/// limit, unlike passthrough registrations).
const OPEN_FILES: usize = 1024;
const MAX_NAME: usize = 255;
const READAHEAD: u32 = 1 << 20;

/// How regular files are opened and read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpenMode {
    /// FUSE passthrough: the kernel reads the layer's data file itself (one OPEN round trip
    /// per open, no data through userspace). Falls back to `Cached` where refused.
    Passthrough,
    /// Opens are answered, reads are served with `pread` and kept in the page cache.
    Cached,
    /// OPEN is answered with ENOSYS once, so the kernel never asks again: an open costs no
    /// round trip and warm reads come from the page cache; cold reads go through userspace.
    NoOpen,
}

#[derive(Default)]
struct Backings {
    /// Live registrations by inode: the kernel wants one backing file per inode.
    by_ino: HashMap<u64, Weak<BackingId>>,
    /// Strong references to recently used ones.
    recent: HashMap<u64, Arc<BackingId>>,
}

/// Counters a test (or a curious user) can read while the mount is live.
#[derive(Debug, Default)]
pub struct FsStats {
    /// The kernel accepted FUSE passthrough at INIT.
    pub passthrough: AtomicBool,
    /// Opens served by passthrough.
    pub passthrough_opens: AtomicU64,
    /// READ requests served from userspace.
    pub plain_reads: AtomicU64,
}

/// The read-only file system of one mount.
pub struct ReadOnlyFs {
    /// Shared with other mounts of the same chain in this process (see `fs::TreeCache`).
    tree: Arc<MergedTree>,
    /// `data_dirs[layer]` holds that layer's data files.
    data_dirs: Vec<PathBuf>,
    /// Passthrough registrations of open handles.
    handles: Mutex<HashMap<u64, Arc<BackingId>>>,
    next_fh: AtomicU64,
    backings: Mutex<Backings>,
    /// Data files opened for userspace reads, by inode.
    files: Mutex<HashMap<u64, Arc<File>>>,
    mode: OpenMode,
    stats: Arc<FsStats>,
}

impl ReadOnlyFs {
    pub fn new(tree: impl Into<Arc<MergedTree>>, data_dirs: Vec<PathBuf>) -> Self {
        Self {
            tree: tree.into(),
            data_dirs,
            handles: Mutex::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
            backings: Mutex::new(Backings::default()),
            files: Mutex::new(HashMap::new()),
            mode: OpenMode::Passthrough,
            stats: Arc::default(),
        }
    }

    pub fn with_mode(mut self, mode: OpenMode) -> Self {
        self.mode = mode;
        self
    }

    /// The data file of `ino` for a userspace read.
    fn plain_file(&self, ino: u64) -> Result<Option<Arc<File>>, Errno> {
        let mut files = self.files.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(f) = files.get(&ino) {
            return Ok(Some(f.clone()));
        }
        let n = self.tree.get(ino).ok_or(Errno::ENOENT)?;
        let Some(path) = self.data_file(n) else {
            return Ok(None);
        };
        let f = Arc::new(File::open(path)?);
        if files.len() >= OPEN_FILES {
            files.clear();
        }
        files.insert(ino, f.clone());
        Ok(Some(f))
    }

    pub fn stats(&self) -> Arc<FsStats> {
        self.stats.clone()
    }

    fn node(&self, ino: INodeNo) -> Result<&Node, Errno> {
        self.tree.get(ino.0).ok_or(Errno::ENOENT)
    }

    fn attr(&self, ino: u64, n: &Node) -> FileAttr {
        let t = to_time(n.mtime, n.mtime_nsec);
        FileAttr {
            ino: INodeNo(ino),
            size: n.size,
            blocks: n.size.div_ceil(512),
            atime: t,
            mtime: t,
            ctime: t,
            crtime: t,
            kind: file_type(&n.kind),
            perm: n.perm,
            nlink: n.nlink,
            uid: n.uid,
            gid: n.gid,
            rdev: match n.kind {
                NodeKind::CharDev { rdev } | NodeKind::BlockDev { rdev } => rdev,
                _ => 0,
            },
            blksize: 4096,
            flags: 0,
        }
    }

    /// `.`, `..` and the children of directory `ino` from readdir offset `offset` on, each with
    /// the offset of the entry after it.
    fn listing(
        &self,
        ino: INodeNo,
        offset: u64,
    ) -> Result<impl Iterator<Item = (u64, &[u8], u64)> + '_, Errno> {
        let n = self.node(ino)?;
        let NodeKind::Dir { children } = &n.kind else {
            return Err(Errno::ENOTDIR);
        };
        let dots = [(&b"."[..], ino.0), (&b".."[..], n.parent)];
        Ok(dots
            .into_iter()
            .chain(children.iter().map(|(name, c)| (name.as_ref(), *c)))
            .enumerate()
            .skip(usize::try_from(offset).unwrap_or(usize::MAX))
            .map(|(i, (name, child))| (i as u64 + 1, name, child)))
    }

    fn data_file(&self, n: &Node) -> Option<PathBuf> {
        let NodeKind::File { file: Some(file) } = n.kind else {
            return None;
        };
        Some(self.data_dirs.get(n.layer as usize)?.join(file.to_string()))
    }

    /// The kernel registration of `ino`'s data file, shared by all its open handles.
    fn backing(
        &self,
        reply: &ReplyOpen,
        ino: u64,
        path: &PathBuf,
    ) -> std::io::Result<Arc<BackingId>> {
        let mut b = self.backings.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(id) = b.by_ino.get(&ino).and_then(Weak::upgrade) {
            return Ok(id);
        }
        let file = File::open(path)?;
        let id = Arc::new(reply.open_backing(&file)?);
        if b.recent.len() >= BACKING_CACHE {
            b.recent.clear();
            b.by_ino.retain(|_, w| w.strong_count() > 0);
        }
        b.by_ino.insert(ino, Arc::downgrade(&id));
        b.recent.insert(ino, id.clone());
        Ok(id)
    }

    fn new_fh(&self, h: Arc<BackingId>) -> FileHandle {
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        self.handles
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(fh, h);
        FileHandle(fh)
    }
}

fn file_type(k: &NodeKind) -> FileType {
    match k {
        NodeKind::Dir { .. } => FileType::Directory,
        NodeKind::File { .. } => FileType::RegularFile,
        NodeKind::Symlink { .. } => FileType::Symlink,
        NodeKind::Fifo => FileType::NamedPipe,
        NodeKind::Socket => FileType::Socket,
        NodeKind::CharDev { .. } => FileType::CharDevice,
        NodeKind::BlockDev { .. } => FileType::BlockDevice,
    }
}

pub(super) fn to_time(sec: i64, nsec: u32) -> SystemTime {
    if sec >= 0 {
        UNIX_EPOCH + Duration::new(sec as u64, nsec)
    } else {
        UNIX_EPOCH - Duration::from_secs(sec.unsigned_abs()) + Duration::from_nanos(nsec as u64)
    }
}

/// Replies to a getxattr/listxattr-style request for `value`.
pub(super) fn reply_sized(reply: ReplyXattr, size: u32, value: &[u8]) {
    if size == 0 {
        reply.size(value.len() as u32);
    } else if (size as usize) < value.len() {
        reply.error(Errno::ERANGE);
    } else {
        reply.data(value);
    }
}

impl Filesystem for ReadOnlyFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        let _ = config.set_max_readahead(READAHEAD);
        let _ = config.set_max_write(READAHEAD);
        let wanted = InitFlags::FUSE_DO_READDIRPLUS
            | InitFlags::FUSE_READDIRPLUS_AUTO
            | InitFlags::FUSE_CACHE_SYMLINKS
            | InitFlags::FUSE_PARALLEL_DIROPS
            | InitFlags::FUSE_MAX_PAGES;
        let _ = config.add_capabilities(wanted & config.capabilities());
        if self.mode == OpenMode::Passthrough
            && config.capabilities().contains(InitFlags::FUSE_PASSTHROUGH)
            && config.add_capabilities(InitFlags::FUSE_PASSTHROUGH).is_ok()
            && config.set_max_stack_depth(1).is_ok()
        {
            self.stats.passthrough.store(true, Ordering::Relaxed);
        }
        debug!(
            passthrough = self.stats.passthrough.load(Ordering::Relaxed),
            inodes = self.tree.len(),
            "init"
        );
        Ok(())
    }

    #[instrument(level = "debug", skip_all, fields(parent = parent.0, name = ?name))]
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        if name.len() > MAX_NAME {
            return reply.error(Errno::ENAMETOOLONG);
        }
        let found = self.node(parent).and_then(|p| {
            if !p.is_dir() {
                return Err(Errno::ENOTDIR);
            }
            p.child(name.as_bytes()).ok_or(Errno::ENOENT)
        });
        match found {
            Ok(ino) => match self.tree.get(ino) {
                Some(n) => reply.entry(&TTL, &self.attr(ino, n), Generation(0)),
                None => reply.error(Errno::EIO),
            },
            // A negative entry may be cached as long as a positive one: nothing ever appears.
            Err(e) => reply.error(e),
        }
    }

    #[instrument(level = "debug", skip_all, fields(ino = ino.0))]
    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.node(ino) {
            Ok(n) => reply.attr(&TTL, &self.attr(ino.0, n)),
            Err(e) => reply.error(e),
        }
    }

    #[instrument(level = "debug", skip_all, fields(ino = ino.0))]
    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        match self.node(ino) {
            Ok(Node {
                kind: NodeKind::Symlink { target },
                ..
            }) => reply.data(target),
            Ok(_) => reply.error(Errno::EINVAL),
            Err(e) => reply.error(e),
        }
    }

    #[instrument(level = "debug", skip_all, fields(ino = ino.0))]
    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let raw = flags.0;
        if raw & libc::O_ACCMODE != libc::O_RDONLY || raw & libc::O_TRUNC != 0 {
            return reply.error(Errno::EROFS);
        }
        if self.mode == OpenMode::NoOpen {
            return reply.error(Errno::ENOSYS);
        }
        let n = match self.node(ino) {
            Ok(n) => n,
            Err(e) => return reply.error(e),
        };
        let keep = FopenFlags::FOPEN_KEEP_CACHE | FopenFlags::FOPEN_NOFLUSH;
        let Some(path) = self.data_file(n) else {
            // Empty file (or a special file opened through the mount): nothing to read.
            return reply.opened(FileHandle(0), keep);
        };
        if self.stats.passthrough.load(Ordering::Relaxed) {
            match self.backing(&reply, ino.0, &path) {
                Ok(id) => {
                    let fh = self.new_fh(id.clone());
                    self.stats.passthrough_opens.fetch_add(1, Ordering::Relaxed);
                    // No FOPEN_KEEP_CACHE here: the kernel refuses it with passthrough (EIO on
                    // read); the backing file's own page cache does that job.
                    return reply.opened_passthrough(fh, FopenFlags::FOPEN_NOFLUSH, &id);
                }
                Err(e) => {
                    warn!(error = %e, "FUSE passthrough refused; serving reads from userspace");
                    self.stats.passthrough.store(false, Ordering::Relaxed);
                }
            }
        }
        reply.opened(FileHandle(0), keep)
    }

    #[instrument(level = "debug", skip_all, fields(ino = ino.0, offset, size))]
    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let _ = fh;
        let f = match self.plain_file(ino.0) {
            Ok(Some(f)) => f,
            Ok(None) => return reply.data(&[]),
            Err(e) => return reply.error(e),
        };
        self.stats.plain_reads.fetch_add(1, Ordering::Relaxed);
        let mut buf = vec![0u8; size as usize];
        let mut got = 0;
        while got < buf.len() {
            match f.read_at(&mut buf[got..], offset + got as u64) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return reply.error(e.into()),
            }
        }
        reply.data(&buf[..got]);
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.handles
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&fh.0);
        reply.ok();
    }

    #[instrument(level = "debug", skip_all)]
    fn opendir(&self, _req: &Request, _ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        // Directories need no handle: ENOSYS once tells the kernel to stop sending OPENDIR
        // (and RELEASEDIR) and to keep their listings cached, so a warm walk of the tree
        // costs no round trip at all.
        reply.error(Errno::ENOSYS);
    }

    #[instrument(level = "debug", skip_all, fields(ino = ino.0, offset))]
    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let entries = match self.listing(ino, offset) {
            Ok(e) => e,
            Err(e) => return reply.error(e),
        };
        for (next, name, child) in entries {
            let kind = self
                .tree
                .get(child)
                .map(|c| file_type(&c.kind))
                .unwrap_or(FileType::Directory);
            if reply.add(INodeNo(child), next, kind, OsStr::from_bytes(name)) {
                break;
            }
        }
        reply.ok();
    }

    #[instrument(level = "debug", skip_all, fields(ino = ino.0, offset))]
    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        let entries = match self.listing(ino, offset) {
            Ok(e) => e,
            Err(e) => return reply.error(e),
        };
        for (next, name, child) in entries {
            let Some(c) = self.tree.get(child) else {
                continue;
            };
            let attr = self.attr(child, c);
            if reply.add(
                INodeNo(child),
                next,
                OsStr::from_bytes(name),
                &TTL,
                &attr,
                Generation(0),
            ) {
                break;
            }
        }
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let (blocks, bsize) = match self.data_dirs.first().map(rustix::fs::statvfs) {
            Some(Ok(s)) => (s.f_blocks, s.f_frsize as u32),
            _ => (0, 4096),
        };
        reply.statfs(
            blocks,
            0,
            0,
            self.tree.len() as u64,
            0,
            bsize,
            MAX_NAME as u32,
            bsize,
        );
    }

    #[instrument(level = "debug", skip_all, fields(ino = ino.0, name = ?name))]
    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        match self.node(ino) {
            Ok(n) => match n.xattr(name.as_bytes()) {
                Some(v) => reply_sized(reply, size, v),
                None => reply.error(Errno::ENODATA),
            },
            Err(e) => reply.error(e),
        }
    }

    #[instrument(level = "debug", skip_all, fields(ino = ino.0))]
    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        match self.node(ino) {
            Ok(n) => {
                let mut list = Vec::new();
                for (name, _) in n.xattrs.iter() {
                    list.extend_from_slice(name);
                    list.push(0);
                }
                reply_sized(reply, size, &list)
            }
            Err(e) => reply.error(e),
        }
    }

    fn access(&self, _req: &Request, ino: INodeNo, mask: AccessFlags, reply: ReplyEmpty) {
        match self.node(ino) {
            Ok(_) if mask.contains(AccessFlags::W_OK) => reply.error(Errno::EROFS),
            Ok(_) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    // Everything below would modify the view: a read-only mount refuses it.

    fn setattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        _size: Option<u64>,
        _atime: Option<TimeOrNow>,
        _mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        reply.error(Errno::EROFS);
    }
    fn mknod(
        &self,
        _r: &Request,
        _p: INodeNo,
        _n: &OsStr,
        _m: u32,
        _u: u32,
        _d: u32,
        reply: ReplyEntry,
    ) {
        reply.error(Errno::EROFS);
    }
    fn mkdir(&self, _r: &Request, _p: INodeNo, _n: &OsStr, _m: u32, _u: u32, reply: ReplyEntry) {
        reply.error(Errno::EROFS);
    }
    fn unlink(&self, _r: &Request, _p: INodeNo, _n: &OsStr, reply: ReplyEmpty) {
        reply.error(Errno::EROFS);
    }
    fn rmdir(&self, _r: &Request, _p: INodeNo, _n: &OsStr, reply: ReplyEmpty) {
        reply.error(Errno::EROFS);
    }
    fn symlink(
        &self,
        _r: &Request,
        _p: INodeNo,
        _n: &OsStr,
        _t: &std::path::Path,
        reply: ReplyEntry,
    ) {
        reply.error(Errno::EROFS);
    }
    fn rename(
        &self,
        _r: &Request,
        _p: INodeNo,
        _n: &OsStr,
        _np: INodeNo,
        _nn: &OsStr,
        _f: RenameFlags,
        reply: ReplyEmpty,
    ) {
        reply.error(Errno::EROFS);
    }
    fn link(&self, _r: &Request, _i: INodeNo, _np: INodeNo, _nn: &OsStr, reply: ReplyEntry) {
        reply.error(Errno::EROFS);
    }
    fn write(
        &self,
        _r: &Request,
        _i: INodeNo,
        _fh: FileHandle,
        _o: u64,
        _d: &[u8],
        _wf: WriteFlags,
        _f: OpenFlags,
        _l: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        reply.error(Errno::EROFS);
    }
    fn create(
        &self,
        _r: &Request,
        _p: INodeNo,
        _n: &OsStr,
        _m: u32,
        _u: u32,
        _f: i32,
        reply: ReplyCreate,
    ) {
        reply.error(Errno::EROFS);
    }
    fn setxattr(
        &self,
        _r: &Request,
        _i: INodeNo,
        _n: &OsStr,
        _v: &[u8],
        _f: i32,
        _p: u32,
        reply: ReplyEmpty,
    ) {
        reply.error(Errno::EROFS);
    }
    fn removexattr(&self, _r: &Request, _i: INodeNo, _n: &OsStr, reply: ReplyEmpty) {
        reply.error(Errno::EROFS);
    }
    fn fallocate(
        &self,
        _r: &Request,
        _i: INodeNo,
        _fh: FileHandle,
        _o: u64,
        _l: u64,
        _m: i32,
        reply: ReplyEmpty,
    ) {
        reply.error(Errno::EROFS);
    }
}

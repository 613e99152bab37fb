//! The FUSE adapter for a writable merged view: each request becomes one call on [`View`].
//!
//! Nothing here decides semantics; it converts types, keeps the listings of directories
//! being read (`listing`), and picks the cache flags. Reads and writes go through userspace:
//! with FUSE passthrough the kernel allows one backing file per inode, and a lower file being
//! copied up would need two.
//! FLUSH is answered `ENOSYS`, which turns it off for the connection: `close` costs no round
//! trip (write-behind errors are reported at `fsync`, as the kernel reports writeback errors).
//! OPEN and CREATE are answered `ENOSYS` too: opening a file costs no round trip (the kernel
//! keeps its page cache), a new file is one MKNOD, and no file is ever RELEASEd. An unlinked
//! file stays alive while the kernel holds a reference to it (every entry reply counts one,
//! FORGET drops them), which covers open files. OPENDIR is answered `ENOSYS` as well (no
//! round trip per directory opened); READDIR offsets are then stable per name (`listing`).
//! With `--io passthrough` (`with_passthrough`), OPEN and CREATE are answered instead, and a
//! file whose bytes are all in one host file is opened through FUSE passthrough (`rwopen`
//! decides): the kernel reads and writes it without strata, at the cost of an OPEN and a
//! RELEASE round trip per open. While it is written that way, attributes take its size and
//! times from the backing file, and the record gets them at its last close and at `fsync`.
//! Without atomic O_TRUNC the kernel truncates with SETATTR. `FUSE_HANDLE_KILLPRIV_V2` leaves
//! dropping setuid/setgid bits on write, truncate and chown to strata (the view applies the
//! kernel's rules, `view::setid`): the kernel's own check cost a GETATTR per chown.

use std::collections::HashSet;
use std::ffi::OsStr;
use std::fs::File;
use std::os::unix::ffi::OsStrExt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{
    BackingId, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo,
    InitFlags, KernelConfig, LockOwner, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData,
    ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite,
    ReplyXattr, Request, TimeOrNow, WriteFlags,
};
use tracing::{instrument, warn};

use super::caller;
use super::fuse::{reply_sized, to_time};
use super::listing::{Listing, Listings};
use super::rwopen::{self, Decision, Opens, Passed};
use super::view::setid;
use super::view::{Attr, Caller, HostFile, SetAttr, View};
use crate::rwlayer::{FileKind, Ts};

/// Every change goes through this mount, and the kernel updates or drops what it caches on
/// each one, so cached names and attributes stay right.
const TTL: Duration = Duration::from_secs(3600);
const MAX_WRITE: u32 = 1 << 20;

/// The writable file system of one mount.
pub struct WritableFs {
    view: Arc<View>,
    /// Directories being read (OPENDIR is off: READDIR's offset alone says where a reader
    /// is, so offsets stay valid while the directory changes).
    listings: Listings,
    /// Inodes whose `security.capability` the kernel just removed: a SETATTR that sets nothing
    /// right after it is the kernel dropping file capabilities before a write (the mode
    /// stays), not `chown(path, -1, -1)`.
    caps_dropped: Mutex<HashSet<u64>>,
    /// `--io passthrough` asked for; `passthrough` says whether the kernel granted it.
    wants_passthrough: bool,
    passthrough: bool,
    /// O_TRUNC comes with OPEN (passthrough only): strata truncates there.
    atomic_o_trunc: bool,
    opens: Opens<Arc<BackingId>>,
}

/// The xattr that holds file capabilities.
const CAPABILITY_XATTR: &[u8] = b"security.capability";
/// Inodes remembered in `caps_dropped` at most (a removal not followed by a SETATTR, as
/// `setcap -r`, stays there until this many have gathered).
const CAPS_DROPPED_MAX: usize = 1024;

impl WritableFs {
    pub fn new(view: View) -> Self {
        let view = Arc::new(view);
        view.start_write_behind();
        WritableFs {
            view,
            listings: Listings::default(),
            caps_dropped: Mutex::default(),
            wants_passthrough: false,
            passthrough: false,
            atomic_o_trunc: false,
            opens: Opens::default(),
        }
    }

    /// Opens files through FUSE passthrough where the kernel allows it (see the module doc).
    pub fn with_passthrough(mut self, on: bool) -> Self {
        self.wants_passthrough = on;
        self
    }

    /// `a` as the kernel must see it: a file being written through passthrough has the size
    /// and times of its backing file.
    fn out(&self, mut a: Attr) -> FileAttr {
        if let Some((f, since)) = self.opens.written(a.ino)
            && let Ok(s) = rwopen::stamp(&f)
        {
            a.size = s.size;
            if s.ctime > since {
                a.mtime = s.mtime;
                a.ctime = a.ctime.max(s.ctime);
            }
        }
        fattr(&a)
    }

    /// Refuses (ETXTBSY, after waiting briefly for them to close) a change of `ino`'s size
    /// while it is open through its lower file: those opens would go on reading the old bytes.
    fn resizable(&self, ino: u64) -> Result<(), Errno> {
        if !self.passthrough
            || self
                .opens
                .wait_lower_closed(ino, std::time::Instant::now() + rwopen::BUSY_WAIT)
        {
            return Ok(());
        }
        warn!(
            ino,
            "resize refused: the file is open for reading through its lower layer"
        );
        Err(Errno::ETXTBSY)
    }

    /// Runs `f` (a change strata makes to `ino`'s data or attributes) with what writes
    /// through passthrough changed recorded first, and marks the backing file's new ctime
    /// as strata's own afterwards.
    fn changing<T>(&self, ino: u64, f: impl FnOnce() -> T) -> T {
        self.opens.with_written(ino, |w| match w {
            Some((file, since)) => {
                self.record_host_writes(ino, file, since);
                let out = f();
                (out, rwopen::stamp(file).ok().map(|s| s.ctime))
            }
            None => (f(), None),
        })
    }

    /// Gives the record of `ino` what writes through its backing file `file` changed since
    /// `since` (its ctime then).
    fn record_host_writes(&self, ino: u64, file: &File, since: Ts) {
        let recorded = rwopen::stamp(file)
            .map_err(|e| e.raw_os_error().unwrap_or(libc::EIO))
            .and_then(|s| self.view.take_host_writes(ino, &s, &since));
        if let Err(errno) = recorded {
            warn!(ino, errno, "recording a file written through passthrough");
        }
    }

    /// Answers an open of `ino`: through passthrough where `rwopen` says so, else through
    /// the page cache. `Err` for an open that must fail.
    fn open_file(
        &self,
        ino: u64,
        write: bool,
        caller: &caller::Requester,
        register: impl Fn(&File) -> std::io::Result<BackingId>,
    ) -> Result<Opened, Errno> {
        let deadline = std::time::Instant::now() + rwopen::BUSY_WAIT;
        let mut table = self.opens.lock();
        loop {
            let host = self.view.host_file(ino, write).map_err(e)?;
            match table.decide(ino, host) {
                Decision::Cached => return Ok(Opened::Cached(table.open_cached(ino))),
                Decision::Share(id) => {
                    if write && let Some(mode) = self.setid_dropped(ino, caller, false, true) {
                        // A setuid/setgid bit set while the file was open through passthrough:
                        // writes through it cannot drop it, so it goes now.
                        let set = SetAttr {
                            mode: Some(mode),
                            ..SetAttr::default()
                        };
                        self.view.setattr(ino, &set).map_err(e)?;
                    }
                    let fh = table.open_passed(ino, None, write);
                    return Ok(Opened::Passed(fh, id));
                }
                Decision::Register(h) => match self.register(ino, &h, &register) {
                    Some(p) => {
                        let id = p.id.clone();
                        let fh = table.open_passed(ino, Some(p), write);
                        return Ok(Opened::Passed(fh, id));
                    }
                    None => return Ok(Opened::Cached(table.open_cached(ino))),
                },
                Decision::Busy => {
                    let (t, waited) = table.wait(deadline);
                    table = t;
                    if !waited {
                        warn!(
                            ino,
                            "open refused: the file is open for reading through its lower layer"
                        );
                        return Err(Errno::ETXTBSY);
                    }
                }
            }
        }
    }

    /// Registers host file `h` of `ino` with the kernel; `None` where that is refused or the
    /// file is not what the record says (then the open goes through the page cache).
    fn register(
        &self,
        ino: u64,
        h: &HostFile,
        register: &impl Fn(&File) -> std::io::Result<BackingId>,
    ) -> Option<Passed<Arc<BackingId>>> {
        let (path, lower) = match h {
            HostFile::Lower(p) => (p, true),
            HostFile::Backing(p) => (p, false),
        };
        let file = File::options().read(true).write(!lower).open(path);
        let size = self.view.getattr(ino).map(|a| a.size);
        let file = match (file, size) {
            (Ok(f), Ok(size)) if f.metadata().is_ok_and(|m| m.len() == size) => f,
            _ => return None,
        };
        match register(&file) {
            Ok(id) => Some(Passed::new(Arc::new(id), Arc::new(file), lower)),
            Err(err) => {
                warn!(ino, error = %err, "FUSE passthrough refused for this file; it goes through strata");
                None
            }
        }
    }

    /// The listing to answer a READDIR of `ino` at `offset` from.
    fn listing(&self, ino: u64, offset: u64) -> Result<Arc<Listing>, Errno> {
        self.listings.get(ino, offset, || {
            let (parent, children) = self.view.readdir(ino).map_err(e)?;
            Ok(Listing::new(ino, parent, children))
        })
    }

    /// Replies with an entry: the kernel holds one more reference to it from now on.
    fn entry(&self, reply: ReplyEntry, a: &Attr) {
        self.view.remember(&[a.ino]);
        reply.entry(&TTL, &self.out(a.clone()), Generation(0));
    }

    /// The mode a chown or a truncate leaves on `ino` when it drops a setuid or setgid bit,
    /// by the kernel's rules ([`setid`]), which the kernel leaves to strata
    /// (`FUSE_HANDLE_KILLPRIV_V2`). `None`: nothing to drop.
    fn setid_dropped(
        &self,
        ino: u64,
        caller: &caller::Requester,
        chown: bool,
        truncate: bool,
    ) -> Option<u32> {
        if !chown && !truncate {
            return None;
        }
        let a = self.view.getattr(ino).ok()?;
        if !setid::has_setid(a.perm) {
            return None;
        }
        let bits = if chown && a.kind != FileKind::Dir {
            setid::dropped(a.perm, a.gid, &|g| {
                caller.can_fsetid() || caller.in_group(g)
            })
        } else if truncate && a.kind == FileKind::File && !caller.can_fsetid() {
            setid::dropped(a.perm, a.gid, &|g| caller.in_group(g))
        } else {
            0
        };
        (bits != 0).then(|| u32::from(a.perm & !bits))
    }

    /// The view this file system serves (the shim answers `diff` from it).
    pub fn view(&self) -> Arc<View> {
        self.view.clone()
    }
}

fn e(errno: i32) -> Errno {
    Errno::from_i32(errno)
}

fn ftype(k: FileKind) -> FileType {
    match k {
        FileKind::Dir => FileType::Directory,
        FileKind::File => FileType::RegularFile,
        FileKind::Symlink => FileType::Symlink,
        FileKind::Fifo => FileType::NamedPipe,
        FileKind::Socket => FileType::Socket,
        FileKind::CharDev => FileType::CharDevice,
        FileKind::BlockDev => FileType::BlockDevice,
    }
}

/// How an open was answered.
enum Opened {
    /// Through the page cache: handle.
    Cached(u64),
    /// Through passthrough: handle and backing file.
    Passed(u64, Arc<BackingId>),
}

/// Flags of an open through the page cache: every change goes through this mount, so what
/// the kernel cached stays right.
const CACHED: FopenFlags = FopenFlags::FOPEN_KEEP_CACHE.union(FopenFlags::FOPEN_NOFLUSH);

fn fattr(a: &Attr) -> FileAttr {
    FileAttr {
        ino: INodeNo(a.ino),
        size: a.size,
        blocks: a.blocks,
        atime: to_time(a.atime.sec, a.atime.nsec),
        mtime: to_time(a.mtime.sec, a.mtime.nsec),
        ctime: to_time(a.ctime.sec, a.ctime.nsec),
        crtime: to_time(a.ctime.sec, a.ctime.nsec),
        kind: ftype(a.kind),
        perm: a.perm,
        nlink: a.nlink,
        uid: a.uid,
        gid: a.gid,
        rdev: a.rdev,
        blksize: 4096,
        flags: 0,
    }
}

fn ts(t: SystemTime) -> Ts {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => Ts {
            sec: d.as_secs() as i64,
            nsec: d.subsec_nanos(),
        },
        Err(before) => {
            let d = before.duration();
            let (mut sec, mut nsec) = (-(d.as_secs() as i64), d.subsec_nanos());
            if nsec > 0 {
                sec -= 1;
                nsec = 1_000_000_000 - nsec;
            }
            Ts { sec, nsec }
        }
    }
}

fn time_or_now(t: TimeOrNow) -> Ts {
    match t {
        TimeOrNow::SpecificTime(t) => ts(t),
        TimeOrNow::Now => Ts::now(),
    }
}

fn requester(req: &Request) -> caller::Requester {
    caller::Requester {
        pid: req.pid(),
        uid: req.uid(),
        gid: req.gid(),
    }
}

fn who(req: &Request) -> Caller {
    Caller {
        uid: req.uid(),
        gid: req.gid(),
    }
}

impl Filesystem for WritableFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        let _ = config.set_max_readahead(1 << 20);
        let _ = config.set_max_write(MAX_WRITE);
        let wanted = InitFlags::FUSE_DO_READDIRPLUS
            | InitFlags::FUSE_READDIRPLUS_AUTO
            | InitFlags::FUSE_CACHE_SYMLINKS
            | InitFlags::FUSE_PARALLEL_DIROPS
            | InitFlags::FUSE_MAX_PAGES
            | InitFlags::FUSE_HANDLE_KILLPRIV_V2;
        let _ = config.add_capabilities(wanted & config.capabilities());
        if self.wants_passthrough {
            self.passthrough = config.capabilities().contains(InitFlags::FUSE_PASSTHROUGH)
                && config.add_capabilities(InitFlags::FUSE_PASSTHROUGH).is_ok()
                && config.set_max_stack_depth(1).is_ok();
            if !self.passthrough {
                warn!(
                    "FUSE passthrough refused by the kernel; files are read and written through strata"
                );
            } else if config
                .capabilities()
                .contains(InitFlags::FUSE_ATOMIC_O_TRUNC)
            {
                // O_TRUNC reaches OPEN, so an open that truncates a lower file is decided
                // after the copy-up it causes (`open`), not before.
                let _ = config.add_capabilities(InitFlags::FUSE_ATOMIC_O_TRUNC);
                self.atomic_o_trunc = true;
            }
        }
        Ok(())
    }

    fn destroy(&mut self) {
        let _ = self.view.sync_all();
    }

    #[instrument(level = "debug", skip_all, fields(parent = parent.0, name = ?name))]
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        match self.view.lookup(parent.0, name.as_bytes()) {
            Ok(a) => self.entry(reply, &a),
            Err(x) => reply.error(e(x)),
        }
    }

    /// (fuser's `batch_forget` comes here once per inode.)
    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        self.view.forget(&[(ino.0, nlookup)]);
    }

    #[instrument(level = "debug", skip_all, fields(ino = ino.0))]
    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.view.getattr(ino.0) {
            Ok(a) => reply.attr(&TTL, &self.out(a)),
            Err(x) => reply.error(e(x)),
        }
    }

    #[instrument(level = "debug", skip_all, fields(ino = ino.0))]
    fn setattr(
        &self,
        req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        // A SETATTR that sets nothing is `chown(path, -1, -1)` (which drops the bits as any
        // chown does; its ctime is now, as the kernel's), or the kernel dropping a file's
        // capabilities before a write, right after removing its security.capability (the mode
        // stays). A chown(-1, -1) of a file with capabilities is taken for the second.
        let caps_dropped = self
            .caps_dropped
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&ino.0);
        let nothing = [mode, uid, gid].iter().all(Option::is_none)
            && size.is_none()
            && atime.is_none()
            && mtime.is_none()
            && ctime.is_none()
            && !caps_dropped;
        let mode = mode.or_else(|| {
            self.setid_dropped(
                ino.0,
                &requester(req),
                uid.is_some() || gid.is_some() || nothing,
                size.is_some(),
            )
        });
        if size.is_some()
            && let Err(x) = self.resizable(ino.0)
        {
            return reply.error(x);
        }
        let set = SetAttr {
            mode,
            uid,
            gid,
            size,
            atime: atime.map(time_or_now),
            mtime: mtime.map(time_or_now),
            ctime: ctime.map(ts),
        };
        match self.changing(ino.0, || self.view.setattr(ino.0, &set)) {
            Ok(a) => reply.attr(&TTL, &self.out(a)),
            Err(x) => reply.error(e(x)),
        }
    }

    #[instrument(level = "debug", skip_all, fields(ino = ino.0))]
    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        match self.view.readlink(ino.0) {
            Ok(t) => reply.data(&t),
            Err(x) => reply.error(e(x)),
        }
    }

    #[instrument(level = "debug", skip_all, fields(parent = parent.0, name = ?name))]
    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        match self
            .view
            .make(who(req), parent.0, name.as_bytes(), mode, rdev, None)
        {
            Ok(a) => self.entry(reply, &a),
            Err(x) => reply.error(e(x)),
        }
    }

    #[instrument(level = "debug", skip_all, fields(parent = parent.0, name = ?name))]
    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        reply: ReplyEntry,
    ) {
        match self.view.make(
            who(req),
            parent.0,
            name.as_bytes(),
            mode | libc::S_IFDIR,
            0,
            None,
        ) {
            Ok(a) => self.entry(reply, &a),
            Err(x) => reply.error(e(x)),
        }
    }

    #[instrument(level = "debug", skip_all, fields(parent = parent.0, name = ?name))]
    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        target: &std::path::Path,
        reply: ReplyEntry,
    ) {
        let target = target.as_os_str().as_bytes();
        match self.view.make(
            who(req),
            parent.0,
            name.as_bytes(),
            libc::S_IFLNK | 0o777,
            0,
            Some(target),
        ) {
            Ok(a) => self.entry(reply, &a),
            Err(x) => reply.error(e(x)),
        }
    }

    #[instrument(level = "debug", skip_all, fields(parent = parent.0, name = ?name))]
    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        match self.view.unlink(parent.0, name.as_bytes()) {
            Ok(()) => reply.ok(),
            Err(x) => reply.error(e(x)),
        }
    }

    #[instrument(level = "debug", skip_all, fields(parent = parent.0, name = ?name))]
    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        match self.view.rmdir(parent.0, name.as_bytes()) {
            Ok(()) => reply.ok(),
            Err(x) => reply.error(e(x)),
        }
    }

    #[instrument(level = "debug", skip_all, fields(parent = parent.0, name = ?name, newparent = newparent.0, newname = ?newname))]
    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        match self.view.rename(
            parent.0,
            name.as_bytes(),
            newparent.0,
            newname.as_bytes(),
            flags.bits(),
        ) {
            Ok(()) => reply.ok(),
            Err(x) => reply.error(e(x)),
        }
    }

    #[instrument(level = "debug", skip_all, fields(ino = ino.0, newparent = newparent.0, newname = ?newname))]
    fn link(
        &self,
        _req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        match self.view.link(ino.0, newparent.0, newname.as_bytes()) {
            Ok(a) => self.entry(reply, &a),
            Err(x) => reply.error(e(x)),
        }
    }

    /// Without passthrough, `ENOSYS` once turns OPEN (and RELEASE) off for the connection:
    /// opening an existing file costs no round trip. Reads, writes and fsync name the inode,
    /// which is all the view needs.
    #[instrument(level = "debug", skip_all, fields(ino = ino.0, flags = flags.0))]
    fn open(&self, req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        if !self.passthrough {
            return reply.error(Errno::ENOSYS);
        }
        if self.atomic_o_trunc && flags.0 & libc::O_TRUNC != 0 {
            if let Err(x) = self.resizable(ino.0) {
                return reply.error(x);
            }
            // The kernel checked write permission; mtime and ctime change as for any O_TRUNC.
            let now = Ts::now();
            let set = SetAttr {
                size: Some(0),
                mode: self.setid_dropped(ino.0, &requester(req), false, true),
                mtime: Some(now),
                ctime: Some(now),
                ..SetAttr::default()
            };
            if let Err(x) = self.changing(ino.0, || self.view.setattr(ino.0, &set)) {
                return reply.error(e(x));
            }
        }
        let write = flags.0 & libc::O_ACCMODE != libc::O_RDONLY;
        match self.open_file(ino.0, write, &requester(req), |f| reply.open_backing(f)) {
            Ok(Opened::Cached(fh)) => reply.opened(FileHandle(fh), CACHED),
            Ok(Opened::Passed(fh, id)) => {
                reply.opened_passthrough(FileHandle(fh), FopenFlags::FOPEN_NOFLUSH, &id)
            }
            Err(x) => reply.error(x),
        }
    }

    /// Without passthrough, `ENOSYS` once turns CREATE off for the connection: the kernel
    /// makes new files with MKNOD and opens them without a round trip (OPEN is off too), so a
    /// created file costs no RELEASE either. With it, a new file gets an (empty) backing file
    /// and is opened through it.
    #[instrument(level = "debug", skip_all, fields(parent = parent.0, name = ?name))]
    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        if !self.passthrough {
            return reply.error(Errno::ENOSYS);
        }
        let mode = (mode & 0o7777) | libc::S_IFREG;
        let a = match self
            .view
            .make(who(req), parent.0, name.as_bytes(), mode, 0, None)
        {
            Ok(a) => a,
            Err(x) => return reply.error(e(x)),
        };
        self.view.remember(&[a.ino]);
        if let Err(x) = self.view.back_new_file(a.ino) {
            warn!(
                ino = a.ino,
                errno = x,
                "no backing file for a new file; it goes through strata"
            );
        }
        let write = flags & libc::O_ACCMODE != libc::O_RDONLY;
        let attr = self.out(a.clone());
        match self.open_file(a.ino, write, &requester(req), |f| reply.open_backing(f)) {
            Ok(Opened::Cached(fh)) => {
                reply.created(&TTL, &attr, Generation(0), FileHandle(fh), CACHED)
            }
            Ok(Opened::Passed(fh, id)) => reply.created_passthrough(
                &TTL,
                &attr,
                Generation(0),
                FileHandle(fh),
                FopenFlags::FOPEN_NOFLUSH,
                &id,
            ),
            Err(x) => reply.error(x),
        }
    }

    /// The last writer through passthrough records the file's size and times; the last open
    /// drops the backing file's registration.
    #[instrument(level = "debug", skip_all, fields(ino = ino.0))]
    fn release(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        let released = self.opens.release(fh.0, |ino, file, since| {
            self.record_host_writes(ino, file, since)
        });
        if released.is_none() {
            warn!(ino = ino.0, fh = fh.0, "RELEASE of an unknown handle");
        }
        reply.ok();
    }

    #[instrument(level = "debug", skip_all, fields(ino = ino.0, offset, size))]
    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        match self.view.read(ino.0, offset, size) {
            Ok(d) => reply.data(&d),
            Err(x) => reply.error(e(x)),
        }
    }

    #[instrument(level = "debug", skip_all, fields(ino = ino.0, offset, len = data.len()))]
    fn write(
        &self,
        req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        data: &[u8],
        write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        // The kernel flags the writes of callers without CAP_FSETID (FUSE_HANDLE_KILLPRIV_V2).
        let written = if write_flags.contains(WriteFlags::FUSE_WRITE_KILL_SUIDGID) {
            let caller = requester(req);
            self.view
                .write_as(ino.0, offset, data, Some(&|g| caller.in_group(g)))
        } else {
            self.view.write(ino.0, offset, data)
        };
        match written {
            Ok(n) => reply.written(n),
            Err(x) => reply.error(e(x)),
        }
    }

    /// Nothing to do at `close`: `ENOSYS` tells the kernel never to send FLUSH again.
    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        reply.error(Errno::ENOSYS);
    }

    #[instrument(level = "debug", skip_all, fields(ino = ino.0, datasync))]
    fn fsync(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        // What writes through passthrough changed reaches the record before it is flushed.
        self.changing(ino.0, || ());
        match self.view.fsync(ino.0, datasync) {
            Ok(()) => reply.ok(),
            Err(x) => reply.error(e(x)),
        }
    }

    /// Directory entries are records in the layer: syncing a directory flushes them all.
    #[instrument(level = "debug", skip_all, fields(ino = ino.0))]
    fn fsyncdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        match self.view.sync_all() {
            Ok(()) => reply.ok(),
            Err(x) => reply.error(e(x)),
        }
    }

    /// `ENOSYS` once turns OPENDIR (and RELEASEDIR) off for the connection: opening a
    /// directory costs no round trip, and the kernel still caches listings (its default for
    /// a directory opened without OPENDIR is `FOPEN_CACHE_DIR | FOPEN_KEEP_CACHE`).
    #[instrument(level = "debug", skip_all, fields(ino = ino.0))]
    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
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
        let listing = match self.listing(ino.0, offset) {
            Ok(l) => l,
            Err(x) => return reply.error(x),
        };
        let mut full = false;
        for en in listing.after(offset) {
            full = reply.add(
                INodeNo(en.ino),
                en.offset,
                ftype(en.kind),
                OsStr::from_bytes(&en.name),
            );
            if full {
                break;
            }
        }
        if !full {
            self.listings.done(ino.0, &listing);
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
        let listing = match self.listing(ino.0, offset) {
            Ok(l) => l,
            Err(x) => return reply.error(x),
        };
        let mut given = Vec::new();
        let mut full = false;
        for en in listing.after(offset) {
            // An entry removed since the listing was taken is skipped rather than shown stale.
            let Ok(a) = self.view.getattr(en.ino) else {
                continue;
            };
            full = reply.add(
                INodeNo(en.ino),
                en.offset,
                OsStr::from_bytes(&en.name),
                &TTL,
                &self.out(a),
                Generation(0),
            );
            if full {
                break;
            }
            // The kernel takes a reference to every entry but `.` and `..`.
            if en.offset > 2 {
                given.push(en.ino);
            }
        }
        self.view.remember(&given);
        if !full {
            self.listings.done(ino.0, &listing);
        }
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        match self.view.statfs() {
            Ok((blocks, bfree, bavail, ffree, bsize)) => reply.statfs(
                blocks,
                bfree,
                bavail,
                ffree.saturating_add(1 << 20),
                ffree,
                bsize,
                255,
                bsize,
            ),
            Err(x) => reply.error(e(x)),
        }
    }

    fn setxattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        match self.view.setxattr(ino.0, name.as_bytes(), value, flags) {
            Ok(()) => reply.ok(),
            Err(x) => reply.error(e(x)),
        }
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        match self.view.getxattr(ino.0, name.as_bytes()) {
            Ok(v) => reply_sized(reply, size, &v),
            Err(x) => reply.error(e(x)),
        }
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        match self.view.listxattr(ino.0) {
            Ok(v) => reply_sized(reply, size, &v),
            Err(x) => reply.error(e(x)),
        }
    }

    fn removexattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        match self.view.removexattr(ino.0, name.as_bytes()) {
            Ok(()) => {
                if name.as_bytes() == CAPABILITY_XATTR {
                    let mut caps = self.caps_dropped.lock().unwrap_or_else(|p| p.into_inner());
                    if caps.len() >= CAPS_DROPPED_MAX {
                        caps.clear();
                    }
                    caps.insert(ino.0);
                }
                reply.ok()
            }
            Err(x) => reply.error(e(x)),
        }
    }

    #[instrument(level = "debug", skip_all, fields(ino = ino.0, offset, length, mode))]
    fn fallocate(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        match self.changing(ino.0, || self.view.fallocate(ino.0, offset, length, mode)) {
            Ok(()) => reply.ok(),
            Err(x) => reply.error(e(x)),
        }
    }
}

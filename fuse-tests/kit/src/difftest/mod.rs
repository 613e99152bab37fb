//! The differential tester's engine: seeded random sequences of file system operations,
//! applied to kernel overlayfs (side A, the reference) and to a strata writable mount of the
//! same image (side B), compared after every operation and, at the end, as whole trees.
//!
//! Used by `tools/difftest/main.rs` (the CLI, a cargo example) and by `fuse-tests/difftest.rs`
//! (the CI run). With `Config::strata = None` both sides are kernel overlayfs mounts of the
//! same layers (`--both-kernel`): everything must compare equal, which checks the engine
//! itself.
//!
//! How a sequence runs: both sides are mounted fresh (overlay: unmount, empty upper and work,
//! mount; strata: a new mount point and an empty `--layer` directory), then each operation runs
//! on A, then on B, and the results must be equal: the return value, or the errno; data read
//! back; `stat` fields (see [`compare_stat`]); directory listings; xattr names and values.
//! Then every open descriptor is closed and both trees are compared ([`compare_trees`]).
//!
//! Operations address paths relative to the mount root and resolve them with
//! `openat2(RESOLVE_IN_ROOT)` (the parent directory, then an `*at` call on the last name), so
//! a symlink in the image (`srv/symlinks/absolute` → `/etc/passwd`) resolves inside the mount
//! as it would in a container and never reaches the host. Device nodes are never opened (the
//! operation reports `skipped` on both sides): the kernel side would open the host's device.
//!
//! On a mismatch, the sequence is shrunk by delta debugging (re-running subsequences on fresh
//! mounts, bounded in runs and time) and the minimal failing sequence is reported with the
//! seed.
#![allow(dead_code)]

pub use crate::harness;

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::ffi::{CString, OsStr};
use std::fmt;
use std::io::Read as _;
use std::os::fd::{AsFd, AsRawFd, IntoRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirEntryExt, FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use harness::{Overlay, Rng, Strata, StrataMount};
use rustix::fs::{AtFlags, Mode, OFlags, ResolveFlags};
use sha2::{Digest as _, Sha256};

/// Open-descriptor slots per side: `open` fills one, `write`/`read`/… use it, so sequences
/// exercise descriptors that outlive renames, unlinks and copy-ups.
pub const SLOTS: usize = 4;

/// One operation, with everything it needs (paths relative to the mount root).
#[derive(Clone, Debug, PartialEq)]
pub enum Op {
    /// `openat2(path, flags | O_CLOEXEC | O_NONBLOCK, mode)` into `slot` (closing what was there).
    Open {
        slot: usize,
        path: Vec<u8>,
        flags: u32,
        mode: u32,
    },
    Close {
        slot: usize,
    },
    /// `write` (at the descriptor's position) or `pwrite` of `len` bytes made from `data`.
    Write {
        slot: usize,
        off: Option<u64>,
        len: usize,
        data: u64,
    },
    Read {
        slot: usize,
        off: Option<u64>,
        len: usize,
    },
    /// `lseek(SEEK_SET)` or, with `from_end`, `lseek(SEEK_END)`.
    Seek {
        slot: usize,
        off: i64,
        from_end: bool,
    },
    Ftruncate {
        slot: usize,
        size: u64,
    },
    Fallocate {
        slot: usize,
        mode: u32,
        off: u64,
        len: u64,
    },
    Fsync {
        slot: usize,
        data_only: bool,
    },
    Fstat {
        slot: usize,
    },
    /// One-shot: open `O_WRONLY | flags`, write (`pwrite` at `off`, or `write`), close.
    WriteFile {
        path: Vec<u8>,
        flags: u32,
        off: Option<u64>,
        len: usize,
        data: u64,
    },
    /// One-shot: open read-only, read everything, close.
    ReadFile {
        path: Vec<u8>,
    },
    /// `truncate(2)` by path (no open file: FUSE gets a setattr without a handle).
    Truncate {
        path: Vec<u8>,
        size: u64,
    },
    /// `lstat`, or `stat` (following symlinks inside the mount) with `follow`.
    Stat {
        path: Vec<u8>,
        follow: bool,
    },
    Unlink {
        path: Vec<u8>,
    },
    Mkdir {
        path: Vec<u8>,
        mode: u32,
    },
    Rmdir {
        path: Vec<u8>,
    },
    /// `renameat2` with `flags` 0, `RENAME_NOREPLACE` or `RENAME_EXCHANGE`.
    Rename {
        from: Vec<u8>,
        to: Vec<u8>,
        flags: u32,
    },
    Link {
        from: Vec<u8>,
        to: Vec<u8>,
    },
    Symlink {
        target: Vec<u8>,
        path: Vec<u8>,
    },
    Readlink {
        path: Vec<u8>,
    },
    /// `fchmodat2(AT_SYMLINK_NOFOLLOW)` (symlinks: `EOPNOTSUPP` on both sides).
    Chmod {
        path: Vec<u8>,
        mode: u32,
    },
    /// `lchown`; `None` leaves that id unchanged.
    Chown {
        path: Vec<u8>,
        uid: Option<u32>,
        gid: Option<u32>,
    },
    /// `utimensat(AT_SYMLINK_NOFOLLOW)` with explicit (seconds, nanoseconds).
    Utimens {
        path: Vec<u8>,
        atime: (i64, i64),
        mtime: (i64, i64),
    },
    SetXattr {
        path: Vec<u8>,
        name: String,
        value: Vec<u8>,
        flags: u32,
    },
    GetXattr {
        path: Vec<u8>,
        name: String,
    },
    ListXattr {
        path: Vec<u8>,
    },
    RemoveXattr {
        path: Vec<u8>,
        name: String,
    },
    /// `mknodat` of a fifo, or of a socket with `socket`.
    Mknod {
        path: Vec<u8>,
        socket: bool,
        mode: u32,
    },
    Readdir {
        path: Vec<u8>,
    },
}

/// What an operation returned, errno aside.
#[derive(Clone, Debug, PartialEq)]
pub enum Val {
    Unit,
    Num(i64),
    Data(Vec<u8>),
    Stat(St),
    /// Sorted (name, type) pairs of a directory, without `.` and `..`.
    Dir(Vec<(Vec<u8>, char)>),
    /// Sorted xattr names.
    Names(Vec<Vec<u8>>),
    /// Not run on purpose (opening a device node would open the host's device).
    Skipped(&'static str),
}

pub type Res = Result<Val, i32>;

/// The `stat` fields the tester looks at. `ino` is only used to count names (never compared).
#[derive(Clone, Debug, PartialEq)]
pub struct St {
    pub kind: char,
    pub perm: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub rdev: u64,
    pub nlink: u64,
    pub mtime: (i64, i64),
    pub ino: u64,
}

/// Deliberate misbehaviour of side B, to test that the engine detects and shrinks.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Fault {
    /// Writes of ≥ 2 bytes at offset ≥ 4096 store their last byte flipped.
    FlipLateWriteByte,
    /// `chmod` drops the others-execute bit.
    ChmodDropsOtherExec,
}

// ---------------------------------------------------------------------------------------
// Executing operations on one side.

fn errno_of(e: rustix::io::Errno) -> i32 {
    e.raw_os_error()
}

fn io_errno(e: std::io::Error) -> i32 {
    e.raw_os_error().unwrap_or(libc::EIO)
}

/// Splits `a/b/c` into (`a/b`, `c`); a single name has parent `.`.
fn split(p: &[u8]) -> (&[u8], &[u8]) {
    match p.iter().rposition(|&b| b == b'/') {
        Some(i) => (&p[..i], &p[i + 1..]),
        None => (b".", p),
    }
}

fn kind_of(mode: u32) -> char {
    match mode & libc::S_IFMT {
        libc::S_IFDIR => 'd',
        libc::S_IFREG => 'f',
        libc::S_IFLNK => 'l',
        libc::S_IFIFO => 'p',
        libc::S_IFCHR => 'c',
        libc::S_IFBLK => 'b',
        libc::S_IFSOCK => 's',
        _ => '?',
    }
}

fn st_of(s: &rustix::fs::Stat) -> St {
    St {
        kind: kind_of(s.st_mode),
        perm: s.st_mode & 0o7777,
        uid: s.st_uid,
        gid: s.st_gid,
        size: s.st_size as u64,
        rdev: s.st_rdev,
        nlink: s.st_nlink,
        mtime: (s.st_mtime, s.st_mtime_nsec as i64),
        ino: s.st_ino,
    }
}

/// One mounted tree and the descriptors the sequence holds open in it.
pub struct Side {
    pub mnt: PathBuf,
    root: OwnedFd,
    slots: Vec<Option<OwnedFd>>,
    fault: Option<Fault>,
}

impl Side {
    pub fn open(mnt: &Path, fault: Option<Fault>) -> anyhow::Result<Side> {
        let root = rustix::fs::open(
            mnt,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .with_context(|| format!("opening {}", mnt.display()))?;
        Ok(Side {
            mnt: mnt.to_path_buf(),
            root,
            slots: (0..SLOTS).map(|_| None).collect(),
            fault,
        })
    }

    pub fn close_all(&mut self) {
        for s in &mut self.slots {
            *s = None;
        }
    }

    /// `openat2` inside the mount (symlinks resolve with the mount as `/`). Retries the
    /// EAGAIN that `RESOLVE_IN_ROOT` returns when a rename anywhere on the system raced with
    /// the lookup (bounded).
    fn openat2(&self, path: &[u8], flags: OFlags, mode: u32) -> Result<OwnedFd, i32> {
        let path: &[u8] = if path.is_empty() { b"." } else { path };
        // openat2 refuses a mode without O_CREAT (open(2) ignores it).
        let mode = if flags.contains(OFlags::CREATE) {
            mode
        } else {
            0
        };
        let mut last = libc::EAGAIN;
        for _ in 0..100 {
            match rustix::fs::openat2(
                &self.root,
                path,
                flags | OFlags::CLOEXEC,
                Mode::from_raw_mode(mode),
                ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS,
            ) {
                Ok(fd) => return Ok(fd),
                Err(rustix::io::Errno::AGAIN) => last = libc::EAGAIN,
                Err(e) => return Err(errno_of(e)),
            }
        }
        Err(last)
    }

    /// The directory holding `path`'s last name, and that name.
    fn parent<'p>(&self, path: &'p [u8]) -> Result<(OwnedFd, &'p [u8]), i32> {
        let (dir, name) = split(path);
        let fd = self.openat2(dir, OFlags::PATH | OFlags::DIRECTORY, 0)?;
        Ok((fd, name))
    }

    /// Whether opening `path` would open a device node (which we never do).
    fn is_device(&self, path: &[u8], nofollow: bool) -> bool {
        let flags = if nofollow {
            OFlags::PATH | OFlags::NOFOLLOW
        } else {
            OFlags::PATH
        };
        self.openat2(path, flags, 0)
            .ok()
            .and_then(|fd| rustix::fs::fstat(&fd).ok())
            .is_some_and(|s| matches!(kind_of(s.st_mode), 'c' | 'b'))
    }

    fn slot(&self, slot: usize) -> Result<&OwnedFd, i32> {
        self.slots
            .get(slot)
            .and_then(|s| s.as_ref())
            .ok_or(libc::EBADF)
    }

    fn data(&self, seed: u64, len: usize, off: Option<u64>) -> Vec<u8> {
        let mut d = harness::fill(seed, len);
        if self.fault == Some(Fault::FlipLateWriteByte) && len >= 2 && off.unwrap_or(0) >= 4096 {
            d[len - 1] ^= 0xff;
        }
        d
    }

    pub fn exec(&mut self, op: &Op) -> Res {
        use rustix::fs as f;
        use rustix::io as i;
        match op {
            Op::Open {
                slot,
                path,
                flags,
                mode,
            } => {
                self.slots[*slot] = None;
                let flags = OFlags::from_bits_retain(*flags);
                if self.is_device(path, flags.contains(OFlags::NOFOLLOW)) {
                    return Ok(Val::Skipped("device node"));
                }
                let fd = self.openat2(path, flags | OFlags::NONBLOCK, *mode)?;
                self.slots[*slot] = Some(fd);
                Ok(Val::Unit)
            }
            Op::Close { slot } => {
                let fd = self.slots[*slot].take().ok_or(libc::EBADF)?;
                // SAFETY: `fd` is an open descriptor we own; into_raw_fd gives up ownership
                // so it is closed exactly once, here, and close's result is reported.
                let r = unsafe { libc::close(fd.into_raw_fd()) };
                if r == 0 {
                    Ok(Val::Unit)
                } else {
                    Err(io_errno(std::io::Error::last_os_error()))
                }
            }
            Op::Write {
                slot,
                off,
                len,
                data,
            } => {
                let fd = self.slot(*slot)?;
                let d = self.data(*data, *len, *off);
                let n = match off {
                    None => i::write(fd, &d),
                    Some(o) => i::pwrite(fd, &d, *o),
                }
                .map_err(errno_of)?;
                Ok(Val::Num(n as i64))
            }
            Op::Read { slot, off, len } => {
                let fd = self.slot(*slot)?;
                let mut buf = vec![0u8; *len];
                let n = match off {
                    None => i::read(fd, &mut buf[..]),
                    Some(o) => i::pread(fd, &mut buf[..], *o),
                }
                .map_err(errno_of)?;
                buf.truncate(n);
                Ok(Val::Data(buf))
            }
            Op::Seek {
                slot,
                off,
                from_end,
            } => {
                let fd = self.slot(*slot)?;
                // lseek(SEEK_END) on a directory is answered by the kernel's FUSE module
                // (generic_file_llseek: i_size + offset), never by the file system, while
                // overlayfs says EINVAL: a kernel difference outside strata, so not compared.
                if *from_end
                    && f::fstat(fd).map_err(errno_of)?.st_mode & libc::S_IFMT == libc::S_IFDIR
                {
                    return Err(libc::EINVAL);
                }
                let pos = if *from_end {
                    f::SeekFrom::End(*off)
                } else {
                    f::SeekFrom::Start(*off as u64)
                };
                Ok(Val::Num(f::seek(fd, pos).map_err(errno_of)? as i64))
            }
            Op::Ftruncate { slot, size } => {
                f::ftruncate(self.slot(*slot)?, *size).map_err(errno_of)?;
                Ok(Val::Unit)
            }
            Op::Fallocate {
                slot,
                mode,
                off,
                len,
            } => {
                f::fallocate(
                    self.slot(*slot)?,
                    f::FallocateFlags::from_bits_retain(*mode),
                    *off,
                    *len,
                )
                .map_err(errno_of)?;
                Ok(Val::Unit)
            }
            Op::Fsync { slot, data_only } => {
                let fd = self.slot(*slot)?;
                if *data_only {
                    f::fdatasync(fd)
                } else {
                    f::fsync(fd)
                }
                .map_err(errno_of)?;
                Ok(Val::Unit)
            }
            Op::Fstat { slot } => Ok(Val::Stat(st_of(
                &f::fstat(self.slot(*slot)?).map_err(errno_of)?,
            ))),
            Op::WriteFile {
                path,
                flags,
                off,
                len,
                data,
            } => {
                if self.is_device(path, false) {
                    return Ok(Val::Skipped("device node"));
                }
                let fd = self.openat2(
                    path,
                    OFlags::WRONLY | OFlags::NONBLOCK | OFlags::from_bits_retain(*flags),
                    0o644,
                )?;
                let d = self.data(*data, *len, *off);
                let n = match off {
                    None => i::write(&fd, &d),
                    Some(o) => i::pwrite(&fd, &d, *o),
                }
                .map_err(errno_of)?;
                // SAFETY: as for `Op::Close`.
                let r = unsafe { libc::close(fd.into_raw_fd()) };
                if r != 0 {
                    return Err(io_errno(std::io::Error::last_os_error()));
                }
                Ok(Val::Num(n as i64))
            }
            Op::ReadFile { path } => {
                if self.is_device(path, false) {
                    return Ok(Val::Skipped("device node"));
                }
                let fd = self.openat2(path, OFlags::RDONLY | OFlags::NONBLOCK, 0)?;
                let mut out = Vec::new();
                let mut buf = vec![0u8; 1 << 20];
                // Bounded: the generator makes no file larger than ~20 MiB.
                while out.len() < 64 << 20 {
                    let n = i::read(&fd, &mut buf[..]).map_err(errno_of)?;
                    if n == 0 {
                        break;
                    }
                    out.extend_from_slice(&buf[..n]);
                }
                Ok(Val::Data(out))
            }
            Op::Truncate { path, size } => {
                let fd = self.openat2(path, OFlags::PATH, 0)?;
                let p = CString::new(format!("/proc/self/fd/{}", fd.as_raw_fd())).unwrap();
                // SAFETY: `p` is a valid NUL-terminated path; truncate only reads it.
                let r = unsafe { libc::truncate(p.as_ptr(), *size as libc::off_t) };
                drop(fd);
                if r == 0 {
                    Ok(Val::Unit)
                } else {
                    Err(io_errno(std::io::Error::last_os_error()))
                }
            }
            Op::Stat { path, follow } => {
                let s = if *follow || path.is_empty() {
                    let fd = self.openat2(path, OFlags::PATH, 0)?;
                    f::fstat(&fd)
                } else {
                    let (dir, name) = self.parent(path)?;
                    f::statat(&dir, name, AtFlags::SYMLINK_NOFOLLOW)
                }
                .map_err(errno_of)?;
                Ok(Val::Stat(st_of(&s)))
            }
            Op::Unlink { path } => {
                let (dir, name) = self.parent(path)?;
                f::unlinkat(&dir, name, AtFlags::empty()).map_err(errno_of)?;
                Ok(Val::Unit)
            }
            Op::Rmdir { path } => {
                let (dir, name) = self.parent(path)?;
                f::unlinkat(&dir, name, AtFlags::REMOVEDIR).map_err(errno_of)?;
                Ok(Val::Unit)
            }
            Op::Mkdir { path, mode } => {
                let (dir, name) = self.parent(path)?;
                f::mkdirat(&dir, name, Mode::from_raw_mode(*mode)).map_err(errno_of)?;
                Ok(Val::Unit)
            }
            Op::Rename { from, to, flags } => {
                let (d1, n1) = self.parent(from)?;
                let (d2, n2) = self.parent(to)?;
                f::renameat_with(&d1, n1, &d2, n2, f::RenameFlags::from_bits_retain(*flags))
                    .map_err(errno_of)?;
                Ok(Val::Unit)
            }
            Op::Link { from, to } => {
                let (d1, n1) = self.parent(from)?;
                let (d2, n2) = self.parent(to)?;
                f::linkat(&d1, n1, &d2, n2, AtFlags::empty()).map_err(errno_of)?;
                Ok(Val::Unit)
            }
            Op::Symlink { target, path } => {
                let (dir, name) = self.parent(path)?;
                f::symlinkat(target.as_slice(), &dir, name).map_err(errno_of)?;
                Ok(Val::Unit)
            }
            Op::Readlink { path } => {
                let (dir, name) = self.parent(path)?;
                let t = f::readlinkat(&dir, name, Vec::new()).map_err(errno_of)?;
                Ok(Val::Data(t.into_bytes()))
            }
            Op::Chmod { path, mode } => {
                let (dir, name) = self.parent(path)?;
                let mut mode = *mode;
                if self.fault == Some(Fault::ChmodDropsOtherExec) {
                    mode &= !0o001;
                }
                let cname = CString::new(name).map_err(|_| libc::EINVAL)?;
                // SAFETY: fchmodat2(2) with a valid directory descriptor and a NUL-terminated
                // name; it reads both and writes nothing of ours.
                let r = unsafe {
                    libc::syscall(
                        libc::SYS_fchmodat2,
                        dir.as_raw_fd(),
                        cname.as_ptr(),
                        mode as libc::c_uint,
                        libc::AT_SYMLINK_NOFOLLOW,
                    )
                };
                if r == 0 {
                    Ok(Val::Unit)
                } else {
                    Err(io_errno(std::io::Error::last_os_error()))
                }
            }
            Op::Chown { path, uid, gid } => {
                let (dir, name) = self.parent(path)?;
                f::chownat(
                    &dir,
                    name,
                    uid.map(f::Uid::from_raw),
                    gid.map(f::Gid::from_raw),
                    AtFlags::SYMLINK_NOFOLLOW,
                )
                .map_err(errno_of)?;
                Ok(Val::Unit)
            }
            Op::Utimens { path, atime, mtime } => {
                let (dir, name) = self.parent(path)?;
                let ts = f::Timestamps {
                    last_access: f::Timespec {
                        tv_sec: atime.0,
                        tv_nsec: atime.1 as _,
                    },
                    last_modification: f::Timespec {
                        tv_sec: mtime.0,
                        tv_nsec: mtime.1 as _,
                    },
                };
                f::utimensat(&dir, name, &ts, AtFlags::SYMLINK_NOFOLLOW).map_err(errno_of)?;
                Ok(Val::Unit)
            }
            Op::SetXattr {
                path,
                name,
                value,
                flags,
            } => {
                let (dir, n) = self.parent(path)?;
                f::lsetxattr(
                    proc_path(&dir, n),
                    name.as_str(),
                    value,
                    f::XattrFlags::from_bits_retain(*flags),
                )
                .map_err(errno_of)?;
                Ok(Val::Unit)
            }
            Op::GetXattr { path, name } => {
                let (dir, n) = self.parent(path)?;
                let mut buf = vec![0u8; 1 << 16];
                let len = f::lgetxattr(proc_path(&dir, n), name.as_str(), &mut buf[..])
                    .map_err(errno_of)?;
                buf.truncate(len);
                Ok(Val::Data(buf))
            }
            Op::ListXattr { path } => {
                let (dir, n) = self.parent(path)?;
                let mut buf = vec![0u8; 1 << 16];
                let len = f::llistxattr(proc_path(&dir, n), &mut buf[..]).map_err(errno_of)?;
                let mut names: Vec<Vec<u8>> = buf[..len]
                    .split(|&b| b == 0)
                    .filter(|n| !n.is_empty())
                    .map(|n| n.to_vec())
                    .collect();
                names.sort();
                Ok(Val::Names(names))
            }
            Op::RemoveXattr { path, name } => {
                let (dir, n) = self.parent(path)?;
                f::lremovexattr(proc_path(&dir, n), name.as_str()).map_err(errno_of)?;
                Ok(Val::Unit)
            }
            Op::Mknod { path, socket, mode } => {
                let (dir, name) = self.parent(path)?;
                let kind = if *socket {
                    f::FileType::Socket
                } else {
                    f::FileType::Fifo
                };
                f::mknodat(&dir, name, kind, Mode::from_raw_mode(*mode), 0).map_err(errno_of)?;
                Ok(Val::Unit)
            }
            Op::Readdir { path } => {
                let fd = self.openat2(
                    path,
                    OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NONBLOCK,
                    0,
                )?;
                let mut dir = f::Dir::read_from(&fd).map_err(errno_of)?;
                let mut out = Vec::new();
                // Bounded by the directory's size; the guard stops a server that loops.
                for _ in 0..100_000 {
                    let Some(e) = dir.read() else { break };
                    let e = e.map_err(errno_of)?;
                    let name = e.file_name().to_bytes();
                    if name == b"." || name == b".." {
                        continue;
                    }
                    let t = match e.file_type() {
                        f::FileType::Directory => 'd',
                        f::FileType::RegularFile => 'f',
                        f::FileType::Symlink => 'l',
                        f::FileType::Fifo => 'p',
                        f::FileType::CharacterDevice => 'c',
                        f::FileType::BlockDevice => 'b',
                        f::FileType::Socket => 's',
                        _ => '?',
                    };
                    out.push((name.to_vec(), t));
                }
                out.sort();
                Ok(Val::Dir(out))
            }
        }
    }
}

/// `/proc/self/fd/DIR/NAME`: a path for the `l*xattr` calls (which have no `*at` form)
/// that reaches `NAME` through the already resolved directory, without following it.
fn proc_path(dir: &OwnedFd, name: &[u8]) -> Vec<u8> {
    let mut p = format!("/proc/self/fd/{}/", dir.as_fd().as_raw_fd()).into_bytes();
    p.extend_from_slice(name);
    p
}

// ---------------------------------------------------------------------------------------
// Comparing results.

/// How mtimes are compared. A sequence sets times only with `Op::Utimens`, to values (years
/// 2001–2020, random nanoseconds) that no other event produces: the image's files carry
/// 2023/2026 times and every other change stamps the current time. So an mtime in
/// `explicit` means "set explicitly by the sequence and not touched since", and is compared
/// when EITHER side shows such a value: the kernel keeping an explicit time that strata
/// changed, or strata keeping one the kernel changed (a missed update), are both caught. All
/// other mtimes ("now" on each side, at slightly different moments) are not compared.
pub struct Times {
    pub explicit: HashSet<(i64, i64)>,
}

impl Times {
    pub fn of(ops: &[Op]) -> Times {
        Times {
            explicit: ops
                .iter()
                .filter_map(|o| match o {
                    Op::Utimens { mtime, .. } => Some(*mtime),
                    _ => None,
                })
                .collect(),
        }
    }
    fn comparable(&self, a: (i64, i64), b: (i64, i64)) -> bool {
        self.explicit.contains(&a) || self.explicit.contains(&b)
    }
}

/// `st_nlink` of a non-directory. Kernel overlayfs takes the count of a lower hard link from
/// the lower inode, which counts names a higher layer whited out (the sample image's
/// `srv/hardlinks/a/original.txt` shows 3 for 2 names), and for an open file unlinked from a
/// lower layer it still shows 1. Strata may report the true count instead (DESIGN §4:
/// "st_nlink right"): that is an intended difference, so strata's value is accepted when it
/// equals the number of names the inode has in the tree (`truth`) and the kernel's does not.
/// Otherwise the two must be equal.
fn nlink_ok(kernel: u64, strata: u64, truth: impl FnOnce() -> u64) -> bool {
    if kernel == strata {
        return true;
    }
    let t = truth();
    strata == t && kernel != t
}

/// Compares two `stat` results: kind, permissions, owner, rdev; size and nlink for
/// non-directories (directory sizes and link counts are the backing file system's
/// business); mtime per [`Times`]; never atime, ctime or inode numbers.
fn compare_stat(a: &St, b: &St, times: &Times, truth: impl FnOnce() -> u64) -> Result<(), String> {
    let mut bad = Vec::new();
    if a.kind != b.kind {
        bad.push("type");
    }
    if a.perm != b.perm {
        bad.push("mode");
    }
    if (a.uid, a.gid) != (b.uid, b.gid) {
        bad.push("owner");
    }
    if a.rdev != b.rdev {
        bad.push("rdev");
    }
    if a.kind != 'd' && a.size != b.size {
        bad.push("size");
    }
    if times.comparable(a.mtime, b.mtime) && a.mtime != b.mtime {
        bad.push("mtime");
    }
    if a.kind != 'd' && b.kind != 'd' && !nlink_ok(a.nlink, b.nlink, truth) {
        bad.push("nlink");
    }
    if bad.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "stat differs in {}:\n    kernel {}\n    strata {}",
            bad.join(", "),
            show_st(a),
            show_st(b)
        ))
    }
}

fn show_st(s: &St) -> String {
    format!(
        "{} {:04o} {}:{} size {} rdev {:#x} nlink {} mtime {}.{:09}",
        s.kind, s.perm, s.uid, s.gid, s.size, s.rdev, s.nlink, s.mtime.0, s.mtime.1
    )
}

/// Number of non-directory names under `mnt` whose inode is `ino` (walks the tree; used only
/// when two nlink values differ).
fn names_of_inode(mnt: &Path, ino: u64) -> u64 {
    let mut n = 0;
    let mut stack = vec![mnt.to_path_buf()];
    let mut budget = 1_000_000usize;
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            budget = budget.saturating_sub(1);
            if budget == 0 {
                return n;
            }
            let Ok(m) = std::fs::symlink_metadata(e.path()) else {
                continue;
            };
            if m.is_dir() {
                stack.push(e.path());
            } else if m.ino() == ino {
                n += 1;
            }
        }
    }
    n
}

pub fn errno_name(e: i32) -> String {
    let name = match e {
        libc::EPERM => "EPERM",
        libc::ENOENT => "ENOENT",
        libc::EIO => "EIO",
        libc::EBADF => "EBADF",
        libc::EAGAIN => "EAGAIN",
        libc::EACCES => "EACCES",
        libc::EBUSY => "EBUSY",
        libc::EEXIST => "EEXIST",
        libc::EXDEV => "EXDEV",
        libc::ENOTDIR => "ENOTDIR",
        libc::EISDIR => "EISDIR",
        libc::EINVAL => "EINVAL",
        libc::EFBIG => "EFBIG",
        libc::ENOSPC => "ENOSPC",
        libc::ESPIPE => "ESPIPE",
        libc::EROFS => "EROFS",
        libc::EMLINK => "EMLINK",
        libc::ERANGE => "ERANGE",
        libc::ENAMETOOLONG => "ENAMETOOLONG",
        libc::ENOSYS => "ENOSYS",
        libc::ENOTEMPTY => "ENOTEMPTY",
        libc::ELOOP => "ELOOP",
        libc::ENODATA => "ENODATA",
        libc::EOPNOTSUPP => "EOPNOTSUPP",
        libc::ENXIO => "ENXIO",
        libc::ENOTCONN => "ENOTCONN",
        libc::E2BIG => "E2BIG",
        libc::ETXTBSY => "ETXTBSY",
        _ => return format!("errno {e}"),
    };
    name.to_string()
}

fn show_res(r: &Res) -> String {
    match r {
        Err(e) => errno_name(*e),
        Ok(Val::Data(d)) => format!(
            "{} bytes (sha256 {}){}",
            d.len(),
            &hex::encode(Sha256::digest(d))[..16],
            if d.len() <= 64 {
                format!(" {:?}", show(d))
            } else {
                String::new()
            }
        ),
        Ok(Val::Stat(s)) => show_st(s),
        Ok(Val::Dir(v)) => format!(
            "[{}]",
            v.iter()
                .map(|(n, t)| format!("{}:{t}", show(n)))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        Ok(Val::Names(v)) => format!("{:?}", v.iter().map(|n| show(n)).collect::<Vec<_>>()),
        Ok(v) => format!("{v:?}"),
    }
}

/// Where two data results first differ.
fn first_difference(a: &[u8], b: &[u8]) -> String {
    match a.iter().zip(b).position(|(x, y)| x != y) {
        Some(i) => format!(
            "; first difference at byte {i}: kernel {:#04x}, strata {:#04x}",
            a[i], b[i]
        ),
        None => format!("; lengths {} vs {}", a.len(), b.len()),
    }
}

/// Compares one operation's results; `None` when they agree.
fn compare_results(a: &Res, b: &Res, times: &Times, mnt_a: &Path, mnt_b: &Path) -> Option<String> {
    match (a, b) {
        (Ok(Val::Stat(x)), Ok(Val::Stat(y))) => {
            // The true name count is measured on each side's own tree (the trees are equal
            // so far, or an earlier operation would have differed).
            let (ia, ib) = (x.ino, y.ino);
            compare_stat(x, y, times, || {
                let t = names_of_inode(mnt_a, ia);
                if t == names_of_inode(mnt_b, ib) {
                    t
                } else {
                    u64::MAX
                }
            })
            .err()
        }
        (Ok(Val::Data(x)), Ok(Val::Data(y))) if x != y => Some(format!(
            "kernel: {}\n  strata: {}{}",
            show_res(a),
            show_res(b),
            first_difference(x, y)
        )),
        _ if a == b => None,
        _ => Some(format!(
            "kernel: {}\n  strata: {}",
            show_res(a),
            show_res(b)
        )),
    }
}

// ---------------------------------------------------------------------------------------
// Tree snapshots.

/// Everything compared about one path of a mounted tree (as `fuse-tests/common::Meta`).
#[derive(Debug, Clone, PartialEq)]
pub struct Meta {
    pub st: St,
    pub content: Option<String>,
    pub target: Option<Vec<u8>>,
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

/// A mounted tree: path → metadata. The walk never follows symlinks and never opens
/// anything but regular files; it checks `d_ino == st_ino` on the way.
pub struct Snapshot {
    pub entries: BTreeMap<Vec<u8>, Meta>,
}

impl Snapshot {
    pub fn take(root: &Path) -> Result<Snapshot, String> {
        let mut s = Snapshot {
            entries: BTreeMap::new(),
        };
        s.add(root, b"")?;
        let mut stack = vec![(root.to_path_buf(), Vec::new())];
        while let Some((dir, rel)) = stack.pop() {
            let rd = std::fs::read_dir(&dir).map_err(|e| format!("readdir {}: {e}", show(&rel)))?;
            for e in rd {
                let e = e.map_err(|e| format!("readdir {}: {e}", show(&rel)))?;
                let mut r = rel.clone();
                if !r.is_empty() {
                    r.push(b'/');
                }
                r.extend_from_slice(e.file_name().as_bytes());
                let ino = s.add(&e.path(), &r)?;
                if e.ino() != ino {
                    return Err(format!("{}: d_ino {} != st_ino {ino}", show(&r), e.ino()));
                }
                // Recurse by what lstat says (d_type comes from the server under test and must
                // agree; a "directory" that is really a symlink must never be walked).
                let kind = s.entries[&r].st.kind;
                let ft = e.file_type().map_err(|e| e.to_string())?;
                if ft.is_dir() != (kind == 'd') || ft.is_symlink() != (kind == 'l') {
                    return Err(format!(
                        "{}: readdir's d_type {ft:?} disagrees with lstat's type {kind}",
                        show(&r)
                    ));
                }
                if kind == 'd' {
                    stack.push((e.path(), r));
                }
                if s.entries.len() > 200_000 {
                    return Err("more than 200000 entries: runaway tree".into());
                }
            }
        }
        Ok(s)
    }

    fn add(&mut self, p: &Path, rel: &[u8]) -> Result<u64, String> {
        let err = |what: &str, e: std::io::Error| format!("{what} {}: {e}", show(rel));
        let m = std::fs::symlink_metadata(p).map_err(|e| err("lstat", e))?;
        let ft = m.file_type();
        let content = if ft.is_file() {
            let mut h = Sha256::new();
            let mut f = std::fs::File::open(p).map_err(|e| err("open", e))?;
            let mut buf = vec![0; 1 << 16];
            loop {
                let n = f.read(&mut buf).map_err(|e| err("read", e))?;
                if n == 0 {
                    break;
                }
                h.update(&buf[..n]);
            }
            Some(hex::encode(h.finalize()))
        } else {
            None
        };
        let target = if ft.is_symlink() {
            Some(
                std::fs::read_link(p)
                    .map_err(|e| err("readlink", e))?
                    .as_os_str()
                    .as_bytes()
                    .to_vec(),
            )
        } else {
            None
        };
        let st = St {
            kind: if ft.is_dir() {
                'd'
            } else if ft.is_file() {
                'f'
            } else if ft.is_symlink() {
                'l'
            } else if ft.is_fifo() {
                'p'
            } else if ft.is_char_device() {
                'c'
            } else if ft.is_block_device() {
                'b'
            } else {
                's'
            },
            perm: m.mode() & 0o7777,
            uid: m.uid(),
            gid: m.gid(),
            size: m.size(),
            rdev: m.rdev(),
            nlink: m.nlink(),
            mtime: (m.mtime(), m.mtime_nsec()),
            ino: m.ino(),
        };
        self.entries.insert(
            rel.to_vec(),
            Meta {
                st,
                content,
                target,
                xattrs: xattrs(p),
            },
        );
        Ok(m.ino())
    }

    /// Non-directory path → the sorted paths sharing its inode.
    fn link_groups(&self) -> BTreeMap<Vec<u8>, Vec<Vec<u8>>> {
        let mut by_ino: BTreeMap<u64, Vec<Vec<u8>>> = BTreeMap::new();
        for (p, m) in &self.entries {
            if m.st.kind != 'd' {
                by_ino.entry(m.st.ino).or_default().push(p.clone());
            }
        }
        let mut out = BTreeMap::new();
        for group in by_ino.values() {
            for p in group {
                out.insert(p.clone(), group.clone());
            }
        }
        out
    }
}

fn xattrs(p: &Path) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut names = vec![0u8; 64 * 1024];
    let n = match rustix::fs::llistxattr(p, &mut names[..]) {
        Ok(n) => n,
        Err(_) => return vec![],
    };
    let mut out = Vec::new();
    for name in names[..n].split(|&b| b == 0).filter(|n| !n.is_empty()) {
        let mut v = vec![0u8; 64 * 1024];
        if let Ok(len) = rustix::fs::lgetxattr(p, OsStr::from_bytes(name), &mut v[..]) {
            out.push((name.to_vec(), v[..len].to_vec()));
        }
    }
    out.sort();
    out
}

/// Compares the final trees: the same names; per path the same type, mode, owner, rdev,
/// size (non-directories), content, link target, xattrs, nlink (non-directories, per
/// [`nlink_ok`] with the link-group size as the truth) and mtime (per [`Times`]); the same
/// hard-link groups. Not compared: inode numbers (only the grouping), atime/ctime,
/// directory sizes and link counts.
pub fn compare_trees(a: &Snapshot, b: &Snapshot, times: &Times) -> Option<String> {
    let mut diffs = Vec::new();
    let missing: Vec<String> = a
        .entries
        .keys()
        .filter(|k| !b.entries.contains_key(*k))
        .map(|k| show(k))
        .collect();
    let extra: Vec<String> = b
        .entries
        .keys()
        .filter(|k| !a.entries.contains_key(*k))
        .map(|k| show(k))
        .collect();
    if !missing.is_empty() || !extra.is_empty() {
        diffs.push(format!(
            "names differ: only in kernel {missing:?}, only in strata {extra:?}"
        ));
    }
    let (ga, gb) = (a.link_groups(), b.link_groups());
    for (p, ma) in &a.entries {
        let Some(mb) = b.entries.get(p) else {
            continue;
        };
        let truth = ga.get(p).map_or(0, |g| g.len() as u64);
        let mut what = Vec::new();
        if let Err(e) = compare_stat(&ma.st, &mb.st, times, || truth) {
            what.push(e);
        }
        if ma.content != mb.content {
            what.push(format!(
                "content sha256 {:?} vs {:?}",
                ma.content.as_deref().map(|c| &c[..16]),
                mb.content.as_deref().map(|c| &c[..16])
            ));
        }
        if ma.target != mb.target {
            what.push(format!(
                "link target {:?} vs {:?}",
                ma.target.as_deref().map(show),
                mb.target.as_deref().map(show)
            ));
        }
        if ma.xattrs != mb.xattrs {
            let list = |x: &[(Vec<u8>, Vec<u8>)]| -> Vec<String> {
                x.iter()
                    .map(|(n, v)| format!("{}={}", show(n), show(v)))
                    .collect()
            };
            what.push(format!(
                "xattrs {:?} vs {:?}",
                list(&ma.xattrs),
                list(&mb.xattrs)
            ));
        }
        if ma.st.kind != 'd' && ga.get(p) != gb.get(p) {
            let list = |g: Option<&Vec<Vec<u8>>>| -> Vec<String> {
                g.map(|g| g.iter().map(|x| show(x)).collect())
                    .unwrap_or_default()
            };
            what.push(format!(
                "hard-link group {:?} vs {:?}",
                list(ga.get(p)),
                list(gb.get(p))
            ));
        }
        if !what.is_empty() {
            diffs.push(format!("{}: {}", show(p), what.join("; ")));
        }
    }
    if diffs.is_empty() {
        None
    } else {
        let n = diffs.len();
        diffs.truncate(20);
        Some(format!(
            "final trees differ ({n} path(s)):\n  {}",
            diffs.join("\n  ")
        ))
    }
}

// ---------------------------------------------------------------------------------------
// Generating sequences.

/// Printable form of a path or name: UTF-8 as is, other bytes escaped, long runs of one
/// character (the 255/256-byte names) abbreviated as `{c×N}`.
pub fn show(p: &[u8]) -> String {
    let mut out = String::new();
    let mut i = 0;
    while i < p.len() {
        let run = p[i..].iter().take_while(|&&c| c == p[i]).count();
        if run >= 16 {
            out.push_str(&format!("{{{}×{run}}}", p[i] as char));
            i += run;
            continue;
        }
        let rest = &p[i..];
        let valid = match std::str::from_utf8(rest) {
            Ok(s) => s.len(),
            Err(e) => e.valid_up_to(),
        };
        if valid > 0 {
            let s = std::str::from_utf8(&rest[..valid]).unwrap();
            // Stop before the next long run so it gets abbreviated.
            let mut take = 0;
            for (j, ch) in s.char_indices() {
                let r = rest[j..].iter().take_while(|&&c| c == rest[j]).count();
                if r >= 16 {
                    break;
                }
                take = j + ch.len_utf8();
            }
            if take == 0 {
                take = s.chars().next().unwrap().len_utf8();
            }
            out.push_str(&s[..take]);
            i += take;
        } else {
            out.push_str(&format!("\\x{:02x}", p[i]));
            i += 1;
        }
    }
    out
}

fn show_flags(flags: u32, with_access: bool) -> String {
    let acc = match flags & 3 {
        0 => "O_RDONLY",
        1 => "O_WRONLY",
        _ => "O_RDWR",
    };
    let mut s = vec![];
    if with_access {
        s.push(acc.to_string());
    }
    for (bit, name) in [
        (libc::O_CREAT, "O_CREAT"),
        (libc::O_EXCL, "O_EXCL"),
        (libc::O_TRUNC, "O_TRUNC"),
        (libc::O_APPEND, "O_APPEND"),
        (libc::O_NOFOLLOW, "O_NOFOLLOW"),
        (libc::O_DIRECTORY, "O_DIRECTORY"),
    ] {
        if flags & bit as u32 != 0 {
            s.push(name.to_string());
        }
    }
    s.join("|")
}

fn show_off(off: &Option<u64>) -> String {
    match off {
        None => "pos".to_string(),
        Some(o) => o.to_string(),
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let q = |p: &[u8]| format!("{:?}", show(p));
        match self {
            Op::Open {
                slot,
                path,
                flags,
                mode,
            } => write!(
                f,
                "fd{slot} = open({}, {}, {mode:04o})",
                q(path),
                show_flags(*flags, true)
            ),
            Op::Close { slot } => write!(f, "close(fd{slot})"),
            Op::Write {
                slot,
                off,
                len,
                data,
            } => write!(
                f,
                "write(fd{slot}, off {}, len {len}, data #{data:x})",
                show_off(off)
            ),
            Op::Read { slot, off, len } => {
                write!(f, "read(fd{slot}, off {}, len {len})", show_off(off))
            }
            Op::Seek {
                slot,
                off,
                from_end,
            } => write!(
                f,
                "lseek(fd{slot}, {off}, {})",
                if *from_end { "SEEK_END" } else { "SEEK_SET" }
            ),
            Op::Ftruncate { slot, size } => write!(f, "ftruncate(fd{slot}, {size})"),
            Op::Fallocate {
                slot,
                mode,
                off,
                len,
            } => write!(
                f,
                "fallocate(fd{slot}, mode {mode:#x}, off {off}, len {len})"
            ),
            Op::Fsync { slot, data_only } => write!(
                f,
                "{}(fd{slot})",
                if *data_only { "fdatasync" } else { "fsync" }
            ),
            Op::Fstat { slot } => write!(f, "fstat(fd{slot})"),
            Op::WriteFile {
                path,
                flags,
                off,
                len,
                data,
            } => write!(
                f,
                "write_file({}, {}, off {}, len {len}, data #{data:x})",
                q(path),
                show_flags(*flags | libc::O_WRONLY as u32, true),
                show_off(off)
            ),
            Op::ReadFile { path } => write!(f, "read_file({})", q(path)),
            Op::Truncate { path, size } => write!(f, "truncate({}, {size})", q(path)),
            Op::Stat { path, follow } => {
                write!(f, "{}({})", if *follow { "stat" } else { "lstat" }, q(path))
            }
            Op::Unlink { path } => write!(f, "unlink({})", q(path)),
            Op::Mkdir { path, mode } => write!(f, "mkdir({}, {mode:04o})", q(path)),
            Op::Rmdir { path } => write!(f, "rmdir({})", q(path)),
            Op::Rename { from, to, flags } => {
                let fl = match *flags {
                    0 => "0",
                    1 => "RENAME_NOREPLACE",
                    2 => "RENAME_EXCHANGE",
                    _ => "?",
                };
                write!(f, "renameat2({}, {}, {fl})", q(from), q(to))
            }
            Op::Link { from, to } => write!(f, "link({}, {})", q(from), q(to)),
            Op::Symlink { target, path } => write!(f, "symlink({}, {})", q(target), q(path)),
            Op::Readlink { path } => write!(f, "readlink({})", q(path)),
            Op::Chmod { path, mode } => write!(f, "lchmod({}, {mode:04o})", q(path)),
            Op::Chown { path, uid, gid } => write!(
                f,
                "lchown({}, {}, {})",
                q(path),
                uid.map_or(-1, |u| u as i64),
                gid.map_or(-1, |g| g as i64)
            ),
            Op::Utimens { path, atime, mtime } => write!(
                f,
                "utimensat({}, atime {}.{:09}, mtime {}.{:09}, AT_SYMLINK_NOFOLLOW)",
                q(path),
                atime.0,
                atime.1,
                mtime.0,
                mtime.1
            ),
            Op::SetXattr {
                path,
                name,
                value,
                flags,
            } => write!(
                f,
                "lsetxattr({}, {name}, {} bytes {:?}, flags {flags})",
                q(path),
                value.len(),
                show(&value[..value.len().min(24)])
            ),
            Op::GetXattr { path, name } => write!(f, "lgetxattr({}, {name})", q(path)),
            Op::ListXattr { path } => write!(f, "llistxattr({})", q(path)),
            Op::RemoveXattr { path, name } => write!(f, "lremovexattr({}, {name})", q(path)),
            Op::Mknod { path, socket, mode } => write!(
                f,
                "mknod({}, {} {mode:04o})",
                q(path),
                if *socket { "S_IFSOCK" } else { "S_IFIFO" }
            ),
            Op::Readdir { path } => write!(f, "readdir({})", q(path)),
        }
    }
}

/// The image's paths, learned once from the first kernel mount.
#[derive(Clone, Debug, Default)]
pub struct Pool {
    /// Every path of the merged image (not the root), with its type.
    pub lower: Vec<(Vec<u8>, char)>,
    /// Paths that exist in some layer but are hidden by a whiteout, an opaque directory or a
    /// replacement: creating them must not resurrect anything.
    pub ghosts: Vec<Vec<u8>>,
}

impl Pool {
    fn learn(mnt: &Path, lowers: &[PathBuf]) -> anyhow::Result<Pool> {
        let snap = Snapshot::take(mnt).map_err(|e| anyhow::anyhow!(e))?;
        let lower: Vec<(Vec<u8>, char)> = snap
            .entries
            .iter()
            .filter(|(p, _)| !p.is_empty())
            .map(|(p, m)| (p.clone(), m.st.kind))
            .collect();
        let merged: BTreeSet<&Vec<u8>> = snap.entries.keys().collect();
        let mut ghosts = BTreeSet::new();
        for l in lowers {
            let mut stack = vec![(l.clone(), Vec::<u8>::new())];
            while let Some((d, rel)) = stack.pop() {
                for e in std::fs::read_dir(&d)?.flatten() {
                    let mut r = rel.clone();
                    if !r.is_empty() {
                        r.push(b'/');
                    }
                    r.extend_from_slice(e.file_name().as_bytes());
                    if !merged.contains(&r) {
                        ghosts.insert(r.clone());
                    }
                    if e.file_type()?.is_dir() {
                        stack.push((e.path(), r));
                    }
                }
            }
        }
        Ok(Pool {
            lower,
            ghosts: ghosts.into_iter().collect(),
        })
    }
}

/// Names for new entries: few, so that sequences collide (create twice, rename onto an
/// existing name, …), plus a 255-byte name (the maximum) and, rarely, a 256-byte one
/// (ENAMETOOLONG on every operation).
const NAMES: &[&str] = &["a", "b", "c.txt", "new", "x y", "é", "sub"];

/// Generates operations one at a time, with a model of which paths exist built from the
/// kernel side's results ([`Gen::observe`]), so most operations address existing files and
/// directories (or new names in existing directories) rather than failing with ENOENT. The
/// sequence is a function of the seed and of the kernel's (deterministic) results.
pub struct Gen {
    rng: Rng,
    ghosts: Vec<Vec<u8>>,
    /// Paths that exist (per the kernel's results), with their type.
    live: BTreeMap<Vec<u8>, char>,
    /// Cached views of `live` (rebuilt after a change).
    cache: Option<Views>,
    /// Slots holding an open descriptor (per the kernel's results).
    opened: Vec<usize>,
}

/// All live paths but the root, the regular files, the directories (with the root).
type Views = (Vec<Vec<u8>>, Vec<Vec<u8>>, Vec<Vec<u8>>);

fn join(dir: &[u8], name: &[u8]) -> Vec<u8> {
    let mut p = dir.to_vec();
    if !p.is_empty() {
        p.push(b'/');
    }
    p.extend_from_slice(name);
    p
}

fn under(p: &[u8], dir: &[u8]) -> bool {
    p.len() > dir.len() && p.starts_with(dir) && p[dir.len()] == b'/'
}

impl Gen {
    pub fn new(seed: u64, pool: &Pool) -> Self {
        let mut live: BTreeMap<Vec<u8>, char> = pool.lower.iter().cloned().collect();
        live.insert(Vec::new(), 'd');
        Gen {
            rng: Rng::new(seed),
            ghosts: pool.ghosts.clone(),
            live,
            cache: None,
            opened: Vec::new(),
        }
    }

    /// (all paths but the root, regular files, directories including the root).
    fn views(&mut self) -> &Views {
        self.cache.get_or_insert_with(|| {
            let all = self
                .live
                .keys()
                .filter(|p| !p.is_empty())
                .cloned()
                .collect();
            let of = |k: char| {
                self.live
                    .iter()
                    .filter(|(_, v)| **v == k)
                    .map(|(p, _)| p.clone())
                    .collect()
            };
            (all, of('f'), of('d'))
        })
    }

    fn pick_view(&mut self, which: usize) -> Vec<u8> {
        let r = self.rng.next_u64();
        let v = self.views();
        let v = match which {
            0 => &v.0,
            1 => &v.1,
            _ => &v.2,
        };
        if v.is_empty() {
            Vec::new()
        } else {
            v[(r % v.len() as u64) as usize].clone()
        }
    }

    /// Updates the model with what an operation did on the kernel side.
    pub fn observe(&mut self, op: &Op, res: &Res) {
        let ok = res.is_ok();
        let changed = |g: &mut Gen| g.cache = None;
        match op {
            Op::Open {
                slot, path, flags, ..
            } => {
                self.opened.retain(|s| s != slot);
                if ok && !matches!(res, Ok(Val::Skipped(_))) {
                    self.opened.push(*slot);
                }
                if ok && flags & libc::O_CREAT as u32 != 0 && !self.live.contains_key(path) {
                    self.live.insert(path.clone(), 'f');
                    changed(self);
                }
            }
            Op::Close { slot } => self.opened.retain(|s| s != slot),
            Op::WriteFile { path, flags, .. } if ok && flags & libc::O_CREAT as u32 != 0 => {
                self.live.entry(path.clone()).or_insert('f');
                changed(self);
            }
            Op::Mkdir { path, .. } if ok => {
                self.live.insert(path.clone(), 'd');
                changed(self);
            }
            Op::Mknod { path, socket, .. } if ok => {
                self.live
                    .insert(path.clone(), if *socket { 's' } else { 'p' });
                changed(self);
            }
            Op::Symlink { path, .. } if ok => {
                self.live.insert(path.clone(), 'l');
                changed(self);
            }
            Op::Link { from, to } if ok => {
                let k = self.live.get(from).copied().unwrap_or('f');
                self.live.insert(to.clone(), k);
                changed(self);
            }
            Op::Unlink { path } | Op::Rmdir { path } if ok => {
                self.live.remove(path);
                changed(self);
            }
            Op::Rename { from, to, flags } if ok && from != to => {
                let take = |live: &mut BTreeMap<Vec<u8>, char>, root: &[u8]| {
                    let keys: Vec<Vec<u8>> = live
                        .keys()
                        .filter(|k| k.as_slice() == root || under(k, root))
                        .cloned()
                        .collect();
                    keys.into_iter()
                        .map(|k| {
                            let v = live.remove(&k).unwrap();
                            (k[root.len()..].to_vec(), v)
                        })
                        .collect::<Vec<_>>()
                };
                let a = take(&mut self.live, from);
                let b = take(&mut self.live, to);
                for (rest, v) in a {
                    self.live.insert([to.as_slice(), &rest].concat(), v);
                }
                if *flags == libc::RENAME_EXCHANGE {
                    for (rest, v) in b {
                        self.live.insert([from.as_slice(), &rest].concat(), v);
                    }
                }
                changed(self);
            }
            _ => {}
        }
    }

    fn name(&mut self) -> Vec<u8> {
        match self.rng.below(100) {
            0..=2 => vec![b'n'; 255],
            3 => vec![b'm'; 256],
            _ => self.rng.pick(NAMES).as_bytes().to_vec(),
        }
    }

    fn dir(&mut self) -> Vec<u8> {
        self.pick_view(2)
    }

    /// A new name in an existing directory.
    fn new_path(&mut self) -> Vec<u8> {
        let d = self.dir();
        let n = self.name();
        join(&d, &n)
    }

    /// Any path: existing ones of every type (lower or created), hidden ones (whiteouts,
    /// opaque directories), new names, interesting lower files, paths through symlinks and
    /// paths that cannot resolve.
    fn path(&mut self) -> Vec<u8> {
        match self.rng.below(100) {
            0..=49 => self.pick_view(0),
            50..=56 if !self.ghosts.is_empty() => self.rng.pick(&self.ghosts).clone(),
            57..=61 => self
                .rng
                .pick(&[
                    "srv/files/sparse-16M",
                    "bin/busybox",
                    "srv/hardlinks/a/original.txt",
                    "srv/hardlinks/third-name.txt",
                    "srv/changes/opaque-dir",
                    "srv/changes/readd-dir",
                    "srv/xattrs/cap-net-bind-service",
                    "srv/perms/setgid-dir",
                    "srv/deep/d01",
                ])
                .as_bytes()
                .to_vec(),
            62..=64 => {
                let n = self.name();
                let d = *self.rng.pick(&[
                    "etc/motd",
                    "nonexistent",
                    "srv/symlinks/to-dir",
                    "srv/symlinks/absolute-to-dir",
                    "srv/symlinks/dangling",
                ]);
                join(d.as_bytes(), &n)
            }
            _ => self.new_path(),
        }
    }

    /// A path that is more often an existing regular file.
    fn file(&mut self) -> Vec<u8> {
        if self.rng.chance(70) {
            let f = self.pick_view(1);
            if !f.is_empty() {
                return f;
            }
        }
        self.path()
    }

    fn offset(&mut self) -> u64 {
        match self.rng.below(100) {
            0..=24 => 0,
            25..=54 => self.rng.below(8192),
            55..=74 => self.rng.below(300_000),
            // "1 byte into a big file": anywhere in the 16 MiB lower file and beyond.
            _ => self.rng.range(1 << 20, 17 << 20),
        }
    }

    fn len(&mut self) -> usize {
        match self.rng.below(100) {
            0..=19 => 1,
            20..=69 => self.rng.range(1, 4097) as usize,
            _ => self.rng.range(4097, 300_000) as usize,
        }
    }

    fn size(&mut self) -> u64 {
        match self.rng.below(100) {
            0..=19 => 0,
            20..=59 => self.rng.below(5000),
            60..=84 => self.rng.below(400_000),
            _ => self.rng.range(1 << 20, 17 << 20),
        }
    }

    fn mode(&mut self) -> u32 {
        match self.rng.below(10) {
            0..=5 => *self.rng.pick(&[0o644, 0o600, 0o755, 0o700, 0o444, 0o777]),
            _ => self.rng.below(0o10000) as u32,
        }
    }

    fn slot(&mut self) -> usize {
        if !self.opened.is_empty() && self.rng.chance(95) {
            *self.rng.pick(&self.opened)
        } else {
            self.rng.below(SLOTS as u64) as usize
        }
    }

    fn time(&mut self) -> (i64, i64) {
        (
            self.rng.range(1_000_000_000, 1_600_000_000) as i64,
            self.rng.below(1_000_000_000) as i64,
        )
    }

    fn xattr_name(&mut self, any: bool) -> String {
        let user = [
            "user.a",
            "user.b",
            "user.comment",
            "user.mime_type",
            "user.purpose",
        ];
        if any && self.rng.chance(20) {
            "security.capability".to_string()
        } else {
            self.rng.pick(&user).to_string()
        }
    }

    fn open_flags(&mut self) -> u32 {
        let mut f = *self
            .rng
            .pick(&[libc::O_RDONLY, libc::O_WRONLY, libc::O_RDWR, libc::O_RDWR]);
        for (pct, bit) in [
            (50, libc::O_CREAT),
            (15, libc::O_EXCL),
            (20, libc::O_TRUNC),
            (20, libc::O_APPEND),
            (8, libc::O_NOFOLLOW),
            (4, libc::O_DIRECTORY),
        ] {
            if self.rng.chance(pct) {
                f |= bit;
            }
        }
        f as u32
    }

    pub fn op(&mut self) -> Op {
        const W: &[u32] = &[
            12, 4, 12, 6, 2, 3, 3, 3, 3, // fd ops: open … fstat
            10, 5, 3, 5, // write_file, read_file, truncate, stat
            4, 4, 3, 6, 3, 3, 2, // unlink mkdir rmdir rename link symlink readlink
            3, 3, 4, // chmod chown utimens
            4, 2, 2, 2, // xattrs
            2, 4, // mknod readdir
        ];
        match self.rng.weighted(W) {
            0 => {
                let flags = self.open_flags();
                let path = if flags & libc::O_CREAT as u32 != 0 && self.rng.chance(50) {
                    self.new_path()
                } else {
                    self.file()
                };
                let slot = self.rng.below(SLOTS as u64) as usize;
                Op::Open {
                    slot,
                    path,
                    flags,
                    mode: self.mode(),
                }
            }
            1 => Op::Close { slot: self.slot() },
            2 => Op::Write {
                slot: self.slot(),
                off: if self.rng.chance(25) {
                    None
                } else {
                    Some(self.offset())
                },
                len: self.len(),
                data: self.rng.next_u64(),
            },
            3 => Op::Read {
                slot: self.slot(),
                off: if self.rng.chance(25) {
                    None
                } else {
                    Some(self.offset())
                },
                len: self.len().max(16),
            },
            4 => Op::Seek {
                slot: self.slot(),
                off: if self.rng.chance(50) {
                    -(self.rng.below(100) as i64)
                } else {
                    self.offset() as i64
                },
                from_end: self.rng.chance(50),
            },
            5 => Op::Ftruncate {
                slot: self.slot(),
                size: self.size(),
            },
            6 => Op::Fallocate {
                slot: self.slot(),
                mode: *self.rng.pick(&[
                    0,
                    libc::FALLOC_FL_KEEP_SIZE as u32,
                    (libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE) as u32,
                    libc::FALLOC_FL_ZERO_RANGE as u32,
                    (libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE) as u32,
                ]),
                off: self.offset(),
                len: self.len() as u64,
            },
            7 => Op::Fsync {
                slot: self.slot(),
                data_only: self.rng.chance(50),
            },
            8 => Op::Fstat { slot: self.slot() },
            9 => {
                let mut flags = 0u32;
                for (pct, bit) in [
                    (40, libc::O_CREAT),
                    (10, libc::O_EXCL),
                    (25, libc::O_TRUNC),
                    (20, libc::O_APPEND),
                ] {
                    if self.rng.chance(pct) {
                        flags |= bit as u32;
                    }
                }
                let path = if flags & libc::O_CREAT as u32 != 0 && self.rng.chance(50) {
                    self.new_path()
                } else {
                    self.file()
                };
                Op::WriteFile {
                    path,
                    flags,
                    off: if self.rng.chance(20) {
                        None
                    } else {
                        Some(self.offset())
                    },
                    len: self.len(),
                    data: self.rng.next_u64(),
                }
            }
            10 => Op::ReadFile { path: self.file() },
            11 => Op::Truncate {
                path: self.file(),
                size: self.size(),
            },
            12 => Op::Stat {
                path: if self.rng.chance(5) {
                    Vec::new()
                } else {
                    self.path()
                },
                follow: self.rng.chance(30),
            },
            13 => Op::Unlink { path: self.path() },
            14 => {
                let path = if self.rng.chance(70) {
                    self.new_path()
                } else {
                    self.path()
                };
                Op::Mkdir {
                    path,
                    mode: self.mode(),
                }
            }
            15 => Op::Rmdir { path: self.path() },
            16 => {
                // Mostly existing sources, a third of them directories (lower, merged or
                // created: the cases fuse-overlayfs refuses with EXDEV).
                let from = match self.rng.below(10) {
                    0..=2 => self.dir(),
                    3..=7 => self.pick_view(0),
                    _ => self.path(),
                };
                let to = if self.rng.chance(50) {
                    self.new_path()
                } else {
                    self.path()
                };
                Op::Rename {
                    from,
                    to,
                    flags: match self.rng.below(10) {
                        0..=5 => 0,
                        6..=7 => libc::RENAME_NOREPLACE,
                        _ => libc::RENAME_EXCHANGE,
                    },
                }
            }
            17 => {
                let from = self.file();
                let to = if self.rng.chance(75) {
                    self.new_path()
                } else {
                    self.path()
                };
                Op::Link { from, to }
            }
            18 => {
                let target = match self.rng.below(8) {
                    0 => b"/etc/passwd".to_vec(),
                    1 => b"../a".to_vec(),
                    2 => b"does-not-exist".to_vec(),
                    3 => vec![b't'; self.rng.range(200, 1500) as usize],
                    4 => Vec::new(),
                    5 => {
                        let mut t = b"/".to_vec();
                        t.extend(self.path());
                        t
                    }
                    _ => self.name(),
                };
                let path = if self.rng.chance(75) {
                    self.new_path()
                } else {
                    self.path()
                };
                Op::Symlink { target, path }
            }
            19 => Op::Readlink { path: self.path() },
            20 => Op::Chmod {
                path: self.path(),
                mode: self.mode(),
            },
            21 => {
                let ids = [None, Some(0), Some(1000), Some(1234), Some(65534)];
                let gids = [None, Some(0), Some(6), Some(1000), Some(5678)];
                Op::Chown {
                    path: self.path(),
                    uid: *self.rng.pick(&ids),
                    gid: *self.rng.pick(&gids),
                }
            }
            22 => Op::Utimens {
                path: self.path(),
                atime: self.time(),
                mtime: self.time(),
            },
            23 => {
                let len = if self.rng.chance(10) {
                    self.rng.range(200, 1000)
                } else {
                    self.rng.below(40)
                };
                Op::SetXattr {
                    path: self.path(),
                    name: self.xattr_name(false),
                    value: harness::fill(self.rng.next_u64(), len as usize),
                    flags: *self.rng.pick(&[0, 0, 1, 2]),
                }
            }
            24 => Op::GetXattr {
                path: self.path(),
                name: self.xattr_name(true),
            },
            25 => Op::ListXattr { path: self.path() },
            26 => Op::RemoveXattr {
                path: self.path(),
                name: self.xattr_name(false),
            },
            27 => {
                let path = if self.rng.chance(75) {
                    self.new_path()
                } else {
                    self.path()
                };
                Op::Mknod {
                    path,
                    socket: self.rng.chance(30),
                    mode: self.mode(),
                }
            }
            _ => Op::Readdir {
                path: if self.rng.chance(30) {
                    self.dir()
                } else {
                    self.path()
                },
            },
        }
    }
}

// ---------------------------------------------------------------------------------------
// Running sequences on fresh mounts.

pub struct Config {
    /// The sample image directory (`layers/*.tar`, `oci/`).
    pub image_dir: PathBuf,
    /// The strata binary for side B; `None`: side B is kernel overlayfs too (self-test).
    pub strata: Option<PathBuf>,
    /// Where to create the work directory (default: the system temp dir).
    pub work_parent: Option<PathBuf>,
    /// Most fresh-mount runs spent shrinking one failure.
    pub shrink_runs: usize,
    /// Most time spent shrinking one failure.
    pub shrink_time: Duration,
    /// An operation (or the final comparison) taking longer than this aborts the process
    /// with a report: a hung FUSE request would otherwise hang the test forever.
    pub op_timeout: Duration,
    /// Deliberate misbehaviour of side B (engine self-test).
    pub fault: Option<Fault>,
    /// Shrink failures (off: report the first mismatch only, e.g. to survey many seeds).
    pub shrink: bool,
    pub verbose: bool,
}

impl Config {
    pub fn new(image_dir: &Path, strata: Option<PathBuf>) -> Config {
        Config {
            image_dir: image_dir.to_path_buf(),
            strata,
            work_parent: None,
            shrink_runs: 400,
            shrink_time: Duration::from_secs(180),
            op_timeout: Duration::from_secs(60),
            fault: None,
            shrink: true,
            verbose: false,
        }
    }
}

pub enum Outcome {
    Clean,
    /// `at`: the index of the operation whose results differ, or `None` for the final tree
    /// comparison.
    Mismatch {
        at: Option<usize>,
        msg: String,
    },
}

/// A failing seed, its first mismatch, and the shrunk sequence.
pub struct Failure {
    pub seed: u64,
    pub ops: usize,
    pub at: Option<usize>,
    pub msg: String,
    pub minimal: Vec<Op>,
    pub minimal_msg: String,
    pub minimal_at: Option<usize>,
    pub shrink_runs: usize,
    pub reproduced: bool,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let at = |a: Option<usize>| match a {
            Some(i) => format!("at operation #{i}"),
            None => "in the final tree comparison".to_string(),
        };
        writeln!(
            f,
            "MISMATCH: seed {} ({} operations), {}:\n  {}",
            self.seed,
            self.ops,
            at(self.at),
            self.msg
        )?;
        if !self.reproduced {
            writeln!(
                f,
                "  (did not reproduce on fresh mounts: nondeterministic; nothing shrunk)"
            )?;
        }
        writeln!(
            f,
            "minimal failing sequence ({} operations, shrunk in {} runs):",
            self.minimal.len(),
            self.shrink_runs,
        )?;
        for (i, op) in self.minimal.iter().enumerate() {
            writeln!(f, "  {i:3}: {op}")?;
        }
        writeln!(
            f,
            "which fails {}:\n  {}",
            at(self.minimal_at),
            self.minimal_msg
        )?;
        write!(f, "reproduce: --seed {} --ops {}", self.seed, self.ops)
    }
}

/// Aborts the process with a report when an operation hangs (bounded waits everywhere,
/// including inside a FUSE request): kills the strata daemons we started and detaches the
/// mounts first, so nothing is left behind.
struct Watchdog {
    state: Arc<Mutex<WatchState>>,
}

#[derive(Default)]
struct WatchState {
    deadline: Option<Instant>,
    what: String,
    pids: Vec<i32>,
    mounts: Vec<PathBuf>,
    stop: bool,
}

impl Watchdog {
    fn start() -> Watchdog {
        let state = Arc::new(Mutex::new(WatchState::default()));
        let s = state.clone();
        std::thread::spawn(move || {
            loop {
                std::thread::sleep(Duration::from_millis(100));
                let st = s.lock().unwrap();
                if st.stop {
                    return;
                }
                if st.deadline.is_some_and(|d| Instant::now() > d) {
                    eprintln!("difftest: HUNG: {}", st.what);
                    for &p in &st.pids {
                        harness::kill9(p);
                    }
                    for m in &st.mounts {
                        let _ = strata::sys::unmount_lazy(m);
                    }
                    std::process::exit(3);
                }
            }
        });
        Watchdog { state }
    }
    fn arm(&self, limit: Duration, what: impl FnOnce() -> String) {
        let mut s = self.state.lock().unwrap();
        s.deadline = Some(Instant::now() + limit);
        s.what = what();
    }
    fn disarm(&self) {
        self.state.lock().unwrap().deadline = None;
    }
    fn watch(&self, pid: Option<i32>, mounts: &[&Path]) {
        let mut s = self.state.lock().unwrap();
        s.pids = pid.into_iter().collect();
        s.mounts = mounts.iter().map(|m| m.to_path_buf()).collect();
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.state.lock().unwrap().stop = true;
    }
}

/// Side B's file system.
enum SideB {
    Kernel(Overlay),
    Strata {
        strata: Strata,
        /// The live mount of the current run.
        current: Option<StrataMount>,
        /// Detached mounts whose daemons may still be exiting: (pid, their directory).
        exiting: Vec<(i32, PathBuf)>,
        runs: u64,
        base: PathBuf,
    },
}

impl SideB {
    /// A fresh, pristine mount; returns its mount point and daemon pid (strata).
    fn fresh(&mut self) -> anyhow::Result<(PathBuf, Option<i32>)> {
        match self {
            SideB::Kernel(o) => {
                o.reset()?;
                o.mount()?;
                Ok((o.mnt.clone(), None))
            }
            SideB::Strata {
                strata: st,
                current,
                exiting,
                runs,
                base,
            } => {
                if let Some(m) = current.take() {
                    let dir = m.mnt.parent().unwrap().to_path_buf();
                    exiting.push((m.detach(), dir));
                }
                // A daemon exits on its own a moment after its mount goes away; remove the
                // directories of those that have, and wait for the oldest when many pile up.
                exiting.retain(|(pid, dir)| {
                    if strata::sys::process_alive(*pid) {
                        return true;
                    }
                    let _ = std::fs::remove_dir_all(dir);
                    false
                });
                while exiting.len() > 4 {
                    let (pid, dir) = exiting.remove(0);
                    StrataMount::finish(pid);
                    let _ = std::fs::remove_dir_all(dir);
                }
                *runs += 1;
                let dir = base.join(format!("s{runs}"));
                std::fs::create_dir_all(&dir)?;
                let m = StrataMount::mount(st, &dir.join("mnt"), &dir.join("layer"))?;
                let out = (m.mnt.clone(), Some(m.pid));
                *current = Some(m);
                Ok(out)
            }
        }
    }
}

impl Drop for SideB {
    fn drop(&mut self) {
        if let SideB::Strata {
            current, exiting, ..
        } = self
        {
            drop(current.take());
            for (pid, _) in exiting.drain(..) {
                StrataMount::finish(pid);
            }
        }
    }
}

/// Runs sequences against a pair of fresh mounts per run.
pub struct Tester {
    pub cfg: Config,
    pub pool: Pool,
    /// Operations of passing seeds (all compared equal).
    pub ops_clean: u64,
    /// Fresh-mount runs so far (including shrinking).
    pub runs: u64,
    watchdog: Watchdog,
    a: Overlay,
    b: SideB,
    /// Last: removed after everything above is unmounted.
    _work: tempfile::TempDir,
}

impl Tester {
    pub fn new(cfg: Config) -> anyhow::Result<Tester> {
        let work = match &cfg.work_parent {
            Some(p) => tempfile::Builder::new().prefix("difftest-").tempdir_in(p)?,
            None => tempfile::Builder::new().prefix("difftest-").tempdir()?,
        };
        let layers = harness::layer_tars(&cfg.image_dir);
        anyhow::ensure!(
            !layers.is_empty(),
            "no layers in {}",
            cfg.image_dir.display()
        );
        let lowers = harness::extract_lowers(&layers, &work.path().join("lowers"))?;
        let a = Overlay::new(&lowers, &work.path().join("kernel"))?;
        let b = match &cfg.strata {
            None => SideB::Kernel(Overlay::new(&lowers, &work.path().join("kernel-b"))?),
            Some(bin) => SideB::Strata {
                strata: Strata::load(bin, &work.path().join("root"), &cfg.image_dir)?,
                current: None,
                exiting: Vec::new(),
                runs: 0,
                base: work.path().join("strata"),
            },
        };
        a.mount()?;
        let pool = Pool::learn(&a.mnt, &lowers)?;
        a.unmount()?;
        Ok(Tester {
            cfg,
            pool,
            ops_clean: 0,
            runs: 0,
            watchdog: Watchdog::start(),
            a,
            b,
            _work: work,
        })
    }

    pub fn side_b_name(&self) -> &'static str {
        match self.b {
            SideB::Kernel(_) => "kernel overlayfs (--both-kernel)",
            SideB::Strata { .. } => "strata",
        }
    }

    /// Runs `ops` on a fresh pair of mounts and compares.
    pub fn run_ops(&mut self, ops: &[Op]) -> anyhow::Result<Outcome> {
        self.run(&mut ops.to_vec(), None)
    }

    /// Runs `ops` on fresh mounts; with `generator`, first generates `n` operations into `ops`,
    /// one at a time, each from the kernel side's results so far.
    fn run(
        &mut self,
        ops: &mut Vec<Op>,
        mut generator: Option<(&mut Gen, usize)>,
    ) -> anyhow::Result<Outcome> {
        self.runs += 1;
        self.a.reset()?;
        self.a.mount()?;
        let (mnt_b, pid) = self.b.fresh()?;
        let mnt_a = self.a.mnt.clone();
        self.watchdog
            .watch(pid, &[mnt_a.as_path(), mnt_b.as_path()]);
        let mut a = Side::open(&mnt_a, None)?;
        let mut b = Side::open(&mnt_b, self.cfg.fault)?;
        let mut times = Times::of(ops);
        let limit = self.cfg.op_timeout;
        for i in 0.. {
            match &mut generator {
                Some((g, n)) if i < *n => {
                    let op = g.op();
                    if let Op::Utimens { mtime, .. } = &op {
                        times.explicit.insert(*mtime);
                    }
                    ops.push(op);
                }
                _ if i < ops.len() => {}
                _ => break,
            }
            let op = &ops[i];
            self.watchdog
                .arm(limit, || format!("operation #{i} did not return: {op}"));
            let ra = a.exec(op);
            // Kernel overlayfs may refuse a directory rename with EXDEV (e.g. a redirect
            // longer than redirect_max); strata renames natively (DESIGN §4). That intended
            // difference is not compared: the rename is skipped on side B, so both trees
            // stay the same.
            let rb = if matches!(op, Op::Rename { .. }) && ra == Err(libc::EXDEV) {
                ra.clone()
            } else {
                b.exec(op)
            };
            let diff = compare_results(&ra, &rb, &times, &mnt_a, &mnt_b);
            self.watchdog.disarm();
            if self.cfg.verbose {
                eprintln!("  #{i} {op} → {}", show_res(&ra));
            }
            if let Some(msg) = diff {
                return Ok(Outcome::Mismatch {
                    at: Some(i),
                    msg: format!("{op}\n  {msg}"),
                });
            }
            if let Some((g, _)) = &mut generator {
                g.observe(op, &ra);
            }
        }
        a.close_all();
        b.close_all();
        self.watchdog
            .arm(limit, || "the final tree comparison did not finish".into());
        let sa = Snapshot::take(&mnt_a);
        let sb = Snapshot::take(&mnt_b);
        self.watchdog.disarm();
        let sa = sa.map_err(|e| anyhow::anyhow!("walking the kernel tree: {e}"))?;
        let outcome = match sb {
            Err(e) => Outcome::Mismatch {
                at: None,
                msg: format!("walking strata's tree failed: {e}"),
            },
            Ok(sb) => match compare_trees(&sa, &sb, &times) {
                Some(msg) => Outcome::Mismatch { at: None, msg },
                None => Outcome::Clean,
            },
        };
        Ok(outcome)
    }

    /// Generates and runs one seed; on a mismatch, shrinks it.
    pub fn run_seed(&mut self, seed: u64, n: usize) -> anyhow::Result<Option<Failure>> {
        let mut generator = Gen::new(seed, &self.pool);
        let mut ops = Vec::with_capacity(n);
        match self.run(&mut ops, Some((&mut generator, n)))? {
            Outcome::Clean => {
                self.ops_clean += ops.len() as u64;
                Ok(None)
            }
            Outcome::Mismatch { at, msg } => {
                let (minimal, minimal_at, minimal_msg, runs, reproduced) = if self.cfg.shrink {
                    self.shrink(&ops, at, &msg)?
                } else {
                    let keep = at.map_or(ops.len(), |i| i + 1);
                    (ops[..keep].to_vec(), at, msg.clone(), 0, true)
                };
                Ok(Some(Failure {
                    seed,
                    ops: n,
                    at,
                    msg,
                    minimal,
                    minimal_msg,
                    minimal_at,
                    shrink_runs: runs,
                    reproduced,
                }))
            }
        }
    }

    /// Delta debugging (ddmin): removes chunks of the sequence while it still fails,
    /// halving the chunk size down to single operations. Bounded by `shrink_runs` and
    /// `shrink_time`. Any mismatch counts as "still fails".
    #[allow(clippy::type_complexity)]
    pub fn shrink(
        &mut self,
        ops: &[Op],
        at: Option<usize>,
        msg: &str,
    ) -> anyhow::Result<(Vec<Op>, Option<usize>, String, usize, bool)> {
        let deadline = Instant::now() + self.cfg.shrink_time;
        let mut runs = 0usize;
        let mut cur: Vec<Op> = ops.to_vec();
        let (mut cur_at, mut cur_msg) = (at, msg.to_string());
        if let Some(i) = at {
            cur.truncate(i + 1);
        }
        // First: does it fail again on fresh mounts?
        runs += 1;
        match self.run_ops(&cur)? {
            Outcome::Clean => return Ok((cur, cur_at, cur_msg, runs, false)),
            Outcome::Mismatch { at, msg } => {
                if let Some(i) = at {
                    cur.truncate(i + 1);
                }
                (cur_at, cur_msg) = (at, msg);
            }
        }
        let mut n = 2usize;
        'outer: while cur.len() >= 2 {
            let chunk = cur.len().div_ceil(n);
            let mut start = 0;
            while start < cur.len() {
                if runs >= self.cfg.shrink_runs || Instant::now() > deadline {
                    break 'outer;
                }
                let mut cand = cur.clone();
                cand.drain(start..(start + chunk).min(cur.len()));
                runs += 1;
                if let Outcome::Mismatch { at, msg } = self.run_ops(&cand)? {
                    if let Some(i) = at {
                        cand.truncate(i + 1);
                    }
                    cur = cand;
                    (cur_at, cur_msg) = (at, msg);
                    n = (n - 1).max(2);
                    continue 'outer;
                }
                start += chunk;
            }
            if n >= cur.len() {
                break;
            }
            n = (n * 2).min(cur.len());
        }
        Ok((cur, cur_at, cur_msg, runs, true))
    }
}

//! Executing operations on one side: a mount and the descriptors a sequence holds open in it.

use super::*;

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

    /// Whether a descriptor open read-only refers to the file at `path` (followed), and that
    /// file has at least `min` bytes.
    pub fn reading(&self, path: &[u8], min: u64) -> bool {
        let Ok(target) = self
            .openat2(path, OFlags::PATH, 0)
            .and_then(|fd| rustix::fs::fstat(&fd).map_err(errno_of))
        else {
            return false;
        };
        if (target.st_size as u64) < min {
            return false;
        }
        self.slots.iter().flatten().any(|fd| {
            let read_only =
                rustix::fs::fcntl_getfl(fd).is_ok_and(|f| f & OFlags::ACCMODE == OFlags::RDONLY);
            read_only
                && rustix::fs::fstat(fd)
                    .is_ok_and(|s| (s.st_dev, s.st_ino) == (target.st_dev, target.st_ino))
        })
    }

    /// What `op` does to this side when the other refused it with ETXTBSY: an `Open` still
    /// closes what its slot held.
    pub fn refused(&mut self, op: &Op) -> Res {
        if let Op::Open { slot, .. } = op {
            self.slots[*slot] = None;
        }
        Err(libc::ETXTBSY)
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
        let mut d = crate::fill(seed, len);
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

//! How operations, results and paths are printed in a report.

use super::*;

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

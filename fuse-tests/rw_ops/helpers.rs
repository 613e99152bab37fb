//! Small helpers.

use super::*;

pub(crate) const INDEX: &[u8] = b"hello from strata\n";
pub(crate) const MIB: u64 = 1 << 20;

/// `srv/deep/d01/…/d20`: a lower directory 20 levels down.
pub(crate) fn lower_deep() -> String {
    let parts: Vec<String> = (1..=20).map(|i| format!("d{i:02}")).collect();
    format!("srv/deep/{}", parts.join("/"))
}

/// The directory of the GNU long-name hard-link pair (layer 4).
pub(crate) fn gnu_dir() -> String {
    format!("srv/gnu-longnames/{}/{}", "d".repeat(60), "e".repeat(60))
}

pub(crate) fn enoent(p: &Path) {
    expect_errno(
        std::fs::symlink_metadata(p),
        ENOENT,
        &format!("lstat {}", p.display()),
    );
}

pub(crate) fn rename2(a: &Path, b: &Path, flags: RenameFlags) -> io::Result<()> {
    rx(rustix::fs::renameat_with(CWD, a, CWD, b, flags))
}

pub(crate) fn truncate(p: &Path, len: u64) -> io::Result<()> {
    let c = cpath(p);
    // SAFETY: a NUL-terminated path.
    if unsafe { libc::truncate(c.as_ptr(), len as libc::off_t) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

pub(crate) fn write_at(p: &Path, off: u64, data: &[u8]) {
    let f = OpenOptions::new().write(true).open(p).unwrap();
    f.write_all_at(data, off).unwrap();
}

pub(crate) fn getx(p: &Path, name: &str) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; 64 * 1024];
    let n = rx(rustix::fs::lgetxattr(p, name, &mut buf[..]))?;
    buf.truncate(n);
    Ok(buf)
}

pub(crate) fn setx(p: &Path, name: &str, value: &[u8], flags: XattrFlags) -> io::Result<()> {
    rx(rustix::fs::lsetxattr(p, name, value, flags))
}

pub(crate) fn listx(p: &Path) -> Vec<String> {
    let mut buf = vec![0u8; 64 * 1024];
    let n = rustix::fs::llistxattr(p, &mut buf[..]).unwrap();
    let mut v: Vec<String> = buf[..n]
        .split(|&b| b == 0)
        .filter(|s| !s.is_empty())
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .collect();
    v.sort();
    v
}

pub(crate) fn set_times(p: &Path, atime: (i64, i64), mtime: (i64, i64)) {
    let ts = rustix::fs::Timestamps {
        last_access: rustix::fs::Timespec {
            tv_sec: atime.0,
            tv_nsec: atime.1 as _,
        },
        last_modification: rustix::fs::Timespec {
            tv_sec: mtime.0,
            tv_nsec: mtime.1 as _,
        },
    };
    rustix::fs::utimensat(CWD, p, &ts, AtFlags::SYMLINK_NOFOLLOW).unwrap();
}

/// (type bits + permissions, uid, gid, atime, mtime) of a path, for metadata comparisons.
type Attrs = (u32, u32, u32, (i64, i64), (i64, i64));

pub(crate) fn attrs(p: &Path) -> Attrs {
    let m = lstat(p);
    (
        m.mode(),
        m.uid(),
        m.gid(),
        (m.atime(), m.atime_nsec()),
        (m.mtime(), m.mtime_nsec()),
    )
}

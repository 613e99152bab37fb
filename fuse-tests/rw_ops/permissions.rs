//! Permissions for a non-root caller.

use super::*;

/// Child-side operations for [`as_user`]: each returns 0 or the errno.
pub(crate) mod child {
    use super::*;

    pub type Op = Box<dyn FnOnce() -> i32>;

    pub fn c(p: &str) -> CString {
        CString::new(p).unwrap()
    }

    pub fn open(p: &str, flags: i32) -> Op {
        let p = c(p);
        Box::new(move || {
            // SAFETY: plain libc calls on a NUL-terminated path and a local buffer.
            unsafe {
                let fd = libc::open(p.as_ptr(), flags | libc::O_CLOEXEC, 0o644);
                if fd < 0 {
                    return last_errno();
                }
                if flags & libc::O_ACCMODE != libc::O_RDONLY
                    && libc::write(fd, b"x".as_ptr().cast(), 1) != 1
                {
                    return last_errno();
                }
                if flags & libc::O_ACCMODE == libc::O_RDONLY && flags & libc::O_DIRECTORY == 0 {
                    let mut buf = [0u8; 16];
                    if libc::read(fd, buf.as_mut_ptr().cast(), 16) < 0 {
                        return last_errno();
                    }
                }
                libc::close(fd);
                0
            }
        })
    }

    pub fn call(f: impl FnOnce() -> i32) -> i32 {
        // Map a -1 return to errno.
        if f() == 0 { 0 } else { last_errno() }
    }

    pub fn mkdir(p: &str) -> Op {
        let p = c(p);
        // SAFETY: libc call on a NUL-terminated path.
        Box::new(move || call(|| unsafe { libc::mkdir(p.as_ptr(), 0o755) }))
    }

    pub fn unlink(p: &str) -> Op {
        let p = c(p);
        // SAFETY: as above.
        Box::new(move || call(|| unsafe { libc::unlink(p.as_ptr()) }))
    }

    pub fn rename(a: &str, b: &str) -> Op {
        let (a, b) = (c(a), c(b));
        // SAFETY: as above.
        Box::new(move || call(|| unsafe { libc::rename(a.as_ptr(), b.as_ptr()) }))
    }

    pub fn chmod(p: &str) -> Op {
        let p = c(p);
        // SAFETY: as above.
        Box::new(move || call(|| unsafe { libc::chmod(p.as_ptr(), 0o777) }))
    }

    pub fn chown(p: &str, uid: u32) -> Op {
        let p = c(p);
        // SAFETY: as above.
        Box::new(move || call(|| unsafe { libc::lchown(p.as_ptr(), uid, u32::MAX) }))
    }

    /// `utimensat(path, NULL)`: set both times to now (needs write permission or ownership).
    pub fn touch(p: &str) -> Op {
        let p = c(p);
        // SAFETY: as above; a null times pointer means "now".
        Box::new(move || {
            call(|| unsafe { libc::utimensat(libc::AT_FDCWD, p.as_ptr(), std::ptr::null(), 0) })
        })
    }

    pub fn setxattr(p: &str) -> Op {
        let p = c(p);
        let n = c("user.x");
        // SAFETY: as above.
        Box::new(move || {
            call(|| unsafe { libc::lsetxattr(p.as_ptr(), n.as_ptr(), b"1".as_ptr().cast(), 1, 0) })
        })
    }
}

pub(crate) fn non_root_permissions(b: &dyn Backend) {
    use libc::{O_CREAT, O_DIRECTORY, O_EXCL, O_RDONLY, O_WRONLY};
    let m = b.mount();
    // As root: a file in the setgid dir takes the dir's group; a dir there keeps the setgid bit.
    std::fs::write(m.p("srv/perms/setgid-dir/by-root"), b"r").unwrap();
    assert_eq!(lstat(&m.p("srv/perms/setgid-dir/by-root")).gid(), 1000);
    std::fs::create_dir(m.p("srv/perms/setgid-dir/sub")).unwrap();
    let st = lstat(&m.p("srv/perms/setgid-dir/sub"));
    assert_eq!((st.gid(), st.mode() & 0o2000), (1000, 0o2000));

    type Check = (&'static str, u32, child::Op, i32);
    let checks: Vec<Check> = vec![
        (
            "create in /home/user (owned by 1000)",
            1000,
            (child::open("home/user/mine.txt", O_WRONLY | O_CREAT | O_EXCL)),
            0,
        ),
        (
            "mkdir in /home/user",
            1000,
            (child::mkdir("home/user/dir")),
            0,
        ),
        (
            "write /home/user/notes.txt (1000's lower file)",
            1000,
            (child::open("home/user/notes.txt", O_WRONLY)),
            0,
        ),
        (
            "read www/index.html",
            1000,
            (child::open("www/index.html", O_RDONLY)),
            0,
        ),
        (
            "read etc/passwd",
            1000,
            (child::open("etc/passwd", O_RDONLY)),
            0,
        ),
        (
            "write etc/passwd",
            1000,
            (child::open("etc/passwd", O_WRONLY)),
            EACCES,
        ),
        (
            "create in etc",
            1000,
            (child::open("etc/new", O_WRONLY | O_CREAT | O_EXCL)),
            EACCES,
        ),
        ("mkdir in etc", 1000, (child::mkdir("etc/newdir")), EACCES),
        (
            "unlink etc/passwd",
            1000,
            (child::unlink("etc/passwd")),
            EACCES,
        ),
        (
            "rename etc/passwd away",
            1000,
            (child::rename("etc/passwd", "home/user/passwd")),
            EACCES,
        ),
        (
            "chmod etc/passwd",
            1000,
            (child::chmod("etc/passwd")),
            EPERM,
        ),
        (
            "chown own file to root",
            1000,
            (child::chown("home/user/notes.txt", 0)),
            EPERM,
        ),
        (
            "touch etc/passwd",
            1000,
            (child::touch("etc/passwd")),
            EACCES,
        ),
        (
            "setxattr on etc/passwd",
            1000,
            (child::setxattr("etc/passwd")),
            EACCES,
        ),
        (
            "read a 0000 file",
            1000,
            (child::open("srv/perms/no-permissions", O_RDONLY)),
            EACCES,
        ),
        (
            "read a 0111 file",
            1000,
            (child::open("srv/perms/exec-only", O_RDONLY)),
            EACCES,
        ),
        (
            "open /root (0700)",
            1000,
            (child::open("root", O_RDONLY | O_DIRECTORY)),
            EACCES,
        ),
        (
            "create in a 0555 dir",
            1000,
            (child::open("srv/perms/read-only-dir/new", O_WRONLY | O_CREAT)),
            EACCES,
        ),
        (
            "read in 1000's 0700 dir",
            1000,
            (child::open("srv/owners/dir-1000/private.txt", O_RDONLY)),
            0,
        ),
        (
            "read in 1000's 0700 dir as 1001",
            1001,
            (child::open("srv/owners/dir-1000/private.txt", O_RDONLY)),
            EACCES,
        ),
        // Sticky dir: others may create, but not delete 1000's file.
        (
            "create in the sticky dir as 1001",
            1001,
            (child::open("srv/perms/sticky-dir/by-1001", O_WRONLY | O_CREAT)),
            0,
        ),
        (
            "unlink 1000's file in the sticky dir as 1001",
            1001,
            (child::unlink("srv/perms/sticky-dir/owned-by-user")),
            EPERM,
        ),
        (
            "unlink own file in the sticky dir",
            1000,
            (child::unlink("srv/perms/sticky-dir/owned-by-user")),
            0,
        ),
        // The file made writable for 1000 by the first check.
        (
            "write own new file",
            1000,
            (child::open("home/user/mine.txt", O_WRONLY)),
            0,
        ),
        (
            "write 1000's new file as 1001",
            1001,
            (child::open("home/user/mine.txt", O_WRONLY)),
            EACCES,
        ),
    ];
    let mut wrong = Vec::new();
    for (what, uid, f, want) in checks {
        let got = as_user(uid, uid, &m.mnt, f);
        if got != want {
            wrong.push(format!(
                "{what} (uid {uid}): got {}, want {}",
                io::Error::from_raw_os_error(got),
                io::Error::from_raw_os_error(want)
            ));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    // What the caller created belongs to the caller.
    let st = lstat(&m.p("home/user/mine.txt"));
    assert_eq!(
        (st.uid(), st.gid(), st.mode() & 0o7777),
        (1000, 1000, 0o644)
    );
    let st = lstat(&m.p("home/user/dir"));
    assert_eq!((st.uid(), st.gid()), (1000, 1000));
    assert_eq!(lstat(&m.p("srv/perms/sticky-dir/by-1001")).uid(), 1001);
    enoent(&m.p("srv/perms/sticky-dir/owned-by-user"));
    assert!(read(&m.p("etc/passwd")).starts_with(b"root:"));
}

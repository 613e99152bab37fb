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

    pub fn truncate(p: &str) -> Op {
        let p = c(p);
        // SAFETY: as above.
        Box::new(move || call(|| unsafe { libc::truncate(p.as_ptr(), 0) }))
    }

    /// `lchown(path, -1, gid)`.
    pub fn chgrp(p: &str, gid: u32) -> Op {
        let p = c(p);
        // SAFETY: as above.
        Box::new(move || call(|| unsafe { libc::lchown(p.as_ptr(), u32::MAX, gid) }))
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

/// The setuid and setgid bits go as the kernel drops them on its own file systems. Strata asks
/// the kernel to leave this to the file system (FUSE_HANDLE_KILLPRIV_V2: one GETATTR less per
/// chown), so it applies the kernel's rules itself: a write or truncate by a caller without
/// CAP_FSETID drops setuid, and setgid when the group may execute or the caller is not in the
/// file's group; chown drops setuid whoever calls, and setgid by the same group rule;
/// directories keep theirs.
pub(crate) fn setuid_bits_dropped(b: &dyn Backend) {
    use libc::O_WRONLY;
    #[derive(Clone, Copy, Debug)]
    enum Act {
        UserWrites,
        RootWrites,
        UserTruncates,
        RootTruncates,
        RootChowns,
        UserChownsGroup,
        RootChownsNothing,
    }
    use Act::*;
    // (name, owner uid = gid, mode before, what happens, mode after)
    let cases: &[(&str, u32, u32, Act, u32)] = &[
        ("user-writes", 0, 0o6777, UserWrites, 0o777),
        ("user-writes-sgid-noexec", 0, 0o6766, UserWrites, 0o766),
        (
            "user-writes-own-sgid-noexec",
            1000,
            0o6766,
            UserWrites,
            0o2766,
        ),
        ("user-writes-plain", 0, 0o777, UserWrites, 0o777),
        ("root-writes", 0, 0o6777, RootWrites, 0o6777),
        ("user-truncates", 0, 0o6777, UserTruncates, 0o777),
        ("root-truncates", 0, 0o6777, RootTruncates, 0o6777),
        ("root-chowns", 0, 0o6755, RootChowns, 0o755),
        ("root-chowns-sgid-noexec", 0, 0o6644, RootChowns, 0o2644),
        ("user-chowns-group", 1000, 0o6754, UserChownsGroup, 0o754),
        ("root-chowns-nothing", 0, 0o7755, RootChownsNothing, 0o1755),
        (
            "root-chowns-nothing-sgid-noexec",
            0,
            0o6744,
            RootChownsNothing,
            0o2744,
        ),
    ];
    let mut m = b.mount();
    let dir = m.p("home/user/suid");
    std::fs::create_dir(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    let rel = |name: &str| format!("home/user/suid/{name}");
    let mut wrong = Vec::new();
    for &(name, owner, before, act, after) in cases {
        let p = m.p(&rel(name));
        std::fs::write(&p, b"0123456789").unwrap();
        std::os::unix::fs::lchown(&p, Some(owner), Some(owner)).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(before)).unwrap();
        assert_eq!(lstat(&p).mode() & 0o7777, before, "{name}: set up");
        let rc = match act {
            UserWrites => as_user(1000, 1000, &m.mnt, child::open(&rel(name), O_WRONLY)),
            UserTruncates => as_user(1000, 1000, &m.mnt, child::truncate(&rel(name))),
            UserChownsGroup => as_user(1000, 1000, &m.mnt, child::chgrp(&rel(name), 1000)),
            RootWrites => {
                let f = OpenOptions::new().write(true).open(&p).unwrap();
                f.write_at(b"x", 3).unwrap();
                0
            }
            RootTruncates => {
                truncate(&p, 0).unwrap();
                0
            }
            RootChowns => {
                std::os::unix::fs::lchown(&p, Some(1000), Some(1000)).unwrap();
                0
            }
            RootChownsNothing => {
                std::os::unix::fs::lchown(&p, None, None).unwrap();
                0
            }
        };
        assert_eq!(
            rc,
            0,
            "{name}: {act:?}: {}",
            io::Error::from_raw_os_error(rc)
        );
        let got = lstat(&p).mode() & 0o7777;
        if got != after {
            wrong.push(format!(
                "{name} ({act:?}): {before:04o} became {got:04o}, want {after:04o}"
            ));
        }
    }
    // A directory keeps its setgid bit through chown.
    let d = m.p("home/user/suid/dir");
    std::fs::create_dir(&d).unwrap();
    std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o2755)).unwrap();
    std::os::unix::fs::lchown(&d, Some(1000), Some(1000)).unwrap();
    let got = lstat(&d).mode() & 0o7777;
    if got != 0o2755 {
        wrong.push(format!("dir (chown): 2755 became {got:04o}"));
    }
    // A lower file (its data copied up by the write) loses them the same way.
    let lower = m.p("home/user/notes.txt");
    std::fs::set_permissions(&lower, std::fs::Permissions::from_mode(0o6770)).unwrap();
    assert_eq!(
        as_user(
            1001,
            1001,
            &m.mnt,
            child::open("home/user/notes.txt", O_WRONLY)
        ),
        EACCES
    );
    std::fs::set_permissions(&lower, std::fs::Permissions::from_mode(0o6777)).unwrap();
    assert_eq!(
        as_user(
            1001,
            1001,
            &m.mnt,
            child::open("home/user/notes.txt", O_WRONLY)
        ),
        0
    );
    let got = lstat(&lower).mode() & 0o7777;
    if got != 0o777 {
        wrong.push(format!(
            "lower notes.txt (write by 1001): 6777 became {got:04o}"
        ));
    }
    // Root's write into a setuid file with capabilities drops the capabilities only.
    let caps = m.p("srv/xattrs/cap-net-bind-service");
    std::fs::set_permissions(&caps, std::fs::Permissions::from_mode(0o7400)).unwrap();
    OpenOptions::new()
        .write(true)
        .open(&caps)
        .unwrap()
        .write_at(b"x", 0)
        .unwrap();
    let got = lstat(&caps).mode() & 0o7777;
    if got != 0o7400 {
        wrong.push(format!(
            "cap-net-bind-service (root writes): 7400 became {got:04o}"
        ));
    }
    if rustix::fs::lgetxattr(&caps, "security.capability", &mut [0u8; 64]).is_ok() {
        wrong.push("cap-net-bind-service (root writes): security.capability stayed".into());
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    // What was dropped stays dropped after a remount.
    m.remount();
    assert_eq!(
        lstat(&m.p("home/user/suid/user-writes")).mode() & 0o7777,
        0o777
    );
    assert_eq!(
        lstat(&m.p("home/user/suid/root-writes")).mode() & 0o7777,
        0o6777
    );
}

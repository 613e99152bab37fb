//! Links, symlinks, metadata, xattrs.

use super::*;

pub(crate) fn hard_links(b: &dyn Backend) {
    let mut m = b.mount();
    // A hard link to a lower file.
    let index = m.p("www/index.html");
    let hl = m.p("www/hl.html");
    assert_eq!(lstat(&index).nlink(), 1);
    std::fs::hard_link(&index, &hl).unwrap();
    let (a, c) = (lstat(&index), lstat(&hl));
    assert_eq!(a.ino(), c.ino(), "both names are one inode");
    // strata: right on the first stat (DESIGN §4). Kernel overlayfs (index=on) also gives 2.
    assert_eq!((a.nlink(), c.nlink()), (2, 2), "st_nlink after link");
    // Content shared both ways.
    std::fs::write(&hl, b"shared\n").unwrap();
    assert_eq!(read(&index), b"shared\n");
    write_at(&index, 0, b"S");
    assert_eq!(read(&hl), b"Shared\n");
    // Metadata is shared too: mode, owner, xattrs.
    std::fs::set_permissions(&hl, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::os::unix::fs::lchown(&hl, Some(7), Some(8)).unwrap();
    setx(&hl, "user.shared", b"yes", XattrFlags::empty()).unwrap();
    let a = lstat(&index);
    assert_eq!((a.mode() & 0o7777, a.uid(), a.gid()), (0o600, 7, 8));
    assert_eq!(getx(&index, "user.shared").unwrap(), b"yes");

    // A hard link to a lower file that already has 2 names (layer 4).
    let dir = gnu_dir();
    let one = m.p(&format!("{dir}/file-with-a-gnu-longname-record.txt"));
    let two = m.p(&format!(
        "{dir}/hard-link-with-a-long-name-and-a-long-target.txt"
    ));
    let three = m.p("www/gnu-third");
    assert_eq!(lstat(&one).nlink(), 2);
    std::fs::hard_link(&two, &three).unwrap();
    for p in [&one, &two, &three] {
        assert_eq!(lstat(p).nlink(), 3, "st_nlink of {}", p.display());
        assert_eq!(lstat(p).ino(), lstat(&one).ino());
    }
    write_at(&three, 0, b"THREE");
    for p in [&one, &two] {
        assert!(read(p).starts_with(b"THREE"), "{}", p.display());
    }

    // A hard link to an upper file.
    let u = m.p("www/u");
    let u2 = m.p("srv/u2");
    std::fs::write(&u, b"upper\n").unwrap();
    std::fs::hard_link(&u, &u2).unwrap();
    assert_eq!((lstat(&u).nlink(), lstat(&u2).nlink()), (2, 2));
    assert_eq!(lstat(&u).ino(), lstat(&u2).ino());
    write_at(&u2, 0, b"U");
    assert_eq!(read(&u), b"Upper\n");
    // Unlinking one name: the count drops on the other at once.
    std::fs::remove_file(&u).unwrap();
    assert_eq!(lstat(&u2).nlink(), 1);
    assert_eq!(read(&u2), b"Upper\n");

    // Errors.
    expect_errno(
        std::fs::hard_link(m.p("etc"), m.p("www/etc")),
        EPERM,
        "link a dir",
    );
    expect_errno(
        std::fs::hard_link(m.p("etc/passwd"), m.p("etc/group")),
        EEXIST,
        "link onto an existing name",
    );
    expect_errno(
        std::fs::hard_link(m.p("www/nope"), m.p("www/x")),
        ENOENT,
        "link a missing file",
    );

    m.remount();
    let (a, c) = (lstat(&m.p("www/index.html")), lstat(&m.p("www/hl.html")));
    assert_eq!((a.ino(), a.nlink(), c.nlink()), (c.ino(), 2, 2));
    assert_eq!(read(&m.p("www/index.html")), b"Shared\n");
    assert_eq!(lstat(&m.p("www/gnu-third")).nlink(), 3);
    assert_eq!(lstat(&m.p("srv/u2")).nlink(), 1);
}

pub(crate) fn symlinks(b: &dyn Backend) {
    let m = b.mount();
    let sl = m.p("www/sl");
    std::os::unix::fs::symlink("../etc/passwd", &sl).unwrap();
    assert_eq!(std::fs::read_link(&sl).unwrap(), Path::new("../etc/passwd"));
    let st = lstat(&sl);
    assert!(st.file_type().is_symlink());
    assert_eq!((st.len(), st.uid(), st.gid()), (13, 0, 0));
    assert_eq!(read(&sl), read(&m.p("etc/passwd")));
    // Lower symlinks read as before; a chain resolves.
    assert_eq!(
        std::fs::read_link(m.p("srv/symlinks/chain")).unwrap(),
        Path::new("relative")
    );
    assert_eq!(
        read(&m.p("srv/symlinks/chain")),
        read(&m.p("srv/hardlinks/a/original.txt"))
    );
    // A lower symlink replaced by another.
    let to_dir = m.p("srv/symlinks/to-dir");
    std::fs::remove_file(&to_dir).unwrap();
    std::os::unix::fs::symlink("../perms", &to_dir).unwrap();
    assert_eq!(std::fs::read_link(&to_dir).unwrap(), Path::new("../perms"));
    assert_eq!(
        read(&to_dir.join("read-only")),
        read(&m.p("srv/perms/read-only"))
    );
    assert!(lstat(&to_dir.join("sticky-dir")).is_dir());
    // A target of 4095 bytes (the most Linux allows).
    let long = "t/".repeat(2047) + "x";
    assert_eq!(long.len(), 4095);
    std::os::unix::fs::symlink(&long, m.p("www/long")).unwrap();
    assert_eq!(
        std::fs::read_link(m.p("www/long"))
            .unwrap()
            .as_os_str()
            .len(),
        4095
    );
    assert_eq!(lstat(&m.p("www/long")).len(), 4095);
    // Dangling: lstat works, stat and open do not.
    std::os::unix::fs::symlink("nowhere", m.p("www/dangling")).unwrap();
    assert!(lstat(&m.p("www/dangling")).file_type().is_symlink());
    expect_errno(
        std::fs::metadata(m.p("www/dangling")),
        ENOENT,
        "stat a dangling link",
    );
    // Errors.
    expect_errno(
        std::os::unix::fs::symlink("x", m.p("etc/passwd")),
        EEXIST,
        "symlink over a file",
    );
    expect_errno(
        std::fs::read_link(m.p("etc/passwd")),
        EINVAL,
        "readlink of a file",
    );
    expect_errno(
        std::os::unix::fs::symlink("t/".repeat(2048), m.p("www/too-long")),
        ENAMETOOLONG,
        "symlink target of 4096 bytes",
    );
}

pub(crate) fn metadata_changes_survive_remount(b: &dyn Backend) {
    let mut m = b.mount();
    let contents: Vec<(String, Vec<u8>)> = ["etc/passwd", "www/index.html", "srv/perms/setuid"]
        .iter()
        .map(|p| (p.to_string(), read(&m.p(p))))
        .collect();
    std::fs::write(m.p("www/up"), b"upper").unwrap();
    let chmod = |p: &str, mode: u32| {
        std::fs::set_permissions(m.p(p), std::fs::Permissions::from_mode(mode)).unwrap()
    };
    let chown = |p: &str, u: u32, g: u32| std::os::unix::fs::lchown(m.p(p), Some(u), Some(g));

    chmod("etc/passwd", 0o600);
    chown("www/index.html", 1234, 5678).unwrap();
    set_times(
        &m.p("etc/group"),
        (1_600_000_000, 123_456_789),
        (1_700_000_000, 987_654_321),
    );
    chmod("www/up", 0o640);
    chown("www/up", 42, 43).unwrap();
    set_times(
        &m.p("www/up"),
        (1_500_000_000, 1),
        (1_500_000_001, 999_999_999),
    );
    // A lower dir, a lower symlink (lchown, lutimes), a special file.
    let perms_names = names(&m.p("srv/perms"));
    chmod("srv/perms", 0o700);
    chown("srv/perms", 7, 8).unwrap();
    assert_eq!(
        names(&m.p("srv/perms")),
        perms_names,
        "children after chmod of their dir"
    );
    chown("srv/symlinks/relative", 9, 10).unwrap();
    set_times(
        &m.p("srv/symlinks/relative"),
        (1_000_000_000, 5),
        (1_000_000_000, 6),
    );
    chmod("srv/special/null", 0o600);
    // UTIME_OMIT leaves that time alone; UTIME_NOW sets it to now.
    let omit = rustix::fs::Timestamps {
        last_access: rustix::fs::Timespec {
            tv_sec: 0,
            tv_nsec: rustix::fs::UTIME_NOW as _,
        },
        last_modification: rustix::fs::Timespec {
            tv_sec: 0,
            tv_nsec: rustix::fs::UTIME_OMIT as _,
        },
    };
    let hmt = attrs(&m.p("home/user/notes.txt")).4;
    rustix::fs::utimensat(CWD, m.p("home/user/notes.txt"), &omit, AtFlags::empty()).unwrap();
    let a = attrs(&m.p("home/user/notes.txt"));
    assert_eq!(a.4, hmt, "UTIME_OMIT changed mtime");
    assert!(
        a.3.0 > 1_767_225_600,
        "UTIME_NOW did not set atime: {:?}",
        a.3
    );
    // Mode bits beyond 0777 survive.
    chmod("srv/perms/exec-only", 0o4711);
    // chown of a setuid file clears setuid, also for root (Linux since 2.2.13).
    chown("srv/perms/setuid", 1, 1).unwrap();
    // chown with -1: only the group changes.
    std::os::unix::fs::lchown(m.p("srv/owners/uid-1000"), None, Some(0)).unwrap();

    let want: Vec<(&str, u32, u32, u32)> = vec![
        ("etc/passwd", 0o100600, 0, 0),
        ("www/index.html", 0o100644, 1234, 5678),
        ("www/up", 0o100640, 42, 43),
        ("srv/perms", 0o040700, 7, 8),
        ("srv/symlinks/relative", 0o120777, 9, 10),
        ("srv/special/null", 0o020600, 0, 0),
        ("srv/perms/exec-only", 0o104711, 0, 0),
        ("srv/perms/setuid", 0o100755, 1, 1),
        ("srv/owners/uid-1000", 0o100644, 1000, 0),
    ];
    type Times = (&'static str, (i64, i64), (i64, i64));
    let times: Vec<Times> = vec![
        (
            "etc/group",
            (1_600_000_000, 123_456_789),
            (1_700_000_000, 987_654_321),
        ),
        ("www/up", (1_500_000_000, 1), (1_500_000_001, 999_999_999)),
        (
            "srv/symlinks/relative",
            (1_000_000_000, 5),
            (1_000_000_000, 6),
        ),
    ];
    let check = |m: &Mounted, when: &str| {
        for (p, mode, uid, gid) in &want {
            let a = attrs(&m.p(p));
            assert_eq!((a.0, a.1, a.2), (*mode, *uid, *gid), "{p} {when}");
        }
        for (p, at, mt) in &times {
            let a = attrs(&m.p(p));
            assert_eq!((a.3, a.4), (*at, *mt), "times of {p} {when}");
        }
    };
    check(&m, "after the changes");
    for (p, c) in &contents {
        assert_eq!(&read(&m.p(p)), c, "content of {p} after a metadata change");
    }
    // Metadata-only changes of big lower files copy no data (DESIGN §4).
    chmod("srv/files/sparse-16M", 0o600);
    chown("bin/busybox", 0, 1000).unwrap();
    m.unmount();
    let used = m.layer_disk_usage();
    eprintln!("{}: layer after chmod/chown: {used} bytes", b.name());
    if m.strata() {
        assert!(
            used < 8 * MIB,
            "the layer holds {used} bytes after chmod/chown of 18 MiB of lower files"
        );
    } else {
        // Kernel overlayfs with metacopy=off copies the data up on chmod/chown (≈ 18 MiB).
        // (printed above)
    }
    m.mount_again();
    check(&m, "after remount");
    assert_eq!(lstat(&m.p("srv/files/sparse-16M")).mode() & 0o7777, 0o600);
    assert_eq!(lstat(&m.p("bin/busybox")).gid(), 1000);
    assert_eq!(lstat(&m.p("srv/files/sparse-16M")).len(), 16 * MIB);
}

pub(crate) fn xattrs(b: &dyn Backend) {
    let mut m = b.mount();
    let index = m.p("www/index.html");
    // A lower file without xattrs.
    setx(&index, "user.test", b"v1", XattrFlags::empty()).unwrap();
    assert_eq!(getx(&index, "user.test").unwrap(), b"v1");
    assert!(listx(&index).contains(&"user.test".to_string()));
    expect_errno(
        setx(&index, "user.test", b"v9", XattrFlags::CREATE),
        EEXIST,
        "XATTR_CREATE on an existing name",
    );
    expect_errno(
        setx(&index, "user.missing", b"v", XattrFlags::REPLACE),
        ENODATA,
        "XATTR_REPLACE on a missing name",
    );
    setx(&index, "user.test", b"v2", XattrFlags::REPLACE).unwrap();
    assert_eq!(getx(&index, "user.test").unwrap(), b"v2");
    assert_eq!(read(&index), INDEX, "content untouched by xattrs");
    // Too small a buffer: ERANGE; size query: the length.
    let mut one = [0u8; 1];
    expect_errno(
        rx(rustix::fs::lgetxattr(&index, "user.test", &mut one[..])),
        ERANGE,
        "getxattr with a 1-byte buffer",
    );
    assert_eq!(rustix::fs::lgetxattr_query(&index, "user.test").unwrap(), 2);
    // Empty and large values.
    setx(&index, "user.empty", b"", XattrFlags::empty()).unwrap();
    assert_eq!(getx(&index, "user.empty").unwrap(), b"");
    let big = pattern(2000, 3);
    setx(&index, "user.big", &big, XattrFlags::empty()).unwrap();
    assert_eq!(getx(&index, "user.big").unwrap(), big);

    // A lower file with xattrs: remove one, keep the other.
    let fx = m.p("srv/xattrs/file-with-xattrs");
    assert_eq!(listx(&fx), ["user.comment", "user.mime_type"]);
    let mime = getx(&fx, "user.mime_type").unwrap();
    rx(rustix::fs::lremovexattr(&fx, "user.comment")).unwrap();
    expect_errno(getx(&fx, "user.comment"), ENODATA, "getxattr after remove");
    expect_errno(
        rx(rustix::fs::lremovexattr(&fx, "user.comment")),
        ENODATA,
        "remove twice",
    );
    assert_eq!(listx(&fx), ["user.mime_type"]);
    assert_eq!(getx(&fx, "user.mime_type").unwrap(), mime);
    // A lower dir.
    let dx = m.p("srv/xattrs/dir-with-xattrs");
    setx(&dx, "user.more", b"m", XattrFlags::empty()).unwrap();
    assert_eq!(listx(&dx), ["user.more", "user.purpose"]);
    // An upper file.
    let up = m.p("www/up");
    std::fs::write(&up, b"u").unwrap();
    assert_eq!(listx(&up), Vec::<String>::new());
    setx(&up, "user.a", b"1", XattrFlags::empty()).unwrap();
    setx(&up, "user.b", b"2", XattrFlags::empty()).unwrap();
    rx(rustix::fs::lremovexattr(&up, "user.a")).unwrap();
    assert_eq!(listx(&up), ["user.b"]);
    // user.* xattrs are not allowed on symlinks.
    expect_errno(
        setx(
            &m.p("srv/symlinks/relative"),
            "user.x",
            b"1",
            XattrFlags::empty(),
        ),
        EPERM,
        "user xattr on a symlink",
    );
    // Nothing of the implementation shows.
    for p in [&index, &fx, &dx, &up, &m.p("srv")] {
        for n in listx(p) {
            assert!(!n.starts_with("trusted.overlay."), "{n} on {}", p.display());
        }
    }

    m.remount();
    let index = m.p("www/index.html");
    assert_eq!(getx(&index, "user.test").unwrap(), b"v2");
    assert_eq!(getx(&index, "user.big").unwrap(), big);
    assert_eq!(
        listx(&m.p("srv/xattrs/file-with-xattrs")),
        ["user.mime_type"]
    );
    assert_eq!(listx(&m.p("www/up")), ["user.b"]);
    assert_eq!(
        listx(&m.p("srv/xattrs/dir-with-xattrs")),
        ["user.more", "user.purpose"]
    );
}

//! Names and paths.

use super::*;

pub(crate) fn name_max(b: &dyn Backend) {
    let m = b.mount();
    // 255 bytes: create, lookup, readdir, rename, unlink; in a lower and in a new dir.
    std::fs::create_dir(m.p("newdir")).unwrap();
    let n255 = format!("{}.txt", "n".repeat(251));
    let r255 = format!("{}.txt", "r".repeat(251));
    for dir in ["www", "newdir"] {
        let p = m.p(&format!("{dir}/{n255}"));
        std::fs::write(&p, b"x").unwrap();
        assert_eq!(lstat(&p).len(), 1);
        assert!(names(&m.p(dir)).contains(&n255));
        let q = m.p(&format!("{dir}/{r255}"));
        std::fs::rename(&p, &q).unwrap();
        assert_eq!(read(&q), b"x");
        std::fs::create_dir(&p).unwrap();
        std::fs::remove_dir(&p).unwrap();
        std::fs::remove_file(&q).unwrap();
        enoent(&q);
    }
    // The lower file with a 255-byte name.
    let lower = names(&m.p("srv/files"))
        .into_iter()
        .find(|n| n.starts_with("name-255-"))
        .unwrap();
    assert_eq!(lower.len(), 255);
    assert_eq!(read(&m.p(&format!("srv/files/{lower}"))).len(), 21);

    // 256 bytes and more (FUSE passes names up to 1024 bytes to the filesystem): ENAMETOOLONG on
    // every operation, lookup included, in a lower and in a new dir.
    for len in [256, 1000] {
        for dir in ["www", "newdir"] {
            let long = m.p(&format!("{dir}/{}", "l".repeat(len)));
            let what = |op: &str| format!("{op} of a {len}-byte name in {dir}");
            expect_errno(File::create(&long), ENAMETOOLONG, &what("create"));
            expect_errno(File::open(&long), ENAMETOOLONG, &what("open"));
            expect_errno(
                std::fs::symlink_metadata(&long),
                ENAMETOOLONG,
                &what("lstat"),
            );
            expect_errno(std::fs::create_dir(&long), ENAMETOOLONG, &what("mkdir"));
            expect_errno(std::fs::remove_dir(&long), ENAMETOOLONG, &what("rmdir"));
            expect_errno(std::fs::remove_file(&long), ENAMETOOLONG, &what("unlink"));
            expect_errno(
                std::fs::rename(m.p("www/index.html"), &long),
                ENAMETOOLONG,
                &what("rename to"),
            );
            expect_errno(
                std::fs::rename(&long, m.p("www/x")),
                ENAMETOOLONG,
                &what("rename from"),
            );
            expect_errno(
                std::fs::hard_link(m.p("www/index.html"), &long),
                ENAMETOOLONG,
                &what("link"),
            );
            expect_errno(
                std::os::unix::fs::symlink("x", &long),
                ENAMETOOLONG,
                &what("symlink"),
            );
            expect_errno(
                rx(rustix::fs::mkfifoat(CWD, &long, Mode::from_raw_mode(0o644))),
                ENAMETOOLONG,
                &what("mkfifo"),
            );
            expect_errno(
                setx(&long, "user.x", b"1", XattrFlags::empty()),
                ENAMETOOLONG,
                &what("setxattr"),
            );
        }
    }
    assert_eq!(read(&m.p("www/index.html")), INDEX);
}

pub(crate) fn deep_paths_beyond_path_max(b: &dyn Backend) {
    let mut m = b.mount();
    const LEVELS: usize = 24;
    let name = |i: usize| format!("{i:03}-{}", "p".repeat(196));
    assert_eq!(name(0).len(), 200);
    let mkdir_open = |dir: &OwnedFd, n: &str, create: bool| {
        if create {
            rustix::fs::mkdirat(dir, n, Mode::from_raw_mode(0o755)).unwrap();
        }
        rustix::fs::openat(dir, n, O::RDONLY | O::DIRECTORY | O::CLOEXEC, Mode::empty()).unwrap()
    };
    // 24 levels of 200-byte names below a lower dir 20 levels down: ~5 KB below the mount,
    // built with *at calls so no single call sees a path over PATH_MAX.
    let mut fds = vec![open(&m.p(&lower_deep()), O::RDONLY | O::DIRECTORY, 0).unwrap()];
    for i in 0..LEVELS {
        let next = mkdir_open(fds.last().unwrap(), &name(i), true);
        fds.push(next);
    }
    assert!(m.mnt.as_os_str().len() + lower_deep().len() + LEVELS * 201 > 4096);
    let bottom = fds.last().unwrap();
    let f = rustix::fs::openat(
        bottom,
        "bottom.txt",
        O::WRONLY | O::CREATE | O::EXCL | O::CLOEXEC,
        Mode::from_raw_mode(0o644),
    )
    .unwrap();
    rustix::io::write(&f, b"deep\n").unwrap();
    drop(f);
    let st = rustix::fs::statat(bottom, "bottom.txt", AtFlags::SYMLINK_NOFOLLOW).unwrap();
    assert_eq!(st.st_size, 5);
    let mut seen = Vec::new();
    let mut d = rustix::fs::Dir::read_from(bottom).unwrap();
    while let Some(e) = d.read() {
        seen.push(e.unwrap().file_name().to_string_lossy().into_owned());
    }
    drop(d);
    seen.sort();
    assert_eq!(seen, [".", "..", "bottom.txt"]);
    // One call with a relative path just under PATH_MAX (20 components of 200 bytes + file).
    let k = LEVELS - 20;
    let rel = (k..LEVELS).map(name).collect::<Vec<_>>().join("/") + "/bottom.txt";
    assert!(rel.len() > 4000 && rel.len() < 4096, "{}", rel.len());
    let f =
        rustix::fs::openat(&fds[k], rel.as_str(), O::RDONLY | O::CLOEXEC, Mode::empty()).unwrap();
    assert_eq!(pread(&f, 0, 100), b"deep\n");
    drop(f);
    // And a path from the mount root close to PATH_MAX, through the lower part.
    let from_root = format!(
        "{}/{}/x",
        lower_deep(),
        (0..19).map(name).collect::<Vec<_>>().join("/")
    );
    assert!(
        from_root.len() > 3900 && from_root.len() < 4096,
        "{}",
        from_root.len()
    );
    let root = open(&m.mnt, O::RDONLY | O::DIRECTORY, 0).unwrap();
    let f = rustix::fs::openat(
        &root,
        from_root.as_str(),
        O::WRONLY | O::CREATE | O::CLOEXEC,
        Mode::from_raw_mode(0o644),
    )
    .unwrap();
    drop(f);
    rustix::fs::statat(&root, from_root.as_str(), AtFlags::empty()).unwrap();
    drop(fds);

    // Renaming a lower ancestor moves the whole deep tree.
    std::fs::rename(m.p("srv/deep/d01"), m.p("srv/deep/moved")).unwrap();
    let walk = |m: &Mounted| {
        let moved = lower_deep().replacen("d01", "moved", 1);
        let mut cur = open(&m.p(&moved), O::RDONLY | O::DIRECTORY, 0).unwrap();
        for i in 0..LEVELS {
            cur = mkdir_open(&cur, &name(i), false);
        }
        let f =
            rustix::fs::openat(&cur, "bottom.txt", O::RDONLY | O::CLOEXEC, Mode::empty()).unwrap();
        assert_eq!(pread(&f, 0, 100), b"deep\n");
    };
    walk(&m);
    drop(root);
    m.remount();
    walk(&m);
}

//! Unlink, mkdir, rmdir, readdir.

use super::*;

pub(crate) fn unlink_lower_and_upper(b: &dyn Backend) {
    let m = b.mount();
    // A lower file: gone from lookup, open and readdir; the name can be reused.
    let index = m.p("www/index.html");
    let www_mtime = lstat(&m.p("www")).mtime();
    std::fs::remove_file(&index).unwrap();
    enoent(&index);
    assert!(
        lstat(&m.p("www")).mtime() > www_mtime,
        "www's mtime after an unlink"
    );
    expect_errno(File::open(&index), ENOENT, "open after unlink");
    assert!(!names(&m.p("www")).contains(&"index.html".to_string()));
    std::fs::write(&index, b"new\n").unwrap();
    assert_eq!(read(&index), b"new\n");

    // An upper file.
    let up = m.p("www/up");
    std::fs::write(&up, b"u").unwrap();
    std::fs::remove_file(&up).unwrap();
    enoent(&up);

    // A lower symlink (its target is untouched) and a lower fifo.
    std::fs::remove_file(m.p("srv/symlinks/relative")).unwrap();
    enoent(&m.p("srv/symlinks/relative"));
    assert!(lstat(&m.p("srv/hardlinks/a/original.txt")).is_file());
    std::fs::remove_file(m.p("srv/special/fifo")).unwrap();
    enoent(&m.p("srv/special/fifo"));

    // One name of a lower hard-link pair (layer 4, 2 names, nothing whited out).
    let dir = gnu_dir();
    let one = m.p(&format!("{dir}/file-with-a-gnu-longname-record.txt"));
    let two = m.p(&format!(
        "{dir}/hard-link-with-a-long-name-and-a-long-target.txt"
    ));
    let content = read(&one);
    assert_eq!(lstat(&two).nlink(), 2);
    std::fs::remove_file(&one).unwrap();
    enoent(&one);
    assert_eq!(read(&two), content);
    // The count drops at once (kernel overlayfs gets this right too, with index=on).
    assert_eq!(lstat(&two).nlink(), 1, "nlink of the remaining name");

    // Errors.
    expect_errno(std::fs::remove_file(m.p("etc")), EISDIR, "unlink a dir");
    expect_errno(
        std::fs::remove_file(m.p("www/nope")),
        ENOENT,
        "unlink missing",
    );
    expect_errno(
        std::fs::remove_file(m.p("srv/changes/file-to-whiteout")),
        ENOENT,
        "unlink a whited-out name",
    );
}

pub(crate) fn unlinked_open_file(b: &dyn Backend) {
    let m = b.mount();
    // An upper file, open read-write: readable and writable through the fd until close.
    let p = m.p("www/open.txt");
    std::fs::write(&p, b"data").unwrap();
    let f = OpenOptions::new().read(true).write(true).open(&p).unwrap();
    std::fs::remove_file(&p).unwrap();
    enoent(&p);
    assert_eq!(fstat(&f).st_nlink, 0, "fstat of an unlinked upper file");
    assert_eq!(pread(&f, 0, 100), b"data");
    f.write_all_at(b"+more", 4).unwrap();
    assert_eq!(pread(&f, 0, 100), b"data+more");
    f.set_len(2).unwrap();
    assert_eq!(pread(&f, 0, 100), b"da");
    // A new file of the same name is a different file.
    std::fs::write(&p, b"other").unwrap();
    assert_eq!(pread(&f, 0, 100), b"da");
    assert_eq!(read(&p), b"other");
    assert_ne!(fstat(&f).st_ino, lstat(&p).ino());
    drop(f);

    // A lower file open read-only, then unlinked.
    let index = m.p("www/index.html");
    let f = File::open(&index).unwrap();
    std::fs::remove_file(&index).unwrap();
    enoent(&index);
    assert_eq!(pread(&f, 0, 100), INDEX);
    if m.strata() {
        assert_eq!(fstat(&f).st_nlink, 0, "fstat of an unlinked lower file");
    } else {
        // Kernel overlayfs: the lower file is only hidden by a whiteout, and fstat reports the
        // lower inode's count (1). strata must report 0.
        assert_eq!(fstat(&f).st_nlink, 1);
    }
    drop(f);

    // A lower file open read-write, then unlinked: writes through the fd still work.
    let group = m.p("etc/group");
    let gorig = read(&group);
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&group)
        .unwrap();
    std::fs::remove_file(&group).unwrap();
    enoent(&group);
    f.write_all_at(b"G", 0).unwrap();
    let mut want = gorig.clone();
    want[0] = b'G';
    assert_eq!(pread(&f, 0, want.len() + 10), want);
    assert_eq!(
        fstat(&f).st_nlink,
        0,
        "fstat of an unlinked, written lower file"
    );
    drop(f);
    enoent(&group);
}

pub(crate) fn mkdir_rmdir(b: &dyn Backend) {
    let m = b.mount();
    // mkdir in a lower dir; the mode minus the umask; rmdir.
    let d = m.p("www/d");
    std::fs::create_dir(&d).unwrap();
    let st = lstat(&d);
    assert!(st.is_dir());
    assert_eq!((st.mode() & 0o7777, st.uid(), st.gid()), (0o755, 0, 0));
    assert_eq!(names(&d), Vec::<String>::new());
    std::fs::remove_dir(&d).unwrap();
    enoent(&d);
    // Nested new dirs under lower ones.
    std::fs::create_dir_all(m.p("srv/deep/d01/new1/new2")).unwrap();
    assert!(lstat(&m.p("srv/deep/d01/new1/new2")).is_dir());

    // EEXIST on lower dirs, files, symlinks.
    expect_errno(std::fs::create_dir(m.p("etc")), EEXIST, "mkdir etc");
    expect_errno(
        std::fs::create_dir(m.p("etc/passwd")),
        EEXIST,
        "mkdir etc/passwd",
    );
    expect_errno(
        std::fs::create_dir(m.p("srv/symlinks/dangling")),
        EEXIST,
        "mkdir over a dangling symlink",
    );

    // Lower dirs whose entries come from lower layers: ENOTEMPTY.
    let opaque = m.p("srv/changes/opaque-dir");
    expect_errno(std::fs::remove_dir(&opaque), ENOTEMPTY, "rmdir opaque-dir");
    expect_errno(
        std::fs::remove_dir(m.p("srv/changes")),
        ENOTEMPTY,
        "rmdir srv/changes",
    );
    expect_errno(std::fs::remove_dir(m.p("etc")), ENOTEMPTY, "rmdir etc");
    // readd-dir holds new.txt (layer 4) over a whited-out old.txt (layer 2): only new.txt counts.
    let readd = m.p("srv/changes/readd-dir");
    expect_errno(std::fs::remove_dir(&readd), ENOTEMPTY, "rmdir readd-dir");
    std::fs::remove_file(readd.join("new.txt")).unwrap();
    std::fs::remove_dir(&readd).unwrap();
    enoent(&readd);
    // After deleting its only visible entry, opaque-dir can go (the hidden entries do not count).
    std::fs::remove_file(opaque.join("after-opaque.txt")).unwrap();
    std::fs::remove_dir(&opaque).unwrap();
    enoent(&opaque);
    assert!(!names(&m.p("srv/changes")).contains(&"opaque-dir".to_string()));
    // A lower dir whose lower entries are all whited out is empty: rmdir works at once.
    let hb = m.p("srv/hardlinks/b");
    assert_eq!(names(&hb), Vec::<String>::new());
    std::fs::remove_dir(&hb).unwrap();
    enoent(&hb);

    // Errors.
    expect_errno(
        std::fs::remove_dir(m.p("etc/passwd")),
        ENOTDIR,
        "rmdir a file",
    );
    expect_errno(
        std::fs::remove_dir(m.p("www/nope")),
        ENOENT,
        "rmdir missing",
    );
    expect_errno(
        std::fs::remove_dir(m.p("srv/symlinks/to-dir")),
        ENOTDIR,
        "rmdir a symlink to a dir",
    );
}

pub(crate) fn rmdir_then_mkdir_is_opaque(b: &dyn Backend) {
    let mut m = b.mount();
    // chmod-dir: re-declared 0750 1000:1000 in layer 3, with inside.txt from layer 2.
    let cd = m.p("srv/changes/chmod-dir");
    std::fs::remove_file(cd.join("inside.txt")).unwrap();
    std::fs::remove_dir(&cd).unwrap();
    std::fs::create_dir(&cd).unwrap();
    assert_eq!(names(&cd), Vec::<String>::new());
    enoent(&cd.join("inside.txt"));
    let st = lstat(&cd);
    assert_eq!((st.mode() & 0o7777, st.uid(), st.gid()), (0o755, 0, 0));
    // readd-dir: neither layer 4's new.txt nor layer 2's old.txt may come back.
    let rd = m.p("srv/changes/readd-dir");
    std::fs::remove_file(rd.join("new.txt")).unwrap();
    std::fs::remove_dir(&rd).unwrap();
    std::fs::create_dir(&rd).unwrap();
    assert_eq!(names(&rd), Vec::<String>::new());
    enoent(&rd.join("old.txt"));
    enoent(&rd.join("new.txt"));
    // A whole lower subtree deleted and its top re-created.
    let d01 = m.p("srv/deep/d01");
    std::fs::remove_dir_all(&d01).unwrap();
    std::fs::create_dir(&d01).unwrap();
    assert_eq!(names(&d01), Vec::<String>::new());
    enoent(&d01.join("d02"));
    // A new file in the new dir is all it has.
    std::fs::write(d01.join("only"), b"1").unwrap();
    assert_eq!(names(&d01), ["only"]);

    m.remount();
    assert_eq!(names(&m.p("srv/changes/chmod-dir")), Vec::<String>::new());
    assert_eq!(names(&m.p("srv/changes/readd-dir")), Vec::<String>::new());
    assert_eq!(names(&m.p("srv/deep/d01")), ["only"]);
    enoent(&m.p("srv/deep/d01/d02"));
}

/// (name, d_type, d_ino) of every entry but `.` and `..`, read with getdents (rustix's Dir).
pub(crate) fn raw_entries(dir: &Path) -> Vec<(Vec<u8>, rustix::fs::FileType, u64)> {
    let fd = open(dir, O::RDONLY | O::DIRECTORY, 0).unwrap();
    let mut d = rustix::fs::Dir::read_from(&fd).unwrap();
    let mut out = Vec::new();
    let mut dots = 0;
    while let Some(e) = d.read() {
        let e = e.unwrap();
        let name = e.file_name().to_bytes().to_vec();
        if name == b"." || name == b".." {
            dots += 1;
            continue;
        }
        out.push((name, e.file_type(), e.ino()));
    }
    assert_eq!(dots, 2, "{}: . and .. expected", dir.display());
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

pub(crate) fn check_entries(dir: &Path) -> Vec<String> {
    use rustix::fs::FileType as T;
    let entries = raw_entries(dir);
    let mut seen = BTreeSet::new();
    for (name, dt, ino) in &entries {
        let shown = String::from_utf8_lossy(name).into_owned();
        assert!(seen.insert(name.clone()), "{shown} listed twice");
        assert!(!name.starts_with(b".wh."), "whiteout name leaked: {shown}");
        let p = dir.join(OsStr::from_bytes(name));
        let st = lstat(&p);
        let ft = st.file_type();
        let want = if ft.is_dir() {
            T::Directory
        } else if ft.is_file() {
            T::RegularFile
        } else if ft.is_symlink() {
            T::Symlink
        } else if ft.is_fifo() {
            T::Fifo
        } else if ft.is_socket() {
            T::Socket
        } else if ft.is_char_device() {
            assert!(st.rdev() != 0, "a whiteout (char 0/0) leaked: {shown}");
            T::CharacterDevice
        } else {
            T::BlockDevice
        };
        assert_eq!(*dt, want, "d_type of {shown}");
        assert_eq!(*ino, st.ino(), "d_ino != st_ino for {shown}");
    }
    entries
        .into_iter()
        .map(|e| String::from_utf8_lossy(&e.0).into_owned())
        .collect()
}

pub(crate) fn readdir_after_changes(b: &dyn Backend) {
    let m = b.mount();
    let files = m.p("srv/files");
    let mut want: BTreeSet<String> = check_entries(&files).into_iter().collect();
    std::fs::remove_file(files.join("empty")).unwrap();
    want.remove("empty");
    std::fs::write(files.join("newfile"), b"n").unwrap();
    std::fs::create_dir(files.join("newdir")).unwrap();
    std::os::unix::fs::symlink("newfile", files.join("newlink")).unwrap();
    rustix::fs::mkfifoat(CWD, files.join("newfifo"), Mode::from_raw_mode(0o644)).unwrap();
    // A lower file replaced by a directory of the same name.
    std::fs::remove_file(files.join("name with spaces")).unwrap();
    std::fs::create_dir(files.join("name with spaces")).unwrap();
    want.extend(["newfile", "newdir", "newlink", "newfifo"].map(String::from));
    let got: BTreeSet<String> = check_entries(&files).into_iter().collect();
    assert_eq!(got, want);
    assert!(lstat(&files.join("name with spaces")).is_dir());

    // Lower whiteouts and opaque dirs: nothing hidden shows.
    let changes: BTreeSet<String> = check_entries(&m.p("srv/changes")).into_iter().collect();
    for hidden in ["file-to-whiteout", "dir-to-whiteout"] {
        assert!(!changes.contains(hidden), "{hidden} listed");
    }
    assert_eq!(
        check_entries(&m.p("srv/changes/opaque-dir")),
        ["after-opaque.txt"]
    );
    assert_eq!(check_entries(&m.p("srv/hardlinks/b")), Vec::<String>::new());
    let special: BTreeSet<String> = check_entries(&m.p("srv/special")).into_iter().collect();
    assert_eq!(
        special,
        ["fifo", "null", "sda", "zero"].map(String::from).into()
    );

    // Many entries in a merged directory (several getdents calls): each exactly once.
    let etc = m.p("etc");
    let mut want: BTreeSet<String> = check_entries(&etc).into_iter().collect();
    for i in 0..300 {
        let n = format!("entry-with-a-longish-name-{i:04}");
        std::fs::write(etc.join(&n), b"").unwrap();
        want.insert(n);
    }
    std::fs::remove_file(etc.join("passwd")).unwrap();
    want.remove("passwd");
    let got = check_entries(&etc);
    assert_eq!(got.len(), want.len());
    assert_eq!(got.into_iter().collect::<BTreeSet<_>>(), want);

    // All of it on one device (DESIGN §3).
    let dev = lstat(&m.mnt).dev();
    for p in [
        "srv/files/newfile",
        "srv/files/sparse-16M",
        "etc/group",
        "srv",
    ] {
        assert_eq!(lstat(&m.p(p)).dev(), dev, "st_dev of {p}");
    }
}

/// Entries removed and added while directories are read, as `rm -rf` and concurrent readers
/// do: every entry that stays is listed exactly once, and an offset a reader got back
/// (`telldir`) resumes right after its entry.
pub(crate) fn remove_while_listing(b: &dyn Backend) {
    let m = b.mount();
    // A merged directory (lower entries) with enough new long names for many getdents.
    let dir = m.p("etc");
    let mut want: BTreeSet<Vec<u8>> = raw_entries(&dir).into_iter().map(|e| e.0).collect();
    for i in 0..1500 {
        let n = format!("a-rather-long-name-to-fill-getdents-buffers-{i:05}");
        std::fs::write(dir.join(&n), b"").unwrap();
        want.insert(n.into_bytes());
    }

    // Two readers: A reads a third, B lists it all (and removes nothing), A reads on.
    let fa = open(&dir, O::RDONLY | O::DIRECTORY, 0).unwrap();
    let mut a = rustix::fs::Dir::read_from(&fa).unwrap();
    let mut got_a = Vec::new();
    let mut mark = None;
    while got_a.len() < want.len() / 3 {
        let e = a.read().unwrap().unwrap();
        let name = e.file_name().to_bytes().to_vec();
        if name != b"." && name != b".." {
            got_a.push(name);
            mark = Some((e.offset(), got_a.len()));
        }
    }
    assert_eq!(raw_entries(&dir).len(), want.len());
    while let Some(e) = a.read() {
        let name = e.unwrap().file_name().to_bytes().to_vec();
        if name != b"." && name != b".." {
            got_a.push(name);
        }
    }
    let set: BTreeSet<Vec<u8>> = got_a.iter().cloned().collect();
    assert_eq!(set.len(), got_a.len(), "reader A saw an entry twice");
    assert_eq!(set, want, "reader A's listing");

    // seekdir back to A's mark: the rest of A's listing follows, even after a removal
    // before the mark.
    let (off, seen) = mark.unwrap();
    std::fs::remove_file(dir.join(OsStr::from_bytes(&got_a[0]))).unwrap();
    want.remove(&got_a[0]);
    a.seek(off).unwrap();
    let mut rest = Vec::new();
    while let Some(e) = a.read() {
        let name = e.unwrap().file_name().to_bytes().to_vec();
        if name != b"." && name != b".." {
            rest.push(name);
        }
    }
    assert_eq!(rest, got_a[seen..], "after seekdir");

    // rm -rf: each entry removed as soon as it is read; nothing is left.
    let fd = open(&dir, O::RDONLY | O::DIRECTORY, 0).unwrap();
    let mut d = rustix::fs::Dir::read_from(&fd).unwrap();
    let mut removed = BTreeSet::new();
    while let Some(e) = d.read() {
        let e = e.unwrap();
        let name = e.file_name().to_bytes().to_vec();
        if name == b"." || name == b".." {
            continue;
        }
        let p = dir.join(OsStr::from_bytes(&name));
        if e.file_type() == rustix::fs::FileType::Directory {
            std::fs::remove_dir_all(&p).unwrap();
        } else {
            std::fs::remove_file(&p).unwrap();
        }
        assert!(removed.insert(name), "listed twice while removing");
    }
    assert_eq!(removed, want);
    assert_eq!(
        raw_entries(&dir),
        vec![],
        "left after removing what was listed"
    );
}

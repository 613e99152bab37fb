//! Rename.

use super::*;

pub(crate) fn rename_files(b: &dyn Backend) {
    let m = b.mount();
    // A lower file to a new name in the same dir: same inode, same content.
    let index = m.p("www/index.html");
    let ino = lstat(&index).ino();
    std::fs::rename(&index, m.p("www/renamed.html")).unwrap();
    enoent(&index);
    assert_eq!(read(&m.p("www/renamed.html")), INDEX);
    assert_eq!(
        lstat(&m.p("www/renamed.html")).ino(),
        ino,
        "rename keeps the inode"
    );
    assert_eq!(names(&m.p("www")), ["renamed.html"]);

    // Over an existing lower file.
    let osr = read(&m.p("etc/os-release"));
    std::fs::rename(m.p("etc/os-release"), m.p("etc/passwd")).unwrap();
    enoent(&m.p("etc/os-release"));
    assert_eq!(read(&m.p("etc/passwd")), osr);
    // Over an existing upper file.
    std::fs::write(m.p("www/a"), b"A").unwrap();
    std::fs::write(m.p("www/b"), b"B").unwrap();
    std::fs::rename(m.p("www/a"), m.p("www/b")).unwrap();
    enoent(&m.p("www/a"));
    assert_eq!(read(&m.p("www/b")), b"A");
    // An upper file over a lower one, and a lower one over an upper one.
    std::fs::rename(m.p("www/b"), m.p("etc/group")).unwrap();
    assert_eq!(read(&m.p("etc/group")), b"A");
    std::fs::write(m.p("www/c"), b"C").unwrap();
    std::fs::rename(m.p("etc/motd"), m.p("www/c")).unwrap();
    enoent(&m.p("etc/motd"));
    assert!(!read(&m.p("www/c")).starts_with(b"C"));

    // Across directories: a lower file, an upper file, a lower symlink.
    let hl = read(&m.p("srv/owners/uid-1000"));
    std::fs::rename(m.p("srv/owners/uid-1000"), m.p("www/uid-1000")).unwrap();
    assert_eq!(read(&m.p("www/uid-1000")), hl);
    assert_eq!(lstat(&m.p("www/uid-1000")).uid(), 1000);
    let deep = m.p(&format!("{}/moved", lower_deep()));
    std::fs::rename(m.p("www/c"), &deep).unwrap();
    assert!(lstat(&deep).is_file());
    std::fs::rename(m.p("srv/symlinks/relative"), m.p("www/rel")).unwrap();
    assert_eq!(
        std::fs::read_link(m.p("www/rel")).unwrap(),
        Path::new("../hardlinks/a/original.txt")
    );
    // To a whited-out name.
    std::fs::rename(m.p("www/rel"), m.p("srv/changes/file-to-whiteout")).unwrap();
    assert!(
        lstat(&m.p("srv/changes/file-to-whiteout"))
            .file_type()
            .is_symlink()
    );
    // One name of a lower hard-link group moves; it stays the same inode as the others.
    std::fs::rename(m.p("srv/hardlinks/third-name.txt"), m.p("www/third")).unwrap();
    assert_eq!(
        lstat(&m.p("www/third")).ino(),
        lstat(&m.p("srv/hardlinks/a/original.txt")).ino()
    );
    // A file open for writing, renamed: the fd keeps writing to it.
    let mut w = File::create(m.p("www/w")).unwrap();
    w.write_all(b"before ").unwrap();
    std::fs::rename(m.p("www/w"), m.p("srv/w-moved")).unwrap();
    w.write_all(b"after").unwrap();
    drop(w);
    assert_eq!(read(&m.p("srv/w-moved")), b"before after");
    // To itself: nothing happens.
    std::fs::rename(m.p("www/third"), m.p("www/third")).unwrap();
    assert!(lstat(&m.p("www/third")).is_file());

    // Errors.
    expect_errno(
        std::fs::rename(m.p("www/third"), m.p("etc")),
        EISDIR,
        "file over dir",
    );
    expect_errno(
        std::fs::rename(m.p("srv/perms"), m.p("www/third")),
        ENOTDIR,
        "dir over file",
    );
    expect_errno(
        std::fs::rename(m.p("www/nope"), m.p("www/x")),
        ENOENT,
        "missing source",
    );
    expect_errno(
        std::fs::rename(m.p("www/third"), m.p("nodir/x")),
        ENOENT,
        "missing target dir",
    );
    expect_errno(
        std::fs::rename(m.p("srv"), m.p("srv/perms/inside")),
        EINVAL,
        "dir into its own subtree",
    );
}

pub(crate) fn rename_lower_directory(b: &dyn Backend) {
    let mut m = b.mount();
    // A lower dir with files and subdirs, in place. strata: never EXDEV. Kernel overlayfs
    // gives EXDEV here unless redirect_dir=on (as mounted for these tests).
    let ino = lstat(&m.p("srv/hardlinks")).ino();
    std::fs::rename(m.p("srv/hardlinks"), m.p("srv/hl-moved")).unwrap();
    enoent(&m.p("srv/hardlinks"));
    assert!(names(&m.p("srv")).contains(&"hl-moved".to_string()));
    assert!(!names(&m.p("srv")).contains(&"hardlinks".to_string()));
    assert_eq!(names(&m.p("srv/hl-moved")), ["a", "b", "third-name.txt"]);
    let content = read(&m.p("srv/hl-moved/a/original.txt"));
    assert_eq!(read(&m.p("srv/hl-moved/third-name.txt")), content);
    assert_eq!(names(&m.p("srv/hl-moved/b")), Vec::<String>::new());
    assert_eq!(
        lstat(&m.p("srv/hl-moved")).ino(),
        ino,
        "rename keeps the dir's inode"
    );
    // A new dir at the old name is empty: nothing of the moved lower dir shows through.
    std::fs::create_dir(m.p("srv/hardlinks")).unwrap();
    assert_eq!(names(&m.p("srv/hardlinks")), Vec::<String>::new());

    // A dir merged from several layers, across parents; whiteouts and opaque flags travel.
    let before = names(&m.p("srv/changes"));
    std::fs::rename(m.p("srv/changes"), m.p("www/changes-moved")).unwrap();
    let moved = m.p("www/changes-moved");
    assert_eq!(names(&moved), before);
    assert_eq!(names(&moved.join("opaque-dir")), ["after-opaque.txt"]);
    assert_eq!(names(&moved.join("readd-dir")), ["new.txt"]);
    enoent(&moved.join("file-to-whiteout"));
    assert_eq!(read(&moved.join("readd-file")).len(), 20);
    // A 20-level lower tree to the root.
    std::fs::rename(m.p("srv/deep/d01"), m.p("d01-top")).unwrap();
    let bottom = format!(
        "d01-top/{}/bottom.txt",
        &lower_deep()["srv/deep/d01/".len()..]
    );
    assert!(lstat(&m.p(&bottom)).is_file());
    // A child of a moved dir moves again; the moved dir is then renamed back.
    std::fs::rename(moved.join("readd-dir"), m.p("www/readd")).unwrap();
    std::fs::rename(&moved, m.p("srv/changes")).unwrap();
    enoent(&m.p("srv/changes/readd-dir"));
    assert_eq!(names(&m.p("www/readd")), ["new.txt"]);

    m.remount();
    assert_eq!(names(&m.p("srv/hl-moved")), ["a", "b", "third-name.txt"]);
    assert_eq!(read(&m.p("srv/hl-moved/a/original.txt")), content);
    assert_eq!(names(&m.p("srv/hardlinks")), Vec::<String>::new());
    assert_eq!(names(&m.p("srv/changes/opaque-dir")), ["after-opaque.txt"]);
    assert_eq!(names(&m.p("www/readd")), ["new.txt"]);
    assert!(lstat(&m.p(&bottom)).is_file());
    enoent(&m.p("srv/deep/d01"));
}

pub(crate) fn rename_noreplace_and_exchange(b: &dyn Backend) {
    let m = b.mount();
    let (passwd, group, osr) = (m.p("etc/passwd"), m.p("etc/group"), m.p("etc/os-release"));
    let (p0, g0, o0) = (read(&passwd), read(&group), read(&osr));
    // RENAME_NOREPLACE: EEXIST over a lower file, an upper file, a lower dir; fine to a new name.
    expect_errno(
        rename2(&group, &passwd, RenameFlags::NOREPLACE),
        EEXIST,
        "NOREPLACE over a lower file",
    );
    std::fs::write(m.p("www/up"), b"up").unwrap();
    expect_errno(
        rename2(&group, &m.p("www/up"), RenameFlags::NOREPLACE),
        EEXIST,
        "NOREPLACE over an upper file",
    );
    expect_errno(
        rename2(&m.p("www/up"), &m.p("srv"), RenameFlags::NOREPLACE),
        EEXIST,
        "NOREPLACE over a lower dir",
    );
    assert_eq!((read(&passwd), read(&group)), (p0.clone(), g0.clone()));
    rename2(&group, &m.p("etc/group2"), RenameFlags::NOREPLACE).unwrap();
    enoent(&group);
    assert_eq!(read(&m.p("etc/group2")), g0);

    // RENAME_EXCHANGE of two lower files.
    rename2(&passwd, &osr, RenameFlags::EXCHANGE).unwrap();
    assert_eq!((read(&passwd), read(&osr)), (o0.clone(), p0.clone()));
    // Of an upper and a lower file.
    rename2(
        &m.p("www/up"),
        &m.p("www/index.html"),
        RenameFlags::EXCHANGE,
    )
    .unwrap();
    assert_eq!(read(&m.p("www/up")), INDEX);
    assert_eq!(read(&m.p("www/index.html")), b"up");
    // Of a lower file and a lower dir (with contents).
    let file = m.p("www/up");
    let dir = m.p("srv/changes/chmod-dir");
    rename2(&file, &dir, RenameFlags::EXCHANGE).unwrap();
    assert!(lstat(&file).is_dir());
    assert_eq!(names(&file), ["inside.txt"]);
    assert!(lstat(&dir).is_file());
    assert_eq!(read(&dir), INDEX);
    // With a missing side: ENOENT.
    expect_errno(
        rename2(&passwd, &m.p("etc/missing"), RenameFlags::EXCHANGE),
        ENOENT,
        "EXCHANGE with a missing target",
    );
    expect_errno(
        rename2(
            &passwd,
            &osr,
            RenameFlags::EXCHANGE | RenameFlags::NOREPLACE,
        ),
        EINVAL,
        "EXCHANGE|NOREPLACE",
    );
}

pub(crate) fn rename_dir_over_dir(b: &dyn Backend) {
    let m = b.mount();
    std::fs::create_dir(m.p("www/src")).unwrap();
    std::fs::write(m.p("www/src/f"), b"f").unwrap();
    // Over a non-empty lower dir (entries from lower layers): ENOTEMPTY.
    expect_errno(
        std::fs::rename(m.p("www/src"), m.p("srv/changes/opaque-dir")),
        ENOTEMPTY,
        "dir over a non-empty lower dir",
    );
    expect_errno(
        std::fs::rename(m.p("srv/perms"), m.p("srv/owners")),
        ENOTEMPTY,
        "lower dir over a non-empty lower dir",
    );
    // Over an upper non-empty dir.
    std::fs::create_dir(m.p("www/full")).unwrap();
    std::fs::write(m.p("www/full/x"), b"x").unwrap();
    expect_errno(
        std::fs::rename(m.p("www/src"), m.p("www/full")),
        ENOTEMPTY,
        "dir over a non-empty upper dir",
    );
    // Over a lower dir that is empty in the merged view (its lower entry is whited out): works,
    // and only the moved dir's entries show.
    std::fs::rename(m.p("www/src"), m.p("srv/hardlinks/b")).unwrap();
    assert_eq!(names(&m.p("srv/hardlinks/b")), ["f"]);
    enoent(&m.p("www/src"));
    // A lower dir over a lower dir emptied by unlinks: the hidden entries stay hidden.
    std::fs::remove_file(m.p("srv/changes/opaque-dir/after-opaque.txt")).unwrap();
    std::fs::rename(m.p("srv/changes/chmod-dir"), m.p("srv/changes/opaque-dir")).unwrap();
    assert_eq!(names(&m.p("srv/changes/opaque-dir")), ["inside.txt"]);
    enoent(&m.p("srv/changes/chmod-dir"));
}

//! Persistence, churn.

use super::*;

pub(crate) fn persistence_across_remount(b: &dyn Backend) {
    let mut m = b.mount();
    std::fs::write(m.p("www/new.txt"), b"new\n").unwrap();
    let mut f = OpenOptions::new()
        .append(true)
        .open(m.p("etc/passwd"))
        .unwrap();
    f.write_all(b"guest:x:2000:2000::/:/bin/sh\n").unwrap();
    drop(f);
    std::fs::remove_file(m.p("etc/os-release")).unwrap();
    std::fs::remove_dir_all(m.p("srv/deep/d01/d02/d03")).unwrap();
    std::fs::rename(m.p("srv/hardlinks"), m.p("srv/hl")).unwrap();
    std::fs::set_permissions(m.p("bin/busybox"), std::fs::Permissions::from_mode(0o700)).unwrap();
    std::os::unix::fs::lchown(m.p("www/index.html"), Some(1000), Some(1000)).unwrap();
    setx(
        &m.p("www/index.html"),
        "user.note",
        b"kept",
        XattrFlags::empty(),
    )
    .unwrap();
    std::os::unix::fs::symlink("index.html", m.p("www/link")).unwrap();
    std::fs::hard_link(m.p("www/new.txt"), m.p("www/hard")).unwrap();
    std::fs::hard_link(m.p("srv/files/empty"), m.p("www/empty-link")).unwrap();
    rustix::fs::mkfifoat(CWD, m.p("www/fifo"), Mode::from_raw_mode(0o600)).unwrap();
    std::fs::remove_file(m.p("srv/changes/readd-dir/new.txt")).unwrap();
    std::fs::remove_dir(m.p("srv/changes/readd-dir")).unwrap();
    std::fs::create_dir(m.p("srv/changes/readd-dir")).unwrap();
    truncate(&m.p("srv/files/sparse-16M"), MIB).unwrap();
    set_times(
        &m.p("www/new.txt"),
        (1_234_567_890, 1),
        (1_234_567_890, 123_456_789),
    );
    std::fs::create_dir_all(m.p("new/dir/tree")).unwrap();
    std::fs::write(m.p("new/dir/tree/big"), pattern(300_000, 4)).unwrap();

    let before = Snapshot::take(&m.mnt);
    assert!(before.entries.contains_key(&b"srv/hl/a/original.txt"[..]));
    m.remount();
    let after = Snapshot::take(&m.mnt);
    assert_same_tree(&before, &after, &[]);
    // Inode numbers are stable across remounts (DESIGN §4). Kernel overlayfs keeps them here
    // because it reports the underlying inode numbers (all layers on one filesystem; with
    // layers on several filesystems that depends on xino), so the check runs for both.
    let moved: Vec<_> = before
        .entries
        .iter()
        .filter(|(p, m)| after.entries.get(*p).map(|a| a.st.ino) != Some(m.st.ino))
        .map(|(p, _)| String::from_utf8_lossy(p).into_owned())
        .collect();
    assert!(
        moved.is_empty(),
        "inode numbers changed across remount: {moved:?}"
    );
}

pub(crate) fn create_unlink_churn(b: &dyn Backend) {
    let m = b.mount();
    let dir = m.p("www/churn");
    std::fs::create_dir(&dir).unwrap();
    // Create, check, unlink, reusing three names; keep some unlinked files open.
    let mut kept = Vec::new();
    for i in 0..150u32 {
        let p = dir.join(format!("f{}", i % 3));
        let content = format!("generation {i}\n");
        std::fs::write(&p, &content).unwrap();
        assert_eq!(read_str(&p), content);
        if i % 10 == 0 {
            kept.push((File::open(&p).unwrap(), content));
        }
        std::fs::remove_file(&p).unwrap();
        enoent(&p);
    }
    assert_eq!(names(&dir), Vec::<String>::new());
    let inos: BTreeSet<u64> = kept.iter().map(|(f, _)| fstat(f).st_ino).collect();
    assert_eq!(inos.len(), kept.len(), "open files share inode numbers");
    for (f, content) in &kept {
        assert_eq!(pread(f, 0, 100), content.as_bytes());
        assert_eq!(fstat(f).st_nlink, 0);
    }
    drop(kept);
    // Atomic replacement (write a temporary file, rename it over the target): readers that
    // opened the old target keep the old content.
    let target = dir.join("target");
    std::fs::write(&target, b"v0\n").unwrap();
    let mut old = File::open(&target).unwrap();
    for i in 1..=50 {
        let tmp = dir.join(".target.tmp");
        std::fs::write(&tmp, format!("v{i}\n")).unwrap();
        std::fs::rename(&tmp, &target).unwrap();
        assert_eq!(read_str(&target), format!("v{i}\n"));
        assert_eq!(pread(&old, 0, 100), format!("v{}\n", i - 1).as_bytes());
        old = File::open(&target).unwrap();
    }
    assert_eq!(names(&dir), ["target"]);
}

//! Bad input, a layer in use.

use super::*;

pub(crate) fn bad_layer_input(b: &dyn Backend) {
    let tmp = tempfile::tempdir().unwrap();
    let mnt = tmp.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let _guard = MountGuard(mnt.clone());

    // A regular file.
    let file = tmp.path().join("layer-file");
    std::fs::write(&file, b"not a layer\n").unwrap();
    set_times(&file, (1_000_000_000, 0), (1_000_000_000, 0));
    let err = b
        .try_mount_at(&file, &mnt)
        .expect_err("a regular file as the layer must be refused");
    eprintln!("{}: a regular file as the layer: {err}", b.name());
    assert!(!is_mounted(&mnt));
    assert_eq!(read(&file), b"not a layer\n");
    assert_eq!(attrs(&file).4, (1_000_000_000, 0), "the file was touched");
    if b.is_strata() {
        assert!(
            err.contains(&*file.to_string_lossy()),
            "the message should name the layer: {err}"
        );
    }

    // A directory of files that are not a strata layer, and (strata only) a sled database
    // that strata did not write.
    let garbage = tmp.path().join("garbage");
    std::fs::create_dir_all(garbage.join("blobs")).unwrap();
    std::fs::write(garbage.join("db"), pattern(4096, 9)).unwrap();
    std::fs::write(garbage.join("conf"), b"segment_size: banana\n").unwrap();
    std::fs::write(garbage.join("notes.txt"), b"keep me\n").unwrap();
    std::fs::write(garbage.join("blobs/1"), b"x").unwrap();
    let mut dirs = vec![garbage.clone()];
    if b.is_strata() {
        let foreign = tmp.path().join("foreign-sled");
        let db = sled::Config::new().path(&foreign).open().unwrap();
        db.insert(&b"someone"[..], &b"else's data"[..]).unwrap();
        db.open_tree(b"users")
            .unwrap()
            .insert(&b"1"[..], &b"x"[..])
            .unwrap();
        db.flush().unwrap();
        drop(db);
        dirs.push(foreign);
    }
    for dir in dirs {
        let before = Snapshot::take(&dir);
        let r = b.try_mount_at(&dir, &mnt);
        if b.is_strata() {
            let err = r.expect_err("a directory that is not a strata layer must be refused");
            eprintln!("strata: {}: {err}", dir.display());
            assert!(
                err.contains(&*dir.to_string_lossy()),
                "the message should name the layer: {err}"
            );
            assert!(!is_mounted(&mnt));
            assert_same_tree(&before, &Snapshot::take(&dir), &[]);
        } else {
            // Kernel overlayfs takes any directory as an upperdir (and shows its files in the
            // merged root); strata must refuse one that is not its layer, and leave it as it is.
            r.unwrap();
            assert_eq!(read(&mnt.join("notes.txt")), b"keep me\n");
            b.unmount_at(&mnt).unwrap();
        }
    }

    // An existing empty directory is a new, empty layer.
    let empty = tmp.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    b.try_mount_at(&empty, &mnt).unwrap();
    assert_eq!(read(&mnt.join("www/index.html")), INDEX);
    std::fs::write(mnt.join("www/x"), b"x").unwrap();
    b.unmount_at(&mnt).unwrap();
}

pub(crate) fn layer_in_use(b: &dyn Backend) {
    let mut m = b.mount();
    std::fs::write(m.p("www/marker"), b"first").unwrap();
    let mnt2 = m.dir.join("mnt2");
    std::fs::create_dir(&mnt2).unwrap();
    let _guard2 = MountGuard(mnt2.clone());
    let err = b
        .try_mount_at(&m.layer, &mnt2)
        .expect_err("a second mount of a layer in use must fail");
    assert!(!is_mounted(&mnt2));
    eprintln!("{}: second mount refused: {err}", b.name());
    if m.strata() {
        assert!(err.to_lowercase().contains("in use"), "{err}");
        let pids = b.daemon_pids(&m.mnt);
        assert!(!pids.is_empty(), "no daemon found for {}", m.mnt.display());
        assert!(
            pids.iter().any(|p| err.contains(&p.to_string())),
            "the message should name the PID using the layer ({pids:?}): {err}"
        );
    }
    // Kernel overlayfs with index=on refuses a second mount of the same upperdir/workdir
    // (EBUSY; mount(8) says "overlay already mounted").
    // The first mount is unaffected.
    assert_eq!(read(&m.p("www/marker")), b"first");
    std::fs::write(m.p("www/marker"), b"first, then more").unwrap();
    // Once it is unmounted, the layer mounts again, elsewhere.
    m.unmount();
    b.try_mount_at(&m.layer, &mnt2).unwrap();
    assert_eq!(read(&mnt2.join("www/marker")), b"first, then more");
    b.unmount_at(&mnt2).unwrap();
}

//! Files: create, open flags, write, copy-up, truncate, fallocate, sparse.

use super::*;

pub(crate) fn create_write_read(b: &dyn Backend) {
    let m = b.mount();
    // A new file in a lower directory; the directory's mtime moves.
    let www_mtime = lstat(&m.p("www")).mtime();
    let p = m.p("www/new.txt");
    std::fs::write(&p, b"new data\n").unwrap();
    assert!(
        lstat(&m.p("www")).mtime() > www_mtime,
        "www's mtime after a create"
    );
    assert_eq!(read(&p), b"new data\n");
    let st = lstat(&p);
    assert!(st.is_file());
    assert_eq!(
        (st.len(), st.mode() & 0o7777, st.uid(), st.gid(), st.nlink()),
        (9, 0o644, 0, 0, 1)
    );
    assert!(names(&m.p("www")).contains(&"new.txt".to_string()));
    // The mode given to open(O_CREAT), minus the umask.
    let f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o640)
        .open(m.p("www/private"))
        .unwrap();
    drop(f);
    assert_eq!(lstat(&m.p("www/private")).mode() & 0o7777, 0o640);
    // A copy of a lower file (std::fs::copy: copy_file_range, or its fallback).
    std::fs::copy(m.p("bin/busybox"), m.p("www/bb")).unwrap();
    assert_bytes(
        &read(&m.p("www/bb")),
        &read(&m.p("bin/busybox")),
        "copy of busybox",
    );
    assert_eq!(lstat(&m.p("www/bb")).mode() & 0o7777, 0o755);
    // An empty file.
    File::create(m.p("www/empty")).unwrap();
    assert_eq!(lstat(&m.p("www/empty")).len(), 0);
    assert_eq!(read(&m.p("www/empty")), b"");

    // A new directory holding a file larger than any chunk or inline-data threshold.
    std::fs::create_dir(m.p("newdir")).unwrap();
    let big = pattern((3 << 20) | 123, 1);
    std::fs::write(m.p("newdir/big"), &big).unwrap();
    assert_eq!(lstat(&m.p("newdir/big")).len(), big.len() as u64);
    assert_bytes(&read(&m.p("newdir/big")), &big, "newdir/big");
    // Part of it overwritten through a second open, read through a third.
    write_at(&m.p("newdir/big"), MIB - 3, b"MIDDLE");
    let mut want = big.clone();
    want[(MIB - 3) as usize..(MIB + 3) as usize].copy_from_slice(b"MIDDLE");
    assert_bytes(
        &read(&m.p("newdir/big")),
        &want,
        "newdir/big after overwrite",
    );

    // Written and read back through one read-write fd, size visible while it is open.
    let mut f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(m.p("newdir/rw"))
        .unwrap();
    f.write_all(b"abc").unwrap();
    f.write_all(b"def").unwrap();
    assert_eq!(lstat(&m.p("newdir/rw")).len(), 6);
    f.seek(SeekFrom::Start(0)).unwrap();
    let mut s = String::new();
    f.read_to_string(&mut s).unwrap();
    assert_eq!(s, "abcdef");
    drop(f);

    // A new file 20 lower directories down (every parent gets copied up or recorded).
    let deep = m.p(&format!("{}/new.txt", lower_deep()));
    std::fs::write(&deep, b"deep\n").unwrap();
    assert_eq!(read(&deep), b"deep\n");
    assert!(
        !read(&m.p(&format!("{}/bottom.txt", lower_deep()))).is_empty(),
        "the lower file next to it is intact"
    );
}

pub(crate) fn open_flags(b: &dyn Backend) {
    let m = b.mount();
    let index = m.p("www/index.html");

    // O_CREAT without O_TRUNC on an existing lower file: opens it, truncates nothing.
    let f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(&index)
        .unwrap();
    drop(f);
    assert_eq!(read(&index), INDEX);

    // O_CREAT|O_EXCL on an existing lower file, lower directory, upper file: EEXIST.
    let excl = |p: &Path| OpenOptions::new().write(true).create_new(true).open(p);
    expect_errno(excl(&index), EEXIST, "O_EXCL on a lower file");
    expect_errno(excl(&m.p("etc")), EEXIST, "O_EXCL on a lower dir");
    std::fs::write(m.p("www/upper"), b"u").unwrap();
    expect_errno(excl(&m.p("www/upper")), EEXIST, "O_EXCL on an upper file");
    expect_errno(
        excl(&m.p("srv/symlinks/dangling")),
        EEXIST,
        "O_EXCL on a dangling lower symlink",
    );
    assert_eq!(read(&index), INDEX);
    // O_EXCL on a name a lower layer whited out: a new, empty file.
    let wo = m.p("srv/changes/file-to-whiteout");
    enoent(&wo);
    drop(excl(&wo).unwrap());
    assert_eq!(read(&wo), b"");
    // O_CREAT through a dangling lower symlink creates its target.
    let f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(m.p("srv/symlinks/dangling"))
        .unwrap();
    drop(f);
    assert!(lstat(&m.p("srv/symlinks/does-not-exist")).is_file());
    assert!(
        lstat(&m.p("srv/symlinks/dangling"))
            .file_type()
            .is_symlink()
    );

    // O_TRUNC on a lower file.
    let osr = m.p("etc/os-release");
    assert!(!read(&osr).is_empty());
    let mut f = OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(&osr)
        .unwrap();
    assert_eq!(f.metadata().unwrap().len(), 0);
    f.write_all(b"x").unwrap();
    drop(f);
    assert_eq!(read(&osr), b"x");

    // O_APPEND on a lower file: every write lands at the end, whatever the offset.
    let passwd = m.p("etc/passwd");
    let orig = read(&passwd);
    let mut f = OpenOptions::new().append(true).open(&passwd).unwrap();
    f.seek(SeekFrom::Start(0)).unwrap();
    f.write_all(b"extra:x:2:2::/:/bin/sh\n").unwrap();
    let mut g = OpenOptions::new().append(true).open(&passwd).unwrap();
    g.write_all(b"more\n").unwrap();
    f.write_all(b"last\n").unwrap();
    drop((f, g));
    let mut want = orig.clone();
    want.extend_from_slice(b"extra:x:2:2::/:/bin/sh\nmore\nlast\n");
    assert_bytes(&read(&passwd), &want, "O_APPEND on etc/passwd");
    // O_RDWR|O_APPEND on an upper file: reads from the offset, writes at the end.
    let up = m.p("www/upper");
    let mut f = OpenOptions::new()
        .read(true)
        .append(true)
        .open(&up)
        .unwrap();
    let mut one = [0u8; 1];
    f.read_exact(&mut one).unwrap();
    assert_eq!(&one, b"u");
    f.seek(SeekFrom::Start(0)).unwrap();
    f.write_all(b"vw").unwrap();
    assert_eq!(f.stream_position().unwrap(), 3);
    drop(f);
    assert_eq!(read(&up), b"uvw");

    // Type checks.
    expect_errno(
        open(&index, O::RDONLY | O::DIRECTORY, 0),
        ENOTDIR,
        "O_DIRECTORY on a file",
    );
    expect_errno(open(&m.p("etc"), O::WRONLY, 0), EISDIR, "O_WRONLY on a dir");
    expect_errno(
        open(&m.p("srv/symlinks/relative"), O::RDONLY | O::NOFOLLOW, 0),
        ELOOP,
        "O_NOFOLLOW on a symlink",
    );
    expect_errno(
        open(&m.p("www/nope"), O::RDONLY, 0),
        ENOENT,
        "open a missing file",
    );
    expect_errno(
        open(&m.p("www/index.html/x"), O::RDONLY | O::CREATE, 0o644),
        ENOTDIR,
        "create below a file",
    );
}

pub(crate) fn write_into_lower_file(b: &dyn Backend) {
    let m = b.mount();
    let passwd = m.p("etc/passwd");
    let orig = read(&passwd);
    let meta = lstat(&passwd);
    // Overwrite the start (no O_TRUNC), then write past the end (a hole of zeros).
    let f = OpenOptions::new().write(true).open(&passwd).unwrap();
    f.write_all_at(b"ROOT", 0).unwrap();
    f.write_all_at(b"tail", orig.len() as u64 + 10).unwrap();
    drop(f);
    let mut want = orig.clone();
    want[..4].copy_from_slice(b"ROOT");
    want.extend_from_slice(&[0; 10]);
    want.extend_from_slice(b"tail");
    assert_bytes(&read(&passwd), &want, "etc/passwd after copy-up");
    let after = lstat(&passwd);
    assert_eq!(after.len(), want.len() as u64);
    assert_eq!(
        (after.mode(), after.uid(), after.gid()),
        (meta.mode(), meta.uid(), meta.gid()),
        "copy-up keeps mode and owner"
    );

    // An fd opened read-only before the copy-up sees the new data afterwards (kernel overlayfs
    // has switched such fds to the upper file since 4.19).
    let group = m.p("etc/group");
    let gorig = read(&group);
    let early = File::open(&group).unwrap();
    write_at(&group, 0, b"GROUP");
    let mut gwant = gorig.clone();
    gwant[..5].copy_from_slice(b"GROUP");
    assert_bytes(
        &pread(&early, 0, gwant.len() + 10),
        &gwant,
        "read through an fd opened before the copy-up",
    );
    drop(early);

    // A big lower file read through passthrough to the lower file cannot switch that fd, so
    // opening it for writing or truncating it is refused while it is open.
    let bb = m.p("bin/busybox");
    if b.lower_passthrough() {
        let early = File::open(&bb).unwrap();
        let err = OpenOptions::new().write(true).open(&bb).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ETXTBSY), "{err}");
        let err = OpenOptions::new()
            .read(true)
            .write(true)
            .truncate(true)
            .open(&bb);
        assert_eq!(err.unwrap_err().raw_os_error(), Some(libc::ETXTBSY));
        let err = truncate(&bb, lstat(&bb).len()).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ETXTBSY), "{err}");
        drop(early);
        // A RELEASE arrives after close returns: the next open waits for it.
    }

    // One byte in the middle of the 2 MB busybox binary; every other byte intact.
    let mut bwant = read(&bb);
    let off = bwant.len() / 2 + 7;
    bwant[off] = !bwant[off];
    write_at(&bb, off as u64, &bwant[off..off + 1]);
    assert_bytes(&read(&bb), &bwant, "bin/busybox");
    assert_eq!(lstat(&bb).mode() & 0o7777, 0o755);

    // A file owned by 1000 with mode 0640 keeps both; its mtime moves forward.
    let orig_p = m.p("srv/hardlinks/a/original.txt");
    let before = lstat(&orig_p);
    write_at(&orig_p, 0, b"O");
    let after = lstat(&orig_p);
    assert_eq!(
        (after.mode() & 0o7777, after.uid(), after.gid()),
        (0o640, 1000, 1000)
    );
    assert!(after.mtime() > before.mtime(), "mtime not updated by write");
}

pub(crate) fn one_byte_write_into_16m_lower_file(b: &dyn Backend) {
    let mut m = b.mount();
    let p = m.p("srv/files/sparse-16M");
    let mut want = read(&p);
    assert_eq!(want.len() as u64, 16 * MIB);
    let off = 8 * MIB + 2;
    write_at(&p, off, b"X");
    want[off as usize] = b'X';
    assert_eq!(
        &want[(8 * MIB) as usize..(8 * MIB + 7) as usize],
        b"miXdle\n"
    );
    assert_eq!(lstat(&p).len(), 16 * MIB);
    assert_bytes(&read(&p), &want, "sparse-16M after a 1-byte write");

    m.unmount();
    let used = m.layer_disk_usage();
    eprintln!("{}: layer after the 1-byte write: {used} bytes", b.name());
    if m.strata() {
        // Copy-up is per chunk (DESIGN §4): one byte must not copy the 16 MiB file.
        assert!(
            used < 8 * MIB,
            "the layer holds {used} bytes after a 1-byte write into a 16 MiB lower file"
        );
    } else {
        // Kernel overlayfs with metacopy=off copies the whole file up (≈ 16 MiB here).
        // (printed above)
    }
    m.mount_again();
    assert_bytes(
        &read(&m.p("srv/files/sparse-16M")),
        &want,
        "sparse-16M after remount",
    );
}

pub(crate) fn truncate_up_and_down(b: &dyn Backend) {
    let m = b.mount();
    // truncate(2) on a lower file, down then up.
    let passwd = m.p("etc/passwd");
    let orig = read(&passwd);
    truncate(&passwd, 4).unwrap();
    assert_eq!(read(&passwd), &orig[..4]);
    truncate(&passwd, 100).unwrap();
    let mut want = orig[..4].to_vec();
    want.resize(100, 0);
    assert_eq!(read(&passwd), want);
    assert_eq!(lstat(&passwd).len(), 100);

    // ftruncate(2) on a lower file, down then up.
    let group = m.p("etc/group");
    let gorig = read(&group);
    let f = OpenOptions::new().write(true).open(&group).unwrap();
    f.set_len(3).unwrap();
    assert_eq!(read(&group), &gorig[..3]);
    f.set_len(10).unwrap();
    drop(f);
    let mut gwant = gorig[..3].to_vec();
    gwant.resize(10, 0);
    assert_eq!(read(&group), gwant);

    // On an upper file, across a chunk-sized boundary.
    let up = m.p("www/up");
    let data = pattern(300_000, 2);
    std::fs::write(&up, &data).unwrap();
    let f = OpenOptions::new().write(true).open(&up).unwrap();
    f.set_len(70_000).unwrap();
    assert_bytes(&read(&up), &data[..70_000], "upper file cut to 70000");
    f.set_len(200_000).unwrap();
    let mut uwant = data[..70_000].to_vec();
    uwant.resize(200_000, 0);
    assert_bytes(&read(&up), &uwant, "upper file grown to 200000");
    // Growing then writing past the old end keeps the zeros between.
    f.write_all_at(b"end", 250_000).unwrap();
    drop(f);
    uwant.resize(250_000, 0);
    uwant.extend_from_slice(b"end");
    assert_bytes(&read(&up), &uwant, "upper file written past the end");

    // The 16 MiB lower file cut in the middle of "middle\n".
    let sp = m.p("srv/files/sparse-16M");
    truncate(&sp, 8 * MIB + 3).unwrap();
    assert_eq!(lstat(&sp).len(), 8 * MIB + 3);
    let f = File::open(&sp).unwrap();
    assert_eq!(pread(&f, 8 * MIB - 2, 100), b"\0\0mid");
    assert_eq!(pread(&f, 0, 6), b"start\n");
    drop(f);
    // To zero, then up again: all zeros (no old data resurfaces).
    truncate(&sp, 0).unwrap();
    truncate(&sp, 16 * MIB).unwrap();
    let f = File::open(&sp).unwrap();
    assert_eq!(pread(&f, 0, 6), b"\0\0\0\0\0\0");
    assert_eq!(pread(&f, 8 * MIB, 7), b"\0\0\0\0\0\0\0");
    assert_eq!(pread(&f, 16 * MIB - 4, 4), b"\0\0\0\0");
    drop(f);
    // Errors.
    expect_errno(truncate(&m.p("etc"), 0), EISDIR, "truncate a dir");
    expect_errno(
        truncate(&m.p("www/missing"), 0),
        ENOENT,
        "truncate a missing file",
    );
}

pub(crate) fn fallocate_and_punch_hole(b: &dyn Backend) {
    let m = b.mount();
    let fa = |f: &File, flags: FallocateFlags, off: u64, len: u64| {
        rx(rustix::fs::fallocate(f, flags, off, len))
    };
    // Mode 0 on a new file: size grows, reads zeros.
    let p = m.p("www/alloc");
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&p)
        .unwrap();
    fa(&f, FallocateFlags::empty(), 0, MIB).unwrap();
    assert_eq!(lstat(&p).len(), MIB);
    assert!(read(&p).iter().all(|&b| b == 0));
    drop(f);

    // PUNCH_HOLE|KEEP_SIZE in the middle of written data.
    let g = m.p("www/punch");
    std::fs::write(&g, vec![0xAA; 16384]).unwrap();
    let f = OpenOptions::new().write(true).open(&g).unwrap();
    fa(
        &f,
        FallocateFlags::KEEP_SIZE | FallocateFlags::PUNCH_HOLE,
        4096,
        8192,
    )
    .unwrap();
    let mut want = vec![0xAA; 16384];
    want[4096..12288].fill(0);
    assert_eq!(lstat(&g).len(), 16384);
    assert_bytes(&read(&g), &want, "after PUNCH_HOLE");
    // KEEP_SIZE beyond the end: size unchanged.
    fa(&f, FallocateFlags::KEEP_SIZE, 16384, 65536).unwrap();
    assert_eq!(lstat(&g).len(), 16384);
    // Mode 0 beyond the end: size grows, old data kept, zeros after.
    fa(&f, FallocateFlags::empty(), 0, 32768).unwrap();
    drop(f);
    want.resize(32768, 0);
    assert_bytes(&read(&g), &want, "after fallocate to 32768");

    // PUNCH_HOLE in a lower file: "start\n" gone, size and the rest intact.
    let sp = m.p("srv/files/sparse-16M");
    let f = OpenOptions::new().write(true).open(&sp).unwrap();
    fa(
        &f,
        FallocateFlags::KEEP_SIZE | FallocateFlags::PUNCH_HOLE,
        0,
        4096,
    )
    .unwrap();
    drop(f);
    assert_eq!(lstat(&sp).len(), 16 * MIB);
    let f = File::open(&sp).unwrap();
    assert_eq!(pread(&f, 0, 6), b"\0\0\0\0\0\0");
    assert_eq!(pread(&f, 8 * MIB, 7), b"middle\n");
    assert_eq!(pread(&f, 16 * MIB - 4, 4), b"end\n");
    drop(f);

    // Mode 0 on a lower file past its end.
    let passwd = m.p("etc/passwd");
    let orig = read(&passwd);
    let f = OpenOptions::new().write(true).open(&passwd).unwrap();
    fa(&f, FallocateFlags::empty(), 0, 8192).unwrap();
    drop(f);
    let mut pwant = orig.clone();
    pwant.resize(8192.max(orig.len()), 0);
    assert_bytes(&read(&passwd), &pwant, "etc/passwd after fallocate");
}

pub(crate) fn sparse_file_at_1gib(b: &dyn Backend) {
    let mut m = b.mount();
    let p = m.p("www/sparse");
    let gib = 1u64 << 30;
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&p)
        .unwrap();
    f.write_all_at(b"x", gib).unwrap();
    assert_eq!(lstat(&p).len(), gib + 1);
    assert_eq!(pread(&f, 0, 4096), vec![0; 4096]);
    assert_eq!(pread(&f, gib / 2, 4096), vec![0; 4096]);
    let mut tail = vec![0; 4095];
    tail.push(b'x');
    assert_eq!(pread(&f, gib - 4095, 8192), tail);
    let blocks = lstat(&p).blocks();
    // Grown by ftruncate to 2 GiB: zeros up there too.
    f.set_len(2 * gib).unwrap();
    assert_eq!(pread(&f, gib + gib / 2, 4096), vec![0; 4096]);
    drop(f);

    m.unmount();
    let used = m.layer_disk_usage();
    assert!(
        used < 16 * MIB,
        "the layer takes {used} bytes for a sparse file"
    );
    m.mount_again();
    let f = File::open(m.p("www/sparse")).unwrap();
    assert_eq!(lstat(&m.p("www/sparse")).len(), 2 * gib);
    assert_eq!(pread(&f, gib, 1), b"x");
    assert_eq!(pread(&f, 4096, 4096), vec![0; 4096]);
    // st_blocks counts what is allocated, not the size: du, and the sparse-file detection of
    // cp, tar and rsync, read it (kernel overlayfs reports the upper file's blocks).
    assert!(
        blocks * 512 < MIB,
        "st_blocks {blocks} for a 1 GiB file with one byte written"
    );
}

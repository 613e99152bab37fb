//! The writable mount (issue 3), operation by operation, with real system calls on real
//! mounts. Every scenario runs against two backends through one trait (see `rw_support`):
//! kernel overlayfs over the sample image's layer tars (the oracle: its variants must pass, which
//! validates the test), and `strata mount --rw` (its variants must pass once the writable layer
//! lands). Each scenario is generated as `kernel_<name>` and `strata_<name>`.
//!
//! Where strata must do better than kernel overlayfs (DESIGN §4, issue 3), the strata variant
//! asserts the better behaviour and the kernel variant asserts what the kernel does, with a
//! comment that says so. Kernel overlayfs is mounted with `redirect_dir=on,index=on,metacopy=off`.

use std::collections::BTreeSet;
use std::ffi::{CString, OsStr};
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;

use libc::{
    EACCES, EEXIST, EINVAL, EISDIR, ELOOP, ENAMETOOLONG, ENODATA, ENOENT, ENOTDIR, ENOTEMPTY,
    EPERM, ERANGE,
};
use rustix::fs::{AtFlags, CWD, FallocateFlags, Mode, OFlags as O, RenameFlags, XattrFlags};

use strata_testkit::backend::*;
use strata_testkit::common::{MountGuard, Snapshot, assert_same_tree, is_mounted};

/// Generates `kernel_<name>` and `strata_<name>` for each scenario `name(b: &dyn Backend)`.
macro_rules! scenarios {
    ($($scenario:ident: $kernel:ident, $strata:ident;)*) => {$(
        #[test]
        fn $kernel() {
            $scenario(&KernelOverlay::new());
        }

        #[test]
        fn $strata() {
            $scenario(&Strata::new());
        }
    )*};
}

scenarios! {
    create_write_read: kernel_create_write_read, strata_create_write_read;
    open_flags: kernel_open_flags, strata_open_flags;
    write_into_lower_file: kernel_write_into_lower_file, strata_write_into_lower_file;
    one_byte_write_into_16m_lower_file:
        kernel_one_byte_write_into_16m_lower_file, strata_one_byte_write_into_16m_lower_file;
    truncate_up_and_down: kernel_truncate_up_and_down, strata_truncate_up_and_down;
    fallocate_and_punch_hole: kernel_fallocate_and_punch_hole, strata_fallocate_and_punch_hole;
    sparse_file_at_1gib: kernel_sparse_file_at_1gib, strata_sparse_file_at_1gib;
    unlink_lower_and_upper: kernel_unlink_lower_and_upper, strata_unlink_lower_and_upper;
    unlinked_open_file: kernel_unlinked_open_file, strata_unlinked_open_file;
    mkdir_rmdir: kernel_mkdir_rmdir, strata_mkdir_rmdir;
    rmdir_then_mkdir_is_opaque: kernel_rmdir_then_mkdir_is_opaque, strata_rmdir_then_mkdir_is_opaque;
    readdir_after_changes: kernel_readdir_after_changes, strata_readdir_after_changes;
    rename_files: kernel_rename_files, strata_rename_files;
    rename_lower_directory: kernel_rename_lower_directory, strata_rename_lower_directory;
    rename_noreplace_and_exchange:
        kernel_rename_noreplace_and_exchange, strata_rename_noreplace_and_exchange;
    rename_dir_over_dir: kernel_rename_dir_over_dir, strata_rename_dir_over_dir;
    hard_links: kernel_hard_links, strata_hard_links;
    symlinks: kernel_symlinks, strata_symlinks;
    metadata_changes_survive_remount:
        kernel_metadata_changes_survive_remount, strata_metadata_changes_survive_remount;
    xattrs: kernel_xattrs, strata_xattrs;
    special_files_and_statfs: kernel_special_files_and_statfs, strata_special_files_and_statfs;
    fsync_and_fdatasync: kernel_fsync_and_fdatasync, strata_fsync_and_fdatasync;
    flock_and_posix_locks: kernel_flock_and_posix_locks, strata_flock_and_posix_locks;
    mmap_shared_write: kernel_mmap_shared_write, strata_mmap_shared_write;
    name_max: kernel_name_max, strata_name_max;
    deep_paths_beyond_path_max: kernel_deep_paths_beyond_path_max, strata_deep_paths_beyond_path_max;
    non_root_permissions: kernel_non_root_permissions, strata_non_root_permissions;
    persistence_across_remount: kernel_persistence_across_remount, strata_persistence_across_remount;
    create_unlink_churn: kernel_create_unlink_churn, strata_create_unlink_churn;
    bad_layer_input: kernel_bad_layer_input, strata_bad_layer_input;
    layer_in_use: kernel_layer_in_use, strata_layer_in_use;
}

// ---------------------------------------------------------------------------------------------
// Small helpers

const INDEX: &[u8] = b"hello from strata\n";
const MIB: u64 = 1 << 20;

/// `srv/deep/d01/…/d20`: a lower directory 20 levels down.
fn lower_deep() -> String {
    let parts: Vec<String> = (1..=20).map(|i| format!("d{i:02}")).collect();
    format!("srv/deep/{}", parts.join("/"))
}

/// The directory of the GNU long-name hard-link pair (layer 4).
fn gnu_dir() -> String {
    format!("srv/gnu-longnames/{}/{}", "d".repeat(60), "e".repeat(60))
}

fn enoent(p: &Path) {
    expect_errno(
        std::fs::symlink_metadata(p),
        ENOENT,
        &format!("lstat {}", p.display()),
    );
}

fn rename2(a: &Path, b: &Path, flags: RenameFlags) -> io::Result<()> {
    rx(rustix::fs::renameat_with(CWD, a, CWD, b, flags))
}

fn truncate(p: &Path, len: u64) -> io::Result<()> {
    let c = cpath(p);
    // SAFETY: a NUL-terminated path.
    if unsafe { libc::truncate(c.as_ptr(), len as libc::off_t) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn write_at(p: &Path, off: u64, data: &[u8]) {
    let f = OpenOptions::new().write(true).open(p).unwrap();
    f.write_all_at(data, off).unwrap();
}

fn getx(p: &Path, name: &str) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; 64 * 1024];
    let n = rx(rustix::fs::lgetxattr(p, name, &mut buf[..]))?;
    buf.truncate(n);
    Ok(buf)
}

fn setx(p: &Path, name: &str, value: &[u8], flags: XattrFlags) -> io::Result<()> {
    rx(rustix::fs::lsetxattr(p, name, value, flags))
}

fn listx(p: &Path) -> Vec<String> {
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

fn set_times(p: &Path, atime: (i64, i64), mtime: (i64, i64)) {
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

fn attrs(p: &Path) -> Attrs {
    let m = lstat(p);
    (
        m.mode(),
        m.uid(),
        m.gid(),
        (m.atime(), m.atime_nsec()),
        (m.mtime(), m.mtime_nsec()),
    )
}

// ---------------------------------------------------------------------------------------------
// Files: create, open flags, write, copy-up, truncate, fallocate, sparse

fn create_write_read(b: &dyn Backend) {
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

fn open_flags(b: &dyn Backend) {
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

fn write_into_lower_file(b: &dyn Backend) {
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

    // One byte in the middle of the 2 MB busybox binary; every other byte intact.
    let bb = m.p("bin/busybox");
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

fn one_byte_write_into_16m_lower_file(b: &dyn Backend) {
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

fn truncate_up_and_down(b: &dyn Backend) {
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

fn fallocate_and_punch_hole(b: &dyn Backend) {
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

fn sparse_file_at_1gib(b: &dyn Backend) {
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

// ---------------------------------------------------------------------------------------------
// Unlink, mkdir, rmdir, readdir

fn unlink_lower_and_upper(b: &dyn Backend) {
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

fn unlinked_open_file(b: &dyn Backend) {
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

fn mkdir_rmdir(b: &dyn Backend) {
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

fn rmdir_then_mkdir_is_opaque(b: &dyn Backend) {
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
fn raw_entries(dir: &Path) -> Vec<(Vec<u8>, rustix::fs::FileType, u64)> {
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

fn check_entries(dir: &Path) -> Vec<String> {
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

fn readdir_after_changes(b: &dyn Backend) {
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

// ---------------------------------------------------------------------------------------------
// Rename

fn rename_files(b: &dyn Backend) {
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

fn rename_lower_directory(b: &dyn Backend) {
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

fn rename_noreplace_and_exchange(b: &dyn Backend) {
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

fn rename_dir_over_dir(b: &dyn Backend) {
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

// ---------------------------------------------------------------------------------------------
// Links, symlinks, metadata, xattrs

fn hard_links(b: &dyn Backend) {
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

fn symlinks(b: &dyn Backend) {
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

fn metadata_changes_survive_remount(b: &dyn Backend) {
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

fn xattrs(b: &dyn Backend) {
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

// ---------------------------------------------------------------------------------------------
// Special files, statfs, sync, locks, mmap

fn special_files_and_statfs(b: &dyn Backend) {
    use rustix::fs::FileType as T;
    let mut m = b.mount();
    // A fifo: data flows through it.
    let fifo = m.p("www/fifo");
    rustix::fs::mkfifoat(CWD, &fifo, Mode::from_raw_mode(0o644)).unwrap();
    let st = lstat(&fifo);
    assert!(st.file_type().is_fifo());
    assert_eq!(st.mode() & 0o7777, 0o644);
    let fd = open(&fifo, O::RDWR | O::NONBLOCK, 0).unwrap();
    rustix::io::write(&fd, b"ping").unwrap();
    let mut buf = [0u8; 8];
    assert_eq!(rustix::io::read(&fd, &mut buf).unwrap(), 4);
    assert_eq!(&buf[..4], b"ping");
    drop(fd);
    // A unix socket bound in the mount: connect by path.
    let sock = m.p("www/sock");
    let listener = UnixListener::bind(&sock).unwrap();
    assert!(lstat(&sock).file_type().is_socket());
    let mut client = UnixStream::connect(&sock).unwrap();
    let (mut server, _) = listener.accept().unwrap();
    client.write_all(b"hello").unwrap();
    let mut got = [0u8; 5];
    server.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"hello");
    drop((client, server, listener));
    // Device nodes (strata keeps them as metadata).
    let null = m.p("www/null");
    let sda = m.p("www/sda");
    rustix::fs::mknodat(
        CWD,
        &null,
        T::CharacterDevice,
        Mode::from_raw_mode(0o666),
        rustix::fs::makedev(1, 3),
    )
    .unwrap();
    rustix::fs::mknodat(
        CWD,
        &sda,
        T::BlockDevice,
        Mode::from_raw_mode(0o660),
        rustix::fs::makedev(8, 0),
    )
    .unwrap();
    let check_devices = |m: &Mounted| {
        let st = lstat(&m.p("www/null"));
        assert!(st.file_type().is_char_device());
        // mknod applies the umask (022): 0666 → 0644, 0660 → 0640.
        assert_eq!(
            (st.rdev(), st.mode() & 0o7777),
            (rustix::fs::makedev(1, 3), 0o644)
        );
        let st = lstat(&m.p("www/sda"));
        assert!(st.file_type().is_block_device());
        assert_eq!(
            (st.rdev(), st.mode() & 0o7777),
            (rustix::fs::makedev(8, 0), 0o640)
        );
        assert!(lstat(&m.p("www/fifo")).file_type().is_fifo());
        assert!(lstat(&m.p("www/sock")).file_type().is_socket());
        assert_eq!(
            lstat(&m.p("srv/special/zero")).rdev(),
            rustix::fs::makedev(1, 5),
            "lower device"
        );
    };
    check_devices(&m);
    expect_errno(
        rx(rustix::fs::mknodat(
            CWD,
            &null,
            T::CharacterDevice,
            Mode::from_raw_mode(0o666),
            rustix::fs::makedev(1, 3),
        )),
        EEXIST,
        "mknod over an existing node",
    );
    // statfs, on the root and on a file.
    for p in [m.mnt.clone(), m.p("etc/passwd")] {
        let s = rustix::fs::statvfs(&p).unwrap();
        assert_eq!(s.f_namemax, 255, "f_namemax of {}", p.display());
        assert!(
            s.f_bsize > 0 && s.f_blocks > 0 && s.f_bavail <= s.f_blocks,
            "statvfs {}: bsize {} blocks {} bavail {}",
            p.display(),
            s.f_bsize,
            s.f_blocks,
            s.f_bavail
        );
    }
    m.remount();
    check_devices(&m);
}

fn fsync_and_fdatasync(b: &dyn Backend) {
    let m = b.mount();
    let p = m.p("www/synced");
    let f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&p)
        .unwrap();
    f.write_all_at(b"durable", 0).unwrap();
    rustix::fs::fsync(&f).unwrap();
    f.write_all_at(b"!", 7).unwrap();
    rustix::fs::fdatasync(&f).unwrap();
    drop(f);
    assert_eq!(read(&p), b"durable!");
    // A lower file, written then synced; another only opened.
    let passwd = OpenOptions::new()
        .write(true)
        .open(m.p("etc/passwd"))
        .unwrap();
    passwd.write_all_at(b"R", 0).unwrap();
    rustix::fs::fdatasync(&passwd).unwrap();
    rustix::fs::fsync(&passwd).unwrap();
    let ro = File::open(m.p("etc/group")).unwrap();
    rustix::fs::fsync(&ro).unwrap();
    rustix::fs::fdatasync(&ro).unwrap();
    // Directories (lower and new).
    std::fs::create_dir(m.p("www/dir")).unwrap();
    for d in ["www", "www/dir", "srv"] {
        let fd = open(&m.p(d), O::RDONLY | O::DIRECTORY, 0).unwrap();
        rustix::fs::fsync(&fd).unwrap();
    }
    // syncfs of the whole mount.
    let root = open(&m.mnt, O::RDONLY | O::DIRECTORY, 0).unwrap();
    rustix::fs::syncfs(&root).unwrap();
}

fn ofd_lock(fd: &impl AsRawFd, cmd: i32, ty: i32, start: i64, len: i64) -> io::Result<libc::flock> {
    // SAFETY: a zeroed `flock` is a valid value; fcntl reads and may write it.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = ty as _;
    fl.l_whence = libc::SEEK_SET as _;
    fl.l_start = start;
    fl.l_len = len;
    // SAFETY: a valid fd and a valid `flock` pointer.
    if unsafe { libc::fcntl(fd.as_raw_fd(), cmd, &mut fl) } == 0 {
        Ok(fl)
    } else {
        Err(io::Error::last_os_error())
    }
}

fn flock_and_posix_locks(b: &dyn Backend) {
    use rustix::fs::FlockOperation as F;
    let m = b.mount();
    std::fs::write(m.p("www/up"), vec![b'x'; 1000]).unwrap();
    for rel in ["www/index.html", "www/up"] {
        let p = m.p(rel);
        // flock: two open file descriptions conflict.
        let f1 = File::open(&p).unwrap();
        let f2 = File::open(&p).unwrap();
        rustix::fs::flock(&f1, F::NonBlockingLockExclusive).unwrap();
        for op in [F::NonBlockingLockExclusive, F::NonBlockingLockShared] {
            expect_errno(
                rx(rustix::fs::flock(&f2, op)),
                libc::EWOULDBLOCK,
                &format!("{rel}: flock {op:?} against an exclusive lock"),
            );
        }
        rustix::fs::flock(&f1, F::Unlock).unwrap();
        rustix::fs::flock(&f2, F::NonBlockingLockShared).unwrap();
        rustix::fs::flock(&f1, F::NonBlockingLockShared).unwrap();
        drop((f1, f2));

        // Open-file-description locks (F_OFD_SETLK): two fds in one process conflict.
        let rw = |p: &Path| OpenOptions::new().read(true).write(true).open(p).unwrap();
        let (f1, f2) = (rw(&p), rw(&p));
        ofd_lock(&f1, libc::F_OFD_SETLK, libc::F_WRLCK, 0, 100).unwrap();
        expect_errno(
            ofd_lock(&f2, libc::F_OFD_SETLK, libc::F_WRLCK, 50, 10),
            libc::EAGAIN,
            &format!("{rel}: conflicting F_OFD_SETLK"),
        );
        let q = ofd_lock(&f2, libc::F_OFD_GETLK, libc::F_RDLCK, 0, 10).unwrap();
        assert_eq!(q.l_type as i32, libc::F_WRLCK, "{rel}: F_OFD_GETLK");
        ofd_lock(&f2, libc::F_OFD_SETLK, libc::F_WRLCK, 200, 10).unwrap();
        drop((f1, f2));

        // Classic POSIX locks (F_SETLK): owned by the process, so the conflict is seen from a
        // second process.
        let f1 = rw(&p);
        ofd_lock(&f1, libc::F_SETLK, libc::F_WRLCK, 0, 100).unwrap();
        let cp = cpath(&p);
        let parent = std::process::id() as i32;
        let probe = move || {
            // In the child: plain libc only.
            // SAFETY: a NUL-terminated path; fd and flock are valid.
            unsafe {
                let fd = libc::open(cp.as_ptr(), libc::O_RDWR | libc::O_CLOEXEC);
                if fd < 0 {
                    return 101;
                }
                let mut fl: libc::flock = std::mem::zeroed();
                fl.l_type = libc::F_WRLCK as _;
                fl.l_whence = libc::SEEK_SET as _;
                fl.l_start = 10;
                fl.l_len = 10;
                if libc::fcntl(fd, libc::F_SETLK, &mut fl) == 0 {
                    return 102;
                }
                let e = last_errno();
                if e != libc::EAGAIN && e != libc::EACCES {
                    return 103;
                }
                let mut q: libc::flock = std::mem::zeroed();
                q.l_type = libc::F_RDLCK as _;
                q.l_whence = libc::SEEK_SET as _;
                q.l_start = 0;
                q.l_len = 1;
                if libc::fcntl(fd, libc::F_GETLK, &mut q) != 0 {
                    return 104;
                }
                if q.l_type as i32 != libc::F_WRLCK || q.l_pid != parent {
                    return 105;
                }
                fl.l_start = 200;
                if libc::fcntl(fd, libc::F_SETLK, &mut fl) != 0 {
                    return 106;
                }
                0
            }
        };
        assert_eq!(in_child(probe), 0, "{rel}: POSIX lock probe");
        // Closing any fd of the file drops the process's POSIX locks (POSIX semantics).
        drop(rw(&p));
        let cp = cpath(&p);
        let free = move || {
            // SAFETY: as above.
            unsafe {
                let fd = libc::open(cp.as_ptr(), libc::O_RDWR | libc::O_CLOEXEC);
                let mut fl: libc::flock = std::mem::zeroed();
                fl.l_type = libc::F_WRLCK as _;
                fl.l_whence = libc::SEEK_SET as _;
                fl.l_start = 10;
                fl.l_len = 10;
                if fd < 0 || libc::fcntl(fd, libc::F_SETLK, &mut fl) != 0 {
                    return 110;
                }
                0
            }
        };
        assert_eq!(
            in_child(free),
            0,
            "{rel}: lock still held after closing another fd of the file"
        );
        drop(f1);
    }
}

fn mmap_shared_write(b: &dyn Backend) {
    let mut m = b.mount();
    let map_write = |p: &Path, edits: &[(usize, &[u8])]| {
        let f = OpenOptions::new().read(true).write(true).open(p).unwrap();
        let len = f.metadata().unwrap().len() as usize;
        // SAFETY: a fresh shared mapping of an open file, unmapped below; writes stay in bounds.
        unsafe {
            let addr = libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                f.as_raw_fd(),
                0,
            );
            assert_ne!(addr, libc::MAP_FAILED, "mmap {}", p.display());
            let mem = std::slice::from_raw_parts_mut(addr as *mut u8, len);
            for (off, data) in edits {
                mem[*off..*off + data.len()].copy_from_slice(data);
            }
            assert_eq!(libc::munmap(addr, len), 0);
        }
        drop(f);
    };
    // An upper file.
    let up = m.p("www/mapped");
    std::fs::write(&up, vec![0u8; 8192]).unwrap();
    map_write(&up, &[(0, b"mapped!"), (5000, b"page two")]);
    let mut want = vec![0u8; 8192];
    want[..7].copy_from_slice(b"mapped!");
    want[5000..5008].copy_from_slice(b"page two");
    assert_bytes(&read(&up), &want, "upper file after mmap");
    // A lower file (copied up on the writable open).
    let passwd = m.p("etc/passwd");
    let mut pwant = read(&passwd);
    map_write(&passwd, &[(0, b"ROOT")]);
    pwant[..4].copy_from_slice(b"ROOT");
    assert_bytes(&read(&passwd), &pwant, "etc/passwd after mmap");
    // A read-only shared mapping of a lower file sees its content.
    let idx = File::open(m.p("www/index.html")).unwrap();
    // SAFETY: read-only mapping of an 18-byte file, unmapped below.
    unsafe {
        let addr = libc::mmap(
            std::ptr::null_mut(),
            INDEX.len(),
            libc::PROT_READ,
            libc::MAP_SHARED,
            idx.as_fd().as_raw_fd(),
            0,
        );
        assert_ne!(addr, libc::MAP_FAILED);
        assert_eq!(
            std::slice::from_raw_parts(addr as *const u8, INDEX.len()),
            INDEX
        );
        libc::munmap(addr, INDEX.len());
    }
    drop(idx);
    m.remount();
    assert_bytes(&read(&m.p("www/mapped")), &want, "upper file after remount");
    assert_bytes(
        &read(&m.p("etc/passwd")),
        &pwant,
        "etc/passwd after remount",
    );
}

// ---------------------------------------------------------------------------------------------
// Names and paths

fn name_max(b: &dyn Backend) {
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

fn deep_paths_beyond_path_max(b: &dyn Backend) {
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

// ---------------------------------------------------------------------------------------------
// Permissions for a non-root caller

/// Child-side operations for [`as_user`]: each returns 0 or the errno.
mod child {
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

fn non_root_permissions(b: &dyn Backend) {
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

// ---------------------------------------------------------------------------------------------
// Persistence, churn

fn persistence_across_remount(b: &dyn Backend) {
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
        .inode_of
        .iter()
        .filter(|(p, ino)| after.inode_of.get(*p) != Some(ino))
        .map(|(p, _)| String::from_utf8_lossy(p).into_owned())
        .collect();
    assert!(
        moved.is_empty(),
        "inode numbers changed across remount: {moved:?}"
    );
}

fn create_unlink_churn(b: &dyn Backend) {
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

// ---------------------------------------------------------------------------------------------
// Bad input, a layer in use

fn bad_layer_input(b: &dyn Backend) {
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

fn layer_in_use(b: &dyn Backend) {
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

//! `strata mount --rw --io passthrough` (issue 11): files whose bytes are all in one host file
//! are read and written by the kernel through FUSE passthrough, without a READ or WRITE
//! request reaching strata, and their size and times stay right while they are written that
//! way, after they are closed and after a remount. The same workload on a default writable
//! mount goes through strata (which shows the counting can tell the two apart). The behaviour
//! of every other operation in this mode is the `rw_ops` suite's (`strata_pt_*`).

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::Path;
use std::time::Duration;

use strata_testkit::cli::strata_io_env;
use strata_testkit::mounts::{LoggedMount, MountGuard, is_mounted};
use strata_testkit::paths::SAMPLE_IMAGE;
use strata_testkit::posix::{assert_bytes, pattern};

const BIG: usize = 3 << 20;

/// fuser's debug lines of requests with opcode `op`.
fn requests(log: &str, op: &str) -> usize {
    let op = format!(" {op} ");
    log.lines()
        .filter(|l| l.contains("FUSE(") && l.contains(&op))
        .count()
}

/// Writes a new 3 MiB file in 1 MiB writes, checking `stat` while it is open; reads a 2 MB
/// lower file. Returns the lower file's bytes.
fn workload(m: &Path) -> Vec<u8> {
    let want = pattern(BIG, 3);
    let mut f = File::create(m.join("big.bin")).unwrap();
    for part in want.chunks(1 << 20) {
        f.write_all(part).unwrap();
        // The size the kernel reports while the file is open.
        let seen = std::fs::metadata(m.join("big.bin")).unwrap().len();
        assert_eq!(seen, f.metadata().unwrap().len());
    }
    assert_eq!(
        std::fs::metadata(m.join("big.bin")).unwrap().len(),
        BIG as u64
    );
    f.sync_all().unwrap();
    drop(f);
    assert_bytes(&std::fs::read(m.join("big.bin")).unwrap(), &want, "big.bin");
    std::fs::read(m.join("bin/busybox")).unwrap()
}

#[test]
fn passthrough_mount_reads_and_writes_without_strata_in_the_data_path() {
    let r = LoggedMount::new(&[]);
    let _guard = MountGuard(r.mnt.clone());
    r.mount_rw(&["--io", "passthrough"]);
    let busybox = workload(&r.mnt);
    let log = r.log();
    r.umount();
    assert!(
        requests(&log, "CREATE") >= 1 && requests(&log, "OPEN") >= 1,
        "OPEN and CREATE are answered in this mode:\n{}",
        log.lines().take(30).collect::<Vec<_>>().join("\n")
    );
    assert_eq!(requests(&log, "WRITE"), 0, "WRITE requests reached strata");
    assert_eq!(requests(&log, "READ"), 0, "READ requests reached strata");

    // After a remount without passthrough (strata reads the data itself): the same bytes,
    // size and times.
    r.mount();
    let m = std::fs::metadata(r.mnt.join("big.bin")).unwrap();
    assert_eq!(m.len(), BIG as u64);
    assert_bytes(
        &std::fs::read(r.mnt.join("big.bin")).unwrap(),
        &pattern(BIG, 3),
        "big.bin after a remount",
    );
    assert_bytes(
        &std::fs::read(r.mnt.join("bin/busybox")).unwrap(),
        &busybox,
        "bin/busybox read through strata",
    );
    let log = r.log();
    r.umount();
    assert!(
        requests(&log, "READ") > 0,
        "the default mount reads through strata"
    );
}

#[test]
fn default_writable_mount_serves_the_same_workload_through_strata() {
    let r = LoggedMount::new(&[]);
    let _guard = MountGuard(r.mnt.clone());
    r.mount();
    workload(&r.mnt);
    let log = r.log();
    r.umount();
    assert!(
        requests(&log, "WRITE") >= 3,
        "1 MiB WRITE requests expected"
    );
    // The first OPEN is answered ENOSYS, which turns OPEN off for the connection.
    assert!(requests(&log, "OPEN") <= 1, "OPEN is off by default");
}

#[test]
fn times_and_size_of_a_file_written_through_passthrough() {
    let r = LoggedMount::new(&[]);
    let _guard = MountGuard(r.mnt.clone());
    r.mount_rw(&["--io", "passthrough"]);
    let p = r.mnt.join("t.bin");
    let f = OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(&p)
        .unwrap();
    f.write_all_at(&pattern(100_000, 1), 0).unwrap();
    // An explicit mtime set while it is open holds until the next write.
    let old = rustix::fs::Timespec {
        tv_sec: 1_000_000_000,
        tv_nsec: 5,
    };
    let times = rustix::fs::Timestamps {
        last_access: old,
        last_modification: old,
    };
    rustix::fs::utimensat(rustix::fs::CWD, &p, &times, rustix::fs::AtFlags::empty()).unwrap();
    let m = std::fs::metadata(&p).unwrap();
    assert_eq!(
        (m.mtime(), m.mtime_nsec(), m.len()),
        (1_000_000_000, 5, 100_000)
    );
    // Truncate and write through the open file: size and mtime follow.
    f.set_len(50_000).unwrap();
    f.write_all_at(b"tail", 70_000).unwrap();
    let m = std::fs::metadata(&p).unwrap();
    assert_eq!(m.len(), 70_004);
    assert!(m.mtime() > 1_000_000_000, "a write sets the mtime");
    drop(f);
    let closed = std::fs::metadata(&p).unwrap();
    assert_eq!(closed.len(), 70_004);
    r.umount();
    r.mount();
    let again = std::fs::metadata(&p).unwrap();
    assert_eq!(
        (again.len(), again.mtime(), again.mtime_nsec()),
        (closed.len(), closed.mtime(), closed.mtime_nsec()),
        "the record got what the writes through passthrough changed"
    );
    let mut want = pattern(100_000, 1);
    want.truncate(50_000);
    want.resize(70_000, 0);
    want.extend_from_slice(b"tail");
    assert_bytes(&std::fs::read(&p).unwrap(), &want, "t.bin after a remount");
    r.umount();
}

#[test]
fn writable_mount_refuses_io_cached() {
    let r = LoggedMount::new(&[]);
    let out = strata_io_env(
        r.root.path(),
        &[
            "mount",
            SAMPLE_IMAGE,
            r.mnt.to_str().unwrap(),
            "-d",
            "--rw",
            "--layer",
            r.layer.to_str().unwrap(),
            "--io",
            "cached",
        ],
        None,
        Duration::from_secs(60),
        &[],
    );
    assert_eq!(out.code, 125, "{}", out.err);
    assert!(
        out.err.contains("--io cached is for read-only mounts"),
        "{}",
        out.err
    );
    assert!(!is_mounted(&r.mnt));
}

//! How a mount's requests reach strata (issue 11). With fuse's `enable_uring` on, the
//! kernel sends them through FUSE over io_uring: per-CPU queues served by strata's queue
//! threads (`fuser-ring-*`), not by the `/dev/fuse` readers (`fuser-0`, `fuser-1`), which then
//! see only FORGETs. With `--io-uring=off` the readers serve everything and no queue thread
//! exists. The same workload runs both ways, with the payloads that fill a ring entry or
//! leave it empty: names of every length from 1 to 64 (a request's first argument is copied
//! apart from the payload), a 3 MiB file written in 1 MiB requests and read back after a
//! remount in large replies, a 60 KiB extended attribute, a 64-entry listing. Where the
//! kernel refuses io_uring (`kernel.io_uring_disabled`), the mount works through `/dev/fuse`.

use std::ffi::OsStr;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use strata_testkit::mounts::{LoggedMount, MountGuard, kill9};
use strata_testkit::posix::{assert_bytes, pattern};

const ENABLE_URING: &str = "/sys/module/fuse/parameters/enable_uring";
const IO_URING_DISABLED: &str = "/proc/sys/kernel/io_uring_disabled";

/// The tests of this file change host settings the others depend on: one at a time.
static HOST: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn host() -> std::sync::MutexGuard<'static, ()> {
    HOST.lock().unwrap_or_else(|e| e.into_inner())
}

/// Sets `kernel.io_uring_disabled` for as long as it lives, and puts the old value back.
struct IoUringDisabled(String);

impl IoUringDisabled {
    fn set(v: &str) -> IoUringDisabled {
        let old = std::fs::read_to_string(IO_URING_DISABLED).expect("kernel.io_uring_disabled");
        std::fs::write(IO_URING_DISABLED, v).expect("set kernel.io_uring_disabled (as root)");
        IoUringDisabled(old.trim().to_string())
    }
}

impl Drop for IoUringDisabled {
    fn drop(&mut self) {
        let _ = std::fs::write(IO_URING_DISABLED, &self.0);
    }
}
const BIG: usize = 3 << 20;
const XATTR: usize = 60_000;

/// Turns fuse's `enable_uring` on (as `tools/test` does for the whole suite; idempotent).
fn enable_uring() {
    let v = std::fs::read_to_string(ENABLE_URING)
        .expect("this kernel has no FUSE over io_uring (Linux 6.14+ with CONFIG_FUSE_IO_URING)");
    if v.trim() != "Y" {
        std::fs::write(ENABLE_URING, "Y").expect("turn on fuse's enable_uring (as root)");
    }
}

/// Writes the workload's files; returns the listing of `names/`.
fn write_side(m: &Path) -> Vec<String> {
    let d = m.join("names");
    std::fs::create_dir(&d).unwrap();
    for n in 1..=64 {
        let name = "n".repeat(n);
        std::fs::write(d.join(&name), name.as_bytes()).unwrap();
    }
    for n in 1..=64 {
        let name = "n".repeat(n);
        assert_eq!(
            std::fs::read(d.join(&name)).unwrap(),
            name.as_bytes(),
            "{n}"
        );
    }
    let mut f = File::create(m.join("big.bin")).unwrap();
    f.write_all(&pattern(BIG, 11)).unwrap();
    f.sync_all().unwrap();
    rustix::fs::setxattr(
        m.join("big.bin"),
        "user.big",
        &pattern(XATTR, 5),
        rustix::fs::XattrFlags::empty(),
    )
    .unwrap();
    listing(&d)
}

fn listing(d: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(d)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// After a remount (nothing cached): everything reads back.
fn read_side(m: &Path, want_listing: &[String]) {
    assert_eq!(listing(&m.join("names")), want_listing);
    assert_bytes(
        &std::fs::read(m.join("big.bin")).unwrap(),
        &pattern(BIG, 11),
        "big.bin",
    );
    let mut buf = vec![0u8; XATTR + 10];
    let n = rustix::fs::getxattr(m.join("big.bin"), "user.big", &mut buf).unwrap();
    assert_bytes(&buf[..n], &pattern(XATTR, 5), "user.big");
}

/// The pids of the mount daemons recorded in `ROOT/mounts/*.json`.
fn daemon_pids(root: &Path) -> Vec<i32> {
    let Ok(dir) = std::fs::read_dir(root.join("mounts")) else {
        return Vec::new();
    };
    dir.flatten()
        .filter(|e| e.path().extension() == Some(OsStr::new("json")))
        .filter_map(|e| std::fs::read(e.path()).ok())
        .filter_map(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .filter_map(|v| v["pid"].as_i64().map(|p| p as i32))
        .collect()
}

/// Request lines of fuser's debug log: (served by a queue thread, served by a /dev/fuse reader).
fn served(log: &str) -> (Vec<&str>, Vec<&str>) {
    log.lines()
        .filter(|l| l.contains("FUSE(") && l.contains(" thread=fuser-"))
        .partition(|l| l.contains("thread=fuser-ring-"))
}

fn run_both_ways(flags: &[&'static str]) -> (Vec<String>, String) {
    run_both_ways_in(&LoggedMount::new(flags))
}

/// Writes the workload, remounts, reads it back; returns the listing and both mounts' logs.
fn run_both_ways_in(r: &LoggedMount) -> (Vec<String>, String) {
    let _guard = MountGuard(r.mnt.clone());
    r.mount();
    let names = write_side(&r.mnt);
    // Each mount starts its log afresh.
    let mut log = r.log();
    r.umount();
    r.mount();
    read_side(&r.mnt, &names);
    log += &r.log();
    r.umount();
    (names, log)
}

#[test]
fn writable_mount_serves_requests_through_io_uring_queues() {
    let _host = host();
    enable_uring();
    let (names, log) = run_both_ways(&[]);
    assert_eq!(names.len(), 64);
    let (ring, dev) = served(&log);
    // Every LOOKUP, WRITE, READ, SETXATTR… of the workload: well over 500 requests.
    assert!(
        ring.len() > 500,
        "only {} requests went through the io_uring queues ({} through /dev/fuse):\n{}",
        ring.len(),
        dev.len(),
        log.lines().take(40).collect::<Vec<_>>().join("\n")
    );
    for op in ["WRITE", "READ", "SETXATTR", "LOOKUP", "READDIRPLUS"] {
        assert!(
            ring.iter().any(|l| l.contains(&format!(" {op} "))),
            "no {op} through the queues"
        );
    }
    // /dev/fuse carries the FORGETs, and only the requests of the first moments after each
    // mount, before the queue threads have registered.
    let early: Vec<&&str> = dev.iter().filter(|l| !l.contains("FORGET")).collect();
    assert!(
        early.len() <= 50,
        "{} requests other than FORGET went through /dev/fuse:\n{}",
        early.len(),
        early
            .iter()
            .take(20)
            .map(|l| l.to_string())
            .collect::<Vec<_>>()
            .join("\n")
    );
}

#[test]
fn io_uring_off_serves_everything_through_dev_fuse() {
    let _host = host();
    enable_uring();
    let (names, log) = run_both_ways(&["--io-uring=off"]);
    assert_eq!(names.len(), 64);
    let (ring, dev) = served(&log);
    assert!(ring.is_empty(), "{} requests through queues", ring.len());
    assert!(dev.len() > 500, "only {} requests logged", dev.len());
}

/// The read-only mount takes the same path: every file of the image read, every directory
/// listed, through the queues (OPEN replies with a passthrough backing file included).
#[test]
fn read_only_mount_serves_requests_through_io_uring_queues() {
    let _host = host();
    enable_uring();
    let r = LoggedMount::new(&[]);
    let _guard = MountGuard(r.mnt.clone());
    r.mount_with(&[]);
    let mut files = 0;
    let mut stack = vec![r.mnt.join("srv")];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let ft = e.file_type().unwrap();
            if ft.is_dir() {
                stack.push(e.path());
            } else if ft.is_file() {
                std::fs::read(e.path()).unwrap();
                files += 1;
            }
        }
    }
    let log = r.log();
    r.umount();
    assert!(files > 20, "only {files} files under srv/");
    let (ring, _) = served(&log);
    for op in ["LOOKUP", "OPEN", "READDIRPLUS"] {
        assert!(
            ring.iter().any(|l| l.contains(&format!(" {op} "))),
            "no {op} through the queues ({} requests did go through them)",
            ring.len()
        );
    }
}

/// With io_uring refused to every process (`kernel.io_uring_disabled=2`: io_uring_setup fails
/// with EPERM), the handshake says so in the log and every request goes through /dev/fuse:
/// the same workload, the same results. (Asking the kernel for io_uring and then failing to
/// set up a queue would hang every request: the kernel holds them until all queues register.
/// A watchdog ends such a hang by killing the mount daemons after 60 s, so that it fails.)
#[test]
fn mount_falls_back_to_dev_fuse_when_the_kernel_refuses_io_uring() {
    let _host = host();
    enable_uring();
    let (names, log) = {
        let _off = IoUringDisabled::set("2");
        let (done, watch) = std::sync::mpsc::channel::<()>();
        let roots = std::sync::Arc::new(std::sync::Mutex::new(Vec::<PathBuf>::new()));
        let watched = roots.clone();
        let dog = std::thread::spawn(move || {
            if watch.recv_timeout(Duration::from_secs(60)).is_err() {
                for root in watched.lock().unwrap().iter() {
                    for pid in daemon_pids(root) {
                        kill9(pid);
                    }
                }
            }
        });
        let r = LoggedMount::new(&[]);
        roots.lock().unwrap().push(r.root.path().to_path_buf());
        let out = run_both_ways_in(&r);
        let _ = done.send(());
        dog.join().unwrap();
        out
    };
    assert_eq!(names.len(), 64);
    let (ring, dev) = served(&log);
    assert!(ring.is_empty(), "{} requests through queues", ring.len());
    assert!(dev.len() > 500, "only {} requests logged", dev.len());
    assert!(
        log.contains("FUSE over io_uring not used, requests go through /dev/fuse"),
        "no word of the fallback in the log"
    );
}

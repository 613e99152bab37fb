//! How long an unlinked file lives on a writable mount (issue 11). strata answers OPEN with
//! `ENOSYS` (no OPEN/RELEASE round trips), so it learns that a file is open only from the
//! kernel's references (entry replies and FORGET): an unlinked file whose data is in a backing
//! file must stay readable through an open descriptor — also once write-behind has run and the
//! page cache has been dropped — and its backing file must go once the last descriptor closes.
//! Kernel overlayfs runs the same scenario as the oracle.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::time::{Duration, Instant};

use strata_testkit::backend::*;
use strata_testkit::posix::{assert_bytes, pattern};

const LEN: usize = 3 << 20;

/// Drops the file's cached pages, so the next read asks the file system.
fn drop_cache(f: &File) {
    // SAFETY: a valid descriptor; fadvise only drops clean cached pages.
    let rc = unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    assert_eq!(rc, 0, "posix_fadvise");
}

/// Files in the strata layer's `data/` directory (backing files).
fn backing_files(layer: &std::path::Path) -> usize {
    std::fs::read_dir(layer.join("data"))
        .map(|d| d.count())
        .unwrap_or(0)
}

fn scenario(b: &dyn Backend) {
    let m = b.mount();
    let p = m.p("www/big.bin");
    let data = pattern(LEN, 7);
    let mut w = File::create(&p).unwrap();
    w.write_all(&data).unwrap();
    w.sync_all().unwrap();
    drop(w);
    // Opened by open(2) (no CREATE: strata gets no OPEN for it), then unlinked.
    let r = File::open(&p).unwrap();
    let rw = OpenOptions::new().read(true).write(true).open(&p).unwrap();
    std::fs::remove_file(&p).unwrap();
    assert!(std::fs::symlink_metadata(&p).is_err(), "still has its name");
    // Long enough for write-behind (100 ms) to have written the unlink.
    std::thread::sleep(Duration::from_millis(400));
    drop_cache(&r);
    let mut got = vec![0u8; LEN];
    r.read_exact_at(&mut got, 0).unwrap();
    assert_bytes(
        &got,
        &data,
        "unlinked open file after write-behind and a cache drop",
    );
    rw.write_all_at(b"still here", 1 << 20).unwrap();
    drop_cache(&r);
    r.read_exact_at(&mut got[..10], 1 << 20).unwrap();
    assert_eq!(&got[..10], b"still here");
    if m.strata() {
        assert_eq!(
            backing_files(&m.layer),
            1,
            "the backing file went too early"
        );
    }
    drop(r);
    drop(rw);
    if m.strata() {
        // FORGET arrives when the kernel drops the inode; the file goes once that is written.
        let deadline = Instant::now() + Duration::from_secs(10);
        while backing_files(&m.layer) != 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        assert_eq!(
            backing_files(&m.layer),
            0,
            "backing file of a closed unlinked file left"
        );
    }
}

#[test]
fn kernel_unlinked_open_big_file() {
    scenario(&KernelOverlay::new());
}

#[test]
fn strata_unlinked_open_big_file() {
    scenario(&Strata::new());
}

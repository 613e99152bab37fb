//! The read-only merged view, mounted through the library (no CLI), against kernel overlayfs
//! over the same layer tars: every name, type, mode, owner, size, mtime, content, link target,
//! device number, xattr, nlink and hard-link group must be the same.

use std::collections::BTreeSet;
use std::io::Read;
use std::path::{Path, PathBuf};

use strata::fs::OpenMode;
use strata::layer::LayerStore;
use strata_testkit::*;

/// Directories a layer tar only implies (it has entries below them but none for them). GNU tar
/// creates those with the extraction time and default owner; the oracle gives them the
/// attributes of the same directory below when there is one, but one with nothing below keeps
/// arbitrary attributes. Their own attributes are not compared; everything inside them is.
fn implied_dirs_of(layers: &[PathBuf]) -> Vec<Vec<u8>> {
    let mut out = BTreeSet::new();
    for tar in layers {
        out.extend(implied_dirs(tar).expect("reading a layer tar"));
    }
    out.into_iter().collect()
}

fn mount_with_library(
    root: &Path,
    layers: &[PathBuf],
    mountpoint: &Path,
) -> fuser::BackgroundSession {
    mount_with(root, layers, mountpoint, OpenMode::Passthrough).0
}

fn mount_with(
    root: &Path,
    layers: &[PathBuf],
    mountpoint: &Path,
    mode: OpenMode,
) -> (
    fuser::BackgroundSession,
    std::sync::Arc<strata::fs::FsStats>,
) {
    let store = LayerStore::open(root).unwrap();
    let mut ids = Vec::new();
    for tar in layers {
        let staged = store
            .stage(std::fs::File::open(tar).unwrap(), None)
            .unwrap();
        let id = staged.diff_id().clone();
        let locks = store.lock(std::slice::from_ref(&id)).unwrap();
        store.commit(staged, &locks).unwrap();
        ids.push(id);
    }
    let fs = strata::fs::read_only(&store, &ids).unwrap().with_mode(mode);
    let stats = fs.stats();
    let config = strata::fs::read_only_config("strata-test", 2);
    (
        strata::fs::mount(fs, mountpoint, &config)
            .unwrap()
            .spawn()
            .unwrap(),
        stats,
    )
}

/// Kernel ≥ 6.9 offers FUSE passthrough; these machines run 6.18.
fn kernel_has_passthrough() -> bool {
    let r = rustix::system::uname();
    let rel = r.release().to_string_lossy();
    let mut it = rel
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|n| n.parse::<u32>().ok());
    let (maj, min) = (it.next().unwrap_or(0), it.next().unwrap_or(0));
    (maj, min) >= (6, 9)
}

fn compare_with_overlayfs(mode: OpenMode) -> std::sync::Arc<strata::fs::FsStats> {
    let layers = sample_layers();
    let oracle = OverlayOracle::mount(&layers);
    let tmp = tempfile::tempdir().unwrap();
    let mnt = tmp.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let (session, stats) = mount_with(&tmp.path().join("root"), &layers, &mnt, mode);
    let _guard = MountGuard(mnt.clone());

    let kernel = Snapshot::take(&oracle.mountpoint);
    let ours = Snapshot::take(&mnt);
    assert!(
        kernel.entries.len() > 150,
        "sample image too small: {}",
        kernel.entries.len()
    );
    assert_same_tree(&kernel, &ours, &implied_dirs_of(&layers));
    drop(session);
    stats
}

#[test]
fn merged_view_matches_kernel_overlayfs_with_passthrough() {
    use std::sync::atomic::Ordering::Relaxed;
    let stats = compare_with_overlayfs(OpenMode::Passthrough);
    if kernel_has_passthrough() {
        assert!(
            stats.passthrough.load(Relaxed),
            "kernel offers passthrough but the mount did not take it"
        );
        assert!(stats.passthrough_opens.load(Relaxed) > 10);
        assert_eq!(
            stats.plain_reads.load(Relaxed),
            0,
            "reads crossed userspace despite passthrough"
        );
    }
}

#[test]
fn merged_view_matches_kernel_overlayfs_with_userspace_reads() {
    use std::sync::atomic::Ordering::Relaxed;
    let stats = compare_with_overlayfs(OpenMode::Cached);
    assert!(!stats.passthrough.load(Relaxed));
    assert!(stats.plain_reads.load(Relaxed) > 50);
}

#[test]
fn merged_view_matches_kernel_overlayfs_without_open_requests() {
    use std::sync::atomic::Ordering::Relaxed;
    let stats = compare_with_overlayfs(OpenMode::NoOpen);
    assert_eq!(stats.passthrough_opens.load(Relaxed), 0);
    assert!(stats.plain_reads.load(Relaxed) > 50);
}

#[test]
fn every_write_is_refused_with_erofs() {
    let layers = sample_layers();
    let tmp = tempfile::tempdir().unwrap();
    let mnt = tmp.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let _session = mount_with_library(&tmp.path().join("root"), &layers, &mnt);
    let _guard = MountGuard(mnt.clone());

    let erofs = |r: std::io::Result<()>, what: &str| {
        let e = r.expect_err(what);
        assert_eq!(e.raw_os_error(), Some(libc::EROFS), "{what}: {e}");
    };
    let f = mnt.join("www/index.html");
    erofs(std::fs::write(mnt.join("new"), b"x"), "create");
    erofs(
        std::fs::OpenOptions::new().write(true).open(&f).map(drop),
        "open for write",
    );
    erofs(std::fs::remove_file(&f), "unlink");
    erofs(std::fs::create_dir(mnt.join("d")), "mkdir");
    erofs(std::fs::remove_dir(mnt.join("tmp")), "rmdir");
    erofs(std::fs::rename(&f, mnt.join("www/x")), "rename");
    erofs(std::fs::hard_link(&f, mnt.join("www/x")), "link");
    erofs(
        std::os::unix::fs::symlink("x", mnt.join("www/x")),
        "symlink",
    );
    erofs(
        std::fs::set_permissions(&f, std::os::unix::fs::PermissionsExt::from_mode(0o600)),
        "chmod",
    );
    erofs(
        rustix::fs::lsetxattr(&f, "user.x", b"1", rustix::fs::XattrFlags::empty())
            .map_err(Into::into),
        "setxattr",
    );
    // Reads still work, through passthrough or the fallback.
    let mut s = String::new();
    std::fs::File::open(&f)
        .unwrap()
        .read_to_string(&mut s)
        .unwrap();
    assert_eq!(s, "hello from strata\n");
}

#[test]
fn too_long_names_get_enametoolong() {
    let layers = sample_layers();
    let tmp = tempfile::tempdir().unwrap();
    let mnt = tmp.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let _session = mount_with_library(&tmp.path().join("root"), &layers, &mnt);
    let _guard = MountGuard(mnt.clone());
    let e = std::fs::symlink_metadata(mnt.join("x".repeat(256))).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::ENAMETOOLONG));
    let e = std::fs::symlink_metadata(mnt.join("x".repeat(255))).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::ENOENT));
}

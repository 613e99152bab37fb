//! The two backends the writable-mount tests (`rw_ops.rs`) run every scenario against, behind
//! one trait: kernel overlayfs (the oracle: the sample image's layer tars extracted by GNU tar
//! into lowerdirs, plus an empty upperdir and workdir) and strata's `mount --rw` (the CLI).

use std::ffi::OsStr;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use crate::cli::{strata, strata_ok};
use crate::mounts::{MountGuard, is_mounted, wait_unmounted};
use crate::paths::{SAMPLE_IMAGE, sample_image, sample_layers, target_tmp};
use crate::posix::pids_with_args;

/// A way to mount the sample image writable, every change landing in a "layer" directory:
/// strata's sled layer, or kernel overlayfs's upperdir.
pub trait Backend {
    fn name(&self) -> &'static str;
    fn is_strata(&self) -> bool;
    /// Files of the image are read through FUSE passthrough to the lower file (strata's
    /// `--io passthrough`): a write open of such a file fails with ETXTBSY while an fd opened
    /// before reads it that way, where kernel overlayfs switches that fd to the copy.
    fn lower_passthrough(&self) -> bool {
        false
    }
    /// Mounts the sample image writable at `mnt` (an existing empty directory), with its changes
    /// in `layer` (created if missing). `Err` carries the failure's message (stderr).
    fn try_mount_at(&self, layer: &Path, mnt: &Path) -> Result<(), String>;
    /// Unmounts `mnt` (the way a user would) and waits (bounded) until it is gone.
    fn unmount_at(&self, mnt: &Path) -> Result<(), String>;
    /// The processes serving the mount at `mnt` (strata's daemon; none for the kernel).
    fn daemon_pids(&self, _mnt: &Path) -> Vec<i32> {
        Vec::new()
    }
}

impl<'b> dyn Backend + 'b {
    /// A fresh instance: new temporary directory, empty layer, mounted.
    pub fn mount(&self) -> Mounted<'_, 'b> {
        // Every test wants the same umask; setting it in each is harmless.
        rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o022));
        let tmp = tempfile::tempdir().unwrap();
        let mnt = tmp.path().join("mnt");
        std::fs::create_dir(&mnt).unwrap();
        let layer = tmp.path().join("layer");
        let guard = MountGuard(mnt.clone());
        if let Err(e) = self.try_mount_at(&layer, &mnt) {
            panic!("{}: mount failed: {e}", self.name());
        }
        assert!(is_mounted(&mnt), "{}: not mounted after mount", self.name());
        Mounted {
            b: self,
            dir: tmp.path().to_path_buf(),
            mnt,
            layer,
            mounted: true,
            _guard: guard,
            _tmp: tmp,
        }
    }
}

/// One mounted instance. Unmounts on drop (also when the test panics).
pub struct Mounted<'a, 'b> {
    pub b: &'a (dyn Backend + 'b),
    /// The instance's temporary directory (holds `mnt` and `layer`; free for other files).
    pub dir: PathBuf,
    pub mnt: PathBuf,
    pub layer: PathBuf,
    mounted: bool,
    // Field order matters: the guard (lazy unmount) drops before the directory is removed.
    _guard: MountGuard,
    _tmp: tempfile::TempDir,
}

impl Mounted<'_, '_> {
    /// `rel` under the mount point.
    pub fn p(&self, rel: &str) -> PathBuf {
        self.mnt.join(rel)
    }

    pub fn strata(&self) -> bool {
        self.b.is_strata()
    }

    pub fn unmount(&mut self) {
        assert!(self.mounted, "already unmounted");
        if let Err(e) = self.b.unmount_at(&self.mnt) {
            panic!("{}: unmount failed: {e}", self.b.name());
        }
        self.mounted = false;
    }

    /// Mounts the same layer again (after [`Mounted::unmount`]).
    pub fn mount_again(&mut self) {
        assert!(!self.mounted, "still mounted");
        if let Err(e) = self.b.try_mount_at(&self.layer, &self.mnt) {
            panic!("{}: mount again failed: {e}", self.b.name());
        }
        self.mounted = true;
    }

    /// Unmount, then mount the same layer again.
    pub fn remount(&mut self) {
        self.unmount();
        self.mount_again();
    }

    /// Bytes the layer occupies on the host (allocated blocks of every file under it).
    pub fn layer_disk_usage(&self) -> u64 {
        disk_usage(&self.layer)
    }
}

impl Drop for Mounted<'_, '_> {
    fn drop(&mut self) {
        if self.mounted {
            let _ = self.b.unmount_at(&self.mnt);
        }
    }
}

/// Allocated bytes (st_blocks × 512) of everything under `p`.
pub fn disk_usage(p: &Path) -> u64 {
    let Ok(m) = std::fs::symlink_metadata(p) else {
        return 0;
    };
    let mut total = m.blocks() * 512;
    if m.is_dir() {
        for e in std::fs::read_dir(p).unwrap().flatten() {
            total += disk_usage(&e.path());
        }
    }
    total
}

// ---------------------------------------------------------------------------------------------
// Kernel overlayfs

/// Kernel overlayfs over the sample image's layers, writable: `layer` is the upperdir, and the
/// workdir is its sibling `<layer>.work`. Options: `redirect_dir=on` (renaming lower dirs works
/// instead of EXDEV), `index=on` (hard links survive copy-up, and an upperdir is exclusive to
/// one mount), `metacopy=off` (copy-up copies data, as most distributions configure it).
pub struct KernelOverlay {
    lowers: Vec<PathBuf>,
}

impl KernelOverlay {
    pub fn new() -> Self {
        KernelOverlay {
            lowers: shared_lowers().to_vec(),
        }
    }
}

impl Default for KernelOverlay {
    fn default() -> Self {
        Self::new()
    }
}

/// The lowerdirs, extracted once per sample-image version into the target dir (overlay never
/// writes to its lowerdirs, so every test's mount shares them).
fn shared_lowers() -> &'static [PathBuf] {
    static LOWERS: OnceLock<Vec<PathBuf>> = OnceLock::new();
    LOWERS.get_or_init(|| {
        let img = sample_image();
        let stamp = img.file_name().unwrap().to_string_lossy().into_owned();
        let dir = target_tmp().join(format!("rw-lowers-v2-{stamp}"));
        let lock = strata::sys::lock_file(&dir.with_extension("lock")).expect("lock lowers");
        let layers = sample_layers();
        if !dir.join("done").exists() {
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            crate::overlay::extract_lowers(&layers, &dir).expect("extracting the layers");
            std::fs::write(dir.join("done"), b"").unwrap();
        }
        drop(lock);
        (0..layers.len())
            .map(|i| dir.join(format!("l{i}")))
            .collect()
    })
}

impl Backend for KernelOverlay {
    fn name(&self) -> &'static str {
        "kernel overlayfs"
    }

    fn is_strata(&self) -> bool {
        false
    }

    fn try_mount_at(&self, layer: &Path, mnt: &Path) -> Result<(), String> {
        if !layer.exists() {
            std::fs::create_dir_all(layer).map_err(|e| e.to_string())?;
        }
        let mut work = layer.as_os_str().to_owned();
        work.push(".work");
        let work = PathBuf::from(work);
        std::fs::create_dir_all(&work).map_err(|e| e.to_string())?;
        let out = Command::new("mount")
            .args(["-t", "overlay", "overlay", "-o"])
            .arg(crate::overlay::writable_options(&self.lowers, layer, &work))
            .arg(mnt)
            .output()
            .map_err(|e| e.to_string())?;
        if !out.status.success() {
            return Err(format!(
                "mount -t overlay: exit {:?}: {}",
                out.status.code(),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        Ok(())
    }

    fn unmount_at(&self, mnt: &Path) -> Result<(), String> {
        // Tests run in parallel threads and some fork (without exec) to drop privileges: such
        // a child briefly holds copies of every descriptor of the process, including files
        // another test has open in this mount. So EBUSY is retried, bounded: 250 × 20 ms.
        let mut tries = 0;
        loop {
            match rustix::mount::unmount(mnt, rustix::mount::UnmountFlags::empty()) {
                Ok(()) => break,
                Err(rustix::io::Errno::BUSY) if tries < 250 => {
                    tries += 1;
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => return Err(format!("umount {}: {e}", mnt.display())),
            }
        }
        if !wait_unmounted(mnt) {
            return Err(format!("{} still mounted", mnt.display()));
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// strata

/// strata's CLI: `strata --root ROOT mount --rw strata-sample:latest MNT --layer LAYER -d`, with
/// its own state root holding the loaded sample image. Requests come through FUSE over
/// io_uring when the kernel offers it (`tools/test` turns fuse's `enable_uring` on), or only
/// through `/dev/fuse` ([`Strata::dev_fuse`], `--io-uring=off`); [`Strata::passthrough`]
/// mounts with `--io passthrough`.
pub struct Strata {
    root: tempfile::TempDir,
    io_uring: bool,
    passthrough: bool,
}

impl Strata {
    pub fn new() -> Self {
        let root = tempfile::tempdir().unwrap();
        let oci = sample_image().join("oci");
        strata_ok(root.path(), &["load", oci.to_str().unwrap()]);
        Strata {
            root,
            io_uring: true,
            passthrough: false,
        }
    }

    /// Mounts with `--io passthrough`: files whose bytes are in one host file are read and
    /// written by the kernel through FUSE passthrough.
    pub fn passthrough() -> Self {
        Strata {
            passthrough: true,
            ..Self::new()
        }
    }

    /// Mounts that take every request through `/dev/fuse`.
    pub fn dev_fuse() -> Self {
        Strata {
            io_uring: false,
            ..Self::new()
        }
    }

    pub fn root(&self) -> &Path {
        self.root.path()
    }
}

impl Default for Strata {
    fn default() -> Self {
        Self::new()
    }
}

impl Backend for Strata {
    fn name(&self) -> &'static str {
        match (self.io_uring, self.passthrough) {
            (_, true) => "strata (--io passthrough)",
            (true, false) => "strata",
            (false, false) => "strata (/dev/fuse)",
        }
    }

    fn is_strata(&self) -> bool {
        true
    }

    fn lower_passthrough(&self) -> bool {
        self.passthrough
    }

    fn try_mount_at(&self, layer: &Path, mnt: &Path) -> Result<(), String> {
        let mut args: Vec<&OsStr> = vec![
            OsStr::new("mount"),
            OsStr::new("--rw"),
            OsStr::new(SAMPLE_IMAGE),
            mnt.as_os_str(),
            OsStr::new("--layer"),
            layer.as_os_str(),
            OsStr::new("-d"),
        ];
        if !self.io_uring {
            args.push(OsStr::new("--io-uring=off"));
        }
        if self.passthrough {
            args.extend([OsStr::new("--io"), OsStr::new("passthrough")]);
        }
        let (code, _out, err) = strata(self.root.path(), &args);
        if code != 0 {
            return Err(format!("strata mount --rw: exit {code}: {err}"));
        }
        if !is_mounted(mnt) {
            return Err(format!(
                "strata mount --rw exited 0 but {} is not mounted",
                mnt.display()
            ));
        }
        Ok(())
    }

    fn unmount_at(&self, mnt: &Path) -> Result<(), String> {
        let (code, _out, err) = strata(self.root.path(), &[OsStr::new("umount"), mnt.as_os_str()]);
        if code != 0 {
            return Err(format!("strata umount: exit {code}: {err}"));
        }
        if !wait_unmounted(mnt) {
            return Err(format!("{} still mounted", mnt.display()));
        }
        Ok(())
    }

    /// From the mount records under `<root>/mounts/` and from the process table (a process
    /// whose arguments include the mount point).
    fn daemon_pids(&self, mnt: &Path) -> Vec<i32> {
        let mut pids = pids_with_args(&[mnt.as_os_str()]);
        if let Ok(rd) = std::fs::read_dir(self.root.path().join("mounts")) {
            for e in rd.flatten() {
                let Ok(body) = std::fs::read(e.path()) else {
                    continue;
                };
                let Ok(v) = serde_json::from_slice::<serde_json::Value>(&body) else {
                    continue;
                };
                let here = v["mountpoint"].as_str().map(Path::new) == Some(mnt);
                if let (true, Some(pid)) = (here, v["pid"].as_i64()) {
                    pids.push(pid as i32);
                }
            }
        }
        pids.sort();
        pids.dedup();
        pids
    }
}

//! The `strata` binary for the testers: a state root holding the sample image, and writable
//! mounts through `strata mount --rw` whose daemon is waited for (bounded) when they go.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::Context;

use crate::cli::run;
use crate::mounts::{kill9, unmount, wait_exit};
use crate::paths::SAMPLE_IMAGE;

/// The `strata` binary with a state root that holds the sample image.
#[derive(Clone, Debug)]
pub struct Strata {
    pub bin: PathBuf,
    pub root: PathBuf,
    pub image: String,
    /// More arguments for `mount --rw` (e.g. `--io passthrough`).
    pub mount_args: Vec<String>,
}

impl Strata {
    /// Loads the sample image (`image_dir/oci`) into `root`.
    pub fn load(bin: &Path, root: &Path, image_dir: &Path) -> anyhow::Result<Self> {
        let s = Strata {
            bin: bin.to_path_buf(),
            root: root.to_path_buf(),
            image: SAMPLE_IMAGE.to_string(),
            mount_args: Vec::new(),
        };
        s.cmd(&[OsStr::new("load"), image_dir.join("oci").as_os_str()])?;
        Ok(s)
    }

    pub fn cmd(&self, args: &[&OsStr]) -> anyhow::Result<String> {
        run(Command::new(&self.bin)
            .arg("--root")
            .arg(&self.root)
            .args(args)
            .env("RUST_LOG", "strata=warn"))
    }

    /// `strata mount --rw IMAGE MNT --layer LAYER -d`; returns the daemon's pid.
    pub fn mount_rw(&self, mnt: &Path, layer: &Path) -> anyhow::Result<i32> {
        let mut args = vec![
            OsStr::new("mount"),
            OsStr::new("--rw"),
            OsStr::new(&self.image),
            mnt.as_os_str(),
            OsStr::new("--layer"),
            layer.as_os_str(),
            OsStr::new("-d"),
        ];
        args.extend(self.mount_args.iter().map(OsStr::new));
        self.cmd(&args)?;
        self.daemon_pid(mnt)
            .with_context(|| format!("no mount record for {} after mount", mnt.display()))
    }

    /// The pid of the daemon serving `mnt`, from `ROOT/mounts/*.json`.
    pub fn daemon_pid(&self, mnt: &Path) -> Option<i32> {
        let want = std::fs::canonicalize(mnt).unwrap_or_else(|_| mnt.to_path_buf());
        for e in std::fs::read_dir(self.root.join("mounts")).ok()?.flatten() {
            if e.path().extension() != Some(OsStr::new("json")) {
                continue;
            }
            let Ok(body) = std::fs::read(e.path()) else {
                continue;
            };
            let Ok(v) = serde_json::from_slice::<serde_json::Value>(&body) else {
                continue;
            };
            if v["mountpoint"].as_str().map(Path::new) == Some(want.as_path()) {
                return v["pid"].as_i64().map(|p| p as i32);
            }
        }
        None
    }

    /// `strata umount MNT`.
    pub fn umount(&self, mnt: &Path) -> anyhow::Result<()> {
        self.cmd(&[OsStr::new("umount"), mnt.as_os_str()])?;
        Ok(())
    }
}

/// A writable strata mount; on drop it is unmounted (kernel-side, which is fast: the daemon
/// then exits by itself; see [`StrataMount::finish`]) and the daemon is waited for, bounded.
pub struct StrataMount {
    pub mnt: PathBuf,
    pub layer: PathBuf,
    pub pid: i32,
    pub strata: Strata,
}

impl StrataMount {
    pub fn mount(strata: &Strata, mnt: &Path, layer: &Path) -> anyhow::Result<Self> {
        std::fs::create_dir_all(mnt)?;
        let pid = strata.mount_rw(mnt, layer)?;
        Ok(StrataMount {
            mnt: mnt.to_path_buf(),
            layer: layer.to_path_buf(),
            pid,
            strata: strata.clone(),
        })
    }

    /// Detaches the mount without waiting for the daemon; returns its pid so the caller can
    /// wait for it later (the daemon takes a while to exit after its mount goes away, and the
    /// tester does not need to wait for that before starting the next run elsewhere).
    pub fn detach(self) -> i32 {
        unmount(&self.mnt);
        let pid = self.pid;
        std::mem::forget(self);
        pid
    }

    /// Waits for a detached daemon to exit (bounded), SIGTERM then SIGKILL if it does not.
    pub fn finish(pid: i32) {
        if !wait_exit(pid, Duration::from_secs(10)) {
            let _ = strata::sys::terminate(pid);
            if !wait_exit(pid, Duration::from_secs(5)) {
                kill9(pid);
                wait_exit(pid, Duration::from_secs(5));
            }
        }
    }
}

impl Drop for StrataMount {
    fn drop(&mut self) {
        if self.strata.umount(&self.mnt).is_err() {
            unmount(&self.mnt);
        }
        StrataMount::finish(self.pid);
    }
}

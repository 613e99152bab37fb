//! `strata snapshotter`: serves containerd's snapshots API (a proxy plugin) for the state
//! root, in the foreground, until SIGTERM/SIGINT/SIGHUP.

use std::path::{Path, PathBuf};

use clap::Args;

use crate::digest::Digest;
use crate::snapshotter::{ServeOptions, serve};

#[derive(Args, Debug, Clone)]
pub struct SnapshotterArgs {
    /// The unix socket containerd connects to (created 0600; name it in containerd's
    /// config as `[proxy_plugins.strata] type = "snapshot" address = "SOCK"`).
    #[arg(
        long,
        value_name = "SOCK",
        default_value = "/run/strata/snapshotter.sock"
    )]
    pub address: PathBuf,
    /// Where the snapshots' FUSE mount points go; must be outside the state root
    /// [default: /run/strata/snapshots-<hash of the state root>].
    #[arg(long, value_name = "DIR")]
    pub mounts: Option<PathBuf>,
}

/// The default mounts directory of a state root: one per root, on /run (a tmpfs: mount
/// points do not outlive a reboot; snapshots are mounted again when containerd asks).
fn default_mounts(root: &Path) -> PathBuf {
    let canon = std::fs::canonicalize(root).unwrap_or_else(|_| root.to_path_buf());
    let key = Digest::of(canon.as_os_str().as_encoded_bytes());
    PathBuf::from(format!("/run/strata/snapshots-{}", &key.hex()[..12]))
}

pub fn run(root: &Path, args: SnapshotterArgs) -> anyhow::Result<i32> {
    if crate::paths::Mode::current() == crate::paths::Mode::Rootless {
        anyhow::bail!(
            "`strata snapshotter` needs root for now: it serves root's containerd (a rootless containerd is not supported yet)"
        );
    }
    let opts = ServeOptions {
        root: root.to_path_buf(),
        mounts: args.mounts.unwrap_or_else(|| default_mounts(root)),
        address: std::path::absolute(&args.address)?,
    };
    let banner = format!(
        "strata snapshotter: serving {} (state root {}, mounts under {})",
        opts.address.display(),
        opts.root.display(),
        opts.mounts.display()
    );
    serve(&opts, || eprintln!("{banner}"))?;
    Ok(0)
}

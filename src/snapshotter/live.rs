//! The FUSE mounts of the snapshotter: one session per mounted snapshot, served by threads of
//! this process. A writable mount for an active snapshot (its writable layer over the parent
//! chain), a read-only one for a view. Unmounting waits, bounded, for the session to end
//! (the writable layer is flushed when it does).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc;
use std::time::Duration;

use tracing::{info, info_span, warn};

use super::SnapshotError;
use crate::digest::Digest;
use crate::fs;
use crate::fs::view::View;
use crate::image::ImageStore;

/// FUSE worker threads per mounted snapshot.
const THREADS: usize = 2;
/// How long an unmount waits for its session to end.
const SESSION_END_WAIT: Duration = Duration::from_secs(5);
/// The FUSE `fsname` of snapshot mounts.
pub const FSNAME: &str = "strata-snapshot";

/// A mounted snapshot.
pub struct Live {
    pub mountpoint: PathBuf,
    unmounter: fuser::SessionUnmounter,
    done: mpsc::Receiver<std::io::Result<()>>,
    /// The writable view of an active snapshot (its change set is what `Commit` imports).
    pub view: Option<Arc<View>>,
}

/// Makes `mountpoint` an empty directory to mount on: a mount left there by a snapshotter
/// that was killed is detached first.
fn prepare_mountpoint(mountpoint: &Path, state_root: &Path) -> Result<PathBuf, SnapshotError> {
    if crate::sys::mount_at(mountpoint).is_some() {
        warn!(mountpoint = %mountpoint.display(), "detaching a stale mount");
        fs::access::unmount(mountpoint)
            .map_err(|e| SnapshotError::Internal(format!("stale mount: {e}")))?;
    }
    std::fs::create_dir_all(mountpoint).map_err(SnapshotError::io(mountpoint))?;
    Ok(fs::check_mountpoint(mountpoint, state_root)?)
}

fn serve<F: fuser::Filesystem + Send + 'static>(
    filesystem: F,
    mountpoint: PathBuf,
    config: &fuser::Config,
    view: Option<Arc<View>>,
) -> Result<Live, SnapshotError> {
    let mut session = fs::mount(filesystem, &mountpoint, config)?;
    let unmounter = session.unmount_callable();
    let (tx, done) = mpsc::channel();
    std::thread::Builder::new()
        .name("snapshot-fuse".into())
        .spawn(move || {
            let _ = tx.send(session.run());
        })
        .map_err(SnapshotError::io(&mountpoint))?;
    Ok(Live {
        mountpoint,
        unmounter,
        done,
        view,
    })
}

/// Mounts the writable layer in `rw_dir` over `layers` on `mountpoint`.
pub fn mount_active(
    store: &ImageStore,
    trees: &fs::TreeCache,
    layers: &[Digest],
    rw_dir: &Path,
    mountpoint: &Path,
) -> Result<Live, SnapshotError> {
    let _s = info_span!("mount_active", mountpoint = %mountpoint.display()).entered();
    let mountpoint = prepare_mountpoint(mountpoint, store.root())?;
    let filesystem = trees.read_write(store.layers(), layers, rw_dir)?;
    let view = filesystem.view();
    let config = fs::read_write_config(FSNAME, THREADS);
    let live = serve(filesystem, mountpoint, &config, Some(view))?;
    info!(layers = layers.len(), "mounted");
    Ok(live)
}

/// Mounts `layers` read-only on `mountpoint`.
pub fn mount_view(
    store: &ImageStore,
    trees: &fs::TreeCache,
    layers: &[Digest],
    mountpoint: &Path,
) -> Result<Live, SnapshotError> {
    let _s = info_span!("mount_view", mountpoint = %mountpoint.display()).entered();
    let mountpoint = prepare_mountpoint(mountpoint, store.root())?;
    let mode = if fs::access::FuseAccess::probe().passthrough {
        fs::OpenMode::Passthrough
    } else {
        fs::OpenMode::Cached
    };
    let filesystem = trees.read_only(store.layers(), layers)?.with_mode(mode);
    let config = fs::read_only_config(FSNAME, THREADS);
    let live = serve(filesystem, mountpoint, &config, None)?;
    info!(layers = layers.len(), "mounted");
    Ok(live)
}

impl Live {
    /// Unmounts (lazily when it is busy), waits for the session to end (bounded), and
    /// removes the mount point.
    pub fn unmount(mut self) {
        let _s = info_span!("unmount", mountpoint = %self.mountpoint.display()).entered();
        // The view must not outlive the session: it is dropped (and flushed) with it.
        self.view = None;
        if let Err(e) = self.unmounter.unmount() {
            warn!(error = %e, "unmount failed; detaching lazily");
            if let Err(e) = fs::access::unmount(&self.mountpoint) {
                warn!(error = %e, "lazy unmount failed");
            }
        }
        match self.done.recv_timeout(SESSION_END_WAIT) {
            Ok(Ok(())) => info!("session ended"),
            Ok(Err(e)) => warn!(error = %e, "session ended with an error"),
            Err(_) => warn!("session still open (another mount of it is busy); leaving it"),
        }
        let _ = std::fs::remove_dir(&self.mountpoint);
    }
}

//! The merged view of an image's layers, served over FUSE.
//!
//! Owns the overlay semantics (`tree`), the read-only FUSE adapter (`fuse`), the writable
//! view over one writable layer (`view`) and its FUSE adapter (`rwfuse`, with `caller`: what
//! `/proc` says of the process behind a request), the change set of
//! a writable view (`changes`: Docker's A/C/D, as a layer tar, served to other processes),
//! the rules for where a mount may go, and what this user may do with FUSE (`access`: the
//! device, `fusermount3`, `allow_other`, passthrough). Must never modify a read-only layer,
//! never mount where the mount could serve itself (inside the state root: a FUSE request
//! would then wait on the FUSE daemon), and knows nothing of images' records or of
//! containers.

pub mod access;
mod caller;
pub mod changes;
mod fuse;
mod rwfuse;
pub mod tree;
pub mod view;

use std::io;
use std::path::{Path, PathBuf};

pub use fuse::{FsStats, OpenMode, ReadOnlyFs};
pub use rwfuse::WritableFs;
pub use tree::MergedTree;

use crate::digest::Digest;
use crate::layer::{LayerError, LayerStore};
use crate::rwlayer::{RwError, RwLayer};

/// Why a mount was refused.
#[derive(Debug, thiserror::Error)]
pub enum MountError {
    #[error("mount point {0} does not exist")]
    Missing(PathBuf),
    #[error("mount point {0} is not a directory")]
    NotADirectory(PathBuf),
    #[error("mount point {0} is not empty (its contents would be hidden); use an empty directory")]
    NotEmpty(PathBuf),
    #[error(
        "mount point {mountpoint} is inside the strata state root {root}; that would deadlock, choose a directory outside it"
    )]
    InsideStateRoot { mountpoint: PathBuf, root: PathBuf },
    #[error(transparent)]
    Layer(#[from] LayerError),
    #[error(transparent)]
    RwLayer(#[from] RwError),
    #[error("the writable layer {0} is inside the mount point; put it elsewhere")]
    LayerInsideMount(PathBuf),
    #[error("cannot mount on {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
}

/// Checks that `mountpoint` is an existing, empty directory outside the state root, and
/// returns its canonical path.
pub fn check_mountpoint(mountpoint: &Path, state_root: &Path) -> Result<PathBuf, MountError> {
    let meta = match std::fs::metadata(mountpoint) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(MountError::Missing(mountpoint.to_path_buf()));
        }
        Err(e) => {
            return Err(MountError::Io {
                path: mountpoint.to_path_buf(),
                source: e,
            });
        }
    };
    if !meta.is_dir() {
        return Err(MountError::NotADirectory(mountpoint.to_path_buf()));
    }
    let canon = std::fs::canonicalize(mountpoint).map_err(|e| MountError::Io {
        path: mountpoint.to_path_buf(),
        source: e,
    })?;
    if let Ok(root) = std::fs::canonicalize(state_root)
        && (canon.starts_with(&root) || root.starts_with(&canon))
    {
        return Err(MountError::InsideStateRoot {
            mountpoint: canon,
            root,
        });
    }
    let mut rd = std::fs::read_dir(&canon).map_err(|e| MountError::Io {
        path: canon.clone(),
        source: e,
    })?;
    if rd.next().is_some() {
        return Err(MountError::NotEmpty(canon));
    }
    Ok(canon)
}

fn merged(store: &LayerStore, layers: &[Digest]) -> Result<(MergedTree, Vec<PathBuf>), MountError> {
    let mut indexes = Vec::with_capacity(layers.len());
    let mut dirs = Vec::with_capacity(layers.len());
    for id in layers {
        indexes.push(store.index(id)?);
        dirs.push(store.data_dir(id));
    }
    Ok((MergedTree::build(&indexes), dirs))
}

/// Builds the read-only file system of `layers` (bottom first) from the store.
pub fn read_only(store: &LayerStore, layers: &[Digest]) -> Result<ReadOnlyFs, MountError> {
    let (tree, dirs) = merged(store, layers)?;
    Ok(ReadOnlyFs::new(tree, dirs))
}

/// The name a writable layer records for the lower chain it belongs to.
pub fn chain_id(layers: &[Digest]) -> Digest {
    let joined: Vec<&str> = layers.iter().map(Digest::as_str).collect();
    Digest::of(joined.join("\n").as_bytes())
}

/// Builds the writable file system of `layers` with the writable layer at `layer_dir`
/// (created when missing; refused when it is not a strata layer of this image or is in use).
pub fn read_write(
    store: &LayerStore,
    layers: &[Digest],
    layer_dir: &Path,
) -> Result<WritableFs, MountError> {
    let (tree, dirs) = merged(store, layers)?;
    let layer = RwLayer::open(layer_dir, chain_id(layers).as_str())?;
    let view = view::View::new(tree, dirs, layer)?;
    Ok(WritableFs::new(view))
}

/// Mount options of a writable mount: `nosuid,nodev` (the image is not trusted), `noatime`
/// (no write per read), kernel permission checks from the attributes strata reports.
pub fn read_write_config(fsname: &str, threads: usize) -> fuser::Config {
    use fuser::MountOption as O;
    let mut c = read_only_config(fsname, threads);
    c.mount_options.retain(|o| *o != O::RO);
    c.mount_options.extend([O::RW, O::NoAtime]);
    c
}

/// Mount options of a read-only inspection mount: `nosuid,nodev` because the image is not
/// trusted (its setuid bits and device nodes are shown, never honoured).
pub fn read_only_config(fsname: &str, threads: usize) -> fuser::Config {
    use fuser::MountOption as O;
    let mut c = fuser::Config::default();
    c.mount_options = vec![
        O::FSName(fsname.to_string()),
        O::Subtype("strata".into()),
        O::RO,
        O::NoSuid,
        O::NoDev,
        O::DefaultPermissions,
    ];
    c.acl = fuser::SessionACL::All;
    c.n_threads = Some(threads.max(1));
    c.clone_fd = threads > 1;
    c
}

/// Mounts `fs` on `mountpoint`; the mount is live (INIT answered) when this returns.
pub fn mount<F: fuser::Filesystem>(
    fs: F,
    mountpoint: &Path,
    config: &fuser::Config,
) -> Result<fuser::Session<F>, MountError> {
    fuser::Session::new(fs, mountpoint, config).map_err(|e| MountError::Io {
        path: mountpoint.to_path_buf(),
        source: e,
    })
}

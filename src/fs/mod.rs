//! The merged view of an image's layers, served over FUSE.
//!
//! Owns the overlay semantics (`tree`), the read-only FUSE adapter (`fuse`), the writable
//! view over one writable layer (`view`) and its FUSE adapter (`rwfuse`, with `caller`: what
//! `/proc` says of the process behind a request, and `listing`: directory offsets that stay
//! valid while entries come and go), the change set of
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
mod listing;
mod rwfuse;
mod rwopen;
pub mod tree;
pub mod view;

use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Weak};

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

/// The merged trees of the layer chains that one process serves several mounts of (the
/// snapshotter: every snapshot of one image stands on the same chain), built once per chain
/// and shared: a mount of a chain already mounted loads no index, and a hundred containers of
/// one image hold one tree. Held weakly: a tree goes with the last mount that uses it.
#[derive(Default)]
pub struct TreeCache(std::sync::Mutex<std::collections::HashMap<Digest, Weak<MergedTree>>>);

impl TreeCache {
    /// The merged tree of `layers` and their data directories.
    fn get(
        &self,
        store: &LayerStore,
        layers: &[Digest],
    ) -> Result<(Arc<MergedTree>, Vec<PathBuf>), MountError> {
        let key = chain_id(layers);
        // Held while a tree is built: two mounts of one new chain build it once.
        let mut trees = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(tree) = trees.get(&key).and_then(Weak::upgrade) {
            let dirs = layers.iter().map(|id| store.data_dir(id)).collect();
            return Ok((tree, dirs));
        }
        let (tree, dirs) = merged(store, layers)?;
        let tree = Arc::new(tree);
        trees.retain(|_, t| t.strong_count() > 0);
        trees.insert(key, Arc::downgrade(&tree));
        Ok((tree, dirs))
    }

    /// [`read_only`], with the tree from this cache.
    pub fn read_only(
        &self,
        store: &LayerStore,
        layers: &[Digest],
    ) -> Result<ReadOnlyFs, MountError> {
        let (tree, dirs) = self.get(store, layers)?;
        Ok(ReadOnlyFs::new(tree, dirs))
    }

    /// [`read_write`], with the tree from this cache.
    pub fn read_write(
        &self,
        store: &LayerStore,
        layers: &[Digest],
        layer_dir: &Path,
    ) -> Result<WritableFs, MountError> {
        let (tree, dirs) = self.get(store, layers)?;
        writable(tree, dirs, layers, layer_dir)
    }

    /// How many chains have a live tree.
    pub fn len(&self) -> usize {
        let trees = self.0.lock().unwrap_or_else(|p| p.into_inner());
        trees.values().filter(|t| t.strong_count() > 0).count()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
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
    writable(tree, dirs, layers, layer_dir)
}

/// The writable file system of the merged `tree` of `layers` with the writable layer at
/// `layer_dir`.
fn writable(
    tree: impl Into<Arc<MergedTree>>,
    dirs: Vec<PathBuf>,
    layers: &[Digest],
    layer_dir: &Path,
) -> Result<WritableFs, MountError> {
    let layer = RwLayer::open(layer_dir, chain_id(layers).as_str())?;
    let view = view::View::new(tree, dirs, layer)?;
    Ok(WritableFs::new(view))
}

/// Mount options of a writable mount: those of a read-only one, `rw` and `noatime` (no write
/// per read).
pub fn read_write_config(fsname: &str, threads: usize) -> fuser::Config {
    use fuser::MountOption as O;
    let mut c = read_only_config(fsname, threads);
    c.mount_options.retain(|o| *o != O::RO);
    c.mount_options.extend([O::RW, O::NoAtime]);
    c
}

/// Mount options of a read-only inspection mount: `nosuid,nodev` because the image is not
/// trusted (its setuid bits and device nodes are shown, never honoured), kernel permission
/// checks from the attributes strata reports; requests through FUSE over io_uring when the
/// kernel offers it (one queue per CPU: a request is served on the CPU that made it, without
/// waking another; `/dev/fuse` otherwise).
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
    c.io_uring = true;
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

#[cfg(test)]
mod tree_cache_tests {
    use super::*;

    /// A store holding one layer per given file name (each layer adds that file).
    fn store_with(root: &Path, names: &[&str]) -> (LayerStore, Vec<Digest>) {
        let store = LayerStore::open(root).unwrap();
        let mut ids = Vec::new();
        for name in names {
            let mut b = tar::Builder::new(Vec::new());
            let mut h = tar::Header::new_gnu();
            h.set_size(2);
            h.set_mode(0o644);
            h.set_uid(0);
            h.set_gid(0);
            h.set_mtime(1);
            h.set_cksum();
            b.append_data(&mut h, name, &b"x\n"[..]).unwrap();
            let bytes = b.into_inner().unwrap();
            let staged = store.stage_tar(&bytes[..], None).unwrap();
            let id = staged.diff_id().clone();
            let locks = store.lock(std::slice::from_ref(&id)).unwrap();
            store.commit(staged, &locks).unwrap();
            ids.push(id);
        }
        (store, ids)
    }

    #[test]
    fn one_tree_per_chain_while_it_is_mounted() {
        let tmp = tempfile::tempdir().unwrap();
        let (store, ids) = store_with(tmp.path(), &["a", "b"]);
        let cache = TreeCache::default();
        let (t1, dirs) = cache.get(&store, &ids).unwrap();
        let (t2, _) = cache.get(&store, &ids).unwrap();
        assert!(Arc::ptr_eq(&t1, &t2), "the same chain shares one tree");
        assert_eq!(dirs.len(), 2);
        assert!(t1.resolve(b"a").is_some() && t1.resolve(b"b").is_some());
        let (t3, _) = cache.get(&store, &ids[..1]).unwrap();
        assert!(!Arc::ptr_eq(&t1, &t3), "another chain has its own");
        assert_eq!(cache.len(), 2);
        // Views and writable file systems hold the tree; it goes with the last of them.
        let rw = cache
            .read_write(&store, &ids, &tmp.path().join("rw"))
            .unwrap();
        drop((t1, t2, t3));
        assert_eq!(cache.len(), 1);
        drop(rw);
        assert!(cache.is_empty());
    }
}

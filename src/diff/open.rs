//! Reaching a container's writable view: from its shim while it runs, else by opening the
//! writable layer ourselves (under the container's lifecycle lock, so no `start` races us).

use std::fs::File;
use std::sync::Arc;

use tracing::info_span;

use super::{Change, DiffError};
use crate::fs::MergedTree;
use crate::fs::changes::{self, serve};
use crate::fs::view::View;
use crate::image::ImageStore;
use crate::runtime::store::RW_DIR;
use crate::runtime::{Container, Runtime, Status};
use crate::rwlayer::RwLayer;

/// A stopped container's view; the lifecycle lock is held while this lives.
pub struct OfflineView {
    pub container: Container,
    pub view: Arc<View>,
    _lock: File,
    /// A copy of the layer's database, when the disk was full (see `open_reading`).
    _scratch: Option<tempfile::TempDir>,
}

impl OfflineView {
    /// The container's changes, without the mount targets the runtime created.
    pub fn changes(&self) -> Vec<Change> {
        user_changes(&self.container, self.view.changes())
    }
}

/// The mount targets of a container's spec, as relative paths.
fn mount_targets(c: &Container) -> Vec<Vec<u8>> {
    c.spec
        .mounts
        .iter()
        .map(|m| m.destination.trim_matches('/').as_bytes().to_vec())
        .filter(|t| !t.is_empty())
        .collect()
}

/// Writes a container's changes (`all`: its whole file system) as a tar to `out`, from its
/// shim while it runs (files are read one after the other while it keeps running, as
/// `docker commit --pause=false`), else from its writable layer. Returns the container.
pub fn container_tar(
    rt: &Runtime,
    reference: &str,
    all: bool,
    out: &mut impl std::io::Write,
) -> Result<Container, DiffError> {
    let _s = info_span!("container_tar", container = reference, all).entered();
    for _ in 0..3 {
        let c = rt.get(reference)?;
        if c.state.status == Status::Running {
            if serve::ask_tar(&c.dir, all, mount_targets(&c), out)? {
                return Ok(c);
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
            continue;
        }
        match offline(rt, reference) {
            Ok(v) => {
                let changes = if all {
                    v.view.everything()
                } else {
                    v.changes()
                };
                changes::tar::write(&v.view, &changes, &mut *out)?;
                return Ok(v.container);
            }
            Err(DiffError::Running(_)) => continue,
            Err(e) => return Err(e),
        }
    }
    Err(DiffError::Shim(format!(
        "container {reference} kept changing state; try again"
    )))
}

/// `changes` without what the runtime put there (see [`changes::without_mount_targets`]).
pub fn user_changes(c: &Container, changes: Vec<Change>) -> Vec<Change> {
    changes::without_mount_targets(changes, &mount_targets(c))
}

/// Opens the writable view of a container that is not running.
pub fn offline(rt: &Runtime, reference: &str) -> Result<OfflineView, DiffError> {
    let id = rt.containers().resolve(reference)?;
    let lock = rt.containers().lock(&id)?;
    let c = rt.get(&id)?;
    if c.state.status == Status::Running {
        return Err(DiffError::Running(c.meta.name.clone()));
    }
    let _s = info_span!("open_layer", id = c.short_id()).entered();
    let store = ImageStore::open(rt.root())?;
    // Opening the database (sled starts its threads, reads its log) and building the merged
    // tree of the image are independent: do both at once.
    let rw_dir = c.dir.join(RW_DIR);
    let chain = crate::fs::chain_id(&c.meta.layers);
    let opener = std::thread::spawn(move || open_reading(&rw_dir, chain.as_str()));
    let mut indexes = Vec::with_capacity(c.meta.layers.len());
    let mut dirs = Vec::with_capacity(c.meta.layers.len());
    for id in &c.meta.layers {
        indexes.push(store.layers().index(id)?);
        dirs.push(store.layers().data_dir(id));
    }
    let tree = MergedTree::build(&indexes);
    // Freeing 100k index entries is not on the way to the answer.
    std::thread::spawn(move || drop(indexes));
    let layer = opener
        .join()
        .map_err(|_| DiffError::Shim("opening the writable layer panicked".into()))?
        .map_err(crate::fs::MountError::from)?;
    let (layer, scratch) = layer;
    let view = View::new(tree, dirs, layer).map_err(crate::fs::MountError::from)?;
    Ok(OfflineView {
        view: Arc::new(view),
        container: c,
        _lock: lock,
        _scratch: scratch,
    })
}

/// Opens a stopped container's writable layer to read it. sled writes while it opens a
/// database, so on a full disk the database is copied to memory (a tmpfs) and opened there,
/// with `data/` linked to the original: reading changes nothing on the full disk. The
/// caller holds the container's lock, so nothing else opens the layer meanwhile.
fn open_reading(
    rw_dir: &std::path::Path,
    chain: &str,
) -> Result<(RwLayer, Option<tempfile::TempDir>), crate::rwlayer::RwError> {
    // The container is not running, but its shim may still be exiting (it lets go of the
    // layer when its process ends): wait for it, bounded.
    let end = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let err = loop {
        match RwLayer::open(rw_dir, chain) {
            Ok(l) => return Ok((l, None)),
            Err(crate::rwlayer::RwError::InUse { .. }) if std::time::Instant::now() < end => {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            Err(e) => break e,
        }
    };
    let full = rustix::fs::statvfs(rw_dir)
        .map(|v| v.f_bavail.saturating_mul(v.f_frsize) < 1 << 20)
        .unwrap_or(false);
    if !full {
        return Err(err);
    }
    let io = |p: &std::path::Path| {
        let p = p.to_path_buf();
        move |source| crate::rwlayer::RwError::Io { path: p, source }
    };
    let shm = std::path::Path::new("/dev/shm");
    let scratch = if shm.is_dir() {
        tempfile::tempdir_in(shm)
    } else {
        tempfile::tempdir()
    }
    .map_err(io(shm))?;
    for e in std::fs::read_dir(rw_dir).map_err(io(rw_dir))? {
        let e = e.map_err(io(rw_dir))?;
        let to = scratch.path().join(e.file_name());
        if e.file_name() == "data" {
            std::os::unix::fs::symlink(e.path(), &to).map_err(io(&to))?;
        } else {
            copy_tree(&e.path(), &to).map_err(io(&to))?;
        }
    }
    tracing::info!("the disk is full: reading a copy of the writable layer's database");
    let layer = RwLayer::open(scratch.path(), chain)?;
    Ok((layer, Some(scratch)))
}

fn copy_tree(from: &std::path::Path, to: &std::path::Path) -> std::io::Result<()> {
    if std::fs::symlink_metadata(from)?.is_dir() {
        std::fs::create_dir_all(to)?;
        for e in std::fs::read_dir(from)? {
            let e = e?;
            copy_tree(&e.path(), &to.join(e.file_name()))?;
        }
        Ok(())
    } else {
        std::fs::copy(from, to).map(drop)
    }
}

/// `docker diff`: the changes of a container, running or not.
pub fn container_changes(rt: &Runtime, reference: &str) -> Result<Vec<Change>, DiffError> {
    Ok(container_changes_keep(rt, reference)?.0)
}

/// [`container_changes`], also handing back the opened layer of a stopped container (the
/// CLI exits without tearing down its merged tree and database, which costs more than the
/// diff itself on a big image).
pub fn container_changes_keep(
    rt: &Runtime,
    reference: &str,
) -> Result<(Vec<Change>, Option<OfflineView>), DiffError> {
    let _s = info_span!("diff", container = reference).entered();
    for _ in 0..3 {
        let c = rt.get(reference)?;
        if c.state.status == Status::Running {
            if let Some(changes) = serve::ask(&c.dir)? {
                return Ok((user_changes(&c, changes), None));
            }
            // Stopped meanwhile (or just starting): look again.
            std::thread::sleep(std::time::Duration::from_millis(20));
            continue;
        }
        match offline(rt, reference) {
            // A layer read from a copy in memory is torn down here, so the copy goes too.
            Ok(v) if v._scratch.is_some() => return Ok((v.changes(), None)),
            Ok(v) => return Ok((v.changes(), Some(v))),
            // Started meanwhile: ask its shim.
            Err(DiffError::Running(_)) => continue,
            Err(e) => return Err(e),
        }
    }
    Err(DiffError::Shim(format!(
        "container {reference} kept changing state; try again"
    )))
}

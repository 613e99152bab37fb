//! The snapshotter's core: containerd's snapshot operations on records, writable layers, the
//! layer store and FUSE mounts, synchronously. One lock over the records and the live mounts
//! serialises the operations (containerd's unpack is sequential per layer anyway).

use std::collections::HashMap;
use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::SystemTime;

use tracing::{info, info_span, warn};

use super::SnapshotError;
use super::filter::Filters;
use super::live::{self, Live};
use super::record::{self, INFO_FILE, Kind, Record};
use crate::digest::Digest;
use crate::fs;
use crate::fs::changes::tar::TarStats;
use crate::fs::changes::{Change, ChangesError};
use crate::fs::view::View;
use crate::image::{ImageStore, User};
use crate::layer::{LayerStore, StagedLayer};

/// The writable layer's directory inside an active snapshot's directory.
const RW_DIR: &str = "rw";
/// An extraction snapshot's directories: the upper directory containerd's applier writes
/// into, overlayfs's work directory, and the empty lower directory of one with no parent.
const UPPER_DIR: &str = "upper";
const WORK_DIR: &str = "work";
const LOWER_DIR: &str = "lower";
/// The label with which containerd's unpacker names the committed snapshot it is making.
pub const SNAPSHOT_REF: &str = "containerd.io/snapshot.ref";
/// How the keys of containerd's unpacker begin (`snapshots.UnpackKeyPrefix`, 1.6 to 2.x:
/// `extract-<unique> <chain ID>`), after the `namespace/id/` of its metadata layer.
pub const UNPACK_KEY_PREFIX: &str = "extract-";

/// A bind of the FUSE mount point.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BindMount {
    pub source: PathBuf,
    pub read_only: bool,
}

/// What containerd mounts for a snapshot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SnapshotMount {
    /// Active snapshots and views: a bind of their FUSE mount.
    Bind(BindMount),
    /// An extraction snapshot: kernel overlayfs over `lower` (the parent chain's read-only
    /// FUSE mount, or an empty directory), with `upper` a plain directory. containerd's
    /// applier does not mount it: it writes the layer tar straight into `upper` (whiteouts
    /// as overlayfs writes them), with `lower` as the parents whose directory attributes it
    /// copies; mounted, it is what the applier's tar made of the parent.
    Overlay {
        lower: PathBuf,
        upper: PathBuf,
        work: PathBuf,
    },
}

impl SnapshotMount {
    /// The bind mount, if this is one.
    pub fn bind(&self) -> Option<&BindMount> {
        match self {
            SnapshotMount::Bind(b) => Some(b),
            SnapshotMount::Overlay { .. } => None,
        }
    }
}

/// Whether `key` is a key of containerd's unpacker (`ns/7/extract-… sha256:…`).
pub fn is_extraction_key(key: &str) -> bool {
    let name = key.splitn(3, '/').nth(2).unwrap_or(key);
    name.starts_with(UNPACK_KEY_PREFIX) || key.starts_with(UNPACK_KEY_PREFIX)
}

/// Resources a snapshot uses itself (not its parents').
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    pub size: i64,
    pub inodes: i64,
}

struct State {
    records: HashMap<String, Record>,
    live: HashMap<String, Live>,
}

/// The snapshotter of one state root.
pub struct Snapshotter {
    store: ImageStore,
    snapshots: PathBuf,
    trash: PathBuf,
    mounts: PathBuf,
    /// Extraction snapshots get overlay mounts: the snapshotter is root in the initial user
    /// namespace (containerd's applier makes whiteouts as 0/0 devices and sets trusted.*
    /// xattrs, and a containerd in a user namespace would mount the overlay instead).
    overlay: bool,
    /// The merged trees of the chains mounted now, one per chain whatever the number of
    /// snapshots on it.
    trees: fs::TreeCache,
    state: Mutex<State>,
    /// Held for the process's life: one snapshotter per state root.
    _lock: File,
}

fn now() -> SystemTime {
    SystemTime::now()
}

fn not_found(key: &str) -> SnapshotError {
    SnapshotError::NotFound(key.to_string())
}

/// Creates the directory `dir` with `mode` (whatever the umask).
fn make_dir(dir: &Path, mode: u32) -> Result<(), SnapshotError> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    std::fs::DirBuilder::new()
        .mode(mode)
        .create(dir)
        .and_then(|_| std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode)))
        .map_err(SnapshotError::io(dir))
}

/// Bytes allocated to, and the number of, the files under `dir`.
fn disk_usage(dir: &Path) -> (i64, i64) {
    use std::os::unix::fs::MetadataExt;
    let (mut size, mut files) = (0i64, 0i64);
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let Ok(m) = e.path().symlink_metadata() else {
                continue;
            };
            files += 1;
            size += (m.blocks() * 512) as i64;
            if m.is_dir() {
                stack.push(e.path());
            }
        }
    }
    (size, files)
}

/// Bytes a pipe between the change set's tar writer and the layer store's extractor holds (a
/// layer of big files then costs few context switches; the kernel may allow less).
const PIPE_BYTES: usize = 1 << 20;

/// Streams the change set of `view` as a tar straight into the layer store's staging area:
/// the tar is written on a second thread into a pipe that the extractor reads (hashing it
/// for the diff_id as it goes), so the layer is written to disk once, with no temporary tar.
fn stage_changes(
    layers: &LayerStore,
    view: &View,
    changes: &[Change],
) -> Result<(StagedLayer, TarStats), SnapshotError> {
    let (rx, tx) = std::io::pipe().map_err(SnapshotError::io("pipe"))?;
    // Only a larger buffer: the default one works too.
    let _ = rustix::pipe::fcntl_setpipe_size(&tx, PIPE_BYTES);
    let parent = tracing::Span::current();
    let (written, staged) = std::thread::scope(|s| {
        let writer = s.spawn(move || {
            let _s = parent.entered();
            // Dropping the pipe's end (also on error) ends the reader's stream.
            fs::changes::tar::write(view, changes, BufWriter::with_capacity(256 * 1024, tx))
                .and_then(|(w, stats)| {
                    w.into_inner()
                        .map_err(|e| ChangesError::io("tar", e.into_error()))?;
                    Ok(stats)
                })
        });
        let staged = layers.stage_tar(std::io::BufReader::with_capacity(256 * 1024, rx), None);
        let written = writer.join().unwrap_or_else(|_| {
            Err(ChangesError::io(
                "tar",
                std::io::Error::other("tar writer panicked"),
            ))
        });
        (written, staged)
    });
    match (written, staged) {
        (Ok(stats), Ok(staged)) => Ok((staged, stats)),
        // The extractor stopped reading first (it refused the stream): its error is the cause.
        (Err(ChangesError::Io { source, .. }), Err(e))
            if source.kind() == std::io::ErrorKind::BrokenPipe =>
        {
            Err(e.into())
        }
        // A writer that failed may have left a stream that ends cleanly between entries: its
        // error wins, whatever the extractor made of the stream.
        (Err(e), _) => Err(e.into()),
        (Ok(_), Err(e)) => Err(e.into()),
    }
}

impl Snapshotter {
    /// Opens the snapshotter of the state root `root`, with its mount points under `mounts`
    /// (outside the state root). Refused while another snapshotter serves this root. Mounts
    /// that a killed snapshotter left behind are detached; snapshots are mounted again when
    /// containerd asks for their mounts.
    pub fn open(root: &Path, mounts: &Path) -> Result<Self, SnapshotError> {
        let _s = info_span!("snapshotter_open", root = %root.display()).entered();
        let store = ImageStore::open(root)?;
        let dir = root.join("snapshotter");
        let snapshots = dir.join("snapshots");
        let trash = dir.join("trash");
        for d in [&snapshots, &trash, &mounts.to_path_buf()] {
            std::fs::create_dir_all(d).map_err(SnapshotError::io(d))?;
        }
        let lock_path = dir.join("lock");
        let lock = crate::sys::try_lock_file(&lock_path)
            .map_err(SnapshotError::io(&lock_path))?
            .ok_or_else(|| {
                SnapshotError::FailedPrecondition(format!(
                    "another strata snapshotter serves the state root {}",
                    root.display()
                ))
            })?;
        let canon = |p: &Path| std::fs::canonicalize(p).map_err(SnapshotError::io(p));
        let (root_c, mounts_c) = (canon(root)?, canon(mounts)?);
        // Absolute: the directories of extraction snapshots are named to containerd.
        let snapshots = root_c.join("snapshotter").join("snapshots");
        if mounts_c.starts_with(&root_c) || root_c.starts_with(&mounts_c) {
            return Err(SnapshotError::InvalidArgument(format!(
                "the mounts directory {} must be outside the state root {} (a mount inside it could serve itself)",
                mounts_c.display(),
                root_c.display()
            )));
        }
        let records = record::load_all(&snapshots)?
            .into_iter()
            .map(|(_, r)| (r.key.clone(), r))
            .collect::<HashMap<_, _>>();
        // The overlay options name the directories: no `,` or `:` in their paths.
        let overlay = rustix::process::geteuid().is_root()
            && crate::paths::in_initial_user_namespace()
            && [&snapshots, &mounts_c]
                .iter()
                .all(|p| !p.to_string_lossy().contains([',', ':']));
        let s = Snapshotter {
            store,
            snapshots,
            trash,
            mounts: mounts_c,
            overlay,
            state: Mutex::new(State {
                records,
                live: HashMap::new(),
            }),
            trees: fs::TreeCache::default(),
            _lock: lock,
        };
        s.clean_mounts(&s.lock());
        s.empty_trash();
        info!(snapshots = s.lock().records.len(), "snapshotter opened");
        Ok(s)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn dir_of(&self, key: &str) -> PathBuf {
        self.snapshots.join(Record::dir_name(key))
    }

    fn mountpoint_of(&self, key: &str) -> PathBuf {
        self.mounts.join(Record::dir_name(key))
    }

    fn user_of(&self, key: &str) -> User {
        User::Snapshot {
            key: key.to_string(),
            dir: self.dir_of(key),
        }
    }

    fn snapshot_mount(&self, r: &Record) -> SnapshotMount {
        if r.upper {
            let dir = self.dir_of(&r.key);
            let lower = if r.layers.is_empty() {
                dir.join(LOWER_DIR)
            } else {
                self.mountpoint_of(&r.key)
            };
            return SnapshotMount::Overlay {
                lower,
                upper: dir.join(UPPER_DIR),
                work: dir.join(WORK_DIR),
            };
        }
        SnapshotMount::Bind(BindMount {
            source: self.mountpoint_of(&r.key),
            read_only: r.kind == Kind::View,
        })
    }

    /// Deletes a snapshot's directory (renamed into the trash, so a crash never leaves half a
    /// snapshot under a valid name; the trash is emptied in the background) and forgets it as
    /// a layer user.
    fn delete_dir(&self, key: &str) -> Result<(), SnapshotError> {
        let dir = self.dir_of(key);
        if dir.exists() {
            let nanos = now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap_or_default()
                .as_nanos();
            let to = self
                .trash
                .join(format!("{}-{nanos}", Record::dir_name(key)));
            std::fs::rename(&dir, &to).map_err(SnapshotError::io(&dir))?;
            record::sync_dir(&self.snapshots)?;
            // Emptying the trash is off the caller's clock (a writable layer is a sled
            // database and backing files); what a crash leaves there goes at the next start.
            let spawned = std::thread::Builder::new()
                .name("snapshot-trash".into())
                .spawn(move || {
                    if let Err(e) = std::fs::remove_dir_all(&to) {
                        warn!(error = %e, dir = %to.display(), "emptying the trash");
                    }
                });
            if let Err(e) = spawned {
                warn!(error = %e, "no thread to empty the trash: it is emptied at the next start");
            }
        }
        self.store.release(&self.user_of(key))?;
        Ok(())
    }

    fn empty_trash(&self) {
        if let Ok(rd) = std::fs::read_dir(&self.trash) {
            for e in rd.flatten() {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }

    /// Detaches mounts under the mounts directory that no session of this process serves
    /// (a killed snapshotter's), and removes their empty mount points.
    fn clean_mounts(&self, st: &State) {
        let Ok(rd) = std::fs::read_dir(&self.mounts) else {
            return;
        };
        let live: Vec<&PathBuf> = st.live.values().map(|l| &l.mountpoint).collect();
        for e in rd.flatten() {
            let p = e.path();
            if live.contains(&&p) {
                continue;
            }
            if crate::sys::mount_at(&p).is_some() {
                warn!(mountpoint = %p.display(), "detaching a stale snapshot mount");
                if let Err(e) = fs::access::unmount(&p) {
                    warn!(error = %e, "could not detach it");
                    continue;
                }
            }
            let _ = std::fs::remove_dir(&p);
        }
    }

    /// Mounts what a snapshot needs mounted: its FUSE mount, the parent chain's read-only
    /// view for an extraction snapshot; nothing for an extraction snapshot with no parent.
    fn mount(&self, r: &Record) -> Result<Option<Live>, SnapshotError> {
        let mp = self.mountpoint_of(&r.key);
        match r.kind {
            Kind::Active if r.upper => {
                if r.layers.is_empty() {
                    Ok(None)
                } else {
                    live::mount_view(&self.store, &self.trees, &r.layers, &mp).map(Some)
                }
            }
            Kind::Active => live::mount_active(
                &self.store,
                &self.trees,
                &r.layers,
                &self.dir_of(&r.key).join(RW_DIR),
                &mp,
            )
            .map(Some),
            Kind::View => live::mount_view(&self.store, &self.trees, &r.layers, &mp).map(Some),
            Kind::Committed => Err(SnapshotError::FailedPrecondition(format!(
                "snapshot {} is committed: it has no mounts",
                r.key
            ))),
        }
    }

    /// `Prepare` (`Kind::Active`) and `View` (`Kind::View`): a new snapshot on `parent` (a
    /// committed snapshot, or "" for none), mounted; what containerd mounts. An active
    /// snapshot of containerd's unpacker (see [`is_extraction_key`]) is an extraction
    /// snapshot: an overlay mount with a plain upper directory (see [`SnapshotMount`]).
    pub fn create(
        &self,
        kind: Kind,
        key: &str,
        parent: &str,
        labels: HashMap<String, String>,
    ) -> Result<SnapshotMount, SnapshotError> {
        let _s = info_span!("create", kind = kind.name(), key, parent).entered();
        if key.is_empty() {
            return Err(SnapshotError::InvalidArgument(
                "a snapshot key is needed".into(),
            ));
        }
        if kind == Kind::Committed {
            return Err(SnapshotError::InvalidArgument(
                "snapshots are committed with Commit".into(),
            ));
        }
        let mut st = self.lock();
        if st.records.contains_key(key) {
            return Err(SnapshotError::AlreadyExists(key.to_string()));
        }
        let layers = if parent.is_empty() {
            Vec::new()
        } else {
            let p = st.records.get(parent).ok_or_else(|| not_found(parent))?;
            if p.kind != Kind::Committed {
                return Err(SnapshotError::InvalidArgument(format!(
                    "parent {parent} is not a committed snapshot (it is {})",
                    p.kind.name()
                )));
            }
            p.layers.clone()
        };
        // containerd's remote-snapshot protocol: an unpack names the committed snapshot it
        // will make (the chain ID, in `containerd.io/snapshot.ref`); when that layer is here
        // already on the same parent (unpacked in another namespace), say so instead of
        // unpacking it again: containerd then finds it by that label and uses it as it is.
        if let Some(target) = labels.get(SNAPSHOT_REF)
            && let Some(found) = st.records.values().find(|r| {
                r.kind == Kind::Committed
                    && r.parent == parent
                    && r.labels.get(SNAPSHOT_REF) == Some(target)
            })
        {
            info!(
                target,
                existing = found.key,
                "layer present: not unpacking it again"
            );
            return Err(SnapshotError::AlreadyExists(target.clone()));
        }
        // The same protocol for a layer strata holds already (`strata load` of the same
        // image): the committed snapshot stands on the stored layer, nothing is unpacked.
        if let Some(target) = labels.get(SNAPSHOT_REF)
            && kind == Kind::Active
            && let Some(layer) = self.stored_layer_for(&st, target, parent)?
        {
            let committed = self.commit_stored(parent, layers, layer, labels.clone())?;
            info!(
                target,
                snapshot = committed.key,
                "layer held by strata already: not unpacking it"
            );
            let target = target.clone();
            st.records.insert(committed.key.clone(), committed);
            return Err(SnapshotError::AlreadyExists(target));
        }
        let dir = self.dir_of(key);
        if dir.exists() {
            // A creation that did not finish (no record): start over.
            self.delete_dir(key)?;
        }
        make_dir(&dir, 0o700)?;
        let t = now();
        let rec = Record {
            key: key.to_string(),
            parent: parent.to_string(),
            kind,
            labels,
            created: t,
            updated: t,
            upper: kind == Kind::Active && self.overlay && is_extraction_key(key),
            layers,
        };
        let made = self
            .store
            .hold_layers(self.user_of(key), rec.layers.clone())
            .map_err(SnapshotError::from)
            .and_then(|_| self.make_upper(&rec))
            .and_then(|_| rec.write(&dir))
            .and_then(|_| self.mount(&rec));
        let live = match made {
            Ok(l) => l,
            Err(e) => {
                if let Err(e2) = self.delete_dir(key) {
                    warn!(error = %e2, "could not remove the half-made snapshot");
                }
                return Err(e);
            }
        };
        if let Some(live) = live {
            st.live.insert(key.to_string(), live);
        }
        let mount = self.snapshot_mount(&rec);
        st.records.insert(key.to_string(), rec);
        info!(extraction = mount.bind().is_none(), "snapshot created");
        Ok(mount)
    }

    /// The stored layer whose chain ID on `parent` is `target` (containerd names the snapshot
    /// an unpack makes by its chain ID: the layer's diff ID on no parent, else the digest of
    /// "PARENT-CHAIN DIFF-ID"). The parent's chain ID is its `SNAPSHOT_REF` label, or the
    /// `sha256:…` its key ends with. `None` when strata does not hold such a layer.
    fn stored_layer_for(
        &self,
        st: &State,
        target: &str,
        parent: &str,
    ) -> Result<Option<Digest>, SnapshotError> {
        let parent_chain = if parent.is_empty() {
            None
        } else {
            let Some(p) = st.records.get(parent) else {
                return Ok(None);
            };
            let from_key = parent
                .rsplit('/')
                .next()
                .filter(|k| k.starts_with("sha256:"));
            match p.labels.get(SNAPSHOT_REF).map(String::as_str).or(from_key) {
                Some(c) => Some(c.to_string()),
                None => return Ok(None),
            }
        };
        let layers = self.store.layers().list()?;
        Ok(layers.into_iter().find(|d| match &parent_chain {
            None => d.as_str() == target,
            Some(p) => Digest::of(format!("{p} {}", d.as_str()).as_bytes()).as_str() == target,
        }))
    }

    /// Records the committed snapshot that an unpack on `parent` would have made, standing on
    /// the stored `layer`: labelled as containerd asked, so that containerd finds it by its
    /// chain ID; its key says where it comes from.
    fn commit_stored(
        &self,
        parent: &str,
        mut layers: Vec<Digest>,
        layer: Digest,
        labels: HashMap<String, String>,
    ) -> Result<Record, SnapshotError> {
        let target = labels.get(SNAPSHOT_REF).cloned().unwrap_or_default();
        let key = format!("strata-layer/{} on {parent}", target);
        let dir = self.dir_of(&key);
        if dir.exists() {
            self.delete_dir(&key)?;
        }
        make_dir(&dir, 0o700)?;
        layers.push(layer);
        let t = now();
        let rec = Record {
            key,
            parent: parent.to_string(),
            kind: Kind::Committed,
            labels,
            created: t,
            updated: t,
            upper: false,
            layers,
        };
        let made = self
            .store
            .hold_layers(self.user_of(&rec.key), rec.layers.clone())
            .map_err(SnapshotError::from)
            .and_then(|_| rec.write(&dir));
        if let Err(e) = made {
            if let Err(e2) = self.delete_dir(&rec.key) {
                warn!(error = %e2, "could not remove the half-made snapshot");
            }
            return Err(e);
        }
        Ok(rec)
    }

    /// An extraction snapshot's directories (before its record: a crash leaves a directory
    /// without a record, which `Cleanup` removes).
    fn make_upper(&self, r: &Record) -> Result<(), SnapshotError> {
        if !r.upper {
            return Ok(());
        }
        let dir = self.dir_of(&r.key);
        // The upper directory is the root of the mounted overlay: 0755, as the root of a
        // writable layer.
        make_dir(&dir.join(UPPER_DIR), 0o755)?;
        make_dir(&dir.join(WORK_DIR), 0o700)?;
        if r.layers.is_empty() {
            make_dir(&dir.join(LOWER_DIR), 0o755)?;
        }
        Ok(())
    }

    /// `Mounts`: what containerd mounts for an active snapshot or view, mounting it again
    /// when this process has not (after a restart).
    pub fn mounts(&self, key: &str) -> Result<SnapshotMount, SnapshotError> {
        let mut st = self.lock();
        let rec = st.records.get(key).ok_or_else(|| not_found(key))?.clone();
        if !st.live.contains_key(key) {
            let _s = info_span!("remount", key).entered();
            if let Some(live) = self.mount(&rec)? {
                st.live.insert(key.to_string(), live);
            }
        }
        Ok(self.snapshot_mount(&rec))
    }

    /// `Commit`: the active snapshot `key`'s changes become a layer, and the committed
    /// snapshot `name` (same parent) stands on it; `key` is gone afterwards.
    pub fn commit(
        &self,
        name: &str,
        key: &str,
        labels: HashMap<String, String>,
    ) -> Result<(), SnapshotError> {
        let _s = info_span!("commit", name, key).entered();
        if name.is_empty() {
            return Err(SnapshotError::InvalidArgument(
                "a snapshot name is needed".into(),
            ));
        }
        let mut st = self.lock();
        let rec = st.records.get(key).ok_or_else(|| not_found(key))?.clone();
        if rec.kind != Kind::Active {
            return Err(SnapshotError::FailedPrecondition(format!(
                "snapshot {key} is {}: only an active snapshot can be committed",
                rec.kind.name()
            )));
        }
        if st.records.contains_key(name) {
            return Err(SnapshotError::AlreadyExists(name.to_string()));
        }
        let layers = self.store.layers();
        let staged = if rec.upper {
            // The files containerd's applier wrote become the layer's data files as they are.
            let upper = self.dir_of(key).join(UPPER_DIR);
            info_span!("stage_upper").in_scope(|| {
                layers.stage_upper(&upper, |index, data| {
                    crate::image::save::write_layer_tar(index, data, std::io::sink())
                })
            })?
        } else {
            self.stage_writable(&st, key, &rec)?
        };
        let entries = staged.index.entries.len();
        let diff_id = staged.diff_id().clone();
        let locks = layers.lock(std::slice::from_ref(&diff_id))?;
        info_span!("publish").in_scope(|| layers.commit(staged, &locks))?;
        let dir = self.dir_of(name);
        if dir.exists() {
            self.delete_dir(name)?;
        }
        make_dir(&dir, 0o700)?;
        let mut chain = rec.layers.clone();
        chain.push(diff_id.clone());
        // Recorded while the layer lock is held: no collection can take the new layer.
        info_span!("hold")
            .in_scope(|| self.store.hold_layers(self.user_of(name), chain.clone()))?;
        drop(locks);
        let t = now();
        let committed = Record {
            key: name.to_string(),
            parent: rec.parent.clone(),
            kind: Kind::Committed,
            labels,
            created: t,
            updated: t,
            layers: chain,
            upper: false,
        };
        info_span!("record").in_scope(|| committed.write(&dir))?;
        st.records.insert(name.to_string(), committed);
        // The committed snapshot is durable: now the active one goes.
        if let Some(l) = st.live.remove(key) {
            l.unmount();
        }
        info_span!("delete").in_scope(|| self.delete_dir(key))?;
        st.records.remove(key);
        info!(layer = %diff_id, entries, extraction = rec.upper, "committed");
        Ok(())
    }

    /// The change set of an active snapshot's writable layer, staged as a layer: through the
    /// live view when it is mounted, else through the writable layer opened here.
    fn stage_writable(
        &self,
        st: &State,
        key: &str,
        rec: &Record,
    ) -> Result<StagedLayer, SnapshotError> {
        let (view, _offline) = match st.live.get(key).and_then(|l| l.view.clone()) {
            Some(v) => (v, None),
            None => {
                let rw = self.dir_of(key).join(RW_DIR);
                let f = fs::read_write(self.store.layers(), &rec.layers, &rw)?;
                (f.view(), Some(f))
            }
        };
        let changes = view.changes();
        let (staged, stats) =
            info_span!("stage").in_scope(|| stage_changes(self.store.layers(), &view, &changes))?;
        info!(
            changes = changes.len(),
            entries = stats.entries,
            "change set staged"
        );
        Ok(staged)
    }

    /// `Remove`: unmounts and deletes a snapshot that has no children.
    pub fn remove(&self, key: &str) -> Result<(), SnapshotError> {
        let _s = info_span!("remove", key).entered();
        let mut st = self.lock();
        let rec = st.records.get(key).ok_or_else(|| not_found(key))?;
        let kind = rec.kind;
        if let Some(child) = st.records.values().find(|r| r.parent == key) {
            return Err(SnapshotError::FailedPrecondition(format!(
                "snapshot {key} has children (such as {}): remove them first",
                child.key
            )));
        }
        if let Some(l) = st.live.remove(key) {
            l.unmount();
        }
        self.delete_dir(key)?;
        st.records.remove(key);
        drop(st);
        if kind == Kind::Committed {
            // Its layer may be unused now.
            if let Err(e) = self.store.gc() {
                warn!(error = %e, "collecting unused layers failed");
            }
        }
        info!("snapshot removed");
        Ok(())
    }

    /// `Stat`.
    pub fn stat(&self, key: &str) -> Result<Record, SnapshotError> {
        self.lock()
            .records
            .get(key)
            .cloned()
            .ok_or_else(|| not_found(key))
    }

    /// `Update`: only labels change. With no field paths (or `labels`) the labels are
    /// replaced; with `labels.KEY` paths only those keys are set or removed.
    pub fn update(
        &self,
        key: &str,
        labels: HashMap<String, String>,
        fieldpaths: &[String],
    ) -> Result<Record, SnapshotError> {
        let _s = info_span!("update", key).entered();
        let mut st = self.lock();
        let rec = st.records.get_mut(key).ok_or_else(|| not_found(key))?;
        let mut new = rec.clone();
        if fieldpaths.is_empty() {
            new.labels = labels;
        } else {
            for p in fieldpaths {
                if p == "labels" {
                    new.labels = labels.clone();
                } else if let Some(k) = p.strip_prefix("labels.") {
                    match labels.get(k) {
                        Some(v) => new.labels.insert(k.to_string(), v.clone()),
                        None => new.labels.remove(k),
                    };
                } else {
                    return Err(SnapshotError::InvalidArgument(format!(
                        "cannot update field {p:?} of snapshot {key}: only labels change"
                    )));
                }
            }
        }
        new.updated = now();
        new.write(&self.dir_of(key))?;
        *rec = new.clone();
        Ok(new)
    }

    /// `Usage`: what the snapshot itself uses (its writable layer, or its own layer).
    pub fn usage(&self, key: &str) -> Result<Usage, SnapshotError> {
        let rec = self.stat(key)?;
        Ok(match rec.kind {
            Kind::Active => {
                let own = if rec.upper { UPPER_DIR } else { RW_DIR };
                let (size, inodes) = disk_usage(&self.dir_of(key).join(own));
                Usage { size, inodes }
            }
            Kind::View => Usage::default(),
            Kind::Committed => match rec.layers.last() {
                Some(id) => {
                    let layers = self.store.layers();
                    let entries = layers.index(id)?.entries.len() as i64;
                    let (size, _) = disk_usage(&layers.data_dir(id));
                    Usage {
                        size,
                        inodes: entries,
                    }
                }
                None => Usage::default(),
            },
        })
    }

    /// `List` (containerd's Walk): the records that match `filters`, sorted by key.
    pub fn list(&self, filters: &[String]) -> Result<Vec<Record>, SnapshotError> {
        let f = Filters::parse(filters)?;
        let mut out: Vec<Record> = self
            .lock()
            .records
            .values()
            .filter(|r| f.matches(r))
            .cloned()
            .collect();
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    /// `Cleanup`: removes what no record accounts for: directories of snapshots whose
    /// creation did not finish, the trash, and stale mounts.
    pub fn cleanup(&self) -> Result<(), SnapshotError> {
        let _s = info_span!("cleanup").entered();
        let st = self.lock();
        let known: std::collections::HashSet<String> =
            st.records.keys().map(|k| Record::dir_name(k)).collect();
        let rd = std::fs::read_dir(&self.snapshots).map_err(SnapshotError::io(&self.snapshots))?;
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if known.contains(&name) || e.path().join(INFO_FILE).exists() {
                continue;
            }
            info!(dir = %e.path().display(), "removing an unfinished snapshot");
            let _ = std::fs::remove_dir_all(e.path());
        }
        self.empty_trash();
        self.clean_mounts(&st);
        Ok(())
    }

    /// Unmounts every snapshot (the writable layers are flushed); at shutdown.
    pub fn unmount_all(&self) {
        let mut st = self.lock();
        for (_, l) in st.live.drain() {
            l.unmount();
        }
    }

    /// The directory of the snapshots' mount points.
    pub fn mounts_dir(&self) -> &Path {
        &self.mounts
    }
}

impl Drop for Snapshotter {
    /// No session outlives the snapshotter: a mount whose server is gone would answer
    /// ENOTCONN until someone detached it.
    fn drop(&mut self) {
        self.unmount_all();
    }
}

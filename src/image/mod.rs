//! The image store: image records, tags, and the archive formats images arrive in.
//!
//! Owns, under the state root:
//! - `lock`: the global metadata lock (`flock`), held briefly while records or tags change;
//! - `images/<config-digest hex>/{config.json, image.json}`: the config exactly as loaded (its
//!   sha256 is the image id) and the record (layers bottom→top, blob digests, created, size);
//! - `repositories.json`: tag (`name:tag`) → image id;
//! - `tmp/`: archives being unpacked (`load-<pid>-*`, removed on every exit path);
//! - `users/`: the other users of layers (containers, mounts, writable layers on disk); see
//!   [`users`] for the one garbage-collection rule: a layer is deleted only when no image
//!   record and no live user refers to it.
//!
//! Layers live in the [`LayerStore`] (`layers/`). Lock order, everywhere: layer locks (sorted,
//! taken together) before the global lock. A layer is published only while its lock is held,
//! and the lock is held until an image record refers to it, so garbage collection (which
//! re-checks references under the layer lock) never removes a layer that is being loaded.
//! Whoever else publishes layers (e.g. `commit`) must follow the same rule.

mod archive;
mod commit;
mod error;
mod formats;
mod progress;
mod reference;
pub mod save;
mod spec;
mod users;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use commit::CommitInfo;
pub use error::ImageError;
pub use reference::Reference;
pub use spec::{ContainerConfig, History, ImageConfig, RootFs};
pub use users::{Hold, User};

use crate::digest::{Digest, digest_reader};
use crate::layer::{Compression, Kind, LayerIndex, LayerLocks, LayerStore, StagedLayer};
use crate::sys;
use archive::Source;
use formats::{ImagePlan, LayerPlan};
use progress::Progress;

const RECORD_FILE: &str = "image.json";
const CONFIG_FILE: &str = "config.json";
const REPOSITORIES_FILE: &str = "repositories.json";
/// Shortest id prefix `resolve` accepts.
const MIN_ID_PREFIX: usize = 4;

/// An image in the store.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageRecord {
    /// The image id: the digest of its config.
    pub id: Digest,
    /// `name:tag`s pointing at it, sorted.
    pub tags: Vec<String>,
    /// Layer diff_ids, bottom → top.
    pub layers: Vec<Digest>,
    /// Digest of each layer's blob as it came (compressed or not), when the input named one.
    pub compressed: Vec<Option<Digest>>,
    /// The config's `created` timestamp.
    pub created: Option<String>,
    /// Bytes of file content in its layers.
    pub size: u64,
}

/// What a `load` did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LoadReport {
    pub images: Vec<ImageRecord>,
    /// Layers this load extracted and published.
    pub staged: Vec<Digest>,
    /// Layers that were already in the store (nothing extracted).
    pub reused: Vec<Digest>,
}

/// What a `remove` did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RemoveReport {
    /// Tags removed.
    pub untagged: Vec<String>,
    /// Images deleted.
    pub deleted: Vec<Digest>,
    /// Layers no image used any more, now deleted.
    pub layers_removed: Vec<Digest>,
    /// Users of a deleted image (`force`): its layers stay until they are gone.
    pub kept_for: Vec<String>,
}

/// `image.json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct RecordFile {
    id: Digest,
    layers: Vec<Digest>,
    #[serde(default)]
    compressed: Vec<Option<Digest>>,
    #[serde(default)]
    created: Option<String>,
    size: u64,
    /// When it entered this store.
    #[serde(default)]
    added: Option<String>,
}

/// `repositories.json`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct Repositories {
    #[serde(default)]
    tags: BTreeMap<String, Digest>,
}

impl Repositories {
    fn tags_of(&self, id: &Digest) -> Vec<String> {
        self.tags
            .iter()
            .filter(|(_, v)| *v == id)
            .map(|(k, _)| k.clone())
            .collect()
    }
}

/// The global metadata lock; released on drop.
struct MetaLock(#[allow(dead_code)] File);

/// How a reference matched.
enum Match {
    Id,
    Tag(String),
}

/// The image store under one state root.
#[derive(Debug)]
pub struct ImageStore {
    root: PathBuf,
    layers: LayerStore,
}

impl ImageStore {
    /// Opens (creating as needed) the store under `root`, and removes leftovers of crashed
    /// imports (staging directories, unpacked archives, half-written records).
    pub fn open(root: &Path) -> Result<Self, ImageError> {
        for d in [root.to_path_buf(), root.join("images"), root.join("tmp")] {
            std::fs::create_dir_all(&d).map_err(|e| ImageError::io(&d, e))?;
        }
        let layers = LayerStore::open(root).map_err(store_err)?;
        layers.clean_staging();
        let store = Self {
            root: root.to_path_buf(),
            layers,
        };
        store.clean_leftovers()?;
        Ok(store)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn layers(&self) -> &LayerStore {
        &self.layers
    }

    fn images_dir(&self) -> PathBuf {
        self.root.join("images")
    }

    fn image_dir(&self, id: &Digest) -> PathBuf {
        self.images_dir().join(id.hex())
    }

    fn lock_meta(&self) -> Result<MetaLock, ImageError> {
        let p = self.root.join("lock");
        sys::lock_file(&p)
            .map(MetaLock)
            .map_err(|e| ImageError::io(&p, e))
    }

    fn clean_leftovers(&self) -> Result<(), ImageError> {
        let tmp = self.root.join("tmp");
        if let Ok(rd) = std::fs::read_dir(&tmp) {
            for e in rd.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                let pid = name
                    .strip_prefix("load-")
                    .and_then(|r| r.split('-').next())
                    .and_then(|p| p.parse::<i32>().ok());
                if pid.is_none_or(|p| !sys::process_alive(p)) {
                    let _ = std::fs::remove_dir_all(e.path());
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
        // Records and tags are written only under the global lock, so whatever temporary
        // file or directory exists while we hold it belongs to a writer that died.
        let _g = self.lock_meta()?;
        for dir in [self.root.clone(), self.images_dir()] {
            let Ok(rd) = std::fs::read_dir(&dir) else {
                continue;
            };
            for e in rd.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if name.starts_with(".new-") || name.starts_with(".trash-") {
                    let _ = std::fs::remove_dir_all(e.path());
                } else if name.starts_with(".tmp-") {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
        Ok(())
    }

    // -----------------------------------------------------------------------------------------
    // Loading

    /// Loads every image of an OCI image layout directory, an OCI archive (a tar of a layout)
    /// or a docker-archive (`docker save`, legacy `<id>/layer.tar` or `blobs/sha256/` form),
    /// optionally gzip- or zstd-compressed. All or nothing: on any error the store is as before.
    pub fn load(&self, path: &Path, progress: bool) -> Result<Vec<ImageRecord>, ImageError> {
        Ok(self.load_report(path, progress)?.images)
    }

    /// [`load`](Self::load), also telling which layers were extracted and which were present.
    pub fn load_report(&self, path: &Path, progress: bool) -> Result<LoadReport, ImageError> {
        let progress = Progress::new(progress);
        let meta = std::fs::metadata(path).map_err(|e| ImageError::io(path, e))?;
        let src = if meta.is_dir() {
            Source::dir(path)
        } else {
            Source::unpack(path, &self.root.join("tmp"), progress)?
        };
        let plans = formats::plan(&src, path)?;
        let report = self.install(plans, Vec::new(), true, progress)?;
        for img in &report.images {
            tracing::info!(id = %img.id, tags = ?img.tags, "loaded image");
        }
        Ok(report)
    }

    /// Like `docker import`: a plain rootfs tarball (uncompressed, gzip or zstd) becomes a
    /// one-layer image, tagged `reference` when given.
    pub fn import(
        &self,
        tarball: &Path,
        reference: Option<&str>,
        progress: bool,
    ) -> Result<ImageRecord, ImageError> {
        let progress = Progress::new(progress);
        let tags: Vec<Reference> = reference
            .map(Reference::parse)
            .transpose()?
            .into_iter()
            .collect();
        let f = File::open(tarball).map_err(|e| ImageError::io(tarball, e))?;
        let len = f.metadata().map(|m| m.len()).unwrap_or(0);
        let staged = {
            let (r, _bar) = progress.wrap(f, len, "importing");
            self.layers
                .stage(r, None)
                .map_err(|e| ImageError::layer(tarball.display().to_string(), e))?
        };
        let diff_id = staged.diff_id().clone();
        let now = now_rfc3339();
        let name = tarball
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let config = ImageConfig {
            created: Some(now.clone()),
            architecture: spec::host_arch().to_string(),
            os: "linux".to_string(),
            rootfs: RootFs {
                kind: "layers".to_string(),
                diff_ids: vec![diff_id.clone()],
            },
            history: vec![History {
                created: Some(now),
                created_by: Some("strata import".to_string()),
                comment: Some(format!("imported from {name}")),
                ..Default::default()
            }],
            ..Default::default()
        };
        let config_bytes = serde_json::to_vec(&config)
            .map_err(|e| ImageError::Store(format!("cannot encode an image config: {e}")))?;
        let plan = ImagePlan {
            id: Digest::of(&config_bytes),
            config_bytes,
            config,
            layers: vec![LayerPlan {
                diff_id,
                blob: tarball.to_path_buf(),
                blob_name: tarball.display().to_string(),
                blob_digest: None,
                blob_size: None,
            }],
            tags,
        };
        let report = self.install(vec![plan], vec![staged], false, progress)?;
        report
            .images
            .into_iter()
            .next()
            .ok_or_else(|| ImageError::Store("import produced no image".into()))
    }

    /// Publishes the layers of `plans` (each at most once, verified) and then their records and
    /// tags. `prestaged` are layers already extracted by the caller. With `check_stored`, the
    /// blobs of layers the store has already are verified too: they come from an input that
    /// must be whole (`load`), not from the store itself (`commit`'s base layers).
    fn install(
        &self,
        plans: Vec<ImagePlan>,
        mut prestaged: Vec<StagedLayer>,
        check_stored: bool,
        progress: Progress,
    ) -> Result<LoadReport, ImageError> {
        let all: Vec<Digest> = plans
            .iter()
            .flat_map(|p| p.layers.iter().map(|l| l.diff_id.clone()))
            .collect();
        let locks = self.layers.lock(&all).map_err(store_err)?;
        let mut staged = Vec::new();
        let mut reused = Vec::new();
        let mut sizes: HashMap<Digest, u64> = HashMap::new();
        for layer in plans.iter().flat_map(|p| &p.layers) {
            let id = &layer.diff_id;
            if sizes.contains_key(id) {
                continue;
            }
            if self.layers.exists(id) {
                // Stored already, but the archive's copy is still checked: a corrupt archive
                // fails the load whole, whatever the store holds.
                if check_stored {
                    verify_blob(layer, progress, true)?;
                }
                let index = self
                    .layers
                    .index(id)
                    .map_err(|e| ImageError::layer(id.to_string(), e))?;
                sizes.insert(id.clone(), content_size(&index));
                reused.push(id.clone());
                continue;
            }
            let s = match prestaged.iter().position(|s| s.diff_id() == id) {
                Some(i) => prestaged.swap_remove(i),
                None => {
                    verify_blob(layer, progress, false)?;
                    self.stage_blob(layer, progress)?
                }
            };
            sizes.insert(id.clone(), content_size(&s.index));
            staged.push(s);
        }
        drop(prestaged);

        // Every layer extracted and verified: publish them all, or none.
        let mut committed = Vec::with_capacity(staged.len());
        for s in staged {
            let id = s.diff_id().clone();
            if let Err(e) = self.layers.commit(s, &locks) {
                self.rollback(&committed, &locks);
                return Err(ImageError::layer(id.to_string(), e));
            }
            committed.push(id);
        }
        match self.write_images(&plans, &sizes) {
            Ok(images) => Ok(LoadReport {
                images,
                staged: committed,
                reused,
            }),
            Err(e) => {
                self.rollback(&committed, &locks);
                Err(e)
            }
        }
    }

    fn stage_blob(&self, layer: &LayerPlan, progress: Progress) -> Result<StagedLayer, ImageError> {
        let f = File::open(&layer.blob).map_err(|e| ImageError::io(&layer.blob, e))?;
        let len = f.metadata().map(|m| m.len()).unwrap_or(0);
        let (r, _bar) = progress.wrap(f, len, &format!("extracting {}", layer.diff_id.short()));
        tracing::debug!(layer = %layer.diff_id, blob = %layer.blob_name, "extracting layer");
        self.layers
            .stage(r, Some(&layer.diff_id))
            .map_err(|e| ImageError::layer(layer.blob_name.clone(), e))
    }

    fn rollback(&self, committed: &[Digest], locks: &LayerLocks) {
        for id in committed {
            if let Err(e) = self.layers.remove(id, locks) {
                tracing::warn!(layer = %id, "could not roll back a published layer: {e}");
            }
        }
    }

    /// Writes the records and tags of `plans` under the global lock.
    fn write_images(
        &self,
        plans: &[ImagePlan],
        sizes: &HashMap<Digest, u64>,
    ) -> Result<Vec<ImageRecord>, ImageError> {
        let _g = self.lock_meta()?;
        let mut repos = self.read_repos()?;
        let mut created = Vec::new();
        if let Err(e) = self.write_images_locked(plans, sizes, &mut repos, &mut created) {
            for dir in created {
                let _ = std::fs::remove_dir_all(dir);
            }
            return Err(e);
        }
        let mut out: Vec<ImageRecord> = Vec::new();
        for plan in plans {
            if !out.iter().any(|r| r.id == plan.id) {
                out.push(self.record_locked(&plan.id, &repos)?);
            }
        }
        Ok(out)
    }

    fn write_images_locked(
        &self,
        plans: &[ImagePlan],
        sizes: &HashMap<Digest, u64>,
        repos: &mut Repositories,
        created: &mut Vec<PathBuf>,
    ) -> Result<(), ImageError> {
        for plan in plans {
            let dir = self.image_dir(&plan.id);
            if !dir.join(RECORD_FILE).is_file() {
                let record = RecordFile {
                    id: plan.id.clone(),
                    layers: plan.layers.iter().map(|l| l.diff_id.clone()).collect(),
                    compressed: plan.layers.iter().map(|l| l.blob_digest.clone()).collect(),
                    created: plan.config.created.clone(),
                    size: plan
                        .layers
                        .iter()
                        .map(|l| l.diff_id.clone())
                        .collect::<HashSet<_>>()
                        .iter()
                        .map(|id| sizes.get(id).copied().unwrap_or(0))
                        .sum(),
                    added: Some(now_rfc3339()),
                };
                self.create_image_dir(&dir, &plan.config_bytes, &record)?;
                created.push(dir);
            }
            for tag in &plan.tags {
                repos.tags.insert(tag.to_string(), plan.id.clone());
            }
        }
        self.write_repos(repos)
    }

    /// Creates `images/<hex>/` with both files, atomically (a directory renamed into place).
    fn create_image_dir(
        &self,
        dir: &Path,
        config: &[u8],
        record: &RecordFile,
    ) -> Result<(), ImageError> {
        let images = self.images_dir();
        let record = serde_json::to_vec_pretty(record)
            .map_err(|e| ImageError::Store(format!("cannot encode an image record: {e}")))?;
        let tmp = tempfile::Builder::new()
            .prefix(".new-")
            .tempdir_in(&images)
            .map_err(|e| ImageError::io(&images, e))?;
        write_synced(&tmp.path().join(CONFIG_FILE), config)?;
        write_synced(&tmp.path().join(RECORD_FILE), &record)?;
        sync_dir(tmp.path())?;
        if dir.exists() {
            // A directory without a record cannot come from this code; replace it.
            std::fs::remove_dir_all(dir).map_err(|e| ImageError::io(dir, e))?;
        }
        std::fs::rename(tmp.path(), dir).map_err(|e| ImageError::io(dir, e))?;
        let _ = tmp.keep();
        sync_dir(&images)
    }

    // -----------------------------------------------------------------------------------------
    // Metadata

    fn read_repos(&self) -> Result<Repositories, ImageError> {
        let p = self.root.join(REPOSITORIES_FILE);
        match std::fs::read(&p) {
            Ok(b) => serde_json::from_slice(&b)
                .map_err(|e| ImageError::Store(format!("{}: {e}", p.display()))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Repositories::default()),
            Err(e) => Err(ImageError::io(&p, e)),
        }
    }

    fn write_repos(&self, repos: &Repositories) -> Result<(), ImageError> {
        let bytes = serde_json::to_vec_pretty(repos)
            .map_err(|e| ImageError::Store(format!("cannot encode tags: {e}")))?;
        write_atomic(&self.root.join(REPOSITORIES_FILE), &bytes)
    }

    /// Ids of every image in the store.
    fn image_ids(&self) -> Result<Vec<Digest>, ImageError> {
        let dir = self.images_dir();
        let mut out = Vec::new();
        for e in std::fs::read_dir(&dir).map_err(|e| ImageError::io(&dir, e))? {
            let e = e.map_err(|e| ImageError::io(&dir, e))?;
            let name = e.file_name();
            if let Ok(id) = format!("sha256:{}", name.to_string_lossy()).parse::<Digest>()
                && e.path().join(RECORD_FILE).is_file()
            {
                out.push(id);
            }
        }
        out.sort();
        Ok(out)
    }

    fn read_record(&self, id: &Digest) -> Result<RecordFile, ImageError> {
        let p = self.image_dir(id).join(RECORD_FILE);
        let bytes = std::fs::read(&p).map_err(|e| ImageError::io(&p, e))?;
        let r: RecordFile = serde_json::from_slice(&bytes)
            .map_err(|e| ImageError::Store(format!("{}: {e}", p.display())))?;
        if r.id != *id {
            return Err(ImageError::Store(format!(
                "{}: record of {} filed under {id}",
                p.display(),
                r.id
            )));
        }
        Ok(r)
    }

    fn record_locked(&self, id: &Digest, repos: &Repositories) -> Result<ImageRecord, ImageError> {
        let r = self.read_record(id)?;
        Ok(ImageRecord {
            id: r.id,
            tags: repos.tags_of(id),
            layers: r.layers,
            compressed: r.compressed,
            created: r.created,
            size: r.size,
        })
    }

    /// Every image, newest first.
    pub fn list(&self) -> Result<Vec<ImageRecord>, ImageError> {
        let _g = self.lock_meta()?;
        let repos = self.read_repos()?;
        let mut out = self
            .image_ids()?
            .iter()
            .map(|id| self.record_locked(id, &repos))
            .collect::<Result<Vec<_>, _>>()?;
        out.sort_by(|a, b| b.created.cmp(&a.created).then_with(|| a.id.cmp(&b.id)));
        Ok(out)
    }

    /// Finds an image by `name:tag`, `name` (= `name:latest`), full id `sha256:<hex>`, or a
    /// unique id prefix of at least 4 hex digits (with or without `sha256:`). As in Docker, a
    /// tag wins over an id prefix that spells the same; as in Podman, `x:y` also finds
    /// `localhost/x:y`.
    pub fn resolve(&self, reference: &str) -> Result<ImageRecord, ImageError> {
        let _g = self.lock_meta()?;
        let repos = self.read_repos()?;
        let (id, _) = self.find_locked(reference, &repos)?;
        self.record_locked(&id, &repos)
    }

    fn find_locked(
        &self,
        reference: &str,
        repos: &Repositories,
    ) -> Result<(Digest, Match), ImageError> {
        let ids = self.image_ids()?;
        if let Ok(d) = reference.parse::<Digest>() {
            return if ids.contains(&d) {
                Ok((d, Match::Id))
            } else {
                Err(ImageError::NotFound(reference.to_string()))
            };
        }
        let (prefix, only_id) = match reference.strip_prefix("sha256:") {
            Some(p) => (p, true),
            None => (reference, false),
        };
        let mut bad_ref = None;
        if !only_id {
            match Reference::parse(reference) {
                Ok(r) => {
                    let mut names = vec![r.to_string()];
                    if !r.has_domain() {
                        names.push(format!("localhost/{r}"));
                    }
                    for n in names {
                        if let Some(id) = repos.tags.get(&n) {
                            return Ok((id.clone(), Match::Tag(n)));
                        }
                    }
                }
                Err(e) => bad_ref = Some(e),
            }
        }
        let is_hex = (MIN_ID_PREFIX..=64).contains(&prefix.len())
            && prefix
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        if is_hex {
            let m: Vec<&Digest> = ids.iter().filter(|d| d.hex().starts_with(prefix)).collect();
            match m.as_slice() {
                [one] => return Ok(((*one).clone(), Match::Id)),
                [] => {}
                many => {
                    return Err(ImageError::Ambiguous {
                        prefix: reference.to_string(),
                        matches: many
                            .iter()
                            .map(|d| d.short())
                            .collect::<Vec<_>>()
                            .join(", "),
                    });
                }
            }
        } else if only_id {
            return Err(ImageError::BadReference {
                reference: reference.to_string(),
                why: "an image id prefix is 4 to 64 lowercase hex digits".into(),
            });
        }
        Err(bad_ref.unwrap_or_else(|| ImageError::NotFound(reference.to_string())))
    }

    /// The image's parsed configuration (entrypoint, env, ...).
    pub fn config(&self, image: &ImageRecord) -> Result<ImageConfig, ImageError> {
        let p = self.image_dir(&image.id).join(CONFIG_FILE);
        let bytes = std::fs::read(&p).map_err(|e| ImageError::io(&p, e))?;
        if Digest::of(&bytes) != image.id {
            return Err(ImageError::Store(format!(
                "{}: does not match the image id {}",
                p.display(),
                image.id
            )));
        }
        serde_json::from_slice(&bytes)
            .map_err(|e| ImageError::Store(format!("{}: {e}", p.display())))
    }

    /// The exact config bytes (for `save` and `inspect`).
    pub fn config_bytes(&self, image: &ImageRecord) -> Result<Vec<u8>, ImageError> {
        let p = self.image_dir(&image.id).join(CONFIG_FILE);
        std::fs::read(&p).map_err(|e| ImageError::io(&p, e))
    }

    /// Points tag `target` at the image `source` names. A tag that pointed elsewhere moves;
    /// its old image stays (untagged, if that was its last tag), as in Docker.
    pub fn tag(&self, source: &str, target: &str) -> Result<(), ImageError> {
        let target = Reference::parse(target)?;
        let _g = self.lock_meta()?;
        let mut repos = self.read_repos()?;
        let (id, _) = self.find_locked(source, &repos)?;
        repos.tags.insert(target.to_string(), id);
        self.write_repos(&repos)
    }

    /// `docker rmi`: by tag, removes the tag, and the image when that was its last one; by id,
    /// removes the image and all its tags (several tags need `force`). Deleting an image that
    /// a [`User`] holds is refused ([`ImageError::InUse`]); with `force` the image goes but its
    /// layers stay until the last user is gone. Then deletes the layers nothing uses any more.
    pub fn remove(&self, reference: &str, force: bool) -> Result<RemoveReport, ImageError> {
        let mut report = RemoveReport::default();
        {
            let _g = self.lock_meta()?;
            let mut repos = self.read_repos()?;
            let (id, how) = self.find_locked(reference, &repos)?;
            let tags = repos.tags_of(&id);
            let delete = match how {
                Match::Tag(t) => {
                    repos.tags.remove(&t);
                    report.untagged.push(t);
                    tags.len() <= 1
                }
                Match::Id => {
                    if tags.len() > 1 && !force {
                        return Err(ImageError::Conflict {
                            id: id.short().to_string(),
                            tags: tags.join(", "),
                        });
                    }
                    for t in tags {
                        repos.tags.remove(&t);
                        report.untagged.push(t);
                    }
                    true
                }
            };
            if delete {
                let users: Vec<String> = self
                    .users_locked(true)?
                    .into_iter()
                    .filter(|h| h.image.as_ref() == Some(&id))
                    .map(|h| h.user.to_string())
                    .collect();
                if !users.is_empty() && !force {
                    return Err(ImageError::InUse {
                        image: reference.to_string(),
                        users: users.join(", "),
                    });
                }
                report.kept_for = users;
            }
            // Tags first: a crash in between leaves an untagged image, never a tag to nothing.
            self.write_repos(&repos)?;
            if delete {
                self.delete_image_dir(&id)?;
                report.deleted.push(id);
            }
        }
        report.layers_removed = self.gc()?;
        Ok(report)
    }

    fn delete_image_dir(&self, id: &Digest) -> Result<(), ImageError> {
        let dir = self.image_dir(id);
        let trash = self
            .images_dir()
            .join(format!(".trash-{}-{}", id.hex(), std::process::id()));
        std::fs::rename(&dir, &trash).map_err(|e| ImageError::io(&dir, e))?;
        sync_dir(&self.images_dir())?;
        std::fs::remove_dir_all(&trash).map_err(|e| ImageError::io(&trash, e))
    }

    /// Layers referenced by some image or held by a live user (stale users are forgotten).
    /// Fails rather than guess when a record is unreadable.
    fn referenced_locked(&self) -> Result<HashSet<Digest>, ImageError> {
        let mut out = HashSet::new();
        for id in self.image_ids()? {
            out.extend(self.read_record(&id)?.layers);
        }
        for hold in self.users_locked(true)? {
            out.extend(hold.layers);
        }
        Ok(out)
    }

    /// Deletes every layer that no image refers to and no live user holds (the rule of
    /// [`users`]); returns their ids.
    pub fn gc(&self) -> Result<Vec<Digest>, ImageError> {
        let candidates: Vec<Digest> = {
            let _g = self.lock_meta()?;
            let used = self.referenced_locked()?;
            self.layers
                .list()
                .map_err(store_err)?
                .into_iter()
                .filter(|l| !used.contains(l))
                .collect()
        };
        if candidates.is_empty() {
            return Ok(Vec::new());
        }
        // Layer locks before the global lock; then check again, since an image using one of
        // them may have been loaded in between.
        let locks = self.layers.lock(&candidates).map_err(store_err)?;
        let _g = self.lock_meta()?;
        let used = self.referenced_locked()?;
        let mut removed = Vec::new();
        for id in candidates {
            if !used.contains(&id) && self.layers.exists(&id) {
                self.layers
                    .remove(&id, &locks)
                    .map_err(|e| ImageError::layer(id.to_string(), e))?;
                tracing::debug!(layer = %id, "removed unused layer");
                removed.push(id);
            }
        }
        Ok(removed)
    }
}

fn store_err(e: crate::layer::LayerError) -> ImageError {
    ImageError::Store(e.to_string())
}

/// Bytes of file content in a layer (each hard-link group once).
fn content_size(index: &LayerIndex) -> u64 {
    let mut seen = HashSet::new();
    index
        .entries
        .iter()
        .filter_map(|e| match e.kind {
            Kind::File { size, file, .. } if seen.insert(file) => Some(size),
            _ => None,
        })
        .sum()
}

/// Checks a layer blob against the digest the manifest gives it, before anything parses it.
/// A legacy `layer.tar` has no blob digest; when it is uncompressed its digest is its diff_id.
/// A compressed one is checked by `stage` as it extracts it, unless the layer is `stored`
/// already (nothing will be extracted): then its decompressed stream is hashed here.
fn verify_blob(layer: &LayerPlan, progress: Progress, stored: bool) -> Result<(), ImageError> {
    let mut f = File::open(&layer.blob).map_err(|e| ImageError::io(&layer.blob, e))?;
    let len = f
        .metadata()
        .map_err(|e| ImageError::io(&layer.blob, e))?
        .len();
    if let Some(size) = layer.blob_size
        && size != len
    {
        return Err(ImageError::SizeMismatch {
            what: format!("layer blob {}", layer.blob_name),
            expected: size,
            actual: len,
        });
    }
    let (expected, what) = match &layer.blob_digest {
        Some(d) => (d.clone(), format!("layer blob {}", layer.blob_name)),
        None => {
            let mut head = [0u8; 8];
            let n = f
                .read(&mut head)
                .map_err(|e| ImageError::io(&layer.blob, e))?;
            f = File::open(&layer.blob).map_err(|e| ImageError::io(&layer.blob, e))?;
            if Compression::detect(&head[..n]) != Compression::None {
                if !stored {
                    return Ok(()); // `stage` checks the diff_id of the decompressed stream
                }
                let (r, _bar) =
                    progress.wrap(f, len, &format!("verifying {}", layer.diff_id.short()));
                let stream =
                    crate::layer::decompress(r).map_err(|e| ImageError::io(&layer.blob, e))?;
                let (actual, _) =
                    digest_reader(stream).map_err(|e| ImageError::io(&layer.blob, e))?;
                return check_digest(
                    format!(
                        "layer {} (uncompressed content vs. the diff_id in the image config)",
                        layer.blob_name
                    ),
                    layer.diff_id.clone(),
                    actual,
                );
            }
            (
                layer.diff_id.clone(),
                format!(
                    "layer {} (uncompressed content vs. the diff_id in the image config)",
                    layer.blob_name
                ),
            )
        }
    };
    let (r, _bar) = progress.wrap(f, len, &format!("verifying {}", expected.short()));
    let (actual, _) = digest_reader(r).map_err(|e| ImageError::io(&layer.blob, e))?;
    check_digest(what, expected, actual)
}

fn check_digest(what: String, expected: Digest, actual: Digest) -> Result<(), ImageError> {
    if actual != expected {
        return Err(ImageError::DigestMismatch {
            what,
            expected,
            actual,
        });
    }
    Ok(())
}

fn write_synced(path: &Path, bytes: &[u8]) -> Result<(), ImageError> {
    let mut f = File::create(path).map_err(|e| ImageError::io(path, e))?;
    f.write_all(bytes)
        .and_then(|_| f.sync_all())
        .map_err(|e| ImageError::io(path, e))
}

fn sync_dir(dir: &Path) -> Result<(), ImageError> {
    File::open(dir)
        .and_then(|f| f.sync_all())
        .map_err(|e| ImageError::io(dir, e))
}

/// Replaces `path` with `bytes` atomically and durably: temp file, fsync, rename, fsync dir.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), ImageError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp = tempfile::Builder::new()
        .prefix(".tmp-")
        .tempfile_in(dir)
        .map_err(|e| ImageError::io(dir, e))?;
    tmp.write_all(bytes)
        .and_then(|_| tmp.as_file().sync_all())
        .map_err(|e| ImageError::io(tmp.path(), e))?;
    tmp.persist(path)
        .map_err(|e| ImageError::io(path, e.error))?;
    sync_dir(dir)
}

/// The current time as RFC 3339 UTC with nanoseconds, as Docker writes `created`.
fn now_rfc3339() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    rfc3339(now.as_secs() as i64, now.subsec_nanos())
}

fn rfc3339(secs: i64, nanos: u32) -> String {
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{nanos:09}Z",
        sod / 3600,
        sod % 3600 / 60,
        sod % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_dates() {
        assert_eq!(rfc3339(0, 0), "1970-01-01T00:00:00.000000000Z");
        assert_eq!(rfc3339(951_782_400, 5), "2000-02-29T00:00:00.000000005Z");
        assert_eq!(rfc3339(1_700_000_000, 0), "2023-11-14T22:13:20.000000000Z");
        assert_eq!(rfc3339(-1, 0), "1969-12-31T23:59:59.000000000Z");
    }
}

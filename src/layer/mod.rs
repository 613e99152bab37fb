//! The layer store: immutable, content-addressed layers under `<root>/layers/`.
//!
//! Owns `layers/<diff_id hex>/{data/, index}`, the staging area where a layer is extracted
//! (from a tar, or linked from an overlayfs upper directory: `upper`) before it becomes
//! visible, and the per-layer lock files. A layer is published by one
//! `rename` and never modified afterwards (DESIGN invariant 1); it is deleted only by
//! [`LayerStore::remove`], which the image store calls when no image refers to it.
//! This module knows nothing about images, manifests or mounts.

mod extract;
#[cfg(test)]
pub(crate) mod fixtures;
pub mod index;
pub mod marker;
mod upper;

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

pub use index::{Entry, Kind, LayerIndex};

use crate::digest::{Digest, HashingReader};
use crate::sys;

/// Why a layer could not be imported or read.
#[derive(Debug, thiserror::Error)]
pub enum LayerError {
    #[error("rejected layer entry {path:?}: {why}")]
    Hostile { path: String, why: String },
    #[error("corrupt layer archive: {0}")]
    Corrupt(String),
    #[error("layer content does not match its digest: expected {expected}, got {actual}")]
    DigestMismatch { expected: Digest, actual: Digest },
    #[error("layer {0} is not in the store")]
    Missing(Digest),
    #[error("bad layer index: {0}")]
    Index(String),
    #[error("{path}: {source}")]
    Io { path: String, source: io::Error },
}

impl LayerError {
    pub(crate) fn io(path: &Path, source: io::Error) -> Self {
        LayerError::Io {
            path: path.display().to_string(),
            source,
        }
    }
    /// Errors from the tar parser and the decompressors surface as `io::Error`s.
    fn tar(e: io::Error) -> Self {
        LayerError::Corrupt(e.to_string())
    }
}

/// Compression of a layer blob, recognised by its magic bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

impl Compression {
    pub fn detect(head: &[u8]) -> Self {
        if head.starts_with(&[0x1f, 0x8b]) {
            Compression::Gzip
        } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Compression::Zstd
        } else {
            Compression::None
        }
    }
}

/// Wraps `r` in the decompressor its first bytes call for.
pub fn decompress<'a>(r: impl Read + 'a) -> io::Result<Box<dyn Read + 'a>> {
    let mut r = BufReader::with_capacity(256 * 1024, r);
    let c = Compression::detect(r.fill_buf()?);
    Ok(match c {
        Compression::None => Box::new(r),
        Compression::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(r)),
        Compression::Zstd => Box::new(zstd::stream::read::Decoder::with_buffer(r)?),
    })
}

/// The layer store under one state root.
#[derive(Clone, Debug)]
pub struct LayerStore {
    dir: PathBuf,
}

/// Exclusive locks on a set of layer ids, taken in sorted order (so two importers never
/// deadlock). While held, nobody else imports or removes those layers.
#[derive(Debug)]
pub struct LayerLocks {
    ids: Vec<Digest>,
    files: Vec<File>,
    store: PathBuf,
}

impl LayerLocks {
    pub fn covers(&self, id: &Digest) -> bool {
        self.ids.binary_search(id).is_ok()
    }
}

impl Drop for LayerLocks {
    /// The lock file of a layer that is not in the store (removed, or never published)
    /// goes with the lock, so removing every image leaves no `.locks/` entry behind. It is
    /// unlinked while still held; [`sys::lock_file_linked`] makes a waiter that locked the
    /// unlinked file try again on the path's new file.
    fn drop(&mut self) {
        for id in &self.ids {
            if !self.store.join(id.hex()).join(INDEX_FILE).is_file() {
                let _ = std::fs::remove_file(self.store.join(".locks").join(id.hex()));
            }
        }
        self.files.clear();
    }
}

/// A layer extracted into the staging area, not yet visible. Dropping it removes it.
#[derive(Debug)]
pub struct StagedLayer {
    dir: Option<PathBuf>,
    diff_id: Digest,
    /// Uncompressed size of the layer tar.
    pub tar_size: u64,
    pub index: LayerIndex,
}

impl StagedLayer {
    pub fn diff_id(&self) -> &Digest {
        &self.diff_id
    }
}

impl Drop for StagedLayer {
    fn drop(&mut self) {
        if let Some(dir) = self.dir.take() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

const INDEX_FILE: &str = "index";

impl LayerStore {
    /// The store under `root` (`<root>/layers`), created if missing.
    pub fn open(root: &Path) -> Result<Self, LayerError> {
        let dir = root.join("layers");
        for d in [dir.clone(), dir.join(".staging"), dir.join(".locks")] {
            std::fs::create_dir_all(&d).map_err(|e| LayerError::io(&d, e))?;
        }
        Ok(Self { dir })
    }

    fn path(&self, id: &Digest) -> PathBuf {
        self.dir.join(id.hex())
    }

    pub fn exists(&self, id: &Digest) -> bool {
        self.path(id).join(INDEX_FILE).is_file()
    }

    /// Directory holding the layer's data files (`data/<n>`, see [`Kind::File`]).
    pub fn data_dir(&self, id: &Digest) -> PathBuf {
        self.path(id).join("data")
    }

    pub fn index(&self, id: &Digest) -> Result<LayerIndex, LayerError> {
        if !self.exists(id) {
            return Err(LayerError::Missing(id.clone()));
        }
        LayerIndex::read_from(&self.path(id).join(INDEX_FILE))
    }

    /// Every layer present.
    pub fn list(&self) -> Result<Vec<Digest>, LayerError> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(&self.dir).map_err(|e| LayerError::io(&self.dir, e))? {
            let e = e.map_err(|e| LayerError::io(&self.dir, e))?;
            if let Ok(id) = format!("sha256:{}", e.file_name().to_string_lossy()).parse::<Digest>()
            {
                out.push(id);
            }
        }
        out.sort();
        Ok(out)
    }

    /// Blocks until this process holds the locks of all `ids`.
    pub fn lock(&self, ids: &[Digest]) -> Result<LayerLocks, LayerError> {
        let mut ids = ids.to_vec();
        ids.sort();
        ids.dedup();
        let mut files = Vec::with_capacity(ids.len());
        for id in &ids {
            let p = self.dir.join(".locks").join(id.hex());
            files.push(sys::lock_file_linked(&p).map_err(|e| LayerError::io(&p, e))?);
        }
        Ok(LayerLocks {
            ids,
            files,
            store: self.dir.clone(),
        })
    }

    /// Extracts a layer blob (uncompressed, gzip or zstd) into the staging area and computes
    /// its diff_id (sha256 of the uncompressed tar). When `expected` is given, a different
    /// diff_id is an error. Nothing is visible in the store until [`commit`](Self::commit).
    pub fn stage(
        &self,
        blob: impl Read,
        expected: Option<&Digest>,
    ) -> Result<StagedLayer, LayerError> {
        self.stage_tar(decompress(blob).map_err(LayerError::tar)?, expected)
    }

    /// [`stage`](Self::stage) of a stream known to be an uncompressed tar (one this program
    /// writes): its first bytes are never taken for a compression's magic number, whatever
    /// name its first entry has.
    pub fn stage_tar(
        &self,
        tar: impl Read,
        expected: Option<&Digest>,
    ) -> Result<StagedLayer, LayerError> {
        let (mut staged, staging) = self.new_staged()?;
        let mut tar = HashingReader::new(tar);
        let index = extract::extract(&mut tar, &staging)?;
        let (diff_id, size) = tar.finish().map_err(LayerError::tar)?;
        if let Some(expected) = expected
            && *expected != diff_id
        {
            return Err(LayerError::DigestMismatch {
                expected: expected.clone(),
                actual: diff_id,
            });
        }
        let index_path = staging.join(INDEX_FILE);
        index.write_to(&index_path)?;
        staged.diff_id = diff_id;
        staged.tar_size = size;
        staged.index = index;
        Ok(staged)
    }

    /// A new, empty staging directory (removed when the returned layer is dropped).
    fn new_staged(&self) -> Result<(StagedLayer, PathBuf), LayerError> {
        let staging = tempfile::Builder::new()
            .prefix(&format!("layer-{}-", std::process::id()))
            .tempdir_in(self.dir.join(".staging"))
            .map_err(|e| LayerError::io(&self.dir, e))?
            .keep();
        let staged = StagedLayer {
            dir: Some(staging.clone()),
            diff_id: Digest::of(b""),
            tar_size: 0,
            index: LayerIndex::default(),
        };
        Ok((staged, staging))
    }

    /// Stages the overlayfs upper directory `upper` (on the store's file system) as a layer
    /// without copying its data (see [`upper`]): its files get second names in the staging
    /// area, and `upper` is left as it was. `digest` gives the layer's diff_id and tar size
    /// from its index and data directory: the digest of the layer tar that would be written
    /// from them (the image module's canonical writer), so the id is a content address.
    pub fn stage_upper(
        &self,
        upper: &Path,
        digest: impl FnOnce(&LayerIndex, &Path) -> io::Result<(Digest, u64)>,
    ) -> Result<StagedLayer, LayerError> {
        let (mut staged, staging) = self.new_staged()?;
        let index = upper::convert(upper, &staging)?;
        let data = staging.join("data");
        let (diff_id, size) = digest(&index, &data).map_err(|e| LayerError::io(&data, e))?;
        index.write_to(&staging.join(INDEX_FILE))?;
        staged.diff_id = diff_id;
        staged.tar_size = size;
        staged.index = index;
        Ok(staged)
    }

    /// Publishes a staged layer under its diff_id, unless that layer is already there (then
    /// the staged copy is discarded). The caller holds the layer's lock.
    pub fn commit(&self, mut staged: StagedLayer, locks: &LayerLocks) -> Result<(), LayerError> {
        assert!(
            locks.covers(&staged.diff_id),
            "commit of {} without its lock",
            staged.diff_id
        );
        if self.exists(&staged.diff_id) {
            return Ok(());
        }
        let Some(dir) = staged.dir.take() else {
            return Ok(());
        };
        let dst = self.path(&staged.diff_id);
        // Data files were written without fsync; one syncfs makes the whole layer durable
        // before it becomes visible.
        sys::syncfs(&dir).map_err(|e| LayerError::io(&dir, e))?;
        // A half-published directory (crash between mkdir and rename cannot happen: rename is
        // atomic) — but a leftover without an index from an older version is replaced.
        if dst.exists() {
            std::fs::remove_dir_all(&dst).map_err(|e| LayerError::io(&dst, e))?;
        }
        std::fs::rename(&dir, &dst).map_err(|e| {
            let _ = std::fs::remove_dir_all(&dir);
            LayerError::io(&dst, e)
        })
    }

    /// Deletes a layer. The caller holds its lock and has checked nothing refers to it.
    pub fn remove(&self, id: &Digest, locks: &LayerLocks) -> Result<(), LayerError> {
        assert!(locks.covers(id), "remove of {id} without its lock");
        let src = self.path(id);
        if !src.exists() {
            return Ok(());
        }
        // Rename first, so a crash mid-delete never leaves a half layer under a valid name.
        let trash = self.dir.join(".staging").join(format!("rm-{}", id.hex()));
        let _ = std::fs::remove_dir_all(&trash);
        std::fs::rename(&src, &trash).map_err(|e| LayerError::io(&src, e))?;
        std::fs::remove_dir_all(&trash).map_err(|e| LayerError::io(&trash, e))
    }

    /// Removes staging leftovers of imports whose process is gone (a crash or kill -9).
    pub fn clean_staging(&self) {
        let Ok(rd) = std::fs::read_dir(self.dir.join(".staging")) else {
            return;
        };
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let pid = name
                .strip_prefix("layer-")
                .and_then(|r| r.split('-').next());
            let dead = match pid.and_then(|p| p.parse::<i32>().ok()) {
                Some(pid) => !sys::process_alive(pid),
                None => name.starts_with("rm-"),
            };
            if dead {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
}

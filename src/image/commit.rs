//! `commit`: a new image made of an existing image's layers plus one new layer tar.
//!
//! The new layer is staged (extracted and indexed, its diff_id computed) and then published
//! by [`ImageStore::install`], which holds the layer locks until the image record refers to
//! the layer, the protocol garbage collection relies on.

use std::fs::File;
use std::path::Path;

use super::formats::{ImagePlan, LayerPlan};
use super::progress::Progress;
use super::{History, ImageConfig, ImageError, ImageRecord, ImageStore, Reference, now_rfc3339};
use crate::digest::Digest;

/// What the new image's config says about how it was made.
#[derive(Clone, Debug, Default)]
pub struct CommitInfo {
    pub author: Option<String>,
    pub comment: Option<String>,
    /// The history line (`created_by`).
    pub created_by: String,
}

impl ImageStore {
    /// Adds an image whose layers are `base`'s plus the uncompressed layer tar `layer_tar`;
    /// `config` is the new image's config (its rootfs and history are filled in here).
    pub fn commit_layer(
        &self,
        base: &ImageRecord,
        mut config: ImageConfig,
        layer_tar: &Path,
        info: &CommitInfo,
        tag: Option<&str>,
    ) -> Result<ImageRecord, ImageError> {
        let _s = tracing::info_span!("commit_layer", base = %base.id).entered();
        let tags: Vec<Reference> = tag.map(Reference::parse).transpose()?.into_iter().collect();
        let f = File::open(layer_tar).map_err(|e| ImageError::io(layer_tar, e))?;
        let staged = self
            .layers
            .stage(f, None)
            .map_err(|e| ImageError::layer(layer_tar.display().to_string(), e))?;
        let diff_id = staged.diff_id().clone();
        let now = now_rfc3339();
        config.created = Some(now.clone());
        if info.author.is_some() {
            config.author = info.author.clone();
        }
        config.rootfs.kind = "layers".into();
        config.rootfs.diff_ids = base.layers.clone();
        config.rootfs.diff_ids.push(diff_id.clone());
        config.history.push(History {
            created: Some(now),
            created_by: Some(info.created_by.clone()),
            author: info.author.clone(),
            comment: info.comment.clone(),
            empty_layer: false,
        });
        let config_bytes = serde_json::to_vec(&config)
            .map_err(|e| ImageError::Store(format!("cannot encode an image config: {e}")))?;
        let mut layers: Vec<LayerPlan> = base
            .layers
            .iter()
            .map(|id| LayerPlan {
                diff_id: id.clone(),
                blob: self.layers.data_dir(id),
                blob_name: id.to_string(),
                blob_digest: None,
                blob_size: None,
            })
            .collect();
        layers.push(LayerPlan {
            diff_id,
            blob: layer_tar.to_path_buf(),
            blob_name: layer_tar.display().to_string(),
            blob_digest: None,
            blob_size: None,
        });
        let plan = ImagePlan {
            id: Digest::of(&config_bytes),
            config_bytes,
            config,
            layers,
            tags,
        };
        // The base layers are the store's own, the new one was just extracted: no input to
        // check again.
        let report = self.install(vec![plan], vec![staged], false, Progress::new(false))?;
        report
            .images
            .into_iter()
            .next()
            .ok_or_else(|| ImageError::Store("commit produced no image".into()))
    }
}

//! The one error type of the image store.

use std::io;
use std::path::Path;

use crate::digest::Digest;
use crate::layer::LayerError;

/// Why an image operation failed. Every message names the thing at fault (the archive member,
/// the blob, the reference) so a user can act on it without a backtrace.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// A file-system error on a path of the store or of the input.
    #[error("{path}: {error}")]
    Io { path: String, error: io::Error },
    /// A layer blob was rejected while extracting it (hostile entry, corrupt stream, ...).
    #[error("layer {blob}: {error}")]
    Layer { blob: String, error: LayerError },
    /// The input is neither an OCI layout/archive nor a docker-archive.
    #[error("{path}: not an image archive: {why}")]
    UnknownFormat { path: String, why: String },
    /// The outer archive or a manifest names something unsafe (`..`, absolute, through a link).
    #[error("unsafe archive member {name:?}: {why}")]
    UnsafeArchive { name: String, why: String },
    /// A blob or file the manifests refer to is not in the archive.
    #[error("{what} is missing from the archive ({path})")]
    Missing { what: String, path: String },
    /// Content does not hash to the digest that names it.
    #[error("{what}: content does not match its digest: expected {expected}, got {actual}")]
    DigestMismatch {
        what: String,
        expected: Digest,
        actual: Digest,
    },
    /// A blob's size differs from its descriptor's.
    #[error("{what}: the manifest declares {expected} bytes but the blob has {actual}")]
    SizeMismatch {
        what: String,
        expected: u64,
        actual: u64,
    },
    #[error("{what}: unsupported media type {media_type:?}")]
    UnsupportedMediaType { what: String, media_type: String },
    /// Malformed metadata (JSON that does not parse, counts that do not agree, ...).
    #[error("invalid {what}: {why}")]
    Invalid { what: String, why: String },
    #[error("{path}: no image for {platform} in the archive (found: {found})")]
    NoMatchingPlatform {
        path: String,
        platform: String,
        found: String,
    },
    #[error("invalid reference format {reference:?}: {why}")]
    BadReference { reference: String, why: String },
    #[error("no such image: {0}")]
    NotFound(String),
    #[error("image id prefix {prefix:?} is ambiguous: it matches {matches}")]
    Ambiguous { prefix: String, matches: String },
    #[error(
        "conflict: unable to delete {id} (must be forced): image is referenced by several tags: {tags}"
    )]
    Conflict { id: String, tags: String },
    /// `rmi` of an image that containers, mounts or writable layers still use.
    #[error(
        "conflict: unable to delete {image}: it is in use by {users} (stop or remove them first, or `rmi -f` to untag it now and free its layers when the last of them is gone)"
    )]
    InUse { image: String, users: String },
    /// The store's own metadata is damaged.
    #[error("corrupt image store: {0}")]
    Store(String),
}

impl ImageError {
    pub(crate) fn io(path: &Path, error: io::Error) -> Self {
        ImageError::Io {
            path: path.display().to_string(),
            error,
        }
    }

    pub(crate) fn invalid(what: impl Into<String>, why: impl ToString) -> Self {
        ImageError::Invalid {
            what: what.into(),
            why: why.to_string(),
        }
    }

    pub(crate) fn layer(blob: impl Into<String>, error: LayerError) -> Self {
        match error {
            // The one check `stage` does against the config: say which digest did not match.
            LayerError::DigestMismatch { expected, actual } => ImageError::DigestMismatch {
                what: format!(
                    "layer {} (uncompressed content vs. the diff_id in the image config)",
                    blob.into()
                ),
                expected,
                actual,
            },
            error => ImageError::Layer {
                blob: blob.into(),
                error,
            },
        }
    }
}

//! Diffing: what a container's writable layer changed (`diff`, `commit`, `export`), what each
//! layer of an image adds, changes, deletes and wastes (`image layers`, `image check`), and
//! what differs between two images (`image diff`).
//!
//! Everything here reads indexes and the writable layer's records; nothing mounts or extracts.
//! The change set itself (computing it from a writable view, writing it as a tar, asking the
//! shim of a running container for it) is `fs::changes`, below; this module adds what needs
//! images and containers: reaching a container's view (`open`), and the image reports.

pub mod image;
pub mod layers;
pub mod open;

pub use crate::fs::changes::{Change, ChangeKind};

/// Why a diff, commit, save or export failed.
#[derive(Debug, thiserror::Error)]
pub enum DiffError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("the container's shim did not answer: {0}")]
    Shim(String),
    #[error("container {0} is running: stop it first")]
    Running(String),
    #[error(transparent)]
    Changes(#[from] crate::fs::changes::ChangesError),
    #[error(transparent)]
    Layer(#[from] crate::layer::LayerError),
    #[error(transparent)]
    Mount(#[from] crate::fs::MountError),
    #[error(transparent)]
    Image(#[from] crate::image::ImageError),
    #[error(transparent)]
    Runtime(#[from] crate::runtime::RuntimeError),
}

impl DiffError {
    pub(crate) fn io(path: impl std::fmt::Display, source: std::io::Error) -> Self {
        DiffError::Io {
            path: path.to_string(),
            source,
        }
    }
}

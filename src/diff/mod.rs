//! Diffing: what a container's writable layer changed (`diff`, `commit`, `export`), what each
//! layer of an image adds, changes, deletes and wastes (`image layers`, `image check`), and
//! what differs between two images (`image diff`).
//!
//! Everything here reads indexes and the writable layer's records; nothing mounts or extracts.
//! A container's changes are computed from the records the writable layer already keeps (the
//! inodes it has records for and the directories it materialised), so the cost is
//! O(changes × fan-out of the directories on their paths), never a walk of the image.

pub mod container;
pub mod image;
pub mod layers;
pub mod open;
pub mod serve;
pub mod tar;

use serde::{Deserialize, Serialize};

pub use container::changes;

/// Docker's change kinds, numbered as its API numbers them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ChangeKind {
    Modify = 0,
    Add = 1,
    Delete = 2,
}

impl ChangeKind {
    /// Docker's letter: `C`, `A` or `D`.
    pub fn letter(self) -> char {
        match self {
            ChangeKind::Modify => 'C',
            ChangeKind::Add => 'A',
            ChangeKind::Delete => 'D',
        }
    }
}

/// One changed path of a container.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Change {
    pub kind: ChangeKind,
    /// Relative path, `/`-separated, no leading `/`.
    pub path: Vec<u8>,
    /// The inode now at the path (`None` for deletions; a `Delete` with an inode is a
    /// directory that replaced the one below, `opaque`).
    pub ino: Option<u64>,
    /// A directory that replaced a lower directory: nothing of the lower one shows through.
    pub opaque: bool,
}

impl Change {
    /// The path as Docker prints it (`/etc/passwd`).
    pub fn display_path(&self) -> String {
        format!("/{}", String::from_utf8_lossy(&self.path))
    }
}

/// Why a diff, commit, save or export failed.
#[derive(Debug, thiserror::Error)]
pub enum DiffError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("reading {path:?} from the container's file system: errno {errno}")]
    Read { path: String, errno: i32 },
    #[error("the container's shim did not answer: {0}")]
    Shim(String),
    #[error("container {0} is running: stop it first")]
    Running(String),
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

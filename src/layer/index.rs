//! The layer index: the truth about every path of one layer's metadata.
//!
//! Extraction writes only regular-file data to the host (as numbered data files); everything
//! else — ownership, modes, devices, symlink targets, xattrs, hard-link groups, whiteouts and
//! opaque markers — lives here. This file never touches the file system except to read or write
//! the one index file.

use std::io::{Read, Write};
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::LayerError;

/// Written at the start of every index file; bump `INDEX_VERSION` on any format change.
const INDEX_MAGIC: &[u8; 8] = b"STRATAIX";
const INDEX_VERSION: u32 = 1;

/// What kind of thing a path is in this layer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Kind {
    /// A directory. `opaque`: lower layers' contents of this directory are hidden.
    /// `implicit`: the tar had no entry of its own for it (only children), so a lower layer's
    /// directory at this path keeps its attributes.
    Dir {
        opaque: bool,
        implicit: bool,
    },
    /// A regular file. `file` names its data file (`data/<file>`, absent when `size == 0`);
    /// every name of a hard-link group shares one `file` and counts `nlink` names.
    File {
        size: u64,
        file: u32,
        nlink: u32,
    },
    Symlink {
        target: Vec<u8>,
    },
    Fifo,
    Socket,
    CharDev {
        major: u32,
        minor: u32,
    },
    BlockDev {
        major: u32,
        minor: u32,
    },
    /// `.wh.NAME`: the path is deleted from the layers below.
    Whiteout,
}

impl Kind {
    pub fn is_dir(&self) -> bool {
        matches!(self, Kind::Dir { .. })
    }
    /// Short name for messages.
    pub fn name(&self) -> &'static str {
        match self {
            Kind::Dir { .. } => "directory",
            Kind::File { .. } => "regular file",
            Kind::Symlink { .. } => "symlink",
            Kind::Fifo => "fifo",
            Kind::Socket => "socket",
            Kind::CharDev { .. } => "character device",
            Kind::BlockDev { .. } => "block device",
            Kind::Whiteout => "whiteout",
        }
    }
}

/// One path of a layer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// Relative path, components joined by `/`, no `.`/`..`/empty components; `""` is the root.
    pub path: Vec<u8>,
    pub kind: Kind,
    /// Permission bits including setuid, setgid and sticky (`& 0o7777`).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime: i64,
    pub mtime_nsec: u32,
    /// Extended attributes, sorted by name.
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

impl Entry {
    /// A directory no entry of the layer describes, only implied by a path below it (or the
    /// root when no layer has one): `0755`, root-owned, mtime 0, no xattrs.
    pub const fn implicit_dir(path: Vec<u8>) -> Entry {
        Entry {
            path,
            kind: Kind::Dir {
                opaque: false,
                implicit: true,
            },
            mode: 0o755,
            uid: 0,
            gid: 0,
            mtime: 0,
            mtime_nsec: 0,
            xattrs: Vec::new(),
        }
    }

    /// The last component of the path (empty for the root).
    pub fn name(&self) -> &[u8] {
        match self.path.iter().rposition(|&b| b == b'/') {
            Some(i) => &self.path[i + 1..],
            None => &self.path,
        }
    }

    /// The parent's path (`None` for the root).
    pub fn parent(&self) -> Option<&[u8]> {
        if self.path.is_empty() {
            return None;
        }
        Some(match self.path.iter().rposition(|&b| b == b'/') {
            Some(i) => &self.path[..i],
            None => b"",
        })
    }
}

/// All entries of one layer. Invariant: a directory's entry comes before its children's, and
/// each path appears once.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerIndex {
    pub entries: Vec<Entry>,
    /// Number of data files (`data/0` … `data/<n-1>`, those of empty files absent).
    pub files: u32,
}

impl LayerIndex {
    pub fn write_to(&self, path: &Path) -> Result<(), LayerError> {
        let body = bincode::serde::encode_to_vec(self, bincode::config::standard())
            .map_err(|e| LayerError::Index(e.to_string()))?;
        let mut f = std::fs::File::create(path).map_err(|e| LayerError::io(path, e))?;
        f.write_all(INDEX_MAGIC)
            .and_then(|_| f.write_all(&INDEX_VERSION.to_le_bytes()))
            .and_then(|_| f.write_all(&body))
            .map_err(|e| LayerError::io(path, e))
    }

    pub fn read_from(path: &Path) -> Result<Self, LayerError> {
        let mut buf = Vec::new();
        std::fs::File::open(path)
            .and_then(|mut f| f.read_to_end(&mut buf))
            .map_err(|e| LayerError::io(path, e))?;
        if buf.len() < 12 || &buf[..8] != INDEX_MAGIC {
            return Err(LayerError::Index(format!(
                "{}: not a strata layer index",
                path.display()
            )));
        }
        let version = u32::from_le_bytes([buf[8], buf[9], buf[10], buf[11]]);
        if version != INDEX_VERSION {
            return Err(LayerError::Index(format!(
                "{}: index version {version}, this strata reads {INDEX_VERSION}",
                path.display()
            )));
        }
        let (index, _) = bincode::serde::decode_from_slice(&buf[12..], bincode::config::standard())
            .map_err(|e| LayerError::Index(format!("{}: {e}", path.display())))?;
        Ok(index)
    }
}

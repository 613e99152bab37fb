//! A snapshot's record (`<root>/snapshotter/snapshots/<id>/info.json`): what containerd
//! knows of it (key, parent, kind, labels, times) and the layers it stands on. Written
//! atomically (temporary file, fsync, rename, fsync of the directory), so a crash leaves the
//! old record or the new one, never half of one.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use super::SnapshotError;
use crate::digest::Digest;

/// The record's file name inside a snapshot's directory.
pub const INFO_FILE: &str = "info.json";

/// containerd's snapshot kinds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    View,
    Active,
    Committed,
}

impl Kind {
    /// The name containerd's filters use (`kind==committed`).
    pub fn name(self) -> &'static str {
        match self {
            Kind::View => "view",
            Kind::Active => "active",
            Kind::Committed => "committed",
        }
    }
}

/// One snapshot.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// containerd's key (active, view) or name (committed).
    pub key: String,
    /// The parent's name; empty for none.
    pub parent: String,
    pub kind: Kind,
    #[serde(default)]
    pub labels: HashMap<String, String>,
    pub created: SystemTime,
    pub updated: SystemTime,
    /// The layers this snapshot's file system is made of, bottom first: the parent chain's,
    /// and for a committed snapshot its own on top.
    pub layers: Vec<Digest>,
    /// An extraction snapshot (an active snapshot of containerd's unpacker): its changes are
    /// the plain directory `upper/` that containerd's applier writes into (an `overlay`
    /// mount), not a writable layer. Absent in records of older versions: false.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub upper: bool,
}

impl Record {
    /// The directory name of a snapshot: keys are arbitrary strings (containerd's are
    /// `namespace/number/name`), so the directory is named by a hash of the key.
    pub fn dir_name(key: &str) -> String {
        Digest::of(key.as_bytes()).hex()[..32].to_string()
    }

    pub fn read(path: &Path) -> Result<Record, SnapshotError> {
        let bytes = std::fs::read(path).map_err(SnapshotError::io(path))?;
        serde_json::from_slice(&bytes).map_err(|e| SnapshotError::Record {
            path: path.to_path_buf(),
            why: e.to_string(),
        })
    }

    /// Writes the record into `dir` (which exists), atomically and durably.
    pub fn write(&self, dir: &Path) -> Result<(), SnapshotError> {
        let bytes = serde_json::to_vec_pretty(self).map_err(|e| SnapshotError::Record {
            path: dir.join(INFO_FILE),
            why: e.to_string(),
        })?;
        let mut tmp = tempfile::Builder::new()
            .prefix(".tmp-")
            .tempfile_in(dir)
            .map_err(SnapshotError::io(dir))?;
        tmp.write_all(&bytes)
            .and_then(|_| tmp.as_file().sync_all())
            .map_err(SnapshotError::io(tmp.path()))?;
        let path = dir.join(INFO_FILE);
        tmp.persist(&path)
            .map_err(|e| SnapshotError::io(&path)(e.error))?;
        sync_dir(dir)
    }
}

/// fsync of a directory (its entries are durable once this returns).
pub fn sync_dir(dir: &Path) -> Result<(), SnapshotError> {
    std::fs::File::open(dir)
        .and_then(|f| f.sync_all())
        .map_err(SnapshotError::io(dir))
}

/// Every readable record under `snapshots`, with its directory. A directory without a record
/// is a snapshot whose creation did not finish (`Cleanup` removes it); an unreadable record
/// is reported and kept (never deleted on a guess).
pub fn load_all(snapshots: &Path) -> Result<Vec<(PathBuf, Record)>, SnapshotError> {
    let mut out = Vec::new();
    let rd = match std::fs::read_dir(snapshots) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(SnapshotError::io(snapshots)(e)),
    };
    for e in rd {
        let e = e.map_err(SnapshotError::io(snapshots))?;
        let info = e.path().join(INFO_FILE);
        if !info.is_file() {
            continue;
        }
        match Record::read(&info) {
            Ok(r) => out.push((e.path(), r)),
            Err(err) => tracing::warn!(error = %err, "unreadable snapshot record skipped"),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_name_their_directory_by_key() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("one");
        std::fs::create_dir(&dir).unwrap();
        std::fs::create_dir(root.path().join("unfinished")).unwrap();
        let r = Record {
            key: "default/3/sha256:abc".into(),
            parent: "default/2/sha256:def".into(),
            kind: Kind::Committed,
            labels: HashMap::from([("a".to_string(), "b".to_string())]),
            created: SystemTime::UNIX_EPOCH,
            updated: SystemTime::now(),
            layers: vec![Digest::of(b"x")],
            upper: false,
        };
        r.write(&dir).unwrap();
        assert_eq!(Record::read(&dir.join(INFO_FILE)).unwrap(), r);
        assert_eq!(Record::dir_name(&r.key).len(), 32);
        assert_ne!(Record::dir_name("a"), Record::dir_name("b"));
        assert_eq!(load_all(root.path()).unwrap(), vec![(dir, r)]);
    }
}

//! The users of layers besides image records, and the one garbage-collection rule.
//!
//! **The rule.** A layer is deleted only when nothing uses it: no image record lists it and
//! no live *user* holds it. The users are
//! - a container, from `create` until `rm` (its writable layer sits on the image's layers);
//! - a live `strata mount`, read-only or `--rw`, while the process that serves it lives;
//! - a writable layer on disk (`mount --rw --layer DIR`), while `DIR` holds a writable layer
//!   made for those layers (it is useless without them);
//! - a snapshot of `strata snapshotter` (containerd's), while its directory exists: it holds
//!   its lower chain (and, committed, its own layer), which no image record lists.
//!
//! `rmi` refuses to delete an image that a user holds, and names the users; `rmi -f` untags
//! it and deletes its record, but its layers stay until the last user is gone. Collection runs
//! after every `rmi`, after `rm`, and when a mount ends; it frees whatever the rule allows.
//!
//! Owns `<root>/users/<key>.json`, one file per user. A user is recorded under the global
//! lock, and only while its image still exists, before it opens any layer; the collector
//! reads the records under the same lock, so it never deletes a layer in use. A record whose
//! user is gone (its process died, its directory was deleted) is stale: the collector ignores
//! and removes it, so a crash never pins layers for good. This module never opens a layer.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{ImageError, ImageRecord, ImageStore, RECORD_FILE, write_atomic};
use crate::digest::Digest;
use crate::sys;

const USERS_DIR: &str = "users";

/// Something that uses an image's layers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum User {
    /// A `strata mount` at `mountpoint`, served by process `pid` started at `start` (clock
    /// ticks since boot): alive while that process is.
    Mount {
        mountpoint: PathBuf,
        pid: i32,
        start: u64,
    },
    /// A container: alive while its state directory exists.
    Container {
        id: String,
        name: String,
        dir: PathBuf,
    },
    /// A writable layer directory: alive while it holds a writable layer of lower chain
    /// `chain` (deleted, or remade for another image, it needs these layers no more).
    WritableLayer { dir: PathBuf, chain: String },
    /// A snapshot of `strata snapshotter`: alive while its directory `dir` exists.
    Snapshot { key: String, dir: PathBuf },
}

impl User {
    /// The mount served by this process.
    pub fn this_mount(mountpoint: &Path) -> Self {
        let pid = std::process::id() as i32;
        User::Mount {
            mountpoint: mountpoint.to_path_buf(),
            pid,
            start: sys::process_start_time(pid).unwrap_or(0),
        }
    }

    /// The file name of its record: one record per mount point, container, layer directory.
    fn key(&self) -> String {
        let hash = |p: &Path| Digest::of(p.as_os_str().as_encoded_bytes()).hex()[..16].to_string();
        match self {
            User::Mount { mountpoint, .. } => format!("mount-{}", hash(mountpoint)),
            User::Container { id, .. } => format!("container-{id}"),
            User::WritableLayer { dir, .. } => format!("layer-{}", hash(dir)),
            User::Snapshot { dir, .. } => format!("snapshot-{}", hash(dir)),
        }
    }

    /// Whether the user still exists.
    pub fn alive(&self) -> bool {
        match self {
            User::Mount { pid, start, .. } => {
                sys::process_alive(*pid) && sys::process_start_time(*pid) == Some(*start)
            }
            User::Container { dir, .. } => dir.is_dir(),
            User::WritableLayer { dir, chain } => {
                crate::rwlayer::lower_chain(dir).as_deref() == Some(chain.as_str())
            }
            User::Snapshot { dir, .. } => dir.is_dir(),
        }
    }
}

impl fmt::Display for User {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            User::Mount {
                mountpoint, pid, ..
            } => write!(f, "mount {} (pid {pid})", mountpoint.display()),
            User::Container { id, name, .. } => {
                write!(f, "container {name} ({})", &id[..id.len().min(12)])
            }
            User::WritableLayer { dir, .. } => write!(f, "writable layer {}", dir.display()),
            User::Snapshot { key, .. } => write!(f, "containerd snapshot {key}"),
        }
    }
}

/// A user's record: which image's layers it holds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hold {
    pub user: User,
    /// The image it was made from (whose `rmi` it blocks); none for a snapshot, whose layers
    /// belong to no image record.
    #[serde(default)]
    pub image: Option<Digest>,
    /// The layers it needs, bottom → top.
    pub layers: Vec<Digest>,
}

impl ImageStore {
    fn users_dir(&self) -> PathBuf {
        self.root.join(USERS_DIR)
    }

    /// Records that `user` uses the layers of `image`, if the image is still in the store
    /// (else [`ImageError::NotFound`]). Call it before opening any of the layers: from then
    /// on no collection deletes them, until [`release`](Self::release) or the user's end.
    pub fn hold(&self, image: &ImageRecord, user: User) -> Result<Hold, ImageError> {
        let _g = self.lock_meta()?;
        if !self.image_dir(&image.id).join(RECORD_FILE).is_file() {
            return Err(ImageError::NotFound(image.id.to_string()));
        }
        self.write_hold(Hold {
            user,
            image: Some(image.id.clone()),
            layers: image.layers.clone(),
        })
    }

    /// Records that `user` uses `layers`, which belong to no image record (a snapshot's). The
    /// caller makes sure they cannot be collected before this returns: they are in use by a
    /// recorded user already, or the caller holds their layer locks.
    pub fn hold_layers(&self, user: User, layers: Vec<Digest>) -> Result<Hold, ImageError> {
        let _g = self.lock_meta()?;
        self.write_hold(Hold {
            user,
            image: None,
            layers,
        })
    }

    fn write_hold(&self, hold: Hold) -> Result<Hold, ImageError> {
        let dir = self.users_dir();
        std::fs::create_dir_all(&dir).map_err(|e| ImageError::io(&dir, e))?;
        let bytes = serde_json::to_vec_pretty(&hold)
            .map_err(|e| ImageError::Store(format!("cannot encode a layer user: {e}")))?;
        write_atomic(&dir.join(format!("{}.json", hold.user.key())), &bytes)?;
        tracing::debug!(user = %hold.user, image = ?hold.image, "layer user recorded");
        Ok(hold)
    }

    /// Forgets `user` (nothing when it was not recorded). Does not collect.
    pub fn release(&self, user: &User) -> Result<(), ImageError> {
        let _g = self.lock_meta()?;
        let p = self.users_dir().join(format!("{}.json", user.key()));
        match std::fs::remove_file(&p) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(ImageError::io(&p, e)),
        }
    }

    /// Every live user, sorted by what it is.
    pub fn users(&self) -> Result<Vec<Hold>, ImageError> {
        if !self.users_dir().is_dir() {
            return Ok(Vec::new());
        }
        let _g = self.lock_meta()?;
        self.users_locked(false)
    }

    /// Live users (under the global lock); with `prune`, stale records are deleted. Fails
    /// rather than guess when a record is unreadable.
    pub(super) fn users_locked(&self, prune: bool) -> Result<Vec<Hold>, ImageError> {
        let dir = self.users_dir();
        let rd = match std::fs::read_dir(&dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(ImageError::io(&dir, e)),
        };
        let mut out = Vec::new();
        for e in rd {
            let e = e.map_err(|e| ImageError::io(&dir, e))?;
            let path = e.path();
            if path.extension().is_none_or(|x| x != "json") {
                continue; // a `.tmp-` file of a writer that died
            }
            let bytes = std::fs::read(&path).map_err(|e| ImageError::io(&path, e))?;
            let hold: Hold = serde_json::from_slice(&bytes)
                .map_err(|e| ImageError::Store(format!("{}: {e}", path.display())))?;
            if hold.user.alive() {
                out.push(hold);
            } else if prune {
                tracing::debug!(user = %hold.user, "stale layer user removed");
                let _ = std::fs::remove_file(&path);
            }
        }
        out.sort_by_key(|h| h.user.to_string());
        Ok(out)
    }
}

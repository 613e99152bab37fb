//! Volumes: directories under `<root>/volumes/<name>/_data` that containers bind-mount.
//! Named volumes live until `volume rm` (refused while a container uses them); anonymous ones
//! (64 hex digits) also go with `rm -v` / `--rm` of the container that created them.

use std::fs::File;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::RuntimeError;
use super::store::{io_err, read_json, write_json};
use crate::sys;

const META: &str = "volume.json";
const DATA: &str = "_data";

/// What `volume inspect` shows (Docker's field names).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "PascalCase")]
pub struct VolumeInfo {
    pub name: String,
    pub driver: String,
    pub mountpoint: PathBuf,
    pub created_at: String,
    pub scope: String,
    #[serde(default)]
    pub anonymous: bool,
}

#[derive(Debug, Clone)]
pub struct Volumes {
    dir: PathBuf,
}

impl Volumes {
    pub fn open(root: &Path) -> Result<Self, RuntimeError> {
        let dir = root.join("volumes");
        std::fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        Ok(Volumes { dir })
    }

    /// Held while volumes are created, looked up for use, or removed.
    pub fn lock(&self) -> Result<File, RuntimeError> {
        let p = self.dir.join(".lock");
        sys::lock_file(&p).map_err(io_err(&p))
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Creates the volume `name` (a random one when `None`), or returns it if it exists.
    /// Call with [`Volumes::lock`] held.
    pub fn create(&self, name: Option<&str>, anonymous: bool) -> Result<VolumeInfo, RuntimeError> {
        let name = match name {
            Some(n) => {
                if !super::names::valid_name(n) {
                    return Err(RuntimeError::InvalidArg {
                        what: "volume name",
                        value: n.into(),
                        why: "must match [a-zA-Z0-9][a-zA-Z0-9_.-]+".into(),
                    });
                }
                n.to_string()
            }
            None => super::names::new_id().map_err(io_err(&self.dir))?,
        };
        if let Ok(v) = self.get(&name) {
            return Ok(v);
        }
        let dir = self.path(&name);
        let data = dir.join(DATA);
        std::fs::create_dir_all(&data).map_err(io_err(&data))?;
        let info = VolumeInfo {
            name: name.clone(),
            driver: "local".into(),
            mountpoint: data,
            created_at: super::time::now(),
            scope: "local".into(),
            anonymous,
        };
        write_json(&dir.join(META), &info)?;
        Ok(info)
    }

    pub fn get(&self, name: &str) -> Result<VolumeInfo, RuntimeError> {
        if !super::names::valid_name(name) {
            return Err(RuntimeError::NoSuchVolume(name.into()));
        }
        let meta = self.path(name).join(META);
        if !meta.exists() {
            return Err(RuntimeError::NoSuchVolume(name.into()));
        }
        read_json(&meta)
    }

    pub fn list(&self) -> Result<Vec<VolumeInfo>, RuntimeError> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(&self.dir).map_err(io_err(&self.dir))? {
            let e = e.map_err(io_err(&self.dir))?;
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') {
                continue;
            }
            if let Ok(v) = self.get(&name) {
                out.push(v);
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// Deletes the volume and its data. The caller checks that nothing uses it.
    pub fn remove(&self, name: &str) -> Result<(), RuntimeError> {
        self.get(name)?;
        let dir = self.path(name);
        // Drop the record first: a crash half-way leaves no volume that looks complete.
        let meta = dir.join(META);
        std::fs::remove_file(&meta).map_err(io_err(&meta))?;
        std::fs::remove_dir_all(&dir).map_err(io_err(&dir))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_get_list_remove() {
        let tmp = tempfile::tempdir().unwrap();
        let v = Volumes::open(tmp.path()).unwrap();
        let a = v.create(Some("data"), false).unwrap();
        assert!(a.mountpoint.ends_with("volumes/data/_data") && a.mountpoint.is_dir());
        std::fs::write(a.mountpoint.join("f"), b"x").unwrap();
        assert_eq!(
            v.create(Some("data"), false).unwrap(),
            a,
            "create is idempotent"
        );
        let anon = v.create(None, true).unwrap();
        assert_eq!(anon.name.len(), 64);
        assert_eq!(v.list().unwrap().len(), 2);
        v.remove("data").unwrap();
        assert!(matches!(v.get("data"), Err(RuntimeError::NoSuchVolume(_))));
        assert!(v.create(Some("../x"), false).is_err());
    }
}

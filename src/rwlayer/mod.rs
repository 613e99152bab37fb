//! The writable layer's store of record: one sled database plus per-inode backing files.
//!
//! Owns the on-disk format of a writable layer directory:
//! - `STRATA_RWLAYER` — marker: format version and the digest of the lower layer chain it sits
//!   on (upper records refer to lower inode numbers, so it must never be mounted on another).
//! - `lock` — flock'ed by the one process serving the layer; holds that process's pid.
//! - `db/` — sled: inode records, directory entries of materialised directories, chunk maps.
//! - `data/<ino>` — file data of inodes whose data lives (wholly or partly) in this layer;
//!   small files keep their bytes inline in their inode record instead (no file at all).
//!
//! It stores and loads records; what they mean (overlay semantics, POSIX rules) is `fs::view`'s
//! business. It never touches lower layers.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::sys;

const MARKER: &str = "STRATA_RWLAYER";
/// Format 2 added inline file data; format 1 layers are read as they are.
const FORMAT: u32 = 2;
const READS: [u32; 2] = [1, 2];
/// sled's page cache; its default (1 GiB) is far more than a container layer needs. The view
/// loads every record at mount and reads back only small files' bytes, so sled needs its cache
/// for the leaves it writes and the hot small files; 8 MiB instead of 32 lowered the daemon's
/// peak RSS after a 10k-file untar by a fifth.
const CACHE_BYTES: u64 = 8 << 20;
/// Allocations from this size up get mappings of their own in a process that serves writable
/// layers (see [`tune_allocator`]).
const MMAP_THRESHOLD: usize = 256 << 10;
/// malloc arenas in a process that serves writable layers (see [`tune_allocator`]).
const ARENAS: usize = 2;

/// Call once at the start of a process that serves writable layers (a `mount --rw` daemon,
/// a container's shim, the snapshotter), before it starts threads. sled's page tables are
/// multi-MiB zeroed arrays that stay almost empty, and glibc, once it has raised its mmap
/// threshold, carves them from the heap and writes the zeros — resident at once: a fixed
/// threshold keeps them as untouched mappings. And the FUSE threads, the write-behind thread
/// and sled's threads each churn through memory (records, batches, tree nodes): with an arena
/// per thread each keeps its own high-water mark resident; with two they reuse each other's
/// free memory.
pub fn tune_allocator() {
    sys::malloc_mmap_threshold(MMAP_THRESHOLD);
    sys::malloc_arena_max(ARENAS);
}

/// How long `open` waits for sled's own file lock, which a database of this layer that this
/// process has just closed can hold for a moment (sled's flusher thread lets it go when it
/// ends). The layer's lock (`lock` in the directory) is held by then: no other process can
/// be the one holding it.
const SLED_LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

fn open_db(db_path: &Path) -> Result<sled::Db, RwError> {
    let started = std::time::Instant::now();
    loop {
        match sled::Config::new()
            .path(db_path)
            .cache_capacity(CACHE_BYTES)
            .open()
        {
            Ok(db) => return Ok(db),
            // sled says so only in words (an `Other` I/O error).
            Err(sled::Error::Io(e))
                if e.to_string().starts_with("could not acquire lock")
                    && started.elapsed() < SLED_LOCK_WAIT =>
            {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            Err(e) => {
                return Err(RwError::Database {
                    path: db_path.to_path_buf(),
                    why: e.to_string(),
                });
            }
        }
    }
}

/// Copy-up granularity: writing one byte into a lower file copies at most this much.
pub const CHUNK: u64 = 64 * 1024;
/// First inode number handed to inodes created in this layer; lower inodes are below.
pub const FIRST_UPPER_INO: u64 = 1 << 32;

#[derive(Debug, thiserror::Error)]
pub enum RwError {
    #[error("{0} is not a strata writable layer (it is a file)")]
    NotADirectory(PathBuf),
    #[error(
        "{0} is not a strata writable layer (it is a non-empty directory without {MARKER}); refusing to touch it"
    )]
    Foreign(PathBuf),
    #[error("writable layer {path} is in use by PID {pid}")]
    InUse { path: PathBuf, pid: String },
    #[error(
        "writable layer {path} was made for another image (lower layers {found}, this image has {expected})"
    )]
    OtherImage {
        path: PathBuf,
        found: String,
        expected: String,
    },
    #[error("writable layer {path} has format {found}, this strata reads {READS:?}")]
    Format { path: PathBuf, found: String },
    #[error("writable layer database {path}: {why}")]
    Database { path: PathBuf, why: String },
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> RwError + '_ {
    move |source| RwError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The lower chain the writable layer at `dir` was made for (its marker's `lower`), or `None`
/// when `dir` holds no writable layer. Reads the marker only (no lock, no database): the image
/// store asks it to know whether a layer on disk still needs its image's layers.
pub fn lower_chain(dir: &Path) -> Option<String> {
    let text = std::fs::read_to_string(dir.join(MARKER)).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("lower ").map(|v| v.trim().to_string()))
}

/// Seconds and nanoseconds since the epoch.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Ts {
    pub sec: i64,
    pub nsec: u32,
}

impl Ts {
    pub fn now() -> Self {
        let d = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        Ts {
            sec: d.as_secs() as i64,
            nsec: d.subsec_nanos(),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum FileKind {
    Dir,
    File,
    Symlink,
    Fifo,
    Socket,
    CharDev,
    BlockDev,
}

/// Where a regular file's bytes are.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Data {
    /// Not a regular file, or an empty one never written.
    None,
    /// Unchanged lower data (only metadata was changed): `data/<file>` of lower layer `layer`.
    Lower { layer: u16, file: u32 },
    /// Chunks marked in the chunk map are in `data/<ino>`, the rest still in the lower file.
    Partial {
        layer: u16,
        file: u32,
        lower_size: u64,
    },
    /// All bytes are in `data/<ino>`.
    Backing,
    /// All bytes are here, in the record (small files; no backing file).
    Inline(Vec<u8>),
}

/// An inode as the writable layer knows it: created here, or a lower inode changed here
/// (same inode number, so `st_ino` never changes on copy-up).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Inode {
    pub kind: FileKind,
    /// Permission bits with setuid/setgid/sticky.
    pub perm: u16,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub atime: Ts,
    pub mtime: Ts,
    pub ctime: Ts,
    pub nlink: u32,
    pub rdev: u32,
    /// Directories: the parent (for `..` and the rename ancestry check).
    pub parent: u64,
    /// Symlinks: the target.
    pub target: Vec<u8>,
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
    pub data: Data,
    /// Directories: the entries live in this layer (`d` keys), not in the lower tree.
    pub materialized: bool,
}

/// Everything a mount needs from the layer, loaded once: O(changes), not O(tree). Small files'
/// bytes stay in the database: their records come with an empty [`Data::Inline`] payload and
/// their inodes in `inline_left`; [`RwLayer::inline_data`] reads the bytes.
#[derive(Debug, Default)]
pub struct Loaded {
    pub inodes: HashMap<u64, Inode>,
    pub inline_left: Vec<u64>,
    pub dirs: HashMap<u64, BTreeMap<Box<[u8]>, u64>>,
    pub chunks: HashMap<u64, Vec<u8>>,
    pub next_ino: u64,
}

/// One atomic group of record changes.
#[derive(Default)]
pub struct Batch(sled::Batch, u64);

fn key(tag: u8, ino: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(9);
    k.push(tag);
    k.extend_from_slice(&ino.to_be_bytes());
    k
}

fn enc<T: Serialize>(v: &T) -> Vec<u8> {
    // Encoding plain structs into a Vec cannot fail.
    bincode::serde::encode_to_vec(v, bincode::config::standard()).unwrap_or_default()
}

impl Batch {
    /// Bytes of the records put so far.
    pub fn bytes(&self) -> u64 {
        self.1
    }
    pub fn put_inode(&mut self, ino: u64, inode: &Inode) {
        let v = enc(inode);
        self.1 += 9 + v.len() as u64;
        self.0.insert(key(b'i', ino), v);
    }
    pub fn del_inode(&mut self, ino: u64) {
        self.0.remove(key(b'i', ino));
        self.0.remove(key(b'c', ino));
    }
    pub fn put_dirent(&mut self, dir: u64, name: &[u8], ino: u64) {
        let mut k = key(b'd', dir);
        k.extend_from_slice(name);
        self.1 += k.len() as u64 + 8;
        self.0.insert(k, &ino.to_be_bytes());
    }
    pub fn del_dirent(&mut self, dir: u64, name: &[u8]) {
        let mut k = key(b'd', dir);
        k.extend_from_slice(name);
        self.0.remove(k);
    }
    pub fn put_chunks(&mut self, ino: u64, map: &[u8]) {
        self.1 += 9 + map.len() as u64;
        self.0.insert(key(b'c', ino), map);
    }
    pub fn del_chunks(&mut self, ino: u64) {
        self.0.remove(key(b'c', ino));
    }
    pub fn set_next_ino(&mut self, next: u64) {
        self.0.insert(&b"m/next_ino"[..], &next.to_be_bytes());
    }
}

/// An open writable layer. Only one process at a time holds it (see `lock`).
pub struct RwLayer {
    dir: PathBuf,
    db: sled::Db,
    _lock: File,
}

impl RwLayer {
    /// Opens (creating it in a missing or empty directory) the writable layer at `dir` for the
    /// lower chain `lower` (a digest naming the image's layers). Refuses anything that is not
    /// a strata writable layer of that chain, without modifying it.
    pub fn open(dir: &Path, lower: &str) -> Result<Self, RwError> {
        match std::fs::metadata(dir) {
            Ok(m) if !m.is_dir() => return Err(RwError::NotADirectory(dir.to_path_buf())),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                std::fs::create_dir_all(dir).map_err(io_err(dir))?
            }
            Err(e) => {
                return Err(RwError::Io {
                    path: dir.to_path_buf(),
                    source: e,
                });
            }
        }
        let marker = dir.join(MARKER);
        let fresh = !marker.exists();
        // Without the marker only what a creation killed half-way leaves may be there: the
        // lock file, an empty `data/`, the marker's temporary file. Anything else is not ours.
        if fresh && !only_creation_debris(dir).map_err(io_err(dir))? {
            return Err(RwError::Foreign(dir.to_path_buf()));
        }
        let lock_path = dir.join("lock");
        let mut lock = match sys::try_lock_file(&lock_path).map_err(io_err(&lock_path))? {
            Some(f) => f,
            None => {
                let pid = std::fs::read_to_string(&lock_path).unwrap_or_default();
                let pid = if pid.trim().is_empty() {
                    "?".into()
                } else {
                    pid.trim().to_string()
                };
                return Err(RwError::InUse {
                    path: dir.to_path_buf(),
                    pid,
                });
            }
        };
        // Who holds it, for the "in use" message of others: informational, so a full disk
        // (a `diff` of a stopped container only reads) does not make it fail.
        if lock.set_len(0).is_ok() {
            let _ = write!(lock, "{}", std::process::id());
        }

        if fresh {
            std::fs::create_dir_all(dir.join("data")).map_err(io_err(dir))?;
            let tmp = dir.join(format!("{MARKER}.tmp"));
            std::fs::write(&tmp, format!("format {FORMAT}\nlower {lower}\n"))
                .map_err(io_err(&tmp))?;
            std::fs::rename(&tmp, &marker).map_err(io_err(&marker))?;
        } else {
            let mut text = String::new();
            File::open(&marker)
                .and_then(|mut f| f.read_to_string(&mut text))
                .map_err(io_err(&marker))?;
            let field = |name: &str| {
                text.lines()
                    .find_map(|l| l.strip_prefix(name).map(|v| v.trim().to_string()))
                    .unwrap_or_default()
            };
            if !READS.iter().any(|f| field("format ") == f.to_string()) {
                return Err(RwError::Format {
                    path: dir.to_path_buf(),
                    found: field("format "),
                });
            }
            if field("lower ") != lower {
                return Err(RwError::OtherImage {
                    path: dir.to_path_buf(),
                    found: field("lower "),
                    expected: lower.into(),
                });
            }
            if field("format ") != FORMAT.to_string() {
                // From now on records may use this format's additions: say so, atomically.
                let tmp = dir.join(format!("{MARKER}.tmp"));
                std::fs::write(&tmp, format!("format {FORMAT}\nlower {lower}\n"))
                    .map_err(io_err(&tmp))?;
                std::fs::rename(&tmp, &marker).map_err(io_err(&marker))?;
            }
        }
        let db_path = dir.join("db");
        let db = open_db(&db_path)?;
        Ok(RwLayer {
            dir: dir.to_path_buf(),
            db,
            _lock: lock,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn db_err(&self, e: impl std::fmt::Display) -> RwError {
        RwError::Database {
            path: self.dir.join("db"),
            why: e.to_string(),
        }
    }

    /// Reads every record (small files' bytes excepted: see [`Loaded`]).
    pub fn load(&self) -> Result<Loaded, RwError> {
        let mut l = Loaded {
            next_ino: FIRST_UPPER_INO,
            ..Default::default()
        };
        for kv in self.db.iter() {
            let (k, v) = kv.map_err(|e| self.db_err(e))?;
            let ino = || {
                k.get(1..9)
                    .and_then(|b| b.try_into().ok())
                    .map(u64::from_be_bytes)
            };
            match k.first() {
                Some(b'i') => {
                    let ino = ino().ok_or_else(|| self.db_err("short inode key"))?;
                    let mut inode: Inode = self.decode(ino, &v)?;
                    if let Data::Inline(bytes) = &mut inode.data
                        && !bytes.is_empty()
                    {
                        *bytes = Vec::new();
                        l.inline_left.push(ino);
                    }
                    l.inodes.insert(ino, inode);
                }
                Some(b'd') => {
                    let dir = ino().ok_or_else(|| self.db_err("short dirent key"))?;
                    let child: [u8; 8] = v
                        .as_ref()
                        .try_into()
                        .map_err(|_| self.db_err("bad dirent"))?;
                    l.dirs
                        .entry(dir)
                        .or_default()
                        .insert(k[9..].into(), u64::from_be_bytes(child));
                }
                Some(b'c') => {
                    let ino = ino().ok_or_else(|| self.db_err("short chunk key"))?;
                    l.chunks.insert(ino, v.to_vec());
                }
                Some(b'm') if k.as_ref() == b"m/next_ino" => {
                    let n: [u8; 8] = v
                        .as_ref()
                        .try_into()
                        .map_err(|_| self.db_err("bad next_ino"))?;
                    l.next_ino = u64::from_be_bytes(n);
                }
                _ => {}
            }
        }
        Ok(l)
    }

    fn decode(&self, ino: u64, v: &[u8]) -> Result<Inode, RwError> {
        bincode::serde::decode_from_slice(v, bincode::config::standard())
            .map(|(inode, _)| inode)
            .map_err(|e| self.db_err(format!("inode {ino}: {e}")))
    }

    /// The bytes of a small file as the last applied batch left them in its record: `None`
    /// when the record is gone or holds no inline data. Served from sled's cache when hot.
    pub fn inline_data(&self, ino: u64) -> Result<Option<Vec<u8>>, RwError> {
        let Some(v) = self.db.get(key(b'i', ino)).map_err(|e| self.db_err(e))? else {
            return Ok(None);
        };
        Ok(match self.decode(ino, &v)?.data {
            Data::Inline(bytes) => Some(bytes),
            _ => None,
        })
    }

    /// Applies a batch atomically (durable at the next [`flush`](Self::flush)).
    pub fn apply(&self, b: Batch) -> Result<(), RwError> {
        self.db.apply_batch(b.0).map_err(|e| self.db_err(e))
    }

    /// Makes every applied batch durable.
    pub fn flush(&self) -> Result<(), RwError> {
        self.db.flush().map(drop).map_err(|e| self.db_err(e))
    }

    /// The backing file of inode `ino`.
    pub fn backing_path(&self, ino: u64) -> PathBuf {
        self.dir.join("data").join(ino.to_string())
    }

    /// The inode numbers that have a backing file.
    pub fn backing_files(&self) -> Result<Vec<u64>, RwError> {
        let data = self.dir.join("data");
        let mut out = Vec::new();
        for e in std::fs::read_dir(&data).map_err(io_err(&data))? {
            let e = e.map_err(io_err(&data))?;
            if let Some(ino) = e.file_name().to_str().and_then(|n| n.parse().ok()) {
                out.push(ino);
            }
        }
        Ok(out)
    }
}

/// Whether `dir` holds nothing but what [`RwLayer::open`] makes before the marker.
fn only_creation_debris(dir: &Path) -> io::Result<bool> {
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        let name = e.file_name();
        let ok = match name.to_str() {
            Some("lock") => e.file_type()?.is_file(),
            Some("data") => {
                e.file_type()?.is_dir() && std::fs::read_dir(e.path())?.next().is_none()
            }
            Some(n) => n == format!("{MARKER}.tmp"),
            None => false,
        };
        if !ok {
            return Ok(false);
        }
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inode() -> Inode {
        Inode {
            kind: FileKind::File,
            perm: 0o644,
            uid: 1,
            gid: 2,
            size: 3,
            atime: Ts::default(),
            mtime: Ts { sec: 5, nsec: 6 },
            ctime: Ts::default(),
            nlink: 1,
            rdev: 0,
            parent: 0,
            target: vec![],
            xattrs: vec![(b"user.a".to_vec(), b"b".to_vec())],
            data: Data::Backing,
            materialized: false,
        }
    }

    #[test]
    fn records_round_trip_across_reopen() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("layer");
        {
            let l = RwLayer::open(&dir, "chain").unwrap();
            let mut b = Batch::default();
            b.put_inode(FIRST_UPPER_INO, &inode());
            b.put_dirent(1, b"name", FIRST_UPPER_INO);
            b.put_chunks(7, &[1, 2]);
            b.set_next_ino(FIRST_UPPER_INO + 1);
            l.apply(b).unwrap();
            l.flush().unwrap();
        }
        let l = RwLayer::open(&dir, "chain").unwrap();
        let got = l.load().unwrap();
        assert_eq!(got.inodes[&FIRST_UPPER_INO], inode());
        assert_eq!(got.dirs[&1][&b"name"[..]], FIRST_UPPER_INO);
        assert_eq!(got.chunks[&7], vec![1, 2]);
        assert_eq!(got.next_ino, FIRST_UPPER_INO + 1);
    }

    #[test]
    fn small_files_bytes_stay_in_the_database_at_load() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("layer");
        let small = Inode {
            size: 5,
            data: Data::Inline(b"bytes".to_vec()),
            ..inode()
        };
        let empty = Inode {
            size: 0,
            data: Data::Inline(vec![]),
            ..inode()
        };
        {
            let l = RwLayer::open(&dir, "chain").unwrap();
            let mut b = Batch::default();
            b.put_inode(FIRST_UPPER_INO, &small);
            b.put_inode(FIRST_UPPER_INO + 1, &empty);
            b.put_inode(FIRST_UPPER_INO + 2, &inode());
            l.apply(b).unwrap();
            l.flush().unwrap();
        }
        let l = RwLayer::open(&dir, "chain").unwrap();
        let got = l.load().unwrap();
        assert_eq!(got.inline_left, vec![FIRST_UPPER_INO]);
        assert_eq!(got.inodes[&FIRST_UPPER_INO].data, Data::Inline(vec![]));
        assert_eq!(got.inodes[&(FIRST_UPPER_INO + 1)], empty);
        let read = |ino| l.inline_data(ino).unwrap();
        assert_eq!(read(FIRST_UPPER_INO), Some(b"bytes".to_vec()));
        assert_eq!(read(FIRST_UPPER_INO + 1), Some(vec![]));
        assert_eq!(read(FIRST_UPPER_INO + 2), None, "a backing-file record");
        assert_eq!(read(FIRST_UPPER_INO + 3), None, "no record");
    }

    #[test]
    fn a_creation_killed_before_the_marker_is_finished_next_time() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("l");
        std::fs::create_dir_all(dir.join("data")).unwrap();
        std::fs::write(dir.join("lock"), b"4242").unwrap();
        std::fs::write(dir.join(format!("{MARKER}.tmp")), b"format 2\n").unwrap();
        drop(RwLayer::open(&dir, "c").unwrap());
        assert!(dir.join(MARKER).exists());
        // A file in data/ is somebody's data: not debris.
        let other = tmp.path().join("o");
        std::fs::create_dir_all(other.join("data")).unwrap();
        std::fs::write(other.join("data/7"), b"x").unwrap();
        assert!(matches!(
            RwLayer::open(&other, "c"),
            Err(RwError::Foreign(_))
        ));
    }

    #[test]
    fn refuses_foreign_busy_and_mismatched_layers() {
        let tmp = tempfile::tempdir().unwrap();
        let foreign = tmp.path().join("foreign");
        std::fs::create_dir(&foreign).unwrap();
        std::fs::write(foreign.join("x"), b"mine").unwrap();
        assert!(matches!(
            RwLayer::open(&foreign, "c"),
            Err(RwError::Foreign(_))
        ));
        assert_eq!(
            std::fs::read_dir(&foreign).unwrap().count(),
            1,
            "foreign dir was modified"
        );

        let file = tmp.path().join("file");
        std::fs::write(&file, b"x").unwrap();
        assert!(matches!(
            RwLayer::open(&file, "c"),
            Err(RwError::NotADirectory(_))
        ));

        let dir = tmp.path().join("l");
        let held = RwLayer::open(&dir, "c").unwrap();
        match RwLayer::open(&dir, "c") {
            Err(RwError::InUse { pid, .. }) => assert_eq!(pid, std::process::id().to_string()),
            other => panic!("expected InUse, got {:?}", other.err()),
        }
        drop(held);
        assert!(matches!(
            RwLayer::open(&dir, "other"),
            Err(RwError::OtherImage { .. })
        ));
    }
}

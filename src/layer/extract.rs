//! Safe extraction of one layer tar stream into a staging directory plus its index.
//!
//! This is hostile-input code. It writes nothing but numbered regular files `data/<n>` inside
//! the staging directory it is given (so no entry name, symlink or hard link can steer a write
//! anywhere else), never creates special files, never chowns, and rejects the whole layer on the
//! first thing it does not trust. Metadata goes to the [`LayerIndex`].

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::Path;

use super::LayerError;
use super::index::{Entry, Kind, LayerIndex};
use super::marker::{OPAQUE_MARKER, WHITEOUT_PREFIX};

/// Largest regular file a layer may hold (the header's size field can claim up to 2^95).
const MAX_FILE_SIZE: u64 = 1 << 40;
/// Largest device numbers the kernel's `dev_t` encoding for FUSE carries.
pub(super) const MAX_MAJOR: u64 = (1 << 12) - 1;
pub(super) const MAX_MINOR: u64 = (1 << 20) - 1;
/// Longest name component Linux accepts.
const MAX_NAME: usize = 255;
/// Longest path (PATH_MAX minus room for a mount point) and symlink target.
pub(super) const MAX_PATH: usize = 4000;
/// Largest total xattr payload on one entry (the kernel's XATTR_SIZE_MAX).
pub(super) const MAX_XATTR: usize = 64 * 1024;

/// Reads a whole uncompressed tar stream and extracts it into `dir` (which must exist and be
/// empty): regular-file data to `dir/data/<n>`, the index to the returned value.
pub fn extract(tar_stream: impl Read, dir: &Path) -> Result<LayerIndex, LayerError> {
    let data = dir.join("data");
    std::fs::create_dir(&data).map_err(|e| LayerError::io(&data, e))?;
    let mut b = Builder {
        data: &data,
        index: LayerIndex::default(),
        by_path: HashMap::new(),
    };
    let mut archive = tar::Archive::new(tar_stream);
    let entries = archive.entries().map_err(LayerError::tar)?;
    for entry in entries {
        let entry = entry.map_err(LayerError::tar)?;
        b.add(entry)?;
    }
    b.finish()
}

struct Builder<'a> {
    data: &'a Path,
    index: LayerIndex,
    /// Path → position in `index.entries`.
    by_path: HashMap<Vec<u8>, usize>,
}

impl Builder<'_> {
    fn add<R: Read>(&mut self, mut entry: tar::Entry<'_, R>) -> Result<(), LayerError> {
        let raw_path = entry.path_bytes().into_owned();
        let path = normalize(&raw_path)?;
        let header = entry.header().clone();
        let etype = header.entry_type();
        let bad = |why: String| LayerError::Hostile {
            path: show(&raw_path),
            why,
        };

        // PAX records: xattrs and sub-second mtimes.
        let mut xattrs: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
        let mut mtime_nsec = 0u32;
        let mut pax_mtime = None;
        if let Some(pax) = entry.pax_extensions().map_err(LayerError::tar)? {
            for ext in pax {
                let ext = ext.map_err(LayerError::tar)?;
                let key = ext.key_bytes();
                if let Some(name) = key.strip_prefix(b"SCHILY.xattr.") {
                    xattrs.retain(|(n, _)| n.as_slice() != name);
                    xattrs.push((name.to_vec(), ext.value_bytes().to_vec()));
                } else if key == b"mtime" {
                    let (s, ns) = parse_pax_time(ext.value_bytes())
                        .ok_or_else(|| bad("unparseable PAX mtime".into()))?;
                    pax_mtime = Some(s);
                    mtime_nsec = ns;
                }
            }
        }
        xattrs.sort();
        if xattrs.iter().map(|(n, v)| n.len() + v.len()).sum::<usize>() > MAX_XATTR {
            return Err(bad("extended attributes larger than 64 KiB".into()));
        }

        let uid = header.uid().map_err(LayerError::tar)?;
        let gid = header.gid().map_err(LayerError::tar)?;
        if uid > u32::MAX as u64 || gid > u32::MAX as u64 {
            return Err(bad(format!("owner {uid}:{gid} out of range")));
        }
        let mode = header.mode().map_err(LayerError::tar)? & 0o7777;
        let mtime = match pax_mtime {
            Some(s) => s,
            None => {
                let m = header.mtime().map_err(LayerError::tar)?;
                i64::try_from(m).map_err(|_| bad(format!("mtime {m} out of range")))?
            }
        };
        let size = entry.size();

        // Whiteouts and opaque markers.
        let name = path.rsplit(|&b| b == b'/').next().unwrap_or(&[]);
        if name == OPAQUE_MARKER {
            let parent = parent_of(&path).to_vec();
            let at = self.ensure_dir(&parent, &raw_path)?;
            if let Kind::Dir { opaque, .. } = &mut self.index.entries[at].kind {
                *opaque = true;
            }
            return Ok(());
        }
        if let Some(hidden) = name.strip_prefix(WHITEOUT_PREFIX) {
            if hidden.starts_with(WHITEOUT_PREFIX) {
                // Other aufs bookkeeping (`.wh..wh.plnk`, …) carries nothing for us.
                return Ok(());
            }
            if hidden.is_empty() || hidden == b"." || hidden == b".." {
                return Err(bad("whiteout of an invalid name".into()));
            }
            let mut target = parent_of(&path).to_vec();
            if !target.is_empty() {
                target.push(b'/');
            }
            target.extend_from_slice(hidden);
            return self.put(
                Entry {
                    path: target,
                    kind: Kind::Whiteout,
                    mode: 0,
                    uid: 0,
                    gid: 0,
                    mtime: 0,
                    mtime_nsec: 0,
                    xattrs: vec![],
                },
                &raw_path,
            );
        }

        let kind = match etype {
            tar::EntryType::Regular | tar::EntryType::Continuous | tar::EntryType::GNUSparse => {
                if size > MAX_FILE_SIZE {
                    return Err(bad(format!("declared size {size} is absurd")));
                }
                let file = self.index.files;
                self.index.files = file
                    .checked_add(1)
                    .ok_or_else(|| bad("too many files".into()))?;
                if size > 0 {
                    write_data(&mut entry, &self.data.join(file.to_string()), size).map_err(
                        |e| match e {
                            WriteError::Short(got) => bad(format!(
                                "declared size {size} but the archive holds {got} bytes"
                            )),
                            // The tar reader ends a short entry with `Ok(0)`; an error here
                            // comes from the decompressor (truncated or corrupt stream).
                            WriteError::Read(e) => {
                                LayerError::Corrupt(format!("reading {:?}: {e}", show(&raw_path)))
                            }
                            WriteError::Io(e) => LayerError::Io {
                                path: show(&raw_path),
                                source: e,
                            },
                        },
                    )?;
                }
                Kind::File {
                    size,
                    file,
                    nlink: 1,
                }
            }
            tar::EntryType::Directory => Kind::Dir {
                opaque: false,
                implicit: false,
            },
            tar::EntryType::Symlink => {
                let target = entry
                    .link_name_bytes()
                    .map(|t| t.into_owned())
                    .unwrap_or_default();
                if target.is_empty() || target.len() > MAX_PATH || target.contains(&0) {
                    return Err(bad("symlink with an empty or invalid target".into()));
                }
                Kind::Symlink { target }
            }
            tar::EntryType::Link => return self.hard_link(&entry, path, &raw_path),
            tar::EntryType::Fifo => Kind::Fifo,
            tar::EntryType::Char | tar::EntryType::Block => {
                let major = header.device_major().map_err(LayerError::tar)?.unwrap_or(0) as u64;
                let minor = header.device_minor().map_err(LayerError::tar)?.unwrap_or(0) as u64;
                if major > MAX_MAJOR || minor > MAX_MINOR {
                    return Err(bad(format!("device number {major}:{minor} out of range")));
                }
                let (major, minor) = (major as u32, minor as u32);
                if etype == tar::EntryType::Char {
                    Kind::CharDev { major, minor }
                } else {
                    Kind::BlockDev { major, minor }
                }
            }
            tar::EntryType::XGlobalHeader => return Ok(()),
            other => {
                return Err(bad(format!(
                    "unsupported tar entry type {:?}",
                    other.as_byte() as char
                )));
            }
        };
        if !matches!(kind, Kind::File { .. }) && size > 0 && !kind.is_dir() {
            return Err(bad(format!(
                "a {} declares {size} bytes of data",
                kind.name()
            )));
        }
        let e = Entry {
            path,
            kind,
            mode,
            uid: uid as u32,
            gid: gid as u32,
            mtime,
            mtime_nsec,
            xattrs,
        };
        self.put(e, &raw_path)
    }

    /// A tar hard link: another name for an earlier regular file of this same layer.
    fn hard_link<R: Read>(
        &mut self,
        entry: &tar::Entry<'_, R>,
        path: Vec<u8>,
        raw: &[u8],
    ) -> Result<(), LayerError> {
        let bad = |why: String| LayerError::Hostile {
            path: show(raw),
            why,
        };
        let target_raw = entry
            .link_name_bytes()
            .map(|t| t.into_owned())
            .unwrap_or_default();
        let target = normalize(&target_raw).map_err(|_| {
            bad(format!(
                "hard link to {:?}, outside the layer",
                show(&target_raw)
            ))
        })?;
        let Some(&at) = self.by_path.get(&target) else {
            return Err(bad(format!(
                "hard link to {:?}, which is not in this layer",
                show(&target_raw)
            )));
        };
        let mut e = self.index.entries[at].clone();
        if !matches!(e.kind, Kind::File { .. }) {
            return Err(bad(format!(
                "hard link to a {}, only regular files can be linked",
                e.kind.name()
            )));
        }
        if path == target {
            return Ok(());
        }
        e.path = path;
        self.put(e, raw)
    }

    /// Makes sure `path` is a directory of this layer, adding implicit parents as tar does.
    fn ensure_dir(&mut self, path: &[u8], raw: &[u8]) -> Result<usize, LayerError> {
        if let Some(&at) = self.by_path.get(path) {
            let e = &self.index.entries[at];
            if !e.kind.is_dir() {
                return Err(LayerError::Hostile {
                    path: show(raw),
                    why: format!(
                        "{:?} is a {} in this layer, not a directory",
                        show(path),
                        e.kind.name()
                    ),
                });
            }
            return Ok(at);
        }
        if !path.is_empty() {
            self.ensure_dir(parent_of(path), raw)?;
        }
        let e = Entry::implicit_dir(path.to_vec());
        self.by_path
            .insert(e.path.clone(), self.index.entries.len());
        self.index.entries.push(e);
        Ok(self.index.entries.len() - 1)
    }

    /// Records `e`, replacing an earlier entry of the same path and kind (last one wins, as tar).
    fn put(&mut self, e: Entry, raw: &[u8]) -> Result<(), LayerError> {
        if let Some(parent) = e.parent() {
            let parent = parent.to_vec();
            self.ensure_dir(&parent, raw)?;
        }
        match self.by_path.get(&e.path) {
            Some(&at) => {
                let old = &mut self.index.entries[at];
                // A whiteout and an entry of the same name in one layer: the whiteout hides only
                // the lower layers' path (OCI image spec), which for a directory means opaque.
                if old.kind == Kind::Whiteout || e.kind == Kind::Whiteout {
                    let keep_new = old.kind == Kind::Whiteout;
                    if keep_new {
                        *old = e;
                    }
                    if let Kind::Dir { opaque, .. } = &mut old.kind {
                        *opaque = true;
                    }
                    return Ok(());
                }
                if std::mem::discriminant(&old.kind) != std::mem::discriminant(&e.kind) {
                    return Err(LayerError::Hostile {
                        path: show(raw),
                        why: format!(
                            "duplicate entry changes type from {} to {}",
                            old.kind.name(),
                            e.kind.name()
                        ),
                    });
                }
                // A re-declared directory keeps an opaque marker seen earlier.
                let opaque = matches!(old.kind, Kind::Dir { opaque: true, .. });
                *old = e;
                if let Kind::Dir { opaque: o, .. } = &mut old.kind {
                    *o |= opaque;
                }
            }
            None => {
                self.by_path
                    .insert(e.path.clone(), self.index.entries.len());
                self.index.entries.push(e);
            }
        }
        Ok(())
    }

    /// Counts hard-link names and drops data files no entry refers to any more.
    fn finish(mut self) -> Result<LayerIndex, LayerError> {
        let mut names: HashMap<u32, u32> = HashMap::new();
        for e in &self.index.entries {
            if let Kind::File { file, .. } = e.kind {
                *names.entry(file).or_default() += 1;
            }
        }
        for e in &mut self.index.entries {
            if let Kind::File { file, nlink, .. } = &mut e.kind {
                *nlink = names[file];
            }
        }
        for file in 0..self.index.files {
            if !names.contains_key(&file) {
                let p = self.data.join(file.to_string());
                match std::fs::remove_file(&p) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(LayerError::io(&p, e)),
                }
            }
        }
        Ok(std::mem::take(&mut self.index))
    }
}

enum WriteError {
    /// The entry's data ended early.
    Short(u64),
    /// Reading the stream failed.
    Read(io::Error),
    /// Writing the data file failed.
    Io(io::Error),
}

/// Copies exactly `size` bytes to a new file, leaving holes where whole 4 KiB blocks are zero.
fn write_data(r: &mut impl Read, dst: &Path, size: u64) -> Result<(), WriteError> {
    let mut f = File::options()
        .write(true)
        .create_new(true)
        .open(dst)
        .map_err(WriteError::Io)?;
    let mut buf = vec![0u8; 256 * 1024];
    let mut done = 0u64;
    while done < size {
        let want = (size - done).min(buf.len() as u64) as usize;
        let n = match r.read(&mut buf[..want]) {
            Ok(0) => return Err(WriteError::Short(done)),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(WriteError::Read(e)),
        };
        for block in buf[..n].chunks(4096) {
            if block.iter().all(|&b| b == 0) {
                f.seek(SeekFrom::Current(block.len() as i64))
                    .map_err(WriteError::Io)?;
            } else {
                f.write_all(block).map_err(WriteError::Io)?;
            }
        }
        done += n as u64;
    }
    f.set_len(size).map_err(WriteError::Io)
}

/// Turns a tar member name into a clean relative path: `./` and `/` separators collapsed,
/// `..` and absolute names rejected, each component at most 255 bytes.
pub(crate) fn normalize(raw: &[u8]) -> Result<Vec<u8>, LayerError> {
    let bad = |why: &str| LayerError::Hostile {
        path: show(raw),
        why: why.to_string(),
    };
    if raw.starts_with(b"/") {
        return Err(bad("absolute path"));
    }
    if raw.contains(&0) {
        return Err(bad("NUL byte in name"));
    }
    let mut out = Vec::with_capacity(raw.len());
    for comp in raw.split(|&b| b == b'/') {
        match comp {
            b"" | b"." => continue,
            b".." => return Err(bad("path escapes the layer with '..'")),
            c if c.len() > MAX_NAME => return Err(bad("name component longer than 255 bytes")),
            c => {
                if !out.is_empty() {
                    out.push(b'/');
                }
                out.extend_from_slice(c);
            }
        }
    }
    if out.len() > MAX_PATH {
        return Err(bad("path longer than PATH_MAX"));
    }
    Ok(out)
}

fn parent_of(path: &[u8]) -> &[u8] {
    match path.iter().rposition(|&b| b == b'/') {
        Some(i) => &path[..i],
        None => b"",
    }
}

/// `"1700000000.123456789"` → (1700000000, 123456789); negative times as `-1.5`.
fn parse_pax_time(v: &[u8]) -> Option<(i64, u32)> {
    let s = std::str::from_utf8(v).ok()?;
    let (int, frac) = s.split_once('.').unwrap_or((s, ""));
    let secs: i64 = int.parse().ok()?;
    if frac.is_empty() {
        return Some((secs, 0));
    }
    if !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let digits: String = frac.chars().chain(std::iter::repeat('0')).take(9).collect();
    let mut nsec: u32 = digits.parse().ok()?;
    let mut secs = secs;
    if int.starts_with('-') && nsec > 0 {
        secs -= 1;
        nsec = 1_000_000_000 - nsec;
    }
    Some((secs, nsec))
}

/// A byte path for messages (lossy, never fails).
pub(crate) fn show(p: &[u8]) -> String {
    String::from_utf8_lossy(p).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalize_cleans_and_rejects() {
        assert_eq!(normalize(b"./a//b/./c/").unwrap(), b"a/b/c");
        assert_eq!(normalize(b"./").unwrap(), b"");
        assert!(normalize(b"/etc/passwd").is_err());
        assert!(normalize(b"a/../../b").is_err());
        assert!(normalize(&[b'x'; 256]).is_err());
        assert!(normalize(&[b'x'; 255]).is_ok());
    }

    #[test]
    fn pax_times() {
        assert_eq!(
            parse_pax_time(b"1700000000.123456789"),
            Some((1700000000, 123456789))
        );
        assert_eq!(
            parse_pax_time(b"1700000000.5"),
            Some((1700000000, 500000000))
        );
        assert_eq!(parse_pax_time(b"12"), Some((12, 0)));
        assert_eq!(parse_pax_time(b"-1.5"), Some((-2, 500000000)));
        assert_eq!(parse_pax_time(b"x"), None);
    }
}

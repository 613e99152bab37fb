//! The files of an image input: a directory as given (OCI layout, unpacked docker-archive) or
//! an archive unpacked safely into a private temporary directory.
//!
//! Unpacking is hostile-input code: only regular files and directories are created, at
//! normalized relative paths, in a fresh directory that holds nothing but what this code made,
//! so no member can write outside it. Symbolic and hard links are never created on disk;
//! they are recorded and resolved by name, inside the archive, when a manifest refers to them
//! (`docker save` stores a layer shared by two images as a symlink to the first copy).

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use tempfile::TempDir;

use super::ImageError;
use super::progress::Progress;

/// Most link hops followed when resolving one name (as Linux's `MAXSYMLINKS`).
const MAX_HOPS: usize = 40;

#[derive(Clone, Debug, PartialEq, Eq)]
enum Member {
    Dir,
    File,
    /// Symbolic link: target as written (relative to the link's directory).
    Symlink(String),
    /// Hard link: target path from the archive root, normalized.
    HardLink(String),
}

/// A directory of image files plus the links of the archive it came from.
pub(crate) struct Source {
    root: PathBuf,
    /// Links of an unpacked archive, by normalized member path.
    links: HashMap<String, Member>,
    /// The temporary directory an archive was unpacked into; removed on drop.
    _tmp: Option<TempDir>,
}

/// Splits a member or manifest name into clean components; `..`, absolute names and NUL are
/// refused (`./` and repeated `/` are fine).
pub(crate) fn components(name: &str) -> Result<Vec<&str>, ImageError> {
    let bad = |why: &str| ImageError::UnsafeArchive {
        name: name.to_string(),
        why: why.to_string(),
    };
    if name.starts_with('/') {
        return Err(bad("absolute path"));
    }
    if name.contains('\0') {
        return Err(bad("NUL byte in name"));
    }
    let mut out = Vec::new();
    for c in name.split('/') {
        match c {
            "" | "." => {}
            ".." => return Err(bad("path escapes the archive with '..'")),
            c => out.push(c),
        }
    }
    Ok(out)
}

impl Source {
    /// A directory the user gave: its files are used in place.
    pub fn dir(path: &Path) -> Self {
        Source {
            root: path.to_path_buf(),
            links: HashMap::new(),
            _tmp: None,
        }
    }

    /// Unpacks the (optionally gzip/zstd-compressed) tar `archive` into a new directory under
    /// `tmp_parent`. The directory is removed when the `Source` is dropped, error or not.
    pub fn unpack(
        archive: &Path,
        tmp_parent: &Path,
        progress: Progress,
    ) -> Result<Self, ImageError> {
        let file = File::open(archive).map_err(|e| ImageError::io(archive, e))?;
        let len = file.metadata().map(|m| m.len()).unwrap_or(0);
        let tmp = tempfile::Builder::new()
            .prefix(&format!("load-{}-", std::process::id()))
            .tempdir_in(tmp_parent)
            .map_err(|e| ImageError::io(tmp_parent, e))?;
        let (reader, _bar) = progress.wrap(file, len, "unpacking archive");
        let stream = crate::layer::decompress(reader).map_err(|e| corrupt(archive, e))?;
        let mut src = Source {
            root: tmp.path().to_path_buf(),
            links: HashMap::new(),
            _tmp: None,
        };
        src.unpack_stream(stream, archive)?;
        src._tmp = Some(tmp);
        Ok(src)
    }

    fn unpack_stream(&mut self, stream: impl Read, archive: &Path) -> Result<(), ImageError> {
        let mut ar = tar::Archive::new(stream);
        let mut members: HashMap<String, Member> = HashMap::new();
        for entry in ar.entries().map_err(|e| corrupt(archive, e))? {
            let mut entry = entry.map_err(|e| corrupt(archive, e))?;
            let raw = entry.path_bytes().into_owned();
            let name = String::from_utf8(raw).map_err(|e| ImageError::UnsafeArchive {
                name: String::from_utf8_lossy(e.as_bytes()).into_owned(),
                why: "member name is not UTF-8".into(),
            })?;
            let bad = |why: String| ImageError::UnsafeArchive {
                name: name.clone(),
                why,
            };
            let comps = components(&name)?;
            let etype = entry.header().entry_type();
            if comps.is_empty() {
                if etype.is_dir() {
                    continue;
                }
                return Err(bad("a non-directory member names the archive root".into()));
            }
            // Every parent must be a real directory of this archive: a member may not be
            // written through a link (or a file) an earlier member planted.
            for i in 1..comps.len() {
                let parent = comps[..i].join("/");
                match members.get(&parent) {
                    None | Some(Member::Dir) => {}
                    Some(m) => {
                        return Err(bad(format!(
                            "its parent {parent:?} is a {} in the archive, not a directory",
                            kind_name(m)
                        )));
                    }
                }
            }
            let path = comps.join("/");
            let new = match etype {
                tar::EntryType::Directory => Member::Dir,
                tar::EntryType::Regular | tar::EntryType::Continuous => Member::File,
                tar::EntryType::Symlink => {
                    let target = link_target(&entry)
                        .ok_or_else(|| bad("symlink with an empty or non-UTF-8 target".into()))?;
                    Member::Symlink(target)
                }
                tar::EntryType::Link => {
                    let target = link_target(&entry)
                        .ok_or_else(|| bad("hard link with an empty or non-UTF-8 target".into()))?;
                    let tcomps = components(&target).map_err(|_| {
                        bad(format!("hard link to {target:?}, outside the archive"))
                    })?;
                    Member::HardLink(tcomps.join("/"))
                }
                tar::EntryType::XGlobalHeader => continue,
                other => {
                    return Err(bad(format!(
                        "unsupported member type {:?} (an image archive holds files, directories and links)",
                        other.as_byte() as char
                    )));
                }
            };
            if let Some(old) = members.get(&path)
                && std::mem::discriminant(old) != std::mem::discriminant(&new)
                && !(matches!(old, Member::Symlink(_) | Member::HardLink(_))
                    && matches!(new, Member::Symlink(_) | Member::HardLink(_)))
            {
                return Err(bad(format!(
                    "duplicate member changes type from {} to {}",
                    kind_name(old),
                    kind_name(&new)
                )));
            }
            let host = self.root.join(&path);
            match &new {
                Member::Dir => {
                    std::fs::create_dir_all(&host).map_err(|e| ImageError::io(&host, e))?;
                }
                Member::File => {
                    if let Some(p) = host.parent() {
                        std::fs::create_dir_all(p).map_err(|e| ImageError::io(p, e))?;
                    }
                    let size = entry.size();
                    let mut f = File::create(&host).map_err(|e| ImageError::io(&host, e))?;
                    let n = io::copy(&mut entry, &mut f).map_err(|e| corrupt(archive, e))?;
                    if n != size {
                        return Err(ImageError::UnknownFormat {
                            path: archive.display().to_string(),
                            why: format!(
                                "truncated archive: member {name:?} declares {size} bytes but has {n}"
                            ),
                        });
                    }
                }
                Member::Symlink(_) | Member::HardLink(_) => {
                    self.links.insert(path.clone(), new.clone());
                }
            }
            // Implicit parents are directories.
            for i in 1..comps.len() {
                members.entry(comps[..i].join("/")).or_insert(Member::Dir);
            }
            members.insert(path, new);
        }
        Ok(())
    }

    /// The host path of the member `name` (a name from a manifest), following the archive's
    /// links by name without ever leaving the archive. `Ok(None)` when it does not exist.
    pub fn resolve(&self, name: &str) -> Result<Option<PathBuf>, ImageError> {
        let mut todo: Vec<String> = components(name)?
            .into_iter()
            .rev()
            .map(str::to_string)
            .collect();
        if todo.is_empty() {
            return Err(ImageError::UnsafeArchive {
                name: name.to_string(),
                why: "empty path".into(),
            });
        }
        let mut done: Vec<String> = Vec::new();
        let mut hops = 0;
        while let Some(c) = todo.pop() {
            match c.as_str() {
                "" | "." => continue,
                ".." => {
                    if done.pop().is_none() {
                        return Err(ImageError::UnsafeArchive {
                            name: name.to_string(),
                            why: "a link in the archive points outside it".into(),
                        });
                    }
                    continue;
                }
                _ => done.push(c),
            }
            let Some(link) = self.links.get(&done.join("/")) else {
                continue;
            };
            hops += 1;
            if hops > MAX_HOPS {
                return Err(ImageError::UnsafeArchive {
                    name: name.to_string(),
                    why: "too many levels of links".into(),
                });
            }
            match link {
                Member::Symlink(target) => {
                    if target.starts_with('/') {
                        return Err(ImageError::UnsafeArchive {
                            name: name.to_string(),
                            why: format!(
                                "it goes through a symlink to the absolute path {target:?}"
                            ),
                        });
                    }
                    done.pop();
                    todo.extend(target.split('/').rev().map(str::to_string));
                }
                Member::HardLink(target) => {
                    done = target.split('/').map(str::to_string).collect();
                }
                Member::Dir | Member::File => {}
            }
        }
        let path = self.root.join(done.join("/"));
        Ok(path.is_file().then_some(path))
    }

    /// Like [`resolve`](Self::resolve), but a missing member is an error naming `what`.
    pub fn require(&self, name: &str, what: &str) -> Result<PathBuf, ImageError> {
        self.resolve(name)?.ok_or_else(|| ImageError::Missing {
            what: what.to_string(),
            path: name.to_string(),
        })
    }
}

fn link_target<R: Read>(entry: &tar::Entry<'_, R>) -> Option<String> {
    let t = entry.link_name_bytes()?;
    let t = String::from_utf8(t.into_owned()).ok()?;
    (!t.is_empty()).then_some(t)
}

fn kind_name(m: &Member) -> &'static str {
    match m {
        Member::Dir => "directory",
        Member::File => "file",
        Member::Symlink(_) => "symlink",
        Member::HardLink(_) => "hard link",
    }
}

fn corrupt(archive: &Path, e: io::Error) -> ImageError {
    ImageError::UnknownFormat {
        path: archive.display().to_string(),
        why: format!("corrupt or truncated tar: {e}"),
    }
}

//! `image diff A B`: what differs between two images, from their layer indexes.
//!
//! Both merged trees are built from the indexes (no mount, no extraction) and walked side by
//! side, names in sorted order. Two regular files have the same content when they are the
//! same data file of the same layer (images sharing a base layer compare for free); otherwise
//! different sizes differ, and equal sizes are settled by hashing the two data files — only
//! for those few candidates. Compared: type, content, size, mode, owner, link target, device
//! number and xattrs (not mtimes: a rebuild changes every mtime and nothing else).

use std::path::PathBuf;

use serde::Serialize;
use tracing::info_span;

use super::DiffError;
use crate::digest::{Digest, digest_reader};
use crate::fs::tree::{MergedTree, Node, NodeKind, ROOT_INO};

/// One side of the comparison: a merged tree and each of its layers' data directory.
pub struct Side<'a> {
    pub tree: &'a MergedTree,
    pub layers: &'a [Digest],
    pub data_dirs: &'a [PathBuf],
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Added,
    Removed,
    Changed,
}

#[derive(Clone, Debug, Serialize)]
pub struct Entry {
    pub kind: Kind,
    pub path: String,
    /// What differs (`type`, `content`, `size`, `mode`, `owner`, `target`, `rdev`, `xattrs`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub what: Vec<&'static str>,
    pub size_a: u64,
    pub size_b: u64,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Summary {
    pub added: u64,
    pub removed: u64,
    pub changed: u64,
    pub added_bytes: u64,
    pub removed_bytes: u64,
    /// Size of the changed files in B minus their size in A.
    pub changed_bytes_delta: i64,
    /// Files whose data had to be hashed to compare.
    pub hashed: u64,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct ImageDiff {
    pub summary: Summary,
    pub entries: Vec<Entry>,
}

fn type_name(k: &NodeKind) -> u8 {
    match k {
        NodeKind::Dir { .. } => 0,
        NodeKind::File { .. } => 1,
        NodeKind::Symlink { .. } => 2,
        NodeKind::Fifo => 3,
        NodeKind::Socket => 4,
        NodeKind::CharDev { .. } => 5,
        NodeKind::BlockDev { .. } => 6,
    }
}

fn file_size(n: &Node) -> u64 {
    if matches!(n.kind, NodeKind::File { .. }) {
        n.size
    } else {
        0
    }
}

struct Walker<'a> {
    a: Side<'a>,
    b: Side<'a>,
    out: ImageDiff,
}

fn join(parent: &[u8], name: &[u8]) -> Vec<u8> {
    let mut p = parent.to_vec();
    if !p.is_empty() {
        p.push(b'/');
    }
    p.extend_from_slice(name);
    p
}

fn children(n: &Node) -> &[(Box<[u8]>, u64)] {
    match &n.kind {
        NodeKind::Dir { children } => children,
        _ => &[],
    }
}

impl Walker<'_> {
    fn same_content(&mut self, na: &Node, nb: &Node) -> Result<bool, DiffError> {
        let (NodeKind::File { file: fa }, NodeKind::File { file: fb }) = (&na.kind, &nb.kind)
        else {
            return Ok(true);
        };
        if na.size != nb.size {
            return Ok(false);
        }
        let (Some(fa), Some(fb)) = (fa, fb) else {
            return Ok(na.size == 0 && nb.size == 0);
        };
        let la = self.a.layers.get(na.layer as usize);
        let lb = self.b.layers.get(nb.layer as usize);
        if la.is_some() && la == lb && fa == fb {
            return Ok(true);
        }
        let pa = self.a.data_dirs[na.layer as usize].join(fa.to_string());
        let pb = self.b.data_dirs[nb.layer as usize].join(fb.to_string());
        self.out.summary.hashed += 1;
        let ha = hash(&pa)?;
        let hb = hash(&pb)?;
        Ok(ha == hb)
    }

    fn compare(&mut self, na: &Node, nb: &Node) -> Result<Vec<&'static str>, DiffError> {
        let mut what = Vec::new();
        if type_name(&na.kind) != type_name(&nb.kind) {
            what.push("type");
            return Ok(what);
        }
        match (&na.kind, &nb.kind) {
            (NodeKind::File { .. }, NodeKind::File { .. }) => {
                if na.size != nb.size {
                    what.push("size");
                }
                if !self.same_content(na, nb)? {
                    what.push("content");
                }
            }
            (NodeKind::Symlink { target: ta }, NodeKind::Symlink { target: tb }) if ta != tb => {
                what.push("target")
            }
            (NodeKind::CharDev { rdev: ra }, NodeKind::CharDev { rdev: rb })
            | (NodeKind::BlockDev { rdev: ra }, NodeKind::BlockDev { rdev: rb })
                if ra != rb =>
            {
                what.push("rdev")
            }
            _ => {}
        }
        if na.perm != nb.perm {
            what.push("mode");
        }
        if na.uid != nb.uid || na.gid != nb.gid {
            what.push("owner");
        }
        if na.xattrs != nb.xattrs {
            what.push("xattrs");
        }
        Ok(what)
    }

    /// Lists `ino` of `side` and everything below it as added (or removed).
    fn one_sided(&mut self, tree_b: bool, ino: u64, path: Vec<u8>) {
        let tree = if tree_b { self.b.tree } else { self.a.tree };
        let mut stack = vec![(ino, path)];
        while let Some((ino, path)) = stack.pop() {
            let Some(n) = tree.get(ino) else { continue };
            let size = file_size(n);
            let (kind, size_a, size_b) = if tree_b {
                self.out.summary.added += 1;
                self.out.summary.added_bytes += size;
                (Kind::Added, 0, size)
            } else {
                self.out.summary.removed += 1;
                self.out.summary.removed_bytes += size;
                (Kind::Removed, size, 0)
            };
            self.out.entries.push(Entry {
                kind,
                path: format!("/{}", String::from_utf8_lossy(&path)),
                what: vec![],
                size_a,
                size_b,
            });
            for (name, c) in children(n).iter().rev() {
                stack.push((*c, join(&path, name)));
            }
        }
    }

    fn walk(&mut self, ia: u64, ib: u64, path: &[u8]) -> Result<(), DiffError> {
        let (Some(na), Some(nb)) = (self.a.tree.get(ia), self.b.tree.get(ib)) else {
            return Ok(());
        };
        let (ca, cb) = (children(na), children(nb));
        let (mut i, mut j) = (0, 0);
        while i < ca.len() || j < cb.len() {
            let ord = match (ca.get(i), cb.get(j)) {
                (Some(x), Some(y)) => x.0.cmp(&y.0),
                (Some(_), None) => std::cmp::Ordering::Less,
                _ => std::cmp::Ordering::Greater,
            };
            match ord {
                std::cmp::Ordering::Less => {
                    let (name, c) = &ca[i];
                    self.one_sided(false, *c, join(path, name));
                    i += 1;
                }
                std::cmp::Ordering::Greater => {
                    let (name, c) = &cb[j];
                    self.one_sided(true, *c, join(path, name));
                    j += 1;
                }
                std::cmp::Ordering::Equal => {
                    let (name, xa) = &ca[i];
                    let xb = cb[j].1;
                    let p = join(path, name);
                    let (Some(a), Some(b)) = (self.a.tree.get(*xa), self.b.tree.get(xb)) else {
                        continue;
                    };
                    let (a, b) = (a.clone(), b.clone());
                    let what = self.compare(&a, &b)?;
                    let both_dirs = a.is_dir() && b.is_dir();
                    if !what.is_empty() {
                        self.out.summary.changed += 1;
                        self.out.summary.changed_bytes_delta +=
                            file_size(&b) as i64 - file_size(&a) as i64;
                        let retyped = what.contains(&"type");
                        self.out.entries.push(Entry {
                            kind: Kind::Changed,
                            path: format!("/{}", String::from_utf8_lossy(&p)),
                            what,
                            size_a: file_size(&a),
                            size_b: file_size(&b),
                        });
                        if retyped {
                            // A directory on one side only: its contents are removed/added.
                            for (name, c) in children(&a) {
                                self.one_sided(false, *c, join(&p, name));
                            }
                            for (name, c) in children(&b) {
                                self.one_sided(true, *c, join(&p, name));
                            }
                        }
                    }
                    if both_dirs {
                        self.walk(*xa, xb, &p)?;
                    }
                    i += 1;
                    j += 1;
                }
            }
        }
        Ok(())
    }
}

fn hash(p: &std::path::Path) -> Result<Digest, DiffError> {
    let f = std::fs::File::open(p).map_err(|e| DiffError::io(p.display(), e))?;
    Ok(digest_reader(f)
        .map_err(|e| DiffError::io(p.display(), e))?
        .0)
}

/// Compares image A with image B.
pub fn diff(a: Side<'_>, b: Side<'_>) -> Result<ImageDiff, DiffError> {
    let _s = info_span!("image_diff").entered();
    let mut w = Walker {
        a,
        b,
        out: ImageDiff::default(),
    };
    w.walk(ROOT_INO, ROOT_INO, b"")?;
    Ok(w.out)
}

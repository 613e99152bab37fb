//! A container's changes, Docker's `A`/`C`/`D`, from the writable layer's records.
//!
//! The writable view keeps a record for every inode it changed (lower inodes keep their
//! numbers) and the whole listing of every directory whose entries changed ("materialised").
//! So the changed paths are found by walking from the root only into directories that are
//! materialised or lie above a changed inode: the cost is the number of changes times the
//! fan-out of the directories on their paths, not the size of the image.
//!
//! Semantics (those of `docker diff`): a path that is new is `A` (and everything below a new
//! directory is `A` too); a path that existed below and is gone is `D` (only the top of a
//! deleted subtree); a path whose inode changed (data, metadata, or replaced by another
//! inode) is `C`; the parent directories of every change are `C`. A directory that replaced
//! what was at its path (`rm -rf d; mkdir d`) is `D` followed by its contents as `A`, as
//! Docker shows the opaque directory overlayfs makes there. The root is never listed.
//! Output is in walk order: parents before children, names sorted bytewise.

use std::collections::{BTreeMap, HashMap, HashSet};

use super::{Change, ChangeKind};
use crate::fs::tree::{MergedTree, Node, NodeKind, ROOT_INO};
use crate::rwlayer::{FIRST_UPPER_INO, FileKind, Inode};

/// Materialised directory listings of a writable layer.
pub type Dirs = HashMap<u64, BTreeMap<Box<[u8]>, u64>>;

/// The changes of a writable layer (`inodes`, `dirs`) over `lower`.
pub fn changes(lower: &MergedTree, inodes: &HashMap<u64, Inode>, dirs: &Dirs) -> Vec<Change> {
    let mut w = Walk {
        lower,
        inodes,
        dirs,
        dirty: HashSet::new(),
    };
    w.mark_dirty();
    let mut out = Vec::new();
    w.walk(ROOT_INO, Some(ROOT_INO), b"", &mut out);
    out
}

/// Every path of the current tree, as `Add` changes in walk order (for `export`).
pub fn everything(lower: &MergedTree, inodes: &HashMap<u64, Inode>, dirs: &Dirs) -> Vec<Change> {
    let w = Walk {
        lower,
        inodes,
        dirs,
        dirty: HashSet::new(),
    };
    let mut out = Vec::new();
    w.walk(ROOT_INO, None, b"", &mut out);
    out
}

struct Walk<'a> {
    lower: &'a MergedTree,
    inodes: &'a HashMap<u64, Inode>,
    dirs: &'a Dirs,
    /// Directories that hold a change somewhere below (or are changed themselves).
    dirty: HashSet<u64>,
}

fn join(parent: &[u8], name: &[u8]) -> Vec<u8> {
    let mut p = Vec::with_capacity(parent.len() + 1 + name.len());
    if !parent.is_empty() {
        p.extend_from_slice(parent);
        p.push(b'/');
    }
    p.extend_from_slice(name);
    p
}

impl Walk<'_> {
    fn lower_node(&self, ino: u64) -> Option<&Node> {
        if ino >= FIRST_UPPER_INO {
            None
        } else {
            self.lower.get(ino)
        }
    }

    fn is_dir(&self, ino: u64) -> bool {
        match self.inodes.get(&ino) {
            Some(i) => i.kind == FileKind::Dir,
            None => self.lower_node(ino).is_some_and(Node::is_dir),
        }
    }

    /// The current parent of a directory.
    fn parent_of_dir(&self, ino: u64) -> Option<u64> {
        match self.inodes.get(&ino) {
            Some(i) => Some(i.parent),
            None => self.lower_node(ino).map(|n| n.parent),
        }
    }

    fn mark_dirty(&mut self) {
        let seeds: Vec<u64> = self
            .dirs
            .keys()
            .chain(self.inodes.keys())
            .copied()
            .collect();
        for ino in seeds {
            let mut at = if self.is_dir(ino) {
                Some(ino)
            } else {
                // An unmoved lower file sits in its lower directory; a moved or new one is in
                // a materialised directory, which is a seed of its own.
                self.lower_node(ino).map(|n| n.parent)
            };
            // Bounded: a path has at most PATH_MAX / 2 components.
            for _ in 0..libc::PATH_MAX {
                let Some(d) = at else { break };
                if !self.dirty.insert(d) || d == ROOT_INO {
                    break;
                }
                at = self.parent_of_dir(d);
            }
        }
    }

    fn lower_children(&self, ino: Option<u64>) -> &[(Box<[u8]>, u64)] {
        match ino.and_then(|i| self.lower_node(i)).map(|n| &n.kind) {
            Some(NodeKind::Dir { children }) => children,
            _ => &[],
        }
    }

    /// Whether directory `ino`'s listing is still exactly its lower listing.
    fn unmaterialized(&self, ino: u64) -> bool {
        ino < FIRST_UPPER_INO
            && !self.dirs.contains_key(&ino)
            && !self.inodes.get(&ino).is_some_and(|i| i.materialized)
    }

    fn current_children(&self, ino: u64) -> Vec<(&[u8], u64)> {
        if let Some(d) = self.dirs.get(&ino) {
            return d.iter().map(|(n, &c)| (n.as_ref(), c)).collect();
        }
        if !self.unmaterialized(ino) {
            return Vec::new();
        }
        self.lower_children(Some(ino))
            .iter()
            .map(|(n, c)| (n.as_ref(), *c))
            .collect()
    }

    /// Compares directory `cur` (now at `path`) with the lower directory `low` at that path.
    fn walk(&self, cur: u64, low: Option<u64>, path: &[u8], out: &mut Vec<Change>) {
        if low == Some(cur) && self.unmaterialized(cur) {
            // Same listing as below: only children with a change can differ.
            for (name, c) in self.lower_children(Some(cur)) {
                if self.dirty.contains(c) || self.inodes.contains_key(c) {
                    self.entry(name, Some(*c), Some(*c), path, out);
                }
            }
            return;
        }
        let now = self.current_children(cur);
        let before = self.lower_children(low);
        let (mut i, mut j) = (0, 0);
        while i < now.len() || j < before.len() {
            let a = now.get(i);
            let b = before.get(j);
            match (a, b) {
                (Some(&(na, ca)), Some((nb, cb))) => match na.cmp(nb.as_ref()) {
                    std::cmp::Ordering::Less => {
                        self.entry(na, Some(ca), None, path, out);
                        i += 1;
                    }
                    std::cmp::Ordering::Greater => {
                        self.entry(nb, None, Some(*cb), path, out);
                        j += 1;
                    }
                    std::cmp::Ordering::Equal => {
                        self.entry(na, Some(ca), Some(*cb), path, out);
                        i += 1;
                        j += 1;
                    }
                },
                (Some(&(na, ca)), None) => {
                    self.entry(na, Some(ca), None, path, out);
                    i += 1;
                }
                (None, Some((nb, cb))) => {
                    self.entry(nb, None, Some(*cb), path, out);
                    j += 1;
                }
                (None, None) => break,
            }
        }
    }

    fn entry(
        &self,
        name: &[u8],
        c: Option<u64>,
        l: Option<u64>,
        parent: &[u8],
        out: &mut Vec<Change>,
    ) {
        let path = join(parent, name);
        match (c, l) {
            (None, None) => {}
            (None, Some(_)) => out.push(Change {
                kind: ChangeKind::Delete,
                path,
                ino: None,
                opaque: false,
            }),
            (Some(c), None) => {
                let dir = self.is_dir(c);
                out.push(Change {
                    kind: ChangeKind::Add,
                    path: path.clone(),
                    ino: Some(c),
                    opaque: false,
                });
                if dir {
                    self.walk(c, None, &path, out);
                }
            }
            (Some(c), Some(l)) if c != l => {
                // Another inode took the path. A directory there hides what was below whole:
                // overlayfs makes it opaque, and Docker lists an opaque directory that
                // existed below as deleted (`D`), its new contents as added.
                let dir = self.is_dir(c);
                out.push(Change {
                    kind: if dir {
                        ChangeKind::Delete
                    } else {
                        ChangeKind::Modify
                    },
                    path: path.clone(),
                    ino: Some(c),
                    opaque: dir,
                });
                if dir {
                    self.walk(c, None, &path, out);
                }
            }
            (Some(c), Some(_)) => {
                if self.is_dir(c) {
                    let at = out.len();
                    if self.dirty.contains(&c) || self.dirs.contains_key(&c) {
                        self.walk(c, Some(c), &path, out);
                    }
                    if out.len() > at || self.inodes.contains_key(&c) {
                        out.insert(
                            at,
                            Change {
                                kind: ChangeKind::Modify,
                                path,
                                ino: Some(c),
                                opaque: false,
                            },
                        );
                    }
                } else if self.inodes.contains_key(&c) {
                    out.push(Change {
                        kind: ChangeKind::Modify,
                        path,
                        ino: Some(c),
                        opaque: false,
                    });
                }
            }
        }
    }
}

/// Drops what the runtime itself put in the writable layer: mount targets it created because
/// the image lacked them (`/etc/hosts`, `/etc/hostname`, `/etc/resolv.conf`, volume and tmpfs
/// targets, …). Docker keeps those in a hidden "init" layer below the container's, so they
/// are never in `docker diff` or a commit. Directories listed only because they held such a
/// target (changed, or created for it, like `/etc` in an image without one) go too.
pub fn without_mount_targets(changes: Vec<Change>, targets: &[Vec<u8>]) -> Vec<Change> {
    let is_target = |p: &[u8]| {
        targets.iter().any(|t| {
            p == t.as_slice() || (p.len() > t.len() && p.starts_with(t) && p[t.len()] == b'/')
        })
    };
    let dropped: Vec<&Change> = changes
        .iter()
        .filter(|c| c.kind == ChangeKind::Add && is_target(&c.path))
        .collect();
    if dropped.is_empty() {
        return changes;
    }
    let mut emptied: HashSet<Vec<u8>> = HashSet::new();
    for c in &dropped {
        let mut p = c.path.as_slice();
        while let Some(i) = p.iter().rposition(|&b| b == b'/') {
            p = &p[..i];
            emptied.insert(p.to_vec());
        }
    }
    let kept: Vec<Change> = changes
        .iter()
        .filter(|c| !(c.kind == ChangeKind::Add && is_target(&c.path)))
        .cloned()
        .collect();
    // An ancestor of a dropped target stays only if something else below it changed.
    let has_child = |dir: &[u8]| {
        kept.iter().any(|c| {
            c.path.len() > dir.len() && c.path.starts_with(dir) && c.path[dir.len()] == b'/'
        })
    };
    kept.iter()
        .filter(|c| {
            !(c.kind != ChangeKind::Delete && emptied.contains(&c.path) && !has_child(&c.path))
        })
        .cloned()
        .collect()
}

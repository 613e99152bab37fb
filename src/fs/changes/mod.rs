//! The change set of a writable view: what it changed over its lower tree, Docker's
//! `A`/`C`/`D` (`changes`, `everything`), written as a layer tar (`tar`), and answered to
//! other processes by the one process that serves the view (`serve`). `diff` builds
//! `diff`, `commit` and `export` of containers on this; nothing here knows about images or
//! containers, and nothing here writes to the view.
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

pub mod serve;
pub mod tar;

use std::collections::{BTreeMap, HashMap, HashSet};

use serde::{Deserialize, Serialize};

use crate::fs::tree::{MergedTree, Node, NodeKind, ROOT_INO};
use crate::rwlayer::{FIRST_UPPER_INO, FileKind, Inode};

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

/// Why writing a change set as a tar, or serving or fetching it, failed.
#[derive(Debug, thiserror::Error)]
pub enum ChangesError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("reading {path:?} from the container's file system: errno {errno}")]
    Read { path: String, errno: i32 },
    #[error("the container's shim did not answer: {0}")]
    Server(String),
}

impl ChangesError {
    pub(crate) fn io(path: impl std::fmt::Display, source: std::io::Error) -> Self {
        ChangesError::Io {
            path: path.to_string(),
            source,
        }
    }
}

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

#[cfg(test)]
mod tests {
    use crate::fs::tree::{MergedTree, ROOT_INO};
    use crate::fs::view::{Caller, SetAttr, View};
    use crate::layer::LayerIndex;
    use crate::layer::fixtures::{dir, file};
    use crate::rwlayer::RwLayer;

    const ME: Caller = Caller { uid: 0, gid: 0 };

    /// `a/{x,y}`, `b/c/deep`, `big/` with 50 files, `f`.
    fn view(tmp: &std::path::Path) -> View {
        let mut entries = vec![
            dir(""),
            dir("a"),
            file("a/x", 0, 0),
            file("a/y", 0, 1),
            dir("b"),
            dir("b/c"),
            file("b/c/deep", 0, 2),
            file("f", 0, 3),
            dir("big"),
        ];
        for i in 0..50 {
            entries.push(file(&format!("big/{i:02}"), 0, 10 + i));
        }
        let index = LayerIndex { entries, files: 60 };
        let layer = RwLayer::open(&tmp.join("layer"), "t").unwrap();
        View::new(MergedTree::build(&[index]), vec![tmp.to_path_buf()], layer).unwrap()
    }

    fn ino(v: &View, path: &str) -> u64 {
        path.split('/')
            .fold(ROOT_INO, |at, n| v.lookup(at, n.as_bytes()).unwrap().ino)
    }

    fn listing(v: &View) -> Vec<String> {
        v.changes()
            .iter()
            .map(|c| format!("{} {}", c.kind.letter(), c.display_path()))
            .collect()
    }

    #[test]
    fn renames_replacements_metadata_and_links_list_as_docker_does() {
        let tmp = tempfile::tempdir().unwrap();
        let v = view(tmp.path());
        assert!(v.changes().is_empty());
        // chmod of a lower file deep down: its parents are C.
        v.setattr(
            ino(&v, "b/c/deep"),
            &SetAttr {
                mode: Some(0o600),
                ..Default::default()
            },
        )
        .unwrap();
        // A renamed lower directory: D at the old path, A for it and everything below.
        v.rename(ROOT_INO, b"a", ROOT_INO, b"moved", 0).unwrap();
        // A file deleted and another made at its path: C.
        v.unlink(ROOT_INO, b"f").unwrap();
        v.make(ME, ROOT_INO, b"f", libc::S_IFREG | 0o644, 0, None)
            .unwrap();
        // A hard link to a lower file in a big directory: the file is C, the link A.
        let big = ino(&v, "big");
        v.link(ino(&v, "big/07"), big, b"link").unwrap();
        // A directory emptied and made again: D, then its new contents A.
        let c = ino(&v, "b/c");
        v.unlink(c, b"deep").unwrap();
        let b = ino(&v, "b");
        v.rmdir(b, b"c").unwrap();
        let nc = v.make(ME, b, b"c", libc::S_IFDIR | 0o755, 0, None).unwrap();
        v.make(ME, nc.ino, b"new", libc::S_IFREG | 0o644, 0, None)
            .unwrap();
        assert_eq!(
            listing(&v),
            [
                "D /a",
                "C /b",
                "D /b/c",
                "A /b/c/new",
                "C /big",
                "C /big/07",
                "A /big/link",
                "C /f",
                "A /moved",
                "A /moved/x",
                "A /moved/y",
            ]
        );
        let opaque: Vec<bool> = v.changes().iter().map(|c| c.opaque).collect();
        assert!(opaque[2], "the replaced directory is opaque in a commit");
        // Export: everything, parents first.
        let all: Vec<String> = v
            .everything()
            .iter()
            .map(|c| String::from_utf8_lossy(&c.path).into_owned())
            .take(5)
            .collect();
        assert_eq!(all, ["b", "b/c", "b/c/new", "big", "big/00"]);
    }

    #[test]
    fn mount_targets_and_the_directories_made_for_them_are_left_out() {
        use super::{Change, ChangeKind, without_mount_targets};
        let ch = |kind, p: &str| Change {
            kind,
            path: p.into(),
            ino: Some(1),
            opaque: false,
        };
        let all = vec![
            ch(ChangeKind::Add, "etc"),
            ch(ChangeKind::Add, "etc/hosts"),
            ch(ChangeKind::Modify, "srv"),
            ch(ChangeKind::Add, "srv/vol"),
            ch(ChangeKind::Add, "srv/mine"),
        ];
        let kept: Vec<String> =
            without_mount_targets(all, &[b"etc/hosts".to_vec(), b"srv/vol".to_vec()])
                .iter()
                .map(|c| c.display_path())
                .collect();
        assert_eq!(kept, ["/srv", "/srv/mine"]);
    }
}

//! The merged view of a stack of layers, as one immutable in-memory tree of inodes.
//!
//! Owns the overlay semantics — top-most entry wins, whiteouts delete, opaque directories hide
//! what is below, a directory over a directory merges, anything else replaces — and the
//! numbering of inodes. Built once at mount time from the layer indexes; after that every
//! lookup is one binary search in one directory, whatever the number of layers. Knows nothing
//! about FUSE or about where data files live (it names them by layer and file number).

use fxhash::FxHashMap;

use crate::layer::{Entry, Kind, LayerIndex};

/// Inode number of the root, as FUSE wants it.
pub const ROOT_INO: u64 = 1;

/// What an inode is, with the data that depends on the kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeKind {
    /// Children sorted by name, each with its inode number.
    Dir {
        children: Box<[(Box<[u8]>, u64)]>,
    },
    /// `file` is the data file number within `Node::layer` (`None` for an empty file).
    File {
        file: Option<u32>,
    },
    Symlink {
        target: Box<[u8]>,
    },
    Fifo,
    Socket,
    CharDev {
        rdev: u32,
    },
    BlockDev {
        rdev: u32,
    },
}

/// Extended attributes of a node, `(name, value)`, sorted by name.
pub type Xattrs = Box<[(Box<[u8]>, Box<[u8]>)]>;

/// One inode of the merged view.
#[derive(Debug, Clone)]
pub struct Node {
    pub kind: NodeKind,
    /// Which layer (0 = bottom) the inode comes from.
    pub layer: u16,
    pub parent: u64,
    /// Permission bits with setuid/setgid/sticky.
    pub perm: u16,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub mtime: i64,
    pub mtime_nsec: u32,
    pub nlink: u32,
    pub xattrs: Xattrs,
}

impl Node {
    pub fn is_dir(&self) -> bool {
        matches!(self.kind, NodeKind::Dir { .. })
    }

    /// The child `name` of a directory.
    pub fn child(&self, name: &[u8]) -> Option<u64> {
        match &self.kind {
            NodeKind::Dir { children } => children
                .binary_search_by(|(n, _)| n.as_ref().cmp(name))
                .ok()
                .map(|i| children[i].1),
            _ => None,
        }
    }

    pub fn xattr(&self, name: &[u8]) -> Option<&[u8]> {
        self.xattrs
            .iter()
            .find(|(n, _)| n.as_ref() == name)
            .map(|(_, v)| v.as_ref())
    }
}

/// The merged tree: `nodes[ino - 1]` is inode `ino`.
#[derive(Debug)]
pub struct MergedTree {
    nodes: Vec<Node>,
}

impl MergedTree {
    /// Merges `layers`, bottom layer first.
    pub fn build(layers: &[LayerIndex]) -> Self {
        let mut b = Builder { nodes: Vec::new() };
        b.nodes.push(BuildNode::root());
        for (i, layer) in layers.iter().enumerate() {
            b.apply(i as u16, layer);
        }
        b.freeze()
    }

    pub fn get(&self, ino: u64) -> Option<&Node> {
        self.nodes.get(usize::try_from(ino.checked_sub(1)?).ok()?)
    }

    pub fn root(&self) -> &Node {
        &self.nodes[0]
    }

    /// Number of inodes.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Resolves a `/`-separated path from the root without following symlinks.
    pub fn resolve(&self, path: &[u8]) -> Option<u64> {
        let mut ino = ROOT_INO;
        for comp in path
            .split(|&b| b == b'/')
            .filter(|c| !c.is_empty() && *c != b".")
        {
            ino = self.get(ino)?.child(comp)?;
        }
        Some(ino)
    }
}

/// A node while layers are being applied: it borrows its entry and names from the layer
/// indexes (no copies while merging), and directories keep a map for cheap edits.
#[derive(Debug)]
struct BuildNode<'a> {
    entry: &'a Entry,
    layer: u16,
    children: FxHashMap<&'a [u8], usize>,
}

/// The root's attributes when no layer has an entry for it.
static DEFAULT_ROOT: Entry = Entry::implicit_dir(Vec::new());

impl BuildNode<'_> {
    fn root() -> Self {
        BuildNode {
            entry: &DEFAULT_ROOT,
            layer: 0,
            children: FxHashMap::default(),
        }
    }
}

#[derive(Debug)]
struct Builder<'a> {
    nodes: Vec<BuildNode<'a>>,
}

impl<'a> Builder<'a> {
    /// The node at `path`, if any (no symlinks are followed: layers never do).
    fn find(&self, path: &[u8]) -> Option<usize> {
        let mut at = 0usize;
        if path.is_empty() {
            return Some(0);
        }
        for comp in path.split(|&b| b == b'/') {
            at = *self.nodes[at].children.get(comp)?;
        }
        Some(at)
    }

    fn apply(&mut self, layer: u16, index: &'a LayerIndex) {
        // Whiteouts and opaque markers hide what the layers *below* hold, so they are applied
        // before this layer's own entries are added.
        for e in &index.entries {
            match e.kind {
                Kind::Whiteout => {
                    if let Some(p) = e.parent().and_then(|p| self.find(p)) {
                        self.nodes[p].children.remove(e.name());
                    }
                }
                Kind::Dir { opaque: true, .. } => {
                    if let Some(at) = self.find(&e.path)
                        && self.nodes[at].entry.kind.is_dir()
                    {
                        self.nodes[at].children.clear();
                    }
                }
                _ => {}
            }
        }
        // Hard links: names sharing a data file share one node.
        let mut linked: FxHashMap<u32, usize> = FxHashMap::default();
        for e in &index.entries {
            if e.kind == Kind::Whiteout {
                continue;
            }
            let Some(parent_path) = e.parent() else {
                self.merge_dir(0, layer, e);
                continue;
            };
            // The index lists a directory before its children, so the parent exists and is a
            // directory of this layer (possibly merged with a lower one).
            let Some(parent) = self.find(parent_path) else {
                continue;
            };
            let name = e.name();
            let existing = self.nodes[parent].children.get(name).copied();
            if let (Kind::Dir { .. }, Some(old)) = (&e.kind, existing)
                && self.nodes[old].entry.kind.is_dir()
            {
                self.merge_dir(old, layer, e);
                continue;
            }
            let node = match e.kind {
                Kind::File { file, .. } => match linked.get(&file) {
                    Some(&n) => n,
                    None => {
                        let n = self.push(layer, e);
                        linked.insert(file, n);
                        n
                    }
                },
                _ => self.push(layer, e),
            };
            self.nodes[parent].children.insert(name, node);
        }
    }

    /// A directory entry over an existing directory: the upper attributes win (unless the
    /// upper directory is only implied by its children), the contents merge.
    fn merge_dir(&mut self, at: usize, layer: u16, e: &'a Entry) {
        if matches!(e.kind, Kind::Dir { implicit: true, .. }) {
            return;
        }
        let n = &mut self.nodes[at];
        n.entry = e;
        n.layer = layer;
    }

    fn push(&mut self, layer: u16, e: &'a Entry) -> usize {
        self.nodes.push(BuildNode {
            entry: e,
            layer,
            children: FxHashMap::default(),
        });
        self.nodes.len() - 1
    }

    /// Numbers the reachable nodes breadth-first (so numbers are the same at every mount of
    /// the same layers) and converts them to their final form.
    fn freeze(self) -> MergedTree {
        let mut ino_of: Vec<u64> = vec![0; self.nodes.len()];
        let mut order: Vec<(usize, u64)> = vec![(0, ROOT_INO)]; // (build node, parent ino)
        ino_of[0] = ROOT_INO;
        let mut i = 0;
        while i < order.len() {
            let (at, _) = order[i];
            let mut kids: Vec<(&&[u8], &usize)> = self.nodes[at].children.iter().collect();
            kids.sort_unstable_by(|a, b| a.0.cmp(b.0));
            let my_ino = ino_of[at];
            for (_, &child) in kids {
                if ino_of[child] == 0 {
                    ino_of[child] = order.len() as u64 + 1;
                    order.push((child, my_ino));
                }
            }
            i += 1;
        }
        let mut out = Vec::with_capacity(order.len());
        for &(at, parent) in &order {
            let b = &self.nodes[at];
            let e = &b.entry;
            let (kind, size, nlink) = match &e.kind {
                Kind::Dir { .. } => {
                    let mut children: Vec<(Box<[u8]>, u64)> = b
                        .children
                        .iter()
                        .map(|(n, &c)| (Box::<[u8]>::from(*n), ino_of[c]))
                        .collect();
                    children.sort_unstable_by(|a, b| a.0.cmp(&b.0));
                    let subdirs = b
                        .children
                        .values()
                        .filter(|&&c| self.nodes[c].entry.kind.is_dir())
                        .count();
                    (
                        NodeKind::Dir {
                            children: children.into(),
                        },
                        4096,
                        2 + subdirs as u32,
                    )
                }
                Kind::File { size, file, nlink } => (
                    NodeKind::File {
                        file: (*size > 0).then_some(*file),
                    },
                    *size,
                    *nlink,
                ),
                Kind::Symlink { target } => (
                    NodeKind::Symlink {
                        target: target.as_slice().into(),
                    },
                    target.len() as u64,
                    1,
                ),
                Kind::Fifo => (NodeKind::Fifo, 0, 1),
                Kind::Socket => (NodeKind::Socket, 0, 1),
                Kind::CharDev { major, minor } => (
                    NodeKind::CharDev {
                        rdev: encode_dev(*major, *minor),
                    },
                    0,
                    1,
                ),
                Kind::BlockDev { major, minor } => (
                    NodeKind::BlockDev {
                        rdev: encode_dev(*major, *minor),
                    },
                    0,
                    1,
                ),
                // Whiteouts never become nodes.
                Kind::Whiteout => (NodeKind::Fifo, 0, 1),
            };
            out.push(Node {
                kind,
                layer: b.layer,
                parent,
                perm: (e.mode & 0o7777) as u16,
                uid: e.uid,
                gid: e.gid,
                size,
                mtime: e.mtime,
                mtime_nsec: e.mtime_nsec,
                nlink,
                xattrs: e
                    .xattrs
                    .iter()
                    .map(|(n, v)| (n.as_slice().into(), v.as_slice().into()))
                    .collect(),
            });
        }
        MergedTree { nodes: out }
    }
}

/// The kernel's "new" `dev_t` encoding, which FUSE's 32-bit `rdev` carries.
fn encode_dev(major: u32, minor: u32) -> u32 {
    (minor & 0xff) | ((major & 0xfff) << 8) | ((minor & !0xff) << 12)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layer::fixtures::{dir, entry, file};

    fn layer(entries: Vec<Entry>) -> LayerIndex {
        LayerIndex { entries, files: 10 }
    }
    fn names(t: &MergedTree, path: &str) -> Vec<String> {
        let n = t.get(t.resolve(path.as_bytes()).unwrap()).unwrap();
        match &n.kind {
            NodeKind::Dir { children } => children
                .iter()
                .map(|(n, _)| String::from_utf8_lossy(n).into_owned())
                .collect(),
            _ => panic!("{path} is not a dir"),
        }
    }

    #[test]
    fn whiteout_opaque_and_replacement() {
        let l0 = layer(vec![
            dir(""),
            dir("a"),
            file("a/x", 1, 0),
            file("a/y", 1, 1),
            dir("o"),
            file("o/old", 1, 2),
            file("f", 1, 3),
            dir("d"),
            file("d/inner", 1, 4),
        ]);
        let mut opaque = dir("o");
        opaque.kind = Kind::Dir {
            opaque: true,
            implicit: false,
        };
        let l1 = layer(vec![
            entry("a/x", Kind::Whiteout),
            opaque,
            file("o/new", 1, 0),
            dir("f"),
            file("f/child", 1, 1),
            file("d", 1, 2),
        ]);
        let t = MergedTree::build(&[l0, l1]);
        assert_eq!(names(&t, ""), ["a", "d", "f", "o"]);
        assert_eq!(names(&t, "a"), ["y"]);
        assert_eq!(names(&t, "o"), ["new"]);
        assert_eq!(names(&t, "f"), ["child"]);
        assert!(!t.get(t.resolve(b"d").unwrap()).unwrap().is_dir());
        assert!(t.resolve(b"d/inner").is_none());
        // 2 + subdirectories a, f, o.
        assert_eq!(t.root().nlink, 5);
    }

    #[test]
    fn hard_links_share_an_inode_and_numbers_are_stable() {
        let mut a = file("a", 1, 7);
        a.kind = Kind::File {
            size: 1,
            file: 7,
            nlink: 2,
        };
        let mut b = a.clone();
        b.path = b"b".to_vec();
        let layers = [layer(vec![dir(""), a, b])];
        let t = MergedTree::build(&layers);
        assert_eq!(t.resolve(b"a"), t.resolve(b"b"));
        assert_eq!(t.get(t.resolve(b"a").unwrap()).unwrap().nlink, 2);
        let again = MergedTree::build(&layers);
        assert_eq!(again.resolve(b"b"), t.resolve(b"b"));
    }

    #[test]
    fn implicit_dir_keeps_lower_attributes() {
        let mut lower = dir("etc");
        lower.mode = 0o700;
        let mut implicit = dir("etc");
        implicit.kind = Kind::Dir {
            opaque: false,
            implicit: true,
        };
        let t = MergedTree::build(&[
            layer(vec![lower]),
            layer(vec![implicit, file("etc/x", 1, 0)]),
        ]);
        let etc = t.get(t.resolve(b"etc").unwrap()).unwrap();
        assert_eq!(etc.perm, 0o700);
        assert_eq!(names(&t, "etc"), ["x"]);
    }

    #[test]
    fn device_numbers_use_the_kernel_encoding() {
        assert_eq!(encode_dev(1, 3), 0x103);
        assert_eq!(encode_dev(8, 0x12345), 0x12300845);
    }
}

//! Snapshots of a mounted tree (path → type, mode, owner, size, times, content hash, link
//! target, xattrs, inode) and the comparison of two of them the mount tests make. One type for
//! the fuse tests and the differential tester (which compares with its own time and link-count
//! rules, `difftest::compare_trees`).

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::io::Read as _;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirEntryExt, FileTypeExt, MetadataExt};
use std::path::Path;

use sha2::{Digest as _, Sha256};

/// The `stat` fields the tester looks at. `ino` is only used to count names (never compared).
#[derive(Clone, Debug, PartialEq)]
pub struct St {
    pub kind: char,
    pub perm: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub rdev: u64,
    pub nlink: u64,
    pub mtime: (i64, i64),
    pub ino: u64,
}

/// Everything compared about one path of a mounted tree .
#[derive(Debug, Clone, PartialEq)]
pub struct Meta {
    pub st: St,
    pub content: Option<String>,
    pub target: Option<Vec<u8>>,
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

/// A mounted tree: path → metadata. The walk never follows symlinks and never opens
/// anything but regular files; it checks `d_ino == st_ino` on the way.
pub struct Snapshot {
    pub entries: BTreeMap<Vec<u8>, Meta>,
}

impl Snapshot {
    /// Walks `root` (see [`Snapshot`]); panics on any error.
    pub fn take(root: &Path) -> Snapshot {
        Snapshot::try_take(root).unwrap_or_else(|e| panic!("snapshot of {}: {e}", root.display()))
    }

    /// Walks `root` (see [`Snapshot`]).
    pub fn try_take(root: &Path) -> Result<Snapshot, String> {
        let mut s = Snapshot {
            entries: BTreeMap::new(),
        };
        s.add(root, b"")?;
        let mut stack = vec![(root.to_path_buf(), Vec::new())];
        while let Some((dir, rel)) = stack.pop() {
            let rd = std::fs::read_dir(&dir).map_err(|e| format!("readdir {}: {e}", show(&rel)))?;
            for e in rd {
                let e = e.map_err(|e| format!("readdir {}: {e}", show(&rel)))?;
                let mut r = rel.clone();
                if !r.is_empty() {
                    r.push(b'/');
                }
                r.extend_from_slice(e.file_name().as_bytes());
                let ino = s.add(&e.path(), &r)?;
                if e.ino() != ino {
                    return Err(format!("{}: d_ino {} != st_ino {ino}", show(&r), e.ino()));
                }
                // Recurse by what lstat says (d_type comes from the server under test and must
                // agree; a "directory" that is really a symlink must never be walked).
                let kind = s.entries[&r].st.kind;
                let ft = e.file_type().map_err(|e| e.to_string())?;
                if ft.is_dir() != (kind == 'd') || ft.is_symlink() != (kind == 'l') {
                    return Err(format!(
                        "{}: readdir's d_type {ft:?} disagrees with lstat's type {kind}",
                        show(&r)
                    ));
                }
                if kind == 'd' {
                    stack.push((e.path(), r));
                }
                if s.entries.len() > 200_000 {
                    return Err("more than 200000 entries: runaway tree".into());
                }
            }
        }
        Ok(s)
    }

    fn add(&mut self, p: &Path, rel: &[u8]) -> Result<u64, String> {
        let err = |what: &str, e: std::io::Error| format!("{what} {}: {e}", show(rel));
        let m = std::fs::symlink_metadata(p).map_err(|e| err("lstat", e))?;
        let ft = m.file_type();
        let content = if ft.is_file() {
            let mut h = Sha256::new();
            let mut f = std::fs::File::open(p).map_err(|e| err("open", e))?;
            let mut buf = vec![0; 1 << 16];
            loop {
                let n = f.read(&mut buf).map_err(|e| err("read", e))?;
                if n == 0 {
                    break;
                }
                h.update(&buf[..n]);
            }
            Some(hex::encode(h.finalize()))
        } else {
            None
        };
        let target = if ft.is_symlink() {
            Some(
                std::fs::read_link(p)
                    .map_err(|e| err("readlink", e))?
                    .as_os_str()
                    .as_bytes()
                    .to_vec(),
            )
        } else {
            None
        };
        let st = St {
            kind: if ft.is_dir() {
                'd'
            } else if ft.is_file() {
                'f'
            } else if ft.is_symlink() {
                'l'
            } else if ft.is_fifo() {
                'p'
            } else if ft.is_char_device() {
                'c'
            } else if ft.is_block_device() {
                'b'
            } else {
                's'
            },
            perm: m.mode() & 0o7777,
            uid: m.uid(),
            gid: m.gid(),
            size: m.size(),
            rdev: m.rdev(),
            nlink: m.nlink(),
            mtime: (m.mtime(), m.mtime_nsec()),
            ino: m.ino(),
        };
        self.entries.insert(
            rel.to_vec(),
            Meta {
                st,
                content,
                target,
                xattrs: xattrs(p),
            },
        );
        Ok(m.ino())
    }

    /// Non-directory path → the sorted paths sharing its inode.
    pub fn link_groups(&self) -> BTreeMap<Vec<u8>, Vec<Vec<u8>>> {
        let mut by_ino: BTreeMap<u64, Vec<Vec<u8>>> = BTreeMap::new();
        for (p, m) in &self.entries {
            if m.st.kind != 'd' {
                by_ino.entry(m.st.ino).or_default().push(p.clone());
            }
        }
        let mut out = BTreeMap::new();
        for group in by_ino.values() {
            for p in group {
                out.insert(p.clone(), group.clone());
            }
        }
        out
    }
}

/// The extended attributes of `p` (not following a symlink), sorted by name.
pub fn xattrs(p: &Path) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut names = vec![0u8; 64 * 1024];
    let n = match rustix::fs::llistxattr(p, &mut names[..]) {
        Ok(n) => n,
        Err(_) => return vec![],
    };
    let mut out = Vec::new();
    for name in names[..n].split(|&b| b == 0).filter(|n| !n.is_empty()) {
        let mut v = vec![0u8; 64 * 1024];
        if let Ok(len) = rustix::fs::lgetxattr(p, OsStr::from_bytes(name), &mut v[..]) {
            out.push((name.to_vec(), v[..len].to_vec()));
        }
    }
    out.sort();
    out
}

/// Printable form of a path or name: UTF-8 as is, other bytes escaped, long runs of one
/// character (the 255/256-byte names) abbreviated as `{c×N}`.
pub fn show(p: &[u8]) -> String {
    let mut out = String::new();
    let mut i = 0;
    while i < p.len() {
        let run = p[i..].iter().take_while(|&&c| c == p[i]).count();
        if run >= 16 {
            out.push_str(&format!("{{{}×{run}}}", p[i] as char));
            i += run;
            continue;
        }
        let rest = &p[i..];
        let valid = match std::str::from_utf8(rest) {
            Ok(s) => s.len(),
            Err(e) => e.valid_up_to(),
        };
        if valid > 0 {
            let s = std::str::from_utf8(&rest[..valid]).unwrap();
            // Stop before the next long run so it gets abbreviated.
            let mut take = 0;
            for (j, ch) in s.char_indices() {
                let r = rest[j..].iter().take_while(|&&c| c == rest[j]).count();
                if r >= 16 {
                    break;
                }
                take = j + ch.len_utf8();
            }
            if take == 0 {
                take = s.chars().next().unwrap().len_utf8();
            }
            out.push_str(&s[..take]);
            i += take;
        } else {
            out.push_str(&format!("\\x{:02x}", p[i]));
            i += 1;
        }
    }
    out
}

/// Everything [`assert_same_tree`] compares about a path: all of [`Meta`] but the inode
/// number, and for directories neither size nor link count (the backing file system's
/// business; overlayfs reports 1 link for merged directories).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Compared {
    kind: char,
    perm: u32,
    uid: u32,
    gid: u32,
    size: Option<u64>,
    mtime: (i64, i64),
    rdev: u64,
    nlink: Option<u64>,
    content: Option<String>,
    target: Option<Vec<u8>>,
    xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

impl Compared {
    fn of(m: &Meta) -> Compared {
        let dir = m.st.kind == 'd';
        Compared {
            kind: m.st.kind,
            perm: m.st.perm,
            uid: m.st.uid,
            gid: m.st.gid,
            size: (!dir).then_some(m.st.size),
            mtime: m.st.mtime,
            rdev: m.st.rdev,
            nlink: (!dir).then_some(m.st.nlink),
            content: m.content.clone(),
            target: m.target.clone(),
            xattrs: m.xattrs.clone(),
        }
    }
}

/// Asserts two snapshots are the same tree; `skip_attrs` lists directories whose own
/// attributes are not comparable (see the caller).
pub fn assert_same_tree(expected: &Snapshot, actual: &Snapshot, skip_attrs: &[Vec<u8>]) {
    let exp: Vec<_> = expected.entries.keys().map(|k| show(k)).collect();
    let act: Vec<_> = actual.entries.keys().map(|k| show(k)).collect();
    let missing: Vec<_> = exp.iter().filter(|p| !act.contains(p)).collect();
    let extra: Vec<_> = act.iter().filter(|p| !exp.contains(p)).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "names differ: missing {missing:?}, extra {extra:?}"
    );
    let mut diffs = Vec::new();
    for (p, e) in &expected.entries {
        let a = &actual.entries[p];
        let (mut e, a) = (Compared::of(e), Compared::of(a));
        if skip_attrs.contains(p) {
            e.mtime = a.mtime;
            e.perm = a.perm;
            e.uid = a.uid;
            e.gid = a.gid;
        }
        if e != a {
            diffs.push(format!("{}:\n  kernel {e:?}\n  strata {a:?}", show(p)));
        }
    }
    let (eg, ag) = (expected.link_groups(), actual.link_groups());
    for (p, g) in &eg {
        if ag.get(p) != Some(g) {
            diffs.push(format!(
                "{}: hard-link group {:?} vs {:?}",
                show(p),
                g.iter().map(|x| show(x)).collect::<Vec<_>>(),
                ag.get(p)
            ));
        }
    }
    assert!(
        diffs.is_empty(),
        "{} paths differ:\n{}",
        diffs.len(),
        diffs.join("\n")
    );
}

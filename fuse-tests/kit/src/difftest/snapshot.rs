//! Tree snapshots of a mount, and comparing the final trees of both sides.

use super::*;

/// Everything compared about one path of a mounted tree (as `fuse-tests/common::Meta`).
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
    pub fn take(root: &Path) -> Result<Snapshot, String> {
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
    fn link_groups(&self) -> BTreeMap<Vec<u8>, Vec<Vec<u8>>> {
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

fn xattrs(p: &Path) -> Vec<(Vec<u8>, Vec<u8>)> {
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

/// Compares the final trees: the same names; per path the same type, mode, owner, rdev,
/// size (non-directories), content, link target, xattrs, nlink (non-directories, per
/// [`nlink_ok`] with the link-group size as the truth) and mtime (per [`Times`]); the same
/// hard-link groups. Not compared: inode numbers (only the grouping), atime/ctime,
/// directory sizes and link counts.
pub fn compare_trees(a: &Snapshot, b: &Snapshot, times: &Times) -> Option<String> {
    let mut diffs = Vec::new();
    let missing: Vec<String> = a
        .entries
        .keys()
        .filter(|k| !b.entries.contains_key(*k))
        .map(|k| show(k))
        .collect();
    let extra: Vec<String> = b
        .entries
        .keys()
        .filter(|k| !a.entries.contains_key(*k))
        .map(|k| show(k))
        .collect();
    if !missing.is_empty() || !extra.is_empty() {
        diffs.push(format!(
            "names differ: only in kernel {missing:?}, only in strata {extra:?}"
        ));
    }
    let (ga, gb) = (a.link_groups(), b.link_groups());
    for (p, ma) in &a.entries {
        let Some(mb) = b.entries.get(p) else {
            continue;
        };
        let truth = ga.get(p).map_or(0, |g| g.len() as u64);
        let mut what = Vec::new();
        if let Err(e) = compare_stat(&ma.st, &mb.st, times, || truth) {
            what.push(e);
        }
        if ma.content != mb.content {
            what.push(format!(
                "content sha256 {:?} vs {:?}",
                ma.content.as_deref().map(|c| &c[..16]),
                mb.content.as_deref().map(|c| &c[..16])
            ));
        }
        if ma.target != mb.target {
            what.push(format!(
                "link target {:?} vs {:?}",
                ma.target.as_deref().map(show),
                mb.target.as_deref().map(show)
            ));
        }
        if ma.xattrs != mb.xattrs {
            let list = |x: &[(Vec<u8>, Vec<u8>)]| -> Vec<String> {
                x.iter()
                    .map(|(n, v)| format!("{}={}", show(n), show(v)))
                    .collect()
            };
            what.push(format!(
                "xattrs {:?} vs {:?}",
                list(&ma.xattrs),
                list(&mb.xattrs)
            ));
        }
        if ma.st.kind != 'd' && ga.get(p) != gb.get(p) {
            let list = |g: Option<&Vec<Vec<u8>>>| -> Vec<String> {
                g.map(|g| g.iter().map(|x| show(x)).collect())
                    .unwrap_or_default()
            };
            what.push(format!(
                "hard-link group {:?} vs {:?}",
                list(ga.get(p)),
                list(gb.get(p))
            ));
        }
        if !what.is_empty() {
            diffs.push(format!("{}: {}", show(p), what.join("; ")));
        }
    }
    if diffs.is_empty() {
        None
    } else {
        let n = diffs.len();
        diffs.truncate(20);
        Some(format!(
            "final trees differ ({n} path(s)):\n  {}",
            diffs.join("\n  ")
        ))
    }
}

//! Generating seeded random sequences over a pool of the paths that exist.

use super::*;

/// The image's paths, learned once from the first kernel mount.
#[derive(Clone, Debug, Default)]
pub struct Pool {
    /// Every path of the merged image (not the root), with its type.
    pub lower: Vec<(Vec<u8>, char)>,
    /// Paths that exist in some layer but are hidden by a whiteout, an opaque directory or a
    /// replacement: creating them must not resurrect anything.
    pub ghosts: Vec<Vec<u8>>,
}

impl Pool {
    pub(super) fn learn(mnt: &Path, lowers: &[PathBuf]) -> anyhow::Result<Pool> {
        let snap = Snapshot::try_take(mnt).map_err(|e| anyhow::anyhow!(e))?;
        let lower: Vec<(Vec<u8>, char)> = snap
            .entries
            .iter()
            .filter(|(p, _)| !p.is_empty())
            .map(|(p, m)| (p.clone(), m.st.kind))
            .collect();
        let merged: BTreeSet<&Vec<u8>> = snap.entries.keys().collect();
        let mut ghosts = BTreeSet::new();
        for l in lowers {
            let mut stack = vec![(l.clone(), Vec::<u8>::new())];
            while let Some((d, rel)) = stack.pop() {
                for e in std::fs::read_dir(&d)?.flatten() {
                    let mut r = rel.clone();
                    if !r.is_empty() {
                        r.push(b'/');
                    }
                    r.extend_from_slice(e.file_name().as_bytes());
                    if !merged.contains(&r) {
                        ghosts.insert(r.clone());
                    }
                    if e.file_type()?.is_dir() {
                        stack.push((e.path(), r));
                    }
                }
            }
        }
        Ok(Pool {
            lower,
            ghosts: ghosts.into_iter().collect(),
        })
    }
}

/// Names for new entries: few, so that sequences collide (create twice, rename onto an
/// existing name, …), plus a 255-byte name (the maximum) and, rarely, a 256-byte one
/// (ENAMETOOLONG on every operation).
const NAMES: &[&str] = &["a", "b", "c.txt", "new", "x y", "é", "sub"];

/// Generates operations one at a time, with a model of which paths exist built from the
/// kernel side's results ([`Gen::observe`]), so most operations address existing files and
/// directories (or new names in existing directories) rather than failing with ENOENT. The
/// sequence is a function of the seed and of the kernel's (deterministic) results.
pub struct Gen {
    rng: Rng,
    ghosts: Vec<Vec<u8>>,
    /// Paths that exist (per the kernel's results), with their type.
    live: BTreeMap<Vec<u8>, char>,
    /// Cached views of `live` (rebuilt after a change).
    cache: Option<Views>,
    /// Slots holding an open descriptor (per the kernel's results).
    opened: Vec<usize>,
}

/// All live paths but the root, the regular files, the directories (with the root).
type Views = (Vec<Vec<u8>>, Vec<Vec<u8>>, Vec<Vec<u8>>);

fn join(dir: &[u8], name: &[u8]) -> Vec<u8> {
    let mut p = dir.to_vec();
    if !p.is_empty() {
        p.push(b'/');
    }
    p.extend_from_slice(name);
    p
}

fn under(p: &[u8], dir: &[u8]) -> bool {
    p.len() > dir.len() && p.starts_with(dir) && p[dir.len()] == b'/'
}

impl Gen {
    pub fn new(seed: u64, pool: &Pool) -> Self {
        let mut live: BTreeMap<Vec<u8>, char> = pool.lower.iter().cloned().collect();
        live.insert(Vec::new(), 'd');
        Gen {
            rng: Rng::new(seed),
            ghosts: pool.ghosts.clone(),
            live,
            cache: None,
            opened: Vec::new(),
        }
    }

    /// (all paths but the root, regular files, directories including the root).
    fn views(&mut self) -> &Views {
        self.cache.get_or_insert_with(|| {
            let all = self
                .live
                .keys()
                .filter(|p| !p.is_empty())
                .cloned()
                .collect();
            let of = |k: char| {
                self.live
                    .iter()
                    .filter(|(_, v)| **v == k)
                    .map(|(p, _)| p.clone())
                    .collect()
            };
            (all, of('f'), of('d'))
        })
    }

    fn pick_view(&mut self, which: usize) -> Vec<u8> {
        let r = self.rng.next_u64();
        let v = self.views();
        let v = match which {
            0 => &v.0,
            1 => &v.1,
            _ => &v.2,
        };
        if v.is_empty() {
            Vec::new()
        } else {
            v[(r % v.len() as u64) as usize].clone()
        }
    }

    /// Updates the model with what an operation did on the kernel side.
    pub fn observe(&mut self, op: &Op, res: &Res) {
        let ok = res.is_ok();
        let changed = |g: &mut Gen| g.cache = None;
        match op {
            Op::Open {
                slot, path, flags, ..
            } => {
                self.opened.retain(|s| s != slot);
                if ok && !matches!(res, Ok(Val::Skipped(_))) {
                    self.opened.push(*slot);
                }
                if ok && flags & libc::O_CREAT as u32 != 0 && !self.live.contains_key(path) {
                    self.live.insert(path.clone(), 'f');
                    changed(self);
                }
            }
            Op::Close { slot } => self.opened.retain(|s| s != slot),
            Op::WriteFile { path, flags, .. } if ok && flags & libc::O_CREAT as u32 != 0 => {
                self.live.entry(path.clone()).or_insert('f');
                changed(self);
            }
            Op::Mkdir { path, .. } if ok => {
                self.live.insert(path.clone(), 'd');
                changed(self);
            }
            Op::Mknod { path, socket, .. } if ok => {
                self.live
                    .insert(path.clone(), if *socket { 's' } else { 'p' });
                changed(self);
            }
            Op::Symlink { path, .. } if ok => {
                self.live.insert(path.clone(), 'l');
                changed(self);
            }
            Op::Link { from, to } if ok => {
                let k = self.live.get(from).copied().unwrap_or('f');
                self.live.insert(to.clone(), k);
                changed(self);
            }
            Op::Unlink { path } | Op::Rmdir { path } if ok => {
                self.live.remove(path);
                changed(self);
            }
            Op::Rename { from, to, flags } if ok && from != to => {
                let take = |live: &mut BTreeMap<Vec<u8>, char>, root: &[u8]| {
                    let keys: Vec<Vec<u8>> = live
                        .keys()
                        .filter(|k| k.as_slice() == root || under(k, root))
                        .cloned()
                        .collect();
                    keys.into_iter()
                        .map(|k| {
                            let v = live.remove(&k).unwrap();
                            (k[root.len()..].to_vec(), v)
                        })
                        .collect::<Vec<_>>()
                };
                let a = take(&mut self.live, from);
                let b = take(&mut self.live, to);
                for (rest, v) in a {
                    self.live.insert([to.as_slice(), &rest].concat(), v);
                }
                if *flags == libc::RENAME_EXCHANGE {
                    for (rest, v) in b {
                        self.live.insert([from.as_slice(), &rest].concat(), v);
                    }
                }
                changed(self);
            }
            _ => {}
        }
    }

    fn name(&mut self) -> Vec<u8> {
        match self.rng.below(100) {
            0..=2 => vec![b'n'; 255],
            3 => vec![b'm'; 256],
            _ => self.rng.pick(NAMES).as_bytes().to_vec(),
        }
    }

    fn dir(&mut self) -> Vec<u8> {
        self.pick_view(2)
    }

    /// A new name in an existing directory.
    fn new_path(&mut self) -> Vec<u8> {
        let d = self.dir();
        let n = self.name();
        join(&d, &n)
    }

    /// Any path: existing ones of every type (lower or created), hidden ones (whiteouts,
    /// opaque directories), new names, interesting lower files, paths through symlinks and
    /// paths that cannot resolve.
    fn path(&mut self) -> Vec<u8> {
        match self.rng.below(100) {
            0..=49 => self.pick_view(0),
            50..=56 if !self.ghosts.is_empty() => self.rng.pick(&self.ghosts).clone(),
            57..=61 => self
                .rng
                .pick(&[
                    "srv/files/sparse-16M",
                    "bin/busybox",
                    "srv/hardlinks/a/original.txt",
                    "srv/hardlinks/third-name.txt",
                    "srv/changes/opaque-dir",
                    "srv/changes/readd-dir",
                    "srv/xattrs/cap-net-bind-service",
                    "srv/perms/setgid-dir",
                    "srv/deep/d01",
                ])
                .as_bytes()
                .to_vec(),
            62..=64 => {
                let n = self.name();
                let d = *self.rng.pick(&[
                    "etc/motd",
                    "nonexistent",
                    "srv/symlinks/to-dir",
                    "srv/symlinks/absolute-to-dir",
                    "srv/symlinks/dangling",
                ]);
                join(d.as_bytes(), &n)
            }
            _ => self.new_path(),
        }
    }

    /// A path that is more often an existing regular file.
    fn file(&mut self) -> Vec<u8> {
        if self.rng.chance(70) {
            let f = self.pick_view(1);
            if !f.is_empty() {
                return f;
            }
        }
        self.path()
    }

    fn offset(&mut self) -> u64 {
        match self.rng.below(100) {
            0..=24 => 0,
            25..=54 => self.rng.below(8192),
            55..=74 => self.rng.below(300_000),
            // "1 byte into a big file": anywhere in the 16 MiB lower file and beyond.
            _ => self.rng.range(1 << 20, 17 << 20),
        }
    }

    fn len(&mut self) -> usize {
        match self.rng.below(100) {
            0..=19 => 1,
            20..=69 => self.rng.range(1, 4097) as usize,
            _ => self.rng.range(4097, 300_000) as usize,
        }
    }

    fn size(&mut self) -> u64 {
        match self.rng.below(100) {
            0..=19 => 0,
            20..=59 => self.rng.below(5000),
            60..=84 => self.rng.below(400_000),
            _ => self.rng.range(1 << 20, 17 << 20),
        }
    }

    fn mode(&mut self) -> u32 {
        match self.rng.below(10) {
            0..=5 => *self.rng.pick(&[0o644, 0o600, 0o755, 0o700, 0o444, 0o777]),
            _ => self.rng.below(0o10000) as u32,
        }
    }

    fn slot(&mut self) -> usize {
        if !self.opened.is_empty() && self.rng.chance(95) {
            *self.rng.pick(&self.opened)
        } else {
            self.rng.below(SLOTS as u64) as usize
        }
    }

    fn time(&mut self) -> (i64, i64) {
        (
            self.rng.range(1_000_000_000, 1_600_000_000) as i64,
            self.rng.below(1_000_000_000) as i64,
        )
    }

    fn xattr_name(&mut self, any: bool) -> String {
        let user = [
            "user.a",
            "user.b",
            "user.comment",
            "user.mime_type",
            "user.purpose",
        ];
        if any && self.rng.chance(20) {
            "security.capability".to_string()
        } else {
            self.rng.pick(&user).to_string()
        }
    }

    fn open_flags(&mut self) -> u32 {
        let mut f = *self
            .rng
            .pick(&[libc::O_RDONLY, libc::O_WRONLY, libc::O_RDWR, libc::O_RDWR]);
        for (pct, bit) in [
            (50, libc::O_CREAT),
            (15, libc::O_EXCL),
            (20, libc::O_TRUNC),
            (20, libc::O_APPEND),
            (8, libc::O_NOFOLLOW),
            (4, libc::O_DIRECTORY),
        ] {
            if self.rng.chance(pct) {
                f |= bit;
            }
        }
        f as u32
    }

    pub fn op(&mut self) -> Op {
        const W: &[u32] = &[
            12, 4, 12, 6, 2, 3, 3, 3, 3, // fd ops: open … fstat
            10, 5, 3, 5, // write_file, read_file, truncate, stat
            4, 4, 3, 6, 3, 3, 2, // unlink mkdir rmdir rename link symlink readlink
            3, 3, 4, // chmod chown utimens
            4, 2, 2, 2, // xattrs
            2, 4, // mknod readdir
        ];
        match self.rng.weighted(W) {
            0 => {
                let flags = self.open_flags();
                let path = if flags & libc::O_CREAT as u32 != 0 && self.rng.chance(50) {
                    self.new_path()
                } else {
                    self.file()
                };
                let slot = self.rng.below(SLOTS as u64) as usize;
                Op::Open {
                    slot,
                    path,
                    flags,
                    mode: self.mode(),
                }
            }
            1 => Op::Close { slot: self.slot() },
            2 => Op::Write {
                slot: self.slot(),
                off: if self.rng.chance(25) {
                    None
                } else {
                    Some(self.offset())
                },
                len: self.len(),
                data: self.rng.next_u64(),
            },
            3 => Op::Read {
                slot: self.slot(),
                off: if self.rng.chance(25) {
                    None
                } else {
                    Some(self.offset())
                },
                len: self.len().max(16),
            },
            4 => Op::Seek {
                slot: self.slot(),
                off: if self.rng.chance(50) {
                    -(self.rng.below(100) as i64)
                } else {
                    self.offset() as i64
                },
                from_end: self.rng.chance(50),
            },
            5 => Op::Ftruncate {
                slot: self.slot(),
                size: self.size(),
            },
            6 => Op::Fallocate {
                slot: self.slot(),
                mode: *self.rng.pick(&[
                    0,
                    libc::FALLOC_FL_KEEP_SIZE as u32,
                    (libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE) as u32,
                    libc::FALLOC_FL_ZERO_RANGE as u32,
                    (libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE) as u32,
                ]),
                off: self.offset(),
                len: self.len() as u64,
            },
            7 => Op::Fsync {
                slot: self.slot(),
                data_only: self.rng.chance(50),
            },
            8 => Op::Fstat { slot: self.slot() },
            9 => {
                let mut flags = 0u32;
                for (pct, bit) in [
                    (40, libc::O_CREAT),
                    (10, libc::O_EXCL),
                    (25, libc::O_TRUNC),
                    (20, libc::O_APPEND),
                ] {
                    if self.rng.chance(pct) {
                        flags |= bit as u32;
                    }
                }
                let path = if flags & libc::O_CREAT as u32 != 0 && self.rng.chance(50) {
                    self.new_path()
                } else {
                    self.file()
                };
                Op::WriteFile {
                    path,
                    flags,
                    off: if self.rng.chance(20) {
                        None
                    } else {
                        Some(self.offset())
                    },
                    len: self.len(),
                    data: self.rng.next_u64(),
                }
            }
            10 => Op::ReadFile { path: self.file() },
            11 => Op::Truncate {
                path: self.file(),
                size: self.size(),
            },
            12 => Op::Stat {
                path: if self.rng.chance(5) {
                    Vec::new()
                } else {
                    self.path()
                },
                follow: self.rng.chance(30),
            },
            13 => Op::Unlink { path: self.path() },
            14 => {
                let path = if self.rng.chance(70) {
                    self.new_path()
                } else {
                    self.path()
                };
                Op::Mkdir {
                    path,
                    mode: self.mode(),
                }
            }
            15 => Op::Rmdir { path: self.path() },
            16 => {
                // Mostly existing sources, a third of them directories (lower, merged or
                // created: the cases fuse-overlayfs refuses with EXDEV).
                let from = match self.rng.below(10) {
                    0..=2 => self.dir(),
                    3..=7 => self.pick_view(0),
                    _ => self.path(),
                };
                let to = if self.rng.chance(50) {
                    self.new_path()
                } else {
                    self.path()
                };
                Op::Rename {
                    from,
                    to,
                    flags: match self.rng.below(10) {
                        0..=5 => 0,
                        6..=7 => libc::RENAME_NOREPLACE,
                        _ => libc::RENAME_EXCHANGE,
                    },
                }
            }
            17 => {
                let from = self.file();
                let to = if self.rng.chance(75) {
                    self.new_path()
                } else {
                    self.path()
                };
                Op::Link { from, to }
            }
            18 => {
                let target = match self.rng.below(8) {
                    0 => b"/etc/passwd".to_vec(),
                    1 => b"../a".to_vec(),
                    2 => b"does-not-exist".to_vec(),
                    3 => vec![b't'; self.rng.range(200, 1500) as usize],
                    4 => Vec::new(),
                    5 => {
                        let mut t = b"/".to_vec();
                        t.extend(self.path());
                        t
                    }
                    _ => self.name(),
                };
                let path = if self.rng.chance(75) {
                    self.new_path()
                } else {
                    self.path()
                };
                Op::Symlink { target, path }
            }
            19 => Op::Readlink { path: self.path() },
            20 => Op::Chmod {
                path: self.path(),
                mode: self.mode(),
            },
            21 => {
                let ids = [None, Some(0), Some(1000), Some(1234), Some(65534)];
                let gids = [None, Some(0), Some(6), Some(1000), Some(5678)];
                Op::Chown {
                    path: self.path(),
                    uid: *self.rng.pick(&ids),
                    gid: *self.rng.pick(&gids),
                }
            }
            22 => Op::Utimens {
                path: self.path(),
                atime: self.time(),
                mtime: self.time(),
            },
            23 => {
                let len = if self.rng.chance(10) {
                    self.rng.range(200, 1000)
                } else {
                    self.rng.below(40)
                };
                Op::SetXattr {
                    path: self.path(),
                    name: self.xattr_name(false),
                    value: crate::fill(self.rng.next_u64(), len as usize),
                    flags: *self.rng.pick(&[0, 0, 1, 2]),
                }
            }
            24 => Op::GetXattr {
                path: self.path(),
                name: self.xattr_name(true),
            },
            25 => Op::ListXattr { path: self.path() },
            26 => Op::RemoveXattr {
                path: self.path(),
                name: self.xattr_name(false),
            },
            27 => {
                let path = if self.rng.chance(75) {
                    self.new_path()
                } else {
                    self.path()
                };
                Op::Mknod {
                    path,
                    socket: self.rng.chance(30),
                    mode: self.mode(),
                }
            }
            _ => Op::Readdir {
                path: if self.rng.chance(30) {
                    self.dir()
                } else {
                    self.path()
                },
            },
        }
    }
}

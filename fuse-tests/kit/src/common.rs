//! Shared helpers of the tests that mount real file systems: the sample image, a kernel
//! overlayfs oracle built from the same layer tars, a tree snapshot to compare mounts, and
//! guards that unmount even when a test fails.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::io::{Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirEntryExt, FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use sha2::{Digest as _, Sha256};

/// The repository (this crate is its `fuse-tests/kit`).
pub fn repo() -> PathBuf {
    let kit = Path::new(env!("CARGO_MANIFEST_DIR"));
    kit.parent()
        .and_then(Path::parent)
        .expect("fuse-tests/kit is two levels below the repository")
        .to_path_buf()
}

/// The cargo profile directory (`target/debug`) the running test or tool was built into: a
/// test is `target/<profile>/deps/NAME-HASH`, a tool (a cargo example)
/// `target/<profile>/examples/NAME`.
fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the running executable's path");
    exe.parent()
        .and_then(Path::parent)
        .expect("a test or example lives two levels below the target directory")
        .to_path_buf()
}

/// The strata binary under test: the one cargo built next to this test or tool (cargo builds
/// the package's binaries before its integration tests).
pub fn strata_bin() -> PathBuf {
    profile_dir().join("strata")
}

/// `target/tmp` (what cargo passes integration tests as `CARGO_TARGET_TMPDIR`), created.
pub fn target_tmp() -> PathBuf {
    let tmp = profile_dir()
        .parent()
        .expect("the profile directory is inside the target directory")
        .join("tmp");
    std::fs::create_dir_all(&tmp).expect("create target/tmp");
    tmp
}

/// Builds the sample image once (per recipe version) into `target/tmp` and returns its
/// output directory (see images/README.md); panics when it cannot.
pub fn sample_image() -> PathBuf {
    try_sample_image().expect("building the sample image")
}

/// [`sample_image`], for the tools: an error instead of a panic.
pub fn try_sample_image() -> anyhow::Result<PathBuf> {
    use anyhow::Context as _;
    let recipe = repo().join("images/build.py");
    let script = std::fs::read(&recipe).context("reading images/build.py")?;
    let stamp = hex::encode(&Sha256::digest(&script)[..8]);
    let out = target_tmp().join(format!("sample-image-{stamp}"));
    let _lock =
        strata::sys::lock_file(&out.with_extension("lock")).context("locking the sample image")?;
    if !out.join("done").exists() {
        let st = Command::new("python3")
            .arg(&recipe)
            .arg(&out)
            .status()
            .context("running python3")?;
        anyhow::ensure!(st.success(), "images/build.py failed");
        std::fs::write(out.join("done"), b"")?;
    }
    Ok(out)
}

/// The layer tars of the sample image, bottom first.
pub fn sample_layers() -> Vec<PathBuf> {
    let dir = sample_image().join("layers");
    let mut v: Vec<PathBuf> = (1..)
        .map(|i| dir.join(format!("{i}.tar")))
        .take_while(|p| p.exists())
        .collect();
    assert!(v.len() >= 4, "sample image has {} layers", v.len());
    v.dedup();
    v
}

/// Runs strata with `--root root`; returns (exit code, stdout, stderr).
pub fn strata(root: &Path, args: &[&OsStr]) -> (i32, String, String) {
    let out = Command::new(strata_bin())
        .arg("--root")
        .arg(root)
        .args(args)
        .env("RUST_LOG", "strata=warn")
        .output()
        .expect("run strata");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `strata` with str arguments; panics with its stderr unless it exits 0.
pub fn strata_ok(root: &Path, args: &[&str]) -> String {
    let os: Vec<&OsStr> = args.iter().map(OsStr::new).collect();
    let (code, out, err) = strata(root, &os);
    assert_eq!(code, 0, "strata {args:?} failed: {err}");
    out
}

/// Unmounts (lazily, so a failed test never leaves a busy mount behind) on drop.
pub struct MountGuard(pub PathBuf);

impl Drop for MountGuard {
    fn drop(&mut self) {
        for _ in 0..50 {
            if !is_mounted(&self.0) {
                return;
            }
            let _ = strata::sys::unmount_lazy(&self.0);
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

pub fn is_mounted(p: &Path) -> bool {
    strata::sys::mount_at(p).is_some()
}

/// Waits (bounded: 5 s) until `p` is no longer a mount point.
pub fn wait_unmounted(p: &Path) -> bool {
    for _ in 0..250 {
        if !is_mounted(p) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

/// Kernel overlayfs over `layers` (bottom first), each extracted by GNU tar as root and put
/// in overlay form: `.wh.NAME` → 0/0 character device, `.wh..wh..opq` → the
/// `trusted.overlay.opaque` xattr. Independent of strata's own tar code on purpose.
pub struct OverlayOracle {
    pub mountpoint: PathBuf,
    _guard: MountGuard,
    _dir: tempfile::TempDir,
}

impl OverlayOracle {
    pub fn mount(layers: &[PathBuf]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut lowers = Vec::new();
        for (i, tar) in layers.iter().enumerate() {
            let l = dir.path().join(format!("l{i}"));
            std::fs::create_dir(&l).unwrap();
            let out = Command::new("tar")
                .args(["--xattrs", "--xattrs-include=*", "--numeric-owner", "-xpf"])
                .arg(tar)
                .arg("-C")
                .arg(&l)
                .output()
                .expect("run GNU tar");
            assert!(
                out.status.success(),
                "tar -x {}: {}",
                tar.display(),
                String::from_utf8_lossy(&out.stderr)
            );
            to_overlay_form(&l);
            lowers.push(l);
        }
        let mountpoint = dir.path().join("merged");
        std::fs::create_dir(&mountpoint).unwrap();
        let lowerdir: Vec<String> = lowers
            .iter()
            .rev()
            .map(|p| p.display().to_string())
            .collect();
        let st = Command::new("mount")
            .args(["-t", "overlay", "overlay", "-o"])
            .arg(format!("ro,lowerdir={}", lowerdir.join(":")))
            .arg(&mountpoint)
            .status()
            .unwrap();
        assert!(st.success(), "mount -t overlay failed");
        OverlayOracle {
            _guard: MountGuard(mountpoint.clone()),
            mountpoint,
            _dir: dir,
        }
    }
}

/// Converts aufs-style whiteouts under `dir` to overlayfs form, keeping directory mtimes.
fn to_overlay_form(dir: &Path) {
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let meta = std::fs::symlink_metadata(&d).unwrap();
        let mut touched = false;
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let name = e.file_name();
            let name = name.as_bytes();
            let ft = e.file_type().unwrap();
            if name == b".wh..wh..opq" {
                std::fs::remove_file(e.path()).unwrap();
                rustix::fs::lsetxattr(
                    &d,
                    "trusted.overlay.opaque",
                    b"y",
                    rustix::fs::XattrFlags::empty(),
                )
                .unwrap();
                touched = true;
            } else if let Some(hidden) = name.strip_prefix(b".wh.") {
                std::fs::remove_file(e.path()).unwrap();
                let target = d.join(OsStr::from_bytes(hidden));
                rustix::fs::mknodat(
                    rustix::fs::CWD,
                    &target,
                    rustix::fs::FileType::CharacterDevice,
                    rustix::fs::Mode::empty(),
                    rustix::fs::makedev(0, 0),
                )
                .unwrap();
                touched = true;
            } else if ft.is_dir() {
                stack.push(e.path());
            }
        }
        if touched {
            let ts = rustix::fs::Timestamps {
                last_access: rustix::fs::Timespec {
                    tv_sec: meta.atime(),
                    tv_nsec: meta.atime_nsec() as _,
                },
                last_modification: rustix::fs::Timespec {
                    tv_sec: meta.mtime(),
                    tv_nsec: meta.mtime_nsec() as _,
                },
            };
            rustix::fs::utimensat(
                rustix::fs::CWD,
                &d,
                &ts,
                rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
            )
            .unwrap();
        }
    }
}

/// Everything the tests compare about one path of a mounted tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Meta {
    pub kind: char,
    pub perm: u32,
    pub uid: u32,
    pub gid: u32,
    /// `None` for directories (their size is the backing file system's business).
    pub size: Option<u64>,
    pub mtime: (i64, i64),
    pub rdev: u64,
    /// Non-directories only (overlayfs reports 1 for merged directories).
    pub nlink: Option<u64>,
    pub content: Option<String>,
    pub target: Option<Vec<u8>>,
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

/// A mounted tree: path → metadata, plus the hard-link groups (paths sharing an inode).
#[derive(Debug)]
pub struct Snapshot {
    pub entries: BTreeMap<Vec<u8>, Meta>,
    pub inode_of: BTreeMap<Vec<u8>, u64>,
}

impl Snapshot {
    /// Walks `root` without following symlinks. Checks `d_ino == st_ino` on the way.
    pub fn take(root: &Path) -> Self {
        let mut s = Snapshot {
            entries: BTreeMap::new(),
            inode_of: BTreeMap::new(),
        };
        s.add(root, b"");
        let mut stack = vec![(root.to_path_buf(), Vec::new())];
        while let Some((dir, rel)) = stack.pop() {
            for e in std::fs::read_dir(&dir).unwrap() {
                let e = e.unwrap();
                let mut r = rel.clone();
                if !r.is_empty() {
                    r.push(b'/');
                }
                r.extend_from_slice(e.file_name().as_bytes());
                let ino = s.add(&e.path(), &r);
                assert_eq!(
                    e.ino(),
                    ino,
                    "d_ino != st_ino for {}",
                    String::from_utf8_lossy(&r)
                );
                if e.file_type().unwrap().is_dir() {
                    stack.push((e.path(), r));
                }
            }
        }
        s
    }

    fn add(&mut self, p: &Path, rel: &[u8]) -> u64 {
        let m = std::fs::symlink_metadata(p).unwrap();
        let ft = m.file_type();
        let kind = if ft.is_dir() {
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
        };
        let content = ft.is_file().then(|| {
            let mut h = Sha256::new();
            let mut f = std::fs::File::open(p).unwrap();
            let mut buf = vec![0; 1 << 16];
            loop {
                let n = f.read(&mut buf).unwrap();
                if n == 0 {
                    break;
                }
                h.update(&buf[..n]);
            }
            hex::encode(h.finalize())
        });
        let meta = Meta {
            kind,
            perm: m.mode() & 0o7777,
            uid: m.uid(),
            gid: m.gid(),
            size: (!ft.is_dir()).then_some(m.size()),
            mtime: (m.mtime(), m.mtime_nsec()),
            rdev: m.rdev(),
            nlink: (!ft.is_dir()).then_some(m.nlink()),
            content,
            target: ft.is_symlink().then(|| {
                std::fs::read_link(p)
                    .unwrap()
                    .as_os_str()
                    .as_bytes()
                    .to_vec()
            }),
            xattrs: xattrs(p),
        };
        self.entries.insert(rel.to_vec(), meta);
        self.inode_of.insert(rel.to_vec(), m.ino());
        m.ino()
    }

    /// For each non-directory path, the other paths that share its inode.
    pub fn link_groups(&self) -> BTreeMap<Vec<u8>, Vec<Vec<u8>>> {
        let mut by_ino: BTreeMap<u64, Vec<Vec<u8>>> = BTreeMap::new();
        for (p, ino) in &self.inode_of {
            if self.entries[p].kind != 'd' {
                by_ino.entry(*ino).or_default().push(p.clone());
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

/// Asserts two snapshots are the same tree; `skip_attrs` lists directories whose own
/// attributes are not comparable (see the caller).
pub fn assert_same_tree(expected: &Snapshot, actual: &Snapshot, skip_attrs: &[Vec<u8>]) {
    let show = |p: &[u8]| String::from_utf8_lossy(p).into_owned();
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
        let (mut e, a) = (e.clone(), a.clone());
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

/// Extracts `layers` (bottom first) with GNU tar, as root, into `dir/l0`, `dir/l1`, … and puts
/// each in overlay form, as [`OverlayOracle`] does; returns those directories, bottom first.
/// For tests that build their own overlay mounts (a writable one, say) over the same layers.
pub fn extract_overlay_lowers(layers: &[PathBuf], dir: &Path) -> Vec<PathBuf> {
    let mut lowers = Vec::new();
    for (i, tar) in layers.iter().enumerate() {
        let l = dir.join(format!("l{i}"));
        std::fs::create_dir_all(&l).unwrap();
        let out = Command::new("tar")
            .args(["--xattrs", "--xattrs-include=*", "--numeric-owner", "-xpf"])
            .arg(tar)
            .arg("-C")
            .arg(&l)
            .output()
            .expect("run GNU tar");
        assert!(
            out.status.success(),
            "tar -x {}: {}",
            tar.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        to_overlay_form(&l);
        lowers.push(l);
    }
    lowers
}

/// Output of a strata run.
#[derive(Debug)]
pub struct Out {
    pub code: i32,
    pub out: String,
    pub err: String,
}

/// Runs strata with a deadline (and optional stdin) (the CLI is killed by PID when it passes).
pub fn strata_io(root: &Path, args: &[&str], stdin: Option<&[u8]>, deadline: Duration) -> Out {
    strata_io_env(root, args, stdin, deadline, &[])
}

/// [`strata_io`] with extra environment variables (`RUST_LOG` defaults to `strata=warn`).
pub fn strata_io_env(
    root: &Path,
    args: &[&str],
    stdin: Option<&[u8]>,
    deadline: Duration,
    env: &[(&str, &str)],
) -> Out {
    let mut child = Command::new(strata_bin())
        .arg("--root")
        .arg(root)
        .args(args)
        .env("RUST_LOG", "strata=warn")
        .envs(env.iter().copied())
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn strata");
    if let (Some(data), Some(mut si)) = (stdin, child.stdin.take()) {
        let data = data.to_vec();
        std::thread::spawn(move || {
            let _ = si.write_all(&data);
        });
    }
    let (tx, rx) = mpsc::channel();
    for (i, pipe) in [
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    ]
    .into_iter()
    .enumerate()
    {
        let tx = tx.clone();
        if let Some(mut p) = pipe {
            std::thread::spawn(move || {
                let mut s = Vec::new();
                let _ = p.read_to_end(&mut s);
                let _ = tx.send((i, String::from_utf8_lossy(&s).into_owned()));
            });
        }
    }
    let end = Instant::now() + deadline;
    let status = loop {
        if let Some(st) = child.try_wait().expect("wait strata") {
            break st;
        }
        if Instant::now() > end {
            let _ = child.kill();
            let _ = child.wait();
            panic!("strata {args:?} did not finish within {deadline:?}");
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let (mut out, mut err) = (String::new(), String::new());
    for _ in 0..2 {
        // The shim of an attached run holds the pipes a moment longer.
        match rx.recv_timeout(Duration::from_secs(10)) {
            Ok((0, s)) => out = s,
            Ok((_, s)) => err = s,
            Err(_) => break,
        }
    }
    Out {
        code: status.code().unwrap_or(-1),
        out,
        err,
    }
}

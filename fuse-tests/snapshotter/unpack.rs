//! Unpacking through strata's extraction snapshots (containerd's applier writing each layer
//! into the plain upper directory of an `overlay` mount, Commit making that directory a strata
//! layer), checked against kernel overlayfs: through the library (the options mounted by the
//! kernel, restarts, removal) and through the real containerd (containers on strata and on
//! containerd's own overlayfs snapshotter see the same trees).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use strata::snapshotter::SnapshotMount;
use strata_testkit::{MountGuard, sample_image};

use super::{Env, IMAGE, overlay};

/// Sets an xattr (as containerd's applier does on an upper directory).
fn set_xattr(path: &Path, name: &str, value: &[u8]) {
    rustix::fs::lsetxattr(path, name, value, rustix::fs::XattrFlags::empty()).expect("setxattr");
}

/// Kernel overlayfs, mounted with the options of an overlay `SnapshotMount`.
fn mount_overlay(m: &SnapshotMount, target: &Path) -> MountGuard {
    let (lower, upper, work) = overlay(m);
    std::fs::create_dir_all(target).expect("mkdir");
    let st = Command::new("mount")
        .args(["-t", "overlay", "overlay", "-o"])
        .arg(format!(
            "index=off,workdir={},upperdir={},lowerdir={}",
            work.display(),
            upper.display(),
            lower.display()
        ))
        .arg(target)
        .status()
        .expect("mount");
    assert!(st.success(), "mount -t overlay");
    MountGuard(target.to_path_buf())
}

/// Extraction snapshots (containerd's unpacker: `ns/N/extract-…` keys) through the library:
/// an overlay mount whose upper directory is written directly (as containerd's applier
/// does, whiteouts as 0/0 character devices and opaque directories as an xattr), whose lower
/// directory is the parent's read-only view (an empty directory for none); correct when
/// mounted with kernel overlayfs; kept across a restart of the snapshotter; committed into a
/// layer whose view shows exactly what the overlay showed; removed with its directories and
/// its mount.
#[test]
fn extraction_snapshots_write_into_a_plain_upper_directory() {
    use rustix::fs::{CWD, FileType, Mode, makedev, mknodat};
    use std::collections::HashMap;
    use std::os::unix::fs::MetadataExt;
    use strata::snapshotter::{Kind, Snapshotter};

    let dir = tempfile::Builder::new()
        .prefix("strata-snap-x-")
        .tempdir()
        .expect("tempdir");
    let (state, mounts) = (dir.path().join("state"), dir.path().join("mounts"));
    let none = HashMap::new;
    let s = Snapshotter::open(&state, &mounts).expect("open");

    // A base layer, unpacked as containerd does: into the upper directory, no mount.
    let m = s
        .create(Kind::Active, "ns/1/extract-1 sha256:base", "", none())
        .expect("prepare");
    let (lower, upper, work) = overlay(&m);
    assert!(lower.is_dir() && work.is_dir() && upper.is_dir());
    assert_eq!(
        std::fs::read_dir(&lower).expect("lower").count(),
        0,
        "no parent: an empty lower directory"
    );
    assert!(upper.starts_with(&state) && !lower.starts_with(&mounts));
    for d in ["etc", "keep", "opq", "opq/sub"] {
        std::fs::create_dir(upper.join(d)).expect("mkdir");
    }
    for (f, data) in [
        ("etc/gone", "deleted above\n"),
        ("keep/a", "kept\n"),
        ("opq/old", "hidden above\n"),
        ("opq/sub/old2", "hidden above\n"),
    ] {
        std::fs::write(upper.join(f), data).expect("write");
    }
    std::fs::hard_link(upper.join("keep/a"), upper.join("keep/b")).expect("link");
    std::os::unix::fs::symlink("a", upper.join("keep/to-a")).expect("symlink");
    keep_attributes(&upper.join("keep"));
    set_xattr(&upper.join("keep/a"), "user.note", b"xattr kept");
    s.commit("ns/2/sha256:base", "ns/1/extract-1 sha256:base", none())
        .expect("commit base");
    assert!(
        !s.list(&[])
            .expect("list")
            .iter()
            .any(|r| r.key.contains("extract"))
    );

    // The next layer, on that parent: its lower directory is the parent's read-only view.
    let key = "ns/3/extract-2 sha256:top";
    let m = s
        .create(Kind::Active, key, "ns/2/sha256:base", none())
        .expect("prepare");
    let (lower, upper, _) = overlay(&m);
    assert!(lower.starts_with(&mounts), "{lower:?}");
    assert_eq!(
        std::fs::read(lower.join("keep/a")).expect("parent file"),
        b"kept\n"
    );
    assert!(
        std::fs::write(lower.join("x"), b"x").is_err(),
        "the lower view is read-only"
    );
    // What OverlayConvertWhiteout and the tar make: a whiteout, an opaque directory with a
    // new file, a new file in a lower directory (its parent copied up with the lower's
    // attributes, as the applier's mkparent does).
    std::fs::create_dir(upper.join("etc")).expect("mkdir");
    mknodat(
        CWD,
        upper.join("etc/gone"),
        FileType::CharacterDevice,
        Mode::from_raw_mode(0o600),
        makedev(0, 0),
    )
    .expect("whiteout");
    std::fs::create_dir(upper.join("opq")).expect("mkdir");
    set_xattr(&upper.join("opq"), "trusted.overlay.opaque", b"y");
    std::fs::write(upper.join("opq/new"), b"above\n").expect("write");
    std::fs::create_dir(upper.join("keep")).expect("mkdir");
    keep_attributes(&upper.join("keep"));
    std::fs::write(upper.join("keep/c"), b"new in a lower dir\n").expect("write");

    // A restart of the snapshotter: the record and the upper directory stay; the lower view
    // is mounted again at the next Mounts.
    drop(s);
    assert!(
        !lower.join("keep").exists(),
        "the lower view is unmounted with the snapshotter"
    );
    let s = Snapshotter::open(&state, &mounts).expect("reopen");
    let rec = s.stat(key).expect("stat after restart");
    assert_eq!((rec.kind, rec.upper), (Kind::Active, true));
    let m2 = s.mounts(key).expect("mounts after restart");
    assert_eq!(m2, m);
    assert!(s.usage(key).expect("usage").inodes >= 6);

    // Mounted with kernel overlayfs (containerd's applier does not, but anyone may): the
    // parent's tree with the upper directory's changes.
    let listing = |root: &Path| -> Vec<String> {
        let mut out = Vec::new();
        let mut stack = vec![root.to_path_buf()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).expect("readdir") {
                let p = e.expect("entry").path();
                let md = std::fs::symlink_metadata(&p).expect("lstat");
                let data = if md.is_file() {
                    std::fs::read(&p).expect("read")
                } else {
                    Vec::new()
                };
                let mut v = [0u8; 64];
                let note = rustix::fs::lgetxattr(&p, "user.note", &mut v[..])
                    .map(|len| String::from_utf8_lossy(&v[..len]).into_owned())
                    .ok();
                out.push(format!(
                    "{} {:o} {}:{} {} {:?} {:?} {:?}",
                    p.strip_prefix(root).expect("under").display(),
                    md.mode(),
                    md.uid(),
                    md.gid(),
                    if md.is_dir() { 0 } else { md.len() },
                    std::fs::read_link(&p).ok(),
                    String::from_utf8_lossy(&data),
                    note,
                ));
                if md.is_dir() {
                    stack.push(p);
                }
            }
        }
        out.sort();
        out
    };
    let kernel = {
        let g = mount_overlay(&m2, &dir.path().join("ovl"));
        assert!(!g.0.join("etc/gone").exists(), "whited out");
        assert!(
            !g.0.join("opq/old").exists() && !g.0.join("opq/sub").exists(),
            "opaque"
        );
        assert_eq!(
            std::fs::read(g.0.join("opq/new")).expect("read"),
            b"above\n"
        );
        listing(&g.0)
    };
    // The kernel's mount wrote its work directory only: the upper directory is a layer still.
    let snapdir = upper.parent().expect("snapshot dir").to_path_buf();
    s.commit("ns/4/sha256:top", key, none())
        .expect("commit top");
    assert!(s.stat(key).is_err());
    assert!(
        !snapdir.exists(),
        "the extraction snapshot's directory is deleted"
    );
    assert!(!lower.exists(), "its lower view is unmounted");
    let v = s
        .create(Kind::View, "view", "ns/4/sha256:top", none())
        .expect("view");
    let v = v.bind().expect("a view is a bind").clone();
    let strata_tree = listing(&v.source);
    // The root's own attributes are the mounts', not the layers'.
    assert_eq!(strata_tree, kernel);
    assert!(
        kernel.iter().any(|l| l.starts_with("keep 40710 1000:1000")),
        "{kernel:?}"
    );
    assert!(
        kernel
            .iter()
            .any(|l| l.starts_with("keep/a ") && l.contains("xattr kept")),
        "{kernel:?}"
    );

    // An unpack that never finishes (containerd died): its snapshot stays until removed, and
    // removing it deletes its directories and unmounts its lower view.
    let dead = "ns/5/extract-3 sha256:never";
    let m = s
        .create(Kind::Active, dead, "ns/4/sha256:top", none())
        .expect("prepare");
    let (lower, upper, _) = overlay(&m);
    std::fs::write(upper.join("half"), b"half a layer").expect("write");
    drop(s);
    let s = Snapshotter::open(&state, &mounts).expect("reopen");
    assert!(s.stat(dead).expect("kept").upper);
    s.mounts(dead).expect("mounts");
    assert!(lower.join("keep/c").exists());
    s.remove(dead).expect("remove");
    assert!(!upper.exists() && !lower.exists());
    // A directory without a record (a crash mid-Prepare) goes at Cleanup.
    let m = s
        .create(Kind::Active, "ns/6/extract-4 x", "", none())
        .expect("prepare");
    let (_, upper, _) = overlay(&m);
    let snapdir = upper.parent().expect("snapshot dir").to_path_buf();
    std::fs::remove_file(snapdir.join("info.json")).expect("rm record");
    drop(s);
    let s = Snapshotter::open(&state, &mounts).expect("reopen");
    assert!(snapdir.exists());
    s.cleanup().expect("cleanup");
    assert!(!snapdir.exists());

    for k in ["view", "ns/4/sha256:top", "ns/2/sha256:base"] {
        s.remove(k).expect("remove");
    }
    assert!(s.list(&[]).expect("list").is_empty());
    drop(s);
    let base = dir.path().to_string_lossy().into_owned();
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    assert!(!mountinfo.contains(&base), "{mountinfo}");
}

/// Lists the container's root file system (not /proc, /sys, /dev): per path its type, mode,
/// owner, and for a file its size, mtime, inode and content hash, for a symlink its target,
/// for a device its numbers. Busybox only (the sample image's base layer).
const LIST_TREE: &str = r#"cd / && /bin/busybox find . -xdev | /bin/busybox sort | while IFS= read -r p; do
  case "$p" in ./proc|./sys|./dev|./proc/*|./sys/*|./dev/*) continue ;; esac
  if [ -L "$p" ]; then echo "$p L $(/bin/busybox stat -c '%a %u %g' "$p") $(/bin/busybox readlink "$p")"
  elif [ -d "$p" ]; then echo "$p D $(/bin/busybox stat -c '%a %u %g' "$p")"
  elif [ -f "$p" ]; then echo "$p F $(/bin/busybox stat -c '%a %u %g %s %Y %i' "$p") $(/bin/busybox sha256sum "$p" | /bin/busybox cut -c1-16)"
  else echo "$p O $(/bin/busybox stat -c '%F %a %u %g %t %T' "$p")"; fi
done"#;

/// [`LIST_TREE`]'s output with each file's inode number replaced by the first path that has
/// it (hard links stay visible, inode numbers differ between file systems).
fn hard_link_groups(listing: &str) -> Vec<String> {
    let mut first: std::collections::HashMap<String, String> = Default::default();
    listing
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            if f.len() >= 9 && f[f.len() - 8] == "F" {
                let n = f.len();
                let path = f[..n - 8].join(" ");
                let group = first.entry(f[n - 2].to_string()).or_insert(path).clone();
                let mut g = f.clone();
                g[n - 2] = &group;
                return g.join(" ");
            }
            l.to_string()
        })
        .collect()
}

/// A layer tar of `entries`: (path, kind) with kind `dir MODE UID`, `file CONTENT`,
/// `link TARGET` (hard), `sym TARGET`, or `marker` (an empty whiteout or opaque marker file).
fn layer_tar(path: &Path, entries: &[(&str, &str)]) {
    let mut b = tar::Builder::new(std::fs::File::create(path).expect("create layer"));
    for (name, kind) in entries {
        let mut h = tar::Header::new_gnu();
        h.set_mtime(1_767_225_600);
        h.set_mode(0o644);
        h.set_size(0);
        let (what, arg) = kind.split_once(' ').unwrap_or((kind, ""));
        match what {
            "dir" => {
                let (mode, uid) = arg.split_once(' ').expect("dir MODE UID");
                h.set_entry_type(tar::EntryType::Directory);
                h.set_mode(u32::from_str_radix(mode, 8).expect("mode"));
                let uid: u64 = uid.parse().expect("uid");
                h.set_uid(uid);
                h.set_gid(uid);
                b.append_data(&mut h, name, std::io::empty()).expect("dir");
            }
            "file" | "marker" => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_size(arg.len() as u64);
                b.append_data(&mut h, name, arg.as_bytes()).expect("file");
            }
            "link" | "sym" => {
                h.set_entry_type(if what == "link" {
                    tar::EntryType::Link
                } else {
                    tar::EntryType::Symlink
                });
                b.append_link(&mut h, name, arg).expect("link");
            }
            _ => panic!("unknown entry kind {kind}"),
        }
    }
    b.into_inner().expect("finish layer");
}

/// Unpack through strata (containerd's applier writes each layer into the plain upper
/// directory of an extraction snapshot, and Commit turns it into a strata layer): a container
/// sees exactly the tree a container on containerd's own overlayfs snapshotter (kernel
/// overlayfs over the same layers) sees. Two images: one whose top layer deletes a lower
/// file, replaces a directory with an opaque one and adds to a lower directory it does not
/// declare (its attributes come from the layer below), and the sample image (hard links,
/// special files, setuid bits, whiteouts of files, directories and hard-link names, a file
/// replaced by a directory and back).
#[test]
fn unpacked_layers_show_what_kernel_overlayfs_shows() {
    let mut env = Env::new();
    let work = env.p("image");
    std::fs::create_dir_all(&work).expect("mkdir");
    let (l1, l2) = (work.join("l1.tar"), work.join("l2.tar"));
    layer_tar(
        &l1,
        &[
            ("d/", "dir 755 0"),
            ("d/a", "file file in d\n"),
            ("d/sub/", "dir 755 0"),
            ("d/sub/b", "file file in d/sub\n"),
            ("f", "file deleted above\n"),
            ("e/", "dir 700 1000"),
            ("e/x", "file lower file in e\n"),
            ("h1", "file two names\n"),
            ("h2", "link h1"),
            ("s", "sym d/a"),
        ],
    );
    layer_tar(
        &l2,
        &[
            (".wh.f", "marker"),
            ("d/", "dir 750 1000"),
            ("d/.wh..wh..opq", "marker"),
            ("d/new", "file file only this in d\n"),
            ("e/y", "file upper file in e\n"),
            ("g/", "dir 755 0"),
            ("g/z", "file file in a new dir\n"),
        ],
    );
    let base = strata_testkit::sample_layers()[0].clone();
    let oci = work.join("oci");
    let st = Command::new("python3")
        .arg(strata_testkit::repo().join("tools/bench_image.py"))
        .arg("oci")
        .arg(&oci)
        .args(["--name", "unpack-test:latest"])
        .args([&base, &l1, &l2])
        .stdout(Stdio::null())
        .status()
        .expect("python3");
    assert!(st.success(), "tools/bench_image.py oci");
    let archive = work.join("unpack-test.oci.tar");
    let st = Command::new("tar")
        .arg("-C")
        .arg(&oci)
        .arg("-cf")
        .arg(&archive)
        .arg(".")
        .status()
        .expect("tar");
    assert!(st.success(), "tar");
    let sample = sample_image().join("sample.oci.tar");

    let mut n = 0;
    for (image, archive) in [("unpack-test:latest", &archive), (IMAGE, &sample)] {
        let mut trees = Vec::new();
        for snapshotter in ["strata", "overlayfs"] {
            let a = archive.to_str().expect("UTF-8");
            env.ok(&["images", "import", "--snapshotter", snapshotter, a]);
            n += 1;
            let id = format!("list-{n}");
            let out = env.ok(&[
                "run",
                "--rm",
                "--snapshotter",
                snapshotter,
                image,
                &id,
                "/bin/busybox",
                "sh",
                "-c",
                LIST_TREE,
            ]);
            trees.push(hard_link_groups(&out));
        }
        let (strata, overlay) = (&trees[0], &trees[1]);
        assert!(overlay.len() > 20, "{overlay:?}");
        let diff: Vec<String> = strata
            .iter()
            .filter(|l| !overlay.contains(l))
            .map(|l| format!("strata only:   {l}"))
            .chain(
                overlay
                    .iter()
                    .filter(|l| !strata.contains(l))
                    .map(|l| format!("overlayfs only: {l}")),
            )
            .collect();
        assert!(diff.is_empty(), "{image}:\n{}", diff.join("\n"));
        assert_eq!(
            strata, overlay,
            "{image}: the same lines, in the same order"
        );
        if image == "unpack-test:latest" {
            let has = |p: &str| strata.iter().any(|l| l.starts_with(p));
            assert!(!has("./f "), "whited out: {strata:?}");
            assert!(has("./d D 750 1000 1000") && has("./d/new F"), "{strata:?}");
            assert!(!has("./d/a ") && !has("./d/sub"), "opaque: {strata:?}");
            assert!(has("./e D 700 1000 1000") && has("./e/x F") && has("./e/y F"));
            assert!(has("./h2 F 644 0 0 10 1767225600 ./h1 "), "{strata:?}");
        }
    }
    // An unpack that containerd never finishes (killed with -9 mid-unpack): the extraction
    // snapshot stays (containerd still knows it), its upper directory with it; removing it
    // deletes the directory and unmounts its lower view.
    let rows = env.snapshots();
    let parent = rows
        .iter()
        .find(|r| r.2 == "Committed")
        .map(|r| r.0.clone())
        .expect("a committed snapshot");
    let half = "extract-1-half";
    env.snap_ok(&["prepare", half, &parent]);
    let line = env.snap_ok(&["mounts", "/unused", half]);
    // `mount -t overlay overlay /unused -o index=off,workdir=…,upperdir=…,lowerdir=…`
    let opts = line.split_whitespace().last().expect("options").to_string();
    assert!(line.starts_with("mount -t overlay overlay "), "{line}");
    let opt = |k: &str| {
        opts.split(',')
            .find_map(|o| o.strip_prefix(k))
            .map(PathBuf::from)
            .unwrap_or_else(|| panic!("no {k} in {line}"))
    };
    let (upper, lower) = (opt("upperdir="), opt("lowerdir="));
    assert!(upper.starts_with(env.state()) && lower.starts_with(env.mounts()));
    assert!(lower.join("bin/busybox").is_file(), "the parent's view");
    std::fs::write(upper.join("half-a-layer"), b"unfinished\n").expect("write");
    env.containerd.stop(true);
    env.start_containerd();
    assert!(
        env.snapshots()
            .iter()
            .any(|r| r.0 == half && r.2 == "Active"),
        "kept"
    );
    assert!(upper.join("half-a-layer").is_file());
    // containerd removes it from strata in a garbage collection: one now.
    env.snap_ok(&["rm", half]);
    env.collect();
    env.eventually(
        "the extraction snapshot removed with its directories",
        || !upper.exists() && !lower.exists(),
    );

    // The layers went through extraction snapshots (overlay mounts), not the FUSE mount: 3 of
    // the first image, 3 of the sample image (its base layer is the first image's).
    let log = strip_ansi(&std::fs::read_to_string(env.p("snapshotter.log")).expect("log"));
    assert!(
        log.lines()
            .filter(|l| l.contains("committed") && l.contains("extraction=true"))
            .count()
            >= 6,
        "{log}"
    );
}

/// `text` without its terminal colour sequences (`ESC [ … m`).
fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            for c in chars.by_ref() {
                if c == 'm' {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The mode and owner `keep/` has in both layers (a copied-up lower directory keeps the
/// lower's attributes).
fn keep_attributes(dir: &Path) {
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o710)).expect("chmod");
    rustix::fs::chown(
        dir,
        Some(rustix::fs::Uid::from_raw(1000)),
        Some(rustix::fs::Gid::from_raw(1000)),
    )
    .expect("chown");
}

//! The image verbs and `mount`/`umount` through the real `strata` binary, as a user runs them.

use std::ffi::OsStr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use strata_testkit::*;

const SAMPLE_ID: &str = "strata-sample:latest";

fn layer_dirs(root: &Path) -> usize {
    std::fs::read_dir(root.join("layers"))
        .map(|rd| {
            rd.flatten()
                .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
                .count()
        })
        .unwrap_or(0)
}

fn images_json(root: &Path) -> serde_json::Value {
    serde_json::from_str(&strata_ok(root, &["images", "--json"])).unwrap()
}

#[test]
fn every_archive_form_loads_to_the_same_image_and_shares_layers() {
    let img = sample_image();
    let tmp = tempfile::tempdir().unwrap();
    let shared = tmp.path().join("shared");
    let mut ids = Vec::new();
    for form in [
        "oci",
        "oci-uncompressed",
        "oci-zstd",
        "sample.oci.tar",
        "sample.docker.tar",
    ] {
        let src = img.join(form);
        let root = tmp.path().join(form);
        let out = strata_ok(&root, &["load", src.to_str().unwrap()]);
        assert!(
            out.contains("Loaded image: strata-sample:latest"),
            "{form}: {out}"
        );
        let list = images_json(&root);
        assert_eq!(list.as_array().unwrap().len(), 1, "{form}");
        assert_eq!(list[0]["RepoTags"][0], SAMPLE_ID, "{form}");
        ids.push(list[0]["Id"].as_str().unwrap().to_string());
        assert_eq!(layer_dirs(&root), 4, "{form}");
        // All forms into one store: the layers are stored once.
        strata_ok(&shared, &["load", "-i", src.to_str().unwrap()]);
        assert_eq!(layer_dirs(&shared), 4, "{form} into the shared store");
    }
    ids.dedup();
    assert_eq!(ids.len(), 1, "forms gave different image IDs: {ids:?}");
}

#[test]
fn tag_rmi_and_layer_garbage_collection() {
    let img = sample_image();
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    strata_ok(root, &["load", img.join("oci").to_str().unwrap()]);
    strata_ok(root, &["tag", SAMPLE_ID, "mine:v1"]);
    strata_ok(
        root,
        &["import", img.join("rootfs.tar").to_str().unwrap(), "flat:1"],
    );
    assert_eq!(layer_dirs(root), 5);
    let inspect: serde_json::Value =
        serde_json::from_str(&strata_ok(root, &["inspect", "mine:v1"])).unwrap();
    assert_eq!(inspect[0]["RootFS"]["Layers"].as_array().unwrap().len(), 4);
    assert_eq!(inspect[0]["Config"]["Cmd"][0], "/bin/sh");

    // Removing one of two tags only untags.
    let out = strata_ok(root, &["rmi", "mine:v1"]);
    assert!(out.contains("Untagged: mine:v1"), "{out}");
    assert_eq!(layer_dirs(root), 5);
    // The last tag deletes the image and frees its layers; the other image keeps its own.
    let out = strata_ok(root, &["rmi", SAMPLE_ID]);
    assert!(out.contains("Deleted:"), "{out}");
    assert_eq!(layer_dirs(root), 1);
    let (code, _, err) = strata(root, &[OsStr::new("rmi"), OsStr::new("nope:1")]);
    assert_eq!(code, 125);
    assert!(err.contains("nope"), "{err}");
    strata_ok(root, &["rmi", "flat:1"]);
    assert_eq!(layer_dirs(root), 0);
    assert_eq!(images_json(root), serde_json::json!([]));
}

#[test]
fn detached_mount_lists_the_image_and_umount_stops_the_daemon() {
    let img = sample_image();
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    let mnt = tmp.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    strata_ok(
        &root,
        &["load", img.join("sample.docker.tar").to_str().unwrap()],
    );
    let _guard = MountGuard(mnt.clone());
    strata_ok(&root, &["mount", SAMPLE_ID, mnt.to_str().unwrap(), "-d"]);
    assert!(is_mounted(&mnt));
    assert_eq!(
        std::fs::read_to_string(mnt.join("www/index.html")).unwrap(),
        "hello from strata\n"
    );
    let record = std::fs::read_dir(root.join("mounts"))
        .unwrap()
        .flatten()
        .find(|e| e.path().extension() == Some(OsStr::new("json")));
    let record: serde_json::Value =
        serde_json::from_slice(&std::fs::read(record.unwrap().path()).unwrap()).unwrap();
    let pid = record["pid"].as_i64().unwrap() as i32;
    assert!(strata::sys::process_alive(pid));

    strata_ok(&root, &["umount", mnt.to_str().unwrap()]);
    assert!(wait_unmounted(&mnt));
    assert!(
        !strata::sys::process_alive(pid),
        "daemon {pid} still running after umount"
    );
    assert_eq!(
        std::fs::read_dir(root.join("mounts")).unwrap().count(),
        0,
        "stale mount records"
    );
    let (code, _, err) = strata(&root, &[OsStr::new("umount"), mnt.as_os_str()]);
    assert_eq!(code, 125);
    assert!(err.contains("not a strata mount"), "{err}");
}

#[test]
fn foreground_mount_unmounts_cleanly_on_sigterm_and_sigint() {
    let img = sample_image();
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    strata_ok(&root, &["load", img.join("oci").to_str().unwrap()]);
    for sig in [rustix::process::Signal::TERM, rustix::process::Signal::INT] {
        let mnt = tmp.path().join(format!("mnt-{sig:?}"));
        std::fs::create_dir(&mnt).unwrap();
        let _guard = MountGuard(mnt.clone());
        let mut child = Command::new(strata_bin())
            .arg("--root")
            .arg(&root)
            .args(["mount", SAMPLE_ID])
            .arg(&mnt)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut live = false;
        for _ in 0..250 {
            if is_mounted(&mnt) {
                live = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(live, "foreground mount never appeared");
        let pid = rustix::process::Pid::from_raw(child.id() as i32).unwrap();
        rustix::process::kill_process(pid, sig).unwrap();
        let status = child.wait().unwrap();
        assert!(status.success(), "{sig:?}: exit {status:?}");
        assert!(wait_unmounted(&mnt), "{sig:?}: still mounted");
    }
}

#[test]
fn a_killed_daemon_leaves_a_mount_that_umount_cleans_up() {
    let img = sample_image();
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    let mnt = tmp.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    strata_ok(&root, &["load", img.join("oci").to_str().unwrap()]);
    let _guard = MountGuard(mnt.clone());
    strata_ok(&root, &["mount", SAMPLE_ID, mnt.to_str().unwrap(), "-d"]);
    let record = std::fs::read_dir(root.join("mounts"))
        .unwrap()
        .flatten()
        .find(|e| e.path().extension() == Some(OsStr::new("json")));
    let record: serde_json::Value =
        serde_json::from_slice(&std::fs::read(record.unwrap().path()).unwrap()).unwrap();
    let pid = rustix::process::Pid::from_raw(record["pid"].as_i64().unwrap() as i32).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::KILL).unwrap();
    for _ in 0..250 {
        if !strata::sys::process_alive(pid.as_raw_nonzero().get()) {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    strata_ok(&root, &["umount", mnt.to_str().unwrap()]);
    assert!(wait_unmounted(&mnt));
}

#[test]
fn refused_mounts_say_why() {
    let img = sample_image();
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    strata_ok(&root, &["load", img.join("oci").to_str().unwrap()]);
    let full = tmp.path().join("full");
    std::fs::create_dir(&full).unwrap();
    std::fs::write(full.join("file"), b"x").unwrap();
    let inside = root.join("inside");
    std::fs::create_dir(&inside).unwrap();
    let cases: [(&Path, &str, &str); 4] = [
        (&tmp.path().join("missing"), SAMPLE_ID, "does not exist"),
        (&full, SAMPLE_ID, "not empty"),
        (&inside, SAMPLE_ID, "inside the strata state root"),
        (&tmp.path().join("full/file"), SAMPLE_ID, "not a directory"),
    ];
    for (mnt, image, why) in cases {
        let (code, _, err) = strata(
            &root,
            &[
                OsStr::new("mount"),
                OsStr::new(image),
                mnt.as_os_str(),
                OsStr::new("-d"),
            ],
        );
        assert_eq!(code, 125, "{}: {err}", mnt.display());
        assert!(
            err.contains(why),
            "{}: expected {why:?} in {err:?}",
            mnt.display()
        );
        assert!(!is_mounted(mnt));
    }
    let empty = tmp.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let (code, _, err) = strata(
        &root,
        &[
            OsStr::new("mount"),
            OsStr::new("no-such-image"),
            empty.as_os_str(),
        ],
    );
    assert_eq!(code, 125);
    assert!(err.contains("no-such-image"), "{err}");
}

#[test]
fn imported_rootfs_mounts_to_the_same_files_as_the_layered_image() {
    let img = sample_image();
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    strata_ok(&root, &["load", img.join("oci-zstd").to_str().unwrap()]);
    strata_ok(
        &root,
        &["import", img.join("rootfs.tar").to_str().unwrap(), "flat:1"],
    );
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    std::fs::create_dir(&a).unwrap();
    std::fs::create_dir(&b).unwrap();
    let (_ga, _gb) = (MountGuard(a.clone()), MountGuard(b.clone()));
    strata_ok(&root, &["mount", SAMPLE_ID, a.to_str().unwrap(), "-d"]);
    strata_ok(&root, &["mount", "flat:1", b.to_str().unwrap(), "-d"]);
    let (layered, flat) = (Snapshot::take(&a), Snapshot::take(&b));
    assert_eq!(
        layered.entries.keys().collect::<Vec<_>>(),
        flat.entries.keys().collect::<Vec<_>>()
    );
    for (p, m) in &layered.entries {
        let f = &flat.entries[p];
        // A flattened tar counts the hard links that are left; overlay keeps the lower count.
        assert_eq!(
            (m.st.kind, &m.content, &m.target, m.st.perm, m.st.uid),
            (f.st.kind, &f.content, &f.target, f.st.perm, f.st.uid),
            "{}",
            String::from_utf8_lossy(p)
        );
    }
    strata_ok(&root, &["umount", a.to_str().unwrap()]);
    strata_ok(&root, &["umount", b.to_str().unwrap()]);
}

/// Every file under `root`, with its size and content digest (the store, byte for byte).
fn store_listing(root: &Path) -> Vec<(String, u64, String)> {
    use sha2::Digest as _;
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            let m = std::fs::symlink_metadata(&p).unwrap();
            let rel = p.strip_prefix(root).unwrap().display().to_string();
            if m.is_dir() {
                stack.push(p);
                out.push((rel, 0, String::new()));
            } else if m.is_file() {
                let h = sha2::Sha256::digest(std::fs::read(&p).unwrap());
                out.push((rel, m.len(), hex::encode(h)));
            }
        }
    }
    out.sort();
    out
}

#[test]
fn a_corrupt_archive_fails_to_load_even_when_its_layers_are_stored() {
    let img = sample_image();
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    let good = img.join("sample.docker.tar");
    strata_ok(&root, &["load", good.to_str().unwrap()]);
    // The same image under another tag, so the load would have something to change.
    strata_ok(&root, &["tag", SAMPLE_ID, "other:1"]);
    strata_ok(&root, &["rmi", SAMPLE_ID]);

    // Flip one byte in the middle of the largest member (a layer), headers untouched.
    let mut bytes = std::fs::read(&good).unwrap();
    let (offset, size) = {
        let mut ar = tar::Archive::new(std::io::Cursor::new(&bytes));
        ar.entries()
            .unwrap()
            .map(|e| e.unwrap())
            .map(|e| (e.raw_file_position(), e.size()))
            .max_by_key(|&(_, size)| size)
            .unwrap()
    };
    assert!(size > 1 << 20, "largest member has {size} bytes");
    bytes[(offset + size / 2) as usize] ^= 0x01;
    let bad = tmp.path().join("flipped.docker.tar");
    std::fs::write(&bad, &bytes).unwrap();

    let before = store_listing(&root);
    let (code, out, err) = strata(&root, &[OsStr::new("load"), bad.as_os_str()]);
    assert_eq!(code, 125, "a corrupt archive loaded: {out}{err}");
    assert!(err.starts_with("strata: "), "{err}");
    assert!(err.contains("does not match its digest"), "{err}");
    assert!(!out.contains("Loaded"), "{out}");
    assert_eq!(
        store_listing(&root),
        before,
        "a failed load changed the store"
    );
    let tags = images_json(&root)[0]["RepoTags"].clone();
    assert_eq!(tags, serde_json::json!(["other:1"]));
}

#[test]
fn mounting_on_a_strata_mount_point_names_the_process_serving_it() {
    let img = sample_image();
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    let mnt = tmp.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    strata_ok(&root, &["load", img.join("oci").to_str().unwrap()]);
    let _guard = MountGuard(mnt.clone());
    strata_ok(&root, &["mount", SAMPLE_ID, mnt.to_str().unwrap(), "-d"]);
    let record = std::fs::read_dir(root.join("mounts"))
        .unwrap()
        .flatten()
        .find(|e| e.path().extension() == Some(OsStr::new("json")));
    let record: serde_json::Value =
        serde_json::from_slice(&std::fs::read(record.unwrap().path()).unwrap()).unwrap();
    let pid = record["pid"].as_i64().unwrap();
    for extra in [&[][..], &["-d"][..]] {
        let mut args = vec![OsStr::new("mount"), OsStr::new(SAMPLE_ID), mnt.as_os_str()];
        args.extend(extra.iter().map(OsStr::new));
        let (code, _, err) = strata(&root, &args);
        assert_eq!(code, 125, "{err}");
        assert!(
            err.contains("already a strata mount point") && err.contains(&format!("PID {pid}")),
            "{err}"
        );
        assert!(!err.contains("not empty"), "{err}");
    }
    strata_ok(&root, &["umount", mnt.to_str().unwrap()]);
    assert!(wait_unmounted(&mnt));
}

#[test]
fn the_demo_says_first_what_it_needs_when_rust_is_missing() {
    // No cargo or rustc on PATH, no ~/.cargo: the set-up command stops at once (before it
    // installs or builds anything) and says what to install, with the minimum version.
    // A PATH with the shell tools the script uses and nothing else (a host's own cargo, in
    // /usr/bin or wherever, stays out of sight).
    let home = tempfile::tempdir().unwrap();
    let bin = home.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    let tools = [
        "bash", "id", "sed", "getent", "cut", "stat", "awk", "sort", "head", "cat", "dirname",
    ];
    for tool in tools {
        let found = ["/usr/bin", "/bin", "/usr/sbin", "/sbin"]
            .iter()
            .map(|d| Path::new(d).join(tool))
            .find(|p| p.exists())
            .unwrap_or_else(|| panic!("{tool} not found"));
        std::os::unix::fs::symlink(found, bin.join(tool)).unwrap();
    }
    let out = Command::new(bin.join("bash"))
        .arg(repo().join("tools/demo"))
        .env_clear()
        .env("PATH", &bin)
        .env("HOME", home.path())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        out.stdout.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let manifest = std::fs::read_to_string(repo().join("Cargo.toml")).unwrap();
    let need = manifest
        .lines()
        .find_map(|l| l.strip_prefix("rust-version = "))
        .unwrap()
        .trim_matches('"');
    assert!(
        err.contains(&format!("Rust toolchain (cargo and rustc) {need} or newer"))
            && err.contains("https://sh.rustup.rs"),
        "{err}"
    );
}

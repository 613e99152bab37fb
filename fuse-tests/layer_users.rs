//! The garbage-collection rule of layers (`image::users`), through the real binary: `rmi`
//! refuses to delete an image that a mount, a writable layer on disk or a container uses and
//! names them; `rmi -f` untags it but its layers stay until the last user is gone.

use std::ffi::OsStr;
use std::path::Path;
use std::time::Duration;

use strata_testkit::*;

const SAMPLE: &str = "strata-sample:latest";

fn layer_count(root: &Path) -> usize {
    std::fs::read_dir(root.join("layers"))
        .map(|rd| {
            rd.flatten()
                .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
                .count()
        })
        .unwrap_or(0)
}

/// `strata rmi ARGS…`: (exit code, stdout, stderr).
fn rmi(root: &Path, args: &[&str]) -> (i32, String, String) {
    let mut all = vec![OsStr::new("rmi")];
    all.extend(args.iter().map(OsStr::new));
    strata(root, &all)
}

fn load_sample(root: &Path) {
    let img = sample_image();
    strata_ok(
        root,
        &["load", img.join("sample.docker.tar").to_str().unwrap()],
    );
    assert_eq!(layer_count(root), 4);
}

#[test]
fn rmi_refuses_the_image_of_a_live_read_only_mount_and_force_keeps_its_layers() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    let mnt = tmp.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    load_sample(&root);
    let _guard = MountGuard(mnt.clone());
    strata_ok(&root, &["mount", SAMPLE, mnt.to_str().unwrap(), "-d"]);

    let (code, out, err) = rmi(&root, &[SAMPLE]);
    assert_eq!(code, 125, "{out}{err}");
    assert!(err.starts_with("strata: "), "{err}");
    assert!(
        err.contains(&format!("mount {}", mnt.display())) && err.contains("pid"),
        "the refusal names the mount point and its process: {err}"
    );
    assert_eq!(layer_count(&root), 4);
    assert!(out.is_empty(), "{out}");
    // Still tagged, still served.
    assert!(strata_ok(&root, &["images", "-q"]).lines().count() == 1);
    let page = std::fs::read_to_string(mnt.join("www/index.html")).unwrap();
    assert_eq!(page, "hello from strata\n");

    // Forced: untagged and gone from the list, but the mount keeps its layers.
    let (code, out, err) = rmi(&root, &["-f", SAMPLE]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains(&format!("Untagged: {SAMPLE}")), "{out}");
    assert!(out.contains(&format!("mount {}", mnt.display())), "{out}");
    assert_eq!(strata_ok(&root, &["images", "-q"]), "");
    assert_eq!(layer_count(&root), 4, "layers of a live mount deleted");
    assert_eq!(
        std::fs::read_to_string(mnt.join("www/index.html")).unwrap(),
        page
    );
    // Another image's collection does not take them either.
    let img = sample_image();
    strata_ok(
        &root,
        &["import", img.join("rootfs.tar").to_str().unwrap(), "flat:1"],
    );
    strata_ok(&root, &["rmi", "flat:1"]);
    assert_eq!(layer_count(&root), 4, "layers of a live mount deleted");
    assert_eq!(
        std::fs::read_to_string(mnt.join("www/index.html")).unwrap(),
        page
    );

    // The last user gone, the layers go.
    strata_ok(&root, &["umount", mnt.to_str().unwrap()]);
    assert!(wait_unmounted(&mnt));
    assert_eq!(
        layer_count(&root),
        0,
        "unused layers left after the mount ended"
    );
}

#[test]
fn a_writable_mount_and_its_layer_directory_keep_the_image_in_use() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    let mnt = tmp.path().join("mnt");
    let changes = tmp.path().join("changes");
    std::fs::create_dir(&mnt).unwrap();
    load_sample(&root);
    let _guard = MountGuard(mnt.clone());
    strata_ok(
        &root,
        &[
            "mount",
            "--rw",
            SAMPLE,
            mnt.to_str().unwrap(),
            "--layer",
            changes.to_str().unwrap(),
            "-d",
        ],
    );
    std::fs::write(mnt.join("new.txt"), b"kept\n").unwrap();

    let (code, _, err) = rmi(&root, &[SAMPLE]);
    assert_eq!(code, 125, "{err}");
    assert!(err.contains(&format!("mount {}", mnt.display())), "{err}");
    assert!(
        err.contains(&format!("writable layer {}", changes.display())),
        "{err}"
    );

    // Unmounted, the layer directory on disk still needs the image's layers.
    strata_ok(&root, &["umount", mnt.to_str().unwrap()]);
    assert!(wait_unmounted(&mnt));
    let (code, _, err) = rmi(&root, &[SAMPLE]);
    assert_eq!(code, 125, "{err}");
    assert!(
        err.contains(&format!("writable layer {}", changes.display())) && !err.contains("mount "),
        "{err}"
    );
    assert_eq!(layer_count(&root), 4);

    let (code, out, err) = rmi(&root, &["-f", SAMPLE]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("Untagged:"), "{out}");
    assert_eq!(
        layer_count(&root),
        4,
        "layers of a writable layer on disk deleted"
    );

    // Deleted, the layer directory needs nothing any more.
    std::fs::remove_dir_all(&changes).unwrap();
    // The next collection (any rmi) frees them.
    let img = sample_image();
    strata_ok(
        &root,
        &["import", img.join("rootfs.tar").to_str().unwrap(), "flat:1"],
    );
    strata_ok(&root, &["rmi", "flat:1"]);
    assert_eq!(layer_count(&root), 0);
}

#[test]
fn rmi_refuses_the_image_of_a_container_until_rm() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    load_sample(&root);
    // Created, never started: nothing of the host's network or mounts is touched.
    strata_ok(
        &root,
        &[
            "create",
            "--network",
            "none",
            "--name",
            "keeper",
            SAMPLE,
            "true",
        ],
    );
    let (code, _, err) = rmi(&root, &[SAMPLE]);
    assert_eq!(code, 125, "{err}");
    assert!(err.contains("container keeper"), "{err}");
    // A container made by a strata from before layer users were recorded has no record:
    // rmi records it first, and still refuses.
    for e in std::fs::read_dir(root.join("users")).unwrap().flatten() {
        if e.file_name().to_string_lossy().starts_with("container-") {
            std::fs::remove_file(e.path()).unwrap();
        }
    }
    let (code, _, err) = rmi(&root, &[SAMPLE]);
    assert_eq!(code, 125, "{err}");
    assert!(err.contains("container keeper"), "{err}");

    let (code, out, err) = rmi(&root, &["-f", SAMPLE]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("container keeper"), "{out}");
    assert_eq!(layer_count(&root), 4);

    strata_ok(&root, &["rm", "keeper"]);
    assert_eq!(layer_count(&root), 0, "rm left the unused layers");
}

#[test]
fn a_dead_mount_daemon_does_not_pin_layers() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    let mnt = tmp.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    load_sample(&root);
    let _guard = MountGuard(mnt.clone());
    strata_ok(&root, &["mount", SAMPLE, mnt.to_str().unwrap(), "-d"]);
    let record = std::fs::read_dir(root.join("mounts"))
        .unwrap()
        .flatten()
        .find(|e| e.path().extension() == Some(OsStr::new("json")))
        .unwrap();
    let record: serde_json::Value =
        serde_json::from_slice(&std::fs::read(record.path()).unwrap()).unwrap();
    let pid = record["pid"].as_i64().unwrap() as i32;
    let p = rustix::process::Pid::from_raw(pid).unwrap();
    rustix::process::kill_process(p, rustix::process::Signal::KILL).unwrap();
    for _ in 0..250 {
        if !strata::sys::process_alive(pid) {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    strata_ok(&root, &["umount", mnt.to_str().unwrap()]);
    let (code, out, err) = rmi(&root, &[SAMPLE]);
    assert_eq!(code, 0, "a killed daemon still counts as a user: {err}");
    assert!(out.contains("Deleted:"), "{out}");
    assert_eq!(layer_count(&root), 0);
}

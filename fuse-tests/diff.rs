//! `diff`, `commit`, `save`/`load`, `export`, `image layers|diff|check` through the binary, on
//! real containers of the sample image (root).

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;
use strata_testkit::*;

const IMAGE: &str = "strata-sample:latest";

/// The changes the script below makes, as `docker diff` prints them.
const SCRIPT: &str = "echo hi >> /etc/passwd; mkdir -p /new/sub; echo x > /new/sub/f; \
     mkfifo /new/fifo; rm /bin/ls; ln /etc/passwd /etc/pw2; \
     rm -rf /www; mkdir /www; echo n > /www/index.html; touch /tmp/ready";
const EXPECTED: &str = "C /bin
D /bin/ls
C /etc
C /etc/passwd
A /etc/pw2
A /new
A /new/fifo
A /new/sub
A /new/sub/f
C /tmp
A /tmp/ready
D /www
A /www/index.html
";

#[test]
fn diff_of_a_running_and_a_stopped_container_is_the_exact_change_list_and_commit_equals_it() {
    let root = ContainerRoot::with_deadline(Duration::from_secs(300));
    let script = format!("{SCRIPT}; exec sleep 100");
    root.ok(&["run", "-d", "--name", "live", IMAGE, "sh", "-c", &script]);
    // Running: the shim answers from its live view.
    let end = Instant::now() + Duration::from_secs(20);
    let mut got = String::new();
    while Instant::now() < end {
        got = root.ok(&["diff", "live"]);
        if got.contains("/tmp/ready") {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(got, EXPECTED, "diff of the running container");
    // A running container commits too (its shim streams the layer).
    root.ok(&["commit", "live", "hot:1"]);
    assert_eq!(
        root.ok(&[
            "run",
            "--rm",
            "hot:1",
            "cat",
            "/new/sub/f",
            "/www/index.html"
        ]),
        "x\nn\n"
    );
    assert_eq!(
        root.code(&["run", "--rm", "hot:1", "test", "-e", "/bin/ls"]),
        1,
        "the whiteout of /bin/ls"
    );
    root.ok(&["stop", "-t", "1", "live"]);
    // Stopped: read from the writable layer itself.
    assert_eq!(
        root.ok(&["diff", "live"]),
        EXPECTED,
        "diff of the stopped one"
    );
    let json: Value = serde_json::from_str(&root.ok(&["diff", "--json", "live"])).unwrap();
    let kinds: Vec<(String, u64)> = json
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["Path"].as_str().unwrap().to_string(),
                c["Kind"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(kinds[1], ("/bin/ls".to_string(), 2));
    assert_eq!(kinds[4], ("/etc/pw2".to_string(), 1));
    assert_eq!(kinds[0], ("/bin".to_string(), 0));

    // Commit, then the committed image mounted equals the container's file system.
    let id = root
        .ok(&[
            "commit",
            "live",
            "committed:1",
            "-c",
            "CMD [\"cat\", \"/new/sub/f\"]",
        ])
        .trim()
        .to_string();
    assert!(id.starts_with("sha256:"), "{id}");
    let out = root.ok(&["run", "--rm", "committed:1"]);
    assert_eq!(out, "x\n");
    let cid = {
        let v: Value = serde_json::from_str(&root.ok(&["inspect", "live"])).unwrap();
        v[0]["Id"].as_str().unwrap().to_string()
    };
    let mnts = tempfile::tempdir().unwrap();
    let (a, b) = (mnts.path().join("committed"), mnts.path().join("container"));
    std::fs::create_dir(&a).unwrap();
    std::fs::create_dir(&b).unwrap();
    let _ga = MountGuard(a.clone());
    let _gb = MountGuard(b.clone());
    root.ok(&["mount", "committed:1", a.to_str().unwrap(), "-d"]);
    let layer = root.path().join("containers").join(&cid).join("rw");
    root.ok(&[
        "mount",
        "--rw",
        IMAGE,
        b.to_str().unwrap(),
        "--layer",
        layer.to_str().unwrap(),
        "-d",
    ]);
    let committed = Snapshot::take(&a);
    let mut container = Snapshot::take(&b);
    // Mount targets the runtime created are not the container's changes (Docker's init layer).
    for p in ["etc/hosts", "etc/hostname", "etc/resolv.conf"] {
        container.entries.remove(p.as_bytes());
    }
    // The root directory is never part of a layer diff (Docker's neither).
    assert_same_tree(&container, &committed, &[b"".to_vec()]);
    root.ok(&["umount", a.to_str().unwrap()]);
    root.ok(&["umount", b.to_str().unwrap()]);

    // The committed layer's tree view and counts.
    let layers: Value =
        serde_json::from_str(&root.ok(&["image", "layers", "committed:1", "--json"])).unwrap();
    let top = layers["layers"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(top["deleted"], 1, "{top}");

    // save → load round trip, both formats: the loaded image has the same files.
    for format in ["docker-archive", "oci-archive"] {
        let archive = mnts.path().join(format!("{format}.tar"));
        root.ok(&[
            "save",
            "committed:1",
            "-o",
            archive.to_str().unwrap(),
            "--format",
            format,
        ]);
        let other = tempfile::tempdir().unwrap();
        strata_ok(other.path(), &["load", archive.to_str().unwrap()]);
        root.ok(&["load", archive.to_str().unwrap()]);
        let d: Value =
            serde_json::from_str(&root.ok(&["image", "diff", &id, "committed:1", "--json"]))
                .unwrap();
        let s = &d["summary"];
        assert_eq!(
            (
                s["added"].as_u64(),
                s["removed"].as_u64(),
                s["changed"].as_u64()
            ),
            (Some(0), Some(0), Some(0)),
            "{format}: {d}"
        );
        assert_eq!(
            strata_ok(other.path(), &["run", "--rm", "committed:1"]),
            "x\n"
        );
    }

    // export: the flat file system.
    let tar = mnts.path().join("rootfs.tar");
    root.ok(&["export", "live", "-o", tar.to_str().unwrap()]);
    let names = std::process::Command::new("tar")
        .arg("tf")
        .arg(&tar)
        .output()
        .unwrap();
    let names = String::from_utf8_lossy(&names.stdout);
    assert!(names.lines().any(|l| l == "new/sub/f"), "{names}");
    assert!(!names.lines().any(|l| l == "bin/ls"));
    assert!(!names.lines().any(|l| l.contains(".wh.")));
}

#[test]
fn wasted_bytes_of_overwritten_and_deleted_files_are_exact() {
    let root = ContainerRoot::with_deadline(Duration::from_secs(300));
    let base: Value =
        serde_json::from_str(&root.ok(&["image", "layers", IMAGE, "--json"])).unwrap();
    root.ok(&[
        "run",
        "--name",
        "one",
        IMAGE,
        "sh",
        "-c",
        "mkdir /w; head -c 1000 /dev/zero > /w/a; head -c 500 /dev/zero > /w/b",
    ]);
    root.ok(&["commit", "one", "w:1"]);
    root.ok(&[
        "run",
        "--name",
        "two",
        "w:1",
        "sh",
        "-c",
        "head -c 200 /dev/zero > /w/a; rm /w/b",
    ]);
    root.ok(&["commit", "two", "w:2"]);
    let r: Value = serde_json::from_str(&root.ok(&["image", "layers", "w:2", "--json"])).unwrap();
    let layers = r["layers"].as_array().unwrap();
    let n = layers.len();
    // The first commit's layer: /w/a overwritten (1000), /w/b deleted (500).
    assert_eq!(layers[n - 2]["wasted"], 1500, "{r}");
    assert_eq!(layers[n - 2]["size"], 1500);
    assert_eq!(layers[n - 1]["size"], 200);
    assert_eq!(
        (&layers[n - 1]["changed"], &layers[n - 1]["deleted"]),
        (&Value::from(2), &Value::from(1)),
        "/w and /w/a changed, /w/b deleted: {r}"
    );
    // dive: /w/a counts 1000 + 200, /w/b 500 + 0.
    assert_eq!(
        r["wasted_bytes"].as_u64().unwrap() - base["wasted_bytes"].as_u64().unwrap(),
        1700
    );
    assert_eq!(
        root.code(&["image", "check", "w:2", "--max-wasted", "1kB"]),
        1
    );
    assert_eq!(
        root.code(&["image", "check", "w:2", "--max-wasted", "20MB"]),
        0
    );
    assert_eq!(
        root.code(&["image", "check", "w:2", "--min-efficiency", "0.95"]),
        0
    );
    let d = root.ok(&["image", "diff", "w:1", "w:2"]);
    assert!(d.contains("D /w/b\n"), "{d}");
    assert!(d.contains("C /w/a  (size, content)\n"), "{d}");
}

/// Lists, inside a container, every path of the image's own directories with its mode,
/// owner, type and size, and the md5 of every regular file (runtime-made /etc files left out;
/// podman creates /etc/mtab at run time).
const LISTING: &str = "find /bin /etc /new /srv /usr /www | sort | \
     grep -v -e '^/etc/hosts$' -e '^/etc/hostname$' -e '^/etc/resolv.conf$' -e '^/etc/mtab$' | \
     while read -r f; do stat -c '%n %a %u %g %F %s' \"$f\"; \
     if [ -f \"$f\" ] && [ ! -L \"$f\" ]; then md5sum \"$f\"; fi; done";

fn podman(work: &Path, args: &[&str]) -> String {
    let mut cmd = std::process::Command::new("podman");
    cmd.arg("--root")
        .arg(work.join("root"))
        .arg("--runroot")
        .arg(work.join("run"))
        .args(["--cgroup-manager", "cgroupfs", "--events-backend", "none"]);
    if args.first() == Some(&"run") {
        // crun fails on this host's cgroups; runc works. Lower rlimits: without
        // CAP_SYS_RESOURCE runc cannot raise them to podman's defaults.
        cmd.args([
            "run",
            "--rm",
            "--runtime",
            "runc",
            "--network",
            "none",
            "--ulimit",
            "nofile=1024:1024",
            "--ulimit",
            "nproc=1024:1024",
        ]);
        cmd.args(&args[1..]);
    } else {
        cmd.args(args);
    }
    let out = cmd.output().expect("run podman");
    assert!(
        out.status.success(),
        "podman {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Needs podman: CI (`CI` set; `.ci/run` installs podman) fails without it, elsewhere the
/// test says it skipped.
#[test]
fn podman_loads_what_strata_saves_and_strata_loads_what_podman_saves() {
    if let Err(e) = std::process::Command::new("podman")
        .arg("--version")
        .output()
    {
        assert!(
            std::env::var_os("CI").is_none(),
            "podman is missing in CI (.ci/run installs it): {e}"
        );
        eprintln!("SKIPPED: podman is not installed (.ci/run installs it): {e}");
        return;
    }
    let root = ContainerRoot::with_deadline(Duration::from_secs(300));
    root.ok(&["run", "--name", "src", IMAGE, "sh", "-c", SCRIPT]);
    root.ok(&["commit", "src", "interop:1"]);
    let want = root.ok(&["run", "--rm", "interop:1", "sh", "-c", LISTING]);
    assert!(want.contains("/new/sub/f "), "{want}");
    let work = tempfile::tempdir().unwrap();
    for format in ["docker-archive", "oci-archive"] {
        let pm = work.path().join(format!("podman-{format}"));
        let archive = work.path().join(format!("{format}.tar"));
        root.ok(&[
            "save",
            "interop:1",
            "-o",
            archive.to_str().unwrap(),
            "--format",
            format,
        ]);
        podman(&pm, &["load", "-i", archive.to_str().unwrap()]);
        let got = podman(&pm, &["run", "localhost/interop:1", "sh", "-c", LISTING]);
        assert_eq!(
            got, want,
            "{format}: podman's container differs from strata's"
        );
        // And back: podman's docker-archive loads into a fresh strata root.
        let back = work.path().join(format!("back-{format}.tar"));
        podman(
            &pm,
            &[
                "save",
                "--format",
                "docker-archive",
                "-o",
                back.to_str().unwrap(),
                "localhost/interop:1",
            ],
        );
        let other = tempfile::tempdir().unwrap();
        strata_ok(other.path(), &["load", back.to_str().unwrap()]);
        let again = strata_ok(
            other.path(),
            &["run", "--rm", "interop:1", "sh", "-c", LISTING],
        );
        assert_eq!(
            again, want,
            "{format}: podman's save, loaded by strata, differs"
        );
    }
}

//! strata as an ordinary user (issue 10, parts 1 and 2; containers: rootless_containers.rs): per-user defaults, `info`, refusals
//! that name the fix, and read-only and writable mounts through `fusermount3`, run as the
//! unprivileged user `strata-rootless` (made by the test kit) with a fresh HOME per test.
//! The test itself runs as root: it compares what the user sees with what root sees.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use strata_testkit::rootless::UserSession;
use strata_testkit::*;

const IMAGE: &str = "strata-sample:latest";
/// `stat` fields compared between the user's mount and root's: name, type, mode (with the
/// setuid/setgid/sticky bits), owner, group, size, device numbers, mtime, links.
const STAT: &str = "%n|%F|%a|%u|%g|%s|%t:%T|%Y|%h";

/// `path -> stat line` of every entry the caller can reach under the current directory.
fn parse_stat(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|l| Some((l.split('|').next()?.to_string(), l.to_string())))
        .collect()
}

/// The same walk as root, in root's own mount of the same image.
fn root_walk(dir: &Path, script: &str) -> String {
    let out = Command::new("sh")
        .args(["-c", script])
        .current_dir(dir)
        .output()
        .expect("sh as root");
    assert!(out.status.success(), "{script}: {out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Root's read-only mount of the sample image (its own state root), unmounted on drop.
struct RootMount {
    _root: tempfile::TempDir,
    mnt: tempfile::TempDir,
    _guard: MountGuard,
}

impl RootMount {
    fn new() -> RootMount {
        let root = tempfile::tempdir().unwrap();
        let mnt = tempfile::tempdir().unwrap();
        let oci = sample_image().join("sample.oci.tar");
        strata_ok(root.path(), &["load", oci.to_str().unwrap()]);
        let guard = MountGuard(mnt.path().to_path_buf());
        strata_ok(
            root.path(),
            &["mount", IMAGE, mnt.path().to_str().unwrap(), "-d"],
        );
        RootMount {
            _root: root,
            mnt,
            _guard: guard,
        }
    }
}

/// A session with the sample image loaded into the user's default state root.
fn loaded() -> UserSession {
    let u = UserSession::new();
    let tar = u.give(&sample_image().join("sample.oci.tar"), "sample.oci.tar");
    let out = u.strata_ok(&["load", tar.to_str().unwrap()]);
    assert!(out.contains("Loaded image: strata-sample:latest"), "{out}");
    u
}

fn info(u: &UserSession, env: &[(&str, &str)]) -> serde_json::Value {
    let o = u.strata_env(&["info", "--json"], env);
    assert_eq!(o.code, 0, "{o:?}");
    serde_json::from_str(&o.out).unwrap_or_else(|e| panic!("info --json: {e}: {}", o.out))
}

#[test]
fn defaults_are_per_user_and_read_only_commands_create_nothing() {
    let u = UserSession::new();
    let state = u.state_root();

    let i = info(&u, &[]);
    assert_eq!(i["mode"], "rootless");
    assert_eq!(i["uid"], u.user.uid);
    assert_eq!(i["state_root"], state.to_str().unwrap());
    assert_eq!(i["state_root_given"], false);
    assert_eq!(i["state_root_exists"], false);
    assert!(i["state_root_problem"].is_null(), "{i}");
    assert_eq!(i["runtime_dir"], u.path("run/strata").to_str().unwrap());
    assert_eq!(i["fuse"]["device_usable"], true, "{i}");
    assert_eq!(i["fuse"]["passthrough"], false, "{i}");
    assert!(i["fuse"]["fusermount3"].is_string(), "{i}");
    assert!(i["fuse_problem"].is_null(), "{i}");
    let text = u.strata_ok(&["info"]);
    assert!(text.contains("Mode:          rootless"), "{text}");
    assert!(text.contains(state.to_str().unwrap()), "{text}");

    // Listings answer empty and create no state root.
    for args in [&["images"][..], &["ps", "-a"], &["volume", "ls"]] {
        let o = u.strata(args);
        assert_eq!(o.code, 0, "{args:?}: {o:?}");
    }
    assert!(
        !state.exists(),
        "a read-only command created {}",
        state.display()
    );
    assert!(!u.path(".local").exists());

    // XDG_DATA_HOME moves the default; STRATA_ROOT and --root win over both; without
    // XDG_RUNTIME_DIR the runtime directory is the private fallback.
    let data = u.path("data");
    let i = info(
        &u,
        &[
            ("XDG_DATA_HOME", data.to_str().unwrap()),
            ("XDG_RUNTIME_DIR", ""),
        ],
    );
    assert_eq!(i["state_root"], data.join("strata").to_str().unwrap());
    let tmp = std::env::temp_dir();
    assert_eq!(
        i["runtime_dir"],
        tmp.join(format!("strata-{}", u.user.uid)).to_str().unwrap()
    );
    // A relative XDG_DATA_HOME is ignored, as the XDG spec says.
    let i = info(&u, &[("XDG_DATA_HOME", "rel/data")]);
    assert_eq!(i["state_root"], state.to_str().unwrap());
    let mine = u.path("mine");
    let i = info(&u, &[("STRATA_ROOT", mine.to_str().unwrap())]);
    assert_eq!(i["state_root"], mine.to_str().unwrap());
    assert_eq!(i["state_root_given"], true);
    let o = u.strata(&["--root", mine.to_str().unwrap(), "info", "--json"]);
    assert!(o.out.contains(mine.to_str().unwrap()), "{o:?}");

    // A state root elsewhere, through STRATA_ROOT, is where `load` puts the image.
    let tar = u.give(&sample_image().join("sample.oci.tar"), "sample.oci.tar");
    let o = u.strata_env(
        &["load", "-q", tar.to_str().unwrap()],
        &[("STRATA_ROOT", mine.to_str().unwrap())],
    );
    assert_eq!(o.code, 0, "{o:?}");
    assert!(mine.join("images").exists() || mine.join("layers").exists());
    assert!(!state.exists());
}

#[test]
fn a_state_root_of_another_user_is_refused_and_left_alone() {
    let u = UserSession::new();
    // Root's: exists, owned by uid 0.
    let foreign = tempfile::tempdir().unwrap();
    std::fs::write(foreign.path().join("keep"), b"root's").unwrap();
    let listing = || -> Vec<_> {
        let mut v: Vec<_> = std::fs::read_dir(foreign.path())
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        v.sort();
        v
    };
    let before = listing();
    let tar = u.give(&sample_image().join("sample.oci.tar"), "sample.oci.tar");
    for args in [
        vec!["images"],
        vec!["load", tar.to_str().unwrap()],
        vec!["mount", IMAGE, "/tmp", "-d"],
    ] {
        let mut full = vec!["--root", foreign.path().to_str().unwrap()];
        full.extend(&args);
        let o = u.strata(&full);
        assert_eq!(o.code, 125, "{args:?}: {o:?}");
        let line = o.err.trim();
        assert_eq!(line.lines().count(), 1, "one sentence: {line}");
        assert!(
            line.contains("belongs to uid 0") && line.contains(&format!("uid {}", u.user.uid)),
            "{line}"
        );
        assert!(
            line.contains(u.state_root().to_str().unwrap()),
            "names the user's default: {line}"
        );
    }
    assert_eq!(before, listing(), "nothing changed in the foreign root");

    // One the user cannot create (its parent is root's): refused the same way, not created.
    let o = u.strata(&[
        "--root",
        "/var/lib/strata-rootless-test/x",
        "load",
        tar.to_str().unwrap(),
    ]);
    assert_eq!(o.code, 125, "{o:?}");
    assert!(o.err.contains("is not writable by you"), "{o:?}");
    assert!(!Path::new("/var/lib/strata-rootless-test").exists());
}

#[test]
fn read_only_mount_shows_the_images_owners_and_modes() {
    let u = loaded();
    let images = u.strata_ok(&["images"]);
    assert!(images.contains("strata-sample"), "{images}");

    // Layers extracted by the user: files of the user's, no setuid bit, no device node: the
    // owners and modes of the image live in the index.
    let store = u.state_root();
    let special = Command::new("find")
        .arg(&store)
        .args([
            "(", "-perm", "/6000", "-o", "-type", "b", "-o", "-type", "c", "-o", "!", "-user",
        ])
        .arg(u.user.uid.to_string())
        .args([")", "-print"])
        .output()
        .unwrap();
    assert!(special.status.success());
    assert_eq!(
        String::from_utf8_lossy(&special.stdout),
        "",
        "special files in the store"
    );

    let m = u.mkdir("m");
    let o = u.strata(&["mount", IMAGE, m.to_str().unwrap(), "-d"]);
    assert_eq!(o.code, 0, "{o:?}");
    assert_eq!(o.out.trim(), m.to_str().unwrap());
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let line = mounts
        .lines()
        .find(|l| l.split(' ').nth(4) == m.to_str())
        .unwrap_or_else(|| panic!("{} not mounted", m.display()));
    assert!(line.contains("fuse.strata"), "{line}");
    assert!(
        line.contains(&format!("user_id={}", u.user.uid)),
        "made through fusermount3: {line}"
    );
    assert!(line.contains("nosuid") && line.contains("nodev"), "{line}");

    // The user's view against root's view of the same image.
    let rm = RootMount::new();
    let walk = format!("find . -exec stat -c '{STAT}' {{}} + 2>/dev/null; true");
    let theirs = parse_stat(&root_walk(rm.mnt.path(), &walk));
    let o = u.sh(&format!("cd {} && {walk}", m.display()));
    assert_eq!(o.code, 0, "{o:?}");
    let mine = parse_stat(&o.out);
    assert!(mine.len() > 100, "the user sees {} entries", mine.len());
    for (path, line) in &mine {
        assert_eq!(
            theirs.get(path),
            Some(line),
            "{path} as the user vs as root"
        );
    }
    // What the user cannot see is what the image's modes hide from it: the insides of
    // directories that others may not list or search (/root is 0700).
    let closed = |dir: &str| {
        theirs.get(dir).is_some_and(|l| {
            let mode = l
                .split('|')
                .nth(2)
                .and_then(|m| u32::from_str_radix(m, 8).ok());
            mode.is_some_and(|m| m & 0o005 != 0o005)
        })
    };
    let hidden: Vec<_> = theirs
        .keys()
        .filter(|p| !mine.contains_key(*p))
        .filter(|p| {
            !Path::new(p.as_str())
                .ancestors()
                .skip(1)
                .any(|a| closed(a.to_str().unwrap_or("")))
        })
        .collect();
    assert!(hidden.is_empty(), "hidden from the user: {hidden:?}");
    for (path, want) in [
        ("./bin/busybox", "regular file|755|0|0|"),
        ("./srv/perms/setuid", "regular file|4755|0|0|"),
        ("./srv/perms/setuid-setgid-sticky", "regular file|7755|0|0|"),
        (
            "./srv/owners/uid-1234-gid-5678",
            "regular file|640|1234|5678|",
        ),
        (
            "./srv/special/null",
            "character special file|666|0|0|0|1:3|",
        ),
        ("./srv/special/sda", "block special file|660|0|6|0|8:0|"),
        ("./root", "directory|700|0|0|"),
    ] {
        let line = &mine[path];
        assert!(line.contains(want), "{path}: {line} lacks {want}");
    }

    // File data, read through strata (no passthrough without CAP_SYS_ADMIN): the same bytes.
    let sums = "find . -type f -readable -exec sha256sum {} + 2>/dev/null; true";
    let theirs: Vec<String> = root_walk(rm.mnt.path(), sums)
        .lines()
        .map(String::from)
        .collect();
    let o = u.sh(&format!("cd {} && {sums}", m.display()));
    let mine: Vec<&str> = o.out.lines().collect();
    assert!(mine.len() > 30, "{o:?}");
    for l in &mine {
        assert!(theirs.iter().any(|t| t == l), "{l} differs from root's");
    }
    // The image's permissions hold for the user: 0000 and other owners' 0640 are unreadable.
    let o = u.sh(&format!("cat {}/srv/perms/no-permissions", m.display()));
    assert_ne!(o.code, 0, "{o:?}");
    assert!(o.err.contains("Permission denied"), "{o:?}");

    // Private to the user (no user_allow_other here): root's own walk is refused.
    if !fuse_conf_allows_other() {
        assert!(
            std::fs::read_dir(&m).is_err(),
            "root read a private user mount"
        );
        let o = u.strata(&["umount", m.to_str().unwrap()]);
        assert_eq!(o.code, 0, "{o:?}");
        let m2 = u.mkdir("m2");
        let o = u.strata(&["mount", IMAGE, m2.to_str().unwrap(), "--allow-other", "-d"]);
        assert_eq!(o.code, 125, "{o:?}");
        assert!(
            o.err.contains("/etc/fuse.conf") && o.err.contains("user_allow_other"),
            "{o:?}"
        );
        assert!(!is_mounted(&m2));
    } else {
        let o = u.strata(&["umount", m.to_str().unwrap()]);
        assert_eq!(o.code, 0, "{o:?}");
    }
    assert!(wait_unmounted(&m), "umount left {} mounted", m.display());
    assert!(u.mounts().is_empty(), "{:?}", u.mounts());
}

fn fuse_conf_allows_other() -> bool {
    strata::fs::access::user_allow_other()
}

#[test]
fn an_imported_rootfs_with_device_nodes_and_setuid_files_imports_and_mounts() {
    let u = UserSession::new();
    let tar = u.give(&sample_image().join("rootfs.tar"), "rootfs.tar");
    let o = u.strata(&["import", tar.to_str().unwrap(), "flat:1"]);
    assert_eq!(o.code, 0, "{o:?}");
    let m = u.mkdir("m");
    u.strata_ok(&["mount", "flat:1", m.to_str().unwrap(), "-d"]);
    let o = u.sh(&format!(
        "stat -c '{STAT}' {0}/srv/special/null {0}/srv/perms/setuid",
        m.display()
    ));
    assert_eq!(o.code, 0, "{o:?}");
    assert!(
        o.out.contains("character special file|666|0|0|0|1:3|"),
        "{o:?}"
    );
    assert!(o.out.contains("regular file|4755|0|0|"), "{o:?}");
    u.strata_ok(&["umount", m.to_str().unwrap()]);
    assert!(wait_unmounted(&m));
}

#[test]
fn writable_mount_keeps_changes_in_the_users_layer() {
    let u = loaded();
    let m = u.mkdir("m");
    let layer = u.path("changes");
    let mount_rw = || {
        let o = u.strata(&[
            "mount",
            "--rw",
            IMAGE,
            m.to_str().unwrap(),
            "--layer",
            layer.to_str().unwrap(),
            "-d",
        ]);
        assert_eq!(o.code, 0, "{o:?}");
    };
    mount_rw();
    let mp = m.display();
    let o = u.sh(&format!(
        "echo written > {mp}/tmp/new && mkdir {mp}/tmp/dir && cat {mp}/tmp/new && stat -c '%u:%g %a' {mp}/tmp/new"
    ));
    assert_eq!(o.code, 0, "{o:?}");
    let ids = format!("{}:{}", u.user.uid, u.user.gid);
    assert_eq!(o.out, format!("written\n{ids} 644\n"), "{o:?}");
    // The image's owners still rule: root's /etc is not the user's to change.
    let o = u.sh(&format!("echo x > {mp}/etc/passwd"));
    assert_ne!(o.code, 0, "{o:?}");
    assert!(o.err.contains("Permission denied"), "{o:?}");
    let o = u.sh(&format!("stat -c '%u %a' {mp}/etc/passwd"));
    assert_eq!(o.out.trim(), "0 644", "{o:?}");

    u.strata_ok(&["umount", m.to_str().unwrap()]);
    assert!(wait_unmounted(&m));
    // The layer directory is the user's own, nothing chowned.
    let owners = Command::new("find")
        .arg(&layer)
        .arg("!")
        .args(["-user", &u.user.uid.to_string()])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&owners.stdout), "");

    mount_rw();
    let o = u.sh(&format!(
        "cat {mp}/tmp/new && test -d {mp}/tmp/dir && rm {mp}/tmp/new"
    ));
    assert_eq!(o.out, "written\n", "{o:?}");
    u.strata_ok(&["umount", m.to_str().unwrap()]);
    assert!(wait_unmounted(&m));
    mount_rw();
    let o = u.sh(&format!("test -e {mp}/tmp/new"));
    assert_ne!(o.code, 0, "the removal did not last: {o:?}");
    u.strata_ok(&["umount", m.to_str().unwrap()]);
    assert!(wait_unmounted(&m));
}

#[test]
fn umount_cleans_up_after_a_killed_daemon_and_faults_name_the_fix() {
    let u = loaded();
    let m = u.mkdir("m");
    u.strata_ok(&["mount", IMAGE, m.to_str().unwrap(), "-d"]);
    // Kill the daemon (the test's own grandchild, found by its mount record).
    let records = u.state_root().join("mounts");
    let rec = std::fs::read_dir(&records)
        .unwrap()
        .flatten()
        .find(|e| e.path().extension().is_some_and(|x| x == "json"))
        .expect("a mount record");
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(rec.path()).unwrap()).unwrap();
    let pid = v["pid"].as_i64().unwrap() as i32;
    let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
    for _ in 0..100 {
        if !strata::sys::process_alive(pid) {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(is_mounted(&m), "the dead daemon's mount is still there");
    let o = u.strata(&["umount", m.to_str().unwrap()]);
    assert_eq!(o.code, 0, "umount as the user after a killed daemon: {o:?}");
    assert!(wait_unmounted(&m));

    // /dev/fuse closed to the user (in a mount namespace of its own, where a 0600 node with
    // the same numbers covers the host's; the host's stays as it is).
    let dev = tempfile::tempdir().unwrap();
    let node = dev.path().join("fuse");
    let st = Command::new("mknod")
        .arg(&node)
        .args(["c", "10", "229"])
        .status()
        .unwrap();
    assert!(st.success());
    std::fs::set_permissions(&node, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let inner = format!(
        "mount --bind {} /dev/fuse && exec setpriv --reuid={} --regid={} --init-groups --inh-caps=-all env -i HOME={} XDG_RUNTIME_DIR={}/run PATH=/usr/bin:/bin {} mount {IMAGE} {} -d",
        node.display(),
        u.user.uid,
        u.user.gid,
        u.home().display(),
        u.home().display(),
        u.bin().display(),
        m.display()
    );
    let out = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c", &inner])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(125), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(
        err.contains("/dev/fuse") && err.contains("chmod 0666 /dev/fuse"),
        "{err}"
    );
    assert!(!is_mounted(&m));
}

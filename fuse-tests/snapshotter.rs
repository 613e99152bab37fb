//! strata as containerd's snapshotter, end to end with the real containerd (Debian's
//! `containerd` package, which brings `ctr`; runc runs the containers): a private containerd
//! (its own root, state, sockets and a config naming the `strata` proxy plugin) and
//! `strata snapshotter` on a private state root.
//!
//! One test walks the whole path, as a user would: import the sample image through strata,
//! `ctr run --rm … echo hi`, a container that writes and deletes files and `ctr snapshots
//! diff` showing exactly that, prepare/commit/view/label/usage/remove by hand, restarts of
//! both daemons (SIGTERM and kill -9 of the snapshotter) with the snapshots and their data
//! surviving, restarts of containerd alone (SIGTERM and kill -9) under a running container
//! while the snapshotter keeps serving, and at the end: every snapshot and every layer gone, nothing mounted, nothing
//! running. Every wait is bounded; the daemons (and any runc shim of this containerd) are
//! stopped by PID in `Drop`, even when the test fails.

use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use strata::snapshotter::SnapshotMount;
use strata_testkit::{MountGuard, Out, kill9, output_within, sample_image, strata_bin, wait_exit};

/// Unpacking into extraction snapshots (overlay mounts), against kernel overlayfs.
#[path = "snapshotter/unpack.rs"]
mod unpack;

#[path = "snapshotter/stored.rs"]
mod stored;

const NAMESPACE: &str = "strata-test";
const IMAGE: &str = "strata-sample:latest";
const DEADLINE: Duration = Duration::from_secs(60);

/// A daemon this test started: SIGTERM, then SIGKILL, by PID, on drop.
struct Daemon {
    name: &'static str,
    child: Option<Child>,
}

impl Daemon {
    /// Stops it: SIGTERM and a bounded wait (then SIGKILL), or SIGKILL at once.
    fn stop(&mut self, kill: bool) {
        let Some(mut c) = self.child.take() else {
            return;
        };
        let pid = c.id() as i32;
        if !kill && let Some(p) = rustix::process::Pid::from_raw(pid) {
            let _ = rustix::process::kill_process(p, rustix::process::Signal::TERM);
            let end = Instant::now() + Duration::from_secs(20);
            while Instant::now() < end {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            eprintln!(
                "{} (pid {pid}) ignored SIGTERM for 20 s: killing it",
                self.name
            );
        }
        kill9(pid);
        let _ = c.wait();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop(false);
    }
}

/// The private containerd and snapshotter, and their directories.
struct Env {
    dir: tempfile::TempDir,
    snapshotter: Daemon,
    containerd: Daemon,
}

impl Env {
    fn p(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }
    fn state(&self) -> PathBuf {
        self.p("state")
    }
    fn mounts(&self) -> PathBuf {
        self.p("mounts")
    }
    fn address(&self) -> PathBuf {
        self.p("containerd.sock")
    }

    fn new() -> Env {
        for tool in ["containerd", "ctr", "runc"] {
            assert!(
                Command::new("sh")
                    .args(["-c", &format!("command -v {tool}")])
                    .stdout(Stdio::null())
                    .status()
                    .is_ok_and(|s| s.success()),
                "{tool} is not installed (.ci/run installs Debian's containerd and runc)"
            );
        }
        let dir = tempfile::Builder::new()
            .prefix("strata-ctrd-")
            .tempdir()
            .expect("tempdir");
        let mut env = Env {
            dir,
            snapshotter: Daemon {
                name: "strata snapshotter",
                child: None,
            },
            containerd: Daemon {
                name: "containerd",
                child: None,
            },
        };
        for d in ["state", "mounts", "containerd-root", "containerd-state"] {
            std::fs::create_dir_all(env.p(d)).expect("mkdir");
        }
        let config = format!(
            r#"version = 2
root = "{root}"
state = "{state}"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "{sock}"
[ttrpc]
  address = "{sock}.ttrpc"
[debug]
  address = ""
[proxy_plugins.strata]
  type = "snapshot"
  address = "{strata}"
[plugins."io.containerd.internal.v1.opt"]
  path = "{opt}"
"#,
            opt = env.p("containerd-opt").display(),
            root = env.p("containerd-root").display(),
            state = env.p("containerd-state").display(),
            sock = env.address().display(),
            strata = env.p("strata.sock").display(),
        );
        std::fs::write(env.p("config.toml"), config).expect("write config");
        env.start_snapshotter();
        env.start_containerd();
        env
    }

    fn log(&self, name: &str) -> std::fs::File {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.p(name))
            .expect("log file")
    }

    fn start_snapshotter(&mut self) {
        let sock = self.p("strata.sock");
        let child = Command::new(strata_bin())
            .arg("--root")
            .arg(self.state())
            .arg("snapshotter")
            .arg("--address")
            .arg(&sock)
            .arg("--mounts")
            .arg(self.mounts())
            .env("RUST_LOG", "strata=info")
            .stdin(Stdio::null())
            .stdout(self.log("snapshotter.log"))
            .stderr(self.log("snapshotter.log"))
            .spawn()
            .expect("start strata snapshotter");
        self.snapshotter.child = Some(child);
        self.wait_for(&sock, "the snapshotter's socket");
        let mode = std::fs::metadata(&sock)
            .expect("socket")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "socket mode {mode:o}");
    }

    fn start_containerd(&mut self) {
        let child = Command::new("containerd")
            .arg("--config")
            .arg(self.p("config.toml"))
            .stdin(Stdio::null())
            .stdout(self.log("containerd.log"))
            .stderr(self.log("containerd.log"))
            .spawn()
            .expect("start containerd");
        self.containerd.child = Some(child);
        let address = self.address();
        self.wait_for(&address, "containerd's socket");
        // Serving: `ctr version` answers.
        let end = Instant::now() + Duration::from_secs(30);
        while self.ctr(&["version"]).code != 0 {
            assert!(
                Instant::now() < end,
                "containerd did not answer within 30 s"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits (bounded: 30 s) for `path` to appear.
    fn wait_for(&self, path: &Path, what: &str) {
        let end = Instant::now() + Duration::from_secs(30);
        while !path.exists() {
            assert!(
                Instant::now() < end,
                "{what} did not appear within 30 s; logs:\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn logs(&self) -> String {
        let mut s = String::new();
        for f in ["snapshotter.log", "containerd.log"] {
            let text = std::fs::read_to_string(self.p(f)).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(30).collect();
            s.push_str(&format!("--- {f} (last lines)\n"));
            for l in tail.into_iter().rev() {
                s.push_str(l);
                s.push('\n');
            }
        }
        s
    }

    fn ctr_cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new("ctr");
        c.arg("-a")
            .arg(self.address())
            .args(["-n", NAMESPACE])
            .args(args);
        c
    }

    fn ctr(&self, args: &[&str]) -> Out {
        output_within(self.ctr_cmd(args), None, DEADLINE)
    }

    /// `ctr ARGS`, which must succeed; its stdout.
    fn ok(&self, args: &[&str]) -> String {
        let o = self.ctr(args);
        assert_eq!(o.code, 0, "ctr {args:?}: {o:?}\n{}", self.logs());
        o.out
    }

    /// `ctr snapshots --snapshotter strata ARGS`.
    fn snap(&self, args: &[&str]) -> Out {
        let mut all = vec!["snapshots", "--snapshotter", "strata"];
        all.extend_from_slice(args);
        self.ctr(&all)
    }

    fn snap_ok(&self, args: &[&str]) -> String {
        let o = self.snap(args);
        assert_eq!(o.code, 0, "ctr snapshots {args:?}: {o:?}\n{}", self.logs());
        o.out
    }

    /// `ctr snapshots ls`: (key, parent, kind) rows.
    fn snapshots(&self) -> Vec<(String, String, String)> {
        self.snap_ok(&["ls"])
            .lines()
            .skip(1)
            .map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                match f.as_slice() {
                    [k, kind] => (k.to_string(), String::new(), kind.to_string()),
                    [k, p, kind] => (k.to_string(), p.to_string(), kind.to_string()),
                    _ => panic!("unexpected ls line {l:?}"),
                }
            })
            .collect()
    }

    /// Bind-mounts what `ctr snapshots mounts` says for `key` on a fresh directory, as
    /// containerd would; unmounted when the guard drops.
    fn mount(&self, key: &str, name: &str) -> MountGuard {
        let target = self.p(name);
        std::fs::create_dir_all(&target).expect("mkdir");
        // A containerd whose snapshotter restarted reconnects on its own, after a back-off.
        let args = ["mounts", target.to_str().expect("UTF-8"), key];
        let end = Instant::now() + Duration::from_secs(30);
        let line = loop {
            let o = self.snap(&args);
            if o.code == 0 {
                break o.out;
            }
            assert!(
                o.err.contains("unavailable") && Instant::now() < end,
                "ctr snapshots {args:?}: {o:?}\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(100));
        };
        // `mount -t bind SOURCE TARGET -o rbind,rw`
        let f: Vec<&str> = line.split_whitespace().collect();
        assert!(
            f.len() == 7 && f[0] == "mount" && f[2] == "bind" && f[5] == "-o",
            "unexpected mounts line {line:?}"
        );
        let source = PathBuf::from(f[3]);
        assert!(
            source.starts_with(self.mounts()),
            "{source:?} is not under the mounts directory"
        );
        rustix::mount::mount_bind_recursive(&source, &target).expect("bind mount");
        if f[6].split(',').any(|o| o == "ro") {
            rustix::mount::mount_remount(
                &target,
                rustix::mount::MountFlags::BIND | rustix::mount::MountFlags::RDONLY,
                "",
            )
            .expect("read-only remount");
        }
        MountGuard(target)
    }

    /// The tar that `ctr snapshots diff KEY` writes (uncompressed): (path, content) of its
    /// regular files and the names of its other entries.
    fn diff(&self, key: &str) -> Vec<(String, Vec<u8>)> {
        let out = self.p("diff.tar");
        let mut c = self.ctr_cmd(&[
            "snapshots",
            "--snapshotter",
            "strata",
            "diff",
            "--media-type",
            "application/vnd.oci.image.layer.v1.tar",
            key,
        ]);
        let mut child = c
            .stdout(std::fs::File::create(&out).expect("create diff.tar"))
            .stderr(Stdio::piped())
            .stdin(Stdio::null())
            .spawn()
            .expect("ctr snapshots diff");
        let end = Instant::now() + DEADLINE;
        let st = loop {
            if let Some(st) = child.try_wait().expect("wait") {
                break st;
            }
            if Instant::now() > end {
                let _ = child.kill();
                let _ = child.wait();
                panic!("ctr snapshots diff {key} did not finish within {DEADLINE:?}");
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        let mut err = String::new();
        if let Some(mut e) = child.stderr.take() {
            let _ = e.read_to_string(&mut err);
        }
        assert!(st.success(), "ctr snapshots diff {key}: {err}");
        let mut a = tar::Archive::new(std::fs::File::open(&out).expect("diff.tar"));
        let mut entries = Vec::new();
        for e in a.entries().expect("tar") {
            let mut e = e.expect("tar entry");
            let path = e.path().expect("path").to_string_lossy().into_owned();
            let mut data = Vec::new();
            e.read_to_end(&mut data).expect("read entry");
            entries.push((path, data));
        }
        entries
    }

    /// strata-snapshot FUSE mounts anywhere under this test's directory.
    fn strata_mounts(&self) -> Vec<String> {
        let base = self.dir.path().to_string_lossy().into_owned();
        std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains(&base))
            .map(str::to_string)
            .collect()
    }

    /// A garbage collection of containerd's, now and synchronously (deleting a lease with
    /// `--sync` runs one).
    fn collect(&self) {
        self.ok(&["leases", "create", "--id", "strata-test-gc"]);
        self.ok(&["leases", "rm", "--sync", "strata-test-gc"]);
    }

    /// The mountinfo lines of the snapshotter's own mounts (under its mounts directory).
    fn fuse_mounts(&self) -> Vec<String> {
        let under = self.mounts().to_string_lossy().into_owned();
        let mut v: Vec<String> = self
            .strata_mounts()
            .into_iter()
            .filter(|l| {
                l.split_whitespace()
                    .nth(4)
                    .is_some_and(|mp| mp.starts_with(&format!("{under}/")))
            })
            .collect();
        v.sort();
        v
    }

    /// Waits (bounded: 30 s) until `cond` holds; containerd removes snapshots in its
    /// garbage collection, a moment after the command that dropped them.
    fn eventually(&self, what: &str, mut cond: impl FnMut() -> bool) {
        let end = Instant::now() + Duration::from_secs(30);
        while !cond() {
            assert!(
                Instant::now() < end,
                "{what}: not within 30 s\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// PIDs of the runc shims of this containerd (found by its socket on their command line).
    fn shims(&self) -> Vec<i32> {
        let address = self.address().to_string_lossy().into_owned();
        let mut pids = Vec::new();
        for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            let cmd = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            if cmd.contains("containerd-shim") && cmd.contains(&address) {
                pids.push(pid);
            }
        }
        pids
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        // Containers first (their shims are this test's too), then the daemons, then any
        // mount left under the test's directory.
        if self.containerd.child.is_some() {
            for c in self.ctr(&["containers", "ls", "-q"]).out.lines() {
                let _ = self.ctr(&["tasks", "kill", "-s", "SIGKILL", c]);
                let _ = self.ctr(&["tasks", "rm", "-f", c]);
                let _ = self.ctr(&["containers", "rm", c]);
            }
        }
        self.containerd.stop(false);
        self.snapshotter.stop(false);
        for pid in self.shims() {
            kill9(pid);
            wait_exit(pid, Duration::from_secs(5));
        }
        for l in self.strata_mounts() {
            if let Some(mp) = l.split_whitespace().nth(4) {
                drop(MountGuard(PathBuf::from(mp)));
            }
        }
    }
}

fn committed(rows: &[(String, String, String)]) -> usize {
    rows.iter().filter(|r| r.2 == "Committed").count()
}

#[test]
fn containerd_runs_containers_on_strata_snapshots() {
    let mut env = Env::new();
    let archive = sample_image().join("sample.oci.tar");

    // Import: containerd unpacks each layer into a strata snapshot and commits it.
    let out = env.ok(&[
        "images",
        "import",
        "--snapshotter",
        "strata",
        archive.to_str().expect("UTF-8"),
    ]);
    assert!(out.contains(IMAGE), "{out}");
    let rows = env.snapshots();
    assert_eq!(committed(&rows), 4, "{rows:?}");
    let top = rows
        .iter()
        .find(|r| !rows.iter().any(|c| c.1 == r.0))
        .map(|r| r.0.clone())
        .expect("a top snapshot");
    // The committed snapshots are strata layers in the state root's layer store.
    let state = env.state();
    let layers = || layer_count(&state);
    assert_eq!(layers(), 4);

    // A container on a strata snapshot.
    let o = env.ctr(&[
        "run",
        "--rm",
        "--snapshotter",
        "strata",
        IMAGE,
        "t1",
        "echo",
        "hi",
    ]);
    assert_eq!(
        (o.code, o.out.as_str()),
        (0, "hi\n"),
        "{o:?}\n{}",
        env.logs()
    );
    // Its image content, through the merged layers (layer 1's file).
    let o = env.ok(&[
        "run",
        "--rm",
        "--snapshotter",
        "strata",
        IMAGE,
        "t1b",
        "cat",
        "/www/index.html",
    ]);
    assert_eq!(o, "hello from strata\n");

    // A container that writes and deletes: `ctr snapshots diff` shows exactly that.
    env.ok(&[
        "run",
        "--snapshotter",
        "strata",
        IMAGE,
        "t2",
        "sh",
        "-c",
        "echo written-by-t2 > /new.txt && rm /etc/os-release",
    ]);
    let rows = env.snapshots();
    assert!(
        rows.iter()
            .any(|r| r.0 == "t2" && r.1 == top && r.2 == "Active"),
        "{rows:?}"
    );
    let diff = env.diff("t2");
    let names: Vec<&str> = diff.iter().map(|(p, _)| p.as_str()).collect();
    assert!(
        diff.iter()
            .any(|(p, d)| p == "new.txt" && d == b"written-by-t2\n"),
        "{names:?}"
    );
    assert!(names.contains(&"etc/.wh.os-release"), "{names:?}");
    assert!(!names.iter().any(|n| n.starts_with("bin/")), "{names:?}");
    let usage = env.snap_ok(&["usage", "t2"]);
    assert!(usage.lines().any(|l| l.starts_with("t2 ")), "{usage}");

    // By hand: prepare, write through the mount, commit, view, label, remove.
    env.snap_ok(&["prepare", "act1", &top]);
    {
        let m = env.mount("act1", "m-act1");
        std::fs::write(m.0.join("made-in-act1"), b"committed data\n").expect("write");
        std::fs::remove_dir_all(m.0.join("srv")).expect("rm -r /srv");
    }
    env.snap_ok(&["commit", "c1", "act1"]);
    let rows = env.snapshots();
    assert!(
        rows.iter()
            .any(|r| r.0 == "c1" && r.1 == top && r.2 == "Committed"),
        "{rows:?}"
    );
    assert!(!rows.iter().any(|r| r.0 == "act1"), "{rows:?}");
    assert_eq!(layers(), 5, "the commit is a new strata layer");
    // c1 (which `ctr snapshots commit` roots) refers to the view made next: `ctr snapshots
    // view` does not root it, and containerd's garbage collection (run after any deletion,
    // such as the lease of the `diff` above) would take it away under the test.
    env.snap_ok(&[
        "label",
        "c1",
        "strata.test/colour=blue",
        "containerd.io/gc.ref.snapshot.strata=v1",
    ]);
    let info = env.snap_ok(&["info", "c1"]);
    assert!(info.contains("\"strata.test/colour\": \"blue\""), "{info}");
    env.snap_ok(&["view", "v1", "c1"]);
    // A collection now keeps it.
    env.collect();
    assert!(env.snapshots().iter().any(|r| r.0 == "v1"), "v1 collected");
    {
        let m = env.mount("v1", "m-v1");
        assert_eq!(
            std::fs::read(m.0.join("made-in-act1")).expect("read"),
            b"committed data\n"
        );
        assert!(!m.0.join("srv").exists(), "the deletion was committed");
        assert!(m.0.join("bin/busybox").is_file());
        let e = std::fs::write(m.0.join("x"), b"x").expect_err("a view is read-only");
        assert_eq!(e.raw_os_error(), Some(libc::EROFS), "{e}");
    }
    // A parent with a child stays.
    assert_ne!(env.snap(&["rm", "c1"]).code, 0);
    env.snap_ok(&["rm", "v1"]);
    env.snap_ok(&["rm", "c1"]);
    // containerd removes it from strata in its next collection, which may be scheduled many
    // seconds away (its interval grows with the time collections took): one now.
    env.collect();
    env.eventually("c1's layer collected", || layers() == 4);

    // Restarts: an active snapshot with data, both daemons stopped and started again.
    env.snap_ok(&["prepare", "keep", &top]);
    {
        let m = env.mount("keep", "m-keep");
        std::fs::write(m.0.join("kept.txt"), b"survives restarts\n").expect("write");
    }
    env.containerd.stop(false);
    env.snapshotter.stop(false);
    assert_eq!(
        env.strata_mounts(),
        Vec::<String>::new(),
        "mounts after stop"
    );
    env.start_snapshotter();
    env.start_containerd();
    let rows = env.snapshots();
    assert!(
        rows.iter().any(|r| r.0 == "keep" && r.2 == "Active"),
        "{rows:?}"
    );
    assert_eq!(committed(&rows), 4, "{rows:?}");
    {
        // Mounted again on demand.
        let m = env.mount("keep", "m-keep");
        assert_eq!(
            std::fs::read(m.0.join("kept.txt")).expect("read"),
            b"survives restarts\n"
        );
    }
    // kill -9 of the snapshotter: its stale mount is detached at the next start.
    env.snapshotter.stop(true);
    env.start_snapshotter();
    {
        let m = env.mount("keep", "m-keep");
        assert_eq!(
            std::fs::read(m.0.join("kept.txt")).expect("read"),
            b"survives restarts\n"
        );
    }
    let o = env.ok(&[
        "run",
        "--rm",
        "--snapshotter",
        "strata",
        IMAGE,
        "t3",
        "cat",
        "/www/index.html",
    ]);
    assert_eq!(o, "hello from strata\n");

    // containerd alone restarts (SIGTERM, then kill -9) while the snapshotter keeps serving
    // and a container keeps running on a strata snapshot: nothing of strata is unmounted,
    // the running container's root file system still answers, and snapshots, mounts and new
    // containers work with the new containerd.
    env.ok(&[
        "run",
        "-d",
        "--snapshotter",
        "strata",
        IMAGE,
        "t4",
        "sleep",
        "600",
    ]);
    let snapshotter_pid = env.snapshotter.child.as_ref().map(|c| c.id());
    // The snapshotter's FUSE mounts (the running container's among them).
    let mounted = env.fuse_mounts();
    assert!(!mounted.is_empty(), "t4's snapshot is mounted");
    for kill in [false, true] {
        env.containerd.stop(kill);
        assert_eq!(
            env.fuse_mounts(),
            mounted,
            "containerd stopped (kill: {kill})"
        );
        env.start_containerd();
        assert!(
            env.snapshotter
                .child
                .as_mut()
                .is_some_and(|c| c.try_wait().is_ok_and(|s| s.is_none())),
            "the snapshotter stopped with containerd"
        );
        assert_eq!(
            env.snapshotter.child.as_ref().map(|c| c.id()),
            snapshotter_pid
        );
        let tasks = env.ok(&["tasks", "ls"]);
        assert!(
            tasks
                .lines()
                .any(|l| l.starts_with("t4 ") && l.contains("RUNNING")),
            "{tasks}"
        );
        let exec_id = format!("e-{kill}");
        let o = env.ok(&[
            "tasks",
            "exec",
            "--exec-id",
            &exec_id,
            "t4",
            "cat",
            "/www/index.html",
        ]);
        assert_eq!(o, "hello from strata\n", "the running container's rootfs");
        let rows = env.snapshots();
        assert!(
            rows.iter().any(|r| r.0 == "t4" && r.2 == "Active"),
            "{rows:?}"
        );
        assert_eq!(committed(&rows), 4, "{rows:?}");
        let m = env.mount("keep", "m-keep");
        assert_eq!(
            std::fs::read(m.0.join("kept.txt")).expect("read"),
            b"survives restarts\n"
        );
    }
    let o = env.ok(&[
        "run",
        "--rm",
        "--snapshotter",
        "strata",
        IMAGE,
        "t5",
        "cat",
        "/www/index.html",
    ]);
    assert_eq!(o, "hello from strata\n");
    env.ok(&["tasks", "kill", "-s", "SIGKILL", "t4"]);
    env.eventually("t4 stopped", || {
        env.ctr(&["tasks", "ls"])
            .out
            .lines()
            .all(|l| !l.starts_with("t4 ") || l.contains("STOPPED"))
    });
    env.ok(&["tasks", "rm", "t4"]);
    env.ok(&["containers", "rm", "t4"]);

    // Removal: the container, the snapshot, the image; containerd's collection removes the
    // committed snapshots, and with them strata's layers.
    env.ok(&["containers", "rm", "t2"]);
    env.snap_ok(&["rm", "keep"]);
    env.ok(&["images", "rm", "--sync", IMAGE]);
    env.eventually("every snapshot removed", || env.snapshots().is_empty());
    env.eventually("every layer collected", || layers() == 0);
    env.eventually("nothing mounted", || env.strata_mounts().is_empty());
    let left: Vec<_> = std::fs::read_dir(env.state().join("snapshotter/snapshots"))
        .expect("snapshots dir")
        .flatten()
        .map(|e| e.path())
        .collect();
    assert!(left.is_empty(), "{left:?}");
    assert!(env.shims().is_empty(), "shims left: {:?}", env.shims());

    // Both daemons stop cleanly (on SIGTERM, within the bounded wait), removing the socket
    // and leaving no mount.
    env.containerd.stop(false);
    env.snapshotter.stop(false);
    assert!(!env.p("strata.sock").exists(), "socket left behind");
    assert!(env.strata_mounts().is_empty());
}

/// Layers in a state root's layer store.
fn layer_count(state: &Path) -> usize {
    std::fs::read_dir(state.join("layers"))
        .expect("layers")
        .flatten()
        .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
        .count()
}

/// The library's snapshotter without containerd (whose own metadata layer answers many bad
/// requests before they reach a proxy plugin): every bad request gets containerd's code.
#[test]
fn bad_requests_get_containerds_error_codes() {
    use containerd_snapshots::tonic::{Code, Status};
    use std::collections::HashMap;
    use std::os::unix::ffi::OsStrExt;
    use strata::snapshotter::{Kind, SNAPSHOT_REF, SnapshotError, Snapshotter};
    let bind = |m: SnapshotMount| m.bind().expect("a bind mount").clone();

    fn code<T: std::fmt::Debug>(r: Result<T, SnapshotError>) -> Code {
        Status::from(r.expect_err("must fail")).code()
    }
    let dir = tempfile::Builder::new()
        .prefix("strata-snap-")
        .tempdir()
        .expect("tempdir");
    let (state, mounts) = (dir.path().join("state"), dir.path().join("mounts"));
    let none = HashMap::new;
    let s = Snapshotter::open(&state, &mounts).expect("open");

    // An active snapshot on nothing: an empty writable file system.
    let a = bind(s.create(Kind::Active, "a", "", none()).expect("prepare"));
    assert!(!a.read_only && a.source.starts_with(&mounts));
    std::fs::write(a.source.join("f"), b"in a\n").expect("write");
    // Committed through a pipe: a file bigger than the pipe's buffer, and a first entry whose
    // name starts with gzip's magic bytes (the layer store must not take the tar for gzip).
    let big: Vec<u8> = (0u32..3 << 20)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    std::fs::write(a.source.join("big"), &big).expect("write big");
    let gz_name = std::ffi::OsStr::from_bytes(b"\x1f\x8b-not-gzip");
    std::fs::write(a.source.join(gz_name), b"tar, not gzip\n").expect("write");
    // Whole seconds: no PAX header goes before the entry's own.
    std::fs::File::options()
        .write(true)
        .open(a.source.join(gz_name))
        .and_then(|f| {
            f.set_modified(
                std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1 << 30),
            )
        })
        .expect("set mtime");
    assert_eq!(
        code(s.create(Kind::Active, "a", "", none())),
        Code::AlreadyExists
    );
    assert_eq!(
        code(s.create(Kind::Active, "", "", none())),
        Code::InvalidArgument
    );
    assert_eq!(
        code(s.create(Kind::View, "v", "nope", none())),
        Code::NotFound
    );
    assert_eq!(
        code(s.create(Kind::Active, "b", "a", none())),
        Code::InvalidArgument
    );
    for r in [
        s.stat("nope").map(drop),
        s.mounts("nope").map(drop),
        s.remove("nope"),
    ] {
        assert_eq!(code(r), Code::NotFound);
    }
    assert_eq!(code(s.usage("nope")), Code::NotFound);
    assert_eq!(code(s.commit("c", "nope", none())), Code::NotFound);

    let labels = HashMap::from([("k".to_string(), "v".to_string())]);
    s.commit("c", "a", labels).expect("commit");
    assert!(
        !a.source.exists(),
        "the active snapshot's mount point is gone"
    );
    assert_eq!(code(s.stat("a")), Code::NotFound);
    assert_eq!(s.stat("c").expect("stat").labels["k"], "v");
    assert_eq!(code(s.mounts("c")), Code::FailedPrecondition);
    let v = bind(s.create(Kind::View, "v", "c", none()).expect("view"));
    assert!(v.read_only);
    assert_eq!(std::fs::read(v.source.join("f")).expect("read"), b"in a\n");
    assert!(std::fs::read(v.source.join("big")).expect("read big") == big);
    assert_eq!(
        std::fs::read(v.source.join(gz_name)).expect("read"),
        b"tar, not gzip\n"
    );
    assert_eq!(code(s.commit("c2", "v", none())), Code::FailedPrecondition);
    s.create(Kind::Active, "a2", "c", none())
        .expect("prepare on c");
    assert_eq!(code(s.commit("c", "a2", none())), Code::AlreadyExists);
    assert_eq!(code(s.remove("c")), Code::FailedPrecondition);
    assert_eq!(
        code(s.update("c", none(), &["parent".to_string()])),
        Code::InvalidArgument
    );
    let u = s
        .update(
            "c",
            HashMap::from([("x".into(), "1".into())]),
            &["labels.x".into()],
        )
        .expect("update");
    assert_eq!((u.labels.len(), u.labels["x"].as_str()), (2, "1"));
    assert_eq!(
        code(s.list(&["size==1".to_string()])),
        Code::InvalidArgument
    );
    let keys = |f: &str| -> Vec<String> {
        s.list(&[f.to_string()])
            .expect("list")
            .into_iter()
            .map(|r| r.key)
            .collect()
    };
    assert_eq!(keys("kind==committed"), ["c"]);
    assert_eq!(keys("parent==c"), ["a2", "v"]);
    assert_eq!(keys("labels.x==1"), ["c"]);

    // containerd's remote-snapshot protocol (its metadata layer, 1.6): an unpack names its
    // target in `containerd.io/snapshot.ref`; a layer committed with that label on the same
    // parent is answered AlreadyExists (nothing is made), and containerd finds it by a filter.
    let r = HashMap::from([(SNAPSHOT_REF.to_string(), "sha256:chain1".to_string())]);
    let x = s
        .create(Kind::Active, "ns1/5/extract-a", "", r.clone())
        .expect("unpack");
    let (_, upper, _) = overlay(&x);
    std::fs::write(upper.join("layer-file"), b"once\n").expect("write");
    s.commit("ns1/6/sha256:chain1", "ns1/5/extract-a", r.clone())
        .expect("commit");
    assert_eq!(
        code(s.create(Kind::Active, "ns2/7/extract-b", "", r.clone())),
        Code::AlreadyExists
    );
    assert_eq!(code(s.stat("ns2/7/extract-b")), Code::NotFound);
    let lookup = format!(r#"labels."{SNAPSHOT_REF}"==sha256:chain1,parent=="""#);
    assert_eq!(keys(&lookup), ["ns1/6/sha256:chain1"]);
    // On another parent the same name is another layer: unpacked.
    s.create(Kind::Active, "ns2/8/extract-c", "c", r.clone())
        .expect("unpack on another parent");
    s.remove("ns2/8/extract-c").expect("remove");
    s.remove("ns1/6/sha256:chain1").expect("remove");

    // One snapshotter per state root; mount points never inside it.
    assert_eq!(
        code(Snapshotter::open(&state, &dir.path().join("m2")).map(drop)),
        Code::FailedPrecondition
    );
    let other = dir.path().join("other");
    assert_eq!(
        code(Snapshotter::open(&other, &other.join("mounts")).map(drop)),
        Code::InvalidArgument
    );

    for k in ["v", "a2", "c"] {
        s.remove(k).expect("remove");
    }
    assert!(s.list(&[]).expect("list").is_empty());
    let left: Vec<_> = std::fs::read_dir(&mounts)
        .expect("mounts")
        .flatten()
        .collect();
    assert!(left.is_empty(), "{left:?}");
    drop(s);
    let base = dir.path().to_string_lossy().into_owned();
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    assert!(!mountinfo.contains(&base), "{mountinfo}");
}

/// The directories of an extraction snapshot's overlay mount: (lower, upper, work).
fn overlay(m: &SnapshotMount) -> (PathBuf, PathBuf, PathBuf) {
    match m {
        SnapshotMount::Overlay { lower, upper, work } => {
            (lower.clone(), upper.clone(), work.clone())
        }
        SnapshotMount::Bind(b) => panic!("an overlay mount expected, not {b:?}"),
    }
}

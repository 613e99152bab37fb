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
    std::fs::set_permissions(upper.join("keep"), std::fs::Permissions::from_mode(0o710))
        .expect("chmod");
    rustix::fs::chown(
        upper.join("keep"),
        Some(rustix::fs::Uid::from_raw(1000)),
        Some(rustix::fs::Gid::from_raw(1000)),
    )
    .expect("chown");
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
    std::fs::set_permissions(upper.join("keep"), std::fs::Permissions::from_mode(0o710))
        .expect("chmod");
    rustix::fs::chown(
        upper.join("keep"),
        Some(rustix::fs::Uid::from_raw(1000)),
        Some(rustix::fs::Gid::from_raw(1000)),
    )
    .expect("chown");
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

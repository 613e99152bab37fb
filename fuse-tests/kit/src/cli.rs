//! Running the `strata` binary: plain, with a deadline, and the [`Root`] fixture (a state
//! root with the sample image that removes its containers and networks on drop).

use std::ffi::OsStr;
use std::io::{Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::Value;

use crate::paths::{sample_image, strata_bin};

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

/// Output of a strata run.
#[derive(Debug)]
pub struct Out {
    pub code: i32,
    pub out: String,
    pub err: String,
}

/// Runs strata with a deadline (and optional stdin) (the CLI is killed by PID when it passes).
pub fn strata_io(root: &Path, args: &[&str], stdin: Option<&[u8]>, deadline: Duration) -> Out {
    let mut child = Command::new(strata_bin())
        .arg("--root")
        .arg(root)
        .args(args)
        .env("RUST_LOG", "strata=warn")
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

/// Runs a command; its stdout, or an error with its stderr.
pub fn run(cmd: &mut Command) -> anyhow::Result<String> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A state root with the sample image loaded, for tests that run containers. Every command
/// runs with a deadline (default 30 s: a hung command fails the test instead of hanging it).
/// On drop, even when the test failed: every container is removed (`rm -f -v`), a shim still
/// alive after that is killed by PID, and user networks are removed.
pub struct Root {
    dir: tempfile::TempDir,
    deadline: Duration,
}

impl Root {
    pub fn new() -> Self {
        Root::with_deadline(Duration::from_secs(30))
    }

    /// A root whose commands get `deadline` each.
    pub fn with_deadline(deadline: Duration) -> Self {
        let r = Root {
            dir: tempfile::tempdir().expect("tempdir"),
            deadline,
        };
        let oci = sample_image().join("oci");
        r.ok(&["load", oci.to_str().expect("UTF-8 path")]);
        r
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// `strata --root ROOT ARGS…`, bounded by the deadline.
    pub fn run(&self, args: &[&str]) -> Out {
        strata_io(self.path(), args, None, self.deadline)
    }

    /// [`Root::run`]; panics with its output unless it exits 0. Its stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let o = self.run(args);
        assert_eq!(o.code, 0, "strata {args:?}: {o:?}");
        o.out
    }

    /// [`Root::run`]'s exit code.
    pub fn code(&self, args: &[&str]) -> i32 {
        self.run(args).code
    }

    /// `strata inspect C`, the first object.
    pub fn inspect(&self, c: &str) -> Value {
        let v: Value = serde_json::from_str(&self.ok(&["inspect", c])).expect("inspect json");
        v[0].clone()
    }

    /// The full ID of container `c`.
    pub fn id(&self, c: &str) -> String {
        self.inspect(c)["Id"].as_str().expect("an Id").to_string()
    }

    /// Every container's full ID.
    pub fn ids(&self) -> Vec<String> {
        self.ok(&["ps", "-a", "-q", "--no-trunc"])
            .lines()
            .map(String::from)
            .collect()
    }

    /// Pids of a running container: (init, shim).
    pub fn pids(&self, c: &str) -> (i32, i32) {
        let v = self.inspect(c);
        (
            v["State"]["Pid"].as_i64().unwrap_or(0) as i32,
            v["ShimPid"].as_i64().unwrap_or(0) as i32,
        )
    }

    /// The container's address on its network.
    pub fn ip(&self, c: &str) -> String {
        self.inspect(c)["NetworkSettings"]["IPAddress"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// Lines of the host's mount table that mention this root.
    pub fn host_mounts(&self) -> Vec<String> {
        let root = self.path().to_string_lossy().into_owned();
        std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains(&root))
            .map(String::from)
            .collect()
    }
}

impl Drop for Root {
    fn drop(&mut self) {
        let mut shims = Vec::new();
        if let Ok(rd) = std::fs::read_dir(self.path().join("containers")) {
            for e in rd.flatten() {
                let state = std::fs::read(e.path().join("state.json")).unwrap_or_default();
                if let Ok(v) = serde_json::from_slice::<Value>(&state) {
                    shims.push(v["ShimPid"].as_i64().unwrap_or(0) as i32);
                }
            }
        }
        let ids = self.run(&["ps", "-a", "-q", "--no-trunc"]).out;
        for id in ids.lines() {
            let _ = self.run(&["rm", "-f", "-v", id]);
        }
        // Last resort: shims this test started that are somehow still there.
        for pid in shims {
            if pid > 0 && strata::sys::process_alive(pid) {
                crate::mounts::kill9(pid);
            }
        }
        let nets = self.run(&["network", "ls", "-q"]).out;
        for n in nets.lines() {
            if !matches!(n, "bridge" | "host" | "none") {
                let _ = self.run(&["network", "rm", n]);
            }
        }
    }
}

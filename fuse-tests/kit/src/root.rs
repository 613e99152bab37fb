//! A state root for tests that run containers: the sample image loaded, every command bounded
//! by a deadline, and on drop (even when the test failed) every container removed, any shim
//! still alive killed by PID, and user networks removed.

use std::path::Path;
use std::time::Duration;

use serde_json::Value;

use crate::cli::{Out, strata_io};
use crate::paths::sample_image;

/// How long one command of a [`ContainerRoot`] may take unless said otherwise.
pub const DEADLINE: Duration = Duration::from_secs(30);

/// A state root with the sample image loaded, for tests that run containers. Every command
/// runs with a deadline (default [`DEADLINE`]: a hung command fails the test instead of hanging it).
/// On drop, even when the test failed: every container is removed (`rm -f -v`), a shim still
/// alive after that is killed by PID, and user networks are removed.
pub struct ContainerRoot {
    dir: tempfile::TempDir,
    deadline: Duration,
}

impl ContainerRoot {
    /// A fresh root in a temporary directory, with the sample image loaded.
    pub fn new() -> Self {
        ContainerRoot::with_deadline(DEADLINE)
    }

    /// A root whose commands get `deadline` each.
    pub fn with_deadline(deadline: Duration) -> Self {
        ContainerRoot::load(tempfile::tempdir().expect("tempdir"), deadline)
    }

    /// A root in `dir` (which must exist and be empty), with the sample image loaded.
    pub fn in_dir(dir: tempfile::TempDir) -> Self {
        ContainerRoot::load(dir, DEADLINE)
    }

    fn load(dir: tempfile::TempDir, deadline: Duration) -> Self {
        let r = ContainerRoot { dir, deadline };
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

    /// [`ContainerRoot::run`]; panics with its output unless it exits 0. Its stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let o = self.run(args);
        assert_eq!(o.code, 0, "strata {args:?}: {o:?}");
        o.out
    }

    /// [`ContainerRoot::run`]'s exit code.
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

impl Drop for ContainerRoot {
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

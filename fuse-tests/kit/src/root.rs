//! A state root for tests that run containers: the sample image loaded, and on drop every
//! container removed (`rm -f -v`), then `kill -9` of any shim it recorded that is still
//! there, even when the test failed.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use crate::common::{Out, sample_image, strata_io};

pub const DEADLINE: Duration = Duration::from_secs(30);

pub struct ContainerRoot {
    dir: tempfile::TempDir,
}

impl ContainerRoot {
    /// A fresh root in a temporary directory, with the sample image loaded.
    pub fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let r = ContainerRoot { dir };
        r.ok(&[
            "load",
            sample_image().join("oci").to_str().expect("utf-8 path"),
        ]);
        r
    }

    /// A root in `dir` (which must exist and be empty), with the sample image loaded.
    pub fn in_dir(dir: tempfile::TempDir) -> Self {
        let r = ContainerRoot { dir };
        r.ok(&[
            "load",
            sample_image().join("oci").to_str().expect("utf-8 path"),
        ]);
        r
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn run(&self, args: &[&str]) -> Out {
        strata_io(self.path(), args, None, DEADLINE)
    }

    /// Runs strata; panics with its output unless it exits 0.
    pub fn ok(&self, args: &[&str]) -> String {
        let o = self.run(args);
        assert_eq!(o.code, 0, "strata {args:?}: {o:?}");
        o.out
    }

    /// `inspect` of one container or image.
    pub fn inspect(&self, c: &str) -> Value {
        let v: Value = serde_json::from_str(&self.ok(&["inspect", c])).expect("inspect json");
        v[0].clone()
    }
}

impl Default for ContainerRoot {
    fn default() -> Self {
        Self::new()
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
        for pid in shims {
            if pid > 0 && Path::new(&format!("/proc/{pid}")).exists() {
                let _ = Command::new("kill").arg("-9").arg(pid.to_string()).status();
            }
        }
    }
}

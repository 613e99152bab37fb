//! A helper process that net starts and must end later, maybe from another process (pasta,
//! slirp4netns, the holder of the user's network namespace): recorded by PID and start time,
//! so that ending it never hits a process that reused the PID.

use std::path::Path;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tracing::warn;

/// How long ending a helper may wait for it to be gone (its ports free, its namespace down).
const GONE_WITHIN: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub(super) struct Helper {
    pub(super) pid: i32,
    pub(super) start: u64,
}

impl Helper {
    /// The process `pid`, as it is now.
    pub(super) fn of(pid: i32) -> Helper {
        Helper {
            pid,
            start: crate::sys::process_start_time(pid).unwrap_or(0),
        }
    }

    pub(super) fn runs(&self) -> bool {
        crate::sys::process_runs(self.pid, self.start)
    }

    /// SIGTERM, then waits (bounded) until it runs no more: not our child (it forked away or
    /// we are another process), so a zombie counts as gone, whenever its parent reaps it.
    pub(super) fn end(&self) {
        if !self.runs() {
            return;
        }
        if let Some(p) = rustix::process::Pid::from_raw(self.pid)
            && let Err(e) = rustix::process::kill_process(p, rustix::process::Signal::TERM)
        {
            warn!(pid = self.pid, error = %e, "ending a network helper");
        }
        let until = Instant::now() + GONE_WITHIN;
        while self.runs() && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// Records it at `path`.
    pub(super) fn save(&self, path: &Path) -> std::io::Result<()> {
        std::fs::write(path, serde_json::to_vec(self).expect("serializable"))
    }

    /// Ends the helper recorded at `path` (if any) and removes the record.
    pub(super) fn end_recorded(path: &Path) {
        if let Some(h) = std::fs::read(path)
            .ok()
            .and_then(|t| serde_json::from_slice::<Helper>(&t).ok())
        {
            h.end();
        }
        let _ = std::fs::remove_file(path);
    }
}

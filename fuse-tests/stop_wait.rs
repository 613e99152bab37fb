//! `stop` and `wait` on a container whose PID 1 ignores SIGTERM: `stop` says on a terminal
//! what it waits for and how long (and nothing when stderr is no terminal); `wait` ends on
//! Ctrl-C and leaves the container alone. Runs a real container: hold the host lock.

use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use strata_testkit::*;

const IMAGE: &str = "strata-sample:latest";
const DEADLINE: Duration = Duration::from_secs(30);

/// A state root with the sample image; removes its containers on drop, even on failure.
struct Root(tempfile::TempDir);

impl Drop for Root {
    fn drop(&mut self) {
        let ids = strata_io(self.0.path(), &["ps", "-a", "-q"], None, DEADLINE).out;
        for id in ids.lines() {
            let _ = strata_io(self.0.path(), &["rm", "-f", id], None, DEADLINE);
        }
    }
}

fn ok(root: &Path, args: &[&str]) -> String {
    let o = strata_io(root, args, None, DEADLINE);
    assert_eq!(o.code, 0, "strata {args:?}: {o:?}");
    o.out
}

fn running(root: &Path, name: &str) -> bool {
    let v: serde_json::Value = serde_json::from_str(&ok(root, &["inspect", name])).unwrap();
    v[0]["State"]["Running"] == true
}

/// A pseudo-terminal: (master, slave).
fn pty() -> (std::fs::File, std::fs::File) {
    use rustix::pty::{OpenptFlags, grantpt, openpt, ptsname, unlockpt};
    let master = openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY).unwrap();
    grantpt(&master).unwrap();
    unlockpt(&master).unwrap();
    let name = ptsname(&master, Vec::new()).unwrap();
    let slave = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(name.to_str().unwrap())
        .unwrap();
    (std::fs::File::from(master), slave)
}

#[test]
fn stop_shows_its_wait_on_a_terminal_and_wait_ends_on_ctrl_c() {
    let root = Root(tempfile::tempdir().unwrap());
    let r = root.0.path();
    ok(r, &["load", sample_image().join("oci").to_str().unwrap()]);
    // `sleep` as PID 1 has no SIGTERM handler: the kernel drops the signal.
    ok(
        r,
        &[
            "run",
            "-d",
            "--network",
            "none",
            "--name",
            "stubborn",
            IMAGE,
            "sleep",
            "120",
        ],
    );

    // Ctrl-C ends `wait` at once, and only `wait`. As from a terminal: SIGINT in its default
    // disposition (a test run started in the background of a shell inherits it ignored).
    let mut wait = Command::new(strata_bin());
    wait.arg("--root")
        .arg(r)
        .args(["wait", "stubborn"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // SAFETY: between fork and exec the child only resets one signal's disposition, an
    // async-signal-safe call on no shared state.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut wait, || {
            libc::signal(libc::SIGINT, libc::SIG_DFL);
            Ok(())
        });
    }
    let mut wait = wait.spawn().unwrap();
    std::thread::sleep(Duration::from_millis(500));
    assert!(wait.try_wait().unwrap().is_none(), "wait returned early");
    let pid = rustix::process::Pid::from_raw(wait.id() as i32).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::INT).unwrap();
    let end = Instant::now() + Duration::from_secs(3);
    let status = loop {
        if let Some(s) = wait.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > end {
            let _ = wait.kill();
            panic!("wait ignored Ctrl-C");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(!status.success(), "{status:?}");
    let mut out = String::new();
    wait.stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    assert_eq!(out, "", "wait printed an exit code it never saw");
    assert!(
        running(r, "stubborn"),
        "Ctrl-C on wait stopped the container"
    );

    // stop with stderr on a terminal: a progress line with the signal and the time left.
    let (mut master, slave) = pty();
    let mut stop = Command::new(strata_bin())
        .arg("--root")
        .arg(r)
        .args(["stop", "-t", "2", "stubborn"])
        .stdout(Stdio::piped())
        .stderr(Stdio::from(slave))
        .spawn()
        .unwrap();
    let reader = std::thread::spawn(move || {
        let mut seen = Vec::new();
        let mut buf = [0u8; 4096];
        // Ends with EIO once the last slave descriptor (strata's stderr) is closed.
        while let Ok(n) = master.read(&mut buf) {
            if n == 0 {
                break;
            }
            seen.extend_from_slice(&buf[..n]);
        }
        String::from_utf8_lossy(&seen).into_owned()
    });
    let t0 = Instant::now();
    let status = stop.wait().unwrap();
    assert!(status.success(), "{status:?}");
    assert!(t0.elapsed() >= Duration::from_secs(2), "stop did not wait");
    let mut out = String::new();
    stop.stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    assert_eq!(out, "stubborn\n");
    let tty = reader.join().unwrap();
    assert!(
        tty.contains("Waiting up to 2 s for stubborn to stop after SIGTERM: SIGKILL in"),
        "{tty:?}"
    );
    assert!(
        tty.ends_with("\r\x1b[K"),
        "the progress line is not erased: {tty:?}"
    );
    assert!(!running(r, "stubborn"));

    // Not on a terminal: no progress line.
    ok(r, &["start", "stubborn"]);
    let o = strata_io(r, &["stop", "-t", "1", "stubborn"], None, DEADLINE);
    assert_eq!(
        (o.code, o.out.as_str(), o.err.as_str()),
        (0, "stubborn\n", "")
    );
}

//! Running the `strata` binary: plain, and with a deadline (and extra environment).

use std::ffi::OsStr;
use std::io::{Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::paths::strata_bin;

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
    strata_io_env(root, args, stdin, deadline, &[])
}

/// [`strata_io`] with extra environment variables (`RUST_LOG` defaults to `strata=warn`).
pub fn strata_io_env(
    root: &Path,
    args: &[&str],
    stdin: Option<&[u8]>,
    deadline: Duration,
    env: &[(&str, &str)],
) -> Out {
    let mut cmd = Command::new(strata_bin());
    cmd.arg("--root")
        .arg(root)
        .args(args)
        .env("RUST_LOG", "strata=warn")
        .envs(env.iter().copied());
    output_within(cmd, stdin, deadline)
}

/// Runs `cmd` with its output captured (and `stdin` fed to it, else /dev/null); kills it (by
/// PID) when `deadline` passes.
pub fn output_within(mut cmd: Command, stdin: Option<&[u8]>, deadline: Duration) -> Out {
    let mut child = cmd
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
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
        if let Some(st) = child.try_wait().expect("wait") {
            break st;
        }
        if Instant::now() > end {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{cmd:?} did not finish within {deadline:?}");
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let (mut out, mut err) = (String::new(), String::new());
    for _ in 0..2 {
        // Bounded: the shim of an attached run (or anything left behind) may hold the
        // pipes a moment longer.
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

//! The commands net runs (`ip`, `iptables`, `iptables-save`, `nsenter`), behind one seam in
//! the spirit of youki's `Syscall` trait. On the host every command is a process; a test
//! installs its own [`Runner`] for its thread (see [`with_runner`]) that records each command
//! line and answers from a script, so what net plans (which rules and links, in which order,
//! removed how many times) has unit tests that need no root and touch no host.
//!
//! Every command's failure is a [`NetError::Cmd`] with the command line and its stderr.

use std::cell::RefCell;
use std::process::{Command, Stdio};
use std::rc::Rc;

use super::NetError;

/// Runs net's commands.
pub trait Runner {
    /// Runs `prog args`: its stdout, or its stderr as the error.
    fn run(&self, prog: &str, args: &[&str]) -> Result<String, NetError>;
    /// Runs `prog args` for its exit status alone (a check such as `iptables -C`).
    fn ok(&self, prog: &str, args: &[&str]) -> bool;
}

/// The host: every command is a process.
pub struct Host;

/// Where `prog` is (`paths::system_program`: an ordinary user's PATH on Debian has no
/// /usr/sbin, where iptables is); a name not found there is left to PATH.
fn locate(prog: &str) -> String {
    if prog.contains('/') {
        return prog.to_string();
    }
    crate::paths::system_program(prog)
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| prog.to_string())
}

/// `prog args`, in the user's network namespace without root (see `net::rootless`).
fn command(prog: &str, args: &[&str]) -> Command {
    let prog = locate(prog);
    let prog = prog.as_str();
    let prefix = super::rootless::command_prefix();
    match prefix.split_first() {
        Some((first, rest)) => {
            let mut c = Command::new(first);
            c.args(rest).arg(prog).args(args);
            c
        }
        None => {
            let mut c = Command::new(prog);
            c.args(args);
            c
        }
    }
}

impl Runner for Host {
    fn run(&self, prog: &str, args: &[&str]) -> Result<String, NetError> {
        let out = command(prog, args).output().map_err(|e| NetError::Cmd {
            cmd: format!("{prog} {}", args.join(" ")),
            msg: e.to_string(),
        })?;
        if !out.status.success() {
            return Err(NetError::Cmd {
                cmd: format!("{prog} {}", args.join(" ")),
                msg: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            });
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    fn ok(&self, prog: &str, args: &[&str]) -> bool {
        command(prog, args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    }
}

thread_local! {
    /// The runner this thread's net calls use instead of [`Host`], if any.
    static RUNNER: RefCell<Option<Rc<dyn Runner>>> = const { RefCell::new(None) };
}

/// Runs `f` with every command that net runs on this thread going to `runner` (the one before
/// is restored after, also when `f` panics).
pub fn with_runner<T>(runner: Rc<dyn Runner>, f: impl FnOnce() -> T) -> T {
    struct Restore(Option<Rc<dyn Runner>>);
    impl Drop for Restore {
        fn drop(&mut self) {
            let before = self.0.take();
            RUNNER.with(|r| *r.borrow_mut() = before);
        }
    }
    let _restore = Restore(RUNNER.with(|r| r.borrow_mut().replace(runner)));
    f()
}

fn current() -> Option<Rc<dyn Runner>> {
    RUNNER.with(|r| r.borrow().clone())
}

/// Runs a command; its stdout, or its stderr as the error.
pub(crate) fn run(prog: &str, args: &[&str]) -> Result<String, NetError> {
    match current() {
        Some(r) => r.run(prog, args),
        None => Host.run(prog, args),
    }
}

/// Whether a command exits 0 (its output discarded).
pub(crate) fn ok(prog: &str, args: &[&str]) -> bool {
    match current() {
        Some(r) => r.ok(prog, args),
        None => Host.ok(prog, args),
    }
}

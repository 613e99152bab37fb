//! Running strata as an ordinary user, from a test that runs as root.
//!
//! [`RootlessUser::get`] makes (once, idempotently, under a host-wide lock) the unprivileged
//! user `strata-rootless` with a home and subordinate id ranges in `/etc/subuid` and
//! `/etc/subgid`, and makes `/dev/fuse` and `/dev/net/tun` usable by all users. [`UserSession`] is a fresh HOME
//! for one test: commands run as that user (`setpriv`, no capabilities left) with HOME and
//! the XDG variables set, and on drop the user's containers are removed, every mount under
//! that HOME is detached and the HOME removed, also when the test failed.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use crate::{Out, output_within, strata_bin};

/// The unprivileged user the rootless tests run as.
pub const USER: &str = "strata-rootless";
/// A second unprivileged user without subordinate ids (a system user: `useradd` gives those
/// none), for the fallback that maps the user alone.
pub const USER_WITHOUT_SUBIDS: &str = "strata-nosubids";
/// Every command a test runs as the user must end within this.
pub const USER_DEADLINE: Duration = Duration::from_secs(60);
/// The PATH of the user's commands.
const PATH: &str = "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin";

#[derive(Debug, Clone, Copy)]
pub struct RootlessUser {
    pub name: &'static str,
    pub uid: u32,
    pub gid: u32,
}

fn sh(cmd: &mut Command) -> Result<String, String> {
    let out = cmd.output().map_err(|e| format!("{cmd:?}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "{cmd:?}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// The first free start of a 65536-id range above every range in `text` (`/etc/subuid`
/// format) and above 100000.
fn free_range(text: &str) -> u64 {
    text.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            Some(f.get(1)?.parse::<u64>().ok()? + f.get(2)?.parse::<u64>().ok()?)
        })
        .fold(100_000, u64::max)
}

/// Adds `USER:START:65536` to `file` unless the user has a range there already.
fn ensure_subids(file: &str) -> Result<(), String> {
    let text = std::fs::read_to_string(file).unwrap_or_default();
    if text.lines().any(|l| l.starts_with(&format!("{USER}:"))) {
        return Ok(());
    }
    let line = format!("{USER}:{}:65536\n", free_range(&text));
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(file)
        .map_err(|e| format!("{file}: {e}"))?;
    std::io::Write::write_all(&mut f, line.as_bytes()).map_err(|e| format!("{file}: {e}"))
}

impl RootlessUser {
    /// The test user, created when missing (the first call in this process does the work).
    pub fn get() -> RootlessUser {
        static USER_ONCE: OnceLock<Result<RootlessUser, String>> = OnceLock::new();
        USER_ONCE
            .get_or_init(Self::set_up)
            .clone()
            .unwrap_or_else(|e| panic!("setting up the user {USER}: {e}"))
    }

    /// The second test user, [`USER_WITHOUT_SUBIDS`], created when missing; the devices are
    /// opened up as for [`RootlessUser::get`].
    pub fn without_subids() -> RootlessUser {
        static ONCE: OnceLock<Result<RootlessUser, String>> = OnceLock::new();
        ONCE.get_or_init(|| {
            Self::set_up()?;
            let _lock = strata::sys::lock_file(Path::new("/tmp/strata-rootless-user.lock"))
                .map_err(|e| format!("locking: {e}"))?;
            let name = USER_WITHOUT_SUBIDS;
            if sh(Command::new("id").args(["-u", name])).is_err() {
                sh(Command::new("useradd").args([
                    "--system",
                    "--create-home",
                    "--shell",
                    "/bin/sh",
                    "--comment",
                    "strata rootless tests, no subordinate ids",
                    name,
                ]))?;
            }
            for file in ["/etc/subuid", "/etc/subgid"] {
                let text = std::fs::read_to_string(file).unwrap_or_default();
                if text.lines().any(|l| l.starts_with(&format!("{name}:"))) {
                    return Err(format!("{file} gives {name} subordinate ids"));
                }
            }
            Self::lookup(name)
        })
        .clone()
        .unwrap_or_else(|e| panic!("setting up the user {USER_WITHOUT_SUBIDS}: {e}"))
    }

    fn lookup(name: &'static str) -> Result<RootlessUser, String> {
        let num = |flag: &str| -> Result<u32, String> {
            sh(Command::new("id").args([flag, name]))?
                .trim()
                .parse()
                .map_err(|e| format!("id {flag} {name}: {e}"))
        };
        Ok(RootlessUser {
            name,
            uid: num("-u")?,
            gid: num("-g")?,
        })
    }

    fn set_up() -> Result<RootlessUser, String> {
        // Several test processes may get here at once.
        let _lock = strata::sys::lock_file(Path::new("/tmp/strata-rootless-user.lock"))
            .map_err(|e| format!("locking: {e}"))?;
        if sh(Command::new("id").args(["-u", USER])).is_err() {
            sh(Command::new("useradd").args([
                "--create-home",
                "--shell",
                "/bin/sh",
                "--comment",
                "strata rootless tests",
                USER,
            ]))?;
        }
        // Subordinate ranges: useradd adds them where login.defs says so; else we do.
        ensure_subids("/etc/subuid")?;
        ensure_subids("/etc/subgid")?;
        // Desktop distributions ship /dev/fuse 0666; minimal systems and CI machines 0600,
        // which leaves FUSE to root. Give it the desktop mode (only widening 0600, nothing
        // else), as a user's machine has it.
        // The same for /dev/net/tun, which pasta (rootless networking) opens.
        for dev in ["/dev/fuse", "/dev/net/tun"] {
            let meta = std::fs::metadata(dev).map_err(|e| format!("{dev}: {e}"))?;
            if meta.mode() & 0o777 == 0o600 {
                std::fs::set_permissions(dev, std::fs::Permissions::from_mode(0o666))
                    .map_err(|e| format!("chmod 0666 {dev}: {e}"))?;
            }
        }
        Self::lookup(USER)
    }
}

/// A fresh HOME of the test user for one test, and commands run as that user in it.
pub struct UserSession {
    pub user: RootlessUser,
    home: tempfile::TempDir,
    /// The strata binary the user runs (the build's own, or a copy the user can reach).
    bin: PathBuf,
}

impl UserSession {
    pub fn new() -> UserSession {
        Self::new_as(RootlessUser::get())
    }

    /// A session of another test user (e.g. [`RootlessUser::without_subids`]).
    pub fn new_as(user: RootlessUser) -> UserSession {
        let home = tempfile::Builder::new()
            .prefix("strata-rootless-home-")
            .tempdir_in("/tmp")
            .expect("tempdir for HOME");
        chown(home.path(), user);
        std::fs::set_permissions(home.path(), std::fs::Permissions::from_mode(0o700))
            .expect("chmod HOME");
        let mut s = UserSession {
            user,
            home,
            bin: strata_bin(),
        };
        s.mkdir("run");
        std::fs::set_permissions(s.path("run"), std::fs::Permissions::from_mode(0o700))
            .expect("chmod run");
        // The build's binary sits under the checkout, whose directories the user may not be
        // able to traverse: then the user gets a copy in its HOME.
        let reach = s.sh_env(&format!("test -x '{}'", s.bin.display()), &[]);
        if reach.code != 0 {
            let copy = s.path("bin/strata");
            s.mkdir("bin");
            std::fs::copy(&s.bin, &copy).expect("copy the strata binary");
            std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o755))
                .expect("chmod the binary copy");
            s.bin = copy;
        }
        s
    }

    /// The strata binary the user runs (the build's, or its copy in HOME).
    pub fn bin(&self) -> &Path {
        &self.bin
    }

    /// The HOME directory.
    pub fn home(&self) -> &Path {
        self.home.path()
    }

    /// `HOME/rel`.
    pub fn path(&self, rel: &str) -> PathBuf {
        self.home.path().join(rel)
    }

    /// The user's default state root (`~/.local/share/strata`).
    pub fn state_root(&self) -> PathBuf {
        self.path(".local/share/strata")
    }

    /// Creates `HOME/rel` (and parents) owned by the user.
    pub fn mkdir(&self, rel: &str) -> PathBuf {
        let p = self.path(rel);
        let mut made = Vec::new();
        let mut cur = p.clone();
        while !cur.exists() {
            made.push(cur.clone());
            if !cur.pop() {
                break;
            }
        }
        std::fs::create_dir_all(&p).expect("mkdir in HOME");
        for d in made {
            chown(&d, self.user);
        }
        p
    }

    /// Copies `src` to `HOME/rel`, owned by the user.
    pub fn give(&self, src: &Path, rel: &str) -> PathBuf {
        let p = self.path(rel);
        std::fs::copy(src, &p).expect("copy into HOME");
        chown(&p, self.user);
        p
    }

    /// The environment of the user's commands: HOME, a private XDG_RUNTIME_DIR, PATH.
    fn base_env(&self) -> Vec<(String, String)> {
        vec![
            ("HOME".into(), self.home().display().to_string()),
            (
                "XDG_RUNTIME_DIR".into(),
                self.path("run").display().to_string(),
            ),
            ("PATH".into(), PATH.into()),
            ("USER".into(), self.user.name.into()),
            ("LC_ALL".into(), "C".into()),
            ("RUST_LOG".into(), "strata=warn".into()),
        ]
    }

    fn command(&self, env: &[(&str, &str)]) -> Command {
        let mut c = Command::new("setpriv");
        c.arg(format!("--reuid={}", self.user.uid))
            .arg(format!("--regid={}", self.user.gid))
            .arg("--init-groups")
            .arg("--inh-caps=-all")
            .arg("--")
            .arg("env")
            .arg("-i");
        let mut vars = self.base_env();
        for (k, v) in env {
            vars.retain(|(n, _)| n != k);
            // An empty value unsets it.
            if !v.is_empty() {
                vars.push((k.to_string(), v.to_string()));
            }
        }
        for (k, v) in vars {
            c.arg(format!("{k}={v}"));
        }
        c.current_dir(self.home());
        c
    }

    /// Runs `strata ARGS` as the user (no `--root`: the user's defaults) with extra
    /// environment (`("VAR", "")` unsets one).
    pub fn strata_env(&self, args: &[&str], env: &[(&str, &str)]) -> Out {
        let mut c = self.command(env);
        c.arg(&self.bin).args(args);
        output_within(c, None, USER_DEADLINE)
    }

    pub fn strata(&self, args: &[&str]) -> Out {
        self.strata_env(args, &[])
    }

    /// `strata ARGS` as the user; panics with its output unless it exits 0.
    pub fn strata_ok(&self, args: &[&str]) -> String {
        let o = self.strata(args);
        assert_eq!(o.code, 0, "strata {args:?} as {}: {o:?}", self.user.name);
        o.out
    }

    /// A shell command line as the user (`sh -c`).
    pub fn sh_env(&self, script: &str, env: &[(&str, &str)]) -> Out {
        let mut c = self.command(env);
        c.args(["sh", "-c", script]);
        output_within(c, None, USER_DEADLINE)
    }

    pub fn sh(&self, script: &str) -> Out {
        self.sh_env(script, &[])
    }

    /// The mount points under this HOME, from the host's mount table (deepest first).
    pub fn mounts(&self) -> Vec<PathBuf> {
        let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let mut v: Vec<PathBuf> = info
            .lines()
            .filter_map(|l| l.split(' ').nth(4))
            .map(|m| PathBuf::from(m.replace("\\040", " ")))
            .filter(|m| m.starts_with(self.home()))
            .collect();
        v.sort_by_key(|p| std::cmp::Reverse(p.as_os_str().len()));
        v
    }
}

impl Default for UserSession {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for UserSession {
    fn drop(&mut self) {
        // The user's containers first (their shims and pasta processes), as the user would.
        if self.state_root().join("containers").is_dir() {
            let ids = self.strata(&["ps", "-a", "-q"]);
            let ids: Vec<&str> = ids.out.split_whitespace().collect();
            if !ids.is_empty() {
                let mut args = vec!["rm", "-f"];
                args.extend(ids);
                let _ = self.strata(&args);
            }
        }
        // Root detaches whatever the test left mounted (the daemons then see their session
        // end and exit); bounded.
        for _ in 0..50 {
            let left = self.mounts();
            if left.is_empty() {
                break;
            }
            for m in left {
                let _ = strata::sys::unmount_lazy(&m);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        // A daemon may still be writing its last record: retry the removal a little.
        for _ in 0..50 {
            if std::fs::remove_dir_all(self.home()).is_ok() || !self.home().exists() {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

fn chown(p: &Path, user: RootlessUser) {
    std::os::unix::fs::chown(p, Some(user.uid), Some(user.gid)).expect("chown to the test user");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_ranges_start_above_every_range() {
        assert_eq!(free_range(""), 100_000);
        assert_eq!(free_range("a:100000:65536\nb:165536:65536\n"), 231_072);
        assert_eq!(free_range("junk\nc:5:10\n"), 100_000);
    }
}

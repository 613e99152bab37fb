//! The user namespace of a container started without root: which ids inside map to which
//! ids outside, and writing those maps for the container's first process.
//!
//! Root inside is the user outside; ids 1… inside are the user's subordinate ranges from
//! `/etc/subuid` and `/etc/subgid`, written by the setuid helpers `newuidmap`/`newgidmap`
//! (Debian's `uidmap`), so files of the image owned by other users keep distinct owners.
//! Without a subordinate range (or without the helpers) only the user is mapped, as root,
//! and `setgroups` is denied in the namespace, as the kernel requires for that. Owns no
//! namespace itself and never writes outside `/proc/PID/{uid_map,gid_map,setgroups}`.

use std::path::Path;
use std::process::Command;

use tracing::{debug, info_span};

use super::RuntimeError;

/// One line of an id map: `count` ids from `inside` map to ids from `outside`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdRange {
    pub inside: u32,
    pub outside: u32,
    pub count: u32,
}

/// The uid and gid maps of a container's user namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdMaps {
    pub uids: Vec<IdRange>,
    pub gids: Vec<IdRange>,
}

/// Subordinate ranges (`start`, `count`) of the user `name` (or its uid written as a
/// number) in the text of `/etc/subuid` or `/etc/subgid`, in file order; malformed lines are
/// skipped, as shadow's own tools do.
pub fn subordinate_ranges(text: &str, name: Option<&str>, id: u32) -> Vec<(u32, u32)> {
    let id = id.to_string();
    text.lines()
        .filter_map(|line| {
            let mut f = line.trim().split(':');
            let (who, start, count) = (f.next()?, f.next()?, f.next()?);
            if f.next().is_some() || (Some(who) != name && who != id) {
                return None;
            }
            let start: u32 = start.parse().ok()?;
            let count: u32 = count.parse().ok()?;
            (count > 0 && start.checked_add(count).is_some()).then_some((start, count))
        })
        .collect()
}

/// Root inside as `own` outside, then the subordinate ranges one after another from 1.
fn map_with(own: u32, ranges: &[(u32, u32)]) -> Vec<IdRange> {
    let mut out = vec![IdRange {
        inside: 0,
        outside: own,
        count: 1,
    }];
    let mut next: u32 = 1;
    for &(start, count) in ranges {
        // Never past the 32-bit id space inside, nor overlapping the user's own id.
        let Some(end) = next.checked_add(count) else {
            break;
        };
        if (start..start.saturating_add(count)).contains(&own) {
            continue;
        }
        out.push(IdRange {
            inside: next,
            outside: start,
            count,
        });
        next = end;
    }
    out
}

impl IdMaps {
    /// The maps for host user `uid`/`gid`, from the texts of the host's passwd, subuid and
    /// subgid files (missing files are empty texts).
    pub fn plan(uid: u32, gid: u32, passwd: &str, subuid: &str, subgid: &str) -> IdMaps {
        let name = super::user::name_of(uid, passwd);
        let us = subordinate_ranges(subuid, name.as_deref(), uid);
        let gs = subordinate_ranges(subgid, name.as_deref(), uid);
        IdMaps {
            uids: map_with(uid, &us),
            gids: map_with(gid, &gs),
        }
    }

    /// The maps of the calling user, from the host's files.
    pub fn of_current_user() -> IdMaps {
        let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
        IdMaps::plan(
            rustix::process::getuid().as_raw(),
            rustix::process::getgid().as_raw(),
            &read("/etc/passwd"),
            &read("/etc/subuid"),
            &read("/etc/subgid"),
        )
    }

    /// Whether ids other than root inside are mapped (subordinate ranges for both).
    pub fn subordinate(&self) -> bool {
        self.uids.len() > 1 && self.gids.len() > 1
    }

    /// Whether [`IdMaps::write`] maps the subordinate ranges (they exist and the helpers
    /// that may write them are installed), rather than the user alone.
    pub fn maps_subordinate(&self) -> bool {
        self.subordinate() && helper("newuidmap").is_some() && helper("newgidmap").is_some()
    }

    /// Writes the maps of process `pid` (a child of ours, in its new user namespace, waiting):
    /// through `newuidmap`/`newgidmap` with subordinate ranges, else the user alone as root.
    pub fn write(&self, pid: i32) -> Result<(), RuntimeError> {
        let _s = info_span!("idmap", pid, subordinate = self.subordinate()).entered();
        if self.maps_subordinate() {
            run_helper("newgidmap", pid, &self.gids)?;
            return run_helper("newuidmap", pid, &self.uids);
        }
        let own = |m: &[IdRange]| m.first().copied().map(|r| vec![r]).unwrap_or_default();
        let proc_write = |file: &str, text: String| -> Result<(), RuntimeError> {
            let path = format!("/proc/{pid}/{file}");
            std::fs::write(&path, text)
                .map_err(|e| RuntimeError::UserNamespace(format!("writing {path}: {e}")))
        };
        // An unprivileged writer may map only its own ids, and a gid map only once
        // setgroups is denied.
        proc_write("setgroups", "deny".into())?;
        proc_write("gid_map", lines(&own(&self.gids)))?;
        proc_write("uid_map", lines(&own(&self.uids)))
    }
}

/// The file in a state root that says the fallback notice was given.
const NOTICE_GIVEN: &str = "userns-fallback-noticed";

/// Once per state root, for a user whose containers get only their own id mapped: the
/// sentence that says so and how to get the rest (`None` when all is well or it was said).
pub fn fallback_notice(state_root: &Path) -> Option<String> {
    if crate::paths::Mode::current() != crate::paths::Mode::Rootless {
        return None;
    }
    let maps = IdMaps::of_current_user();
    if maps.maps_subordinate() || state_root.join(NOTICE_GIVEN).exists() {
        return None;
    }
    let _ = std::fs::write(state_root.join(NOTICE_GIVEN), b"");
    let why = if maps.subordinate() {
        "newuidmap/newgidmap are not installed (Debian package uidmap)"
    } else {
        "you have no subordinate ids in /etc/subuid and /etc/subgid"
    };
    Some(format!(
        "containers map only your own user (as root) because {why}: files of the image owned \
         by other users show as nobody and processes cannot switch to other users (this is \
         said once)"
    ))
}

fn lines(m: &[IdRange]) -> String {
    m.iter()
        .map(|r| format!("{} {} {}\n", r.inside, r.outside, r.count))
        .collect()
}

/// The setuid helper `name` where Debian's `uidmap` installs it.
fn helper(name: &str) -> Option<std::path::PathBuf> {
    crate::paths::system_program(name)
}

fn run_helper(name: &str, pid: i32, map: &[IdRange]) -> Result<(), RuntimeError> {
    let Some(path) = helper(name) else {
        return Err(RuntimeError::UserNamespace(format!(
            "{name} is not installed (Debian package uidmap)"
        )));
    };
    let mut cmd = Command::new(path);
    cmd.arg(pid.to_string());
    for r in map {
        cmd.args([r.inside, r.outside, r.count].map(|n| n.to_string()));
    }
    debug!(?cmd, "mapping ids");
    let out = cmd
        .output()
        .map_err(|e| RuntimeError::UserNamespace(format!("running {name}: {e}")))?;
    if !out.status.success() {
        return Err(RuntimeError::UserNamespace(format!(
            "{name} {pid} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "root:x:0:0::/root:/bin/sh\nalice:x:1000:1000::/home/alice:/bin/sh\n";

    #[test]
    fn ranges_by_name_or_number_in_file_order() {
        let text =
            "bob:100000:65536\nalice:165536:65536\n# junk\n1000:300000:10\nalice:x:5\nalice:1:0\n";
        assert_eq!(
            subordinate_ranges(text, Some("alice"), 1000),
            vec![(165536, 65536), (300000, 10)]
        );
        assert!(subordinate_ranges(text, Some("carol"), 1001).is_empty());
    }

    #[test]
    fn root_is_the_user_and_the_ranges_follow() {
        let m = IdMaps::plan(
            1000,
            1000,
            PASSWD,
            "alice:165536:65536\n",
            "alice:165536:65536\n",
        );
        assert!(m.subordinate());
        assert_eq!(
            m.uids,
            vec![
                IdRange {
                    inside: 0,
                    outside: 1000,
                    count: 1
                },
                IdRange {
                    inside: 1,
                    outside: 165536,
                    count: 65536
                },
            ]
        );
        assert_eq!(lines(&m.uids), "0 1000 1\n1 165536 65536\n");
    }

    #[test]
    fn without_ranges_only_the_user_is_mapped() {
        let m = IdMaps::plan(1000, 1000, PASSWD, "", "alice:165536:65536\n");
        assert!(!m.subordinate());
        assert_eq!(m.uids.len(), 1);
        // A range holding the user's own id would map it twice: skipped.
        let m = IdMaps::plan(1000, 1000, PASSWD, "alice:900:200\n", "");
        assert_eq!(m.uids.len(), 1);
    }
}

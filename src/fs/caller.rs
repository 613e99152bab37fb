//! The process behind a FUSE request, as `/proc/PID/status` tells: whether it holds CAP_FSETID
//! and which groups it is in. Only the rare paths that need it read it (a change to a file with
//! a setuid or setgid bit). A status that cannot be read, or that names other ids than the
//! request (the process is gone, or its PID belongs to another PID namespace), counts as the
//! least privileged answer: no capability, only the request's own group.

use std::path::PathBuf;

/// CAP_FSETID's bit in the capability masks.
const CAP_FSETID: u32 = 4;

/// The process that made a request: its PID and the fsuid/fsgid the request carries.
#[derive(Clone, Copy, Debug)]
pub struct Requester {
    pub pid: u32,
    pub uid: u32,
    pub gid: u32,
}

/// What `/proc/PID/status` says, when it says it about this caller.
#[derive(Debug, Default, PartialEq, Eq)]
struct Status {
    cap_eff: u64,
    groups: Vec<u32>,
}

impl Requester {
    fn status(&self) -> Option<Status> {
        let text =
            std::fs::read_to_string(PathBuf::from(format!("/proc/{}/status", self.pid))).ok()?;
        parse(&text, self.uid, self.gid)
    }

    /// Whether the caller holds CAP_FSETID.
    pub fn can_fsetid(&self) -> bool {
        self.status()
            .is_some_and(|s| s.cap_eff & (1 << CAP_FSETID) != 0)
    }

    /// Whether the caller is in group `gid`.
    pub fn in_group(&self, gid: u32) -> bool {
        self.gid == gid || self.status().is_some_and(|s| s.groups.contains(&gid))
    }
}

/// Reads the status of a process whose fsuid and fsgid are `uid` and `gid`; `None` when they
/// are others (then it is not the caller) or a line is missing.
fn parse(text: &str, uid: u32, gid: u32) -> Option<Status> {
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .map(str::trim)
    };
    // "Uid: real effective saved fs"
    let fs_id = |name: &str| field(name)?.split_whitespace().nth(3)?.parse::<u32>().ok();
    if fs_id("Uid:")? != uid || fs_id("Gid:")? != gid {
        return None;
    }
    let cap_eff = u64::from_str_radix(field("CapEff:")?, 16).ok()?;
    let groups = field("Groups:")?
        .split_whitespace()
        .filter_map(|g| g.parse().ok())
        .collect();
    Some(Status { cap_eff, groups })
}

#[cfg(test)]
mod tests {
    use super::*;

    const STATUS: &str = "Name:\tsh\nUid:\t1000\t1000\t1000\t1000\nGid:\t100\t100\t100\t100\n\
        Groups:\t27 100 1001 \nCapEff:\t0000000000000010\n";

    #[test]
    fn reads_capabilities_and_groups_of_the_caller() {
        let s = parse(STATUS, 1000, 100).unwrap();
        assert_eq!(s.cap_eff, 1 << CAP_FSETID);
        assert_eq!(s.groups, vec![27, 100, 1001]);
    }

    #[test]
    fn another_processes_status_says_nothing() {
        assert_eq!(parse(STATUS, 0, 100), None);
        assert_eq!(parse(STATUS, 1000, 0), None);
        assert_eq!(parse("Uid:\t1000\n", 1000, 100), None);
    }

    #[test]
    fn this_process() {
        let me = Requester {
            pid: std::process::id(),
            uid: rustix::process::geteuid().as_raw(),
            gid: rustix::process::getegid().as_raw(),
        };
        assert!(me.in_group(me.gid));
        // Root in the initial namespace holds every capability; anybody else, not this one.
        if me.uid == 0 {
            assert!(me.can_fsetid());
        }
        let stranger = Requester {
            pid: u32::MAX,
            uid: 0,
            gid: 0,
        };
        assert!(!stranger.can_fsetid() && !stranger.in_group(5));
    }
}

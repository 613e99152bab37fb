//! Which setuid and setgid bits a change drops, by the kernel's own rules (fs/attr.c:
//! `setattr_should_drop_suidgid`, `setattr_should_drop_sgid`). The writable mount asks the kernel
//! to leave them to the file system (`FUSE_HANDLE_KILLPRIV_V2`: the kernel's own check costs a
//! GETATTR per chown), so the view applies them itself:
//! - a write or truncate by a caller without CAP_FSETID, and every chown of a non-directory,
//!   drop setuid;
//! - the same changes drop setgid when the group may execute the file, or when the caller is
//!   neither in the file's group nor holds CAP_FSETID (setgid without group execute is the
//!   mandatory-locking mark, no privilege, and stays for a caller in the group).

/// What the view needs to know of the caller, asked only when the file has a setgid bit
/// without group execute: is the caller in group `gid`, or does it hold CAP_FSETID?
pub type InGroup<'a> = &'a dyn Fn(u32) -> bool;

const SUID: u16 = libc::S_ISUID as u16;
const SGID: u16 = libc::S_ISGID as u16;
const GROUP_EXEC: u16 = libc::S_IXGRP as u16;

/// The bits of `perm` (a file owned by group `gid`) that the change drops.
pub fn dropped(perm: u16, gid: u32, in_group_or_capable: InGroup) -> u16 {
    let mut bits = perm & SUID;
    if perm & SGID != 0 && (perm & GROUP_EXEC != 0 || !in_group_or_capable(gid)) {
        bits |= SGID;
    }
    bits
}

/// Whether `perm` has a bit that a change may drop.
pub fn has_setid(perm: u16) -> bool {
    perm & (SUID | SGID) != 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kernels_rules() {
        let member = |_: u32| true;
        let stranger = |_: u32| false;
        // setuid always goes; setgid with group execute always goes.
        assert_eq!(dropped(0o6777, 0, &member), 0o6000);
        assert_eq!(dropped(0o4755, 0, &stranger), 0o4000);
        // setgid without group execute: only a stranger loses it.
        assert_eq!(dropped(0o6766, 0, &member), 0o4000);
        assert_eq!(dropped(0o6766, 0, &stranger), 0o6000);
        assert_eq!(dropped(0o2644, 7, &|g| g == 7), 0);
        // Nothing to drop, and the predicate is not even asked.
        assert_eq!(dropped(0o777, 0, &|_| panic!("asked")), 0);
        assert_eq!(dropped(0o4711, 0, &|_| panic!("asked")), 0o4000);
        assert!(has_setid(0o2000) && has_setid(0o4000) && !has_setid(0o1777));
    }
}

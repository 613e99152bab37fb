//! Comparing the two sides' results of one operation: values, errnos, `stat` fields (with
//! the time and link-count rules), data.

use super::*;

/// How mtimes are compared. A sequence sets times only with `Op::Utimens`, to values (years
/// 2001–2020, random nanoseconds) that no other event produces: the image's files carry
/// 2023/2026 times and every other change stamps the current time. So an mtime in
/// `explicit` means "set explicitly by the sequence and not touched since", and is compared
/// when EITHER side shows such a value: the kernel keeping an explicit time that strata
/// changed, or strata keeping one the kernel changed (a missed update), are both caught. All
/// other mtimes ("now" on each side, at slightly different moments) are not compared.
pub struct Times {
    pub explicit: HashSet<(i64, i64)>,
}

impl Times {
    pub fn of(ops: &[Op]) -> Times {
        Times {
            explicit: ops
                .iter()
                .filter_map(|o| match o {
                    Op::Utimens { mtime, .. } => Some(*mtime),
                    _ => None,
                })
                .collect(),
        }
    }
    fn comparable(&self, a: (i64, i64), b: (i64, i64)) -> bool {
        self.explicit.contains(&a) || self.explicit.contains(&b)
    }
}

/// `st_nlink` of a non-directory. Kernel overlayfs takes the count of a lower hard link from
/// the lower inode, which counts names a higher layer whited out (the sample image's
/// `srv/hardlinks/a/original.txt` shows 3 for 2 names), and for an open file unlinked from a
/// lower layer it still shows 1. Strata may report the true count instead (DESIGN §4:
/// "st_nlink right"): that is an intended difference, so strata's value is accepted when it
/// equals the number of names the inode has in the tree (`truth`) and the kernel's does not.
/// Otherwise the two must be equal.
fn nlink_ok(kernel: u64, strata: u64, truth: impl FnOnce() -> u64) -> bool {
    if kernel == strata {
        return true;
    }
    let t = truth();
    strata == t && kernel != t
}

/// Compares two `stat` results: kind, permissions, owner, rdev; size and nlink for
/// non-directories (directory sizes and link counts are the backing file system's
/// business); mtime per [`Times`]; never atime, ctime or inode numbers.
pub(super) fn compare_stat(
    a: &St,
    b: &St,
    times: &Times,
    truth: impl FnOnce() -> u64,
) -> Result<(), String> {
    let mut bad = Vec::new();
    if a.kind != b.kind {
        bad.push("type");
    }
    if a.perm != b.perm {
        bad.push("mode");
    }
    if (a.uid, a.gid) != (b.uid, b.gid) {
        bad.push("owner");
    }
    if a.rdev != b.rdev {
        bad.push("rdev");
    }
    if a.kind != 'd' && a.size != b.size {
        bad.push("size");
    }
    if times.comparable(a.mtime, b.mtime) && a.mtime != b.mtime {
        bad.push("mtime");
    }
    if a.kind != 'd' && b.kind != 'd' && !nlink_ok(a.nlink, b.nlink, truth) {
        bad.push("nlink");
    }
    if bad.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "stat differs in {}:\n    kernel {}\n    strata {}",
            bad.join(", "),
            show_st(a),
            show_st(b)
        ))
    }
}

fn show_st(s: &St) -> String {
    format!(
        "{} {:04o} {}:{} size {} rdev {:#x} nlink {} mtime {}.{:09}",
        s.kind, s.perm, s.uid, s.gid, s.size, s.rdev, s.nlink, s.mtime.0, s.mtime.1
    )
}

/// Number of non-directory names under `mnt` whose inode is `ino` (walks the tree; used only
/// when two nlink values differ).
fn names_of_inode(mnt: &Path, ino: u64) -> u64 {
    let mut n = 0;
    let mut stack = vec![mnt.to_path_buf()];
    let mut budget = 1_000_000usize;
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            budget = budget.saturating_sub(1);
            if budget == 0 {
                return n;
            }
            let Ok(m) = std::fs::symlink_metadata(e.path()) else {
                continue;
            };
            if m.is_dir() {
                stack.push(e.path());
            } else if m.ino() == ino {
                n += 1;
            }
        }
    }
    n
}

pub fn errno_name(e: i32) -> String {
    let name = match e {
        libc::EPERM => "EPERM",
        libc::ENOENT => "ENOENT",
        libc::EIO => "EIO",
        libc::EBADF => "EBADF",
        libc::EAGAIN => "EAGAIN",
        libc::EACCES => "EACCES",
        libc::EBUSY => "EBUSY",
        libc::EEXIST => "EEXIST",
        libc::EXDEV => "EXDEV",
        libc::ENOTDIR => "ENOTDIR",
        libc::EISDIR => "EISDIR",
        libc::EINVAL => "EINVAL",
        libc::EFBIG => "EFBIG",
        libc::ENOSPC => "ENOSPC",
        libc::ESPIPE => "ESPIPE",
        libc::EROFS => "EROFS",
        libc::EMLINK => "EMLINK",
        libc::ERANGE => "ERANGE",
        libc::ENAMETOOLONG => "ENAMETOOLONG",
        libc::ENOSYS => "ENOSYS",
        libc::ENOTEMPTY => "ENOTEMPTY",
        libc::ELOOP => "ELOOP",
        libc::ENODATA => "ENODATA",
        libc::EOPNOTSUPP => "EOPNOTSUPP",
        libc::ENXIO => "ENXIO",
        libc::ENOTCONN => "ENOTCONN",
        libc::E2BIG => "E2BIG",
        libc::ETXTBSY => "ETXTBSY",
        _ => return format!("errno {e}"),
    };
    name.to_string()
}

pub(super) fn show_res(r: &Res) -> String {
    match r {
        Err(e) => errno_name(*e),
        Ok(Val::Data(d)) => format!(
            "{} bytes (sha256 {}){}",
            d.len(),
            &hex::encode(Sha256::digest(d))[..16],
            if d.len() <= 64 {
                format!(" {:?}", show(d))
            } else {
                String::new()
            }
        ),
        Ok(Val::Stat(s)) => show_st(s),
        Ok(Val::Dir(v)) => format!(
            "[{}]",
            v.iter()
                .map(|(n, t)| format!("{}:{t}", show(n)))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        Ok(Val::Names(v)) => format!("{:?}", v.iter().map(|n| show(n)).collect::<Vec<_>>()),
        Ok(v) => format!("{v:?}"),
    }
}

/// Where two data results first differ.
fn first_difference(a: &[u8], b: &[u8]) -> String {
    match a.iter().zip(b).position(|(x, y)| x != y) {
        Some(i) => format!(
            "; first difference at byte {i}: kernel {:#04x}, strata {:#04x}",
            a[i], b[i]
        ),
        None => format!("; lengths {} vs {}", a.len(), b.len()),
    }
}

/// Compares one operation's results; `None` when they agree.
pub(super) fn compare_results(
    a: &Res,
    b: &Res,
    times: &Times,
    mnt_a: &Path,
    mnt_b: &Path,
) -> Option<String> {
    match (a, b) {
        (Ok(Val::Stat(x)), Ok(Val::Stat(y))) => {
            // The true name count is measured on each side's own tree (the trees are equal
            // so far, or an earlier operation would have differed).
            let (ia, ib) = (x.ino, y.ino);
            compare_stat(x, y, times, || {
                let t = names_of_inode(mnt_a, ia);
                if t == names_of_inode(mnt_b, ib) {
                    t
                } else {
                    u64::MAX
                }
            })
            .err()
        }
        (Ok(Val::Data(x)), Ok(Val::Data(y))) if x != y => Some(format!(
            "kernel: {}\n  strata: {}{}",
            show_res(a),
            show_res(b),
            first_difference(x, y)
        )),
        _ if a == b => None,
        _ => Some(format!(
            "kernel: {}\n  strata: {}",
            show_res(a),
            show_res(b)
        )),
    }
}

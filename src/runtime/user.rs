//! `-u user[:group]` against the container's own `/etc/passwd` and `/etc/group`, with
//! Docker's rules: names must exist, numbers need not; a user's primary group and
//! supplementary groups come from those files; HOME comes from passwd (`/` otherwise).

/// Who the container's process becomes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecUser {
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
    pub home: String,
}

struct PasswdEntry<'a> {
    name: &'a str,
    uid: u32,
    gid: u32,
    home: &'a str,
}

fn passwd_entries(text: &str) -> impl Iterator<Item = PasswdEntry<'_>> {
    text.lines().filter_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        if f.len() < 7 {
            return None;
        }
        Some(PasswdEntry {
            name: f[0],
            uid: f[2].parse().ok()?,
            gid: f[3].parse().ok()?,
            home: f[5],
        })
    })
}

struct GroupEntry<'a> {
    name: &'a str,
    gid: u32,
    members: Vec<&'a str>,
}

fn group_entries(text: &str) -> impl Iterator<Item = GroupEntry<'_>> {
    text.lines().filter_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        if f.len() < 4 {
            return None;
        }
        Some(GroupEntry {
            name: f[0],
            gid: f[2].parse().ok()?,
            members: f[3].split(',').filter(|m| !m.is_empty()).collect(),
        })
    })
}

/// The login name of `uid` in a passwd file's text (the host's, for subordinate ids).
pub fn name_of(uid: u32, passwd: &str) -> Option<String> {
    passwd_entries(passwd)
        .find(|e| e.uid == uid)
        .map(|e| e.name.to_string())
}

/// Resolves `spec` (`user`, `uid`, `user:group`, `uid:gid`, ...). `passwd` and `group` are
/// the files' contents (`None` when missing).
pub fn resolve(spec: &str, passwd: Option<&str>, group: Option<&str>) -> Result<ExecUser, String> {
    let (u, g) = match spec.split_once(':') {
        Some((a, b)) => (a, Some(b)),
        None => (spec, None),
    };
    let passwd = passwd.unwrap_or("");
    let group = group.unwrap_or("");
    let (uid, entry) = match u.parse::<u32>() {
        Ok(n) => (n, passwd_entries(passwd).find(|e| e.uid == n)),
        Err(_) => {
            let e = passwd_entries(passwd)
                .find(|e| e.name == u)
                .ok_or_else(|| {
                    format!("unable to find user {u}: no matching entries in passwd file")
                })?;
            (e.uid, Some(e))
        }
    };
    let gid = match g {
        Some(g) => match g.parse::<u32>() {
            Ok(n) => n,
            Err(_) => group_entries(group)
                .find(|e| e.name == g)
                .map(|e| e.gid)
                .ok_or_else(|| {
                    format!("unable to find group {g}: no matching entries in group file")
                })?,
        },
        None => entry.as_ref().map(|e| e.gid).unwrap_or(0),
    };
    // Supplementary groups: only when the group was not forced, as Docker does.
    let mut groups = Vec::new();
    if g.is_none()
        && let Some(e) = &entry
    {
        for ge in group_entries(group) {
            if ge.members.contains(&e.name) && ge.gid != gid && !groups.contains(&ge.gid) {
                groups.push(ge.gid);
            }
        }
    }
    let home = entry
        .as_ref()
        .map(|e| e.home)
        .filter(|h| !h.is_empty())
        .unwrap_or("/")
        .to_string();
    Ok(ExecUser {
        uid,
        gid,
        groups,
        home,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\nuser:x:1000:1000:U:/home/user:/bin/sh\n\
                          nobody:x:65534:65534:n:/nonexistent:/bin/false\n";
    const GROUP: &str = "root:x:0:\ndisk:x:6:user\nuser:x:1000:\nnogroup:x:65534:\n";

    #[test]
    fn names_numbers_and_groups() {
        let r = resolve("user", Some(PASSWD), Some(GROUP)).unwrap();
        assert_eq!(
            r,
            ExecUser {
                uid: 1000,
                gid: 1000,
                groups: vec![6],
                home: "/home/user".into()
            }
        );
        let r = resolve("1000:6", Some(PASSWD), Some(GROUP)).unwrap();
        assert_eq!((r.uid, r.gid, r.groups.len()), (1000, 6, 0));
        let r = resolve("4242", Some(PASSWD), Some(GROUP)).unwrap();
        assert_eq!((r.uid, r.gid, r.home.as_str()), (4242, 0, "/"));
        let r = resolve("nobody:disk", Some(PASSWD), Some(GROUP)).unwrap();
        assert_eq!((r.uid, r.gid), (65534, 6));
        assert!(resolve("ghost", Some(PASSWD), Some(GROUP)).is_err());
        assert!(resolve("user:ghosts", Some(PASSWD), Some(GROUP)).is_err());
        assert!(resolve("root", None, None).is_err());
    }
}

//! Comparing the final trees of both sides.

use super::*;

/// Compares the final trees: the same names; per path the same type, mode, owner, rdev,
/// size (non-directories), content, link target, xattrs, nlink (non-directories, per
/// [`nlink_ok`] with the link-group size as the truth) and mtime (per [`Times`]); the same
/// hard-link groups. Not compared: inode numbers (only the grouping), atime/ctime,
/// directory sizes and link counts.
pub fn compare_trees(a: &Snapshot, b: &Snapshot, times: &Times) -> Option<String> {
    let mut diffs = Vec::new();
    let missing: Vec<String> = a
        .entries
        .keys()
        .filter(|k| !b.entries.contains_key(*k))
        .map(|k| show(k))
        .collect();
    let extra: Vec<String> = b
        .entries
        .keys()
        .filter(|k| !a.entries.contains_key(*k))
        .map(|k| show(k))
        .collect();
    if !missing.is_empty() || !extra.is_empty() {
        diffs.push(format!(
            "names differ: only in kernel {missing:?}, only in strata {extra:?}"
        ));
    }
    let (ga, gb) = (a.link_groups(), b.link_groups());
    for (p, ma) in &a.entries {
        let Some(mb) = b.entries.get(p) else {
            continue;
        };
        let truth = ga.get(p).map_or(0, |g| g.len() as u64);
        let mut what = Vec::new();
        if let Err(e) = compare_stat(&ma.st, &mb.st, times, || truth) {
            what.push(e);
        }
        if ma.content != mb.content {
            what.push(format!(
                "content sha256 {:?} vs {:?}",
                ma.content.as_deref().map(|c| &c[..16]),
                mb.content.as_deref().map(|c| &c[..16])
            ));
        }
        if ma.target != mb.target {
            what.push(format!(
                "link target {:?} vs {:?}",
                ma.target.as_deref().map(show),
                mb.target.as_deref().map(show)
            ));
        }
        if ma.xattrs != mb.xattrs {
            let list = |x: &[(Vec<u8>, Vec<u8>)]| -> Vec<String> {
                x.iter()
                    .map(|(n, v)| format!("{}={}", show(n), show(v)))
                    .collect()
            };
            what.push(format!(
                "xattrs {:?} vs {:?}",
                list(&ma.xattrs),
                list(&mb.xattrs)
            ));
        }
        if ma.st.kind != 'd' && ga.get(p) != gb.get(p) {
            let list = |g: Option<&Vec<Vec<u8>>>| -> Vec<String> {
                g.map(|g| g.iter().map(|x| show(x)).collect())
                    .unwrap_or_default()
            };
            what.push(format!(
                "hard-link group {:?} vs {:?}",
                list(ga.get(p)),
                list(gb.get(p))
            ));
        }
        if !what.is_empty() {
            diffs.push(format!("{}: {}", show(p), what.join("; ")));
        }
    }
    if diffs.is_empty() {
        None
    } else {
        let n = diffs.len();
        diffs.truncate(20);
        Some(format!(
            "final trees differ ({n} path(s)):\n  {}",
            diffs.join("\n  ")
        ))
    }
}

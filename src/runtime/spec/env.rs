//! Environment lists: `--env-file` parsing, `-e KEY` taken from the host, and merging
//! `KEY=VALUE` lists where later keys win.
//!
//! Never does: read files or the host's environment itself; callers pass text and a lookup.

/// Parses an env file: `KEY=VALUE` lines, `KEY` alone takes the host's value (dropped when
/// unset), blank lines and `#` comments are skipped.
pub fn parse_env_file(text: &str, host: &dyn Fn(&str) -> Option<String>) -> Vec<String> {
    text.lines()
        .map(|l| l.trim_start())
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| expand_env(l, host))
        .collect()
}

pub(super) fn expand_env(entry: &str, host: &dyn Fn(&str) -> Option<String>) -> Option<String> {
    if entry.contains('=') {
        Some(entry.to_string())
    } else {
        host(entry).map(|v| format!("{entry}={v}"))
    }
}

/// Merges `KEY=VALUE` lists: later keys replace earlier ones in place.
pub fn merge_env(base: &[String], extra: &[String]) -> Vec<String> {
    let mut out: Vec<String> = base.to_vec();
    for e in extra {
        let key = e.split('=').next().unwrap_or(e);
        match out
            .iter_mut()
            .find(|o| o.split('=').next().unwrap_or(o) == key)
        {
            Some(slot) => *slot = e.clone(),
            None => out.push(e.clone()),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_rules() {
        let host = |k: &str| (k == "HOME_X").then(|| "v".to_string());
        assert_eq!(
            parse_env_file("# c\n\nA=1\nHOME_X\nMISSING\n B=2 3\n", &host),
            ["A=1", "HOME_X=v", "B=2 3"]
        );
        assert_eq!(
            merge_env(&["A=1".into(), "B=2".into()], &["B=3".into(), "C=4".into()]),
            ["A=1", "B=3", "C=4"]
        );
    }
}

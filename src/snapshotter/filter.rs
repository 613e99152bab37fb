//! containerd's filter syntax for `List` (Walk), on the fields containerd's own snapshotters
//! filter by: `name`, `parent`, `kind` and `labels.KEY` (`labels."containerd.io/gc.root"`).
//! A filter is selectors joined by `,` (all must match); several filters match when any
//! does. A selector is `FIELD==VALUE`, `FIELD!=VALUE` or a bare `FIELD` (present and not
//! empty); values and field parts may be double-quoted. Regular expressions (`~=`) are
//! refused as an invalid argument rather than guessed.

use super::SnapshotError;
use super::record::Record;

#[derive(Debug, PartialEq, Eq)]
enum Op {
    Present,
    Eq(String),
    Ne(String),
}

#[derive(Debug, PartialEq, Eq)]
struct Selector {
    path: Vec<String>,
    op: Op,
}

/// Parsed filters: a record matches when any filter's selectors all match it.
#[derive(Debug, Default)]
pub struct Filters(Vec<Vec<Selector>>);

fn bad(f: &str, why: &str) -> SnapshotError {
    SnapshotError::InvalidArgument(format!("filter {f:?}: {why}"))
}

/// A quoted string starting at `s[0] == '"'`: its value and the rest after it.
fn quoted<'a>(f: &str, s: &'a str) -> Result<(String, &'a str), SnapshotError> {
    let mut out = String::new();
    let mut chars = s[1..].char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => return Ok((out, &s[1 + i + 1..])),
            '\\' => match chars.next() {
                Some((_, c)) => out.push(c),
                None => break,
            },
            c => out.push(c),
        }
    }
    Err(bad(f, "unterminated quote"))
}

fn selector<'a>(f: &str, mut s: &'a str) -> Result<(Selector, &'a str), SnapshotError> {
    let mut path = Vec::new();
    loop {
        s = s.trim_start();
        let (part, rest) = if s.starts_with('"') {
            quoted(f, s)?
        } else {
            let end = s
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '-'))
                .unwrap_or(s.len());
            if end == 0 {
                return Err(bad(f, "a field name is missing"));
            }
            (s[..end].to_string(), &s[end..])
        };
        path.push(part);
        s = rest;
        match s.strip_prefix('.') {
            Some(r) => s = r,
            None => break,
        }
    }
    s = s.trim_start();
    let op = if let Some(r) = s.strip_prefix("==").or(s.strip_prefix('=')) {
        let (v, r) = value(f, r)?;
        s = r;
        Op::Eq(v)
    } else if let Some(r) = s.strip_prefix("!=") {
        let (v, r) = value(f, r)?;
        s = r;
        Op::Ne(v)
    } else if s.starts_with("~=") {
        return Err(bad(f, "regular expressions (~=) are not supported"));
    } else {
        Op::Present
    };
    Ok((Selector { path, op }, s))
}

fn value<'a>(f: &str, s: &'a str) -> Result<(String, &'a str), SnapshotError> {
    let s = s.trim_start();
    if s.starts_with('"') {
        return quoted(f, s);
    }
    let end = s
        .find(|c: char| c == ',' || c.is_whitespace())
        .unwrap_or(s.len());
    Ok((s[..end].to_string(), &s[end..]))
}

impl Filters {
    pub fn parse(filters: &[String]) -> Result<Filters, SnapshotError> {
        let mut out = Vec::new();
        for f in filters.iter().filter(|f| !f.trim().is_empty()) {
            let mut sels = Vec::new();
            let mut s = f.as_str();
            loop {
                let (sel, rest) = selector(f, s)?;
                match sel.path.first().map(String::as_str) {
                    Some("name" | "parent" | "kind") if sel.path.len() == 1 => {}
                    Some("labels") if sel.path.len() == 2 => {}
                    _ => return Err(bad(f, "unknown field (name, parent, kind, labels.KEY)")),
                }
                sels.push(sel);
                let rest = rest.trim_start();
                if rest.is_empty() {
                    break;
                }
                s = rest
                    .strip_prefix(',')
                    .ok_or_else(|| bad(f, &format!("unexpected {rest:?}")))?;
            }
            out.push(sels);
        }
        Ok(Filters(out))
    }

    pub fn matches(&self, r: &Record) -> bool {
        self.0.is_empty() || self.0.iter().any(|sels| sels.iter().all(|s| s.matches(r)))
    }
}

impl Selector {
    fn matches(&self, r: &Record) -> bool {
        let got: Option<&str> = match self.path[0].as_str() {
            "name" => Some(&r.key),
            "parent" => Some(&r.parent),
            "kind" => Some(r.kind.name()),
            _ => self
                .path
                .get(1)
                .and_then(|k| r.labels.get(k))
                .map(String::as_str),
        };
        match &self.op {
            Op::Present => got.is_some_and(|v| !v.is_empty()),
            Op::Eq(v) => got == Some(v.as_str()),
            Op::Ne(v) => got != Some(v.as_str()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshotter::Kind;
    use std::collections::HashMap;
    use std::time::SystemTime;

    fn rec(key: &str, kind: Kind, labels: &[(&str, &str)]) -> Record {
        Record {
            key: key.into(),
            parent: "p".into(),
            kind,
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<HashMap<_, _>>(),
            created: SystemTime::UNIX_EPOCH,
            updated: SystemTime::UNIX_EPOCH,
            layers: vec![],
            upper: false,
        }
    }

    fn f(s: &[&str]) -> Filters {
        Filters::parse(&s.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap()
    }

    #[test]
    fn selectors_and_alternatives() {
        let a = rec("a", Kind::Committed, &[("containerd.io/gc.root", "x")]);
        let b = rec("b", Kind::Active, &[]);
        assert!(f(&[]).matches(&a));
        assert!(f(&["kind==committed"]).matches(&a));
        assert!(!f(&["kind==committed"]).matches(&b));
        assert!(f(&["kind!=committed"]).matches(&b));
        assert!(f(&[r#"labels."containerd.io/gc.root""#]).matches(&a));
        assert!(!f(&[r#"labels."containerd.io/gc.root""#]).matches(&b));
        assert!(f(&[r#"labels."containerd.io/gc.root"==x,name==a"#]).matches(&a));
        assert!(!f(&[r#"labels."containerd.io/gc.root"==x,name==b"#]).matches(&a));
        assert!(f(&["name==zz", "name==b"]).matches(&b));
        assert!(f(&[r#"name=="b""#, "parent==p"]).matches(&b));
    }

    #[test]
    fn bad_filters_are_invalid_arguments() {
        for s in [
            "size==3",
            "name~=a.*",
            r#"labels."x"#,
            "==a",
            "name==a junk",
            "labels",
        ] {
            match Filters::parse(&[s.to_string()]) {
                Err(SnapshotError::InvalidArgument(_)) => {}
                other => panic!("{s}: {other:?}"),
            }
        }
    }
}

//! The module order of DESIGN.md, kept by a test: an import only ever points down
//! `sys`, `digest`, `time` → `layer`, `rwlayer` → `image`, `fs` → `net` → `runtime` → `diff`
//! → `snapshotter` → `cli`. Reads every file under `src/` and fails on a `crate::` path (also
//! inside `use crate::{…}` groups, and `super::` chains that climb to the crate root) that
//! names a module of the same tier or a higher one. A new top-level module must be given a
//! tier here.

use std::path::{Path, PathBuf};

/// Tiers, bottom to top; a module may name only modules of a lower tier.
const ORDER: &[&[&str]] = &[
    &["sys", "digest", "time", "logsink", "paths"],
    &["layer", "rwlayer"],
    &["image", "fs"],
    &["net"],
    &["runtime"],
    &["diff"],
    &["snapshotter"],
    &["cli"],
];

fn tier(module: &str) -> Option<usize> {
    ORDER.iter().position(|t| t.contains(&module))
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("directory entry").path())
        .collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The code of a line without its `//` comment (a `//` inside a string literal is kept).
fn code(line: &str) -> &str {
    let mut quotes = 0;
    let b = line.as_bytes();
    for i in 0..b.len() {
        match b[i] {
            b'"' if i == 0 || b[i - 1] != b'\\' => quotes += 1,
            b'/' if quotes % 2 == 0 && b.get(i + 1) == Some(&b'/') => return &line[..i],
            _ => {}
        }
    }
    line
}

fn ident(s: &str) -> &str {
    let end = s
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(s.len());
    &s[..end]
}

/// The top-level modules named right after a crate-root path prefix: `x` in `…::x::y`, and
/// every first name in `…::{x::y, z, w::{…}}`.
fn named_after(rest: &str) -> Vec<String> {
    let rest = rest.trim_start();
    if let Some(group) = rest.strip_prefix('{') {
        let mut out = Vec::new();
        let mut depth = 0;
        let mut item_start = true;
        for (i, c) in group.char_indices() {
            match c {
                '{' => depth += 1,
                '}' if depth == 0 => break,
                '}' => depth -= 1,
                ',' if depth == 0 => item_start = true,
                c if item_start && !c.is_whitespace() => {
                    item_start = false;
                    out.push(ident(&group[i..]).to_string());
                }
                _ => {}
            }
        }
        out
    } else {
        vec![ident(rest).to_string()]
    }
}

/// Every top-level module a file's code names through `crate::` or a `super::` chain that
/// climbs to the crate root. `depth` is how many modules deep the file is (`src/fs/mod.rs`
/// and `src/fs.rs` are 1, `src/fs/view/data.rs` is 3).
fn imports(text: &str, depth: usize) -> Vec<(usize, String)> {
    // Joined, so that a `use crate::{` group spread over lines is seen whole.
    let mut joined = String::new();
    let mut line_of = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let c = code(line);
        joined.push_str(c);
        joined.push('\n');
        line_of.extend(std::iter::repeat_n(n + 1, c.len() + 1));
    }
    let mut out = Vec::new();
    let bytes = joined.as_bytes();
    let word_start = |i: usize| {
        i == 0
            || !(bytes[i - 1].is_ascii_alphanumeric()
                || bytes[i - 1] == b'_'
                || bytes[i - 1] == b':')
    };
    let mut i = 0;
    while i < joined.len() {
        let rest = &joined[i..];
        if word_start(i) && rest.starts_with("crate::") {
            for m in named_after(&rest["crate::".len()..]) {
                out.push((line_of[i], m));
            }
            i += "crate::".len();
        } else if word_start(i) && rest.starts_with("super::") {
            let mut ups = 0;
            let mut r = rest;
            while let Some(t) = r.strip_prefix("super::") {
                ups += 1;
                r = t;
            }
            // From inside an inline module (`mod tests { … }`) the chain is one level short
            // of what the file's depth says: only names of top-level modules count then.
            if ups >= depth {
                for m in named_after(r) {
                    if ups > depth || tier(&m).is_some() {
                        out.push((line_of[i], m));
                    }
                }
            }
            i += rest.len() - r.len();
        } else {
            i += rest.chars().next().map_or(1, char::len_utf8);
        }
    }
    out
}

#[test]
fn imports_only_point_down_the_module_order() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    assert!(
        files.len() > 20,
        "found only {} files under src/",
        files.len()
    );
    let mut bad = Vec::new();
    for f in &files {
        let rel = f.strip_prefix(&src).expect("under src");
        let parts: Vec<&str> = rel
            .iter()
            .map(|p| p.to_str().expect("UTF-8 path"))
            .collect();
        let top = parts[0].trim_end_matches(".rs");
        if matches!(top, "lib" | "main") {
            continue;
        }
        let Some(mine) = tier(top) else {
            bad.push(format!(
                "{}: module `{top}` has no tier in ORDER",
                rel.display()
            ));
            continue;
        };
        let last = parts[parts.len() - 1];
        let depth = if last == "mod.rs" {
            parts.len() - 1
        } else {
            parts.len()
        };
        let text = std::fs::read_to_string(f).expect("readable source");
        for (line, m) in imports(&text, depth) {
            if m == top || m.is_empty() || m == "self" {
                continue;
            }
            match tier(&m) {
                Some(t) if t < mine => {}
                Some(_) => bad.push(format!(
                    "{}:{line}: `{top}` imports `{m}`, which is not below it",
                    rel.display()
                )),
                // A name re-exported at the crate root (none today) or a macro: not a module.
                None => bad.push(format!(
                    "{}:{line}: `crate::{m}` is not a module in ORDER",
                    rel.display()
                )),
            }
        }
    }
    assert!(
        bad.is_empty(),
        "upward or sideways imports:\n{}",
        bad.join("\n")
    );
}

#[test]
fn the_import_scanner_sees_groups_and_super_chains() {
    let text = "use crate::{fs::view::View, image::{A, B}};\n\
                // use crate::cli; (a comment)\n\
                let s = \"crate::net\"; x = crate::runtime::store::RW_DIR;\n\
                use super::super::net;\n";
    let names: Vec<String> = imports(text, 2).into_iter().map(|(_, m)| m).collect();
    // The string literal is not skipped (no real source names modules in strings).
    assert_eq!(names, ["fs", "image", "net", "runtime", "net"]);
    let names: Vec<String> = imports("use super::super::net;", 3)
        .into_iter()
        .map(|(_, m)| m)
        .collect();
    assert!(
        names.is_empty(),
        "two levels up from depth 3 is not the crate root"
    );
}

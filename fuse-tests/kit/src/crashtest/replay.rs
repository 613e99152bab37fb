//! Replaying the journal: byte ranges, and each file's durable content, names, mode and the
//! ranges written since its last durable point.
//!
//! Never does: look at the mount; `verify` compares.

use std::collections::BTreeSet;

use super::{apply_write, sha};
use anyhow::{Context as _, bail};

/// Byte ranges `[start, end)`, kept sorted and merged.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Ranges(pub Vec<(u64, u64)>);

impl Ranges {
    pub fn add(&mut self, s: u64, e: u64) {
        if s >= e {
            return;
        }
        self.0.push((s, e));
        self.0.sort();
        let mut out: Vec<(u64, u64)> = Vec::new();
        for &(s, e) in &self.0 {
            match out.last_mut() {
                Some(last) if s <= last.1 => last.1 = last.1.max(e),
                _ => out.push((s, e)),
            }
        }
        self.0 = out;
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
    /// The parts of `[0, len)` outside these ranges.
    pub fn complement(&self, len: u64) -> Vec<(u64, u64)> {
        let mut out = Vec::new();
        let mut at = 0;
        for &(s, e) in &self.0 {
            if s >= len {
                break;
            }
            if s > at {
                out.push((at, s));
            }
            at = at.max(e);
        }
        if at < len {
            out.push((at, len));
        }
        out
    }
}

/// One file as the journal describes it.
#[derive(Clone, Debug, Default)]
pub struct FileState {
    /// The content the workload last made durable (`None`: nothing yet).
    pub durable: Option<Vec<u8>>,
    /// Ranges written or truncated since then.
    pub dirty: Ranges,
    /// The name made durable last (the lower path for lower files).
    pub durable_path: Option<String>,
    /// Names it was renamed to (or created at) after that, not yet durable.
    pub later_paths: Vec<String>,
    /// The content after every intent so far (the workload's view).
    pub model: Vec<u8>,
    /// Unlinked (intent seen): it may be gone from its name.
    pub unlinked: bool,
    /// The unlink is durable: no name may show it.
    pub durably_unlinked: bool,
    /// The permission bits made durable last, and whether a chmod came after them.
    pub durable_mode: Option<u32>,
    pub mode_dirty: bool,
}

/// Everything the journal says.
#[derive(Clone, Debug, Default)]
pub struct Replay {
    pub files: Vec<FileState>,
    /// Names durably renamed away (must not exist).
    pub gone: BTreeSet<String>,
    /// Every name the workload ever used under its directory.
    pub known: BTreeSet<String>,
    /// Durable records seen.
    pub durable_records: usize,
    /// Intents seen.
    pub intents: usize,
}

/// Replays a journal. `base` gives the original bytes of lower file `id` (`JOURNAL/base-ID`).
/// A torn last line (no newline: the writer died in the middle) is ignored.
pub fn replay(
    text: &str,
    base: &dyn Fn(usize) -> std::io::Result<Vec<u8>>,
) -> anyhow::Result<Replay> {
    let mut r = Replay::default();
    let complete = match text.rfind('\n') {
        Some(i) => &text[..=i],
        None => "",
    };
    for (n, line) in complete.lines().enumerate() {
        let w: Vec<&str> = line.split(' ').collect();
        let num = |i: usize| -> anyhow::Result<u64> {
            w.get(i)
                .and_then(|s| s.parse().ok())
                .with_context(|| format!("journal line {}: {line:?}", n + 1))
        };
        let file = |r: &mut Replay, id: u64| -> anyhow::Result<usize> {
            let id = id as usize;
            if id > r.files.len() + 1000 {
                bail!("journal line {}: id {id} out of range", n + 1);
            }
            if r.files.len() <= id {
                r.files.resize(id + 1, FileState::default());
            }
            Ok(id)
        };
        match w[0] {
            "dir" => {}
            "base" => {
                let id = file(&mut r, num(1)?)?;
                let content = base(id).with_context(|| format!("base blob of file {id}"))?;
                let f = &mut r.files[id];
                f.model = content.clone();
                f.durable = Some(content);
                f.durable_path = Some(w[2].to_string());
                r.durable_records += 1;
            }
            "create" => {
                let id = file(&mut r, num(1)?)?;
                r.known.insert(w[2].to_string());
                r.files[id].later_paths.push(w[2].to_string());
                r.intents += 1;
            }
            "write" => {
                let id = file(&mut r, num(1)?)?;
                let (off, len, seed) = (num(2)?, num(3)?, num(4)?);
                let f = &mut r.files[id];
                apply_write(&mut f.model, off, &crate::fill(seed, len as usize));
                f.dirty.add(off, off + len);
                r.intents += 1;
            }
            "trunc" => {
                let id = file(&mut r, num(1)?)?;
                let size = num(2)?;
                let f = &mut r.files[id];
                let from = size.min(f.model.len() as u64);
                f.model.resize(size as usize, 0);
                f.dirty.add(from, u64::MAX);
                r.intents += 1;
            }
            "rename" => {
                let id = file(&mut r, num(1)?)?;
                r.known.insert(w[2].to_string());
                r.files[id].later_paths.push(w[2].to_string());
                r.intents += 1;
            }
            "durable" => {
                let id = file(&mut r, num(1)?)?;
                let f = &mut r.files[id];
                let (size, want) = (num(2)?, w.get(3).copied().unwrap_or(""));
                if f.model.len() as u64 != size || sha(&f.model) != want {
                    bail!(
                        "journal line {}: replayed content of file {id} ({} bytes) does not \
                         match the workload's ({size} bytes, sha256 {want})",
                        n + 1,
                        f.model.len()
                    );
                }
                f.durable = Some(f.model.clone());
                f.dirty = Ranges::default();
                r.durable_records += 1;
            }
            "unlink" => {
                let id = file(&mut r, num(1)?)?;
                r.files[id].unlinked = true;
                r.intents += 1;
            }
            "durable-unlink" => {
                let id = file(&mut r, num(1)?)?;
                let f = &mut r.files[id];
                f.durably_unlinked = true;
                r.gone.extend(f.durable_path.iter().cloned());
                r.gone.extend(f.later_paths.iter().cloned());
                r.durable_records += 1;
            }
            "chmod" => {
                let id = file(&mut r, num(1)?)?;
                r.files[id].mode_dirty = true;
                r.intents += 1;
            }
            "durable-mode" => {
                let id = file(&mut r, num(1)?)?;
                let mode = num(2)? as u32;
                let f = &mut r.files[id];
                f.durable_mode = Some(mode);
                f.mode_dirty = false;
                r.durable_records += 1;
            }
            "durable-name" => {
                let id = file(&mut r, num(1)?)?;
                let f = &mut r.files[id];
                let new = w[2].to_string();
                if let Some(old) = f.durable_path.take()
                    && old != new
                {
                    r.gone.insert(old);
                }
                // Earlier un-synced names are now superseded too.
                for p in f.later_paths.drain(..) {
                    if p != new {
                        r.gone.insert(p);
                    }
                }
                f.durable_path = Some(new);
                r.durable_records += 1;
            }
            other => bail!("journal line {}: unknown record {other:?}", n + 1),
        }
    }
    Ok(r)
}

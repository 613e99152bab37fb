//! Verifying a remounted tree against the replayed journal: durable bytes, sizes, names,
//! modes, and no names the workload never made.
//!
//! Never does: mount or kill anything; `trial` does.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use super::WORKDIR;
use super::replay::{Ranges, Replay};

/// Checks one file's bytes against what was guaranteed.
pub fn check_content(got: &[u8], durable: &[u8], dirty: &Ranges) -> Result<(), String> {
    if dirty.is_empty() && got.len() != durable.len() {
        return Err(format!(
            "size {} but {} bytes were fsync'ed and nothing changed since",
            got.len(),
            durable.len()
        ));
    }
    for (s, e) in dirty.complement(durable.len() as u64) {
        let (s, e) = (s as usize, e as usize);
        if got.len() < e {
            return Err(format!(
                "size {}: fsync'ed bytes {s}..{e} are missing",
                got.len()
            ));
        }
        if got[s..e] != durable[s..e] {
            let i = s + got[s..e]
                .iter()
                .zip(&durable[s..e])
                .position(|(a, b)| a != b)
                .unwrap();
            return Err(format!(
                "byte {i} is {:#04x}, fsync'ed {:#04x} (range {s}..{e} untouched since the fsync)",
                got[i], durable[i]
            ));
        }
    }
    Ok(())
}

/// Verifies the remounted tree at `mnt` against the replayed journal; returns the number of
/// fsync'ed bytes checked.
pub fn verify(mnt: &Path, r: &Replay) -> Result<u64, Vec<String>> {
    let mut errors = Vec::new();
    let mut checked = 0u64;
    for (id, f) in r.files.iter().enumerate() {
        let mut candidates: Vec<&String> = f.durable_path.iter().collect();
        candidates.extend(f.later_paths.iter());
        let found: Vec<&String> = candidates
            .iter()
            .copied()
            .filter(|p| std::fs::symlink_metadata(mnt.join(p)).is_ok_and(|m| m.is_file()))
            .collect();
        if f.durably_unlinked {
            // `gone` holds its names: checked below.
            continue;
        }
        match (found.len(), &f.durable_path) {
            (0, Some(_)) if f.unlinked => continue,
            (0, Some(p)) => {
                errors.push(format!(
                    "file {id}: missing (durable name {p}; later names {:?})",
                    f.later_paths
                ));
                continue;
            }
            (0, None) => continue,
            (1, _) => {}
            _ => {
                errors.push(format!(
                    "file {id}: present under several names {found:?} (rename not atomic)"
                ));
                continue;
            }
        }
        if let (Some(mode), false) = (f.durable_mode, f.mode_dirty)
            && let Ok(m) = std::fs::symlink_metadata(mnt.join(found[0]))
            && m.mode() & 0o7777 != mode
        {
            errors.push(format!(
                "file {id} ({}): mode {:o}, fsync'ed {mode:o}",
                found[0],
                m.mode() & 0o7777
            ));
        }
        let Some(durable) = &f.durable else {
            continue;
        };
        match std::fs::read(mnt.join(found[0])) {
            Err(e) => errors.push(format!("file {id} ({}): read: {e}", found[0])),
            Ok(got) => match check_content(&got, durable, &f.dirty) {
                Ok(()) => {
                    checked += dirty_free_len(durable.len() as u64, &f.dirty);
                }
                Err(e) => errors.push(format!("file {id} ({}): {e}", found[0])),
            },
        }
    }
    for p in &r.gone {
        if std::fs::symlink_metadata(mnt.join(p)).is_ok() {
            errors.push(format!("{p}: durably renamed away or unlinked, but exists"));
        }
    }
    for dir in [WORKDIR.to_string(), format!("{WORKDIR}/sub")] {
        let Ok(rd) = std::fs::read_dir(mnt.join(&dir)) else {
            if r.durable_records > 0 {
                errors.push(format!("{dir}: cannot list"));
            }
            continue;
        };
        for e in rd.flatten() {
            let name = format!("{dir}/{}", e.file_name().to_string_lossy());
            if name != format!("{WORKDIR}/sub") && !r.known.contains(&name) {
                errors.push(format!("{name}: a name the workload never created"));
            }
        }
    }
    if errors.is_empty() {
        Ok(checked)
    } else {
        Err(errors)
    }
}

fn dirty_free_len(len: u64, dirty: &Ranges) -> u64 {
    dirty.complement(len).iter().map(|(s, e)| e - s).sum()
}

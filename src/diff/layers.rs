//! `image layers` and `image check`: what every layer of an image adds, changes and deletes,
//! the bytes that end up hidden, and dive's efficiency score — from the layer indexes alone.
//!
//! Two measures of waste, both reported:
//! - per layer, `wasted`: bytes of that layer's files that the final image does not show
//!   (overwritten or deleted by a later layer, or hidden by a later opaque directory);
//! - for the image, `wasted_bytes` and `efficiency` exactly as dive computes them: every leaf
//!   of every layer (files, symlinks, empty directories, whiteouts) counts its size under its
//!   path (a whiteout counts the size of the subtree it deletes when that is a directory, else
//!   0; a second name of a hard link counts 0, as its tar entry does); a path seen in two or
//!   more layers wastes the sum of its sizes; efficiency = Σ smallest size per path ÷ Σ all
//!   sizes (1.0 for an image without bytes). `wasted_percent` is wasted ÷ the bytes of all
//!   layers but the first, dive's "user" bytes.

use std::collections::{BTreeMap, HashMap, HashSet};

use serde::Serialize;

use crate::digest::Digest;
use crate::layer::{Kind, LayerIndex};

/// One layer's part in an image.
#[derive(Clone, Debug, Default, Serialize)]
pub struct LayerReport {
    pub index: usize,
    pub diff_id: String,
    /// The history line that made it (`created_by`), when the config has one.
    pub created_by: Option<String>,
    /// Bytes of file content the layer holds (each hard-link group once).
    pub size: u64,
    pub files: u64,
    pub added: u64,
    pub changed: u64,
    pub deleted: u64,
    pub added_bytes: u64,
    pub changed_bytes: u64,
    /// Bytes of this layer's files that later layers overwrite or delete.
    pub wasted: u64,
    /// The layer's own entries (for `--tree`), filled on request.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub changes: Vec<LayerChange>,
}

/// One entry of a layer, classified against the layers below it.
#[derive(Clone, Debug, Serialize)]
pub struct LayerChange {
    /// `A`, `C`, `D`, or ` ` for a directory only implied by its children.
    pub kind: char,
    pub path: String,
    pub size: u64,
    pub is_dir: bool,
}

/// A path dive counts as inefficient: seen in two or more layers.
#[derive(Clone, Debug, Serialize)]
pub struct Inefficiency {
    pub path: String,
    pub count: u32,
    pub cumulative: u64,
}

/// `image layers` for one image.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ImageReport {
    pub layers: Vec<LayerReport>,
    /// Bytes of all layers.
    pub total_size: u64,
    /// Bytes of all layers but the first (dive's "user" bytes).
    pub user_size: u64,
    /// dive's wasted bytes.
    pub wasted_bytes: u64,
    /// dive's wasted ÷ user bytes (0 when there are no user bytes).
    pub wasted_percent: f64,
    /// dive's efficiency score.
    pub efficiency: f64,
    /// Inefficient paths, most wasteful first.
    pub inefficient: Vec<Inefficiency>,
}

#[derive(Clone, Copy)]
struct Cur {
    layer: usize,
    size: u64,
    is_dir: bool,
}

#[derive(Default)]
struct Eff {
    count: u32,
    cumulative: u64,
    min: u64,
}

fn show(p: &[u8]) -> String {
    String::from_utf8_lossy(p).into_owned()
}

/// The end (exclusive) of the key range of everything below `dir` in a path map.
fn subtree_range(dir: &[u8]) -> (Vec<u8>, Vec<u8>) {
    let mut lo = dir.to_vec();
    let mut hi = dir.to_vec();
    if dir.is_empty() {
        return (Vec::new(), vec![0xff; 4097]);
    }
    lo.push(b'/');
    hi.push(b'/' + 1);
    (lo, hi)
}

/// Removes everything below `dir` (not `dir` itself), charging each file to its layer.
fn remove_subtree(state: &mut BTreeMap<Vec<u8>, Cur>, dir: &[u8], wasted: &mut [u64]) -> u64 {
    let (lo, hi) = subtree_range(dir);
    let keys: Vec<Vec<u8>> = state.range(lo..hi).map(|(k, _)| k.clone()).collect();
    let mut bytes = 0;
    for k in keys {
        if let Some(c) = state.remove(&k) {
            wasted[c.layer] += c.size;
            bytes += c.size;
        }
    }
    bytes
}

fn subtree_size(state: &BTreeMap<Vec<u8>, Cur>, dir: &[u8]) -> u64 {
    let (lo, hi) = subtree_range(dir);
    state.range(lo..hi).map(|(_, c)| c.size).sum()
}

/// Analyses `layers` (bottom first) with their history lines; `tree_of` asks for the entry
/// list of one layer.
pub fn analyze(
    layers: &[(Digest, LayerIndex)],
    created_by: &[Option<String>],
    tree_of: Option<usize>,
) -> ImageReport {
    let _s = tracing::info_span!("image_layers", layers = layers.len()).entered();
    let mut state: BTreeMap<Vec<u8>, Cur> = BTreeMap::new();
    let mut wasted = vec![0u64; layers.len()];
    let mut reports = Vec::with_capacity(layers.len());
    let mut eff: HashMap<Vec<u8>, Eff> = HashMap::new();
    let count_eff = |path: &[u8], size: u64, eff: &mut HashMap<Vec<u8>, Eff>| {
        let e = eff.entry(path.to_vec()).or_insert(Eff {
            count: 0,
            cumulative: 0,
            min: u64::MAX,
        });
        e.count += 1;
        e.cumulative += size;
        e.min = e.min.min(size);
    };
    for (i, (id, index)) in layers.iter().enumerate() {
        let mut r = LayerReport {
            index: i,
            diff_id: id.to_string(),
            created_by: created_by.get(i).cloned().flatten(),
            ..Default::default()
        };
        let want_tree = tree_of == Some(i);
        // Sizes as the tar has them: the first name of a hard-link group carries the data.
        let mut seen_files = HashSet::new();
        let size_of = |k: &Kind, seen: &mut HashSet<u32>| match k {
            Kind::File { size, file, .. } if seen.insert(*file) => *size,
            _ => 0,
        };
        let parents: HashSet<&[u8]> = index.entries.iter().filter_map(|e| e.parent()).collect();
        let mut first_name: HashMap<u32, usize> = HashMap::new();
        for (at, e) in index.entries.iter().enumerate() {
            if let Kind::File { file, .. } = e.kind {
                first_name.entry(file).or_insert(at);
            }
        }
        // dive's leaves, with the stacked tree below this layer for whiteout sizes.
        for (at, e) in index.entries.iter().enumerate() {
            let leaf = !e.kind.is_dir() || !parents.contains(e.path.as_slice());
            if !leaf || e.path.is_empty() {
                continue;
            }
            let size = match &e.kind {
                Kind::Whiteout => match state.get(&e.path) {
                    Some(c) if c.is_dir => subtree_size(&state, &e.path),
                    _ => 0,
                },
                // Tar order: the first name in index order carries the size.
                Kind::File { size, file, .. } if first_name.get(file) == Some(&at) => *size,
                _ => 0,
            };
            count_eff(&e.path, size, &mut eff);
        }
        // Deletions first: they hide what is below, not this layer's own entries.
        for e in &index.entries {
            match e.kind {
                Kind::Whiteout => {
                    if let Some(old) = state.remove(&e.path) {
                        wasted[old.layer] += old.size;
                        let sub = if old.is_dir {
                            remove_subtree(&mut state, &e.path, &mut wasted)
                        } else {
                            0
                        };
                        r.deleted += 1;
                        if want_tree {
                            r.changes.push(LayerChange {
                                kind: 'D',
                                path: show(&e.path),
                                size: old.size + sub,
                                is_dir: old.is_dir,
                            });
                        }
                    }
                }
                Kind::Dir { opaque: true, .. } => {
                    remove_subtree(&mut state, &e.path, &mut wasted);
                }
                _ => {}
            }
        }
        for e in &index.entries {
            if e.kind == Kind::Whiteout {
                continue;
            }
            let size = size_of(&e.kind, &mut seen_files);
            r.size += size;
            if matches!(e.kind, Kind::File { .. }) {
                r.files += 1;
            }
            let is_dir = e.kind.is_dir();
            if let Kind::Dir { implicit: true, .. } = e.kind {
                if !state.contains_key(&e.path) {
                    state.insert(
                        e.path.clone(),
                        Cur {
                            layer: i,
                            size: 0,
                            is_dir: true,
                        },
                    );
                }
                if want_tree && !e.path.is_empty() {
                    r.changes.push(LayerChange {
                        kind: ' ',
                        path: show(&e.path),
                        size: 0,
                        is_dir: true,
                    });
                }
                continue;
            }
            if e.path.is_empty() {
                continue;
            }
            let kind = match state.get(&e.path).copied() {
                Some(old) => {
                    wasted[old.layer] += old.size;
                    if old.is_dir && !is_dir {
                        remove_subtree(&mut state, &e.path, &mut wasted);
                    }
                    r.changed += 1;
                    r.changed_bytes += size;
                    'C'
                }
                None => {
                    r.added += 1;
                    r.added_bytes += size;
                    'A'
                }
            };
            state.insert(
                e.path.clone(),
                Cur {
                    layer: i,
                    size,
                    is_dir,
                },
            );
            if want_tree {
                r.changes.push(LayerChange {
                    kind,
                    path: show(&e.path),
                    size,
                    is_dir,
                });
            }
        }
        reports.push(r);
    }
    for (r, w) in reports.iter_mut().zip(&wasted) {
        r.wasted = *w;
    }
    let total_size: u64 = reports.iter().map(|r| r.size).sum();
    let user_size: u64 = reports.iter().skip(1).map(|r| r.size).sum();
    let (mut min_sum, mut all_sum) = (0u64, 0u64);
    let mut inefficient = Vec::new();
    let mut wasted_bytes = 0;
    for (path, e) in &eff {
        min_sum += e.min;
        all_sum += e.cumulative;
        if e.count >= 2 {
            wasted_bytes += e.cumulative;
            inefficient.push(Inefficiency {
                path: show(path),
                count: e.count,
                cumulative: e.cumulative,
            });
        }
    }
    inefficient.sort_by(|a, b| b.cumulative.cmp(&a.cumulative).then(a.path.cmp(&b.path)));
    ImageReport {
        layers: reports,
        total_size,
        user_size,
        wasted_bytes,
        wasted_percent: if user_size == 0 {
            0.0
        } else {
            wasted_bytes as f64 / user_size as f64
        },
        efficiency: if all_sum == 0 {
            1.0
        } else {
            min_sum as f64 / all_sum as f64
        },
        inefficient,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layer::fixtures::{dir, entry as e, file};

    #[test]
    fn overwrites_and_deletes_are_wasted_as_dive_counts_them() {
        let l0 = LayerIndex {
            entries: vec![
                dir(""),
                file("a", 1000, 0),
                file("b", 500, 1),
                dir("d"),
                file("d/x", 300, 2),
                file("keep", 7, 3),
            ],
            files: 4,
        };
        let l1 = LayerIndex {
            entries: vec![
                file("a", 200, 0),
                e("b", Kind::Whiteout),
                e("d", Kind::Whiteout),
                file("new", 5, 1),
            ],
            files: 2,
        };
        let layers = vec![(Digest::of(b"0"), l0), (Digest::of(b"1"), l1)];
        let r = analyze(&layers, &[], Some(1));
        assert_eq!(r.layers[0].wasted, 1000 + 500 + 300);
        assert_eq!(r.layers[1].wasted, 0);
        assert_eq!(
            (r.layers[1].added, r.layers[1].changed, r.layers[1].deleted),
            (1, 1, 2)
        );
        // dive: a = 1000 + 200, b = 500 + 0 (a deleted file counts 0).
        assert_eq!(r.wasted_bytes, 1700);
        // min: a 200, b 0, d 300 (whiteout of a dir), d/x 300, keep 7, new 5;
        // all: a 1200, b 500, d 300, d/x 300, keep 7, new 5.
        let want = (200.0 + 0.0 + 300.0 + 300.0 + 7.0 + 5.0)
            / (1200.0 + 500.0 + 300.0 + 300.0 + 7.0 + 5.0);
        assert!((r.efficiency - want).abs() < 1e-12, "{}", r.efficiency);
        assert_eq!(r.total_size, 1807 + 205);
        assert_eq!(r.user_size, 205);
        let kinds: Vec<(char, &str)> = r.layers[1]
            .changes
            .iter()
            .map(|c| (c.kind, c.path.as_str()))
            .collect();
        assert_eq!(kinds, [('D', "b"), ('D', "d"), ('C', "a"), ('A', "new")]);
    }
}

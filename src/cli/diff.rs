//! `diff`, `commit`, `export`, `save` and `image layers|diff|check`.

use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::{Args, Subcommand, ValueEnum};
use serde_json::json;

use crate::diff::{self, layers::ImageReport};
use crate::image::{CommitInfo, ImageConfig, ImageStore};
use crate::runtime::Runtime;

#[derive(Subcommand, Debug)]
pub enum DiffCommand {
    /// Show a container's changed files: A (added), C (changed), D (deleted), as Docker.
    Diff {
        /// Container name or ID.
        container: String,
        /// JSON, as Docker's API: [{"Path":…,"Kind":0|1|2}] (0 changed, 1 added, 2 deleted).
        #[arg(long)]
        json: bool,
    },
    /// Create a new image from a container's changes (a running one keeps running).
    Commit(CommitArgs),
    /// Write a container's file system as a tar archive.
    Export {
        /// Container name or ID.
        container: String,
        /// Output file (default: stdout).
        #[arg(short, long)]
        output: Option<PathBuf>,
    },
    /// Write an image as an archive Docker and Podman load.
    Save {
        /// Image: name, name:tag or ID.
        image: String,
        /// The archive to write.
        #[arg(short, long)]
        output: PathBuf,
        /// `docker-archive` (as `docker save`) or `oci-archive` (as `podman save --format
        /// oci-archive`).
        #[arg(long, value_enum, default_value_t = SaveFormat::DockerArchive)]
        format: SaveFormat,
    },
    /// Image analysis: layers, differences, CI checks.
    #[command(subcommand)]
    Image(ImageCommand),
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum SaveFormat {
    OciArchive,
    DockerArchive,
}

#[derive(Args, Debug)]
pub struct CommitArgs {
    /// Container name or ID.
    pub container: String,
    /// `name[:tag]` for the new image.
    pub reference: Option<String>,
    /// Apply a Dockerfile instruction: CMD, ENTRYPOINT, ENV, WORKDIR, USER, LABEL, EXPOSE.
    #[arg(short, long = "change")]
    pub change: Vec<String>,
    /// Commit message (the history comment).
    #[arg(short, long)]
    pub message: Option<String>,
    /// Author.
    #[arg(short, long)]
    pub author: Option<String>,
}

#[derive(Subcommand, Debug)]
pub enum ImageCommand {
    /// Per layer: files added, changed, deleted, bytes, wasted bytes; the efficiency score.
    Layers {
        /// Image: name, name:tag or ID.
        image: String,
        /// JSON output.
        #[arg(long)]
        json: bool,
        /// Show one layer's entries (0 = bottom).
        #[arg(long)]
        layer: Option<usize>,
        /// With --layer: as a tree.
        #[arg(long, requires = "layer")]
        tree: bool,
    },
    /// What differs between two images (content, size, mode, owner, link target, xattrs).
    Diff {
        /// The first image.
        a: String,
        /// The second image.
        b: String,
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// Fail (exit 1) when an image wastes too much: a CI gate.
    Check {
        /// Image: name, name:tag or ID.
        image: String,
        /// Most wasted bytes allowed (e.g. 20MB, 5MiB).
        #[arg(long)]
        max_wasted: Option<String>,
        /// Least efficiency score allowed (0..1).
        #[arg(long)]
        min_efficiency: Option<f64>,
        /// Most wasted bytes allowed, as a fraction of the non-base layers' bytes (0..1).
        #[arg(long)]
        max_wasted_percent: Option<f64>,
    },
}

pub fn dispatch(root: &Path, cmd: DiffCommand) -> anyhow::Result<i32> {
    match cmd {
        DiffCommand::Diff { container, json } => container_diff(root, &container, json),
        DiffCommand::Commit(a) => commit(root, a),
        DiffCommand::Export { container, output } => export(root, &container, output.as_deref()),
        DiffCommand::Save {
            image,
            output,
            format,
        } => save(root, &image, &output, format),
        DiffCommand::Image(ImageCommand::Layers {
            image,
            json,
            layer,
            tree,
        }) => layers(root, &image, json, layer, tree),
        DiffCommand::Image(ImageCommand::Diff { a, b, json }) => image_diff(root, &a, &b, json),
        DiffCommand::Image(ImageCommand::Check {
            image,
            max_wasted,
            min_efficiency,
            max_wasted_percent,
        }) => check(
            root,
            &image,
            max_wasted.as_deref(),
            min_efficiency,
            max_wasted_percent,
        ),
    }
}

fn container_diff(root: &Path, container: &str, json: bool) -> anyhow::Result<i32> {
    let rt = Runtime::open(root)?;
    let (changes, layer) = diff::open::container_changes_keep(&rt, container)?;
    let mut out = BufWriter::new(std::io::stdout().lock());
    if json {
        let v: Vec<_> = changes
            .iter()
            .map(|c| json!({"Path": c.display_path(), "Kind": c.kind as u8}))
            .collect();
        serde_json::to_writer_pretty(&mut out, &v)?;
        writeln!(out)?;
    } else {
        for c in &changes {
            writeln!(out, "{} {}", c.kind.letter(), c.display_path())?;
        }
    }
    out.flush()?;
    // The process ends now: freeing a big image's merged tree and shutting sled's threads
    // down would take longer than the diff (the lock goes with the process).
    std::mem::forget(layer);
    Ok(0)
}

/// Applies one `--change` instruction to a config.
fn apply_change(config: &mut ImageConfig, change: &str) -> anyhow::Result<()> {
    let change = change.trim();
    let (op, arg) = change
        .split_once(char::is_whitespace)
        .unwrap_or((change, ""));
    let arg = arg.trim();
    let list = |arg: &str| -> Vec<String> {
        if arg.starts_with('[')
            && let Ok(v) = serde_json::from_str::<Vec<String>>(arg)
        {
            return v;
        }
        vec!["/bin/sh".into(), "-c".into(), arg.into()]
    };
    let c = &mut config.config;
    match op.to_ascii_uppercase().as_str() {
        "CMD" => c.cmd = Some(list(arg)),
        "ENTRYPOINT" => c.entrypoint = Some(list(arg)),
        "WORKDIR" => c.working_dir = Some(arg.to_string()),
        "USER" => c.user = Some(arg.to_string()),
        "STOPSIGNAL" => c.stop_signal = Some(arg.to_string()),
        "ENV" => {
            let (k, v) = match arg.split_once('=') {
                Some((k, v)) => (k.trim(), v.trim()),
                None => arg.split_once(char::is_whitespace).unwrap_or((arg, "")),
            };
            if k.is_empty() {
                bail!("--change {change:?}: ENV needs NAME=VALUE");
            }
            c.env
                .retain(|e| e.split_once('=').map(|(n, _)| n) != Some(k));
            c.env.push(format!("{k}={}", v.trim()));
        }
        "LABEL" => {
            let Some((k, v)) = arg.split_once('=') else {
                bail!("--change {change:?}: LABEL needs KEY=VALUE");
            };
            c.labels
                .insert(k.trim().into(), v.trim().trim_matches('"').into());
        }
        "EXPOSE" => {
            for p in arg.split_whitespace() {
                let p = if p.contains('/') {
                    p.to_string()
                } else {
                    format!("{p}/tcp")
                };
                c.exposed_ports.insert(p, json!({}));
            }
        }
        other => bail!(
            "--change {other}: only CMD, ENTRYPOINT, ENV, WORKDIR, USER, LABEL, EXPOSE and STOPSIGNAL are supported"
        ),
    }
    Ok(())
}

fn commit(root: &Path, a: CommitArgs) -> anyhow::Result<i32> {
    let rt = Runtime::open(root)?;
    let store = ImageStore::open(root)?;
    let tmpdir = root.join("tmp");
    // `load-<pid>-` leftovers of a dead process are removed by the next ImageStore::open.
    let tmp = tempfile::Builder::new()
        .prefix(&format!("load-{}-commit-", std::process::id()))
        .suffix(".tar")
        .tempfile_in(&tmpdir)
        .with_context(|| format!("creating a temporary file in {}", tmpdir.display()))?;
    let mut w = BufWriter::new(tmp.as_file());
    let c = diff::open::container_tar(&rt, &a.container, false, &mut w)?;
    w.into_inner()
        .map_err(|e| e.into_error())
        .context("writing the layer")?;
    let base = store
        .resolve(&c.meta.image_id)
        .with_context(|| format!("the image of container {}", c.meta.name))?;
    let mut config = store.config(&base)?;
    for ch in &a.change {
        apply_change(&mut config, ch)?;
    }
    let cmd = c.spec.process.args.join(" ");
    let info = CommitInfo {
        author: a.author.clone(),
        comment: a.message.clone(),
        created_by: format!("strata commit {} ({cmd})", c.meta.name),
    };
    let img = store.commit_layer(&base, config, tmp.path(), &info, a.reference.as_deref())?;
    println!("{}", img.id);
    Ok(0)
}

fn export(root: &Path, container: &str, output: Option<&Path>) -> anyhow::Result<i32> {
    let rt = Runtime::open(root)?;
    match output {
        Some(p) => {
            let f =
                std::fs::File::create(p).with_context(|| format!("creating {}", p.display()))?;
            let mut w = BufWriter::new(f);
            diff::open::container_tar(&rt, container, true, &mut w)?;
            w.into_inner()
                .map_err(|e| e.into_error())
                .and_then(|f| f.sync_all())
                .with_context(|| format!("writing {}", p.display()))?;
        }
        None => {
            let mut w = BufWriter::new(std::io::stdout().lock());
            diff::open::container_tar(&rt, container, true, &mut w)?;
            w.flush()?;
        }
    }
    Ok(0)
}

fn save(root: &Path, image: &str, output: &Path, format: SaveFormat) -> anyhow::Result<i32> {
    let store = ImageStore::open(root)?;
    let img = store.resolve(image)?;
    let oci = matches!(format, SaveFormat::OciArchive);
    crate::image::save::save(&store, &img, image, output, oci)?;
    Ok(0)
}

/// Docker's human sizes: decimal units, 3 significant digits (`4.86MB`).
pub fn human(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["B", "kB", "MB", "GB", "TB", "PB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1000.0 && u < UNITS.len() - 1 {
        v /= 1000.0;
        u += 1;
    }
    if u == 0 {
        return format!("{bytes}B");
    }
    let digits = if v >= 100.0 {
        0
    } else if v >= 10.0 {
        1
    } else {
        2
    };
    let t = format!("{v:.digits$}");
    let t = if t.contains('.') {
        t.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        t
    };
    format!("{t}{}", UNITS[u])
}

/// `20MB`, `5MiB`, `1000`, `1.5GB` → bytes.
pub fn parse_size(s: &str) -> anyhow::Result<u64> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num
        .parse()
        .with_context(|| format!("{s:?} is not a size (e.g. 20MB, 5MiB)"))?;
    let mult: f64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" | "kb" => 1e3,
        "m" | "mb" => 1e6,
        "g" | "gb" => 1e9,
        "t" | "tb" => 1e12,
        "kib" => 1024.0,
        "mib" => 1024.0 * 1024.0,
        "gib" => 1024.0 * 1024.0 * 1024.0,
        other => bail!("unknown size unit {other:?} in {s:?}"),
    };
    Ok((n * mult).round() as u64)
}

fn report(root: &Path, image: &str, tree_of: Option<usize>) -> anyhow::Result<ImageReport> {
    let store = ImageStore::open(root)?;
    let img = store.resolve(image)?;
    let config = store.config(&img)?;
    let mut layers = Vec::with_capacity(img.layers.len());
    for id in &img.layers {
        layers.push((id.clone(), store.layers().index(id)?));
    }
    // History lines of the layers (skipping empty_layer entries), bottom first.
    let created_by: Vec<Option<String>> = config
        .history
        .iter()
        .filter(|h| !h.empty_layer)
        .map(|h| h.created_by.clone())
        .collect();
    if let Some(n) = tree_of
        && n >= layers.len()
    {
        bail!(
            "the image has {} layers (0..{})",
            layers.len(),
            layers.len() - 1
        );
    }
    Ok(diff::layers::analyze(&layers, &created_by, tree_of))
}

fn layers(
    root: &Path,
    image: &str,
    json: bool,
    layer: Option<usize>,
    tree: bool,
) -> anyhow::Result<i32> {
    let r = report(root, image, layer)?;
    let mut out = BufWriter::new(std::io::stdout().lock());
    if json {
        serde_json::to_writer_pretty(&mut out, &r)?;
        writeln!(out)?;
        out.flush()?;
        return Ok(0);
    }
    if let Some(n) = layer {
        let l = &r.layers[n];
        writeln!(
            out,
            "layer {n} {} {}",
            &l.diff_id,
            l.created_by.as_deref().unwrap_or("")
        )?;
        let mut sorted = l.changes.clone();
        sorted.sort_by(|a, b| a.path.split('/').cmp(b.path.split('/')));
        for c in &sorted {
            if tree {
                let depth = c.path.matches('/').count();
                let name = c.path.rsplit('/').next().unwrap_or(&c.path);
                let size = if c.is_dir {
                    String::new()
                } else {
                    format!("  {}", human(c.size))
                };
                writeln!(
                    out,
                    "{} {}{}{}{size}",
                    c.kind,
                    "  ".repeat(depth),
                    name,
                    if c.is_dir { "/" } else { "" }
                )?;
            } else if c.kind != ' ' {
                writeln!(out, "{} /{}  {}", c.kind, c.path, human(c.size))?;
            }
        }
        out.flush()?;
        return Ok(0);
    }
    writeln!(
        out,
        "{:<5} {:>9} {:>7} {:>7} {:>7} {:>9}  {:<19} CREATED BY",
        "LAYER", "SIZE", "ADDED", "CHANGED", "DELETED", "WASTED", "DIFF ID"
    )?;
    for l in &r.layers {
        let mut by = l.created_by.clone().unwrap_or_default().replace('\n', " ");
        if by.len() > 60 {
            let mut cut = 57;
            while !by.is_char_boundary(cut) {
                cut -= 1;
            }
            by.truncate(cut);
            by.push_str("...");
        }
        writeln!(
            out,
            "{:<5} {:>9} {:>7} {:>7} {:>7} {:>9}  {:<19} {by}",
            l.index,
            human(l.size),
            l.added,
            l.changed,
            l.deleted,
            human(l.wasted),
            &l.diff_id[..l.diff_id.len().min(19)],
        )?;
    }
    writeln!(out)?;
    writeln!(out, "Total size:        {}", human(r.total_size))?;
    writeln!(
        out,
        "Wasted (dive):     {} ({:.1}% of {} above the base layer)",
        human(r.wasted_bytes),
        r.wasted_percent * 100.0,
        human(r.user_size)
    )?;
    writeln!(out, "Efficiency (dive): {:.4}", r.efficiency)?;
    if !r.inefficient.is_empty() {
        writeln!(out, "\nCount  Wasted     Path")?;
        for i in r.inefficient.iter().take(20) {
            writeln!(
                out,
                "{:<6} {:<10} /{}",
                i.count,
                human(i.cumulative),
                i.path
            )?;
        }
    }
    out.flush()?;
    Ok(0)
}

fn image_diff(root: &Path, a: &str, b: &str, json: bool) -> anyhow::Result<i32> {
    let store = ImageStore::open(root)?;
    let load = |r: &str| -> anyhow::Result<_> {
        let img = store.resolve(r)?;
        let mut idx = Vec::new();
        let mut dirs = Vec::new();
        for id in &img.layers {
            idx.push(store.layers().index(id)?);
            dirs.push(store.layers().data_dir(id));
        }
        Ok((crate::fs::MergedTree::build(&idx), img.layers, dirs))
    };
    let (ta, la, da) = load(a)?;
    let (tb, lb, db) = load(b)?;
    let d = diff::image::diff(
        diff::image::Side {
            tree: &ta,
            layers: &la,
            data_dirs: &da,
        },
        diff::image::Side {
            tree: &tb,
            layers: &lb,
            data_dirs: &db,
        },
    )?;
    let mut out = BufWriter::new(std::io::stdout().lock());
    if json {
        serde_json::to_writer_pretty(&mut out, &d)?;
        writeln!(out)?;
    } else {
        let s = &d.summary;
        writeln!(out, "added:   {} ({})", s.added, human(s.added_bytes))?;
        writeln!(out, "removed: {} ({})", s.removed, human(s.removed_bytes))?;
        let delta = if s.changed_bytes_delta < 0 {
            format!("-{}", human(s.changed_bytes_delta.unsigned_abs()))
        } else {
            format!("+{}", human(s.changed_bytes_delta as u64))
        };
        writeln!(out, "changed: {} ({delta})", s.changed)?;
        writeln!(out)?;
        for e in &d.entries {
            let k = match e.kind {
                diff::image::Kind::Added => 'A',
                diff::image::Kind::Removed => 'D',
                diff::image::Kind::Changed => 'C',
            };
            if e.what.is_empty() {
                writeln!(out, "{k} {}", e.path)?;
            } else {
                writeln!(out, "{k} {}  ({})", e.path, e.what.join(", "))?;
            }
        }
    }
    out.flush()?;
    Ok(0)
}

fn check(
    root: &Path,
    image: &str,
    max_wasted: Option<&str>,
    min_efficiency: Option<f64>,
    max_wasted_percent: Option<f64>,
) -> anyhow::Result<i32> {
    let r = report(root, image, None)?;
    let mut failed = 0;
    let mut line = |ok: bool, what: String| {
        println!("{} {what}", if ok { "PASS" } else { "FAIL" });
        if !ok {
            failed += 1;
        }
    };
    if let Some(m) = max_wasted {
        let limit = parse_size(m)?;
        line(
            r.wasted_bytes <= limit,
            format!("wasted bytes {} ≤ {}", human(r.wasted_bytes), human(limit)),
        );
    }
    if let Some(m) = min_efficiency {
        line(
            r.efficiency >= m,
            format!("efficiency {:.4} ≥ {m}", r.efficiency),
        );
    }
    if let Some(m) = max_wasted_percent {
        line(
            r.wasted_percent <= m,
            format!("wasted fraction {:.4} ≤ {m}", r.wasted_percent),
        );
    }
    Ok(if failed > 0 { 1 } else { 0 })
}

//! Image verbs: `load`, `import`, `images`, `tag`, `rmi`, `inspect`.

use std::io::IsTerminal;
use std::path::Path;

use serde_json::json;

use crate::image::{ImageRecord, ImageStore};

fn progress() -> bool {
    std::io::stderr().is_terminal()
}

pub fn load(root: &Path, path: &Path, quiet: bool) -> anyhow::Result<i32> {
    let store = ImageStore::open(root)?;
    let loaded = store.load(path, progress())?;
    for rec in &loaded {
        if quiet {
            println!("{}", rec.id);
        } else if rec.tags.is_empty() {
            println!("Loaded image ID: {}", rec.id);
        } else {
            for tag in &rec.tags {
                println!("Loaded image: {tag}");
            }
        }
    }
    Ok(0)
}

pub fn import(root: &Path, tarball: &Path, reference: Option<&str>) -> anyhow::Result<i32> {
    let store = ImageStore::open(root)?;
    let rec = store.import(tarball, reference, progress())?;
    println!("{}", rec.id);
    Ok(0)
}

/// `(repository, tag)` rows of an image, `<none>` for an untagged one, as Docker prints.
fn rows(rec: &ImageRecord) -> Vec<(String, String)> {
    if rec.tags.is_empty() {
        return vec![("<none>".into(), "<none>".into())];
    }
    rec.tags
        .iter()
        .map(
            |t| match t.rsplit_once(':').filter(|(_, tag)| !tag.contains('/')) {
                Some((repo, tag)) => (repo.to_string(), tag.to_string()),
                None => (t.clone(), "latest".into()),
            },
        )
        .collect()
}

pub fn list(root: &Path, as_json: bool, quiet: bool) -> anyhow::Result<i32> {
    let store = ImageStore::open(root)?;
    let images = store.list()?;
    if as_json {
        let out: Vec<_> = images
            .iter()
            .map(|r| json!({"Id": r.id, "RepoTags": r.tags, "Created": r.created, "Size": r.size, "Layers": r.layers}))
            .collect();
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(0);
    }
    if quiet {
        for r in &images {
            println!("{}", r.id.short());
        }
        return Ok(0);
    }
    println!(
        "{:<40} {:<16} {:<14} {:<22} {:>10}",
        "REPOSITORY", "TAG", "IMAGE ID", "CREATED", "SIZE"
    );
    for r in &images {
        for (repo, tag) in rows(r) {
            println!(
                "{:<40} {:<16} {:<14} {:<22} {:>10}",
                repo,
                tag,
                r.id.short(),
                r.created
                    .as_deref()
                    .map(|c| format!("{} ago", crate::runtime::time::age(c)))
                    .unwrap_or_else(|| "-".into()),
                human_size(r.size)
            );
        }
    }
    Ok(0)
}

pub fn tag(root: &Path, source: &str, target: &str) -> anyhow::Result<i32> {
    ImageStore::open(root)?.tag(source, target)?;
    Ok(0)
}

pub fn rmi(root: &Path, images: &[String], force: bool) -> anyhow::Result<i32> {
    let store = ImageStore::open(root)?;
    // Containers made before layer users were recorded get their record now.
    if root.join("containers").is_dir() {
        crate::runtime::Runtime::open(root)?.record_layer_users()?;
    }
    let mut failed = 0;
    for reference in images {
        match store.remove(reference, force) {
            Ok(report) => {
                for t in &report.untagged {
                    println!("Untagged: {t}");
                }
                for d in &report.deleted {
                    println!("Deleted: {d}");
                }
                if !report.kept_for.is_empty() {
                    println!(
                        "Kept its layers while in use by: {}",
                        report.kept_for.join(", ")
                    );
                }
            }
            Err(e) if images.len() == 1 => return Err(e.into()),
            Err(e) => {
                eprintln!("strata: {e}");
                failed += 1;
            }
        }
    }
    if failed > 0 {
        anyhow::bail!("{failed} of {} failed", images.len());
    }
    Ok(0)
}

/// One image as `inspect` shows it.
pub fn inspect_json(root: &Path, reference: &str) -> anyhow::Result<serde_json::Value> {
    let store = ImageStore::open(root)?;
    let rec = store.resolve(reference)?;
    let config = store.config(&rec)?;
    Ok(json!({
        "Id": rec.id,
        "RepoTags": rec.tags,
        "Created": rec.created,
        "Size": rec.size,
        "Architecture": config.architecture,
        "Os": config.os,
        "Config": config.config,
        "History": config.history,
        "RootFS": {"Type": "layers", "Layers": rec.layers},
    }))
}

/// Sizes as Docker prints them: decimal units, three significant digits.
pub fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "kB", "MB", "GB", "TB"];
    let mut v = bytes as f64;
    let mut unit = 0;
    while v >= 1000.0 && unit < UNITS.len() - 1 {
        v /= 1000.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes}B")
    } else {
        format!("{v:.3}")
            .trim_end_matches('0')
            .trim_end_matches('.')
            .to_string()
            + UNITS[unit]
    }
}

#[cfg(test)]
mod tests {
    use super::human_size;

    #[test]
    fn sizes_like_docker() {
        assert_eq!(human_size(999), "999B");
        assert_eq!(human_size(4_500_000), "4.5MB");
        assert_eq!(human_size(1_000_000_000), "1GB");
    }
}

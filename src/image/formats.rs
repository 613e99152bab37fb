//! Reading an OCI image layout or a docker-archive into [`ImagePlan`]s: every piece of
//! metadata read, hashed against the digest that names it, then parsed. Layer blobs are only
//! located here; the store hashes them before extracting.

use std::io::Read;
use std::path::{Path, PathBuf};

use super::ImageError;
use super::archive::{Source, components};
use super::reference::Reference;
use super::spec::{
    self, Descriptor, DockerArchiveEntry, ImageConfig, ImageIndex, ImageManifest, OciDoc, OciLayout,
};
use crate::digest::Digest;

/// Largest JSON document (index, manifest, config, manifest.json) read into memory.
pub(crate) const MAX_JSON: u64 = 16 << 20;
/// Deepest nesting of indexes followed.
const MAX_INDEX_DEPTH: usize = 4;

/// One layer of an image to load.
#[derive(Clone, Debug)]
pub(crate) struct LayerPlan {
    pub diff_id: Digest,
    /// The blob on disk and its name in the archive (for messages).
    pub blob: PathBuf,
    pub blob_name: String,
    /// Digest and size the manifest gives the blob (none for a legacy `layer.tar`).
    pub blob_digest: Option<Digest>,
    pub blob_size: Option<u64>,
}

/// One image to load, its metadata verified.
#[derive(Clone, Debug)]
pub(crate) struct ImagePlan {
    pub id: Digest,
    pub config_bytes: Vec<u8>,
    pub config: ImageConfig,
    pub layers: Vec<LayerPlan>,
    pub tags: Vec<Reference>,
}

/// Recognises the layout of `src` and plans every image in it.
pub(crate) fn plan(src: &Source, input: &Path) -> Result<Vec<ImagePlan>, ImageError> {
    // `docker save` (25+) writes both an OCI layout and manifest.json; manifest.json is what
    // `docker load` reads, and it names only blobs that are really in the archive.
    if let Some(path) = src.resolve("manifest.json")? {
        return docker_archive(src, &path);
    }
    if let Some(path) = src.resolve("index.json")? {
        return oci_layout(src, &path, input);
    }
    Err(ImageError::UnknownFormat {
        path: input.display().to_string(),
        why: "it has neither index.json (OCI image layout) nor manifest.json (docker save)".into(),
    })
}

fn read_small(path: &Path, what: &str) -> Result<Vec<u8>, ImageError> {
    let f = std::fs::File::open(path).map_err(|e| ImageError::io(path, e))?;
    let mut buf = Vec::new();
    f.take(MAX_JSON + 1)
        .read_to_end(&mut buf)
        .map_err(|e| ImageError::io(path, e))?;
    if buf.len() as u64 > MAX_JSON {
        return Err(ImageError::invalid(what, "larger than 16 MiB"));
    }
    Ok(buf)
}

fn parse_json<T: serde::de::DeserializeOwned>(bytes: &[u8], what: &str) -> Result<T, ImageError> {
    serde_json::from_slice(bytes).map_err(|e| ImageError::invalid(what, e))
}

/// Parses an index or a manifest with oci-spec's types; one that fails as it is is read again
/// with Go's zero values for missing and `null` fields (see [`spec::fill_go_zero_values`]), and
/// when that fails too, the first error (it has the position) is the one reported.
fn parse_oci<T: serde::de::DeserializeOwned>(
    bytes: &[u8],
    what: &str,
    kind: OciDoc,
) -> Result<T, ImageError> {
    let first = match serde_json::from_slice(bytes) {
        Ok(doc) => return Ok(doc),
        Err(e) => e,
    };
    let Ok(mut value) = serde_json::from_slice::<serde_json::Value>(bytes) else {
        return Err(ImageError::invalid(what, first));
    };
    spec::fill_go_zero_values(&mut value, kind);
    serde_json::from_value(value).map_err(|_| ImageError::invalid(what, first))
}

fn parse_digest(s: &str, what: &str) -> Result<Digest, ImageError> {
    s.parse()
        .map_err(|e: crate::digest::BadDigest| ImageError::invalid(what, e))
}

fn blob_name(d: &Digest) -> String {
    format!("blobs/sha256/{}", d.hex())
}

/// Reads the blob a descriptor names, checking its size and digest before anyone parses it.
fn read_blob(src: &Source, desc: &Descriptor, what: &str) -> Result<(Digest, Vec<u8>), ImageError> {
    let digest = parse_digest(desc.digest().as_ref(), what)?;
    let name = blob_name(&digest);
    let path = src.require(&name, what)?;
    if desc.size() > MAX_JSON {
        return Err(ImageError::invalid(
            what,
            format!("declared size {} is larger than 16 MiB", desc.size()),
        ));
    }
    let bytes = read_small(&path, what)?;
    if bytes.len() as u64 != desc.size() {
        return Err(ImageError::SizeMismatch {
            what: what.to_string(),
            expected: desc.size(),
            actual: bytes.len() as u64,
        });
    }
    let actual = Digest::of(&bytes);
    if actual != digest {
        return Err(ImageError::DigestMismatch {
            what: what.to_string(),
            expected: digest,
            actual,
        });
    }
    Ok((digest, bytes))
}

fn parse_config(bytes: &[u8], what: &str) -> Result<ImageConfig, ImageError> {
    let config: ImageConfig = parse_json(bytes, what)?;
    if config.rootfs.kind != "layers" {
        return Err(ImageError::invalid(
            what,
            format!(
                "rootfs.type is {:?}, expected \"layers\"",
                config.rootfs.kind
            ),
        ));
    }
    Ok(config)
}

// ---------------------------------------------------------------------------------------------
// OCI image layout

fn oci_layout(src: &Source, index_path: &Path, input: &Path) -> Result<Vec<ImagePlan>, ImageError> {
    if let Some(p) = src.resolve("oci-layout")? {
        let layout: OciLayout = parse_json(&read_small(&p, "oci-layout")?, "oci-layout")?;
        if !layout.image_layout_version().starts_with("1.") {
            return Err(ImageError::invalid(
                "oci-layout",
                format!(
                    "image layout version {:?} (this strata reads 1.x)",
                    layout.image_layout_version()
                ),
            ));
        }
    }
    let index: ImageIndex = parse_oci(
        &read_small(index_path, "index.json")?,
        "index.json",
        OciDoc::Index,
    )?;
    check_index(&index, "index.json")?;
    let mut found = Vec::new();
    let mut skipped = Vec::new();
    walk_index(src, &index, "index.json", None, 0, &mut found, &mut skipped)?;
    if found.is_empty() {
        return Err(ImageError::NoMatchingPlatform {
            path: input.display().to_string(),
            platform: format!("linux/{}", spec::host_arch()),
            found: if skipped.is_empty() {
                "no images".into()
            } else {
                skipped.join(", ")
            },
        });
    }
    found
        .into_iter()
        .map(|(desc, tag)| oci_image(src, &desc, tag))
        .collect()
}

fn check_index(index: &ImageIndex, what: &str) -> Result<(), ImageError> {
    if index.schema_version() != 2 {
        return Err(ImageError::invalid(
            what,
            format!("schemaVersion {} (expected 2)", index.schema_version()),
        ));
    }
    if let Some(mt) = index.media_type()
        && !spec::is_index_type(mt)
    {
        return Err(ImageError::UnsupportedMediaType {
            what: what.to_string(),
            media_type: mt.to_string(),
        });
    }
    Ok(())
}

fn tag_of(desc: &Descriptor) -> Option<Reference> {
    [
        "io.containerd.image.name",
        "org.opencontainers.image.ref.name",
    ]
    .iter()
    .find_map(|k| {
        desc.annotations()
            .as_ref()
            .and_then(|a| a.get(*k))
            .and_then(|v| Reference::from_annotation(v))
    })
}

/// Whether a manifest's platform is one this host runs (no platform: yes).
fn platform_ok(desc: &Descriptor) -> Result<(), String> {
    match desc.platform() {
        None => Ok(()),
        Some(p)
            if p.os().to_string() == "linux"
                && p.architecture().to_string() == spec::host_arch() =>
        {
            Ok(())
        }
        Some(p) => Err(match p.variant() {
            Some(v) => format!("{}/{}/{v}", p.os(), p.architecture()),
            None => format!("{}/{}", p.os(), p.architecture()),
        }),
    }
}

fn walk_index(
    src: &Source,
    index: &ImageIndex,
    what: &str,
    inherited: Option<&Reference>,
    depth: usize,
    found: &mut Vec<(Descriptor, Option<Reference>)>,
    skipped: &mut Vec<String>,
) -> Result<(), ImageError> {
    for desc in index.manifests() {
        let tag = tag_of(desc).or_else(|| inherited.cloned());
        if let Err(p) = platform_ok(desc) {
            skipped.push(p);
            continue;
        }
        let mt = desc.media_type();
        if spec::is_manifest_type(mt) {
            found.push((desc.clone(), tag));
        } else if spec::is_index_type(mt) {
            if depth >= MAX_INDEX_DEPTH {
                return Err(ImageError::invalid(what, "indexes nested too deep"));
            }
            let inner_what = format!("index {}", desc.digest());
            let (_, bytes) = read_blob(src, desc, &inner_what)?;
            let inner: ImageIndex = parse_oci(&bytes, &inner_what, OciDoc::Index)?;
            check_index(&inner, &inner_what)?;
            if inner.media_type().as_ref().is_some_and(|m| m != mt) {
                return Err(ImageError::invalid(
                    inner_what,
                    "its mediaType differs from the descriptor's",
                ));
            }
            walk_index(
                src,
                &inner,
                &inner_what,
                tag.as_ref(),
                depth + 1,
                found,
                skipped,
            )?;
        } else {
            return Err(ImageError::UnsupportedMediaType {
                what: format!("{what}: manifest {}", desc.digest()),
                media_type: match mt.as_ref() {
                    "" => "(none)".into(),
                    mt => mt.to_string(),
                },
            });
        }
    }
    Ok(())
}

fn oci_image(
    src: &Source,
    desc: &Descriptor,
    tag: Option<Reference>,
) -> Result<ImagePlan, ImageError> {
    let what = format!("manifest {}", desc.digest());
    let (_, bytes) = read_blob(src, desc, &what)?;
    let manifest: ImageManifest = parse_oci(&bytes, &what, OciDoc::Manifest)?;
    if manifest.schema_version() != 2 {
        return Err(ImageError::invalid(
            &what,
            format!("schemaVersion {} (expected 2)", manifest.schema_version()),
        ));
    }
    if let Some(mt) = manifest.media_type()
        && mt != desc.media_type()
    {
        return Err(ImageError::invalid(
            &what,
            format!(
                "its mediaType {:?} differs from the descriptor's {:?}",
                mt.as_ref(),
                desc.media_type().as_ref()
            ),
        ));
    }
    let config_desc = manifest.config();
    if !spec::is_config_type(config_desc.media_type()) {
        return Err(ImageError::UnsupportedMediaType {
            what: format!("config of {what}"),
            media_type: config_desc.media_type().to_string(),
        });
    }
    let config_what = format!("image config {}", config_desc.digest());
    let (id, config_bytes) = read_blob(src, config_desc, &config_what)?;
    let config = parse_config(&config_bytes, &config_what)?;
    if manifest.layers().len() != config.rootfs.diff_ids.len() {
        return Err(ImageError::invalid(
            &what,
            format!(
                "{} layers, but its config lists {} diff_ids",
                manifest.layers().len(),
                config.rootfs.diff_ids.len()
            ),
        ));
    }
    let mut layers = Vec::with_capacity(manifest.layers().len());
    for (l, diff_id) in manifest.layers().iter().zip(&config.rootfs.diff_ids) {
        if !spec::is_layer_type(l.media_type()) {
            return Err(ImageError::UnsupportedMediaType {
                what: format!("layer {} of {what}", l.digest()),
                media_type: l.media_type().to_string(),
            });
        }
        let digest = parse_digest(l.digest().as_ref(), &format!("layer of {what}"))?;
        let name = blob_name(&digest);
        let blob = src.require(&name, &format!("layer blob {digest}"))?;
        layers.push(LayerPlan {
            diff_id: diff_id.clone(),
            blob,
            blob_name: name,
            blob_digest: Some(digest),
            blob_size: Some(l.size()),
        });
    }
    Ok(ImagePlan {
        id,
        config_bytes,
        config,
        layers,
        tags: tag.into_iter().collect(),
    })
}

// ---------------------------------------------------------------------------------------------
// docker-archive (`docker save`)

/// The digest a member name spells, for `blobs/sha256/<hex>` and legacy `<hex>.json` configs.
fn digest_in_name(name: &str) -> Option<Digest> {
    let comps = components(name).ok()?;
    let hex = match comps.as_slice() {
        ["blobs", "sha256", hex] => *hex,
        [file] => file.strip_suffix(".json")?,
        _ => return None,
    };
    format!("sha256:{hex}").parse().ok()
}

fn docker_archive(src: &Source, manifest_path: &Path) -> Result<Vec<ImagePlan>, ImageError> {
    let what = "manifest.json";
    let entries: Vec<DockerArchiveEntry> = parse_json(&read_small(manifest_path, what)?, what)?;
    if entries.is_empty() {
        return Err(ImageError::invalid(what, "it lists no images"));
    }
    let mut plans = Vec::with_capacity(entries.len());
    for entry in entries {
        let config_what = format!("image config {}", entry.config);
        let path = src.require(&entry.config, &config_what)?;
        let config_bytes = read_small(&path, &config_what)?;
        let id = Digest::of(&config_bytes);
        if let Some(expected) = digest_in_name(&entry.config)
            && expected != id
        {
            return Err(ImageError::DigestMismatch {
                what: config_what,
                expected,
                actual: id,
            });
        }
        let config = parse_config(&config_bytes, &config_what)?;
        if entry.layers.len() != config.rootfs.diff_ids.len() {
            return Err(ImageError::invalid(
                what,
                format!(
                    "image {} lists {} layers, but its config lists {} diff_ids",
                    entry.config,
                    entry.layers.len(),
                    config.rootfs.diff_ids.len()
                ),
            ));
        }
        let mut layers = Vec::with_capacity(entry.layers.len());
        for (name, diff_id) in entry.layers.iter().zip(&config.rootfs.diff_ids) {
            let blob = src.require(name, &format!("layer {name}"))?;
            let blob_digest = digest_in_name(name).filter(|_| !name.ends_with(".json"));
            layers.push(LayerPlan {
                diff_id: diff_id.clone(),
                blob,
                blob_name: name.clone(),
                blob_digest,
                blob_size: None,
            });
        }
        let tags = entry
            .repo_tags
            .iter()
            .map(|t| Reference::parse(t))
            .collect::<Result<Vec<_>, _>>()?;
        plans.push(ImagePlan {
            id,
            config_bytes,
            config,
            layers,
            tags,
        });
    }
    Ok(plans)
}

//! `save`: an image as a docker-archive (`docker load`, `podman load`) or an OCI archive.
//!
//! The store keeps layers extracted (data files plus an index), not their original tars, so
//! each layer tar is written again from its index: entries in index order (directories before
//! their children), whiteouts as `.wh.NAME`, opaque directories with `.wh..wh..opq`, second
//! names of a hard-link group as links to the first, ownership, modes, device numbers, PAX
//! mtimes with nanoseconds and `SCHILY.xattr.*`. The tar is canonical but not byte-identical
//! to the one loaded, so its digest (the diff_id) can differ from the original's: the saved
//! config then names the new diff_ids (and the saved image has a new id), exactly what a
//! loader verifies. Layers are uncompressed (blob digest = diff_id).

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;

use serde_json::json;
use sha2::{Digest as _, Sha256};

use super::spec::MediaType;
use super::{ImageError, ImageRecord, ImageStore};
use crate::digest::Digest;
use crate::layer::{Kind, LayerIndex, marker};

/// A writer that hashes what passes through.
struct Hashing<W> {
    inner: W,
    hash: Sha256,
    n: u64,
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hash.update(&buf[..n]);
        self.n += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// A byte path as a `Path` (names need not be UTF-8).
fn bp(p: &[u8]) -> &std::path::Path {
    use std::os::unix::ffi::OsStrExt;
    std::path::Path::new(std::ffi::OsStr::from_bytes(p))
}

fn show(p: &[u8]) -> String {
    String::from_utf8_lossy(p).into_owned()
}

fn join(parent: &[u8], name: &[u8]) -> Vec<u8> {
    let mut p = parent.to_vec();
    if !p.is_empty() {
        p.push(b'/');
    }
    p.extend_from_slice(name);
    p
}

/// Writes one layer's tar from its index and data files; returns its digest and size.
pub fn write_layer_tar(
    index: &LayerIndex,
    data: &Path,
    out: impl Write,
) -> std::io::Result<(Digest, u64)> {
    let mut b = tar::Builder::new(Hashing {
        inner: out,
        hash: Sha256::new(),
        n: 0,
    });
    let mut first: HashMap<u32, Vec<u8>> = HashMap::new();
    let empty = |b: &mut tar::Builder<_>, path: Vec<u8>| marker::append(b, bp(&path));
    for e in &index.entries {
        let (parent, name) = match e.parent() {
            Some(p) => (p, e.name()),
            None => (&b""[..], &b""[..]),
        };
        match &e.kind {
            Kind::Whiteout => {
                let mut wh = marker::WHITEOUT_PREFIX.to_vec();
                wh.extend_from_slice(name);
                empty(&mut b, join(parent, &wh))?;
                continue;
            }
            Kind::Dir {
                implicit: true,
                opaque,
            } => {
                if *opaque {
                    empty(&mut b, join(&e.path, marker::OPAQUE_MARKER))?;
                }
                continue;
            }
            Kind::Socket => continue,
            _ => {}
        }
        let mut h = tar::Header::new_gnu();
        h.set_mode(e.mode & 0o7777);
        h.set_uid(u64::from(e.uid));
        h.set_gid(u64::from(e.gid));
        h.set_mtime(e.mtime.max(0) as u64);
        h.set_size(0);
        let mut pax: Vec<(String, Vec<u8>)> = Vec::new();
        if e.mtime_nsec != 0 || e.mtime < 0 {
            let v = if e.mtime < 0 && e.mtime_nsec > 0 {
                format!("-{}.{:09}", -(e.mtime + 1), 1_000_000_000 - e.mtime_nsec)
            } else {
                format!("{}.{:09}", e.mtime, e.mtime_nsec)
            };
            pax.push(("mtime".into(), v.into_bytes()));
        }
        for (n, v) in &e.xattrs {
            pax.push((format!("SCHILY.xattr.{}", show(n)), v.clone()));
        }
        if let Kind::File { file, .. } = &e.kind
            && let Some(target) = first.get(file)
        {
            h.set_entry_type(tar::EntryType::Link);
            b.append_link(&mut h, bp(&e.path), bp(target))?;
            continue;
        }
        if !pax.is_empty() {
            b.append_pax_extensions(pax.iter().map(|(k, v)| (k.as_str(), v.as_slice())))?;
        }
        match &e.kind {
            Kind::Dir { opaque, .. } => {
                h.set_entry_type(tar::EntryType::Directory);
                let mut p = e.path.clone();
                if p.is_empty() {
                    p.extend_from_slice(b".");
                }
                p.push(b'/');
                b.append_data(&mut h, bp(&p), std::io::empty())?;
                if *opaque {
                    empty(&mut b, join(&e.path, marker::OPAQUE_MARKER))?;
                }
            }
            Kind::File { size, file, .. } => {
                first.insert(*file, e.path.clone());
                h.set_entry_type(tar::EntryType::Regular);
                h.set_size(*size);
                if *size == 0 {
                    b.append_data(&mut h, bp(&e.path), std::io::empty())?;
                } else {
                    let f = File::open(data.join(file.to_string()))?;
                    b.append_data(&mut h, bp(&e.path), std::io::Read::take(f, *size))?;
                }
            }
            Kind::Symlink { target } => {
                h.set_entry_type(tar::EntryType::Symlink);
                b.append_link(&mut h, bp(&e.path), bp(target))?;
            }
            Kind::Fifo | Kind::CharDev { .. } | Kind::BlockDev { .. } => {
                let (t, major, minor) = match &e.kind {
                    Kind::CharDev { major, minor } => (tar::EntryType::Char, *major, *minor),
                    Kind::BlockDev { major, minor } => (tar::EntryType::Block, *major, *minor),
                    _ => (tar::EntryType::Fifo, 0, 0),
                };
                h.set_entry_type(t);
                h.set_device_major(major)?;
                h.set_device_minor(minor)?;
                b.append_data(&mut h, bp(&e.path), std::io::empty())?;
            }
            Kind::Socket | Kind::Whiteout => {}
        }
    }
    let w = b.into_inner()?;
    let Hashing { mut inner, hash, n } = w;
    inner.flush()?;
    let digest: Digest = format!("sha256:{}", hex::encode(hash.finalize()))
        .parse()
        .map_err(|e| std::io::Error::other(format!("{e}")))?;
    Ok((digest, n))
}

fn add_file(b: &mut tar::Builder<impl Write>, name: &str, bytes: &[u8]) -> Result<(), ImageError> {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Regular);
    h.set_size(bytes.len() as u64);
    h.set_mode(0o644);
    h.set_mtime(0);
    b.append_data(&mut h, name, bytes)
        .map_err(|e| ImageError::io(Path::new(name), e))
}

/// Writes `img` to `output` as an OCI archive (`oci`) or a docker-archive. `asked` is the
/// reference the user gave (its tag is preferred in the archive).
pub fn save(
    store: &ImageStore,
    img: &ImageRecord,
    asked: &str,
    output: &Path,
    oci: bool,
) -> Result<(), ImageError> {
    let _s = tracing::info_span!("save", image = %img.id, oci).entered();
    let tmp = tempfile::Builder::new()
        .prefix(&format!("load-{}-save-", std::process::id()))
        .tempdir_in(store.root().join("tmp"))
        .map_err(|e| ImageError::io(store.root(), e))?;
    let mut blobs = Vec::new();
    for (i, id) in img.layers.iter().enumerate() {
        let index = store
            .layers()
            .index(id)
            .map_err(|e| ImageError::layer(id.to_string(), e))?;
        let p = tmp.path().join(format!("layer{i}.tar"));
        let f = File::create(&p).map_err(|e| ImageError::io(&p, e))?;
        let (digest, size) =
            write_layer_tar(&index, &store.layers().data_dir(id), BufWriter::new(f))
                .map_err(|e| ImageError::io(&p, e))?;
        tracing::debug!(layer = %id, new = %digest, "layer written");
        blobs.push((p, digest, size));
    }
    let mut config_bytes = store.config_bytes(img)?;
    let new_ids: Vec<Digest> = blobs.iter().map(|(_, d, _)| d.clone()).collect();
    if new_ids != img.layers {
        let mut v: serde_json::Value = serde_json::from_slice(&config_bytes)
            .map_err(|e| ImageError::Store(format!("image config: {e}")))?;
        v["rootfs"]["diff_ids"] = json!(new_ids.iter().map(|d| d.to_string()).collect::<Vec<_>>());
        config_bytes =
            serde_json::to_vec(&v).map_err(|e| ImageError::Store(format!("image config: {e}")))?;
    }
    let config_digest = Digest::of(&config_bytes);
    let tags: Vec<String> = match super::Reference::parse(asked) {
        Ok(r) if img.tags.contains(&r.to_string()) => vec![r.to_string()],
        _ => img.tags.clone(),
    };

    let out = File::create(output).map_err(|e| ImageError::io(output, e))?;
    let mut b = tar::Builder::new(BufWriter::new(out));
    if oci {
        add_file(&mut b, "oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#)?;
        add_file(
            &mut b,
            &format!("blobs/sha256/{}", config_digest.hex()),
            &config_bytes,
        )?;
        // Written as `json!` values (keys sorted: the same bytes every run) rather than with
        // oci-spec's types, whose annotations are a `HashMap`: index.json would come out in a
        // different order each time. `formats` reads them back with oci-spec's types.
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": MediaType::ImageManifest.as_ref(),
            "config": {"mediaType": MediaType::ImageConfig.as_ref(), "digest": config_digest.to_string(), "size": config_bytes.len()},
            "layers": blobs.iter().map(|(_, d, s)| json!({
                "mediaType": MediaType::ImageLayer.as_ref(),
                "digest": d.to_string(), "size": s})).collect::<Vec<_>>(),
        });
        let mbytes = serde_json::to_vec(&manifest)
            .map_err(|e| ImageError::Store(format!("manifest: {e}")))?;
        let mdigest = Digest::of(&mbytes);
        add_file(&mut b, &format!("blobs/sha256/{}", mdigest.hex()), &mbytes)?;
        for (p, d, _) in &blobs {
            b.append_path_with_name(p, format!("blobs/sha256/{}", d.hex()))
                .map_err(|e| ImageError::io(p, e))?;
        }
        let descs: Vec<serde_json::Value> = if tags.is_empty() {
            vec![
                json!({"mediaType": MediaType::ImageManifest.as_ref(), "digest": mdigest.to_string(), "size": mbytes.len()}),
            ]
        } else {
            tags.iter()
                .map(|t| json!({"mediaType": MediaType::ImageManifest.as_ref(), "digest": mdigest.to_string(),
                    "size": mbytes.len(),
                    "annotations": {"org.opencontainers.image.ref.name": t, "io.containerd.image.name": t}}))
                .collect()
        };
        let index = json!({"schemaVersion": 2, "mediaType": MediaType::ImageIndex.as_ref(), "manifests": descs});
        add_file(
            &mut b,
            "index.json",
            &serde_json::to_vec(&index).map_err(|e| ImageError::Store(format!("index: {e}")))?,
        )?;
    } else {
        add_file(
            &mut b,
            &format!("{}.json", config_digest.hex()),
            &config_bytes,
        )?;
        let mut names = Vec::new();
        for (p, d, _) in &blobs {
            let name = format!("{}/layer.tar", d.hex());
            b.append_path_with_name(p, &name)
                .map_err(|e| ImageError::io(p, e))?;
            names.push(name);
        }
        let manifest = json!([{
            "Config": format!("{}.json", config_digest.hex()),
            "RepoTags": tags,
            "Layers": names,
        }]);
        add_file(
            &mut b,
            "manifest.json",
            &serde_json::to_vec(&manifest)
                .map_err(|e| ImageError::Store(format!("manifest: {e}")))?,
        )?;
    }
    let w = b.into_inner().map_err(|e| ImageError::io(output, e))?;
    let f = w
        .into_inner()
        .map_err(|e| ImageError::io(output, e.into_error()))?;
    f.sync_all().map_err(|e| ImageError::io(output, e))?;
    Ok(())
}

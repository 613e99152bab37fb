//! Builders for layer tars, OCI layouts and docker-archives, made in memory with the `tar`
//! crate (raw headers where a test needs names or values `tar::Builder` would refuse), and a
//! snapshot of a state root to prove a failed operation changed nothing.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

use serde_json::{Value, json};
use strata::digest::Digest;
use tar::{EntryType, Header};

pub const MTIME: u64 = 1_700_000_000;

// ---------------------------------------------------------------------------------------------
// Tar streams

/// A tar stream written entry by entry, with raw control of names and header fields.
pub struct Tar {
    b: tar::Builder<Vec<u8>>,
}

impl Default for Tar {
    fn default() -> Self {
        Self::new()
    }
}

impl Tar {
    pub fn new() -> Self {
        Tar {
            b: tar::Builder::new(Vec::new()),
        }
    }

    /// A header with `name` and `link` copied byte for byte (each at most 100 bytes), then
    /// `tweak` applied, then the checksum.
    pub fn raw(
        &mut self,
        name: &[u8],
        kind: EntryType,
        data: &[u8],
        link: &[u8],
        tweak: impl FnOnce(&mut Header),
    ) -> &mut Self {
        let mut h = Header::new_ustar();
        h.set_entry_type(kind);
        h.set_mode(if kind == EntryType::Directory {
            0o755
        } else {
            0o644
        });
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(MTIME);
        h.set_size(data.len() as u64);
        let old = h.as_old_mut();
        old.name = [0; 100];
        old.name[..name.len()].copy_from_slice(name);
        old.linkname = [0; 100];
        old.linkname[..link.len()].copy_from_slice(link);
        tweak(&mut h);
        h.set_cksum();
        self.b.append(&h, data).expect("append to a Vec");
        self
    }

    pub fn file(&mut self, name: &str, data: &[u8]) -> &mut Self {
        self.raw(name.as_bytes(), EntryType::Regular, data, b"", |_| {})
    }

    pub fn dir(&mut self, name: &str) -> &mut Self {
        self.raw(name.as_bytes(), EntryType::Directory, b"", b"", |_| {})
    }

    pub fn symlink(&mut self, name: &str, target: &str) -> &mut Self {
        self.raw(
            name.as_bytes(),
            EntryType::Symlink,
            b"",
            target.as_bytes(),
            |_| {},
        )
    }

    pub fn hardlink(&mut self, name: &str, target: &str) -> &mut Self {
        self.raw(
            name.as_bytes(),
            EntryType::Link,
            b"",
            target.as_bytes(),
            |_| {},
        )
    }

    /// A PAX extended header for the next entry.
    pub fn pax(&mut self, records: &[(&str, &[u8])]) -> &mut Self {
        self.b
            .append_pax_extensions(records.iter().copied())
            .expect("append to a Vec");
        self
    }

    /// A file whose name is carried by a PAX `path` record.
    pub fn pax_file(&mut self, name: &str, data: &[u8]) -> &mut Self {
        self.pax(&[("path", name.as_bytes())]);
        let short: String = name.chars().take(99).collect();
        self.file(&short, data)
    }

    /// A file whose name is carried by a GNU `././@LongLink` entry.
    pub fn gnu_long_file(&mut self, name: &str, data: &[u8]) -> &mut Self {
        let mut long = name.as_bytes().to_vec();
        long.push(0);
        let mut h = Header::new_gnu();
        h.set_entry_type(EntryType::GNULongName);
        h.set_mode(0o644);
        h.set_mtime(0);
        h.set_size(long.len() as u64);
        h.as_old_mut().name[..13].copy_from_slice(b"././@LongLink");
        h.set_cksum();
        self.b.append(&h, &long[..]).expect("append to a Vec");
        let short: String = name.chars().take(99).collect();
        self.file(&short, data)
    }

    /// The stream with its two zero end blocks.
    pub fn finish(self) -> Vec<u8> {
        self.b.into_inner().expect("finish a Vec")
    }
}

pub fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

pub fn zstd(data: &[u8]) -> Vec<u8> {
    zstd::encode_all(data, 3).unwrap()
}

/// Pseudo-random bytes (compress poorly, so a flipped byte lands in real compressed data).
pub fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407)
        | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Layers and images

#[derive(Clone, Debug)]
pub struct Layer {
    /// The blob as stored in the archive.
    pub blob: Vec<u8>,
    /// sha256 of the uncompressed tar.
    pub diff_id: Digest,
    pub media_type: &'static str,
}

impl Layer {
    pub fn plain(tar: Vec<u8>) -> Self {
        Layer {
            diff_id: Digest::of(&tar),
            blob: tar,
            media_type: "application/vnd.oci.image.layer.v1.tar",
        }
    }
    pub fn gzip(tar: Vec<u8>) -> Self {
        Layer {
            diff_id: Digest::of(&tar),
            blob: gzip(&tar),
            media_type: "application/vnd.oci.image.layer.v1.tar+gzip",
        }
    }
    pub fn zstd(tar: Vec<u8>) -> Self {
        Layer {
            diff_id: Digest::of(&tar),
            blob: zstd(&tar),
            media_type: "application/vnd.oci.image.layer.v1.tar+zstd",
        }
    }
    pub fn digest(&self) -> Digest {
        Digest::of(&self.blob)
    }
}

/// A small layer with one file whose content depends on `seed`.
pub fn simple_layer(seed: &str) -> Layer {
    let mut t = Tar::new();
    t.dir("etc/").file(&format!("etc/{seed}"), seed.as_bytes());
    Layer::gzip(t.finish())
}

/// Deliberate breakage of an image's metadata.
#[derive(Clone, Debug, Default)]
pub struct Tweak {
    /// The manifest names this digest for layer 0 (and the blob is stored under it).
    pub layer0_digest: Option<Digest>,
    /// The config lists this diff_id for layer 0.
    pub layer0_diff_id: Option<Digest>,
    /// The manifest names this digest for the config (and the config is stored under it).
    pub config_digest: Option<Digest>,
    pub layer_media_type: Option<&'static str>,
}

pub fn config_json(label: &str, diff_ids: &[Digest]) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "created": "2024-01-02T03:04:05Z",
        "architecture": "amd64",
        "os": "linux",
        "config": {
            "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
            "Cmd": ["/bin/sh"],
            "WorkingDir": "/",
            "Labels": {"test.label": label},
            "ExposedPorts": {"80/tcp": {}},
        },
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": diff_ids.iter().map(|_| json!({"created_by": "test"})).collect::<Vec<_>>(),
    }))
    .unwrap()
}

/// The files of an OCI image layout (or docker-archive), in memory.
#[derive(Clone, Debug, Default)]
pub struct Files {
    pub files: BTreeMap<String, Vec<u8>>,
    /// Symlinks (name → target), for docker-archives.
    pub links: BTreeMap<String, String>,
}

impl Files {
    pub fn put(&mut self, name: &str, bytes: Vec<u8>) {
        self.files.insert(name.to_string(), bytes);
    }

    pub fn blob(&mut self, bytes: Vec<u8>) -> Digest {
        let d = Digest::of(&bytes);
        self.put(&format!("blobs/sha256/{}", d.hex()), bytes);
        d
    }

    pub fn blob_as(&mut self, d: &Digest, bytes: Vec<u8>) {
        self.put(&format!("blobs/sha256/{}", d.hex()), bytes);
    }

    pub fn write_dir(&self, dir: &Path) {
        for (name, bytes) in &self.files {
            let p = dir.join(name);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, bytes).unwrap();
        }
        for (name, target) in &self.links {
            let p = dir.join(name);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::os::unix::fs::symlink(target, p).unwrap();
        }
    }

    /// A tar of the files, every member name prefixed with `prefix` (`""` or `"./"`).
    pub fn to_tar(&self, prefix: &str) -> Vec<u8> {
        let mut t = Tar::new();
        let mut dirs = std::collections::BTreeSet::new();
        for name in self.files.keys().chain(self.links.keys()) {
            let mut acc = String::new();
            let comps: Vec<&str> = name.split('/').collect();
            for c in &comps[..comps.len() - 1] {
                acc.push_str(c);
                acc.push('/');
                if dirs.insert(acc.clone()) {
                    t.dir(&format!("{prefix}{acc}"));
                }
            }
        }
        for (name, bytes) in &self.files {
            let full = format!("{prefix}{name}");
            if full.len() > 99 {
                t.pax_file(&full, bytes);
            } else {
                t.file(&full, bytes);
            }
        }
        for (name, target) in &self.links {
            t.symlink(&format!("{prefix}{name}"), target);
        }
        t.finish()
    }

    pub fn write_tar(&self, path: &Path, prefix: &str) {
        std::fs::write(path, self.to_tar(prefix)).unwrap();
    }
}

/// An OCI image layout under construction.
#[derive(Clone, Debug, Default)]
pub struct Oci {
    pub files: Files,
    pub manifests: Vec<Value>,
}

impl Oci {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds the config, manifest and layer blobs of one image; returns (image id, manifest
    /// descriptor). The descriptor is also listed in index.json, annotated with `ref_name`.
    pub fn image(
        &mut self,
        label: &str,
        layers: &[Layer],
        ref_name: Option<&str>,
        t: &Tweak,
    ) -> (Digest, Value) {
        let desc = self.image_unlisted(label, layers, ref_name, t);
        self.manifests.push(desc.1.clone());
        desc
    }

    /// Like [`image`](Self::image) but not listed in index.json.
    pub fn image_unlisted(
        &mut self,
        label: &str,
        layers: &[Layer],
        ref_name: Option<&str>,
        t: &Tweak,
    ) -> (Digest, Value) {
        let mut diff_ids: Vec<Digest> = layers.iter().map(|l| l.diff_id.clone()).collect();
        if let Some(d) = &t.layer0_diff_id {
            diff_ids[0] = d.clone();
        }
        let config = config_json(label, &diff_ids);
        let config_len = config.len();
        let config_digest = match &t.config_digest {
            Some(d) => {
                self.files.blob_as(d, config);
                d.clone()
            }
            None => self.files.blob(config),
        };
        let mut layer_descs = Vec::new();
        for (i, l) in layers.iter().enumerate() {
            let digest = match (&t.layer0_digest, i) {
                (Some(d), 0) => {
                    self.files.blob_as(d, l.blob.clone());
                    d.clone()
                }
                _ => self.files.blob(l.blob.clone()),
            };
            layer_descs.push(json!({
                "mediaType": t.layer_media_type.unwrap_or(l.media_type),
                "digest": digest,
                "size": l.blob.len(),
            }));
        }
        let manifest = serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": config_digest,
                "size": config_len,
            },
            "layers": layer_descs,
        }))
        .unwrap();
        let len = manifest.len();
        let md = self.files.blob(manifest);
        let mut desc = json!({
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": md,
            "size": len,
        });
        if let Some(r) = ref_name {
            desc["annotations"] = json!({"org.opencontainers.image.ref.name": r});
        }
        (config_digest, desc)
    }

    /// Adds a nested index blob listing `manifests`; returns its descriptor.
    pub fn nested_index(&mut self, manifests: Vec<Value>) -> Value {
        let idx = serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": manifests,
        }))
        .unwrap();
        let len = idx.len();
        let d = self.files.blob(idx);
        json!({"mediaType": "application/vnd.oci.image.index.v1+json", "digest": d, "size": len})
    }

    /// The finished layout's files (index.json and oci-layout added).
    pub fn done(&self) -> Files {
        let mut f = self.files.clone();
        f.put("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec());
        f.put(
            "index.json",
            serde_json::to_vec(&json!({
                "schemaVersion": 2,
                "mediaType": "application/vnd.oci.image.index.v1+json",
                "manifests": self.manifests,
            }))
            .unwrap(),
        );
        f
    }
}

/// (label, uncompressed layer tars, RepoTags).
pub type LegacyImage<'a> = (&'a str, Vec<Vec<u8>>, Vec<&'a str>);

/// A legacy docker-archive (`<id>/layer.tar`, `<hex>.json`, manifest.json) of images, each
/// given as (label, uncompressed layer tars, RepoTags). A layer already saved by an earlier
/// image is stored as a symlink to the first copy, as `docker save` does.
pub fn docker_legacy(images: &[LegacyImage<'_>]) -> Files {
    let mut f = Files::default();
    let mut manifest = Vec::new();
    let mut saved: BTreeMap<Digest, String> = BTreeMap::new();
    for (n, (label, layers, tags)) in images.iter().enumerate() {
        let diff_ids: Vec<Digest> = layers.iter().map(|l| Digest::of(l)).collect();
        let config = config_json(label, &diff_ids);
        let id = Digest::of(&config);
        f.put(&format!("{}.json", id.hex()), config);
        let mut names = Vec::new();
        for (i, (tar, diff_id)) in layers.iter().zip(&diff_ids).enumerate() {
            let dir = Digest::of(format!("{n}-{i}-{diff_id}").as_bytes());
            let name = format!("{}/layer.tar", dir.hex());
            f.put(&format!("{}/VERSION", dir.hex()), b"1.0".to_vec());
            match saved.get(diff_id) {
                Some(first) => {
                    f.links.insert(name.clone(), format!("../{first}"));
                }
                None => {
                    f.put(&name, tar.clone());
                    saved.insert(diff_id.clone(), name.clone());
                }
            }
            names.push(name);
        }
        manifest.push(json!({
            "Config": format!("{}.json", id.hex()),
            "RepoTags": tags,
            "Layers": names,
        }));
    }
    f.put("manifest.json", serde_json::to_vec(&manifest).unwrap());
    f
}

// ---------------------------------------------------------------------------------------------
// State snapshots

/// Every path under `root` with its type and, for files, size and digest. Lock files (the
/// global `lock` and `layers/.locks/*`) are left out: taking a lock creates them.
pub fn snapshot(root: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, String>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap())
        .collect();
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let p = e.path();
        let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
        if rel == "lock" || rel.starts_with("layers/.locks/") {
            continue;
        }
        let ft = e.file_type().unwrap();
        if ft.is_dir() {
            out.insert(rel, "dir".into());
            walk(root, &p, out);
        } else if ft.is_symlink() {
            out.insert(
                rel,
                format!("symlink {:?}", std::fs::read_link(&p).unwrap()),
            );
        } else {
            let bytes = std::fs::read(&p).unwrap();
            out.insert(rel, format!("file {} {}", bytes.len(), Digest::of(&bytes)));
        }
    }
}

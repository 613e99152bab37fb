//! The image-spec types strata reads: the OCI index, manifest, descriptor and `oci-layout`
//! come from the `oci-spec` crate (youki's; they are Docker's schema2 shapes too, whose media
//! types parse as `MediaType::Other`); `docker save`'s `manifest.json` and the image
//! configuration are strata's own, below, each saying why.
//!
//! Never does: read files or check digests (`formats` does, before anything here parses).

use std::collections::BTreeMap;

pub use oci_spec::image::{Descriptor, ImageIndex, ImageManifest, MediaType, OciLayout};
use serde::{Deserialize, Deserializer, Serialize};

use crate::digest::Digest;

pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";

/// Docker's layer media types we can extract (compression is detected from the bytes anyway).
const DOCKER_LAYER_TYPES: &[&str] = &[
    "application/vnd.docker.image.rootfs.diff.tar",
    "application/vnd.docker.image.rootfs.diff.tar.gzip",
    "application/vnd.docker.image.rootfs.diff.tar.zstd",
    "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
];

/// A layer we can extract: the OCI layer types (plain, gzip, zstd, non-distributable) and
/// Docker's; not `+encrypted` and the like.
pub fn is_layer_type(media_type: &MediaType) -> bool {
    match media_type {
        MediaType::ImageLayer
        | MediaType::ImageLayerGzip
        | MediaType::ImageLayerZstd
        | MediaType::ImageLayerNonDistributable
        | MediaType::ImageLayerNonDistributableGzip
        | MediaType::ImageLayerNonDistributableZstd => true,
        MediaType::Other(m) => DOCKER_LAYER_TYPES.contains(&m.as_str()),
        _ => false,
    }
}

pub fn is_manifest_type(media_type: &MediaType) -> bool {
    match media_type {
        MediaType::ImageManifest => true,
        MediaType::Other(m) => m == DOCKER_MANIFEST,
        _ => false,
    }
}

pub fn is_index_type(media_type: &MediaType) -> bool {
    match media_type {
        MediaType::ImageIndex => true,
        MediaType::Other(m) => m == DOCKER_LIST,
        _ => false,
    }
}

pub fn is_config_type(media_type: &MediaType) -> bool {
    match media_type {
        MediaType::ImageConfig => true,
        MediaType::Other(m) => m == DOCKER_CONFIG,
        _ => false,
    }
}

/// Which list an OCI document holds: an index's `manifests` or a manifest's `layers`.
#[derive(Clone, Copy, Debug)]
pub enum OciDoc {
    Index,
    Manifest,
}

/// Fills in the zero values Go's `encoding/json` (what Docker, containerd and podman write and
/// read these documents with) gives a missing or `null` field, and that strata read them as
/// before it used oci-spec, whose types require them: `schemaVersion` 0, an empty `manifests`
/// or `layers` list, a descriptor's `mediaType` `""`, a platform's `os` and `architecture`
/// `""`. What follows then judges them as before: schemaVersion 0 is refused, an empty index
/// has no image for this host, a media type `""` is unsupported, a platform `"/amd64"` is
/// skipped. Anything not an object is left as it is (parsing then fails).
pub fn fill_go_zero_values(doc: &mut serde_json::Value, kind: OciDoc) {
    use serde_json::{Value, json};
    fn fill(obj: &mut serde_json::Map<String, Value>, key: &str, zero: Value) {
        match obj.get(key) {
            None | Some(Value::Null) => {
                obj.insert(key.to_string(), zero);
            }
            Some(_) => {}
        }
    }
    fn descriptor(d: &mut Value) {
        let Some(d) = d.as_object_mut() else { return };
        fill(d, "mediaType", json!(""));
        if let Some(Value::Object(p)) = d.get_mut("platform") {
            fill(p, "os", json!(""));
            fill(p, "architecture", json!(""));
        }
    }
    let Some(obj) = doc.as_object_mut() else {
        return;
    };
    fill(obj, "schemaVersion", json!(0));
    let list = match kind {
        OciDoc::Index => "manifests",
        OciDoc::Manifest => "layers",
    };
    fill(obj, list, json!([]));
    if let Some(Value::Array(items)) = obj.get_mut(list) {
        items.iter_mut().for_each(descriptor);
    }
    if let Some(config) = obj.get_mut("config") {
        descriptor(config);
    }
}

/// `null` in the JSON reads as the type's default (Docker writes `"Env": null` and the like).
fn null_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// Docker's `strslice`: a JSON array of strings, or one string (read as a one-element list).
fn str_slice<'de, D>(d: D) -> Result<Option<Vec<String>>, D::Error>
where
    D: Deserializer<'de>,
{
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(match Option::<OneOrMany>::deserialize(d)? {
        None => None,
        Some(OneOrMany::One(s)) => Some(vec![s]),
        Some(OneOrMany::Many(v)) => Some(v),
    })
}

/// One image of `docker save`'s `manifest.json`: Docker's own format, which the OCI specs
/// (and so `oci-spec`) do not describe.
#[derive(Clone, Debug, Deserialize)]
pub struct DockerArchiveEntry {
    #[serde(rename = "Config")]
    pub config: String,
    #[serde(rename = "RepoTags", default, deserialize_with = "null_default")]
    pub repo_tags: Vec<String>,
    #[serde(rename = "Layers", default, deserialize_with = "null_default")]
    pub layers: Vec<String>,
}

/// An image configuration (OCI image spec "config", identical in Docker's schema2).
///
/// Strata's own rather than `oci_spec::image::ImageConfiguration`, which does not fit:
/// - it reads what Docker accepts and `oci-spec` refuses (the test
///   `oci_spec_image_configuration_refuses_what_docker_accepts` pins it): `Cmd`/`Entrypoint`
///   as one string (Docker's `strslice`), `architecture`/`os` missing or `null` (old and
///   hand-made configs; `oci-spec` has no default for them), an `ExposedPorts`/`Volumes` entry
///   whose value is `null`;
/// - it writes deterministic JSON: `strata commit` serializes a config and the image id is
///   the digest of those bytes, while `oci-spec` keeps `Labels`, `ExposedPorts` and `Volumes`
///   in `HashMap`s whose order changes from run to run (a different id each commit);
/// - `rootfs.diff_ids` are checked `sha256:` digests when the config is read, not strings.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ImageConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub author: Option<String>,
    #[serde(default, deserialize_with = "null_default")]
    pub architecture: String,
    #[serde(default, deserialize_with = "null_default")]
    pub os: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
    /// The defaults for a container run from this image.
    #[serde(default, deserialize_with = "null_default")]
    pub config: ContainerConfig,
    pub rootfs: RootFs,
    #[serde(
        default,
        deserialize_with = "null_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub history: Vec<History>,
}

/// `config` of an image configuration: how to run it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ContainerConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// `"80/tcp": {}` entries.
    #[serde(
        default,
        deserialize_with = "null_default",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub exposed_ports: BTreeMap<String, serde_json::Value>,
    #[serde(
        default,
        deserialize_with = "null_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub env: Vec<String>,
    #[serde(
        default,
        deserialize_with = "str_slice",
        skip_serializing_if = "Option::is_none"
    )]
    pub entrypoint: Option<Vec<String>>,
    #[serde(
        default,
        deserialize_with = "str_slice",
        skip_serializing_if = "Option::is_none"
    )]
    pub cmd: Option<Vec<String>>,
    #[serde(
        default,
        deserialize_with = "null_default",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub volumes: BTreeMap<String, serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub working_dir: Option<String>,
    #[serde(
        default,
        deserialize_with = "null_default",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_signal: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RootFs {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default, deserialize_with = "null_default")]
    pub diff_ids: Vec<Digest>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct History {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_by: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub author: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub empty_layer: bool,
}

/// Docker's name for the host architecture (`amd64`, `arm64`, ...).
pub fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        "loongarch64" => "loong64",
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_config_with_nulls_and_string_cmd() {
        let j = br#"{"architecture":"amd64","os":"linux","config":{"Env":null,"Cmd":"sh -c true",
            "Entrypoint":null,"Labels":null,"ExposedPorts":{"80/tcp":{}},"WorkingDir":"/w",
            "User":"1:2","StopSignal":"SIGINT"},"rootfs":{"type":"layers","diff_ids":[]},
            "history":null,"container_config":{"Hostname":"x"}}"#;
        let c: ImageConfig = serde_json::from_slice(j).unwrap();
        assert_eq!(c.config.cmd, Some(vec!["sh -c true".to_string()]));
        assert_eq!(c.config.entrypoint, None);
        assert!(c.config.env.is_empty());
        assert!(c.config.exposed_ports.contains_key("80/tcp"));
        assert_eq!(c.config.working_dir.as_deref(), Some("/w"));
        let c2: ImageConfig = serde_json::from_slice(&serde_json::to_vec(&c).unwrap()).unwrap();
        assert_eq!(c, c2);
    }

    #[test]
    fn config_null_reads_as_empty() {
        let j = br#"{"config":null,"rootfs":{"type":"layers","diff_ids":null}}"#;
        let c: ImageConfig = serde_json::from_slice(j).unwrap();
        assert_eq!(c.config, ContainerConfig::default());
    }

    /// What podman 4.3 and buildah write (`podman push oci:`, `buildah manifest push --all`,
    /// with and without `--format v2s2`), read with oci-spec's types.
    #[test]
    fn oci_spec_reads_what_podman_and_buildah_write() {
        let podman_index = br#"{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:a11d452627980ea313b57f284774e810ceac875414400df0eb62111b42a71098","size":870,"annotations":{"org.opencontainers.image.ref.name":"localhost/compat:1"}}]}"#;
        let i: ImageIndex = serde_json::from_slice(podman_index).unwrap();
        assert!(is_manifest_type(i.manifests()[0].media_type()));
        assert_eq!(i.manifests()[0].size(), 870);
        let nested = br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:a11d452627980ea313b57f284774e810ceac875414400df0eb62111b42a71098","size":870,"platform":{"architecture":"amd64","os":"linux"}}]}"#;
        let i: ImageIndex = serde_json::from_slice(nested).unwrap();
        assert!(i.media_type().as_ref().is_some_and(is_index_type));
        let p = i.manifests()[0].platform().as_ref().unwrap();
        assert_eq!(
            (p.os().to_string(), p.architecture().to_string()),
            ("linux".into(), "amd64".into())
        );
        let docker_list = br#"{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.list.v2+json","manifests":[{"mediaType":"application/vnd.docker.distribution.manifest.v2+json","size":910,"digest":"sha256:f18211b4398cb60621032a8b26d5bfbedce827c399b7c33e17df1fe3ce31cabc","platform":{"architecture":"amd64","os":"linux"}}]}"#;
        let i: ImageIndex = serde_json::from_slice(docker_list).unwrap();
        assert!(i.media_type().as_ref().is_some_and(is_index_type));
        assert!(is_manifest_type(i.manifests()[0].media_type()));
        let docker_manifest = br#"{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.v2+json","config":{"mediaType":"application/vnd.docker.container.image.v1+json","size":342,"digest":"sha256:bd419818da924d09156b7d0d3d63e3722da8c6aef7556116d2fe6c834321dc7c"},"layers":[{"mediaType":"application/vnd.docker.image.rootfs.diff.tar.gzip","size":34,"digest":"sha256:bd9ddc54bea929a22b334e73e026d4136e5b73f5cc29942896c72e4ece69b13d"}]}"#;
        let m: ImageManifest = serde_json::from_slice(docker_manifest).unwrap();
        assert!(is_config_type(m.config().media_type()));
        assert!(is_layer_type(m.layers()[0].media_type()));
        assert!(!is_layer_type(&MediaType::from(
            "application/vnd.oci.image.layer.v1.tar+gzip+encrypted"
        )));
    }

    #[test]
    fn go_zero_values_are_filled_in_where_oci_spec_requires_fields() {
        let mut v = serde_json::json!({"manifests": [
            {"digest": "sha256:a11d452627980ea313b57f284774e810ceac875414400df0eb62111b42a71098",
             "size": 1, "platform": {"architecture": "amd64"}}]});
        assert!(serde_json::from_value::<ImageIndex>(v.clone()).is_err());
        fill_go_zero_values(&mut v, OciDoc::Index);
        let i: ImageIndex = serde_json::from_value(v).unwrap();
        assert_eq!(i.schema_version(), 0);
        assert_eq!(i.manifests()[0].media_type().as_ref(), "");
        let p = i.manifests()[0].platform().as_ref().unwrap();
        assert_eq!(p.os().to_string(), "");

        let mut v = serde_json::json!({"schemaVersion": 2, "layers": null, "config": {
            "digest": "sha256:bd419818da924d09156b7d0d3d63e3722da8c6aef7556116d2fe6c834321dc7c",
            "size": 2}});
        assert!(serde_json::from_value::<ImageManifest>(v.clone()).is_err());
        fill_go_zero_values(&mut v, OciDoc::Manifest);
        let m: ImageManifest = serde_json::from_value(v).unwrap();
        assert!(m.layers().is_empty());
        assert_eq!(m.config().media_type().as_ref(), "");
    }

    /// Why [`ImageConfig`] is not oci-spec's: configs Docker accepts that it refuses.
    #[test]
    fn oci_spec_image_configuration_refuses_what_docker_accepts() {
        use oci_spec::image::ImageConfiguration;
        let string_cmd = br#"{"architecture":"amd64","os":"linux","config":{"Cmd":"sh -c true"},"rootfs":{"type":"layers","diff_ids":[]}}"#;
        let no_arch = br#"{"config":{"Cmd":["sh"]},"rootfs":{"type":"layers","diff_ids":[]}}"#;
        let null_port = br#"{"architecture":"amd64","os":"linux","config":{"ExposedPorts":{"80/tcp":null}},"rootfs":{"type":"layers","diff_ids":[]}}"#;
        for doc in [&string_cmd[..], no_arch, null_port] {
            assert!(serde_json::from_slice::<ImageConfiguration>(doc).is_err());
            serde_json::from_slice::<ImageConfig>(doc).unwrap();
        }
    }
}

//! Hostile inputs, one test each: the load fails with a clear error and the state root is
//! exactly as before (compared file by file, lock files aside), nothing is written outside it.

mod image_support;

use std::path::{Path, PathBuf};

use image_support::*;
use serde_json::json;
use strata::digest::Digest;
use strata::image::{ImageError, ImageStore};
use tar::EntryType;

struct Env {
    dir: tempfile::TempDir,
    store: ImageStore,
}

impl Env {
    /// A store that already holds one image, so "unchanged" is not trivially "empty".
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let store = ImageStore::open(&dir.path().join("root")).unwrap();
        let mut oci = Oci::new();
        oci.image(
            "base",
            &[simple_layer("base")],
            Some("base:1"),
            &Tweak::default(),
        );
        let p = dir.path().join("base");
        oci.done().write_dir(&p);
        store.load(&p, false).unwrap();
        Env { dir, store }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Loads `input`; asserts it fails with a message containing one of `expect` (ignoring
    /// case) and that the state root did not change.
    fn reject(&self, input: &Path, expect: &[&str]) -> ImageError {
        let before = snapshot(self.store.root());
        let e = self
            .store
            .load(input, false)
            .expect_err("hostile input was accepted");
        eprintln!("REJECTED: {e}");
        let msg = e.to_string().to_lowercase();
        assert!(
            expect.iter().any(|x| msg.contains(&x.to_lowercase())),
            "error {e:?} ({e}) does not mention any of {expect:?}"
        );
        assert_eq!(
            snapshot(self.store.root()),
            before,
            "the store changed ({e})"
        );
        // And it is still usable.
        assert_eq!(self.store.resolve("base:1").unwrap().tags, vec!["base:1"]);
        e
    }

    /// An OCI layout with one image whose only layer is `blob` (as given, any compression).
    fn layout_with_layer(&self, name: &str, layer: Layer, tweak: &Tweak) -> PathBuf {
        let mut oci = Oci::new();
        oci.image(name, &[layer], Some("hostile:1"), tweak);
        let p = self.path(name);
        oci.done().write_dir(&p);
        p
    }

    fn reject_layer_tar(&self, name: &str, tar: Vec<u8>, expect: &[&str]) -> ImageError {
        let p = self.layout_with_layer(name, Layer::gzip(tar), &Tweak::default());
        self.reject(&p, expect)
    }
}

// ---------------------------------------------------------------------------------------------
// Hostile layer entries

#[test]
fn dotdot_in_a_member_name() {
    let env = Env::new();
    let mut t = Tar::new();
    t.file("ok", b"x").file("a/../../../escaped", b"evil");
    let e = env.reject_layer_tar("dotdot", t.finish(), &["escapes the layer with '..'"]);
    assert!(e.to_string().contains("a/../../../escaped"), "{e}");
    assert!(!env.dir.path().join("escaped").exists());
}

#[test]
fn absolute_member_name() {
    let env = Env::new();
    let target = env.path("abs-target");
    let mut t = Tar::new();
    t.file(target.to_str().unwrap(), b"evil");
    env.reject_layer_tar("abs", t.finish(), &["absolute path"]);
    assert!(!target.exists());
}

#[test]
fn symlink_then_a_file_written_through_it() {
    let env = Env::new();
    let outside = env.path("outside");
    std::fs::create_dir(&outside).unwrap();
    let mut t = Tar::new();
    t.symlink("evil", outside.to_str().unwrap())
        .file("evil/file", b"pwned");
    env.reject_layer_tar(
        "symlink",
        t.finish(),
        &["is a symlink in this layer, not a directory"],
    );
    assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 0);
}

#[test]
fn hard_link_outside_the_layer() {
    let env = Env::new();
    let mut t = Tar::new();
    t.file("x", b"x").hardlink("passwd", "../../etc/passwd");
    env.reject_layer_tar(
        "hl-out",
        t.finish(),
        &["hard link to \"../../etc/passwd\", outside the layer"],
    );
}

#[test]
fn hard_link_to_a_missing_path() {
    let env = Env::new();
    let mut t = Tar::new();
    t.file("x", b"x").hardlink("h", "not/here");
    env.reject_layer_tar("hl-missing", t.finish(), &["which is not in this layer"]);
}

#[test]
fn duplicate_entry_that_changes_type() {
    let env = Env::new();
    let mut t = Tar::new();
    t.file("thing", b"a file first").dir("thing/");
    env.reject_layer_tar(
        "dup",
        t.finish(),
        &["duplicate entry changes type from regular file to directory"],
    );
}

#[test]
fn declared_size_larger_than_the_data() {
    let env = Env::new();
    let mut t = Tar::new();
    t.file("first", b"1");
    t.raw(b"big", EntryType::Regular, &[7u8; 100], b"", |h| {
        h.set_size(10_000)
    });
    // Cut the stream right after the 100 bytes (and their padding).
    let mut tar = t.finish();
    tar.truncate(512 * 2 + 512 + 512);
    env.reject_layer_tar("short", tar, &["declared size 10000 but the archive holds"]);
}

#[test]
fn uid_of_2_pow_40_via_pax() {
    let env = Env::new();
    let mut t = Tar::new();
    t.pax(&[("uid", b"1099511627776")]).file("owned", b"x");
    env.reject_layer_tar("uid", t.finish(), &["owner 1099511627776:0 out of range"]);
}

#[test]
fn device_major_of_2_pow_20() {
    let env = Env::new();
    let mut t = Tar::new();
    t.raw(b"dev/evil", EntryType::Char, b"", b"", |h| {
        h.set_device_major(1 << 20).unwrap();
        h.set_device_minor(1).unwrap();
    });
    env.reject_layer_tar(
        "devmajor",
        t.finish(),
        &["device number 1048576:1 out of range"],
    );
}

#[test]
fn file_size_of_2_pow_50_in_base_256() {
    let env = Env::new();
    let mut t = Tar::new();
    t.raw(b"huge", EntryType::Regular, b"", b"", |h| {
        let size = &mut h.as_old_mut().size;
        *size = [0; 12];
        size[0] = 0x80;
        size[4..].copy_from_slice(&(1u64 << 50).to_be_bytes());
    });
    env.reject_layer_tar(
        "size",
        t.finish(),
        &["declared size 1125899906842624 is absurd"],
    );
}

// ---------------------------------------------------------------------------------------------
// Digests

#[test]
fn layer_blob_digest_mismatch() {
    let env = Env::new();
    let wrong = Digest::of(b"something else");
    let p = env.layout_with_layer(
        "blobdigest",
        simple_layer("x"),
        &Tweak {
            layer0_digest: Some(wrong.clone()),
            ..Default::default()
        },
    );
    let e = env.reject(&p, &["does not match its digest"]);
    assert!(matches!(e, ImageError::DigestMismatch { .. }), "{e}");
    assert!(
        e.to_string()
            .contains(&format!("layer blob blobs/sha256/{}", wrong.hex())),
        "{e}"
    );
}

#[test]
fn diff_id_mismatch() {
    let env = Env::new();
    let p = env.layout_with_layer(
        "diffid",
        simple_layer("x"),
        &Tweak {
            layer0_diff_id: Some(Digest::of(b"not the tar")),
            ..Default::default()
        },
    );
    let e = env.reject(&p, &["diff_id"]);
    assert!(matches!(e, ImageError::DigestMismatch { .. }), "{e}");
}

#[test]
fn diff_id_mismatch_in_a_legacy_docker_archive() {
    let env = Env::new();
    let mut t = Tar::new();
    t.file("x", b"x");
    let mut files = docker_legacy(&[("legacy", vec![t.finish()], vec!["legacy:1"])]);
    // Swap the layer's content for another tar: the config's diff_id no longer matches.
    let name = files
        .files
        .keys()
        .find(|k| k.ends_with("/layer.tar"))
        .unwrap()
        .clone();
    let mut other = Tar::new();
    other.file("y", b"y");
    files.put(&name, other.finish());
    let p = env.path("legacy.tar");
    files.write_tar(&p, "");
    env.reject(&p, &["diff_id"]);
}

#[test]
fn config_digest_mismatch() {
    let env = Env::new();
    let p = env.layout_with_layer(
        "configdigest",
        simple_layer("x"),
        &Tweak {
            config_digest: Some(Digest::of(b"another config")),
            ..Default::default()
        },
    );
    let e = env.reject(&p, &["image config"]);
    assert!(matches!(e, ImageError::DigestMismatch { .. }), "{e}");
}

#[test]
fn config_digest_mismatch_in_a_docker_archive() {
    let env = Env::new();
    let mut t = Tar::new();
    t.file("x", b"x");
    let mut files = docker_legacy(&[("cfg", vec![t.finish()], vec!["cfg:1"])]);
    let name = files
        .files
        .keys()
        .find(|k| k.ends_with(".json") && *k != "manifest.json")
        .unwrap()
        .clone();
    let mut cfg = files.files[&name].clone();
    cfg.extend_from_slice(b" ");
    files.put(&name, cfg);
    let p = env.path("cfg.tar");
    files.write_tar(&p, "");
    env.reject(&p, &["does not match its digest"]);
}

// ---------------------------------------------------------------------------------------------
// Broken compression (the blob digest is right: the blob itself is broken)

fn layer_of(blob: Vec<u8>, tar: &[u8], media_type: &'static str) -> Layer {
    Layer {
        blob,
        diff_id: Digest::of(tar),
        media_type,
    }
}

fn payload() -> Vec<u8> {
    let mut t = Tar::new();
    t.file("a", &noise(200_000, 1))
        .file("b", &noise(200_000, 2));
    t.finish()
}

#[test]
fn truncated_gzip_stream() {
    let env = Env::new();
    let tar = payload();
    let mut gz = gzip(&tar);
    gz.truncate(gz.len() / 2);
    let p = env.layout_with_layer(
        "gz-trunc",
        layer_of(gz, &tar, "application/vnd.oci.image.layer.v1.tar+gzip"),
        &Tweak::default(),
    );
    env.reject(
        &p,
        &["corrupt layer archive: reading \"a\": incomplete deflate stream"],
    );
}

#[test]
fn corrupt_gzip_stream() {
    let env = Env::new();
    let tar = payload();
    let mut gz = gzip(&tar);
    let mid = gz.len() / 2;
    for b in &mut gz[mid..mid + 16] {
        *b ^= 0x5a;
    }
    let p = env.layout_with_layer(
        "gz-corrupt",
        layer_of(gz, &tar, "application/vnd.oci.image.layer.v1.tar+gzip"),
        &Tweak::default(),
    );
    env.reject(&p, &["corrupt", "invalid", "checksum", "diff_id"]);
}

#[test]
fn truncated_zstd_stream() {
    let env = Env::new();
    let tar = payload();
    let mut z = zstd(&tar);
    z.truncate(z.len() / 2);
    let p = env.layout_with_layer(
        "zst-trunc",
        layer_of(z, &tar, "application/vnd.oci.image.layer.v1.tar+zstd"),
        &Tweak::default(),
    );
    env.reject(&p, &["corrupt layer archive", "incomplete frame"]);
}

#[test]
fn corrupt_zstd_stream() {
    let env = Env::new();
    let tar = payload();
    let mut z = zstd(&tar);
    let mid = z.len() / 2;
    for b in &mut z[mid..mid + 16] {
        *b ^= 0x5a;
    }
    let p = env.layout_with_layer(
        "zst-corrupt",
        layer_of(z, &tar, "application/vnd.oci.image.layer.v1.tar+zstd"),
        &Tweak::default(),
    );
    env.reject(&p, &["corrupt", "checksum", "diff_id"]);
}

// ---------------------------------------------------------------------------------------------
// Hostile outer archives

#[test]
fn docker_archive_manifest_names_a_path_outside() {
    let env = Env::new();
    let mut t = Tar::new();
    t.file("x", b"x");
    let mut files = docker_legacy(&[("out", vec![t.finish()], vec!["out:1"])]);
    let mut manifest: serde_json::Value =
        serde_json::from_slice(&files.files["manifest.json"]).unwrap();
    manifest[0]["Layers"] = json!(["../../etc/passwd"]);
    files.put("manifest.json", serde_json::to_vec(&manifest).unwrap());
    for form in ["tar", "dir"] {
        let p = env.path(&format!("outside-{form}"));
        if form == "tar" {
            files.write_tar(&p, "");
        } else {
            files.write_dir(&p);
        }
        let e = env.reject(&p, &["escapes the archive"]);
        assert!(e.to_string().contains("../../etc/passwd"), "{e}");
    }
}

#[test]
fn archive_member_with_dotdot() {
    let env = Env::new();
    let mut oci = Oci::new();
    oci.image("m", &[simple_layer("m")], Some("m:1"), &Tweak::default());
    let mut tar = Tar::new();
    tar.file("../../escaped-member", b"evil");
    // The good layout follows; the bad member must stop everything.
    let mut bytes = tar.finish();
    bytes.truncate(bytes.len() - 1024);
    bytes.extend(oci.done().to_tar(""));
    let p = env.path("member.tar");
    std::fs::write(&p, bytes).unwrap();
    env.reject(&p, &["escapes the archive with '..'"]);
    assert!(!env.dir.path().join("escaped-member").exists());
    assert!(!env.store.root().join("escaped-member").exists());
}

#[test]
fn archive_member_written_through_a_symlink() {
    let env = Env::new();
    let outside = env.path("outside");
    std::fs::create_dir(&outside).unwrap();
    let mut tar = Tar::new();
    tar.symlink("blobs", outside.to_str().unwrap())
        .file("blobs/sha256/evil", b"evil");
    let p = env.path("through.tar");
    std::fs::write(&p, tar.finish()).unwrap();
    env.reject(&p, &["is a symlink in the archive, not a directory"]);
    assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 0);
}

#[test]
fn archive_symlink_pointing_outside_is_not_followed() {
    let env = Env::new();
    let secret = env.path("secret.json");
    std::fs::write(&secret, b"[]").unwrap();
    let mut tar = Tar::new();
    tar.symlink("manifest.json", secret.to_str().unwrap());
    let p = env.path("abslink.tar");
    std::fs::write(&p, tar.finish()).unwrap();
    env.reject(&p, &["symlink to the absolute path"]);
    let mut tar = Tar::new();
    tar.symlink("manifest.json", "../../../../secret.json");
    std::fs::write(&p, tar.finish()).unwrap();
    env.reject(&p, &["points outside"]);
}

#[test]
fn archive_with_a_device_member() {
    let env = Env::new();
    let mut tar = Tar::new();
    tar.raw(b"index.json", EntryType::Char, b"", b"", |h| {
        h.set_device_major(1).unwrap();
        h.set_device_minor(3).unwrap();
    });
    let p = env.path("dev.tar");
    std::fs::write(&p, tar.finish()).unwrap();
    env.reject(&p, &["unsupported member type"]);
}

#[test]
fn truncated_outer_archive() {
    let env = Env::new();
    let mut oci = Oci::new();
    oci.image(
        "t",
        &[Layer::plain(payload())],
        Some("t:1"),
        &Tweak::default(),
    );
    let mut bytes = oci.done().to_tar("");
    bytes.truncate(bytes.len() / 2);
    let p = env.path("trunc.tar");
    std::fs::write(&p, bytes).unwrap();
    env.reject(&p, &["truncated", "missing"]);
}

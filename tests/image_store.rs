//! The image store on well-formed inputs: the three archive formats, compression, tar name
//! forms, layer sharing, tags, rmi and garbage collection, resolve, import, concurrency.

mod image_support;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Barrier};

use image_support::*;
use serde_json::json;
use strata::digest::Digest;
use strata::image::{ImageError, ImageStore};
use strata::layer::Kind;

fn store() -> (tempfile::TempDir, ImageStore) {
    let dir = tempfile::tempdir().unwrap();
    let s = ImageStore::open(&dir.path().join("root")).unwrap();
    (dir, s)
}

fn paths_of(s: &ImageStore, layer: &Digest) -> Vec<String> {
    s.layers()
        .index(layer)
        .unwrap()
        .entries
        .iter()
        .map(|e| String::from_utf8(e.path.clone()).unwrap())
        .collect()
}

fn file_content(s: &ImageStore, layer: &Digest, path: &str) -> Vec<u8> {
    let idx = s.layers().index(layer).unwrap();
    let e = idx
        .entries
        .iter()
        .find(|e| e.path == path.as_bytes())
        .unwrap_or_else(|| panic!("{path} not in layer"));
    match e.kind {
        Kind::File { size: 0, .. } => Vec::new(),
        Kind::File { file, .. } => {
            std::fs::read(s.layers().data_dir(layer).join(file.to_string())).unwrap()
        }
        ref k => panic!("{path} is a {}", k.name()),
    }
}

/// Three layers: uncompressed, gzip, zstd.
fn three_layers() -> Vec<Layer> {
    let mut a = Tar::new();
    a.dir("bin/")
        .file("bin/sh", b"#!shell")
        .file("etc/os-release", b"ID=test\n");
    let mut b = Tar::new();
    b.dir("./usr/").file("./usr/gz", b"gzip layer");
    let mut c = Tar::new();
    c.file("usr/zst", b"zstd layer").file(".wh.bin", b"");
    vec![
        Layer::plain(a.finish()),
        Layer::gzip(b.finish()),
        Layer::zstd(c.finish()),
    ]
}

fn check_three(s: &ImageStore, img: &strata::image::ImageRecord, layers: &[Layer]) {
    assert_eq!(
        img.layers,
        layers.iter().map(|l| l.diff_id.clone()).collect::<Vec<_>>()
    );
    for l in layers {
        assert!(s.layers().exists(&l.diff_id));
    }
    assert_eq!(file_content(s, &img.layers[0], "bin/sh"), b"#!shell");
    assert_eq!(file_content(s, &img.layers[1], "usr/gz"), b"gzip layer");
    assert_eq!(file_content(s, &img.layers[2], "usr/zst"), b"zstd layer");
    assert!(
        s.layers()
            .index(&img.layers[2])
            .unwrap()
            .entries
            .iter()
            .any(|e| e.path == b"bin" && e.kind == Kind::Whiteout)
    );
    assert_eq!(img.size, 7 + 8 + 10 + 10);
    let cfg = s.config(img).unwrap();
    assert_eq!(cfg.config.cmd, Some(vec!["/bin/sh".to_string()]));
    assert_eq!(cfg.config.working_dir.as_deref(), Some("/"));
    assert!(cfg.config.exposed_ports.contains_key("80/tcp"));
    assert_eq!(cfg.rootfs.diff_ids, img.layers);
    assert_eq!(cfg.created.as_deref(), Some("2024-01-02T03:04:05Z"));
    assert_eq!(img.created.as_deref(), Some("2024-01-02T03:04:05Z"));
}

fn assert_tmp_empty(s: &ImageStore) {
    let tmp: Vec<_> = std::fs::read_dir(s.root().join("tmp")).unwrap().collect();
    assert!(tmp.is_empty(), "tmp/ not cleaned: {tmp:?}");
    let staging: Vec<_> = std::fs::read_dir(s.root().join("layers/.staging"))
        .unwrap()
        .collect();
    assert!(staging.is_empty(), "staging not cleaned: {staging:?}");
}

#[test]
fn load_oci_layout_dir_with_plain_gzip_zstd_layers() {
    let (dir, s) = store();
    let layers = three_layers();
    let mut oci = Oci::new();
    let (id, _) = oci.image(
        "three",
        &layers,
        Some("localhost/three:v1"),
        &Tweak::default(),
    );
    let input = dir.path().join("layout");
    oci.done().write_dir(&input);

    let imgs = s.load(&input, true).unwrap();
    assert_eq!(imgs.len(), 1);
    assert_eq!(imgs[0].id, id);
    assert_eq!(imgs[0].tags, vec!["localhost/three:v1".to_string()]);
    check_three(&s, &imgs[0], &layers);
    // The config is stored byte for byte: its digest is the image id.
    assert_eq!(Digest::of(&s.config_bytes(&imgs[0]).unwrap()), id);
    assert_eq!(s.list().unwrap(), imgs);
    // Podman's rule: `three:v1` finds `localhost/three:v1`.
    assert_eq!(s.resolve("three:v1").unwrap().id, id);
    assert_tmp_empty(&s);
}

#[test]
fn load_oci_archive_with_and_without_dot_slash() {
    for prefix in ["", "./"] {
        let (dir, s) = store();
        let layers = three_layers();
        let mut oci = Oci::new();
        let (id, _) = oci.image("three", &layers, Some("x:y"), &Tweak::default());
        let input = dir.path().join("image.tar");
        oci.done().write_tar(&input, prefix);
        let imgs = s.load(&input, false).unwrap();
        assert_eq!(imgs.len(), 1, "prefix {prefix:?}");
        assert_eq!(imgs[0].id, id);
        assert_eq!(imgs[0].tags, vec!["x:y".to_string()]);
        check_three(&s, &imgs[0], &layers);
        assert_tmp_empty(&s);
    }
}

#[test]
fn load_compressed_oci_archive() {
    let (dir, s) = store();
    let mut oci = Oci::new();
    oci.image("gz", &[simple_layer("a")], Some("gz:1"), &Tweak::default());
    let input = dir.path().join("image.tar.gz");
    std::fs::write(&input, gzip(&oci.done().to_tar(""))).unwrap();
    assert_eq!(s.load(&input, false).unwrap()[0].tags, vec!["gz:1"]);
}

#[test]
fn load_docker_archive_legacy_with_shared_layer_symlink() {
    let (dir, s) = store();
    let mut base = Tar::new();
    base.dir("./").dir("./bin/").file("./bin/busybox", b"BB");
    let base = base.finish();
    let mut top = Tar::new();
    top.file("etc/motd", b"hi");
    let top = top.finish();
    let files = docker_legacy(&[
        (
            "one",
            vec![base.clone(), top.clone()],
            vec!["busybox:latest", "docker.io/library/busybox:1.36"],
        ),
        ("two", vec![base.clone()], vec!["quay.io/x/y:z"]),
    ]);
    assert_eq!(files.links.len(), 1, "the shared layer is a symlink");
    for (i, form) in ["tar", "./tar", "dir"].iter().enumerate() {
        let input = dir.path().join(format!("docker-{i}"));
        match *form {
            "tar" => files.write_tar(&input, ""),
            "./tar" => files.write_tar(&input, "./"),
            _ => files.write_dir(&input),
        }
        let report = s.load_report(&input, false).unwrap();
        assert_eq!(report.images.len(), 2);
        let one = &report.images[0];
        assert_eq!(one.tags, vec!["busybox:1.36", "busybox:latest"]);
        assert_eq!(one.layers, vec![Digest::of(&base), Digest::of(&top)]);
        assert_eq!(report.images[1].tags, vec!["quay.io/x/y:z"]);
        assert_eq!(report.images[1].layers, vec![Digest::of(&base)]);
        if i == 0 {
            assert_eq!(report.staged.len(), 2, "the shared layer is extracted once");
        } else {
            assert!(report.staged.is_empty());
        }
        assert_eq!(file_content(&s, &one.layers[0], "bin/busybox"), b"BB");
        assert_eq!(s.resolve("docker.io/library/busybox").unwrap().id, one.id);
        assert_eq!(s.resolve("library/busybox:1.36").unwrap().id, one.id);
        assert_tmp_empty(&s);
    }
    assert_eq!(s.list().unwrap().len(), 2);
}

#[test]
fn load_docker_archive_blobs_form() {
    // `docker save` 25+: blobs/sha256/ for everything, manifest.json plus an OCI index.
    let (dir, s) = store();
    let layers = vec![
        simple_layer("a"),
        Layer::plain({
            let mut t = Tar::new();
            t.file("b", b"bb");
            t.finish()
        }),
    ];
    let mut oci = Oci::new();
    let (id, _) = oci.image("new", &layers, None, &Tweak::default());
    let mut files = oci.done();
    files.put(
        "manifest.json",
        serde_json::to_vec(&json!([{
            "Config": format!("blobs/sha256/{}", id.hex()),
            "RepoTags": ["new:1"],
            "Layers": layers.iter().map(|l| format!("blobs/sha256/{}", l.digest().hex())).collect::<Vec<_>>(),
        }]))
        .unwrap(),
    );
    let input = dir.path().join("new.tar");
    files.write_tar(&input, "");
    let imgs = s.load(&input, false).unwrap();
    assert_eq!(imgs.len(), 1);
    assert_eq!(imgs[0].id, id);
    assert_eq!(imgs[0].tags, vec!["new:1"]);
    assert_eq!(
        imgs[0].compressed,
        layers.iter().map(|l| Some(l.digest())).collect::<Vec<_>>()
    );
}

#[test]
fn layer_member_names_dot_slash_pax_and_gnu_long() {
    let (dir, s) = store();
    let long_pax = format!("./{}/pax-file", "p".repeat(150));
    let long_gnu = format!("{}/gnu-file", "g".repeat(200));
    let mut t = Tar::new();
    t.file("plain", b"1")
        .file("./dotted", b"2")
        .pax_file(&long_pax, b"3")
        .gnu_long_file(&long_gnu, b"4")
        .pax(&[("linkpath", format!("{}/target", "l".repeat(120)).as_bytes())])
        .symlink("./link", "short");
    let layer = Layer::zstd(t.finish());
    let mut oci = Oci::new();
    oci.image(
        "names",
        std::slice::from_ref(&layer),
        Some("names:1"),
        &Tweak::default(),
    );
    let input = dir.path().join("l");
    oci.done().write_dir(&input);
    s.load(&input, false).unwrap();
    let paths = paths_of(&s, &layer.diff_id);
    for p in ["plain", "dotted", &long_pax[2..], &long_gnu, "link"] {
        assert!(paths.iter().any(|x| x == p), "{p} missing from {paths:?}");
    }
    assert_eq!(file_content(&s, &layer.diff_id, &long_pax[2..]), b"3");
    assert_eq!(file_content(&s, &layer.diff_id, &long_gnu), b"4");
    let idx = s.layers().index(&layer.diff_id).unwrap();
    let link = idx.entries.iter().find(|e| e.path == b"link").unwrap();
    assert_eq!(
        link.kind,
        Kind::Symlink {
            target: format!("{}/target", "l".repeat(120)).into_bytes()
        }
    );
}

#[test]
fn shared_layers_are_extracted_once() {
    let (dir, s) = store();
    let (l1, l2, l3) = (
        simple_layer("one"),
        simple_layer("two"),
        simple_layer("three"),
    );
    let mut a = Oci::new();
    a.image(
        "a",
        &[l1.clone(), l2.clone()],
        Some("a:1"),
        &Tweak::default(),
    );
    let mut b = Oci::new();
    b.image(
        "b",
        &[l1.clone(), l3.clone()],
        Some("b:1"),
        &Tweak::default(),
    );
    let (pa, pb) = (dir.path().join("a"), dir.path().join("b"));
    a.done().write_dir(&pa);
    b.done().write_dir(&pb);

    let ra = s.load_report(&pa, false).unwrap();
    let mut staged = ra.staged.clone();
    staged.sort();
    let mut want = vec![l1.diff_id.clone(), l2.diff_id.clone()];
    want.sort();
    assert_eq!(staged, want);
    assert!(ra.reused.is_empty());

    let rb = s.load_report(&pb, false).unwrap();
    assert_eq!(rb.staged, vec![l3.diff_id.clone()]);
    assert_eq!(rb.reused, vec![l1.diff_id.clone()]);

    // Loading the same thing again extracts nothing and adds no image.
    let again = s.load_report(&pa, false).unwrap();
    assert!(again.staged.is_empty());
    assert_eq!(again.images, ra.images);
    assert_eq!(s.list().unwrap().len(), 2);
    assert_eq!(s.layers().list().unwrap().len(), 3);
}

/// Loads one image with the given layers and tags; returns its id.
fn load_image(
    s: &ImageStore,
    dir: &Path,
    label: &str,
    layers: &[Layer],
    tag: Option<&str>,
) -> Digest {
    let mut oci = Oci::new();
    let (id, _) = oci.image(label, layers, tag, &Tweak::default());
    let p = dir.join(format!("in-{label}"));
    oci.done().write_dir(&p);
    s.load(&p, false).unwrap();
    id
}

#[test]
fn tag_untag_rmi_and_refcounted_gc() {
    let (dir, s) = store();
    let (shared, own_a, own_b) = (simple_layer("s"), simple_layer("a"), simple_layer("b"));
    let a = load_image(
        &s,
        dir.path(),
        "a",
        &[shared.clone(), own_a.clone()],
        Some("a:1"),
    );
    let b = load_image(
        &s,
        dir.path(),
        "b",
        &[shared.clone(), own_b.clone()],
        Some("b:1"),
    );

    s.tag("a:1", "a:2").unwrap();
    s.tag("a", "a:3").unwrap_err(); // `a` is `a:latest`, which does not exist
    s.tag(a.as_str(), "registry.example:5000/team/a").unwrap();
    assert_eq!(
        s.resolve("a:1").unwrap().tags,
        vec!["a:1", "a:2", "registry.example:5000/team/a:latest"]
    );
    assert!(matches!(
        s.tag("a:1", "Bad:Tag"),
        Err(ImageError::BadReference { .. })
    ));

    // rmi by tag while other tags remain: untag only.
    let r = s.remove("a:2", false).unwrap();
    assert_eq!(r.untagged, vec!["a:2"]);
    assert!(r.deleted.is_empty() && r.layers_removed.is_empty());

    // rmi by id with two tags needs force.
    let e = s.remove(&a.hex()[..12], false).unwrap_err();
    assert!(matches!(e, ImageError::Conflict { .. }), "{e}");
    assert!(e.to_string().contains("must be forced"), "{e}");
    let r = s.remove(&a.hex()[..12], true).unwrap();
    assert_eq!(r.deleted, vec![a.clone()]);
    assert_eq!(r.untagged.len(), 2);
    // The shared layer stays for b; a's own layer goes.
    assert_eq!(r.layers_removed, vec![own_a.diff_id.clone()]);
    assert!(s.layers().exists(&shared.diff_id));
    assert!(!s.layers().exists(&own_a.diff_id));
    assert!(matches!(s.resolve("a:1"), Err(ImageError::NotFound(_))));

    // rmi of the last tag of the last user frees the rest.
    let r = s.remove("b:1", false).unwrap();
    assert_eq!(r.deleted, vec![b]);
    let mut freed = r.layers_removed.clone();
    freed.sort();
    let mut want = vec![shared.diff_id.clone(), own_b.diff_id.clone()];
    want.sort();
    assert_eq!(freed, want);
    assert!(s.list().unwrap().is_empty());
    assert!(s.layers().list().unwrap().is_empty());
    assert!(matches!(
        s.remove("b:1", false),
        Err(ImageError::NotFound(_))
    ));
}

#[test]
fn users_keep_layers_from_collection_until_they_are_gone() {
    use strata::image::User;
    let (dir, s) = store();
    let (shared, own) = (simple_layer("s"), simple_layer("own"));
    let a = load_image(
        &s,
        dir.path(),
        "a",
        &[shared.clone(), own.clone()],
        Some("a:1"),
    );
    let image = s.resolve("a:1").unwrap();
    let ctr_dir = dir.path().join("ctr");
    std::fs::create_dir(&ctr_dir).unwrap();
    let ctr = User::Container {
        id: "c0ffee".repeat(10),
        name: "web".into(),
        dir: ctr_dir.clone(),
    };
    s.hold(&image, ctr.clone()).unwrap();
    // A layer directory that holds no writable layer: a stale user from the start.
    let stale = User::WritableLayer {
        dir: dir.path().join("no-layer-here"),
        chain: "sha256:00".into(),
    };
    s.hold(&image, stale).unwrap();
    assert_eq!(s.users().unwrap().len(), 1);

    // Refused, naming the live user only; nothing changed.
    let e = s.remove("a:1", false).unwrap_err();
    assert!(matches!(e, ImageError::InUse { .. }), "{e}");
    assert!(e.to_string().contains("container web"), "{e}");
    assert!(!e.to_string().contains("writable layer"), "{e}");
    assert_eq!(s.resolve("a:1").unwrap().id, a);

    // Forced: the image goes, the layers stay for the user, collection keeps them.
    let r = s.remove("a:1", true).unwrap();
    assert_eq!((r.deleted, r.kept_for.len()), (vec![a.clone()], 1));
    assert!(r.layers_removed.is_empty());
    assert!(s.gc().unwrap().is_empty());
    assert!(s.layers().exists(&own.diff_id) && s.layers().exists(&shared.diff_id));
    // No new user for an image that is gone.
    assert!(matches!(
        s.hold(&image, ctr.clone()),
        Err(ImageError::NotFound(_))
    ));

    // The user gone (its directory deleted): the next collection frees the layers and
    // forgets the stale records.
    std::fs::remove_dir(&ctr_dir).unwrap();
    let mut freed = s.gc().unwrap();
    freed.sort();
    let mut want = vec![shared.diff_id.clone(), own.diff_id.clone()];
    want.sort();
    assert_eq!(freed, want);
    assert!(s.users().unwrap().is_empty());
    assert_eq!(
        std::fs::read_dir(dir.path().join("root/users"))
            .unwrap()
            .count(),
        0
    );
}

#[test]
fn retag_leaves_the_old_image_dangling() {
    let (dir, s) = store();
    let old = load_image(
        &s,
        dir.path(),
        "old",
        &[simple_layer("o")],
        Some("app:latest"),
    );
    let new = load_image(&s, dir.path(), "new", &[simple_layer("n")], None);
    s.tag(new.as_str(), "app").unwrap();
    assert_eq!(s.resolve("app").unwrap().id, new);
    let old_rec = s.resolve(old.as_str()).unwrap();
    assert!(old_rec.tags.is_empty());
    assert_eq!(s.list().unwrap().len(), 2);
    // rmi of an untagged image by id needs no force.
    let r = s.remove(old.hex(), false).unwrap();
    assert_eq!(r.deleted, vec![old]);
    assert_eq!(r.layers_removed.len(), 1);
}

#[test]
fn loading_moves_an_existing_tag() {
    let (dir, s) = store();
    let one = load_image(
        &s,
        dir.path(),
        "v1",
        &[simple_layer("1")],
        Some("app:latest"),
    );
    let two = load_image(
        &s,
        dir.path(),
        "v2",
        &[simple_layer("2")],
        Some("app:latest"),
    );
    assert_eq!(s.resolve("app").unwrap().id, two);
    assert!(s.resolve(one.as_str()).unwrap().tags.is_empty());
}

#[test]
fn resolve_by_name_tag_id_and_prefix() {
    let (dir, s) = store();
    // Find two labels whose image ids share their first 4 hex digits.
    let layer = simple_layer("shared");
    let diff = [layer.diff_id.clone()];
    let mut seen = std::collections::HashMap::new();
    let (l1, l2) = (0..)
        .find_map(|i| {
            let label = format!("img{i}");
            let id = Digest::of(&config_json(&label, &diff));
            let p = id.hex()[..4].to_string();
            seen.insert(p, label.clone()).map(|prev| (prev, label))
        })
        .unwrap();
    let a = load_image(
        &s,
        dir.path(),
        &l1,
        std::slice::from_ref(&layer),
        Some("name:tag"),
    );
    let b = load_image(
        &s,
        dir.path(),
        &l2,
        std::slice::from_ref(&layer),
        Some("docker.io/library/other:latest"),
    );
    assert_eq!(a.hex()[..4], b.hex()[..4]);

    assert_eq!(s.resolve("name:tag").unwrap().id, a);
    assert_eq!(s.resolve("other").unwrap().id, b);
    assert_eq!(s.resolve("other:latest").unwrap().id, b);
    assert_eq!(s.resolve(a.as_str()).unwrap().id, a);
    assert_eq!(s.resolve(a.hex()).unwrap().id, a);
    let unique = (5..64).find(|&n| a.hex()[..n] != b.hex()[..n]).unwrap();
    assert_eq!(s.resolve(&a.hex()[..unique]).unwrap().id, a);
    assert_eq!(
        s.resolve(&format!("sha256:{}", &b.hex()[..unique]))
            .unwrap()
            .id,
        b
    );

    let e = s.resolve(&a.hex()[..4]).unwrap_err();
    assert!(matches!(e, ImageError::Ambiguous { .. }), "{e}");
    assert!(
        e.to_string().contains(a.short()) && e.to_string().contains(b.short()),
        "{e}"
    );
    // Too short for an id prefix; not a tag either.
    assert!(matches!(
        s.resolve(&a.hex()[..3]),
        Err(ImageError::NotFound(_))
    ));
    assert!(s.resolve("sha256:ab").is_err());
    assert!(matches!(s.resolve("name"), Err(ImageError::NotFound(_))));
    assert!(matches!(
        s.resolve("nosuch:tag"),
        Err(ImageError::NotFound(_))
    ));
    assert!(matches!(
        s.resolve("UPPER"),
        Err(ImageError::BadReference { .. })
    ));
    let missing = Digest::of(b"nothing");
    assert!(matches!(
        s.resolve(missing.as_str()),
        Err(ImageError::NotFound(_))
    ));
    // A tag that looks like an id prefix wins over the prefix, as in Docker.
    s.tag("other", &a.hex()[..8]).unwrap();
    assert_eq!(s.resolve(&a.hex()[..8]).unwrap().id, b);
}

#[test]
fn import_rootfs_tarball() {
    let (dir, s) = store();
    let mut t = Tar::new();
    t.dir("./")
        .dir("./bin")
        .file("./bin/sh", b"sh")
        .symlink("./bin/ls", "sh");
    let tar = t.finish();
    for (name, bytes) in [
        ("rootfs.tar", tar.clone()),
        ("rootfs.tar.gz", gzip(&tar)),
        ("rootfs.tar.zst", zstd(&tar)),
    ] {
        let p = dir.path().join(name);
        std::fs::write(&p, bytes).unwrap();
        let img = s.import(&p, Some("imported:1"), false).unwrap();
        assert_eq!(img.layers, vec![Digest::of(&tar)]);
        assert_eq!(img.tags, vec!["imported:1"]);
        assert_eq!(img.size, 2);
        let cfg = s.config(&img).unwrap();
        assert_eq!(cfg.os, "linux");
        assert_eq!(cfg.rootfs.diff_ids, img.layers);
        assert_eq!(s.resolve("imported:1").unwrap().id, img.id);
    }
    // Three imports, one layer; the older two images are untagged.
    assert_eq!(s.layers().list().unwrap().len(), 1);
    assert_eq!(s.list().unwrap().len(), 3);
    let untagged = dir.path().join("rootfs.tar");
    let img = s.import(&untagged, None, false).unwrap();
    assert!(img.tags.is_empty());
    assert!(matches!(
        s.import(&untagged, Some("no good"), false),
        Err(ImageError::BadReference { .. })
    ));
    assert_tmp_empty(&s);
}

#[test]
fn nested_index_loads_the_host_platform_only() {
    let (dir, s) = store();
    let mut oci = Oci::new();
    let (amd, mut amd_desc) =
        oci.image_unlisted("amd", &[simple_layer("amd")], None, &Tweak::default());
    let (_, mut arm_desc) =
        oci.image_unlisted("arm", &[simple_layer("arm")], None, &Tweak::default());
    let (_, mut att_desc) =
        oci.image_unlisted("att", &[simple_layer("att")], None, &Tweak::default());
    let arch = if cfg!(target_arch = "x86_64") {
        "amd64"
    } else {
        "arm64"
    };
    let other = if arch == "amd64" { "arm64" } else { "amd64" };
    amd_desc["platform"] = json!({"architecture": arch, "os": "linux"});
    arm_desc["platform"] = json!({"architecture": other, "os": "linux", "variant": "v8"});
    att_desc["platform"] = json!({"architecture": "unknown", "os": "unknown"});
    let mut idx = oci.nested_index(vec![amd_desc, arm_desc, att_desc]);
    idx["annotations"] = json!({
        "io.containerd.image.name": "docker.io/library/multi:1",
        "org.opencontainers.image.ref.name": "1",
    });
    oci.manifests.push(idx);
    let input = dir.path().join("multi");
    oci.done().write_dir(&input);
    let imgs = s.load(&input, false).unwrap();
    assert_eq!(imgs.len(), 1);
    assert_eq!(imgs[0].id, amd);
    assert_eq!(imgs[0].tags, vec!["multi:1"]);
    assert_eq!(s.layers().list().unwrap().len(), 1);
}

#[test]
fn bare_tag_annotation_leaves_the_image_untagged() {
    let (dir, s) = store();
    let mut oci = Oci::new();
    oci.image(
        "bare",
        &[simple_layer("x")],
        Some("latest"),
        &Tweak::default(),
    );
    let input = dir.path().join("bare");
    oci.done().write_dir(&input);
    assert!(s.load(&input, false).unwrap()[0].tags.is_empty());
}

#[test]
fn no_image_for_this_platform_is_a_clear_error() {
    let (dir, s) = store();
    let mut oci = Oci::new();
    let (_, mut d) = oci.image_unlisted("w", &[simple_layer("w")], None, &Tweak::default());
    d["platform"] = json!({"architecture": "amd64", "os": "windows"});
    oci.manifests.push(d);
    let input = dir.path().join("w");
    oci.done().write_dir(&input);
    let e = s.load(&input, false).unwrap_err();
    assert!(matches!(e, ImageError::NoMatchingPlatform { .. }), "{e}");
    assert!(e.to_string().contains("windows/amd64"), "{e}");
}

#[test]
fn unknown_media_types_are_rejected() {
    let (dir, s) = store();
    let before = snapshot(s.root());
    let mut oci = Oci::new();
    oci.image(
        "enc",
        &[simple_layer("e")],
        None,
        &Tweak {
            layer_media_type: Some("application/vnd.oci.image.layer.v1.tar+gzip+encrypted"),
            ..Default::default()
        },
    );
    let input = dir.path().join("enc");
    oci.done().write_dir(&input);
    let e = s.load(&input, false).unwrap_err();
    assert!(e.to_string().contains("unsupported media type"), "{e}");
    assert!(e.to_string().contains("+encrypted"), "{e}");

    let mut oci = Oci::new();
    oci.manifests.push(json!({
        "mediaType": "application/vnd.docker.distribution.manifest.v1+prettyjws",
        "digest": Digest::of(b"x"), "size": 1,
    }));
    let input = dir.path().join("v1");
    oci.done().write_dir(&input);
    let e = s.load(&input, false).unwrap_err();
    assert!(e.to_string().contains("unsupported media type"), "{e}");
    assert_eq!(snapshot(s.root()), before);
}

#[test]
fn docker_media_types_are_accepted() {
    let (dir, s) = store();
    let layer = simple_layer("d");
    let config = config_json("docker", std::slice::from_ref(&layer.diff_id));
    let mut files = Files::default();
    let cd = files.blob(config.clone());
    let ld = files.blob(layer.blob.clone());
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
        "config": {"mediaType": "application/vnd.docker.container.image.v1+json", "digest": cd, "size": config.len()},
        "layers": [{"mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip", "digest": ld, "size": layer.blob.len()}],
    }))
    .unwrap();
    let ml = manifest.len();
    let md = files.blob(manifest);
    files.put(
        "index.json",
        serde_json::to_vec(&json!({"schemaVersion": 2, "manifests": [{
            "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
            "digest": md, "size": ml,
            "annotations": {"io.containerd.image.name": "docker.io/foo/bar:baz"},
        }]}))
        .unwrap(),
    );
    let input = dir.path().join("d");
    files.write_dir(&input);
    let imgs = s.load(&input, false).unwrap();
    assert_eq!(imgs[0].id, cd);
    assert_eq!(imgs[0].tags, vec!["foo/bar:baz"]);
}

#[test]
fn a_failing_image_leaves_nothing_of_the_others() {
    let (dir, s) = store();
    let before = snapshot(s.root());
    let mut good = Tar::new();
    good.file("ok", b"ok");
    let mut bad = Tar::new();
    bad.file("a/../../x", b"evil");
    let files = docker_legacy(&[
        ("good", vec![good.finish()], vec!["good:1"]),
        ("bad", vec![bad.finish()], vec!["bad:1"]),
    ]);
    let input = dir.path().join("two.tar");
    files.write_tar(&input, "");
    let e = s.load(&input, false).unwrap_err();
    assert!(e.to_string().contains("escapes"), "{e}");
    assert_eq!(snapshot(s.root()), before);
}

#[test]
fn missing_input_and_unknown_format() {
    let (dir, s) = store();
    let e = s.load(&dir.path().join("nope"), false).unwrap_err();
    assert!(matches!(e, ImageError::Io { .. }), "{e}");
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let e = s.load(&empty, false).unwrap_err();
    assert!(e.to_string().contains("neither index.json"), "{e}");
    let junk = dir.path().join("junk.tar");
    std::fs::write(&junk, noise(4096, 7)).unwrap();
    let e = s.load(&junk, false).unwrap_err();
    assert!(e.to_string().contains("not an image archive"), "{e}");
    assert_tmp_empty(&s);
}

#[test]
fn reopen_sees_the_same_store() {
    let (dir, s) = store();
    let id = load_image(&s, dir.path(), "p", &[simple_layer("p")], Some("p:1"));
    drop(s);
    let s = ImageStore::open(&dir.path().join("root")).unwrap();
    assert_eq!(s.resolve("p:1").unwrap().id, id);
}

/// A layer big enough that extracting it takes a while, so the two loads overlap.
fn big_layer(seed: u64) -> Layer {
    let mut t = Tar::new();
    for i in 0..64 {
        t.file(&format!("data/{i}"), &noise(64 * 1024, seed * 1000 + i));
    }
    Layer::gzip(t.finish())
}

#[test]
fn concurrent_loads_extract_each_layer_once() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    ImageStore::open(&root).unwrap();
    let layers = vec![big_layer(1), big_layer(2), simple_layer("small")];
    let mut oci = Oci::new();
    oci.image("race", &layers, Some("race:1"), &Tweak::default());
    let input = dir.path().join("race.tar");
    oci.done().write_tar(&input, "");

    for round in 0..3 {
        if round > 0 {
            ImageStore::open(&root)
                .unwrap()
                .remove("race:1", false)
                .unwrap();
        }
        let barrier = Arc::new(Barrier::new(2));
        let threads: Vec<_> = (0..2)
            .map(|_| {
                let (root, input, barrier): (PathBuf, PathBuf, _) =
                    (root.clone(), input.clone(), barrier.clone());
                std::thread::spawn(move || {
                    // Separate stores, as two processes would have: separate lock files.
                    let s = ImageStore::open(&root).unwrap();
                    barrier.wait();
                    s.load_report(&input, false).unwrap()
                })
            })
            .collect();
        let reports: Vec<_> = threads.into_iter().map(|t| t.join().unwrap()).collect();
        let mut staged: Vec<Digest> = reports.iter().flat_map(|r| r.staged.clone()).collect();
        staged.sort();
        let mut want: Vec<Digest> = layers.iter().map(|l| l.diff_id.clone()).collect();
        want.sort();
        assert_eq!(
            staged, want,
            "round {round}: every layer extracted exactly once"
        );
        for r in &reports {
            assert_eq!(r.staged.len() + r.reused.len(), 3);
            assert_eq!(r.images[0].tags, vec!["race:1"]);
        }
        let s = ImageStore::open(&root).unwrap();
        assert_eq!(s.list().unwrap().len(), 1);
        assert_tmp_empty(&s);
    }
}

#[test]
fn a_failure_after_publishing_layers_rolls_them_back() {
    let (dir, s) = store();
    load_image(
        &s,
        dir.path(),
        "first",
        &[simple_layer("first")],
        Some("first:1"),
    );
    // Make the tag file unusable: the layers get extracted and published, then writing the
    // record fails, and the published layers must go again.
    let repos = s.root().join("repositories.json");
    std::fs::remove_file(&repos).unwrap();
    std::fs::create_dir(&repos).unwrap();
    let before = snapshot(s.root());
    let mut oci = Oci::new();
    oci.image(
        "second",
        &[simple_layer("second"), big_layer(3)],
        Some("second:1"),
        &Tweak::default(),
    );
    let input = dir.path().join("second");
    oci.done().write_dir(&input);
    let e = s.load(&input, false).unwrap_err();
    assert!(e.to_string().contains("repositories.json"), "{e}");
    assert_eq!(snapshot(s.root()), before);
    assert_eq!(s.layers().list().unwrap().len(), 1);
}

#[test]
fn open_removes_leftovers_of_a_crash() {
    let (_dir, s) = store();
    let root = s.root().to_path_buf();
    drop(s);
    let before = snapshot(&root);
    // pid 0x7fffffff does not exist: its unpack directory is garbage.
    std::fs::create_dir_all(root.join("tmp/load-2147483647-abc/blobs")).unwrap();
    std::fs::create_dir_all(root.join("images/.new-xyz")).unwrap();
    std::fs::write(root.join("images/.new-xyz/config.json"), b"{}").unwrap();
    std::fs::write(root.join(".tmp-123"), b"half").unwrap();
    std::fs::create_dir_all(root.join("layers/.staging/layer-2147483647-q/data")).unwrap();
    // A live process's unpack directory stays.
    let mine = root.join(format!("tmp/load-{}-live", std::process::id()));
    std::fs::create_dir_all(&mine).unwrap();
    ImageStore::open(&root).unwrap();
    std::fs::remove_dir(&mine).unwrap();
    assert_eq!(snapshot(&root), before);
}

//! containerd's remote-snapshot protocol on layers strata holds already: an unpack that names
//! the snapshot it will make (its chain ID, in `containerd.io/snapshot.ref`: a pull through
//! containerd's unpacker, as the CRI plugin and nerdctl do) of a layer that `strata load` has
//! stored gets AlreadyExists and a committed snapshot on the stored layer; nothing is unpacked
//! and no layer is stored twice. The library's snapshotter is driven the way containerd's
//! metadata layer drives it (Prepare, then a List filtered by that label and the parent).

use std::collections::HashMap;

use strata::digest::Digest;
use strata::snapshotter::{Kind, SNAPSHOT_REF, SnapshotError, Snapshotter};
use strata_testkit::{sample_image, strata_ok};

use super::layer_count;

#[test]
fn layers_strata_holds_already_are_not_unpacked_again() {
    let dir = tempfile::Builder::new()
        .prefix("strata-snap-")
        .tempdir()
        .expect("tempdir");
    let (state, mounts) = (dir.path().join("state"), dir.path().join("mounts"));
    let archive = sample_image().join("sample.oci.tar");
    strata_ok(
        &state,
        &["load", "-i", archive.to_str().expect("utf-8 path")],
    );
    let inspect: serde_json::Value =
        serde_json::from_str(&strata_ok(&state, &["inspect", "strata-sample:latest"]))
            .expect("inspect prints JSON");
    let diff_ids: Vec<String> = inspect[0]["RootFS"]["Layers"]
        .as_array()
        .expect("RootFS.Layers")
        .iter()
        .map(|v| v.as_str().expect("a digest").to_string())
        .collect();
    assert!(diff_ids.len() >= 2, "the sample image has several layers");
    let stored = layer_count(&state);

    let s = Snapshotter::open(&state, &mounts).expect("open");
    let mut parent = String::new();
    let mut chain: Option<String> = None;
    for (i, diff_id) in diff_ids.iter().enumerate() {
        // containerd's identity.ChainID
        let c = match &chain {
            None => diff_id.clone(),
            Some(p) => Digest::of(format!("{p} {diff_id}").as_bytes())
                .as_str()
                .to_string(),
        };
        let key = format!("default/{}/extract-{i}-unique {c}", 10 + i);
        let labels = HashMap::from([(SNAPSHOT_REF.to_string(), c.clone())]);
        match s.create(Kind::Active, &key, &parent, labels) {
            Err(SnapshotError::AlreadyExists(t)) => assert_eq!(t, c, "layer {i}"),
            other => panic!("layer {i}: want AlreadyExists, got {other:?}"),
        }
        // What containerd's metadata layer asks next (metadata/snapshot.go).
        let filter = format!(r#"labels."{SNAPSHOT_REF}"=={c},parent=={parent:?}"#);
        let found = s.list(&[filter]).expect("list");
        assert_eq!(found.len(), 1, "layer {i}: one committed snapshot for {c}");
        let rec = &found[0];
        assert_eq!(rec.kind, Kind::Committed);
        assert_eq!(rec.parent, parent);
        assert_eq!(
            rec.layers.iter().map(|d| d.as_str()).collect::<Vec<_>>(),
            diff_ids[..=i]
                .iter()
                .map(String::as_str)
                .collect::<Vec<_>>(),
            "layer {i}: the snapshot stands on the stored layers"
        );
        // A second unpack of the same layer (another namespace) finds it too.
        let again = format!("other/{}/extract-{i}-again {c}", 20 + i);
        let labels = HashMap::from([(SNAPSHOT_REF.to_string(), c.clone())]);
        assert!(matches!(
            s.create(Kind::Active, &again, &parent, labels),
            Err(SnapshotError::AlreadyExists(_))
        ));
        parent = rec.key.clone();
        chain = Some(c);
    }
    assert_eq!(layer_count(&state), stored, "no layer was stored again");
    // An unpack whose chain strata does not hold is unpacked as usual.
    let unknown = format!("sha256:{}", "0".repeat(64));
    let labels = HashMap::from([(SNAPSHOT_REF.to_string(), unknown.clone())]);
    let key = format!("default/99/extract-new {unknown}");
    s.create(Kind::Active, &key, &parent, labels)
        .expect("an unknown layer is prepared for unpacking");
    s.remove(&key).expect("remove");

    // The top snapshot serves the image's tree: a view of it shows the top layer's files.
    let view = s
        .create(Kind::View, "view", &parent, HashMap::new())
        .expect("view");
    let src = view.bind().expect("a view is a bind mount").source.clone();
    let image = dir.path().join("image");
    std::fs::create_dir(&image).expect("mkdir");
    strata_ok(
        &state,
        &[
            "mount",
            "strata-sample:latest",
            image.to_str().expect("utf-8"),
            "-d",
        ],
    );
    let _g = strata_testkit::MountGuard(image.clone());
    let (a, b) = (
        strata_testkit::snapshot::Snapshot::take(&image),
        strata_testkit::snapshot::Snapshot::take(&src),
    );
    assert_eq!(a.entries.len(), b.entries.len());
    assert!(a.entries == b.entries, "the view differs from the image");
    drop(_g);
    s.remove("view").expect("remove view");
    s.unmount_all();
}

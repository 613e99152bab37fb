//! Where things are: the repository, the `strata` binary cargo built, `target/tmp`, and the
//! sample image (built once per recipe version by `images/build.py`) with its layer tars.

use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest as _, Sha256};

/// The name the sample image is loaded under (`images/build.py`).
pub const SAMPLE_IMAGE: &str = "strata-sample:latest";

/// The repository (this crate is its `fuse-tests/kit`).
pub fn repo() -> PathBuf {
    let kit = Path::new(env!("CARGO_MANIFEST_DIR"));
    kit.parent()
        .and_then(Path::parent)
        .expect("fuse-tests/kit is two levels below the repository")
        .to_path_buf()
}

/// The cargo profile directory (`target/debug`) the running test or tool was built into: a
/// test is `target/<profile>/deps/NAME-HASH`, a tool (a cargo example)
/// `target/<profile>/examples/NAME`.
fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the running executable's path");
    exe.parent()
        .and_then(Path::parent)
        .expect("a test or example lives two levels below the target directory")
        .to_path_buf()
}

/// The strata binary under test: the one cargo built next to this test or tool (cargo builds
/// the package's binaries before its integration tests).
pub fn strata_bin() -> PathBuf {
    profile_dir().join("strata")
}

/// `target/tmp` (what cargo passes integration tests as `CARGO_TARGET_TMPDIR`), created.
pub fn target_tmp() -> PathBuf {
    let tmp = profile_dir()
        .parent()
        .expect("the profile directory is inside the target directory")
        .join("tmp");
    std::fs::create_dir_all(&tmp).expect("create target/tmp");
    tmp
}

/// Builds the sample image once (per recipe version) into `target/tmp` and returns its
/// output directory (see images/README.md); panics when it cannot.
pub fn sample_image() -> PathBuf {
    try_sample_image().expect("building the sample image")
}

/// [`sample_image`], for the tools: an error instead of a panic.
pub fn try_sample_image() -> anyhow::Result<PathBuf> {
    use anyhow::Context as _;
    let recipe = repo().join("images/build.py");
    let script = std::fs::read(&recipe).context("reading images/build.py")?;
    let stamp = hex::encode(&Sha256::digest(&script)[..8]);
    let out = target_tmp().join(format!("sample-image-{stamp}"));
    let _lock =
        strata::sys::lock_file(&out.with_extension("lock")).context("locking the sample image")?;
    if !out.join("done").exists() {
        let st = Command::new("python3")
            .arg(&recipe)
            .arg(&out)
            .status()
            .context("running python3")?;
        anyhow::ensure!(st.success(), "images/build.py failed");
        std::fs::write(out.join("done"), b"")?;
    }
    Ok(out)
}

/// The layer tars of the sample image, bottom first.
pub fn sample_layers() -> Vec<PathBuf> {
    let dir = sample_image().join("layers");
    let mut v: Vec<PathBuf> = (1..)
        .map(|i| dir.join(format!("{i}.tar")))
        .take_while(|p| p.exists())
        .collect();
    assert!(v.len() >= 4, "sample image has {} layers", v.len());
    v.dedup();
    v
}

/// The layer tars of a sample image directory, bottom first.
pub fn layer_tars(image: &Path) -> Vec<PathBuf> {
    (1..)
        .map(|i| image.join("layers").join(format!("{i}.tar")))
        .take_while(|p| p.exists())
        .collect()
}

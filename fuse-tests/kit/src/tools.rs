//! The start-up the tools (`tools/difftest`, `tools/crashtest`, cargo examples) share.

use std::path::PathBuf;

/// The start-up of the tools (difftest, crashtest): they need root; the sample image is
/// `image`, else built; side B's strata binary is `strata`, else the one built next to the
/// tool, or none when the tool runs kernel overlayfs on both sides (`kernel_only`).
pub fn tool_inputs(
    image: Option<PathBuf>,
    strata: Option<PathBuf>,
    kernel_only: bool,
) -> anyhow::Result<(PathBuf, Option<PathBuf>)> {
    anyhow::ensure!(
        rustix::process::geteuid().is_root(),
        "needs root (kernel overlayfs and FUSE mounts)"
    );
    let image = match image {
        Some(p) => p,
        None => crate::paths::try_sample_image()?,
    };
    if kernel_only {
        return Ok((image, None));
    }
    let strata = match strata {
        Some(p) => p,
        None => {
            let p = crate::paths::strata_bin();
            anyhow::ensure!(
                p.exists(),
                "no strata binary next to this example: run `cargo build --release` first or \
                 pass --strata PATH"
            );
            p
        }
    };
    Ok((image, Some(strata)))
}

//! `strata snapshotter`: containerd's snapshots API served over a unix socket (a containerd
//! "proxy plugin", as stargz, nydus and fuse-overlayfs-snapshotter are), so that containerd,
//! `ctr`, nerdctl and the kubelet get strata's merged views and writable layers.
//!
//! Owns `<root>/snapshotter/` (one directory per snapshot, `0700`: its record `info.json`
//! and, for an active snapshot, its writable layer `rw/` or, for an extraction snapshot, its
//! `upper/`, `work/` and `lower/` directories), the FUSE mounts of active snapshots and
//! views under a mounts directory outside the state root (one FUSE session per mounted
//! snapshot, all served by this one process), and the mapping of its errors to containerd's
//! gRPC codes. Snapshots are:
//! - active: a writable layer over the merged layers of the parent chain, mounted writable;
//! - extraction (an active snapshot of containerd's unpacker, key `ns/N/extract-…`): an
//!   `overlay` mount whose `upperdir` is a plain directory and whose `lowerdir` is the parent
//!   chain's read-only FUSE mount (an empty directory for a first layer). containerd's
//!   applier recognises exactly one overlay mount and, without mounting it, extracts the layer
//!   tar straight into the upper directory as overlayfs stores changes (whiteouts as 0/0
//!   character devices, opaque directories as `trusted.overlay.opaque`), copying the
//!   attributes of the parent directories it creates from the lower directory; nothing goes
//!   through FUSE. Mounted with kernel overlayfs, the same options show that change over the
//!   parent. Only for a snapshotter that is root in the initial user namespace;
//! - view: the parent chain's merged layers, mounted read-only;
//! - committed: the active snapshot's change set imported as a strata layer
//!   (content-addressed in the layer store), on top of the parent chain's layers. An
//!   extraction snapshot's upper directory becomes the layer without a copy: its files get
//!   second names in the layer's data directory and its tree becomes the index
//!   (`layer::upper`); the layer's id is the digest of the tar `strata save` would write for
//!   it (hashed, never stored). A writable layer's change set is streamed as a tar into the
//!   layer store.
//!
//! When containerd's unpacker names the committed snapshot it is about to make (its chain ID,
//! label `containerd.io/snapshot.ref`) and a committed snapshot with that label and parent is
//! here already (unpacked in another containerd namespace), `Prepare` answers `AlreadyExists`
//! and containerd uses that one (its remote-snapshot protocol): a layer is unpacked once.
//!
//! Every snapshot holds its layers as a [`User::Snapshot`](crate::image::User) of the image
//! store, so `rmi` and garbage collection never delete them under it. Containerd is given a
//! `bind` of the FUSE mount point (an extraction snapshot: the overlay above). Mounts are made
//! at `Prepare`/`View` and, after a restart of this process, again at the next `Mounts` call.
//!
//! Must never modify a committed layer, never mount inside the state root, and never block
//! the gRPC runtime on file-system work: the snapshotter core (`snapshots`) is synchronous, the
//! tokio/tonic edge (`grpc`) runs it on blocking threads. Knows nothing of containers,
//! namespaces or the CLI.

mod filter;
mod grpc;
mod live;
mod record;
mod snapshots;

use std::path::PathBuf;

pub use grpc::{ServeOptions, serve};
pub use record::{Kind, Record};
pub use snapshots::{
    BindMount, SNAPSHOT_REF, SnapshotMount, Snapshotter, UNPACK_KEY_PREFIX, Usage,
    is_extraction_key,
};

/// Why a snapshot operation failed; each maps to the gRPC code containerd expects.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("snapshot {0} already exists")]
    AlreadyExists(String),
    #[error("snapshot {0} does not exist")]
    NotFound(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0}")]
    InvalidArgument(String),
    #[error(transparent)]
    Image(#[from] crate::image::ImageError),
    #[error(transparent)]
    Mount(#[from] crate::fs::MountError),
    #[error(transparent)]
    Layer(#[from] crate::layer::LayerError),
    #[error(transparent)]
    Changes(#[from] crate::fs::changes::ChangesError),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("snapshot record {path}: {why}")]
    Record { path: PathBuf, why: String },
    #[error("{0}")]
    Internal(String),
}

impl SnapshotError {
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| SnapshotError::Io { path, source }
    }
}

impl From<SnapshotError> for containerd_snapshots::tonic::Status {
    fn from(e: SnapshotError) -> Self {
        use containerd_snapshots::tonic::Status;
        let msg = e.to_string();
        match e {
            SnapshotError::AlreadyExists(_) => Status::already_exists(msg),
            SnapshotError::NotFound(_) => Status::not_found(msg),
            SnapshotError::FailedPrecondition(_) => Status::failed_precondition(msg),
            SnapshotError::InvalidArgument(_) => Status::invalid_argument(msg),
            _ => Status::internal(msg),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use containerd_snapshots::tonic::{Code, Status};

    #[test]
    fn errors_map_to_containerds_codes() {
        let code = |e: SnapshotError| Status::from(e).code();
        assert_eq!(
            code(SnapshotError::AlreadyExists("k".into())),
            Code::AlreadyExists
        );
        assert_eq!(code(SnapshotError::NotFound("k".into())), Code::NotFound);
        assert_eq!(
            code(SnapshotError::FailedPrecondition("x".into())),
            Code::FailedPrecondition
        );
        assert_eq!(
            code(SnapshotError::InvalidArgument("x".into())),
            Code::InvalidArgument
        );
        assert_eq!(code(SnapshotError::Internal("x".into())), Code::Internal);
    }

    #[test]
    fn extraction_keys_are_containerds_unpack_keys() {
        // containerd's metadata layer prefixes `namespace/id/` to the unpacker's key.
        assert!(is_extraction_key(
            "default/12/extract-176329-aBc= sha256:0123abcd"
        ));
        assert!(is_extraction_key("extract-1 sha256:x"));
        for key in [
            "default/13/t1",
            "default/14/my-extract-1",
            "default/15/container/extract-1",
            "k8s.io/16/0123abcd",
            "",
        ] {
            assert!(!is_extraction_key(key), "{key}");
        }
    }
}

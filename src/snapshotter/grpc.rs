//! The gRPC edge: containerd's snapshots service (the `containerd-snapshots` crate, tonic) on
//! a unix socket created 0600, each call run on a blocking thread of a small tokio runtime
//! (the core is synchronous: FUSE mounts, sled and tar work never block the runtime's
//! workers). Serves until SIGTERM, SIGINT or SIGHUP, then removes the socket and unmounts
//! every snapshot.

use std::collections::HashMap;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use containerd_snapshots::api::types::Mount;
use containerd_snapshots::{self as cs, tonic};
use tracing::{info, info_span};

use super::SnapshotError;
use super::record::{Kind, Record};
use super::snapshots::{SnapshotMount, Snapshotter};

/// Where and how to serve.
#[derive(Clone, Debug)]
pub struct ServeOptions {
    /// The state root.
    pub root: PathBuf,
    /// The unix socket containerd connects to.
    pub address: PathBuf,
    /// Where the snapshots' mount points go (outside the state root).
    pub mounts: PathBuf,
}

struct Service(Arc<Snapshotter>);

/// Runs `f` on a blocking thread.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, SnapshotError> + Send + 'static,
) -> Result<T, SnapshotError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| SnapshotError::Internal(format!("snapshot operation failed: {e}")))?
}

fn info(r: Record) -> cs::Info {
    cs::Info {
        kind: match r.kind {
            Kind::View => cs::Kind::View,
            Kind::Active => cs::Kind::Active,
            Kind::Committed => cs::Kind::Committed,
        },
        name: r.key,
        parent: r.parent,
        labels: r.labels,
        created_at: r.created,
        updated_at: r.updated,
    }
}

fn mounts(m: SnapshotMount) -> Vec<Mount> {
    let path = |p: &Path| p.to_string_lossy().into_owned();
    match m {
        SnapshotMount::Bind(b) => vec![Mount {
            r#type: "bind".into(),
            source: path(&b.source),
            target: String::new(),
            options: vec!["rbind".into(), if b.read_only { "ro" } else { "rw" }.into()],
        }],
        // As containerd's own overlayfs snapshotter words it; its applier reads `upperdir`
        // and `lowerdir` from exactly these options.
        SnapshotMount::Overlay { lower, upper, work } => vec![Mount {
            r#type: "overlay".into(),
            source: "overlay".into(),
            target: String::new(),
            options: vec![
                "index=off".into(),
                format!("workdir={}", path(&work)),
                format!("upperdir={}", path(&upper)),
                format!("lowerdir={}", path(&lower)),
            ],
        }],
    }
}

#[tonic::async_trait]
impl cs::Snapshotter for Service {
    type Error = SnapshotError;

    async fn stat(&self, key: String) -> Result<cs::Info, SnapshotError> {
        let s = self.0.clone();
        blocking(move || s.stat(&key).map(info)).await
    }

    async fn update(
        &self,
        i: cs::Info,
        fieldpaths: Option<Vec<String>>,
    ) -> Result<cs::Info, SnapshotError> {
        let s = self.0.clone();
        blocking(move || {
            s.update(&i.name, i.labels, &fieldpaths.unwrap_or_default())
                .map(info)
        })
        .await
    }

    async fn usage(&self, key: String) -> Result<cs::Usage, SnapshotError> {
        let s = self.0.clone();
        let u = blocking(move || s.usage(&key)).await?;
        Ok(cs::Usage {
            inodes: u.inodes,
            size: u.size,
        })
    }

    async fn mounts(&self, key: String) -> Result<Vec<Mount>, SnapshotError> {
        let s = self.0.clone();
        blocking(move || s.mounts(&key).map(mounts)).await
    }

    async fn prepare(
        &self,
        key: String,
        parent: String,
        labels: HashMap<String, String>,
    ) -> Result<Vec<Mount>, SnapshotError> {
        let s = self.0.clone();
        blocking(move || s.create(Kind::Active, &key, &parent, labels).map(mounts)).await
    }

    async fn view(
        &self,
        key: String,
        parent: String,
        labels: HashMap<String, String>,
    ) -> Result<Vec<Mount>, SnapshotError> {
        let s = self.0.clone();
        blocking(move || s.create(Kind::View, &key, &parent, labels).map(mounts)).await
    }

    async fn commit(
        &self,
        name: String,
        key: String,
        labels: HashMap<String, String>,
    ) -> Result<(), SnapshotError> {
        let s = self.0.clone();
        blocking(move || s.commit(&name, &key, labels)).await
    }

    async fn remove(&self, key: String) -> Result<(), SnapshotError> {
        let s = self.0.clone();
        blocking(move || s.remove(&key)).await
    }

    async fn clear(&self) -> Result<(), SnapshotError> {
        let s = self.0.clone();
        blocking(move || s.cleanup()).await
    }

    type InfoStream = tokio_stream::Iter<std::vec::IntoIter<Result<cs::Info, SnapshotError>>>;

    async fn list(
        &self,
        _snapshotter: String,
        filters: Vec<String>,
    ) -> Result<Self::InfoStream, SnapshotError> {
        let s = self.0.clone();
        let records = blocking(move || s.list(&filters)).await?;
        let infos: Vec<_> = records.into_iter().map(|r| Ok(info(r))).collect();
        Ok(tokio_stream::iter(infos))
    }
}

/// Binds the socket at `address`, mode 0600 from the start. A socket file that nobody
/// serves (a killed snapshotter's) is replaced; a live one is refused.
fn bind(address: &Path) -> Result<std::os::unix::net::UnixListener, SnapshotError> {
    if let Some(dir) = address.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(SnapshotError::io(dir))?;
    }
    match std::fs::symlink_metadata(address) {
        Ok(m) if m.file_type().is_socket() => {
            if std::os::unix::net::UnixStream::connect(address).is_ok() {
                return Err(SnapshotError::FailedPrecondition(format!(
                    "{} is served by another process already",
                    address.display()
                )));
            }
            std::fs::remove_file(address).map_err(SnapshotError::io(address))?;
        }
        Ok(_) => {
            return Err(SnapshotError::InvalidArgument(format!(
                "{} exists and is not a socket",
                address.display()
            )));
        }
        Err(_) => {}
    }
    let old = rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o177));
    let bound = std::os::unix::net::UnixListener::bind(address);
    rustix::process::umask(old);
    let listener = bound.map_err(SnapshotError::io(address))?;
    std::fs::set_permissions(address, std::fs::Permissions::from_mode(0o600))
        .map_err(SnapshotError::io(address))?;
    listener
        .set_nonblocking(true)
        .map_err(SnapshotError::io(address))?;
    Ok(listener)
}

/// Serves containerd's snapshots API for the state root `opts.root` until a termination
/// signal; `ready` is called once the socket accepts connections.
pub fn serve(opts: &ServeOptions, ready: impl FnOnce()) -> Result<(), SnapshotError> {
    let span = info_span!("snapshotter", address = %opts.address.display());
    let _g = span.enter();
    // Every mounted snapshot opens a sled database, whose page table is a few MiB of zeroed
    // memory that stays nearly unused: from fresh mappings it costs only what is touched.
    crate::rwlayer::tune_allocator();
    // The socket first: a bad address is refused before anything is created.
    let listener = bind(&opts.address)?;
    let core = match Snapshotter::open(&opts.root, &opts.mounts) {
        Ok(c) => Arc::new(c),
        Err(e) => {
            let _ = std::fs::remove_file(&opts.address);
            return Err(e);
        }
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(32)
        .enable_io()
        .thread_name("snapshotter-grpc")
        .build()
        .map_err(|e| SnapshotError::Internal(format!("starting the gRPC runtime: {e}")))?;
    let service = cs::server(Arc::new(Service(core.clone())));
    let address = opts.address.clone();
    let served = rt.block_on(async move {
        use tokio::signal::unix::{SignalKind, signal};
        let sig = |k| signal(k).map_err(SnapshotError::io("signal handler"));
        let (mut term, mut int, mut hup) = (
            sig(SignalKind::terminate())?,
            sig(SignalKind::interrupt())?,
            sig(SignalKind::hangup())?,
        );
        let listener =
            tokio::net::UnixListener::from_std(listener).map_err(SnapshotError::io(&address))?;
        let incoming = tokio_stream::wrappers::UnixListenerStream::new(listener);
        let shutdown = async move {
            tokio::select! {
                _ = term.recv() => info!("SIGTERM: stopping"),
                _ = int.recv() => info!("SIGINT: stopping"),
                _ = hup.recv() => info!("SIGHUP: stopping"),
            }
        };
        info!("serving");
        ready();
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming_shutdown(incoming, shutdown)
            .await
            .map_err(|e| SnapshotError::Internal(format!("gRPC server: {e}")))
    });
    let _ = std::fs::remove_file(&opts.address);
    rt.shutdown_timeout(std::time::Duration::from_secs(5));
    core.unmount_all();
    info!("stopped");
    served
}

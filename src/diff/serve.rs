//! `diff` of a running container: its writable layer is a sled database that only the
//! process serving the mount (the shim) may open, and the shim's in-memory view is the truth
//! anyway (every change is applied to it before the FUSE reply). So the shim answers: it
//! listens on `diff.sock` in the container's directory, and to every connection writes the
//! change list computed from its live view (O(changes), under the view's lock, so the list is
//! one consistent state), then closes it.
//!
//! The socket is reached as `/proc/self/fd/N/diff.sock` through a descriptor of the
//! container's directory, so the 108-byte limit of socket paths never bites whatever the
//! state root's path; the directory's permissions guard it like the rest of the records.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::Arc;

use tracing::{debug, info_span, warn};

use super::{Change, DiffError};
use crate::fs::view::View;

pub const SOCKET: &str = "diff.sock";
/// Largest answer a client accepts.
const MAX_ANSWER: u64 = 1 << 30;

fn short_path(dir: &File) -> String {
    format!("/proc/self/fd/{}/{SOCKET}", dir.as_raw_fd())
}

/// Starts answering `diff` requests for `view` on `<dir>/diff.sock` (a thread that lives as
/// long as the process).
pub fn serve(dir: &Path, view: Arc<View>) -> Result<(), DiffError> {
    let d = File::open(dir).map_err(|e| DiffError::io(dir.display(), e))?;
    let _ = std::fs::remove_file(dir.join(SOCKET));
    let listener = UnixListener::bind(short_path(&d))
        .map_err(|e| DiffError::io(dir.join(SOCKET).display(), e))?;
    std::thread::Builder::new()
        .name("diff".into())
        .spawn(move || {
            for conn in listener.incoming() {
                let mut s = match conn {
                    Ok(s) => s,
                    Err(e) => {
                        warn!(error = %e, "diff socket");
                        continue;
                    }
                };
                let _s = info_span!("diff_request").entered();
                let changes = view.changes();
                debug!(changes = changes.len(), "answering diff");
                let body = bincode::serde::encode_to_vec(&changes, bincode::config::standard())
                    .unwrap_or_default();
                let _ = s.write_all(&body);
            }
        })
        .map_err(|e| DiffError::io("diff thread", e))?;
    Ok(())
}

/// Asks the shim of the container in `dir` for its changes. `Ok(None)` when nobody listens
/// (the container stopped meanwhile).
pub fn ask(dir: &Path) -> Result<Option<Vec<Change>>, DiffError> {
    let d = File::open(dir).map_err(|e| DiffError::io(dir.display(), e))?;
    let mut s = match UnixStream::connect(short_path(&d)) {
        Ok(s) => s,
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
            ) =>
        {
            return Ok(None);
        }
        Err(e) => return Err(DiffError::io(dir.join(SOCKET).display(), e)),
    };
    let mut body = Vec::new();
    (&mut s)
        .take(MAX_ANSWER)
        .read_to_end(&mut body)
        .map_err(|e| DiffError::io(dir.join(SOCKET).display(), e))?;
    let (changes, _) = bincode::serde::decode_from_slice(&body, bincode::config::standard())
        .map_err(|e| DiffError::Shim(e.to_string()))?;
    Ok(Some(changes))
}

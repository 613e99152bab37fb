//! The change set of a live writable view, for other processes: a writable layer is a sled
//! database that only the process serving the mount may open (for a container, its shim),
//! and that process's in-memory view is the truth anyway (every change is applied to it
//! before the FUSE reply). So that process answers: it listens on `diff.sock` in a directory
//! it is given (the container's), and to every connection writes the change list computed
//! from its live view (O(changes), under the view's lock, so the list is one consistent
//! state) or a tar of it, then closes it. Knows nothing of containers beyond that directory.
//!
//! The socket is reached as `/proc/self/fd/N/diff.sock` through a descriptor of the
//! directory, so the 108-byte limit of socket paths never bites whatever the state root's
//! path; the directory's permissions guard it like the rest of the records.

use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tracing::{debug, info_span, warn};

use super::{Change, ChangesError};
use crate::fs::view::View;

pub const SOCKET: &str = "diff.sock";
/// Largest answer a client accepts.
const MAX_ANSWER: u64 = 1 << 30;
/// Longest request line the shim reads.
const MAX_REQUEST: u64 = 1 << 20;

fn short_path(dir: &File) -> String {
    format!("/proc/self/fd/{}/{SOCKET}", dir.as_raw_fd())
}

/// What a client asks the shim for (one JSON line).
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase")]
pub enum Request {
    /// The change list (bincode).
    Diff,
    /// A tar of the changes (`all`: of the whole file system), leaving out the mount targets
    /// `targets` the runtime created (see `super::without_mount_targets`).
    Tar { all: bool, targets: Vec<Vec<u8>> },
}

/// Starts answering requests for `view` on `<dir>/diff.sock` (a thread that lives as long as
/// the process; one request at a time).
pub fn serve(dir: &Path, view: Arc<View>) -> Result<(), ChangesError> {
    let d = File::open(dir).map_err(|e| ChangesError::io(dir.display(), e))?;
    let _ = std::fs::remove_file(dir.join(SOCKET));
    let listener = UnixListener::bind(short_path(&d))
        .map_err(|e| ChangesError::io(dir.join(SOCKET).display(), e))?;
    std::thread::Builder::new()
        .name("diff".into())
        .spawn(move || {
            for conn in listener.incoming() {
                match conn {
                    Ok(s) => {
                        if let Err(e) = answer(&view, s) {
                            warn!(error = %e, "diff request");
                        }
                    }
                    Err(e) => warn!(error = %e, "diff socket"),
                }
            }
        })
        .map_err(|e| ChangesError::io("diff thread", e))?;
    Ok(())
}

fn answer(view: &View, s: UnixStream) -> Result<(), ChangesError> {
    let _s = info_span!("diff_request").entered();
    let sock = |e| ChangesError::io(SOCKET, e);
    s.set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .map_err(sock)?;
    let mut line = String::new();
    BufReader::new(Read::take(&s, MAX_REQUEST))
        .read_line(&mut line)
        .map_err(sock)?;
    let req: Request = serde_json::from_str(&line)
        .map_err(|e| ChangesError::Server(format!("bad request: {e}")))?;
    let mut out = BufWriter::new(&s);
    match req {
        Request::Diff => {
            let changes = view.changes();
            debug!(changes = changes.len(), "answering diff");
            let body = bincode::serde::encode_to_vec(&changes, bincode::config::standard())
                .map_err(|e| ChangesError::Server(e.to_string()))?;
            out.write_all(&body).map_err(sock)?;
        }
        Request::Tar { all, targets } => {
            let changes = if all {
                view.everything()
            } else {
                super::without_mount_targets(view.changes(), &targets)
            };
            debug!(changes = changes.len(), all, "streaming a tar");
            let (w, _) = super::tar::write(view, &changes, out)?;
            out = w;
        }
    }
    out.flush().map_err(sock)
}

fn connect(dir: &Path, req: &Request) -> Result<Option<UnixStream>, ChangesError> {
    let d = File::open(dir).map_err(|e| ChangesError::io(dir.display(), e))?;
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
        Err(e) => return Err(ChangesError::io(dir.join(SOCKET).display(), e)),
    };
    let mut line = serde_json::to_vec(req).map_err(|e| ChangesError::Server(e.to_string()))?;
    line.push(b'\n');
    s.write_all(&line)
        .map_err(|e| ChangesError::io(dir.join(SOCKET).display(), e))?;
    Ok(Some(s))
}

/// Asks the shim of the container in `dir` for its changes. `Ok(None)` when nobody listens
/// (the container stopped meanwhile).
pub fn ask(dir: &Path) -> Result<Option<Vec<Change>>, ChangesError> {
    let Some(mut s) = connect(dir, &Request::Diff)? else {
        return Ok(None);
    };
    let mut body = Vec::new();
    (&mut s)
        .take(MAX_ANSWER)
        .read_to_end(&mut body)
        .map_err(|e| ChangesError::io(dir.join(SOCKET).display(), e))?;
    let (changes, _) = bincode::serde::decode_from_slice(&body, bincode::config::standard())
        .map_err(|e| ChangesError::Server(e.to_string()))?;
    Ok(Some(changes))
}

/// Asks the shim of the container in `dir` for a tar (see [`Request::Tar`]) and copies it to
/// `out`; `Ok(false)` when nobody listens. A tar cut short (the shim died) is an error.
pub fn ask_tar(
    dir: &Path,
    all: bool,
    targets: Vec<Vec<u8>>,
    out: &mut impl Write,
) -> Result<bool, ChangesError> {
    let Some(mut s) = connect(dir, &Request::Tar { all, targets })? else {
        return Ok(false);
    };
    let p = dir.join(SOCKET);
    // A complete tar ends with two zero blocks; a stream without them was cut off.
    let mut tail = Vec::with_capacity(2048);
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(ChangesError::io(p.display(), e)),
        };
        out.write_all(&buf[..n])
            .map_err(|e| ChangesError::io("output", e))?;
        tail.extend_from_slice(&buf[..n]);
        if tail.len() > 1024 {
            tail.drain(..tail.len() - 1024);
        }
    }
    if tail.len() < 1024 || tail.iter().any(|&b| b != 0) {
        return Err(ChangesError::Server(
            "the tar stream from the container's shim was cut short".into(),
        ));
    }
    Ok(true)
}

//! The markers of the layer tar format (OCI image spec, from aufs): a whiteout `.wh.NAME`
//! deletes `NAME` from the layers below, `DIR/.wh..wh..opq` hides everything below `DIR`.
//! Read by extraction, written by every tar writer (`image` save, `fs` commit and export),
//! all the same way: an empty regular file, `0644`, owned by root, mtime 0.

use std::io::{self, Write};
use std::path::Path;

pub const WHITEOUT_PREFIX: &[u8] = b".wh.";
pub const OPAQUE_MARKER: &[u8] = b".wh..wh..opq";

/// Appends a marker (an empty file as above) at `path` to a tar stream.
pub fn append<W: Write>(b: &mut tar::Builder<W>, path: &Path) -> io::Result<()> {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Regular);
    h.set_size(0);
    h.set_mode(0o644);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    b.append_data(&mut h, path, io::empty())
}

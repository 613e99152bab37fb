//! Layer index entries for the library's unit tests: root-owned, `0755`, mtime 1.

use super::{Entry, Kind};

pub fn entry(path: &str, kind: Kind) -> Entry {
    Entry {
        path: path.into(),
        kind,
        mode: 0o755,
        uid: 0,
        gid: 0,
        mtime: 1,
        mtime_nsec: 0,
        xattrs: vec![],
    }
}

pub fn dir(path: &str) -> Entry {
    entry(
        path,
        Kind::Dir {
            opaque: false,
            implicit: false,
        },
    )
}

/// A file of `size` bytes whose data is the layer's data file number `file`.
pub fn file(path: &str, size: u64, file: u32) -> Entry {
    entry(
        path,
        Kind::File {
            size,
            file,
            nlink: 1,
        },
    )
}

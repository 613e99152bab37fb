//! The operations a sequence is made of, their results, and the faults a broken side B can
//! inject (engine self-test).

use crate::snapshot::St;

/// Open-descriptor slots per side: `open` fills one, `write`/`read`/… use it, so sequences
/// exercise descriptors that outlive renames, unlinks and copy-ups.
pub const SLOTS: usize = 4;

/// One operation, with everything it needs (paths relative to the mount root).
#[derive(Clone, Debug, PartialEq)]
pub enum Op {
    /// `openat2(path, flags | O_CLOEXEC | O_NONBLOCK, mode)` into `slot` (closing what was there).
    Open {
        slot: usize,
        path: Vec<u8>,
        flags: u32,
        mode: u32,
    },
    Close {
        slot: usize,
    },
    /// `write` (at the descriptor's position) or `pwrite` of `len` bytes made from `data`.
    Write {
        slot: usize,
        off: Option<u64>,
        len: usize,
        data: u64,
    },
    Read {
        slot: usize,
        off: Option<u64>,
        len: usize,
    },
    /// `lseek(SEEK_SET)` or, with `from_end`, `lseek(SEEK_END)`.
    Seek {
        slot: usize,
        off: i64,
        from_end: bool,
    },
    Ftruncate {
        slot: usize,
        size: u64,
    },
    Fallocate {
        slot: usize,
        mode: u32,
        off: u64,
        len: u64,
    },
    Fsync {
        slot: usize,
        data_only: bool,
    },
    Fstat {
        slot: usize,
    },
    /// One-shot: open `O_WRONLY | flags`, write (`pwrite` at `off`, or `write`), close.
    WriteFile {
        path: Vec<u8>,
        flags: u32,
        off: Option<u64>,
        len: usize,
        data: u64,
    },
    /// One-shot: open read-only, read everything, close.
    ReadFile {
        path: Vec<u8>,
    },
    /// `truncate(2)` by path (no open file: FUSE gets a setattr without a handle).
    Truncate {
        path: Vec<u8>,
        size: u64,
    },
    /// `lstat`, or `stat` (following symlinks inside the mount) with `follow`.
    Stat {
        path: Vec<u8>,
        follow: bool,
    },
    Unlink {
        path: Vec<u8>,
    },
    Mkdir {
        path: Vec<u8>,
        mode: u32,
    },
    Rmdir {
        path: Vec<u8>,
    },
    /// `renameat2` with `flags` 0, `RENAME_NOREPLACE` or `RENAME_EXCHANGE`.
    Rename {
        from: Vec<u8>,
        to: Vec<u8>,
        flags: u32,
    },
    Link {
        from: Vec<u8>,
        to: Vec<u8>,
    },
    Symlink {
        target: Vec<u8>,
        path: Vec<u8>,
    },
    Readlink {
        path: Vec<u8>,
    },
    /// `fchmodat2(AT_SYMLINK_NOFOLLOW)` (symlinks: `EOPNOTSUPP` on both sides).
    Chmod {
        path: Vec<u8>,
        mode: u32,
    },
    /// `lchown`; `None` leaves that id unchanged.
    Chown {
        path: Vec<u8>,
        uid: Option<u32>,
        gid: Option<u32>,
    },
    /// `utimensat(AT_SYMLINK_NOFOLLOW)` with explicit (seconds, nanoseconds).
    Utimens {
        path: Vec<u8>,
        atime: (i64, i64),
        mtime: (i64, i64),
    },
    SetXattr {
        path: Vec<u8>,
        name: String,
        value: Vec<u8>,
        flags: u32,
    },
    GetXattr {
        path: Vec<u8>,
        name: String,
    },
    ListXattr {
        path: Vec<u8>,
    },
    RemoveXattr {
        path: Vec<u8>,
        name: String,
    },
    /// `mknodat` of a fifo, or of a socket with `socket`.
    Mknod {
        path: Vec<u8>,
        socket: bool,
        mode: u32,
    },
    Readdir {
        path: Vec<u8>,
    },
}

/// What an operation returned, errno aside.
#[derive(Clone, Debug, PartialEq)]
pub enum Val {
    Unit,
    Num(i64),
    Data(Vec<u8>),
    Stat(St),
    /// Sorted (name, type) pairs of a directory, without `.` and `..`.
    Dir(Vec<(Vec<u8>, char)>),
    /// Sorted xattr names.
    Names(Vec<Vec<u8>>),
    /// Not run on purpose (opening a device node would open the host's device).
    Skipped(&'static str),
}

pub type Res = Result<Val, i32>;

/// Deliberate misbehaviour of side B, to test that the engine detects and shrinks.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Fault {
    /// Writes of ≥ 2 bytes at offset ≥ 4096 store their last byte flipped.
    FlipLateWriteByte,
    /// `chmod` drops the others-execute bit.
    ChmodDropsOtherExec,
}

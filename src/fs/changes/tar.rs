//! Writes a writable view's changes (for `commit`) or its whole file system (for `export`)
//! as a tar stream, reading everything through the view (so copied-up chunks and lower data
//! come out stitched as the container sees them).
//!
//! Layer conventions (OCI image spec): a deleted path is an empty `.wh.NAME` file; a
//! directory that replaced a lower one is followed by `DIR/.wh..wh..opq`; a second name of an
//! inode is a hard link (`LNKTYPE`) to the first. Ownership, permissions, mtimes (PAX, with
//! nanoseconds), device numbers and xattrs (`SCHILY.xattr.*`) are kept; sockets cannot be put
//! in a tar and are skipped, as Docker does.

use std::collections::HashMap;
use std::io::{Read, Write};

use tracing::info_span;

use super::{Change, ChangesError};
use crate::fs::view::View;
use crate::layer::marker;
use crate::rwlayer::FileKind;

const READ_CHUNK: u32 = 1 << 20;

/// What a tar stream got.
#[derive(Debug, Default, Clone, Copy)]
pub struct TarStats {
    pub entries: u64,
    pub bytes: u64,
}

struct ViewReader<'a> {
    view: &'a View,
    ino: u64,
    at: u64,
    size: u64,
    path: &'a [u8],
}

impl Read for ViewReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.at >= self.size || buf.is_empty() {
            return Ok(0);
        }
        let want = (buf.len() as u64)
            .min(self.size - self.at)
            .min(READ_CHUNK as u64) as u32;
        let got = self.view.read(self.ino, self.at, want).map_err(|errno| {
            std::io::Error::other(format!(
                "reading {:?}: errno {errno}",
                String::from_utf8_lossy(self.path)
            ))
        })?;
        if got.is_empty() {
            // The file shrank meanwhile: pad with zeros to the size in the header.
            let n = want as usize;
            buf[..n].fill(0);
            self.at += n as u64;
            return Ok(n);
        }
        buf[..got.len()].copy_from_slice(&got);
        self.at += got.len() as u64;
        Ok(got.len())
    }
}

/// A byte path as a `Path` (names need not be UTF-8).
fn bp(p: &[u8]) -> &std::path::Path {
    use std::os::unix::ffi::OsStrExt;
    std::path::Path::new(std::ffi::OsStr::from_bytes(p))
}

fn show(p: &[u8]) -> String {
    String::from_utf8_lossy(p).into_owned()
}

fn parent_and_name(path: &[u8]) -> (&[u8], &[u8]) {
    match path.iter().rposition(|&b| b == b'/') {
        Some(i) => (&path[..i], &path[i + 1..]),
        None => (b"", path),
    }
}

fn join(parent: &[u8], name: &[u8]) -> Vec<u8> {
    let mut p = parent.to_vec();
    if !p.is_empty() {
        p.push(b'/');
    }
    p.extend_from_slice(name);
    p
}

/// Major and minor from the kernel's `dev_t` encoding FUSE carries.
fn split_dev(rdev: u32) -> (u32, u32) {
    (
        (rdev >> 8) & 0xfff,
        (rdev & 0xff) | ((rdev >> 12) & 0xfff00),
    )
}

/// Writes `changes` (as from [`View::changes`] or [`View::everything`]) as a tar to `out`.
pub fn write<W: Write>(
    view: &View,
    changes: &[Change],
    out: W,
) -> Result<(W, TarStats), ChangesError> {
    let _s = info_span!("write_tar", changes = changes.len()).entered();
    let mut b = tar::Builder::new(out);
    b.follow_symlinks(false);
    let mut stats = TarStats::default();
    // Inode → the first path written for it (hard links).
    let mut first: HashMap<u64, Vec<u8>> = HashMap::new();
    let io = |p: &[u8]| {
        let p = show(p);
        move |e| ChangesError::io(p, e)
    };
    for c in changes {
        let Some(ino) = c.ino else {
            let (parent, name) = parent_and_name(&c.path);
            let mut wh = marker::WHITEOUT_PREFIX.to_vec();
            wh.extend_from_slice(name);
            let p = join(parent, &wh);
            marker::append(&mut b, bp(&p)).map_err(io(&p))?;
            stats.entries += 1;
            continue;
        };
        let a = view.getattr(ino).map_err(|errno| ChangesError::Read {
            path: show(&c.path),
            errno,
        })?;
        let mut h = tar::Header::new_gnu();
        h.set_mode(u32::from(a.perm));
        h.set_uid(u64::from(a.uid));
        h.set_gid(u64::from(a.gid));
        h.set_mtime(a.mtime.sec.max(0) as u64);
        let mut pax: Vec<(String, Vec<u8>)> = Vec::new();
        if a.mtime.nsec != 0 || a.mtime.sec < 0 {
            let (s, ns) = if a.mtime.sec < 0 && a.mtime.nsec > 0 {
                (
                    format!("-{}", -(a.mtime.sec + 1)),
                    1_000_000_000 - a.mtime.nsec,
                )
            } else {
                (a.mtime.sec.to_string(), a.mtime.nsec)
            };
            pax.push(("mtime".into(), format!("{s}.{ns:09}").into_bytes()));
        }
        let names = view.listxattr(ino).unwrap_or_default();
        for n in names.split(|&x| x == 0).filter(|n| !n.is_empty()) {
            if let Ok(v) = view.getxattr(ino, n) {
                pax.push((format!("SCHILY.xattr.{}", show(n)), v));
            }
        }
        if a.kind == FileKind::Socket {
            continue;
        }
        if a.kind == FileKind::File
            && a.nlink > 1
            && let Some(target) = first.get(&ino)
        {
            h.set_entry_type(tar::EntryType::Link);
            h.set_size(0);
            b.append_link(&mut h, bp(&c.path), bp(target))
                .map_err(io(&c.path))?;
            stats.entries += 1;
            continue;
        }
        if !pax.is_empty() {
            b.append_pax_extensions(pax.iter().map(|(k, v)| (k.as_str(), v.as_slice())))
                .map_err(io(&c.path))?;
        }
        match a.kind {
            FileKind::Dir => {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_size(0);
                let mut p = c.path.clone();
                p.push(b'/');
                b.append_data(&mut h, bp(&p), std::io::empty())
                    .map_err(io(&c.path))?;
                if c.opaque {
                    let op = join(&c.path, marker::OPAQUE_MARKER);
                    marker::append(&mut b, bp(&op)).map_err(io(&op))?;
                    stats.entries += 1;
                }
            }
            FileKind::File => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_size(a.size);
                let r = ViewReader {
                    view,
                    ino,
                    at: 0,
                    size: a.size,
                    path: &c.path,
                };
                b.append_data(&mut h, bp(&c.path), r).map_err(io(&c.path))?;
                stats.bytes += a.size;
                if a.nlink > 1 {
                    first.insert(ino, c.path.clone());
                }
            }
            FileKind::Symlink => {
                let target = view.readlink(ino).map_err(|errno| ChangesError::Read {
                    path: show(&c.path),
                    errno,
                })?;
                h.set_entry_type(tar::EntryType::Symlink);
                h.set_size(0);
                b.append_link(&mut h, bp(&c.path), bp(&target))
                    .map_err(io(&c.path))?;
            }
            FileKind::Fifo | FileKind::CharDev | FileKind::BlockDev => {
                h.set_entry_type(match a.kind {
                    FileKind::Fifo => tar::EntryType::Fifo,
                    FileKind::CharDev => tar::EntryType::Char,
                    _ => tar::EntryType::Block,
                });
                let (major, minor) = split_dev(a.rdev);
                h.set_device_major(major).map_err(io(&c.path))?;
                h.set_device_minor(minor).map_err(io(&c.path))?;
                h.set_size(0);
                b.append_data(&mut h, bp(&c.path), std::io::empty())
                    .map_err(io(&c.path))?;
            }
            FileKind::Socket => {}
        }
        stats.entries += 1;
    }
    let out = b.into_inner().map_err(|e| ChangesError::io("tar", e))?;
    Ok((out, stats))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_numbers_round_trip_the_kernel_encoding() {
        // encode_dev(8, 0x12345) in fs::tree.
        assert_eq!(split_dev(0x12300845), (8, 0x12345));
        assert_eq!(split_dev(0x103), (1, 3));
    }
}

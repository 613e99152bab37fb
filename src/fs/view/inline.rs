//! Small files' bytes in memory only while they change. A record whose inline bytes the layer
//! holds exactly as memory does (its batch was written and nothing changed it since) drops them
//! and keeps its metadata: the inode is then *stored*. A read takes a stored file's bytes from
//! the layer (sled's cache serves the hot ones); a change of its data first brings them back
//! ([`View::resident`]); a metadata-only change does not, and `writeback` completes the record
//! from the layer when it writes it. Records loaded at mount start stored.
//!
//! Why it is right: a stored inode's bytes can change only after they are back in memory, and
//! they leave memory again only after a batch that wrote them, so while an inode is stored the
//! layer's record holds its bytes. Owns the `stored` set of the state. Must never read or change
//! a stored record's bytes in memory (its payload there is empty) and never read the layer
//! under the state lock.

use super::{Locked, Res, State, View, layer_errno};
use crate::rwlayer::{Data, Inode};

impl State {
    /// Whether the inline bytes of `ino` are only in the layer.
    pub(super) fn is_stored(&self, ino: u64) -> bool {
        self.stored.contains_key(&ino)
    }

    /// After a batch holding the records of `written` is applied: the inline records among them
    /// that nothing changed since drop their bytes.
    pub(super) fn evict_clean(&mut self, written: impl Iterator<Item = u64>) {
        self.evictions += 1;
        let round = self.evictions;
        for ino in written {
            if self.dirty.has_inode(ino) || self.stored.contains_key(&ino) {
                continue;
            }
            if let Some(Inode {
                data: Data::Inline(bytes),
                ..
            }) = self.inodes.get_mut(&ino)
                && !bytes.is_empty()
            {
                *bytes = Vec::new();
                self.stored.insert(ino, round);
            }
        }
    }

    /// Forgets `ino` (freed).
    pub(super) fn unstore(&mut self, ino: u64) {
        self.stored.remove(&ino);
    }
}

impl View {
    /// The state lock, with the inline bytes of `ino` back in memory if they were stored: for
    /// a change of its data. The record stays clean (it equals the layer's).
    pub(super) fn resident(&self, ino: u64) -> Res<Locked<'_>> {
        if let Some(st) = self.fetch(ino)? {
            return Ok(st);
        }
        // Evicted again while the layer was read (another change and a batch came in between):
        // with the batches held off it cannot happen again.
        let _no_batches = self.flushing.lock().unwrap_or_else(|e| e.into_inner());
        self.fetch(ino)?.ok_or(libc::EIO)
    }

    /// One try of [`resident`](Self::resident): `None` when `ino` was evicted anew meanwhile.
    fn fetch(&self, ino: u64) -> Res<Option<Locked<'_>>> {
        let st = self.lock();
        let Some(&round) = st.stored.get(&ino) else {
            return Ok(Some(st));
        };
        drop(st);
        let bytes = self.layer.inline_data(ino).map_err(layer_errno)?;
        let mut st = self.lock();
        match st.stored.get(&ino) {
            None => Ok(Some(st)),
            Some(&r) if r != round => Ok(None),
            Some(_) => {
                // Stored means the layer's record holds the bytes.
                let bytes = bytes.ok_or(libc::EIO)?;
                st.stored.remove(&ino);
                if let Some(Inode {
                    data: Data::Inline(v),
                    ..
                }) = st.inodes.get_mut(&ino)
                {
                    *v = bytes;
                }
                Ok(Some(st))
            }
        }
    }

    /// The bytes of stored file `ino` as the layer has them now (for a read, outside the
    /// lock): `None` if it no longer holds inline bytes (changed meanwhile).
    pub(super) fn stored_bytes(&self, ino: u64) -> Res<Option<Vec<u8>>> {
        self.layer.inline_data(ino).map_err(layer_errno)
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{ME, ROOT, ino, pattern, view};
    use super::super::{INLINE_MAX, SetAttr, View};
    use crate::rwlayer::Data;

    /// Whether the bytes of `ino` are only in the layer (and not in memory).
    fn stored(v: &View, ino: u64) -> bool {
        let st = v.lock();
        let empty = matches!(&st.inodes[&ino].data, Data::Inline(b) if b.is_empty());
        st.is_stored(ino) && empty
    }

    /// A new small file holding `data`, its batch written.
    fn small(v: &View, name: &[u8], data: &[u8]) -> u64 {
        let f = v
            .make(ME, ROOT, name, libc::S_IFREG | 0o644, 0, None)
            .unwrap();
        v.write(f.ino, 0, data).unwrap();
        v.write_behind().unwrap();
        f.ino
    }

    fn size(v: &View, ino: u64, size: u64) {
        let set = SetAttr {
            size: Some(size),
            ..Default::default()
        };
        v.setattr(ino, &set).unwrap();
    }

    #[test]
    fn a_written_small_file_leaves_memory_and_reads_back_from_the_layer() {
        let tmp = tempfile::tempdir().unwrap();
        let v = view(tmp.path());
        let data = pattern(3000);
        let f = v
            .make(ME, ROOT, b"f", libc::S_IFREG | 0o644, 0, None)
            .unwrap();
        v.write(f.ino, 0, &data).unwrap();
        assert!(!stored(&v, f.ino), "dirty bytes left memory");
        v.write_behind().unwrap();
        assert!(stored(&v, f.ino), "clean bytes stayed in memory");
        assert_eq!(v.read(f.ino, 0, 1 << 20).unwrap(), data);
        assert_eq!(v.read(f.ino, 100, 50).unwrap(), &data[100..150]);
        assert_eq!(v.read(f.ino, 2990, 100).unwrap(), &data[2990..]);
        assert_eq!(v.read(f.ino, 5000, 10).unwrap(), b"");
        assert_eq!(v.getattr(f.ino).unwrap().size, 3000);
        assert!(stored(&v, f.ino), "a read brought the bytes back");
    }

    #[test]
    fn small_files_load_stored_at_mount() {
        let tmp = tempfile::tempdir().unwrap();
        let f = {
            let v = view(tmp.path());
            let f = v
                .make(ME, ROOT, b"f", libc::S_IFREG | 0o644, 0, None)
                .unwrap();
            v.write(f.ino, 0, b"kept").unwrap();
            v.sync_all().unwrap();
            f.ino
        };
        let v = view(tmp.path());
        assert!(stored(&v, f));
        assert_eq!(v.read(ino(&v, "f"), 0, 100).unwrap(), b"kept");
    }

    #[test]
    fn writing_a_stored_file_brings_its_bytes_back_first() {
        let tmp = tempfile::tempdir().unwrap();
        let (f, g) = {
            let v = view(tmp.path());
            let f = small(&v, b"f", b"hello world");
            v.write(f, 6, b"WORLD!").unwrap();
            assert!(!stored(&v, f));
            assert_eq!(v.read(f, 0, 100).unwrap(), b"hello WORLD!");
            v.write_behind().unwrap();
            assert!(stored(&v, f));
            // Outgrowing the record: the stored bytes move to the backing file.
            let g = small(&v, b"g", b"head");
            v.write(g, INLINE_MAX, b"tail").unwrap();
            let got = v.read(g, 0, 1 << 20).unwrap();
            assert_eq!(got.len() as u64, INLINE_MAX + 4);
            assert_eq!(&got[..4], b"head");
            assert!(v.layer.backing_path(g).exists());
            v.sync_all().unwrap();
            (f, g)
        };
        let v = view(tmp.path());
        assert_eq!(v.read(f, 0, 100).unwrap(), b"hello WORLD!");
        let got = v.read(g, 0, 1 << 20).unwrap();
        assert_eq!(
            (&got[..4], &got[INLINE_MAX as usize..]),
            (&b"head"[..], &b"tail"[..])
        );
    }

    #[test]
    fn truncating_a_stored_file_keeps_its_head() {
        let tmp = tempfile::tempdir().unwrap();
        let data = pattern(2000);
        let (a, b, c) = {
            let v = view(tmp.path());
            let a = small(&v, b"a", &data);
            let b = small(&v, b"b", &data);
            let c = small(&v, b"c", &data);
            size(&v, a, 500);
            size(&v, b, 3000);
            size(&v, c, 2 * INLINE_MAX);
            assert_eq!(v.read(a, 0, 1 << 20).unwrap(), &data[..500]);
            v.sync_all().unwrap();
            assert!(stored(&v, a) && stored(&v, b));
            (a, b, c)
        };
        let v = view(tmp.path());
        assert_eq!(v.read(a, 0, 1 << 20).unwrap(), &data[..500]);
        let got = v.read(b, 0, 1 << 20).unwrap();
        assert_eq!(&got[..2000], &data[..]);
        assert_eq!(got[2000..], [0; 1000]);
        let got = v.read(c, 0, 1 << 20).unwrap();
        assert_eq!(got.len() as u64, 2 * INLINE_MAX);
        assert_eq!(&got[..2000], &data[..]);
        assert!(got[2000..].iter().all(|&x| x == 0));
        assert!(v.layer.backing_path(c).exists());
    }

    #[test]
    fn metadata_changes_of_a_stored_file_keep_its_bytes_in_the_layer() {
        let tmp = tempfile::tempdir().unwrap();
        let (f, g) = {
            let v = view(tmp.path());
            let f = small(&v, b"f", b"moved bytes");
            v.rename(ROOT, b"f", ino(&v, "d"), b"moved", 0).unwrap();
            v.setattr(
                f,
                &SetAttr {
                    mode: Some(0o600),
                    ..Default::default()
                },
            )
            .unwrap();
            v.setxattr(f, b"user.k", b"v", 0).unwrap();
            v.link(f, ROOT, b"link").unwrap();
            // Changed but stored: the batch takes its bytes from the layer.
            v.write_behind().unwrap();
            assert!(stored(&v, f));
            assert_eq!(v.read(f, 0, 100).unwrap(), b"moved bytes");
            // A metadata change, then a data change before the batch: the bytes come back
            // into the dirty record.
            let g = small(&v, b"g", b"0123456789");
            v.setattr(
                g,
                &SetAttr {
                    uid: Some(7),
                    ..Default::default()
                },
            )
            .unwrap();
            v.write(g, 0, b"ab").unwrap();
            v.sync_all().unwrap();
            (f, g)
        };
        let v = view(tmp.path());
        assert_eq!(ino(&v, "d/moved"), f);
        assert_eq!(v.read(ino(&v, "link"), 0, 100).unwrap(), b"moved bytes");
        let a = v.getattr(f).unwrap();
        assert_eq!((a.perm, a.nlink, a.size), (0o600, 2, 11));
        assert_eq!(v.getxattr(f, b"user.k").unwrap(), b"v");
        assert_eq!(v.read(g, 0, 100).unwrap(), b"ab23456789");
        assert_eq!(v.getattr(g).unwrap().uid, 7);
    }

    #[test]
    fn unlinking_a_stored_file_frees_it() {
        let tmp = tempfile::tempdir().unwrap();
        let (f, open) = {
            let v = view(tmp.path());
            let f = small(&v, b"f", b"gone");
            let open = small(&v, b"open", b"still readable");
            v.remember(&[open]);
            v.unlink(ROOT, b"f").unwrap();
            v.unlink(ROOT, b"open").unwrap();
            assert!(!v.lock().is_stored(f));
            assert_eq!(v.getattr(f), Err(libc::ENOENT));
            v.write_behind().unwrap();
            // Unlinked while open: its record lives on, and so do its bytes.
            assert_eq!(v.read(open, 0, 100).unwrap(), b"still readable");
            v.forget(&[(open, 1)]);
            assert!(!v.lock().is_stored(open));
            v.sync_all().unwrap();
            assert_eq!(v.layer.inline_data(f).unwrap(), None);
            assert_eq!(v.layer.inline_data(open).unwrap(), None);
            (f, open)
        };
        let v = view(tmp.path());
        assert_eq!(v.lookup(ROOT, b"f"), Err(libc::ENOENT));
        assert_eq!(v.getattr(f), Err(libc::ENOENT));
        assert_eq!(v.getattr(open), Err(libc::ENOENT));
    }

    #[test]
    fn fallocate_of_a_stored_file_moves_its_bytes_to_the_backing_file() {
        let tmp = tempfile::tempdir().unwrap();
        let v = view(tmp.path());
        let f = small(&v, b"f", b"abc");
        v.fallocate(f, 0, 2 * INLINE_MAX, 0).unwrap();
        let got = v.read(f, 0, 1 << 20).unwrap();
        assert_eq!(got.len() as u64, 2 * INLINE_MAX);
        assert_eq!(&got[..3], b"abc");
        assert!(got[3..].iter().all(|&x| x == 0));
        assert!(!v.lock().is_stored(f));
    }
}

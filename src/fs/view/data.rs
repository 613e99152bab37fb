//! File data of the writable view: small files inline in their record, larger ones in a
//! backing file; reads that stitch lower and backing chunks together, per-chunk copy-up on
//! write, truncate, fallocate and fsync.
//!
//! Locking: data I/O on a file wholly in its backing file runs outside the state lock (the
//! kernel already serialises writes and truncates of one inode). Copy-up of lower chunks runs
//! under it, so two copy-ups of one chunk can never interleave with a write. A small file whose
//! bytes left memory (`inline`) is read from the layer outside the lock; a change of its data
//! brings them back first.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use super::setid::{self, InGroup};
use super::{INLINE_MAX, OPEN_FILES, Res, State, View, io_errno};
use crate::rwlayer::{CHUNK, Data, FileKind, Inode, Ts};

fn bit(map: &[u8], c: u64) -> bool {
    map.get((c / 8) as usize)
        .is_some_and(|b| b & (1 << (c % 8)) != 0)
}

fn set_bit(map: &mut Vec<u8>, c: u64) {
    let i = (c / 8) as usize;
    if map.len() <= i {
        map.resize(i + 1, 0);
    }
    map[i] |= 1 << (c % 8);
}

/// Where a read finds the bytes, taken under the lock and used outside it.
enum Source {
    Zeros,
    /// Inline bytes that are only in the layer.
    Stored,
    Lower(u16, u32),
    Backing,
    Partial {
        layer: u16,
        file: u32,
        lower_size: u64,
        map: Vec<u8>,
    },
}

impl View {
    /// Frees `ino` if it has no name and no kernel reference left (an open file is one the
    /// kernel references).
    fn free_if_orphan(&self, st: &mut State, ino: u64) {
        if !st.lookups.contains_key(&ino)
            && st
                .inodes
                .get(&ino)
                .is_some_and(|i| i.nlink == 0 && i.kind != FileKind::Dir)
        {
            self.free(st, ino);
        }
    }

    /// The kernel now holds one more reference to each of `inos` (an entry it was given by
    /// lookup, create, mknod, mkdir, symlink, link or readdirplus).
    pub fn remember(&self, inos: &[u64]) {
        let mut st = self.lock();
        for &ino in inos {
            if ino != crate::fs::tree::ROOT_INO {
                *st.lookups.entry(ino).or_default() += 1;
            }
        }
    }

    /// The kernel dropped `n` references to each inode (FORGET); an unlinked inode it no longer
    /// knows and nobody has open is freed.
    pub fn forget(&self, nodes: &[(u64, u64)]) {
        let mut st = self.lock();
        for &(ino, n) in nodes {
            let Some(left) = st.lookups.get_mut(&ino) else {
                continue;
            };
            *left = left.saturating_sub(n);
            if *left == 0 {
                st.lookups.remove(&ino);
                self.free_if_orphan(&mut st, ino);
            }
        }
    }

    fn lower_file(&self, layer: u16, file: u32) -> Res<File> {
        File::open(self.lower_path(layer, file)?).map_err(io_errno)
    }

    pub(super) fn backing(&self, ino: u64) -> Res<Arc<File>> {
        let mut files = self.files.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(f) = files.get(&ino) {
            return Ok(f.clone());
        }
        let f = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(self.layer.backing_path(ino))
            .map_err(io_errno)?;
        if files.len() >= OPEN_FILES {
            files.clear();
        }
        let f = Arc::new(f);
        files.insert(ino, f.clone());
        Ok(f)
    }

    pub fn read(&self, ino: u64, offset: u64, size: u32) -> Res<Vec<u8>> {
        // A stored file whose data changed between the lock and the layer read (truncated
        // to nothing or grown out of its record, and that written) is looked at again.
        for _ in 0..3 {
            if let Some(out) = self.read_once(ino, offset, size)? {
                return Ok(out);
            }
        }
        Err(libc::EIO)
    }

    /// One try of [`read`](Self::read): `None` if a stored file's bytes were gone from the
    /// layer's record when it got there.
    fn read_once(&self, ino: u64, offset: u64, size: u32) -> Res<Option<Vec<u8>>> {
        let (src, fsize) = {
            let st = self.lock();
            match st.inodes.get(&ino) {
                Some(i) => {
                    if i.kind != FileKind::File {
                        return Err(libc::EINVAL);
                    }
                    let src = match &i.data {
                        Data::None => Source::Zeros,
                        Data::Inline(_) if st.is_stored(ino) => Source::Stored,
                        Data::Inline(v) => {
                            let s = (offset.min(v.len() as u64)) as usize;
                            let e = (offset.saturating_add(size as u64)).min(i.size) as usize;
                            let mut out = v.get(s..e.min(v.len())).unwrap_or(&[]).to_vec();
                            out.resize(e.saturating_sub(s), 0);
                            return Ok(Some(out));
                        }
                        Data::Lower { layer, file } => Source::Lower(*layer, *file),
                        Data::Backing => Source::Backing,
                        Data::Partial {
                            layer,
                            file,
                            lower_size,
                        } => Source::Partial {
                            layer: *layer,
                            file: *file,
                            lower_size: *lower_size,
                            map: st.chunks.get(&ino).cloned().unwrap_or_default(),
                        },
                    };
                    (src, i.size)
                }
                None => {
                    let n = self.lower_node(ino).ok_or(libc::ENOENT)?;
                    match n.kind {
                        super::NodeKind::File { file: Some(f) } => {
                            (Source::Lower(n.layer, f), n.size)
                        }
                        super::NodeKind::File { file: None } => (Source::Zeros, n.size),
                        _ => return Err(libc::EINVAL),
                    }
                }
            }
        };
        if let Source::Stored = src {
            // The record's bytes are the whole file (an inline file's size is their length).
            let Some(bytes) = self.stored_bytes(ino)? else {
                return Ok(None);
            };
            let s = offset.min(bytes.len() as u64) as usize;
            let e = offset.saturating_add(size as u64).min(bytes.len() as u64) as usize;
            return Ok(Some(bytes[s..e].to_vec()));
        }
        if offset >= fsize {
            return Ok(Some(vec![]));
        }
        let end = fsize.min(offset + size as u64);
        let mut buf = vec![0u8; (end - offset) as usize];
        match src {
            Source::Zeros | Source::Stored => {}
            Source::Lower(layer, file) => {
                read_full(&self.lower_file(layer, file)?, &mut buf, offset)?
            }
            Source::Backing => read_full(&*self.backing(ino)?, &mut buf, offset)?,
            Source::Partial {
                layer,
                file,
                lower_size,
                map,
            } => {
                let lower = self.lower_file(layer, file)?;
                let back = self.backing(ino)?;
                let mut at = offset;
                while at < end {
                    let c = at / CHUNK;
                    let stop = end.min((c + 1) * CHUNK);
                    let dst = &mut buf[(at - offset) as usize..(stop - offset) as usize];
                    if !bit(&map, c) && at < lower_size {
                        let lower_stop = stop.min(lower_size);
                        let (from_lower, rest) = dst.split_at_mut((lower_stop - at) as usize);
                        read_full(&lower, from_lower, at)?;
                        if !rest.is_empty() {
                            read_full(&back, rest, lower_stop)?;
                        }
                    } else {
                        read_full(&back, dst, at)?;
                    }
                    at = stop;
                }
            }
        }
        Ok(Some(buf))
    }

    /// Moves a file with no data or inline data into a backing file of its own.
    pub(super) fn to_backing(&self, ino: u64, i: &mut Inode) -> Res<()> {
        let bytes = match &mut i.data {
            Data::None => Vec::new(),
            Data::Inline(v) => std::mem::take(v),
            _ => return Ok(()),
        };
        let back = self.backing(ino)?;
        // A file left by a crash under this number holds nothing of ours.
        back.set_len(0).map_err(io_errno)?;
        back.write_all_at(&bytes, 0).map_err(io_errno)?;
        back.set_len(i.size).map_err(io_errno)?;
        i.data = Data::Backing;
        Ok(())
    }

    /// Makes the chunks covering `[from, to)` live in the backing file, copying from the lower
    /// file the parts of them outside `overwrite` (the caller writes or zeroes that range).
    fn copy_up_range(
        &self,
        st: &mut State,
        ino: u64,
        i: &mut Inode,
        (from, to): (u64, u64),
        overwrite: (u64, u64),
    ) -> Res<()> {
        if let Data::Lower { layer, file } = i.data {
            i.data = Data::Partial {
                layer,
                file,
                lower_size: i.size,
            };
            let back = self.backing(ino)?;
            back.set_len(0).map_err(io_errno)?;
            back.set_len(i.size).map_err(io_errno)?;
        }
        self.to_backing(ino, i)?;
        let Data::Partial {
            layer,
            file,
            lower_size,
        } = i.data
        else {
            return Ok(());
        };
        let mut map = st.chunks.get(&ino).cloned().unwrap_or_default();
        let total = lower_size.div_ceil(CHUNK);
        let (mut lower, mut back) = (None, None);
        let mut c = from / CHUNK;
        while c * CHUNK < to.min(lower_size) {
            if !bit(&map, c) {
                let (cs, ce) = (c * CHUNK, ((c + 1) * CHUNK).min(lower_size));
                for (s, e) in [
                    (cs, overwrite.0.clamp(cs, ce)),
                    (overwrite.1.clamp(cs, ce), ce),
                ] {
                    if s < e {
                        if lower.is_none() {
                            lower = Some(self.lower_file(layer, file)?);
                            back = Some(self.backing(ino)?);
                        }
                        let mut tmp = vec![0u8; (e - s) as usize];
                        if let (Some(l), Some(bk)) = (&lower, &back) {
                            read_full(l, &mut tmp, s)?;
                            bk.write_all_at(&tmp, s).map_err(io_errno)?;
                        }
                    }
                }
                set_bit(&mut map, c);
            }
            c += 1;
        }
        st.dirty.chunks(ino);
        if (0..total).all(|c| bit(&map, c)) {
            i.data = Data::Backing;
            st.chunks.remove(&ino);
        } else {
            st.chunks.insert(ino, map);
        }
        Ok(())
    }

    /// Sets the size of file `ino` (under the lock; `setattr` checked the kind).
    pub(super) fn truncate(&self, st: &mut State, ino: u64, size: u64) -> Res<()> {
        if st.is_stored(ino) {
            return Err(libc::EIO); // the caller must make its bytes resident: a bug
        }
        let mut i = self.inode(st, ino)?;
        if size == i.size && !matches!(i.data, Data::None | Data::Inline(_)) {
            return Ok(());
        }
        match &mut i.data {
            Data::None if size == 0 => {}
            Data::None | Data::Inline(_) if size <= INLINE_MAX => {
                let mut v = match std::mem::replace(&mut i.data, Data::None) {
                    Data::Inline(v) => v,
                    _ => Vec::new(),
                };
                v.resize(size as usize, 0);
                if size > 0 {
                    i.data = Data::Inline(v);
                }
            }
            _ => {
                self.to_backing(ino, &mut i)?;
                if let Data::Lower { layer, file } = i.data {
                    i.data = Data::Partial {
                        layer,
                        file,
                        lower_size: i.size,
                    };
                    let back = self.backing(ino)?;
                    back.set_len(0).map_err(io_errno)?;
                }
                if let Data::Partial {
                    layer,
                    file,
                    lower_size,
                } = i.data
                {
                    // Bytes past the new end must read as zeros if the file grows again: the
                    // lower file is visible only up to here from now on.
                    let visible = lower_size.min(size);
                    i.data = if visible == 0 {
                        Data::Backing
                    } else {
                        Data::Partial {
                            layer,
                            file,
                            lower_size: visible,
                        }
                    };
                    if visible == 0 {
                        st.chunks.remove(&ino);
                        st.dirty.chunks(ino);
                    }
                }
                self.backing(ino)?.set_len(size).map_err(io_errno)?;
            }
        }
        i.size = size;
        self.put(st, ino, i);
        Ok(())
    }

    pub fn write(&self, ino: u64, offset: u64, data: &[u8]) -> Res<u32> {
        self.write_as(ino, offset, data, None)
    }

    /// [`View::write`] by a caller without CAP_FSETID (`drop_setid` says whether it is in a
    /// group): the file's setuid and setgid bits go by [`setid`]'s rules.
    pub fn write_as(
        &self,
        ino: u64,
        offset: u64,
        data: &[u8],
        drop_setid: Option<InGroup>,
    ) -> Res<u32> {
        let end = offset.checked_add(data.len() as u64).ok_or(libc::EFBIG)?;
        let now = Ts::now();
        let back = {
            let mut st = self.resident(ino)?;
            let i = self.record_mut(&mut st, ino)?;
            if i.kind != FileKind::File {
                return Err(libc::EINVAL);
            }
            match &mut i.data {
                Data::None | Data::Inline(_) if end <= INLINE_MAX => {
                    if i.data == Data::None {
                        i.data = Data::Inline(Vec::new());
                    }
                    if let Data::Inline(v) = &mut i.data {
                        if (v.len() as u64) < end {
                            v.resize(end as usize, 0);
                        }
                        v[offset as usize..end as usize].copy_from_slice(data);
                    }
                    i.size = i.size.max(end);
                    i.mtime = now;
                    i.ctime = now;
                    drop_setid_bits(i, drop_setid);
                    return Ok(data.len() as u32);
                }
                Data::None | Data::Inline(_) | Data::Backing => {
                    self.to_backing(ino, i)?;
                    self.backing(ino)?
                }
                Data::Lower { .. } | Data::Partial { .. } => {
                    let mut i = i.clone();
                    self.copy_up_range(&mut st, ino, &mut i, (offset, end), (offset, end))?;
                    // The data write happens under the lock so a concurrent copy-up of the
                    // same chunk cannot overwrite it with lower bytes.
                    self.backing(ino)?
                        .write_all_at(data, offset)
                        .map_err(io_errno)?;
                    i.size = i.size.max(end);
                    i.mtime = now;
                    i.ctime = now;
                    drop_setid_bits(&mut i, drop_setid);
                    self.put(&mut st, ino, i);
                    return Ok(data.len() as u32);
                }
            }
        };
        // Wholly in the backing file: the I/O runs without the lock.
        back.write_all_at(data, offset).map_err(io_errno)?;
        let mut st = self.lock();
        if let Some(i) = st.inodes.get_mut(&ino) {
            i.size = i.size.max(end);
            i.mtime = now;
            i.ctime = now;
            drop_setid_bits(i, drop_setid);
            st.dirty.inode(ino);
        }
        Ok(data.len() as u32)
    }

    pub fn fallocate(&self, ino: u64, offset: u64, len: u64, mode: i32) -> Res<()> {
        let end = offset.checked_add(len).ok_or(libc::EFBIG)?;
        let keep = mode & libc::FALLOC_FL_KEEP_SIZE != 0;
        let punch = mode & libc::FALLOC_FL_PUNCH_HOLE != 0;
        let zero = mode & libc::FALLOC_FL_ZERO_RANGE != 0;
        let unsupported = mode
            & !(libc::FALLOC_FL_KEEP_SIZE
                | libc::FALLOC_FL_PUNCH_HOLE
                | libc::FALLOC_FL_ZERO_RANGE)
            != 0
            || (punch && !keep);
        if self.kind(&self.lock(), ino)? != FileKind::File {
            return Err(libc::ENODEV);
        }
        if unsupported {
            return Err(libc::EOPNOTSUPP);
        }
        // The file moves to its backing file: a stored small file's bytes come back first.
        let mut st = self.resident(ino)?;
        let mut i = self.inode(&st, ino)?;
        if i.kind != FileKind::File {
            return Err(libc::ENODEV);
        }
        let copy_to = end.min(i.size);
        // The range's chunks must come from the backing file, where the space is allocated or
        // the hole made. Plain allocation keeps every byte; punching and zeroing replace the
        // range, so only its surroundings need the lower bytes.
        let replaced = if punch || zero {
            (offset, end)
        } else {
            (offset, offset)
        };
        self.copy_up_range(
            &mut st,
            ino,
            &mut i,
            (offset, copy_to.max(offset)),
            replaced,
        )?;
        let back = self.backing(ino)?;
        rustix::fs::fallocate(
            &back,
            rustix::fs::FallocateFlags::from_bits_retain(mode as u32),
            offset,
            len,
        )
        .map_err(|e| e.raw_os_error())?;
        if !keep && end > i.size {
            i.size = end;
        }
        // As ext4 (kernel overlayfs's upper layer here): every successful fallocate is a
        // modification, KEEP_SIZE or not.
        let now = Ts::now();
        i.mtime = now;
        i.ctime = now;
        self.put(&mut st, ino, i);
        Ok(())
    }

    /// Makes the inode's data and every record durable. An error a write-behind batch left
    /// for this file is reported here, once.
    pub fn fsync(&self, ino: u64, datasync: bool) -> Res<()> {
        let back = {
            let mut st = self.lock();
            if let Some(errno) = st.dirty.take_error(ino) {
                return Err(errno);
            }
            match st.inodes.get(&ino).map(|i| &i.data) {
                Some(Data::Backing | Data::Partial { .. }) => Some(self.backing(ino)?),
                _ => None,
            }
        };
        if let Some(f) = back {
            if datasync {
                f.sync_data()
            } else {
                f.sync_all()
            }
            .map_err(io_errno)?;
        }
        self.write_behind()?;
        self.flush_and_reap()
    }
}

/// Drops the setuid and setgid bits a write by a caller without CAP_FSETID drops.
fn drop_setid_bits(i: &mut Inode, drop_setid: Option<InGroup>) {
    if let Some(in_group) = drop_setid
        && setid::has_setid(i.perm)
    {
        i.perm &= !setid::dropped(i.perm, i.gid, in_group);
    }
}

fn read_full(f: &File, buf: &mut [u8], offset: u64) -> Res<()> {
    let mut got = 0;
    while got < buf.len() {
        match f.read_at(&mut buf[got..], offset + got as u64) {
            Ok(0) => break, // past the end of the file: the rest reads as zeros
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(io_errno(e)),
        }
    }
    buf[got..].fill(0);
    Ok(())
}

//! File data of the writable view: reads that stitch lower and backing chunks together,
//! per-chunk copy-up on write, truncate, fallocate and fsync.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use super::{Attr, OPEN_FILES, Res, State, View, io_errno, layer_errno};
use crate::rwlayer::{Batch, CHUNK, Data, FileKind, Inode, Ts};

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

impl View {
    pub fn open(&self, ino: u64) -> Res<Attr> {
        let mut st = self.lock();
        let i = self.inode(&st, ino)?;
        *st.open.entry(ino).or_default() += 1;
        Ok(self.attr_of(ino, &i))
    }

    pub fn release(&self, ino: u64) -> Res<()> {
        let mut st = self.lock();
        let left = match st.open.get_mut(&ino) {
            Some(n) => {
                *n = n.saturating_sub(1);
                *n
            }
            None => 0,
        };
        if left == 0 {
            st.open.remove(&ino);
            if st
                .inodes
                .get(&ino)
                .is_some_and(|i| i.nlink == 0 && i.kind != FileKind::Dir)
            {
                let mut b = Batch::default();
                self.free(&mut st, &mut b, ino);
                return self.commit(b);
            }
        }
        Ok(())
    }

    fn lower_file(&self, layer: u16, file: u32) -> Res<File> {
        let dir = self.lower_data.get(layer as usize).ok_or(libc::EIO)?;
        File::open(dir.join(file.to_string())).map_err(io_errno)
    }

    fn backing(&self, ino: u64) -> Res<Arc<File>> {
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
        let (i, map) = {
            let st = self.lock();
            (
                self.inode(&st, ino)?,
                st.chunks.get(&ino).cloned().unwrap_or_default(),
            )
        };
        if i.kind != FileKind::File {
            return Err(libc::EINVAL);
        }
        if offset >= i.size {
            return Ok(vec![]);
        }
        let end = i.size.min(offset + size as u64);
        let mut buf = vec![0u8; (end - offset) as usize];
        match i.data {
            Data::None => {}
            Data::Lower { layer, file } => {
                read_full(&self.lower_file(layer, file)?, &mut buf, offset)?
            }
            Data::Backing => {
                let f = self.backing(ino)?;
                read_full(&f, &mut buf, offset)?
            }
            Data::Partial {
                layer,
                file,
                lower_size,
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
        Ok(buf)
    }

    /// Makes the chunks covering `[from, to)` live in the backing file, copying from the lower
    /// file the parts of them outside `overwrite` (the caller writes or zeroes that range).
    fn copy_up_range(
        &self,
        st: &mut State,
        b: &mut Batch,
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
            back.set_len(i.size).map_err(io_errno)?;
        }
        if i.data == Data::None {
            i.data = Data::Backing;
            self.backing(ino)?;
        }
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
        if (0..total).all(|c| bit(&map, c)) {
            i.data = Data::Backing;
            st.chunks.remove(&ino);
            b.del_chunks(ino);
        } else {
            b.put_chunks(ino, &map);
            st.chunks.insert(ino, map);
        }
        Ok(())
    }

    pub(super) fn truncate(
        &self,
        st: &mut State,
        b: &mut Batch,
        ino: u64,
        i: &mut Inode,
        size: u64,
    ) -> Res<()> {
        if size == i.size && i.data != Data::None {
            return Ok(());
        }
        if let Data::Lower { layer, file } = i.data {
            i.data = Data::Partial {
                layer,
                file,
                lower_size: i.size,
            };
        }
        if i.data == Data::None {
            i.data = Data::Backing;
        }
        if let Data::Partial {
            layer,
            file,
            lower_size,
        } = i.data
        {
            // Bytes past the new end must read as zeros if the file grows again: the lower
            // file is visible only up to here from now on.
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
                b.del_chunks(ino);
            }
        }
        self.backing(ino)?.set_len(size).map_err(io_errno)?;
        i.size = size;
        Ok(())
    }

    pub fn write(&self, ino: u64, offset: u64, data: &[u8]) -> Res<u32> {
        let end = offset.checked_add(data.len() as u64).ok_or(libc::EFBIG)?;
        let mut st = self.lock();
        let mut i = self.inode(&st, ino)?;
        if i.kind != FileKind::File {
            return Err(libc::EINVAL);
        }
        let mut b = Batch::default();
        self.copy_up_range(&mut st, &mut b, ino, &mut i, (offset, end), (offset, end))?;
        // The data write happens under the lock so a concurrent copy-up of the same chunk
        // cannot overwrite it with lower bytes.
        self.backing(ino)?
            .write_all_at(data, offset)
            .map_err(io_errno)?;
        i.size = i.size.max(end);
        let now = Ts::now();
        i.mtime = now;
        i.ctime = now;
        self.put(&mut st, &mut b, ino, i);
        self.commit(b)?;
        Ok(data.len() as u32)
    }

    pub fn fallocate(&self, ino: u64, offset: u64, len: u64, mode: i32) -> Res<()> {
        let end = offset.checked_add(len).ok_or(libc::EFBIG)?;
        let mut st = self.lock();
        let mut i = self.inode(&st, ino)?;
        if i.kind != FileKind::File {
            return Err(libc::ENODEV);
        }
        let mut b = Batch::default();
        let keep = mode & libc::FALLOC_FL_KEEP_SIZE != 0;
        let punch = mode & libc::FALLOC_FL_PUNCH_HOLE != 0;
        let zero = mode & libc::FALLOC_FL_ZERO_RANGE != 0;
        if mode
            & !(libc::FALLOC_FL_KEEP_SIZE | libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_ZERO_RANGE)
            != 0
            || (punch && !keep)
        {
            return Err(libc::EOPNOTSUPP);
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
            &mut b,
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
        self.put(&mut st, &mut b, ino, i);
        self.commit(b)
    }

    /// Makes the inode's data and every record durable.
    pub fn fsync(&self, ino: u64, datasync: bool) -> Res<()> {
        let has_backing = {
            let st = self.lock();
            st.inodes
                .get(&ino)
                .is_some_and(|i| matches!(i.data, Data::Backing | Data::Partial { .. }))
        };
        if has_backing {
            let f = self.backing(ino)?;
            if datasync {
                f.sync_data()
            } else {
                f.sync_all()
            }
            .map_err(io_errno)?;
        }
        self.layer.flush().map_err(layer_errno)
    }

    /// Makes everything durable (unmount, `syncfs`).
    pub fn sync_all(&self) -> Res<()> {
        self.layer.flush().map_err(layer_errno)
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

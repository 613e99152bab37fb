//! Namespace and attribute changes of the writable view: create, link, unlink, rmdir,
//! rename, setattr and extended attributes. Each runs under the state lock, in memory only;
//! the records it changes are marked dirty for `writeback`.

use std::collections::BTreeMap;

use super::{
    Attr, Caller, MAX_NAME, RENAME_EXCHANGE, RENAME_NOREPLACE, Res, SetAttr, State, View,
    attr_of_inode, check_name, kind_from_mode,
};
use crate::rwlayer::{Data, FileKind, Inode, Ts};

impl View {
    pub fn make(
        &self,
        who: Caller,
        parent: u64,
        name: &[u8],
        mode: u32,
        rdev: u32,
        target: Option<&[u8]>,
    ) -> Res<Attr> {
        check_name(name)?;
        let kind = if target.is_some() {
            FileKind::Symlink
        } else {
            kind_from_mode(mode)?
        };
        let mut st = self.lock();
        let (p, _) = self.attr(&st, parent)?;
        if p.kind != FileKind::Dir {
            return Err(libc::ENOTDIR);
        }
        if p.nlink == 0 {
            return Err(libc::ENOENT);
        }
        if self.child(&st, parent, name)?.is_some() {
            return Err(libc::EEXIST);
        }
        let now = Ts::now();
        let mut perm = (mode & 0o7777) as u16;
        // BSD group semantics in a setgid directory, as the kernel gives local file systems.
        let gid = if p.perm & libc::S_ISGID as u16 != 0 {
            if kind == FileKind::Dir {
                perm |= libc::S_ISGID as u16;
            }
            p.gid
        } else {
            who.gid
        };
        if kind == FileKind::Symlink {
            perm = 0o777;
        }
        let ino = st.next_ino;
        st.next_ino += 1;
        let target = target.map(<[u8]>::to_vec).unwrap_or_default();
        let inode = Inode {
            kind,
            perm,
            uid: who.uid,
            gid,
            size: if kind == FileKind::Symlink {
                target.len() as u64
            } else {
                0
            },
            atime: now,
            mtime: now,
            ctime: now,
            nlink: if kind == FileKind::Dir { 2 } else { 1 },
            rdev: if matches!(kind, FileKind::CharDev | FileKind::BlockDev) {
                rdev
            } else {
                0
            },
            parent,
            target,
            xattrs: vec![],
            data: Data::None,
            materialized: kind == FileKind::Dir,
        };
        st.dirty.next_ino();
        if kind == FileKind::Dir {
            st.dirs.insert(ino, BTreeMap::new());
        }
        let attr = attr_of_inode(ino, &inode);
        self.put(&mut st, ino, inode);
        self.set_entry(&mut st, parent, name, ino)?;
        self.touch_dir(&mut st, parent, i32::from(kind == FileKind::Dir), now)?;
        Ok(attr)
    }

    /// A new name for an existing non-directory inode.
    pub fn link(&self, ino: u64, parent: u64, name: &[u8]) -> Res<Attr> {
        check_name(name)?;
        let mut st = self.lock();
        let mut i = self.inode(&st, ino)?;
        if i.kind == FileKind::Dir {
            return Err(libc::EPERM);
        }
        if self.child(&st, parent, name)?.is_some() {
            return Err(libc::EEXIST);
        }
        let now = Ts::now();
        i.nlink += 1;
        i.ctime = now;
        let attr = attr_of_inode(ino, &i);
        self.put(&mut st, ino, i);
        self.set_entry(&mut st, parent, name, ino)?;
        self.touch_dir(&mut st, parent, 0, now)?;
        Ok(attr)
    }

    /// Drops one name of `ino`; frees it when no name and no kernel reference is left.
    fn drop_link(&self, st: &mut State, ino: u64, now: Ts) -> Res<()> {
        let held = st.lookups.contains_key(&ino);
        let i = self.record_mut(st, ino)?;
        i.nlink = if i.kind == FileKind::Dir {
            0
        } else {
            i.nlink.saturating_sub(1)
        };
        i.ctime = now;
        // A directory goes now (its entries are gone); a file the kernel still knows (open
        // somewhere, or cached) lives until it forgets it.
        if i.nlink == 0 && (i.kind == FileKind::Dir || !held) {
            self.free(st, ino);
        }
        Ok(())
    }

    pub(super) fn free(&self, st: &mut State, ino: u64) {
        let had_backing = st
            .inodes
            .remove(&ino)
            .is_some_and(|i| matches!(i.data, Data::Backing | Data::Partial { .. }));
        st.unstore(ino);
        st.chunks.remove(&ino);
        if let Some(entries) = st.dirs.remove(&ino) {
            for name in entries.keys() {
                st.dirty.dirent(ino, name);
            }
        }
        st.dirty.inode(ino);
        st.dirty.chunks(ino);
        if self
            .files
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&ino)
            .is_some()
            || had_backing
        {
            st.dirty.dead_file(ino);
        }
    }

    pub fn unlink(&self, parent: u64, name: &[u8]) -> Res<()> {
        if name.len() > MAX_NAME {
            return Err(libc::ENAMETOOLONG);
        }
        let mut st = self.lock();
        let ino = self.child(&st, parent, name)?.ok_or(libc::ENOENT)?;
        if self.kind(&st, ino)? == FileKind::Dir {
            return Err(libc::EISDIR);
        }
        let now = Ts::now();
        self.remove_entry(&mut st, parent, name)?;
        self.touch_dir(&mut st, parent, 0, now)?;
        self.drop_link(&mut st, ino, now)?;
        Ok(())
    }

    pub fn rmdir(&self, parent: u64, name: &[u8]) -> Res<()> {
        if name.len() > MAX_NAME {
            return Err(libc::ENAMETOOLONG);
        }
        let mut st = self.lock();
        let ino = self.child(&st, parent, name)?.ok_or(libc::ENOENT)?;
        if self.kind(&st, ino)? != FileKind::Dir {
            return Err(libc::ENOTDIR);
        }
        if !self.is_empty_dir(&st, ino)? {
            return Err(libc::ENOTEMPTY);
        }
        let now = Ts::now();
        self.remove_entry(&mut st, parent, name)?;
        self.touch_dir(&mut st, parent, -1, now)?;
        self.drop_link(&mut st, ino, now)?;
        Ok(())
    }

    /// Whether directory `dir` is `ancestor` or lies below it.
    fn within(&self, st: &State, mut dir: u64, ancestor: u64) -> Res<bool> {
        // Bounded: a path has at most PATH_MAX / 2 components.
        for _ in 0..libc::PATH_MAX {
            if dir == ancestor {
                return Ok(true);
            }
            if dir == crate::fs::tree::ROOT_INO {
                return Ok(false);
            }
            dir = self.parent_of(st, dir)?;
        }
        Ok(false)
    }

    pub fn rename(
        &self,
        parent: u64,
        name: &[u8],
        newparent: u64,
        newname: &[u8],
        flags: u32,
    ) -> Res<()> {
        if name.len() > MAX_NAME {
            return Err(libc::ENAMETOOLONG);
        }
        check_name(newname)?;
        if flags & !(RENAME_NOREPLACE | RENAME_EXCHANGE) != 0
            || flags & RENAME_NOREPLACE != 0 && flags & RENAME_EXCHANGE != 0
        {
            return Err(libc::EINVAL);
        }
        let mut st = self.lock();
        let src = self.child(&st, parent, name)?.ok_or(libc::ENOENT)?;
        let dst = self.child(&st, newparent, newname)?;
        if self.kind(&st, newparent)? != FileKind::Dir {
            return Err(libc::ENOTDIR);
        }
        if flags & RENAME_NOREPLACE != 0 && dst.is_some() {
            return Err(libc::EEXIST);
        }
        if flags & RENAME_EXCHANGE != 0 && dst.is_none() {
            return Err(libc::ENOENT);
        }
        let src_i = self.inode(&st, src)?;
        let src_dir = src_i.kind == FileKind::Dir;
        // A directory may not move below itself.
        if src_dir && parent != newparent && self.within(&st, newparent, src)? {
            return Err(libc::EINVAL);
        }
        let now = Ts::now();
        if flags & RENAME_EXCHANGE != 0 {
            let dst = dst.ok_or(libc::ENOENT)?;
            let mut dst_i = self.inode(&st, dst)?;
            if dst_i.kind == FileKind::Dir
                && parent != newparent
                && self.within(&st, parent, dst)?
            {
                return Err(libc::EINVAL);
            }
            self.set_entry(&mut st, parent, name, dst)?;
            self.set_entry(&mut st, newparent, newname, src)?;
            let dst_dir = dst_i.kind == FileKind::Dir;
            let mut src_i = src_i;
            src_i.parent = if src_dir { newparent } else { src_i.parent };
            src_i.ctime = now;
            dst_i.parent = if dst_dir { parent } else { dst_i.parent };
            dst_i.ctime = now;
            self.put(&mut st, src, src_i);
            self.put(&mut st, dst, dst_i);
            let delta = i32::from(dst_dir) - i32::from(src_dir);
            if parent != newparent {
                self.touch_dir(&mut st, parent, delta, now)?;
                self.touch_dir(&mut st, newparent, -delta, now)?;
            } else {
                self.touch_dir(&mut st, parent, 0, now)?;
            }
            return Ok(());
        }
        if let Some(dst) = dst {
            if dst == src {
                return Ok(());
            }
            let dst_i = self.inode(&st, dst)?;
            match (src_dir, dst_i.kind == FileKind::Dir) {
                (true, false) => return Err(libc::ENOTDIR),
                (false, true) => return Err(libc::EISDIR),
                (true, true) if !self.is_empty_dir(&st, dst)? => {
                    return Err(libc::ENOTEMPTY);
                }
                _ => {}
            }
            if dst_i.kind == FileKind::Dir {
                self.touch_dir(&mut st, newparent, -1, now)?;
            }
            self.drop_link(&mut st, dst, now)?;
        }
        self.remove_entry(&mut st, parent, name)?;
        self.set_entry(&mut st, newparent, newname, src)?;
        let mut src_i = self.inode(&st, src)?;
        src_i.ctime = now;
        if src_dir {
            src_i.parent = newparent;
        }
        self.put(&mut st, src, src_i);
        let moved = i32::from(src_dir && parent != newparent);
        self.touch_dir(&mut st, parent, -moved, now)?;
        if parent != newparent {
            self.touch_dir(&mut st, newparent, moved, now)?;
        }
        Ok(())
    }

    // ---- attributes ----------------------------------------------------------------------

    pub fn setattr(&self, ino: u64, set: &SetAttr) -> Res<Attr> {
        let a = {
            let mut st = match set.size {
                Some(_) => self.resident(ino)?,
                None => self.lock(),
            };
            let now = Ts::now();
            if let Some(size) = set.size {
                match self.kind(&st, ino)? {
                    FileKind::File => {}
                    FileKind::Dir => return Err(libc::EISDIR),
                    _ => return Err(libc::EINVAL),
                }
                self.truncate(&mut st, ino, size)?;
            }
            let i = self.record_mut(&mut st, ino)?;
            if set.size.is_some() {
                i.mtime = now;
            }
            if let Some(mode) = set.mode {
                i.perm = (mode & 0o7777) as u16;
            }
            if let Some(uid) = set.uid {
                i.uid = uid;
            }
            if let Some(gid) = set.gid {
                i.gid = gid;
            }
            if let Some(t) = set.atime {
                i.atime = t;
            }
            if let Some(t) = set.mtime {
                i.mtime = t;
            }
            i.ctime = set.ctime.unwrap_or(now);
            let backing = i.data == Data::Backing;
            (attr_of_inode(ino, i), backing)
        };
        Ok(self.finish_attr(a))
    }

    pub fn setxattr(&self, ino: u64, name: &[u8], value: &[u8], flags: i32) -> Res<()> {
        let mut st = self.lock();
        let mut i = self.inode(&st, ino)?;
        let at = i.xattrs.iter().position(|(n, _)| n == name);
        match at {
            Some(_) if flags & libc::XATTR_CREATE != 0 => return Err(libc::EEXIST),
            None if flags & libc::XATTR_REPLACE != 0 => return Err(libc::ENODATA),
            Some(k) => i.xattrs[k].1 = value.to_vec(),
            None => {
                i.xattrs.push((name.to_vec(), value.to_vec()));
                i.xattrs.sort();
            }
        }
        i.ctime = Ts::now();
        self.put(&mut st, ino, i);
        Ok(())
    }

    pub fn removexattr(&self, ino: u64, name: &[u8]) -> Res<()> {
        let mut st = self.lock();
        let mut i = self.inode(&st, ino)?;
        let k = i
            .xattrs
            .iter()
            .position(|(n, _)| n == name)
            .ok_or(libc::ENODATA)?;
        i.xattrs.remove(k);
        i.ctime = Ts::now();
        self.put(&mut st, ino, i);
        Ok(())
    }
}

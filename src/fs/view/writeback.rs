//! Metadata write-behind of the writable view: which records changed in memory, and writing
//! them to the layer coalesced — one atomic batch per interval holding each changed record
//! once (a file created, written, chmod'ed and closed is one record write), or sooner once
//! [`BATCH_KEYS`] records are dirty: sled 0.34 keeps memory in proportion to the size of the
//! batches it applies (measured: 10k inserts and deletes in batches of 200 keys leave 15 MiB
//! resident, in batches of 1,000 over 200 MiB, the same time either way).
//!
//! Crash rule: a batch is built from one consistent moment of the in-memory state (under the
//! state lock) and applied atomically, so after `kill -9` the layer shows a state that existed
//! at some moment. Backing files of freed inodes are deleted only once the batch that drops
//! their record is durable; backing files without a record (written before a crash, or
//! left by an unlinked-open file) are deleted at the next mount. Must never hold the state
//! lock across a database read or write.
//!
//! Small files (see `inline`): a dirty record whose bytes are only in the layer is completed
//! from the layer's record while the batch is built (under `flushing`, so that record cannot
//! change meanwhile: the batch holds exactly what memory would), and the clean inline records
//! of an applied batch drop their bytes. Every few MiB written, the allocator gives its free
//! memory back.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex, Weak};
use std::time::Duration;

use tracing::warn;

use super::{Errno, Res, State, View, layer_errno};
use crate::rwlayer::{Batch, Data, Inode, RwError};

/// How long a change may stay in memory only (the bound is 200 ms).
pub const INTERVAL: Duration = Duration::from_millis(100);

/// Dirty records that wake the write-behind thread before the interval is over.
pub const BATCH_KEYS: usize = 200;

/// Record bytes written between two trims of the allocator. Writing a batch leaves a few times
/// its size behind as free memory (the encoded records, sled's log buffers and tree node
/// versions), in pieces malloc does not give back by itself: trimming after every few MiB
/// keeps it from adding up to the daemon's peak RSS, at the cost of one walk of the free lists
/// per that much written.
const TRIM_AFTER: u64 = 2 << 20;

/// Backing files of freed inodes wait for a flush of the database before they are deleted
/// (a crash must not leave a record without its file). A flush is an fsync: rather than one
/// per batch that freed any, the files wait until this many have gathered, or the oldest has
/// waited [`DEAD_AGE`], or something flushes anyway (`fsync`, unmount).
const DEAD_BATCH: usize = 4096;
const DEAD_AGE: Duration = Duration::from_secs(1);

/// Backing files waiting for a flush before they are deleted, and the thread that deletes
/// them after it: deleting 10,000 files takes the write-behind thread a while, during which
/// dirty records would pile up into one huge batch (30 MiB more peak RSS, measured).
#[derive(Default)]
pub(super) struct DeadFiles {
    inos: Vec<u64>,
    /// When the oldest of `inos` was queued.
    since: Option<std::time::Instant>,
    reaper: Option<(
        std::sync::mpsc::Sender<Vec<PathBuf>>,
        std::thread::JoinHandle<()>,
    )>,
}

impl DeadFiles {
    /// Deletes `paths`, on the reaper thread when there is one.
    fn delete(&self, paths: Vec<PathBuf>) {
        let paths = match &self.reaper {
            Some((tx, _)) => match tx.send(paths) {
                Ok(()) => return,
                Err(back) => back.0,
            },
            None => paths,
        };
        for p in paths {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// Records changed since the last batch. A key is written as it is in memory at flush time:
/// present → put, absent → delete.
#[derive(Default)]
pub(super) struct Dirty {
    inodes: HashSet<u64>,
    chunks: HashSet<u64>,
    dirents: HashSet<(u64, Box<[u8]>)>,
    next_ino: bool,
    /// Backing files of freed inodes, deleted once the freeing batch is durable.
    dead_files: Vec<u64>,
    /// A write-behind batch failed: its errno, reported once per affected inode by the next
    /// `fsync` or `release` of it.
    failed: Option<(Errno, HashSet<u64>)>,
    /// The write-behind thread was woken for these records (once per batch).
    woken: bool,
}

impl Dirty {
    pub fn inode(&mut self, ino: u64) {
        self.inodes.insert(ino);
    }
    pub fn chunks(&mut self, ino: u64) {
        self.chunks.insert(ino);
    }
    pub fn dirent(&mut self, dir: u64, name: &[u8]) {
        self.dirents.insert((dir, name.into()));
    }
    pub fn next_ino(&mut self) {
        self.next_ino = true;
    }
    pub fn dead_file(&mut self, ino: u64) {
        self.dead_files.push(ino);
    }
    pub fn has_inode(&self, ino: u64) -> bool {
        self.inodes.contains(&ino)
    }
    /// Records a batch would write now.
    fn len(&self) -> usize {
        self.inodes.len() + self.chunks.len() + self.dirents.len()
    }
    /// Whether enough records are dirty to wake the write-behind thread now (true once per
    /// batch).
    pub fn wake_writer(&mut self) -> bool {
        if self.woken || self.len() < BATCH_KEYS {
            return false;
        }
        self.woken = true;
        true
    }
    fn is_empty(&self) -> bool {
        self.inodes.is_empty()
            && self.chunks.is_empty()
            && self.dirents.is_empty()
            && !self.next_ino
            && self.dead_files.is_empty()
    }
    /// Puts back the keys of a batch that could not be written.
    fn merge(&mut self, o: Dirty) {
        self.inodes.extend(o.inodes);
        self.chunks.extend(o.chunks);
        self.dirents.extend(o.dirents);
        self.next_ino |= o.next_ino;
        self.dead_files.extend(o.dead_files);
    }
    /// The error a failed batch left for `ino`, once.
    pub fn take_error(&mut self, ino: u64) -> Option<Errno> {
        let (errno, inos) = self.failed.as_mut()?;
        let errno = *errno;
        if inos.remove(&ino) {
            if inos.is_empty() {
                self.failed = None;
            }
            return Some(errno);
        }
        None
    }
}

/// Wakes the write-behind thread before its interval is over.
#[derive(Default)]
pub(super) struct Wake {
    woken: Mutex<bool>,
    cv: Condvar,
}

impl Wake {
    pub fn notify(&self) {
        *self.woken.lock().unwrap_or_else(|e| e.into_inner()) = true;
        self.cv.notify_one();
    }

    /// Returns when notified or after `timeout`.
    fn wait(&self, timeout: Duration) {
        let g = self.woken.lock().unwrap_or_else(|e| e.into_inner());
        let (mut g, _) = self
            .cv
            .wait_timeout_while(g, timeout, |woken| !*woken)
            .unwrap_or_else(|e| e.into_inner());
        *g = false;
    }
}

/// A dirty record of a stored inline file, to complete with its bytes from the layer.
type Unfilled = Vec<(u64, Inode)>;

impl State {
    /// Takes the dirty set and encodes the records it names, as they are now; those of stored
    /// inline files (see `inline`) come back unencoded, without their bytes.
    fn take_batch(&mut self) -> (Batch, Dirty, Unfilled) {
        let failed = self.dirty.failed.take();
        let d = std::mem::take(&mut self.dirty);
        self.dirty.failed = failed;
        let mut b = Batch::default();
        let mut unfilled = Vec::new();
        for &ino in &d.inodes {
            match self.inodes.get(&ino) {
                Some(i) if self.is_stored(ino) => unfilled.push((ino, i.clone())),
                Some(i) => b.put_inode(ino, i),
                None => b.del_inode(ino),
            }
        }
        for &ino in &d.chunks {
            match self.chunks.get(&ino) {
                Some(m) => b.put_chunks(ino, m),
                None if self.inodes.contains_key(&ino) || !d.inodes.contains(&ino) => {
                    b.del_chunks(ino)
                }
                None => {} // del_inode dropped it
            }
        }
        for (dir, name) in &d.dirents {
            match self.dirs.get(dir).and_then(|e| e.get(name)) {
                Some(&ino) => b.put_dirent(*dir, name, ino),
                None => b.del_dirent(*dir, name),
            }
        }
        if d.next_ino {
            b.set_next_ino(self.next_ino);
        }
        (b, d, unfilled)
    }
}

impl View {
    /// Writes every dirty record to the layer (not yet durable: see [`sync_all`]). Deletes
    /// the backing files of freed inodes once their batch is durable.
    ///
    /// [`sync_all`]: View::sync_all
    pub(super) fn write_behind(&self) -> Res<()> {
        let mut written = self.flushing.lock().unwrap_or_else(|e| e.into_inner());
        let (mut batch, taken, unfilled) = {
            let mut st = self.lock();
            if st.dirty.is_empty() {
                drop(st);
                return self.reap_dead_when_due();
            }
            st.take_batch()
        };
        // The layer's records change only here, under `flushing`: a stored file's record there
        // still holds the bytes it had when the batch was taken.
        for (ino, mut i) in unfilled {
            match self.layer.inline_data(ino) {
                Ok(Some(bytes)) => {
                    i.data = Data::Inline(bytes);
                    batch.put_inode(ino, &i);
                }
                Ok(None) => {
                    let e = RwError::Database {
                        path: self.layer.dir().join("db"),
                        why: format!("inode {ino}: stored inline data missing"),
                    };
                    return Err(self.failed(taken, e));
                }
                Err(e) => return Err(self.failed(taken, e)),
            }
        }
        *written += batch.bytes();
        if let Err(e) = self.layer.apply(batch) {
            return Err(self.failed(taken, e));
        }
        self.lock().evict_clean(taken.inodes.iter().copied());
        if *written >= TRIM_AFTER {
            *written = 0;
            crate::sys::malloc_trim();
        }
        if !taken.dead_files.is_empty() {
            let mut dead = self.dead.lock().unwrap_or_else(|e| e.into_inner());
            dead.inos.extend(taken.dead_files);
            dead.since.get_or_insert_with(std::time::Instant::now);
        }
        drop(written);
        self.reap_dead_when_due()
    }

    /// Flushes and deletes the waiting backing files if enough wait, or for long enough.
    fn reap_dead_when_due(&self) -> Res<()> {
        let due = {
            let dead = self.dead.lock().unwrap_or_else(|e| e.into_inner());
            dead.inos.len() >= DEAD_BATCH || dead.since.is_some_and(|t| t.elapsed() >= DEAD_AGE)
        };
        if due { self.flush_and_reap() } else { Ok(()) }
    }

    /// Makes every applied batch durable, then deletes the backing files whose inodes those
    /// batches freed (taken before the flush: a file queued meanwhile waits for the next).
    pub(super) fn flush_and_reap(&self) -> Res<()> {
        let inos = {
            let mut dead = self.dead.lock().unwrap_or_else(|e| e.into_inner());
            dead.since = None;
            std::mem::take(&mut dead.inos)
        };
        if let Err(e) = self.layer.flush() {
            let mut dead = self.dead.lock().unwrap_or_else(|e| e.into_inner());
            dead.inos.extend(inos);
            dead.since.get_or_insert_with(std::time::Instant::now);
            return Err(layer_errno(e));
        }
        let paths = inos.iter().map(|&i| self.layer.backing_path(i)).collect();
        self.dead
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .delete(paths);
        Ok(())
    }

    /// Keeps the keys of a batch that failed for the next one, and the error for the files
    /// it touched.
    fn failed(&self, taken: Dirty, e: RwError) -> Errno {
        let errno = layer_errno(e);
        warn!(
            errno,
            "writing changed records to the writable layer failed"
        );
        let mut st = self.lock();
        let mut inos = match st.dirty.failed.take() {
            Some((_, inos)) => inos,
            None => HashSet::new(),
        };
        inos.extend(taken.inodes.iter().copied());
        st.dirty.failed = Some((errno, inos));
        st.dirty.merge(taken);
        errno
    }

    /// Makes every change durable (unmount, `syncfs`, `fsyncdir`).
    pub fn sync_all(&self) -> Res<()> {
        self.write_behind()?;
        self.flush_and_reap()
    }

    /// Starts the thread that writes dirty records every [`INTERVAL`], or as soon as
    /// [`BATCH_KEYS`] are dirty; it ends when the view is dropped.
    pub fn start_write_behind(self: &Arc<Self>) {
        let weak: Weak<View> = Arc::downgrade(self);
        let wake = self.wake.clone();
        let spawned = std::thread::Builder::new()
            .name("strata-writeback".into())
            .spawn(move || {
                loop {
                    wake.wait(INTERVAL);
                    let Some(v) = weak.upgrade() else { break };
                    // A failure is kept for fsync/close of the files it touched.
                    let _ = v.write_behind();
                }
            });
        if let Err(e) = spawned {
            warn!(error = %e, "no write-behind thread: changes reach the layer at fsync and unmount");
        }
        let (tx, rx) = std::sync::mpsc::channel::<Vec<PathBuf>>();
        let reaper = std::thread::Builder::new()
            .name("strata-reaper".into())
            .spawn(move || {
                for paths in rx {
                    for p in paths {
                        let _ = std::fs::remove_file(p);
                    }
                }
            });
        match reaper {
            Ok(h) => self.dead.lock().unwrap_or_else(|e| e.into_inner()).reaper = Some((tx, h)),
            Err(e) => {
                warn!(error = %e, "no reaper thread: freed backing files are deleted by the write-behind thread")
            }
        }
    }

    /// At mount: frees inodes unlinked while open when the previous mount ended, and deletes
    /// backing files that no record uses (written after the last batch before a crash).
    pub(super) fn collect_garbage(&self) -> Result<(), RwError> {
        let mut st = self.lock();
        let orphans: Vec<u64> = st
            .inodes
            .iter()
            .filter(|(_, i)| i.nlink == 0)
            .map(|(&n, _)| n)
            .collect();
        for ino in orphans {
            st.inodes.remove(&ino);
            st.unstore(ino);
            st.chunks.remove(&ino);
            st.dirty.inode(ino);
        }
        for ino in self.layer.backing_files()? {
            let used = st
                .inodes
                .get(&ino)
                .is_some_and(|i| matches!(i.data, Data::Backing | Data::Partial { .. }));
            if !used {
                st.dirty.dead_file(ino);
            }
        }
        drop(st);
        self.write_behind().map_err(|errno| RwError::Io {
            path: self.layer.dir().to_path_buf(),
            source: std::io::Error::from_raw_os_error(errno),
        })
    }
}

impl Drop for View {
    fn drop(&mut self) {
        if let Err(errno) = self.sync_all() {
            warn!(errno, "writable layer not fully written at unmount");
        }
        // The reaper ends once its queue is empty and the sender is gone.
        let reaper = self
            .dead
            .get_mut()
            .unwrap_or_else(|e| e.into_inner())
            .reaper
            .take();
        if let Some((tx, h)) = reaper {
            drop(tx);
            let _ = h.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[test]
    fn the_writer_is_woken_once_per_batch_at_batch_keys() {
        let mut d = Dirty::default();
        for ino in 0..(BATCH_KEYS as u64 - 1) {
            d.inode(ino);
            assert!(!d.wake_writer(), "woken at {} records", ino + 1);
        }
        d.dirent(1, b"name");
        assert!(d.wake_writer());
        d.inode(10_000);
        assert!(!d.wake_writer(), "woken twice for one batch");
        let mut next = Dirty::default(); // what take_batch leaves behind
        std::mem::swap(&mut d, &mut next);
        d.chunks(1);
        assert!(!d.wake_writer());
    }

    #[test]
    fn a_notified_writer_does_not_wait_out_its_interval() {
        let wake = Arc::new(Wake::default());
        let t = Instant::now();
        let w = wake.clone();
        let notifier = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            w.notify();
        });
        wake.wait(Duration::from_secs(60));
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "waited {:?}",
            t.elapsed()
        );
        notifier.join().unwrap();
        // A notification is consumed: the next wait runs to its timeout.
        let t = Instant::now();
        wake.wait(Duration::from_millis(100));
        assert!(t.elapsed() >= Duration::from_millis(100));
    }

    /// Freed backing files are deleted by the reaper once their records' removal is flushed:
    /// within [`DEAD_AGE`] and a write-behind interval, and all of them by the time the view
    /// is dropped (unmount).
    #[test]
    fn freed_backing_files_are_deleted_after_a_flush_and_by_unmount() {
        use super::super::tests::{ME, ROOT, pattern, view};
        let tmp = tempfile::tempdir().unwrap();
        let v = Arc::new(view(tmp.path()));
        v.start_write_behind();
        let mk = |n: String| {
            let a = v
                .make(ME, ROOT, n.as_bytes(), libc::S_IFREG | 0o644, 0, None)
                .unwrap();
            v.write(a.ino, 0, &pattern(2 * super::super::INLINE_MAX))
                .unwrap();
            a.ino
        };
        let early: Vec<u64> = (0..20).map(|i| mk(format!("e{i}"))).collect();
        let late: Vec<u64> = (0..20).map(|i| mk(format!("l{i}"))).collect();
        let path = |ino: u64| v.layer.backing_path(ino);
        assert!(early.iter().chain(&late).all(|&i| path(i).exists()));
        for i in 0..20 {
            v.unlink(ROOT, format!("e{i}").as_bytes()).unwrap();
        }
        let deadline = Instant::now() + DEAD_AGE + Duration::from_secs(5);
        while early.iter().any(|&i| path(i).exists()) {
            assert!(Instant::now() < deadline, "freed backing files still there");
            std::thread::sleep(Duration::from_millis(50));
        }
        for i in 0..20 {
            v.unlink(ROOT, format!("l{i}").as_bytes()).unwrap();
        }
        let late_paths: Vec<_> = late.iter().map(|&i| path(i)).collect();
        // The write-behind thread holds a strong reference only while it writes a batch.
        let mut v = v;
        for _ in 0..200 {
            match Arc::try_unwrap(v) {
                Ok(view) => {
                    drop(view);
                    break;
                }
                Err(back) => {
                    v = back;
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
        }
        assert!(
            late_paths.iter().all(|p| !p.exists()),
            "unmount left freed files"
        );
    }
}

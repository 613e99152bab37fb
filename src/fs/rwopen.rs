//! Opens of a writable mount with `--io passthrough`: which go through FUSE passthrough, and
//! what the kernel has open, per inode.
//!
//! The kernel's rules (`fs/fuse/iomode.c`): every passthrough open of an inode uses the one
//! backing file registered first, and an inode open through passthrough cannot be open
//! through the page cache at the same time (the kernel fails such an open with EIO). So an
//! open goes through passthrough when the file's bytes are all in one host file
//! ([`HostFile`]) and nothing has it open through the page cache; it shares the registered
//! backing file when there is one, and goes through the page cache when something else does.
//! A lower file is registered for reading only: an open for writing while it is open that way
//! waits briefly for those readers to close (a RELEASE may still be on its way) and then
//! fails with ETXTBSY, as writing to a running program does. A backing file serves every
//! later open of its inode (one that got a setuid or setgid bit meanwhile too: the adapter
//! then drops those bits at a write open, as the first write would). A passthrough open makes the
//! kernel drop the inode's page cache (no `FOPEN_KEEP_CACHE`), and nothing fills it while the
//! file is open that way, so a later open through the page cache never sees bytes from before
//! writes through passthrough. Owns: that decision and the table. Never registers or closes a backing file itself (the adapter does, with the reply).

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::view::{HostFile, HostStamp};
use crate::rwlayer::Ts;

/// How long an open that conflicts with a lower file open for reading waits for it to close.
pub const BUSY_WAIT: Duration = Duration::from_millis(200);

/// What to do with one open.
#[derive(Debug, PartialEq, Eq)]
pub enum Decision<B> {
    /// Through strata and the page cache.
    Cached,
    /// Through the backing file already registered for this inode.
    Share(B),
    /// Register this host file and go through it.
    Register(HostFile),
    /// The inode is open through a lower file that cannot serve this open.
    Busy,
}

/// A backing file registered with the kernel for one inode.
pub struct Passed<B> {
    pub id: B,
    /// The registered file, for `fstat` while it is written.
    pub file: Arc<File>,
    /// A lower file (read-only).
    pub lower: bool,
    opens: u32,
    writers: u32,
    /// The backing file's ctime when its first writer opened or strata last changed it: a
    /// later ctime means writes went through the kernel since.
    since: Ts,
}

/// What the kernel has open of one inode.
pub struct InodeOpens<B> {
    cached: u32,
    passed: Option<Passed<B>>,
}

/// The decision for an open of an inode in state `cur` whose host file is `host`.
pub fn decide<B: Clone>(cur: Option<&InodeOpens<B>>, host: Option<HostFile>) -> Decision<B> {
    match cur {
        Some(o) if o.cached > 0 => Decision::Cached,
        Some(InodeOpens {
            passed: Some(p), ..
        }) => match host {
            // A backing file holds the inode's bytes for as long as it exists.
            _ if !p.lower => Decision::Share(p.id.clone()),
            Some(HostFile::Lower(_)) => Decision::Share(p.id.clone()),
            _ => Decision::Busy,
        },
        _ => match host {
            Some(h) => Decision::Register(h),
            None => Decision::Cached,
        },
    }
}

/// One open file handle.
#[derive(Clone, Copy, Debug)]
struct Handle {
    ino: u64,
    passed: bool,
    write: bool,
}

/// The table of a mount's opens.
pub struct Opens<B> {
    map: Mutex<HashMap<u64, InodeOpens<B>>>,
    closed: Condvar,
    handles: Mutex<HashMap<u64, Handle>>,
    next_fh: AtomicU64,
    /// Inodes open for writing through passthrough (a fast "none" for every attribute reply).
    written: AtomicUsize,
}

impl<B> Default for Opens<B> {
    fn default() -> Self {
        Opens {
            map: Mutex::default(),
            closed: Condvar::new(),
            handles: Mutex::default(),
            next_fh: AtomicU64::new(1),
            written: AtomicUsize::new(0),
        }
    }
}

/// The stamp of a host file, from `fstat`.
pub fn stamp(f: &File) -> std::io::Result<HostStamp> {
    let m = f.metadata()?;
    Ok(HostStamp {
        size: m.len(),
        mtime: Ts {
            sec: m.mtime(),
            nsec: m.mtime_nsec() as u32,
        },
        ctime: Ts {
            sec: m.ctime(),
            nsec: m.ctime_nsec() as u32,
        },
    })
}

/// The table, locked for one open.
pub struct Locked<'a, B> {
    opens: &'a Opens<B>,
    map: MutexGuard<'a, HashMap<u64, InodeOpens<B>>>,
}

impl<B> Locked<'_, B> {
    /// Waits (unlocked) until some open closes or `deadline` passes; false once it passed.
    pub fn wait(mut self, deadline: Instant) -> (Self, bool) {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return (self, false);
        }
        let opens = self.opens;
        let (map, _) = opens
            .closed
            .wait_timeout(self.map, left)
            .unwrap_or_else(|e| e.into_inner());
        self.map = map;
        (self, true)
    }
}

impl<B: Clone> Locked<'_, B> {
    pub fn decide(&self, ino: u64, host: Option<HostFile>) -> Decision<B> {
        decide(self.map.get(&ino), host)
    }

    /// Records an open through the page cache; returns its handle.
    pub fn open_cached(&mut self, ino: u64) -> u64 {
        let e = self.map.entry(ino).or_insert(InodeOpens {
            cached: 0,
            passed: None,
        });
        e.cached += 1;
        self.opens.handle(ino, false, false)
    }

    /// Records an open through the registered backing file `p` (new, or `None`: the one
    /// already registered); returns its handle.
    pub fn open_passed(&mut self, ino: u64, new: Option<Passed<B>>, write: bool) -> u64 {
        let e = self.map.entry(ino).or_insert(InodeOpens {
            cached: 0,
            passed: None,
        });
        if let Some(p) = new {
            e.passed = Some(p);
        }
        if let Some(p) = e.passed.as_mut() {
            p.opens += 1;
            if write {
                p.writers += 1;
                if p.writers == 1 {
                    p.since = stamp(&p.file).map(|s| s.ctime).unwrap_or_default();
                    self.opens.written.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        self.opens.handle(ino, true, write)
    }
}

impl<B> Passed<B> {
    pub fn new(id: B, file: Arc<File>, lower: bool) -> Self {
        Passed {
            id,
            file,
            lower,
            opens: 0,
            writers: 0,
            since: Ts::default(),
        }
    }
}

/// What a release leaves to do outside the table: the registration to drop.
pub struct Released<B> {
    pub dropped: Option<B>,
}

impl<B> Opens<B> {
    pub fn lock(&self) -> Locked<'_, B> {
        Locked {
            opens: self,
            map: self.map.lock().unwrap_or_else(|e| e.into_inner()),
        }
    }

    fn handle(&self, ino: u64, passed: bool, write: bool) -> u64 {
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        self.handles
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(fh, Handle { ino, passed, write });
        fh
    }

    /// Waits until `ino` is not open through a lower file (false: still is at `deadline`).
    /// A change of its data (truncate) would leave those opens reading the old bytes.
    pub fn wait_lower_closed(&self, ino: u64, deadline: Instant) -> bool {
        let mut table = self.lock();
        loop {
            let busy = table
                .map
                .get(&ino)
                .and_then(|o| o.passed.as_ref())
                .is_some_and(|p| p.lower);
            if !busy {
                return true;
            }
            let (t, waited) = table.wait(deadline);
            if !waited {
                return false;
            }
            table = t;
        }
    }

    /// The file and ctime mark of `ino` if it is open for writing through passthrough.
    pub fn written(&self, ino: u64) -> Option<(Arc<File>, Ts)> {
        if self.written.load(Ordering::Relaxed) == 0 {
            return None;
        }
        let map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        let p = map.get(&ino)?.passed.as_ref()?;
        (p.writers > 0).then(|| (p.file.clone(), p.since))
    }

    /// Runs `f` with the table locked and, if `ino` is open for writing through passthrough,
    /// its file and ctime mark; `f` returns the new mark (strata changed the file itself).
    pub fn with_written<T>(
        &self,
        ino: u64,
        f: impl FnOnce(Option<(&File, Ts)>) -> (T, Option<Ts>),
    ) -> T {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        let p = map
            .get_mut(&ino)
            .and_then(|o| o.passed.as_mut())
            .filter(|p| p.writers > 0);
        match p {
            Some(p) => {
                let file = p.file.clone();
                let (out, mark) = f(Some((&file, p.since)));
                if let Some(m) = mark {
                    p.since = m;
                }
                out
            }
            None => f(None).0,
        }
    }

    /// Forgets handle `fh`. `record` runs under the table's lock when the last writer through
    /// passthrough closes, so no attribute reply can see the inode between the two.
    pub fn release(&self, fh: u64, record: impl FnOnce(u64, &File, Ts)) -> Option<Released<B>> {
        let h = self
            .handles
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&fh)?;
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        let mut out = Released { dropped: None };
        let e = map.get_mut(&h.ino)?;
        if !h.passed {
            e.cached = e.cached.saturating_sub(1);
        } else if let Some(p) = e.passed.as_mut() {
            p.opens = p.opens.saturating_sub(1);
            if h.write {
                p.writers = p.writers.saturating_sub(1);
                if p.writers == 0 {
                    record(h.ino, &p.file, p.since);
                    self.written.fetch_sub(1, Ordering::Relaxed);
                }
            }
            if p.opens == 0 {
                out.dropped = e.passed.take().map(|p| p.id);
            }
        }
        if e.cached == 0 && e.passed.is_none() {
            map.remove(&h.ino);
        }
        drop(map);
        self.closed.notify_all();
        Some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn lower() -> Option<HostFile> {
        Some(HostFile::Lower(PathBuf::from("/l")))
    }
    fn backing() -> Option<HostFile> {
        Some(HostFile::Backing(PathBuf::from("/b")))
    }
    fn passed(lower: bool) -> Passed<u32> {
        Passed::new(7, Arc::new(File::open("/dev/null").unwrap()), lower)
    }

    #[test]
    fn first_open_registers_a_host_file_or_goes_through_the_page_cache() {
        assert_eq!(
            decide::<u32>(None, lower()),
            Decision::Register(lower().unwrap())
        );
        assert_eq!(
            decide::<u32>(None, backing()),
            Decision::Register(backing().unwrap())
        );
        assert_eq!(decide::<u32>(None, None), Decision::Cached);
    }

    #[test]
    fn an_inode_open_through_the_page_cache_stays_there() {
        let o = InodeOpens::<u32> {
            cached: 1,
            passed: None,
        };
        assert_eq!(decide(Some(&o), backing()), Decision::Cached);
        assert_eq!(decide(Some(&o), lower()), Decision::Cached);
    }

    #[test]
    fn later_opens_share_the_registered_file_or_are_busy() {
        let l = InodeOpens {
            cached: 0,
            passed: Some(passed(true)),
        };
        assert_eq!(decide(Some(&l), lower()), Decision::Share(7));
        // Opened for writing (no host file for that) or copied up since: not the lower file.
        assert_eq!(decide(Some(&l), None), Decision::Busy);
        assert_eq!(decide(Some(&l), backing()), Decision::Busy);
        let b = InodeOpens {
            cached: 0,
            passed: Some(passed(false)),
        };
        assert_eq!(decide(Some(&b), backing()), Decision::Share(7));
        // Given a setuid bit since (no host file now): still the backing file.
        assert_eq!(decide(Some(&b), None), Decision::Share(7));
    }

    #[test]
    fn the_last_writer_records_and_the_last_open_drops_the_registration() {
        let t = Opens::<u32>::default();
        let f = Arc::new(File::open("/dev/null").unwrap());
        let (w, r) = {
            let mut l = t.lock();
            let w = l.open_passed(5, Some(Passed::new(9, f, false)), true);
            let r = l.open_passed(5, None, false);
            (w, r)
        };
        assert!(t.written(5).is_some());
        let mut recorded = Vec::new();
        let out = t.release(w, |ino, _, _| recorded.push(ino)).unwrap();
        assert_eq!(recorded, [5]);
        assert!(out.dropped.is_none());
        assert!(t.written(5).is_none());
        let out = t.release(r, |_, _, _| panic!("no writer left")).unwrap();
        assert_eq!(out.dropped, Some(9));
        assert!(
            t.release(r, |_, _, _| {}).is_none(),
            "a handle is released once"
        );
        let c = t.lock().open_cached(5);
        assert!(t.written(5).is_none());
        assert!(
            t.release(c, |_, _, _| panic!("not a writer"))
                .unwrap()
                .dropped
                .is_none()
        );
    }
}

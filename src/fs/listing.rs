//! Directory listings for READDIR whose offsets stay valid while the directory changes.
//!
//! The writable mount answers OPENDIR with `ENOSYS`, so opening a directory costs no round
//! trip, and READDIR carries no handle: the offset alone says where a reader stands. An
//! entry's offset is therefore a function of its name (a hash; `.` is 1 and `..` is 2) and a
//! listing is sorted by it: entries removed or added around a reader never make it skip or
//! repeat another one (`rm -rf` removes what it has read before it reads on), whatever
//! listing the next READDIR is answered from.
//!
//! Owns: the last few listings, so a directory read in many READDIRs is listed once (a
//! reader at offset 0 always gets a fresh one). Must never decide what a directory contains
//! (the view does) nor be needed for correctness: any listing answers any offset.

use std::collections::VecDeque;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::{Arc, Mutex};

use crate::rwlayer::FileKind;

/// Listings kept at most (one per directory being read at the moment).
const KEPT: usize = 8;

/// One entry of a listing and the offset that resumes the listing after it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub name: Box<[u8]>,
    pub ino: u64,
    pub kind: FileKind,
    pub offset: u64,
}

/// A directory's entries, `.` and `..` first, then in offset order.
#[derive(Debug)]
pub struct Listing {
    entries: Vec<Entry>,
}

/// The offset of a named entry: a hash of the name above 2 and below 2^62 (positive as a
/// signed `loff_t`, and room for the rare collision to move up).
fn name_offset(name: &[u8]) -> u64 {
    let mut h = DefaultHasher::new(); // SipHash with fixed keys: the same in every process
    name.hash(&mut h);
    (h.finish() >> 2).max(3)
}

impl Listing {
    /// The listing of directory `dir` (whose parent is `parent`) with these children.
    pub fn new(dir: u64, parent: u64, children: Vec<(Box<[u8]>, u64, FileKind)>) -> Self {
        let mut named: Vec<Entry> = children
            .into_iter()
            .map(|(name, ino, kind)| Entry {
                offset: name_offset(&name),
                name,
                ino,
                kind,
            })
            .collect();
        named.sort_unstable_by(|a, b| (a.offset, &a.name).cmp(&(b.offset, &b.name)));
        // Two names with one hash: the later one moves up, so every offset names one entry.
        for i in 1..named.len() {
            if named[i].offset <= named[i - 1].offset {
                named[i].offset = named[i - 1].offset + 1;
            }
        }
        let dot = |name: &[u8], ino, offset| Entry {
            name: name.into(),
            ino,
            kind: FileKind::Dir,
            offset,
        };
        let mut entries = Vec::with_capacity(named.len() + 2);
        entries.push(dot(b".", dir, 1));
        entries.push(dot(b"..", parent, 2));
        entries.extend(named);
        Listing { entries }
    }

    /// The entries after the one whose offset is `offset` (all of them for 0).
    pub fn after(&self, offset: u64) -> &[Entry] {
        let start = self.entries.partition_point(|e| e.offset <= offset);
        &self.entries[start..]
    }
}

/// The listings of directories being read, newest last.
#[derive(Default)]
pub struct Listings {
    recent: Mutex<VecDeque<(u64, Arc<Listing>)>>,
}

impl Listings {
    /// The listing to answer a READDIR of `dir` at `offset` from: a fresh one (from `list`)
    /// when a reader starts at 0 or none is kept, else the kept one.
    pub fn get<E>(
        &self,
        dir: u64,
        offset: u64,
        list: impl FnOnce() -> Result<Listing, E>,
    ) -> Result<Arc<Listing>, E> {
        if offset != 0
            && let Some((_, l)) = self.lock().iter().find(|(d, _)| *d == dir)
        {
            return Ok(l.clone());
        }
        let fresh = Arc::new(list()?);
        let mut recent = self.lock();
        recent.retain(|(d, _)| *d != dir);
        if recent.len() == KEPT {
            recent.pop_front();
        }
        recent.push_back((dir, fresh.clone()));
        Ok(fresh)
    }

    /// A reader got to the end of `listing`: it is not kept any longer (unless a newer
    /// listing of the directory has replaced it).
    pub fn done(&self, dir: u64, listing: &Arc<Listing>) {
        self.lock()
            .retain(|(d, l)| !(*d == dir && Arc::ptr_eq(l, listing)));
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<(u64, Arc<Listing>)>> {
        self.recent.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn children(names: &[&str]) -> Vec<(Box<[u8]>, u64, FileKind)> {
        names
            .iter()
            .enumerate()
            .map(|(i, n)| (n.as_bytes().into(), 10 + i as u64, FileKind::File))
            .collect()
    }

    fn names(entries: &[Entry]) -> Vec<String> {
        entries
            .iter()
            .map(|e| String::from_utf8_lossy(&e.name).into_owned())
            .collect()
    }

    #[test]
    fn dots_first_then_every_child_once_with_increasing_offsets() {
        let l = Listing::new(5, 1, children(&["b", "a", "c", "d"]));
        let all = l.after(0);
        assert_eq!(&names(all)[..2], [".", ".."]);
        assert_eq!((all[0].ino, all[1].ino), (5, 1));
        let mut rest = names(&all[2..]);
        rest.sort();
        assert_eq!(rest, ["a", "b", "c", "d"]);
        assert!(all.windows(2).all(|w| w[0].offset < w[1].offset));
        assert_eq!(names(l.after(1))[0], "..");
        assert_eq!(l.after(2).len(), 4);
        assert!(l.after(all[5].offset).is_empty());
    }

    /// `rm -rf`: what a reader has read is removed before it reads on, and the next READDIR
    /// is answered from a fresh listing. Nothing is skipped or repeated.
    #[test]
    fn removing_what_was_read_skips_nothing() {
        let mut left: Vec<String> = (0..1000).map(|i| format!("f{i}")).collect();
        let mut seen = Vec::new();
        let mut offset = 0;
        loop {
            let refs: Vec<&str> = left.iter().map(|s| s.as_str()).collect();
            let l = Listing::new(5, 1, children(&refs));
            let batch: Vec<Entry> = l.after(offset).iter().take(37).cloned().collect();
            let Some(last) = batch.last() else { break };
            offset = last.offset;
            for e in &batch[..] {
                let n = String::from_utf8_lossy(&e.name).into_owned();
                if n != "." && n != ".." {
                    left.retain(|x| *x != n);
                    seen.push(n);
                }
            }
        }
        assert!(left.is_empty(), "never listed: {left:?}");
        seen.sort();
        seen.dedup();
        assert_eq!(seen.len(), 1000);
    }

    #[test]
    fn colliding_names_get_distinct_offsets() {
        // Forge a collision: the same name twice stands in for two names with one hash.
        let l = Listing::new(5, 1, children(&["x", "x", "y"]));
        let all = l.after(2);
        assert_eq!(all.len(), 3);
        assert!(all.windows(2).all(|w| w[0].offset < w[1].offset));
        assert_eq!(l.after(all[0].offset).len(), 2);
    }

    #[test]
    fn a_reader_at_zero_gets_a_fresh_listing_others_the_kept_one() {
        let ls = Listings::default();
        let ok = |n: &[&str]| Ok::<_, ()>(Listing::new(5, 1, children(n)));
        let first = ls.get(5, 0, || ok(&["a"])).unwrap();
        let again = ls.get(5, 7, || ok(&["a", "b"])).unwrap();
        assert!(Arc::ptr_eq(&first, &again));
        let fresh = ls.get(5, 0, || ok(&["a", "b"])).unwrap();
        assert_eq!(fresh.after(2).len(), 2);
        ls.done(5, &first); // an older listing's end does not drop the newer one
        assert!(Arc::ptr_eq(&ls.get(5, 9, || ok(&[])).unwrap(), &fresh));
        ls.done(5, &fresh);
        assert_eq!(ls.get(5, 9, || ok(&[])).unwrap().after(2).len(), 0);
        assert_eq!(ls.get(6, 3, || Err(())).unwrap_err(), ());
        for d in 0..20 {
            ls.get(100 + d, 0, || ok(&["z"])).unwrap();
        }
        assert_eq!(ls.lock().len(), KEPT);
    }
}

//! The writable mount under concurrent load (issue 11): several threads at once create, write
//! (across the inline / backing-file boundary), append, truncate, rename, link, unlink, chmod
//! and fsync files in their own directories and in one shared directory, write disjoint ranges
//! of one shared new file and of one shared lower file (concurrent per-chunk copy-up). Every
//! thread's operations are deterministic and touch only its own names or bytes, so the end
//! state does not depend on the interleaving: kernel overlayfs (the oracle) and strata must end
//! with the same tree, and strata must show it again after a remount (write-behind reached the
//! layer).

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt};
use std::path::Path;

use strata_testkit::backend::*;

const THREADS: u64 = 4;
const OPS: u64 = 250;
const LOWER: &str = "srv/files/sparse-16M";
const SIZES: [usize; 9] = [0, 1, 100, 4095, 4096, 4097, 20_000, 70_000, 200_000];

/// xorshift64*: a small deterministic generator per thread.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn bytes(len: usize, seed: u64) -> Vec<u8> {
    (0..len)
        .map(|i| (((i as u64).wrapping_mul(31) ^ seed) % 251) as u8 + 1)
        .collect()
}

/// One thread's deterministic workload on its own names under `mnt`.
fn worker(mnt: &Path, t: u64) {
    let own = mnt.join(format!("stress/t{t}"));
    let shared = mnt.join("stress/shared");
    std::fs::create_dir(&own).unwrap();
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ (t + 1));
    let mut live: Vec<String> = Vec::new();
    let mut serial = 0u64;
    let common = OpenOptions::new()
        .write(true)
        .open(shared.join("common"))
        .unwrap();
    let lower = OpenOptions::new()
        .write(true)
        .open(mnt.join(LOWER))
        .unwrap();
    for op in 0..OPS {
        // Disjoint ranges of the shared files: 64 bytes per (thread, op); the shared new
        // file crosses the inline limit while others write it, the lower file gets chunks
        // copied up by several threads at once (some chunks shared by all threads).
        let slot = op * THREADS + t;
        common.write_all_at(&bytes(64, slot), slot * 64).unwrap();
        lower
            .write_all_at(&bytes(64, slot ^ 0xFF), (slot * 4099) % (16 << 20))
            .unwrap();
        let dir = if rng.below(3) == 0 { &shared } else { &own };
        match rng.below(10) {
            0..=2 => {
                serial += 1;
                let name = format!("t{t}-f{serial}");
                let size = SIZES[rng.below(SIZES.len() as u64) as usize];
                std::fs::write(dir.join(&name), bytes(size, serial)).unwrap();
                live.push(format!(
                    "{}/{name}",
                    dir.file_name().unwrap().to_str().unwrap()
                ));
            }
            _ if live.is_empty() => {}
            3 => {
                let p = mnt
                    .join("stress")
                    .join(&live[rng.below(live.len() as u64) as usize]);
                let mut f = OpenOptions::new().append(true).open(&p).unwrap();
                let size = SIZES[rng.below(SIZES.len() as u64) as usize] / 3;
                f.write_all(&bytes(size, op)).unwrap();
            }
            4 => {
                let p = mnt
                    .join("stress")
                    .join(&live[rng.below(live.len() as u64) as usize]);
                let f = OpenOptions::new().write(true).open(&p).unwrap();
                let off = rng.below(8200);
                f.write_all_at(&bytes(300, op), off).unwrap();
                if rng.below(4) == 0 {
                    f.sync_all().unwrap();
                }
            }
            5 => {
                let p = mnt
                    .join("stress")
                    .join(&live[rng.below(live.len() as u64) as usize]);
                let f = OpenOptions::new().write(true).open(&p).unwrap();
                f.set_len(SIZES[rng.below(SIZES.len() as u64) as usize] as u64)
                    .unwrap();
            }
            6 => {
                let k = rng.below(live.len() as u64) as usize;
                serial += 1;
                let to = format!("own-t{t}-r{serial}");
                let (from, to_rel) = (mnt.join("stress").join(&live[k]), format!("t{t}/{to}"));
                std::fs::rename(from, mnt.join("stress").join(&to_rel)).unwrap();
                live[k] = to_rel;
            }
            7 => {
                let k = rng.below(live.len() as u64) as usize;
                std::fs::remove_file(mnt.join("stress").join(live.swap_remove(k))).unwrap();
            }
            8 => {
                let k = rng.below(live.len() as u64) as usize;
                serial += 1;
                let name = format!("t{t}-l{serial}");
                std::fs::hard_link(mnt.join("stress").join(&live[k]), shared.join(&name)).unwrap();
                live.push(format!("shared/{name}"));
            }
            _ => {
                let p = mnt
                    .join("stress")
                    .join(&live[rng.below(live.len() as u64) as usize]);
                let mode = 0o600 | (rng.below(0o100) as u32);
                std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
            }
        }
    }
}

/// Kind, mode, size, link count and content of every path under `stress/`, and of the lower
/// file the threads wrote into.
type Tree = BTreeMap<String, (u32, u64, u64, Vec<u8>)>;

fn tree(mnt: &Path) -> Tree {
    fn walk(root: &Path, rel: &str, out: &mut Tree) {
        let p = root.join(rel);
        let m = std::fs::symlink_metadata(&p).unwrap();
        let content = if m.is_file() {
            std::fs::read(&p).unwrap()
        } else {
            vec![]
        };
        let nlink = if m.is_dir() { 0 } else { m.nlink() };
        let size = if m.is_dir() { 0 } else { m.len() };
        out.insert(rel.to_string(), (m.mode(), size, nlink, content));
        if m.is_dir() {
            for e in std::fs::read_dir(&p).unwrap() {
                let name = e.unwrap().file_name().into_string().unwrap();
                walk(root, &format!("{rel}/{name}"), out);
            }
        }
    }
    let mut out = Tree::new();
    walk(mnt, "stress", &mut out);
    walk(mnt, LOWER, &mut out);
    out
}

fn run(b: &dyn Backend) -> (Tree, Option<Tree>) {
    let mut m = b.mount();
    std::fs::create_dir_all(m.p("stress/shared")).unwrap();
    File::create(m.p("stress/shared/common")).unwrap();
    std::thread::scope(|s| {
        for t in 0..THREADS {
            let mnt = m.mnt.clone();
            s.spawn(move || worker(&mnt, t));
        }
    });
    let before = tree(&m.mnt);
    let after = m.strata().then(|| {
        m.remount();
        tree(&m.mnt)
    });
    (before, after)
}

fn diff(a: &Tree, b: &Tree) -> Vec<String> {
    let mut out = Vec::new();
    for (p, x) in a {
        match b.get(p) {
            None => out.push(format!("{p}: missing")),
            Some(y) if y != x => out.push(format!(
                "{p}: mode {:o}/{:o} size {}/{} nlink {}/{} content {}",
                x.0,
                y.0,
                x.1,
                y.1,
                x.2,
                y.2,
                if x.3 == y.3 { "same" } else { "differs" }
            )),
            _ => {}
        }
    }
    out.extend(
        b.keys()
            .filter(|p| !a.contains_key(*p))
            .map(|p| format!("{p}: extra")),
    );
    out
}

#[test]
fn concurrent_writers_end_as_on_kernel_overlayfs() {
    let (kernel, _) = run(&KernelOverlay::new());
    assert!(
        kernel.len() > 100,
        "the workload made only {} paths",
        kernel.len()
    );
    let (strata, remounted) = run(&Strata::new());
    let d = diff(&kernel, &strata);
    assert!(
        d.is_empty(),
        "strata differs from kernel overlayfs:\n{}",
        d.join("\n")
    );
    let d = diff(&strata, &remounted.unwrap());
    assert!(
        d.is_empty(),
        "strata after a remount differs:\n{}",
        d.join("\n")
    );
}

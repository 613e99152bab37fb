//! The differential tester (tools/difftest) in CI: seeded random operation sequences on
//! kernel overlayfs and on a strata writable mount of the same image must give the same
//! results and the same trees. Also checks the engine itself (both sides kernel overlayfs;
//! a deliberately broken side B must be caught and shrunk).

use std::time::{Duration, Instant};

use strata_testkit::difftest as engine;
use strata_testkit::*;

/// Runs `seeds` × `ops`; panics with the seed and the minimal failing sequence on a
/// mismatch. Returns the operations that ran clean.
fn run(cfg: engine::Config, seeds: std::ops::Range<u64>, ops: usize) -> u64 {
    let mut t = engine::Tester::new(cfg).expect("set up the difftest mounts");
    let started = Instant::now();
    let n = seeds.end - seeds.start;
    for seed in seeds {
        if let Some(f) = t.run_seed(seed, ops).expect("difftest run") {
            panic!("difftest against {}:\n{f}", t.side_b_name());
        }
    }
    eprintln!(
        "difftest: kernel overlayfs vs {}: {n} seeds × {ops} operations: {} operations ran \
         clean in {:.1} s ({} fresh-mount runs)",
        t.side_b_name(),
        t.ops_clean,
        started.elapsed().as_secs_f64(),
        t.runs
    );
    t.ops_clean
}

#[test]
fn strata_matches_kernel_overlayfs_100_seeds_x_300_ops() {
    let mut cfg = engine::Config::new(&sample_image(), Some(strata_bin()));
    // Keep a failing CI run bounded: the shrinker gets at most 2 minutes.
    cfg.shrink_time = Duration::from_secs(120);
    let clean = run(cfg, 1..101, 300);
    assert_eq!(clean, 100 * 300);
}

/// The same against `mount --rw --io passthrough` (seeds 101–150: other sequences than above).
#[test]
fn strata_passthrough_matches_kernel_overlayfs_50_seeds_x_300_ops() {
    let mut cfg = engine::Config::new(&sample_image(), Some(strata_bin()));
    cfg.shrink_time = Duration::from_secs(120);
    cfg.mount_args = vec!["--io".into(), "passthrough".into()];
    let clean = run(cfg, 101..151, 300);
    assert_eq!(clean, 50 * 300);
}

/// Both sides kernel overlayfs: every result and the final trees must be equal, so any
/// mismatch here is a bug of the tester (or a nondeterminism it must not report).
#[test]
fn engine_self_test_both_sides_kernel_overlayfs() {
    let cfg = engine::Config::new(&sample_image(), None);
    let clean = run(cfg, 1000..1030, 300);
    assert_eq!(clean, 30 * 300);
}

/// A side B that corrupts data or modes must be caught, and shrunk to the few operations
/// that show it.
#[test]
fn engine_catches_and_shrinks_a_broken_side() {
    for (fault, max_len) in [
        (engine::Fault::FlipLateWriteByte, 3),
        (engine::Fault::ChmodDropsOtherExec, 2),
    ] {
        let mut cfg = engine::Config::new(&sample_image(), None);
        cfg.fault = Some(fault);
        cfg.shrink_time = Duration::from_secs(60);
        let mut t = engine::Tester::new(cfg).unwrap();
        let f = (1..20)
            .find_map(|seed| t.run_seed(seed, 300).unwrap())
            .unwrap_or_else(|| panic!("{fault:?} went unnoticed in 19 seeds"));
        eprintln!("{fault:?}:\n{f}");
        assert!(f.reproduced, "{fault:?}: not reproduced");
        assert!(
            f.minimal.len() <= max_len,
            "{fault:?}: minimal sequence has {} operations",
            f.minimal.len()
        );
    }
}

//! The crash test (tools/crashtest) in CI: SIGKILL the daemon of a writable strata mount
//! during a write workload, remount the same layer, every fsync'ed byte must be there. Also
//! checks the engine itself: its journal replay and checks, and a run against kernel
//! overlayfs (where the "crash" kills the workload and detaches the mount without sync).

use std::path::Path;
use std::process::Command;

use engine::{ChildArgs, Ranges};
use strata_testkit::crashtest as engine;
use strata_testkit::*;

const CHILD_ENV: &str = "STRATA_CRASHTEST_CHILD";

/// The tests (this target has its own `main`, see [`main`]).
const TESTS: &[(&str, fn())] = &[
    (
        "strata_keeps_every_fsynced_byte_across_sigkill_5_trials",
        strata_keeps_every_fsynced_byte_across_sigkill_5_trials,
    ),
    (
        "strata_passthrough_keeps_every_fsynced_byte_across_sigkill_5_trials",
        strata_passthrough_keeps_every_fsynced_byte_across_sigkill_5_trials,
    ),
    (
        "engine_against_kernel_overlayfs",
        engine_against_kernel_overlayfs,
    ),
    (
        "content_check_allows_only_what_was_not_fsynced",
        content_check_allows_only_what_was_not_fsynced,
    ),
    (
        "journal_replay_rebuilds_the_guaranteed_content",
        journal_replay_rebuilds_the_guaranteed_content,
    ),
    (
        "verification_catches_lost_bytes_torn_renames_and_strays",
        verification_catches_lost_bytes_torn_renames_and_strays,
    ),
];

/// The trials re-execute this binary as the workload child, with its arguments in
/// [`CHILD_ENV`]: then it is the child and runs no test. Otherwise it runs the tests as
/// cargo's own harness would (libtest-mimic: same arguments, same output).
fn main() -> std::process::ExitCode {
    if let Ok(json) = std::env::var(CHILD_ENV) {
        engine::child_main(&json);
    }
    let args = libtest_mimic::Arguments::from_args();
    let trials = TESTS
        .iter()
        .map(|&(name, f)| {
            libtest_mimic::Trial::test(name, move || {
                f();
                Ok(())
            })
        })
        .collect();
    libtest_mimic::run(&args, trials).exit_code()
}

fn config(strata: Option<std::path::PathBuf>, trials: usize) -> engine::Config {
    engine::Config {
        image_dir: sample_image(),
        strata,
        trials,
        first_seed: 1,
        max_ops: 3000,
        spawn: Box::new(|a: &ChildArgs, stderr: &Path| {
            let c = Command::new(std::env::current_exe().unwrap());
            engine::spawn_with(c, a, stderr, Some(CHILD_ENV), None)
        }),
        keep: false,
        verbose: true,
        mount_args: Vec::new(),
    }
}

fn strata_keeps_every_fsynced_byte_across_sigkill_5_trials() {
    let started = std::time::Instant::now();
    match engine::run(&config(Some(strata_bin()), 5)).expect("crash test setup") {
        Ok(s) => {
            eprintln!(
                "crashtest: {s:?} in {:.1} s",
                started.elapsed().as_secs_f64()
            );
            assert_eq!(s.trials, 5);
            assert!(s.durable_records > 0);
        }
        Err(f) => panic!("{f}"),
    }
}

/// The same with `mount --rw --io passthrough`: data written by the kernel straight into
/// backing files, sizes and times recorded at fsync and close.
fn strata_passthrough_keeps_every_fsynced_byte_across_sigkill_5_trials() {
    let cfg = engine::Config {
        mount_args: vec!["--io".into(), "passthrough".into()],
        ..config(Some(strata_bin()), 5)
    };
    match engine::run(&cfg).expect("crash test setup") {
        Ok(s) => {
            assert_eq!(s.trials, 5);
            assert!(s.durable_records > 0);
            assert!(s.bytes_checked > 0, "{s:?}");
        }
        Err(f) => panic!("{f}"),
    }
}

fn engine_against_kernel_overlayfs() {
    match engine::run(&config(None, 3)).expect("crash test setup") {
        Ok(s) => {
            assert_eq!(s.trials, 3);
            assert!(s.durable_records > 3, "{s:?}");
            assert!(s.bytes_checked > 0, "{s:?}");
        }
        Err(f) => panic!("{f}"),
    }
}

fn content_check_allows_only_what_was_not_fsynced() {
    let durable = b"0123456789".to_vec();
    let none = Ranges::default();
    assert!(engine::check_content(b"0123456789", &durable, &none).is_ok());
    // A lost byte, a short file, a longer file with nothing written since: all caught.
    assert!(engine::check_content(b"0123456x89", &durable, &none).is_err());
    assert!(engine::check_content(b"01234", &durable, &none).is_err());
    assert!(engine::check_content(b"0123456789!", &durable, &none).is_err());
    // Bytes 3..5 were written again after the fsync: anything goes there, not elsewhere.
    let mut dirty = Ranges::default();
    dirty.add(3, 5);
    assert!(engine::check_content(b"012xx56789", &durable, &dirty).is_ok());
    assert!(engine::check_content(b"012xx56789tail", &durable, &dirty).is_ok());
    assert!(engine::check_content(b"x12xx56789", &durable, &dirty).is_err());
    // A truncation to 6 after the fsync: the file may end anywhere from 6 on.
    let mut dirty = Ranges::default();
    dirty.add(6, u64::MAX);
    assert!(engine::check_content(b"012345", &durable, &dirty).is_ok());
    assert!(engine::check_content(b"0123", &durable, &dirty).is_err());

    let mut r = Ranges::default();
    r.add(10, 20);
    r.add(5, 12);
    r.add(30, 40);
    assert_eq!(r.0, vec![(5, 20), (30, 40)]);
    assert_eq!(r.complement(35), vec![(0, 5), (20, 30)]);
}

fn journal_replay_rebuilds_the_guaranteed_content() {
    let data = strata_testkit::fill(7, 4);
    let mut after = b"base".to_vec();
    after[1..].copy_from_slice(&data[..3]);
    let sha = |d: &[u8]| {
        use sha2::Digest as _;
        hex::encode(sha2::Sha256::digest(d))
    };
    let empty = sha(b"");
    let text = format!(
        "dir crash\n\
         base 0 etc/motd\n\
         write 0 1 3 7\n\
         durable 0 4 {}\n\
         create 1 crash/f1\n\
         durable-name 1 crash/f1\n\
         durable 1 0 {empty}\n\
         write 1 0 4 7\n\
         rename 1 crash/r2\n\
         write 0 0 2 9\n\
         rename 1 crash/sub/r3\n\
         durable-name 1 crash/sub/r3\n\
         trunc 1 2\n\
         write 0 3 1 5\n\
         durable 0 4 tor",
        sha(&after)
    );
    let r = engine::replay(&text, &|_| Ok(b"base".to_vec())).unwrap();
    assert_eq!(r.files.len(), 2);
    assert_eq!(r.files[0].durable.as_deref(), Some(&after[..]));
    assert_eq!(r.files[0].dirty.0, vec![(0, 2), (3, 4)]);
    assert_eq!(r.files[0].durable_path.as_deref(), Some("etc/motd"));
    assert_eq!(r.files[1].durable.as_deref(), Some(&b""[..]));
    assert_eq!(r.files[1].durable_path.as_deref(), Some("crash/sub/r3"));
    assert_eq!(r.files[1].dirty.0, vec![(0, u64::MAX)]);
    assert!(r.gone.contains("crash/f1") && r.gone.contains("crash/r2"));
    // The torn last line is ignored; a durable record whose content disagrees is an error.
    let bad = "base 0 etc/motd\ndurable 0 4 0000\n";
    assert!(engine::replay(bad, &|_| Ok(b"base".to_vec())).is_err());
}

fn verification_catches_lost_bytes_torn_renames_and_strays() {
    let sha = |d: &[u8]| {
        use sha2::Digest as _;
        hex::encode(sha2::Sha256::digest(d))
    };
    let mut after = b"base".to_vec();
    after[1..].copy_from_slice(&strata_testkit::fill(7, 3));
    let text = format!(
        "dir crash\n\
         base 0 etc/motd\n\
         write 0 1 3 7\n\
         durable 0 4 {}\n\
         create 1 crash/f1\n\
         durable-name 1 crash/f1\n\
         durable 1 0 {}\n\
         write 1 0 4 7\n\
         rename 1 crash/r2\n",
        sha(&after),
        sha(b"")
    );
    let r = engine::replay(&text, &|_| Ok(b"base".to_vec())).unwrap();
    let t = tempfile::tempdir().unwrap();
    let root = t.path();
    std::fs::create_dir_all(root.join("etc")).unwrap();
    std::fs::create_dir_all(root.join("crash/sub")).unwrap();
    std::fs::write(root.join("etc/motd"), &after).unwrap();
    // The un-synced rename may or may not have happened; the write after the fsync may have
    // landed in part.
    std::fs::write(root.join("crash/r2"), b"xy").unwrap();
    assert_eq!(engine::verify(root, &r), Ok(4));
    std::fs::rename(root.join("crash/r2"), root.join("crash/f1")).unwrap();
    assert!(engine::verify(root, &r).is_ok());

    let fails = |what: &str| {
        let e = engine::verify(root, &r).expect_err(what);
        eprintln!("{what}: {e:?}");
    };
    std::fs::write(root.join("crash/r2"), b"").unwrap();
    fails("present under both names");
    std::fs::remove_file(root.join("crash/r2")).unwrap();
    std::fs::write(root.join("crash/stray"), b"").unwrap();
    fails("a name never created");
    std::fs::remove_file(root.join("crash/stray")).unwrap();
    std::fs::remove_file(root.join("crash/f1")).unwrap();
    fails("a durably created file is missing");
    std::fs::write(root.join("crash/f1"), b"").unwrap();
    assert!(engine::verify(root, &r).is_ok());
    let mut lost = after.clone();
    lost[2] ^= 1;
    std::fs::write(root.join("etc/motd"), &lost).unwrap();
    fails("an fsync'ed byte lost");
    std::fs::write(root.join("etc/motd"), &after[..3]).unwrap();
    fails("an fsync'ed tail lost");
}

#[test]
fn verification_catches_resurrected_unlinks_and_lost_modes() {
    use std::os::unix::fs::PermissionsExt;
    let sha = |d: &[u8]| {
        use sha2::Digest as _;
        hex::encode(sha2::Sha256::digest(d))
    };
    let text = format!(
        "dir crash\n\
         create 0 crash/a\n\
         durable-name 0 crash/a\n\
         durable 0 0 {e}\n\
         create 1 crash/b\n\
         durable-name 1 crash/b\n\
         durable 1 0 {e}\n\
         create 2 crash/c\n\
         durable-name 2 crash/c\n\
         durable 2 0 {e}\n\
         unlink 0\n\
         durable-unlink 0\n\
         unlink 1\n\
         chmod 2 416\n\
         durable-mode 2 416\n",
        e = sha(b"")
    );
    let r = engine::replay(&text, &|_| Ok(vec![])).unwrap();
    let t = tempfile::tempdir().unwrap();
    let root = t.path();
    std::fs::create_dir_all(root.join("crash/sub")).unwrap();
    let c = root.join("crash/c");
    std::fs::write(&c, b"").unwrap();
    std::fs::set_permissions(&c, std::fs::Permissions::from_mode(0o640)).unwrap();
    // b's unlink was not durable: present or gone are both right.
    assert!(engine::verify(root, &r).is_ok());
    std::fs::write(root.join("crash/b"), b"").unwrap();
    assert!(engine::verify(root, &r).is_ok());
    std::fs::write(root.join("crash/a"), b"").unwrap();
    assert!(
        engine::verify(root, &r).is_err(),
        "a durably unlinked file came back"
    );
    std::fs::remove_file(root.join("crash/a")).unwrap();
    std::fs::set_permissions(&c, std::fs::Permissions::from_mode(0o644)).unwrap();
    assert!(
        engine::verify(root, &r).is_err(),
        "an fsync'ed mode was lost"
    );
}

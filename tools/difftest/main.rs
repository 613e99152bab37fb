//! Differential tester: seeded random sequences of file system operations on kernel
//! overlayfs and on a strata writable mount of the same image, compared after every
//! operation and as whole trees at the end (the engine is `strata_testkit::difftest`).
//!
//! ```text
//! cargo build --release && cargo run --release --example difftest -- --seeds 100 --ops 300
//! cargo run --release --example difftest -- --seed 42 --ops 300 -v   # one seed, verbose
//! cargo run --release --example difftest -- --both-kernel --seeds 20 # engine self-test
//! ```
//! Needs root (mounts). Exit status: 0 all clean, 1 a mismatch (the seed and the minimal
//! failing sequence are printed), 2 a setup error, 3 an operation hung.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::Parser;
use strata_testkit::difftest as engine;

#[derive(Parser, Debug)]
#[command(about = "strata vs kernel overlayfs: seeded random operation sequences")]
struct Args {
    /// Number of seeds to run (default 100, or 1 with --seed).
    #[arg(long)]
    seeds: Option<u64>,
    /// Operations per seed.
    #[arg(long, default_value_t = 300)]
    ops: usize,
    /// First seed (default 1).
    #[arg(long)]
    seed: Option<u64>,
    /// The strata binary (default: target/<profile>/strata next to this example).
    #[arg(long)]
    strata: Option<PathBuf>,
    /// Side B is a second kernel overlayfs mount: checks the tester itself.
    #[arg(long)]
    both_kernel: bool,
    /// Sample image directory (default: built by images/build.py into target/tmp/).
    #[arg(long)]
    image: Option<PathBuf>,
    /// Most fresh-mount runs spent shrinking a failure.
    #[arg(long, default_value_t = 400)]
    shrink_runs: usize,
    /// Most seconds spent shrinking a failure.
    #[arg(long, default_value_t = 300)]
    shrink_secs: u64,
    /// Do not stop at the first failing seed (and do not shrink): list every failing seed's
    /// first mismatch.
    #[arg(long)]
    keep_going: bool,
    /// Start no new seed after this many seconds.
    #[arg(long)]
    max_secs: Option<u64>,
    /// Print every operation and its result.
    #[arg(short, long)]
    verbose: bool,
    /// One more argument for strata's `mount --rw` (repeat it: `--mount-arg=--io
    /// --mount-arg=passthrough`).
    #[arg(long, allow_hyphen_values = true)]
    mount_arg: Vec<String>,
}

fn main() {
    let args = Args::parse();
    match run(args) {
        Ok(true) => {}
        Ok(false) => std::process::exit(1),
        Err(e) => {
            eprintln!("difftest: {e:#}");
            std::process::exit(2);
        }
    }
}

fn run(args: Args) -> anyhow::Result<bool> {
    let (image, strata) = strata_testkit::tool_inputs(args.image, args.strata, args.both_kernel)?;
    let first = args.seed.unwrap_or(1);
    let count = args
        .seeds
        .unwrap_or(if args.seed.is_some() { 1 } else { 100 });
    let mut cfg = engine::Config::new(&image, strata);
    cfg.shrink_runs = args.shrink_runs;
    cfg.shrink_time = Duration::from_secs(args.shrink_secs);
    cfg.verbose = args.verbose;
    cfg.shrink = !args.keep_going;
    cfg.mount_args = args.mount_arg;
    let mut t = engine::Tester::new(cfg)?;
    println!(
        "difftest: kernel overlayfs vs {}; seeds {first}..{} × {} operations",
        t.side_b_name(),
        first + count - 1,
        args.ops
    );
    let started = Instant::now();
    let mut done = 0u64;
    let mut failed = Vec::new();
    for seed in first..first + count {
        if args
            .max_secs
            .is_some_and(|m| started.elapsed().as_secs() >= m)
        {
            println!("difftest: time limit reached after {done} seeds");
            break;
        }
        if let Some(f) = t.run_seed(seed, args.ops)? {
            if args.keep_going {
                let at =
                    f.at.map_or("final trees".to_string(), |i| format!("op #{i}"));
                println!(
                    "  seed {seed}: MISMATCH at {at}: {}",
                    f.msg.replace('\n', "\n    ")
                );
                failed.push(seed);
                done += 1;
                continue;
            }
            println!("\ndifftest: {f}");
            println!(
                "difftest: {} operations ran clean before this seed ({done} seeds)",
                t.ops_clean
            );
            return Ok(false);
        }
        done += 1;
        if done.is_multiple_of(10) || args.verbose {
            println!(
                "  {done}/{count} seeds clean ({:.1} s)",
                started.elapsed().as_secs_f64()
            );
        }
    }
    println!(
        "difftest: {done} seeds × {} operations: {} operations ran clean in {:.1} s",
        args.ops,
        t.ops_clean,
        started.elapsed().as_secs_f64()
    );
    if !failed.is_empty() {
        println!("difftest: {} failing seeds: {failed:?}", failed.len());
        return Ok(false);
    }
    Ok(true)
}

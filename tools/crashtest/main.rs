//! Crash test: SIGKILL the FUSE daemon of a writable strata mount at random moments of a
//! write workload, remount the same layer, and check that every fsync'ed byte is there
//! (see `strata_testkit::crashtest` for the journal and what is checked).
//!
//! ```text
//! cargo build --release && cargo run --release --example crashtest -- --trials 50
//! cargo run --release --example crashtest -- --seed 17 --trials 1 -v   # one trial again
//! cargo run --release --example crashtest -- --kernel --trials 10      # engine self-test
//! ```
//! Needs root. Exit status: 0 every trial held, 1 a trial failed (its seed is printed),
//! 2 a setup error.

use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use clap::Parser;
use strata_testkit::crashtest as engine;

#[derive(Parser, Debug)]
#[command(about = "kill -9 the strata daemon during writes; every fsync'ed byte must survive")]
struct Args {
    /// Number of trials (each a fresh layer and a seeded workload).
    #[arg(long, default_value_t = 50)]
    trials: usize,
    /// Seed of the first trial (trial i uses seed + i).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// The strata binary (default: target/<profile>/strata next to this example).
    #[arg(long)]
    strata: Option<PathBuf>,
    /// Test the engine on kernel overlayfs (the crash kills the workload instead).
    #[arg(long)]
    kernel: bool,
    /// Sample image directory (default: built by images/build.py into target/tmp/).
    #[arg(long)]
    image: Option<PathBuf>,
    /// Most operations per workload.
    #[arg(long, default_value_t = 3000)]
    max_ops: usize,
    /// Keep a failed trial's directory (journal, layer) under the temp dir.
    #[arg(long)]
    keep: bool,
    #[arg(short, long)]
    verbose: bool,
    /// One more argument for strata's `mount --rw` (repeat it: `--mount-arg=--io
    /// --mount-arg=passthrough`).
    #[arg(long, allow_hyphen_values = true)]
    mount_arg: Vec<String>,
    /// Internal: run as the workload child with these JSON arguments.
    #[arg(long, hide = true)]
    child: Option<String>,
}

fn main() {
    let args = Args::parse();
    if let Some(json) = &args.child {
        engine::child_main(json);
    }
    match run(args) {
        Ok(true) => {}
        Ok(false) => std::process::exit(1),
        Err(e) => {
            eprintln!("crashtest: {e:#}");
            std::process::exit(2);
        }
    }
}

fn run(args: Args) -> anyhow::Result<bool> {
    let (image, strata) = strata_testkit::tool_inputs(args.image, args.strata, args.kernel)?;
    let exe = std::env::current_exe()?;
    let cfg = engine::Config {
        image_dir: image,
        strata,
        trials: args.trials,
        first_seed: args.seed,
        max_ops: args.max_ops,
        spawn: Box::new(move |a: &engine::ChildArgs, stderr: &std::path::Path| {
            engine::spawn_with(Command::new(&exe), a, stderr, None, Some("--child"))
        }),
        keep: args.keep,
        verbose: args.verbose,
        mount_args: args.mount_arg,
    };
    println!(
        "crashtest: {} trials on {} (seeds {}..{})",
        args.trials,
        if args.kernel {
            "kernel overlayfs (--kernel)"
        } else {
            "strata"
        },
        args.seed,
        args.seed + args.trials as u64 - 1
    );
    let started = Instant::now();
    match engine::run(&cfg)? {
        Ok(s) => {
            println!(
                "crashtest: {} trials held ({} killed mid-workload): {} durable records, \
                 {} intents, {} fsync'ed bytes verified, in {:.1} s",
                s.trials,
                s.killed_mid_workload,
                s.durable_records,
                s.intents,
                s.bytes_checked,
                started.elapsed().as_secs_f64()
            );
            Ok(true)
        }
        Err(f) => {
            println!("crashtest: {f}");
            Ok(false)
        }
    }
}

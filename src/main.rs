//! The `strata` binary: logging set-up, the exit code, and the command-line edge (`cli`, the
//! only place that uses `anyhow`). Everything a library user needs is in the `strata` library.

#![forbid(unsafe_code)]

mod cli;

// The library's modules at the binary's root, so the CLI names them as `crate::image`, ….
use strata::{diff, digest, fs, image, net, paths, runtime, snapshotter, sys};

use clap::Parser;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::format::FmtSpan;

fn main() {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("strata=warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_span_events(FmtSpan::CLOSE)
        .with_writer(|| strata::logsink::LossyStderr)
        .init();
    let cli = match cli::Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => std::process::exit(cli::usage_error(e)),
    };
    let code = match cli::run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("strata: {e:#}");
            cli::EXIT_TOOL_ERROR
        }
    };
    std::process::exit(code);
}

//! The `strata` binary: logging set-up and the exit code; everything else is in `strata::cli`.

use clap::Parser;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::format::FmtSpan;

fn main() {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("strata=warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_span_events(FmtSpan::CLOSE)
        .with_writer(std::io::stderr)
        .init();
    let cli = match strata::cli::Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => std::process::exit(strata::cli::usage_error(e)),
    };
    let code = match strata::cli::run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("strata: {e:#}");
            strata::cli::EXIT_TOOL_ERROR
        }
    };
    std::process::exit(code);
}

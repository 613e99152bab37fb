//! The command-line edge: parses Docker-style verbs, calls the library, prints results.
//!
//! Owns argument syntax, output formats and exit codes (125 for strata's own errors, as
//! Docker). Holds no logic that a library user would need: anything worth testing without a
//! terminal belongs in `image`, `layer` or `fs`.

mod containers;
mod diff;
mod images;
mod mount;
mod network;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// Exit code for strata's own errors (Docker's convention).
pub const EXIT_TOOL_ERROR: i32 = 125;

#[derive(Parser, Debug)]
#[command(
    name = "strata",
    version,
    about = "Containers on a userspace layered file system"
)]
pub struct Cli {
    /// State root: images, layers, containers.
    #[arg(
        long,
        global = true,
        env = "STRATA_ROOT",
        default_value = "/var/lib/strata"
    )]
    pub root: PathBuf,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Load images from an OCI layout directory, an OCI archive or a docker-archive.
    Load {
        /// The archive or directory (`-i` as in `docker load -i`).
        #[arg(short, long = "input", value_name = "PATH")]
        input: Option<PathBuf>,
        #[arg(value_name = "PATH", conflicts_with = "input")]
        path: Option<PathBuf>,
        /// Print only the loaded image IDs.
        #[arg(short, long)]
        quiet: bool,
    },
    /// Create a one-layer image from a rootfs tarball (plain, gzip or zstd), like `docker import`.
    Import {
        tarball: PathBuf,
        /// `name[:tag]` for the new image.
        reference: Option<String>,
    },
    /// List images.
    #[command(alias = "image-ls")]
    Images {
        #[arg(long)]
        json: bool,
        /// Show only image IDs.
        #[arg(short, long)]
        quiet: bool,
    },
    /// Add a name to an image.
    Tag { source: String, target: String },
    /// Remove images (untag; delete when no tag is left; free unused layers).
    Rmi {
        #[arg(required = true)]
        images: Vec<String>,
        /// Remove an image even when it has several tags.
        #[arg(short, long)]
        force: bool,
    },
    /// Show containers (or images) as JSON.
    Inspect {
        #[arg(required = true)]
        images: Vec<String>,
    },
    /// Mount an image's merged root file system read-only.
    Mount(mount::MountArgs),
    /// Unmount a strata mount.
    Umount { mountpoint: PathBuf },
    /// `diff`, `commit`, `export`, `save`, `image …`.
    #[command(flatten)]
    Diff(Box<diff::DiffCommand>),
    /// (internal) Serve a detached mount; started by `mount -d`.
    #[command(name = "__serve-mount", hide = true)]
    ServeMount(mount::MountArgs),
    #[command(flatten)]
    Containers(Box<containers::ContainerCommand>),
    /// Manage networks.
    #[command(subcommand)]
    Network(network::NetworkCommand),
    /// List a container's published ports.
    Port {
        container: String,
        /// Only this container port (`80` or `80/udp`).
        port: Option<String>,
    },
}

impl Command {
    /// The long-running internal processes (mount daemon, container shim).
    fn is_daemon(&self) -> bool {
        match self {
            Command::ServeMount(_) => true,
            Command::Containers(c) => matches!(**c, containers::ContainerCommand::Shim(_)),
            _ => false,
        }
    }
}

/// Runs the parsed command; `Err` becomes exit code 125 with the message on stderr.
pub fn run(cli: Cli) -> anyhow::Result<i32> {
    if !cli.command.is_daemon() {
        // `strata images | head` ends quietly, as Unix tools do, instead of panicking on EPIPE.
        // Not for the daemons: a shim or mount daemon must never die of a closed pipe.
        crate::sys::default_sigpipe();
    }
    let root = cli.root;
    match cli.command {
        Command::Load { input, path, quiet } => {
            let Some(path) = input.or(path) else {
                anyhow::bail!("load needs an archive or directory: strata load PATH (or -i PATH)");
            };
            images::load(&root, &path, quiet)
        }
        Command::Import { tarball, reference } => {
            images::import(&root, &tarball, reference.as_deref())
        }
        Command::Images { json, quiet } => images::list(&root, json, quiet),
        Command::Tag { source, target } => images::tag(&root, &source, &target),
        Command::Rmi { images, force } => images::rmi(&root, &images, force),
        Command::Inspect { images } => containers::inspect(&root, &images),
        Command::Diff(cmd) => diff::dispatch(&root, *cmd),
        Command::Mount(args) => mount::mount(&root, args),
        Command::ServeMount(args) => mount::serve(&root, args),
        Command::Umount { mountpoint } => mount::umount(&root, &mountpoint),
        Command::Containers(cmd) => containers::dispatch(&root, *cmd),
        Command::Network(cmd) => network::dispatch(&root, cmd),
        Command::Port { container, port } => network::port(&root, &container, port.as_deref()),
    }
}

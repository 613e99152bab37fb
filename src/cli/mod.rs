//! The command-line edge: parses Docker-style verbs, calls the library, prints results.
//!
//! Part of the `strata` binary, not of the library (the library's modules are brought to the
//! binary's root by `main.rs`, so `crate::image` here is `strata::image`). Owns argument
//! syntax, output formats, exit codes (125 for strata's own errors, as Docker) and `anyhow`.
//! Holds no logic that a library user would need: anything worth testing without a terminal
//! belongs in the library (`image`, `fs`, `runtime`, `net`, `diff`, …).

mod containers;
mod diff;
mod images;
mod info;
mod mount;
mod network;
mod snapshotter;

use std::path::PathBuf;

use anyhow::Context;
use clap::{CommandFactory, Parser, Subcommand};

/// Exit code for strata's own errors (Docker's convention).
pub const EXIT_TOOL_ERROR: i32 = 125;

#[derive(Parser, Debug)]
#[command(
    name = "strata",
    version,
    about = "Containers on a userspace layered file system"
)]
pub struct Cli {
    /// State root: images, layers, containers [default: /var/lib/strata as root,
    /// $XDG_DATA_HOME/strata (~/.local/share/strata) as any other user].
    #[arg(long, global = true, env = "STRATA_ROOT", value_name = "DIR")]
    pub root: Option<PathBuf>,
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
        /// The archive or directory.
        #[arg(value_name = "PATH", conflicts_with = "input")]
        path: Option<PathBuf>,
        /// Print only the loaded image IDs.
        #[arg(short, long)]
        quiet: bool,
    },
    /// Create a one-layer image from a rootfs tarball (plain, gzip or zstd), like `docker import`.
    Import {
        /// The rootfs tarball.
        tarball: PathBuf,
        /// `name[:tag]` for the new image.
        reference: Option<String>,
    },
    /// List images.
    #[command(alias = "image-ls")]
    Images {
        /// JSON output.
        #[arg(long)]
        json: bool,
        /// Show only image IDs.
        #[arg(short, long)]
        quiet: bool,
    },
    /// Add a name to an image.
    Tag {
        /// The image: name, name:tag or ID.
        source: String,
        /// The new name[:tag].
        target: String,
    },
    /// Remove images (untag; delete when no tag is left; free the layers nothing uses).
    ///
    /// An image that containers, mounts or writable layers use is not deleted (the message
    /// names them) unless forced.
    Rmi {
        /// Images: name, name:tag or ID.
        #[arg(required = true, value_name = "IMAGE")]
        images: Vec<String>,
        /// Remove an image even when it has several tags, or is in use (by containers,
        /// mounts, writable layers): it is untagged now, its layers are freed when the last
        /// user is gone.
        #[arg(short, long)]
        force: bool,
    },
    /// Show containers (or images) as JSON.
    Inspect {
        /// Containers (name or ID) or images (name, name:tag or ID).
        #[arg(required = true, value_name = "NAME")]
        images: Vec<String>,
    },
    /// Mount an image's merged root file system: read-only, or writable with --rw --layer DIR.
    Mount(mount::MountArgs),
    /// Unmount a strata mount.
    Umount {
        /// The mount point.
        mountpoint: PathBuf,
    },
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
        /// Container name or ID.
        container: String,
        /// Only this container port (`80` or `80/udp`).
        port: Option<String>,
    },
    /// Serve containerd's snapshots API on a unix socket (a containerd proxy plugin), so
    /// containerd and Kubernetes run containers on strata's file systems.
    Snapshotter(snapshotter::SnapshotterArgs),
    /// Show where strata keeps its state and what this user can do: root or rootless mode,
    /// the state root, /dev/fuse, fusermount3, allow_other, passthrough.
    Info {
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// Print a shell completion script.
    ///
    /// `tools/demo` installs them; by hand, e.g.:
    /// `strata completion bash > /usr/local/share/bash-completion/completions/strata`.
    Completion {
        /// bash, zsh, fish, elvish or powershell.
        shell: clap_complete::Shell,
    },
    /// (internal) Write the man pages (strata.1, strata-VERB.1, …) into DIR; `tools/demo`
    /// installs them.
    #[command(name = "__man", hide = true)]
    Man { dir: PathBuf },
}

/// Prints a command-line error in the format of every other error (`strata: …` on stderr)
/// and returns the exit code: 125, as Docker. `--help` and `--version` are no errors (stdout,
/// 0).
pub fn usage_error(e: clap::Error) -> i32 {
    use clap::error::ErrorKind;
    match e.kind() {
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => {
            let _ = e.print();
            0
        }
        ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            // `strata` or `strata network` alone: say so, then the help of what was typed.
            eprint!("strata: a subcommand is needed\n\n{}", e.render());
            EXIT_TOOL_ERROR
        }
        ErrorKind::MissingSubcommand => {
            // The same, when `--root` or STRATA_ROOT counts as an argument. clap's own text
            // lists the hidden internal commands too: name the visible ones only.
            use clap::error::{ContextKind, ContextValue};
            let typed = match e.get(ContextKind::InvalidSubcommand) {
                Some(ContextValue::String(s)) => s.clone(),
                _ => "strata".to_string(),
            };
            let mut cmd = Cli::command();
            for name in typed.split_whitespace().skip(1) {
                match cmd.find_subcommand(name) {
                    Some(sub) => cmd = sub.clone(),
                    None => break,
                }
            }
            let visible: Vec<&str> = cmd
                .get_subcommands()
                .filter(|c| !c.is_hide_set())
                .map(|c| c.get_name())
                .collect();
            eprintln!(
                "strata: '{typed}' needs a subcommand: {}\n\nFor more information, try '{typed} --help'.",
                visible.join(", ")
            );
            EXIT_TOOL_ERROR
        }
        _ => {
            let text = e.render().to_string();
            eprint!("strata: {}", text.strip_prefix("error: ").unwrap_or(&text));
            EXIT_TOOL_ERROR
        }
    }
}

impl Command {
    /// The long-running internal processes (mount daemon, container shim).
    fn is_daemon(&self) -> bool {
        match self {
            Command::ServeMount(_) | Command::Snapshotter(_) => true,
            Command::Containers(c) => matches!(**c, containers::ContainerCommand::Shim(_)),
            _ => false,
        }
    }

    /// The commands that touch the state root at all (not `info`, which reports on it, nor
    /// the completion and man page writers).
    fn uses_state_root(&self) -> bool {
        !matches!(
            self,
            Command::Info { .. } | Command::Completion { .. } | Command::Man { .. }
        )
    }

    /// The commands that only read the state root (listings, inspection, output of images and
    /// containers to files elsewhere).
    fn reads_only(&self) -> bool {
        use containers::{ContainerCommand as C, VolumeCommand as V};
        use diff::DiffCommand as D;
        match self {
            Command::Images { .. } | Command::Inspect { .. } | Command::Port { .. } => true,
            Command::Diff(d) => matches!(
                **d,
                D::Diff { .. } | D::Export { .. } | D::Save { .. } | D::Image(_)
            ),
            Command::Containers(c) => matches!(
                **c,
                C::Ps(_)
                    | C::Logs(_)
                    | C::Wait { .. }
                    | C::Volume(V::Ls { .. } | V::Inspect { .. })
            ),
            Command::Network(n) => matches!(
                n,
                network::NetworkCommand::Ls { .. } | network::NetworkCommand::Inspect { .. }
            ),
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
    let given = cli.root.is_some();
    let root = match cli.root {
        Some(root) => root,
        None => crate::paths::default_state_root()?,
    };
    // Not the user's own state root (another user's, or one it cannot create): one sentence
    // naming the fix, before anything is read or written. (A command that only reads needs
    // no state root it could create: see below.)
    let creates = !cli.command.reads_only();
    if cli.command.uses_state_root() && (creates || root.exists()) {
        crate::paths::check_state_root(&root)?;
    }
    // A command that only reads, on a state root that does not exist yet, answers as an empty
    // store does, without creating one where the user pointed: it reads an empty scratch root
    // (removed on return).
    let _scratch;
    let root = if cli.command.reads_only() && !root.exists() {
        _scratch = tempfile::Builder::new()
            .prefix("strata-empty-")
            .tempdir()
            .context("creating an empty scratch state root")?;
        _scratch.path().to_path_buf()
    } else {
        root
    };
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
        Command::Snapshotter(args) => snapshotter::run(&root, args),
        Command::Info { json } => info::show(&root, given, json),
        Command::Completion { shell } => {
            let mut cmd = Cli::command();
            clap_complete::generate(shell, &mut cmd, "strata", &mut std::io::stdout());
            Ok(0)
        }
        Command::Man { dir } => {
            std::fs::create_dir_all(&dir)?;
            clap_mangen::generate_to(Cli::command(), &dir)?;
            Ok(0)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every visible command says what it does and every visible argument what it is; the
    /// texts that once contradicted the behaviour stay right.
    #[test]
    fn every_command_and_argument_has_help() {
        fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
            for a in cmd.get_arguments() {
                let builtin = matches!(a.get_id().as_str(), "help" | "version");
                if !a.is_hide_set() && !builtin && a.get_help().is_none() {
                    missing.push(format!("{path} {}", a.get_id()));
                }
            }
            for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
                let p = format!("{path} {}", sub.get_name());
                if sub.get_about().is_none() {
                    missing.push(p.clone());
                }
                walk(sub, &p, missing);
            }
        }
        let mut cmd = Cli::command();
        cmd.build();
        let mut missing = Vec::new();
        walk(&cmd, "strata", &mut missing);
        assert!(missing.is_empty(), "no help text: {missing:#?}");

        let about = |name: &str| {
            cmd.find_subcommand(name)
                .and_then(|c| c.get_about())
                .map(|a| a.to_string())
                .unwrap_or_default()
        };
        assert!(about("mount").contains("--rw"), "{}", about("mount"));
        let rmi_force = cmd
            .find_subcommand("rmi")
            .and_then(|c| c.get_arguments().find(|a| a.get_id() == "force"))
            .and_then(|a| a.get_help())
            .map(|h| h.to_string())
            .unwrap_or_default();
        assert!(rmi_force.contains("in use"), "{rmi_force}");
    }
}

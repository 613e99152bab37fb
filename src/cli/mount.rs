//! `strata mount` / `umount`: a read-only merged rootfs served by a FUSE daemon.
//!
//! `mount -d` re-executes strata as a detached daemon (`__serve-mount`) and returns once the
//! mount is live; the daemon records itself in `<root>/mounts/` so `umount` can stop it, and
//! unmounts cleanly on SIGINT/SIGTERM/SIGHUP or when someone unmounts it from outside.
//! Without root the mount goes through `fusermount3` (fuser does that when `mount(2)` is
//! refused), private to the user unless `/etc/fuse.conf` allows `allow_other`, and reads go
//! through strata (FUSE passthrough needs CAP_SYS_ADMIN).

use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command as Process, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;
use serde::{Deserialize, Serialize};
use tracing::{info, info_span, warn};

use crate::digest::Digest;
use crate::fs;
use crate::fs::access::FuseAccess;
use crate::image::{ImageRecord, ImageStore, User};
use crate::sys;

#[derive(Args, Debug, Clone)]
pub struct MountArgs {
    /// Image name, name:tag or ID.
    pub image: String,
    /// An existing, empty directory outside the state root.
    pub mountpoint: PathBuf,
    /// Run in the background; return once the mount is live.
    #[arg(short, long)]
    pub detach: bool,
    /// Writable: changes land in the writable layer directory given with --layer (required).
    #[arg(long)]
    pub rw: bool,
    /// With --rw: the writable layer directory (created when missing; the next `mount --rw`
    /// with it shows the changes again).
    #[arg(long, value_name = "DIR", requires = "rw")]
    pub layer: Option<PathBuf>,
    /// How file data is served. Read-only mounts: `passthrough` (the default: the kernel
    /// reads the layer files itself), `cached` (reads through strata, kept in the page cache)
    /// or `no-open` (no OPEN round trips at all; best for many small files read again and
    /// again). Writable mounts: `no-open` (the default: no round trip per open, data through
    /// strata and the page cache) or `passthrough` (the kernel reads and writes big files
    /// itself, at kernel speed, for one OPEN and one RELEASE round trip per open; as root).
    #[arg(long, value_enum)]
    pub io: Option<Io>,
    /// Let other users (root too) into the mount. Root's mounts always are; without root
    /// this needs `user_allow_other` in /etc/fuse.conf (and is then the default).
    #[arg(long)]
    pub allow_other: bool,
    /// Take requests through FUSE over io_uring when the kernel offers it (`auto`, see
    /// `strata info`), or only through /dev/fuse (`off`).
    #[arg(long, value_enum, default_value_t = IoUring::Auto, value_name = "WHEN")]
    pub io_uring: IoUring,
    /// FUSE worker threads. Two, as for a container's rootfs: each idle thread is one more
    /// the kernel rotates requests through (untar of 10k files on a writable mount, 2 cores:
    /// 1.45 s with 2 threads, 1.75 s with 4; one would serialise a slow fsync with the rest).
    #[arg(long, default_value_t = 2, hide = true)]
    pub threads: usize,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum IoUring {
    Auto,
    Off,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Io {
    Passthrough,
    Cached,
    NoOpen,
}

impl Io {
    /// The open mode of a mount by this process: passthrough only where the kernel grants it.
    /// Without CAP_SYS_ADMIN in the initial user namespace reads go through strata anyway,
    /// so the default is no-open there: a re-read costs no OPEN round trip.
    fn mode(self, access: &FuseAccess) -> fs::OpenMode {
        match self {
            Io::Passthrough if !access.passthrough => fs::OpenMode::NoOpen,
            Io::Passthrough => fs::OpenMode::Passthrough,
            Io::Cached => fs::OpenMode::Cached,
            Io::NoOpen => fs::OpenMode::NoOpen,
        }
    }
    fn flag(self) -> &'static str {
        match self {
            Io::Passthrough => "passthrough",
            Io::Cached => "cached",
            Io::NoOpen => "no-open",
        }
    }
}

/// What `<root>/mounts/<key>.json` says about a live mount.
#[derive(Serialize, Deserialize, Debug)]
struct MountRecord {
    pid: i32,
    mountpoint: PathBuf,
    image: String,
}

/// The FUSE `fsname` of strata mounts, as `/proc/self/mountinfo` shows it.
const FSNAME: &str = "strata";
const READY: &str = "ready";

fn record_path(root: &Path, mountpoint: &Path) -> PathBuf {
    let key = Digest::of(mountpoint.as_os_str().as_encoded_bytes());
    root.join("mounts")
        .join(format!("{}.json", &key.hex()[..16]))
}

/// The mount point as `/proc/self/mountinfo` names it. A mount whose daemon died answers
/// stat with ENOTCONN: then the plain absolute path.
fn mount_path(mountpoint: &Path) -> PathBuf {
    std::fs::canonicalize(mountpoint)
        .unwrap_or_else(|_| std::path::absolute(mountpoint).unwrap_or(mountpoint.to_path_buf()))
}

fn read_record(root: &Path, path: &Path) -> Option<MountRecord> {
    std::fs::read(record_path(root, path))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
}

/// Refuses a mount point that is a strata mount already, saying which process serves it.
fn check_not_mounted(root: &Path, mountpoint: &Path) -> anyhow::Result<()> {
    let path = mount_path(mountpoint);
    if !sys::mount_at(&path)
        .is_some_and(|(fstype, source)| fstype.starts_with("fuse") && source == FSNAME)
    {
        return Ok(());
    }
    match read_record(root, &path).filter(|r| sys::process_alive(r.pid)) {
        Some(r) => bail!(
            "{} is already a strata mount point (image {}, served by PID {}); `strata umount {}` first",
            mountpoint.display(),
            r.image,
            r.pid,
            mountpoint.display()
        ),
        None => bail!(
            "{} is already a strata mount point (served by no live process of this state root); `strata umount {}` first",
            mountpoint.display(),
            mountpoint.display()
        ),
    }
}

pub fn mount(root: &Path, args: MountArgs) -> anyhow::Result<i32> {
    // What this user may do with FUSE: said before anything else, in one sentence.
    let access = FuseAccess::probe();
    access.check_mountable()?;
    access.acl(args.allow_other)?;
    check_not_mounted(root, &args.mountpoint)?;
    let store = ImageStore::open(root)?;
    let image = store.resolve(&args.image)?;
    let mountpoint = fs::check_mountpoint(&args.mountpoint, root)?;
    let layer = layer_dir(&args, &mountpoint)?;
    if !args.detach {
        eprintln!(
            "mounting {} on {} (Ctrl-C or `strata umount` to unmount)",
            args.image,
            mountpoint.display()
        );
        return serve_image(
            root,
            &store,
            &image,
            &args,
            &mountpoint,
            layer.as_deref(),
            false,
        );
    }
    std::fs::create_dir_all(root.join("mounts"))?;
    let log_path = record_path(root, &mountpoint).with_extension("log");
    let log = std::fs::File::create(&log_path)
        .with_context(|| format!("creating {}", log_path.display()))?;
    let exe = std::env::current_exe().context("locating the strata executable")?;
    let mut child = Process::new(exe)
        .arg("--root")
        .arg(root)
        .arg("__serve-mount")
        .arg(&args.image)
        .arg(&mountpoint)
        .arg("--threads")
        .arg(args.threads.to_string())
        .args(args.io.iter().flat_map(|io| ["--io", io.flag()]))
        .args(args.allow_other.then_some("--allow-other"))
        .args((args.io_uring == IoUring::Off).then_some("--io-uring=off"))
        .args(layer.iter().flat_map(|l| {
            [
                std::ffi::OsStr::new("--rw"),
                std::ffi::OsStr::new("--layer"),
                l.as_os_str(),
            ]
        }))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log)
        .process_group(0)
        .spawn()
        .context("starting the mount daemon")?;
    let mut line = String::new();
    if let Some(out) = child.stdout.take() {
        BufReader::new(out).read_line(&mut line)?;
    }
    if line.trim() == READY {
        println!("{}", mountpoint.display());
        return Ok(0);
    }
    let _ = child.wait();
    let why = std::fs::read_to_string(&log_path).unwrap_or_default();
    let _ = std::fs::remove_file(&log_path);
    // The daemon printed its own error (with its "strata: " prefix): pass it on as ours.
    let why = why.trim();
    bail!("{}", why.strip_prefix("strata: ").unwrap_or(why))
}

/// The writable layer directory of a `--rw` mount, made absolute (the daemon may run
/// elsewhere) and checked not to be inside the mount it serves.
fn layer_dir(args: &MountArgs, mountpoint: &Path) -> anyhow::Result<Option<PathBuf>> {
    if !args.rw {
        return Ok(None);
    }
    let Some(layer) = &args.layer else {
        bail!("--rw needs --layer DIR: the directory that keeps the changes");
    };
    if args.io == Some(Io::Cached) {
        bail!(
            "--io cached is for read-only mounts; a writable mount takes --io no-open (the default) or --io passthrough"
        );
    }
    let abs = std::path::absolute(layer)?;
    let probe = std::fs::canonicalize(&abs).unwrap_or(abs.clone());
    if probe.starts_with(mountpoint) {
        return Err(fs::MountError::LayerInsideMount(abs).into());
    }
    Ok(Some(abs))
}

/// The detached daemon: mounts, says "ready" on stdout, serves until unmounted.
pub fn serve(root: &Path, args: MountArgs) -> anyhow::Result<i32> {
    strata::rwlayer::tune_allocator();
    let store = ImageStore::open(root)?;
    let image = store.resolve(&args.image)?;
    let mountpoint = fs::check_mountpoint(&args.mountpoint, root)?;
    let layer = layer_dir(&args, &mountpoint)?;
    serve_image(
        root,
        &store,
        &image,
        &args,
        &mountpoint,
        layer.as_deref(),
        true,
    )
}

/// Serves the mount in this process. The mount is a user of the image's layers (so `rmi`
/// cannot delete them under it) from before it opens them until it ends; a `--rw` layer
/// directory stays one after that, as long as it exists.
fn serve_image(
    root: &Path,
    store: &ImageStore,
    image: &ImageRecord,
    args: &MountArgs,
    mountpoint: &Path,
    layer: Option<&Path>,
    say_ready: bool,
) -> anyhow::Result<i32> {
    let span = info_span!("mount", image = args.image, mountpoint = %mountpoint.display(), rw = layer.is_some());
    let _g = span.enter();
    // Catch the termination signals before the mount exists: one that comes as soon as the
    // mount shows up must unmount it, not kill this process and leave a dead mount behind.
    let signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGHUP,
    ])?;
    let user = User::this_mount(mountpoint);
    store.hold(image, user.clone())?;
    let result = serve_held(
        root, store, image, args, mountpoint, layer, say_ready, signals,
    );
    // The mount is gone: so is this user; free what an `rmi -f` left to free.
    let _ = store.release(&user);
    if let Err(e) = store.gc() {
        warn!(error = %e, "collecting unused layers failed");
    }
    result
}

#[allow(clippy::too_many_arguments)]
fn serve_held(
    root: &Path,
    store: &ImageStore,
    image: &ImageRecord,
    args: &MountArgs,
    mountpoint: &Path,
    layer: Option<&Path>,
    say_ready: bool,
    signals: signal_hook::iterator::Signals,
) -> anyhow::Result<i32> {
    let started = Instant::now();
    let layers = &image.layers;
    let access = FuseAccess::probe();
    access.check_mountable()?;
    let acl = access.acl(args.allow_other)?;
    match layer {
        Some(dir) => {
            // Passthrough needs CAP_SYS_ADMIN in the initial user namespace: without it every
            // open would be refused one by one, so it is not asked for.
            let passthrough = args.io == Some(Io::Passthrough) && access.passthrough;
            if args.io == Some(Io::Passthrough) && !access.passthrough {
                warn!(
                    "--io passthrough needs root (CAP_SYS_ADMIN); files are read and written through strata"
                );
            }
            let filesystem =
                fs::read_write(store.layers(), layers, dir)?.with_passthrough(passthrough);
            // The layer directory records its lower chain now: it needs these layers for as
            // long as it exists.
            store.hold(
                image,
                User::WritableLayer {
                    dir: dir.to_path_buf(),
                    chain: fs::chain_id(layers).as_str().to_string(),
                },
            )?;
            let mut config = fs::read_write_config(FSNAME, args.threads);
            config.acl = acl;
            config.io_uring = args.io_uring == IoUring::Auto;
            let session = fs::mount(filesystem, mountpoint, &config)?;
            info!(elapsed_ms = started.elapsed().as_millis() as u64, "mounted");
            serve_session(root, session, &args.image, mountpoint, say_ready, signals)
        }
        None => {
            let filesystem = fs::read_only(store.layers(), layers)?
                .with_mode(args.io.unwrap_or(Io::Passthrough).mode(&access));
            let mut config = fs::read_only_config(FSNAME, args.threads);
            config.acl = acl;
            config.io_uring = args.io_uring == IoUring::Auto;
            let session = fs::mount(filesystem, mountpoint, &config)?;
            info!(elapsed_ms = started.elapsed().as_millis() as u64, "mounted");
            serve_session(root, session, &args.image, mountpoint, say_ready, signals)
        }
    }
}

/// Records the mount, serves it until it is unmounted (by one of `signals` or from outside),
/// cleans up.
fn serve_session<F: fuser::Filesystem>(
    root: &Path,
    mut session: fuser::Session<F>,
    image: &str,
    mountpoint: &Path,
    say_ready: bool,
    mut signals: signal_hook::iterator::Signals,
) -> anyhow::Result<i32> {
    let record = record_path(root, mountpoint);
    std::fs::create_dir_all(root.join("mounts"))?;
    let body = serde_json::to_vec(&MountRecord {
        pid: std::process::id() as i32,
        mountpoint: mountpoint.to_path_buf(),
        image: image.to_string(),
    })?;
    std::fs::write(&record, body)?;

    // Unmount on the usual termination signals; the session loop then ends by itself.
    let mut unmounter = session.unmount_callable();
    let mp = mountpoint.to_path_buf();
    std::thread::spawn(move || {
        if let Some(sig) = signals.forever().next() {
            info!(sig, "signal: unmounting");
            if let Err(e) = unmounter.unmount() {
                // Busy (a shell sits in it): detach now, the kernel finishes when it is free.
                warn!(error = %e, "unmount failed; detaching lazily");
                let _ = fs::access::unmount(&mp);
            }
        }
    });

    if say_ready {
        let mut out = std::io::stdout().lock();
        writeln!(out, "{READY}")?;
        out.flush()?;
    }
    let result = session.run();
    let _ = std::fs::remove_file(&record);
    let _ = std::fs::remove_file(record.with_extension("log"));
    result.context("serving the mount")?;
    info!("unmounted");
    Ok(0)
}

pub fn umount(root: &Path, mountpoint: &Path) -> anyhow::Result<i32> {
    let path = mount_path(mountpoint);
    let record_file = record_path(root, &path);
    let record = read_record(root, &path);
    let mounted = || {
        sys::mount_at(&path)
            .is_some_and(|(fstype, source)| fstype.starts_with("fuse") && source == FSNAME)
    };
    if let Some(rec) = &record
        && sys::process_alive(rec.pid)
    {
        sys::terminate(rec.pid)?;
        // Bounded wait: 100 × 100 ms.
        for _ in 0..100 {
            if !sys::process_alive(rec.pid) {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        if sys::process_alive(rec.pid) {
            bail!(
                "the mount daemon (pid {}) did not stop within 10 s",
                rec.pid
            );
        }
    }
    if mounted() {
        // No live daemon (killed, or a mount of another strata): drop the dead mount.
        fs::access::unmount(&path)?;
    } else if record.is_none() {
        bail!("{} is not a strata mount", mountpoint.display());
    }
    let _ = std::fs::remove_file(&record_file);
    let _ = std::fs::remove_file(record_file.with_extension("log"));
    Ok(0)
}

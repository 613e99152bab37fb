//! The other default network of containers started without root: `slirp4netns` (podman 4's
//! default), used when pasta is not installed or asked for with `--network slirp4netns`. The
//! container gets `10.0.2.100/24` behind a user-mode NAT; `-p HOST:CONTAINER` becomes a
//! host forward added through slirp4netns's API socket.
//!
//! Owns one slirp4netns process per running container, a child of the shim: it ends when the
//! shim's end of its exit pipe closes (the shim exits, however it dies), or by its recorded
//! PID when the container is removed. Must never forward anything but what was published,
//! nor let the container reach the host's loopback (`--disable-host-loopback`).

use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use tracing::{info, info_span};

use super::helper::Helper;
use super::ports::{self, Mapping};
use super::{Attached, DEFAULT_NETWORK, Member, NET_RECORD, NetError};

/// Where the container's slirp4netns is recorded (its PID and start time).
const SLIRP_RECORD: &str = "slirp4netns.json";
/// The `bridge` field of an [`Attached`] record of a slirp4netns network.
pub const SLIRP: &str = "slirp4netns";
/// How long slirp4netns may take to configure the namespace.
const READY_WITHIN: Duration = Duration::from_secs(20);

/// The slirp4netns binary, where Debian's package puts it.
fn binary() -> Option<PathBuf> {
    crate::paths::system_program("slirp4netns")
}

/// Whether slirp4netns is installed.
pub fn available() -> bool {
    binary().is_some()
}

fn cmd_err(msg: String) -> NetError {
    NetError::Cmd {
        cmd: "slirp4netns".into(),
        msg,
    }
}

/// slirp4netns on its way: started, not yet ready.
pub struct Starting {
    child: std::process::Child,
    ready: OwnedFd,
    /// The write end of slirp4netns's exit pipe: kept open for the shim's whole life.
    exit: OwnedFd,
    api: PathBuf,
    log: PathBuf,
    dir: PathBuf,
    maps: Vec<Mapping>,
    done: bool,
}

impl Drop for Starting {
    /// Abandoned before it was recorded (the start failed elsewhere): end it.
    fn drop(&mut self) {
        if !self.done {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Starts slirp4netns for the container `m` whose init (in its own user and network
/// namespaces) is `pid`; [`Starting::finish`] waits until it is ready and adds the ports.
pub fn start(m: &Member<'_>, pid: i32) -> Result<Starting, NetError> {
    let _s = info_span!("slirp_start", pid).entered();
    let Some(bin) = binary() else {
        return Err(NetError::Rootless(
            "--network slirp4netns: slirp4netns is not installed (Debian package slirp4netns)"
                .into(),
        ));
    };
    super::pasta::tun_usable("slirp4netns")?;
    let maps = ports::resolve(&m.net.ports, &[])?;
    // A unix socket path must be short (108 bytes): the runtime directory, not the state root.
    let run = super::run_dir();
    std::fs::create_dir_all(&run).map_err(super::io_err(&run))?;
    let api = run.join(format!("slirp-{}.sock", super::short(m.id)));
    let _ = std::fs::remove_file(&api);
    let log = m.dir.join("slirp4netns.log");
    let err = std::fs::File::create(&log).map_err(super::io_err(&log))?;
    let pipe = |what: &str| {
        rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)
            .map_err(|e| cmd_err(format!("{what} pipe: {e}")))
    };
    let (ready_r, ready_w) = pipe("ready")?;
    let (exit_r, exit_w) = pipe("exit")?;
    let inherit = |fd: &OwnedFd| {
        crate::sys::container::dup_inheritable(fd.as_fd())
            .map_err(|e| cmd_err(format!("passing a pipe: {e}")))
    };
    let (ready_child, exit_child) = (inherit(&ready_w)?, inherit(&exit_r)?);
    drop((ready_w, exit_r));
    let mut cmd = Command::new(&bin);
    if !maps.is_empty() {
        cmd.arg(format!("--api-socket={}", api.display()));
    }
    let child = cmd
        .arg("--configure")
        .arg("--mtu=65520")
        .arg("--disable-host-loopback")
        .arg(format!("--ready-fd={}", ready_child.as_raw_fd()))
        .arg(format!("--exit-fd={}", exit_child.as_raw_fd()))
        .arg(format!("--userns-path=/proc/{pid}/ns/user"))
        .arg("--netns-type=path")
        .arg(format!("/proc/{pid}/ns/net"))
        .arg("tap0")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(err)
        .spawn()
        .map_err(|e| cmd_err(e.to_string()))?;
    drop((ready_child, exit_child));
    Ok(Starting {
        child,
        ready: ready_r,
        exit: exit_w,
        api,
        log,
        dir: m.dir.to_path_buf(),
        maps,
        done: false,
    })
}

impl Starting {
    /// Waits for slirp4netns to say the namespace is configured, adds the published ports,
    /// and records it; the exit pipe's write end is returned (keep it open while the
    /// container runs: closing it ends slirp4netns).
    pub fn finish(mut self) -> Result<(Attached, OwnedFd), NetError> {
        let _s = info_span!("slirp_ready").entered();
        let ready = self
            .ready
            .try_clone()
            .map_err(|e| cmd_err(format!("ready pipe: {e}")))?;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut b = [0u8; 1];
            let _ = tx.send(std::fs::File::from(ready).read(&mut b).map(|n| n == 1));
        });
        match rx.recv_timeout(READY_WITHIN) {
            Ok(Ok(true)) => {}
            _ => {
                let _ = self.child.kill();
                let _ = self.child.wait();
                let text = std::fs::read_to_string(&self.log).unwrap_or_default();
                // Its own progress lines are not the reason.
                let why: Vec<&str> = text
                    .lines()
                    .filter(|l| {
                        !l.contains("tapfd") && !l.starts_with("do_slirp") && *l != "parent failed"
                    })
                    .collect();
                return Err(cmd_err(format!("did not get ready: {}", why.join("; "))));
            }
        }
        for m in &self.maps {
            add_forward(&self.api, m)?;
        }
        let attached = Attached {
            network: DEFAULT_NETWORK.into(),
            bridge: SLIRP.into(),
            ip: "10.0.2.100".into(),
            prefix: 24,
            gateway: "10.0.2.2".into(),
            veth: String::new(),
            ports: std::mem::take(&mut self.maps),
        };
        let pid = self.child.id() as i32;
        let rp = self.dir.join(SLIRP_RECORD);
        Helper::of(pid).save(&rp).map_err(super::io_err(&rp))?;
        let rec = self.dir.join(NET_RECORD);
        std::fs::write(
            &rec,
            serde_json::to_vec_pretty(&attached).expect("serializable"),
        )
        .map_err(super::io_err(&rec))?;
        self.done = true;
        let _ = std::fs::remove_file(&self.api);
        info!(
            slirp4netns = self.child.id(),
            ports = attached.ports.len(),
            "attached"
        );
        let exit = self
            .exit
            .try_clone()
            .map_err(|e| cmd_err(format!("exit pipe: {e}")))?;
        Ok((attached, exit))
    }
}

/// Ends the container's slirp4netns now (it would end with the shim anyway), so that its
/// ports are free when `rm` returns.
pub fn detach(dir: &Path) {
    Helper::end_recorded(&dir.join(SLIRP_RECORD));
}

/// `add_hostfwd` through slirp4netns's API socket.
fn add_forward(api: &Path, m: &Mapping) -> Result<(), NetError> {
    let req = serde_json::json!({
        "execute": "add_hostfwd",
        "arguments": {
            "proto": m.proto,
            "host_addr": if m.host_ip.is_empty() { "0.0.0.0" } else { m.host_ip.as_str() },
            "host_port": m.host_port,
            "guest_port": m.container_port,
        }
    });
    let what = format!(
        "publishing {}:{}/{}",
        m.host_port, m.container_port, m.proto
    );
    let mut s = UnixStream::connect(api).map_err(|e| cmd_err(format!("{what}: {e}")))?;
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    s.write_all(req.to_string().as_bytes())
        .and_then(|()| s.shutdown(std::net::Shutdown::Write))
        .map_err(|e| cmd_err(format!("{what}: {e}")))?;
    let mut line = String::new();
    BufReader::new(&s)
        .read_line(&mut line)
        .map_err(|e| cmd_err(format!("{what}: {e}")))?;
    let answer: serde_json::Value =
        serde_json::from_str(line.trim()).map_err(|e| cmd_err(format!("{what}: {e}: {line}")))?;
    if let Some(err) = answer.get("error") {
        return Err(NetError::PortInUse(format!("{what}: {err}")));
    }
    Ok(())
}

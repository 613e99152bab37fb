//! The default network of containers started without root: `pasta` (Debian's `passt`,
//! podman 5's default) connects the container's network namespace to the host's through
//! sockets the user owns, so nothing on the host needs privileges. The container gets a copy
//! of the host's address and routes; `-p HOST:CONTAINER` becomes pasta's own forwarding
//! (`-t`/`-u`), which answers on the host's addresses and on localhost.
//!
//! Owns one pasta process per running container: started when the container's namespaces
//! exist, its PID recorded in the container's directory, ended by that PID (after checking
//! it is still that pasta) when the container goes. Must never forward anything the user did
//! not publish: no automatic forwarding either way, and no mapping of the gateway to the
//! host's loopback (a container must not reach the host's 127.0.0.1).

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tracing::{info, info_span};

use super::helper::Helper;
use super::ports::{self, Mapping};
use super::{Attached, DEFAULT_NETWORK, Member, NET_RECORD, NetError};

/// Where the container's pasta process is recorded (its PID and start time).
const PASTA_RECORD: &str = "pasta.json";
/// The `bridge` field of an [`Attached`] record of a pasta network.
pub const PASTA: &str = "pasta";
/// How long pasta may take to set up the namespace and its ports.
const READY_WITHIN: Duration = Duration::from_secs(20);

/// The pasta binary, where Debian's `passt` puts it.
fn binary() -> Option<PathBuf> {
    crate::paths::system_program("pasta")
}

/// Whether rootless containers can have a network other than `none` and `host` here.
pub fn available() -> bool {
    binary().is_some()
}

/// pasta's forwarding option value for the mappings of one protocol (`none` for none).
fn forward_spec(maps: &[Mapping], proto: &str) -> Vec<String> {
    let specs: Vec<String> = maps
        .iter()
        .filter(|m| m.proto == proto)
        .map(|m| {
            let port = format!("{}:{}", m.host_port, m.container_port);
            if m.host_ip.is_empty() {
                port
            } else {
                format!("{}/{port}", m.host_ip)
            }
        })
        .collect();
    if specs.is_empty() {
        vec!["none".into()]
    } else {
        specs
    }
}

/// The arguments of pasta for the container whose init is `pid`.
fn arguments(maps: &[Mapping], pid: i32, pid_file: &Path) -> Vec<String> {
    let mut args: Vec<String> = [
        "--config-net",
        "--quiet",
        // The container must not reach the host's loopback through the gateway address,
        // nor any port bound on the host through its own loopback.
        "--no-map-gw",
        "-T",
        "none",
        "-U",
        "none",
    ]
    .map(String::from)
    .to_vec();
    for t in forward_spec(maps, "tcp") {
        args.extend(["-t".into(), t]);
    }
    for u in forward_spec(maps, "udp") {
        args.extend(["-u".into(), u]);
    }
    args.extend([
        "--pid".into(),
        pid_file.display().to_string(),
        "--userns".into(),
        format!("/proc/{pid}/ns/user"),
        "--netns".into(),
        format!("/proc/{pid}/ns/net"),
    ]);
    args
}

/// Connects the user's network namespace, held by `pid`, to the outside (nothing forwarded
/// into it: published ports of user networks go through strata's proxy); once ready, returns
/// pasta, recorded.
pub(super) fn connect_holder(pid: i32) -> Result<Helper, NetError> {
    let Some(bin) = binary() else {
        return Err(NetError::Rootless(
            "user networks without root reach the outside through pasta, which is not \
             installed (Debian package passt)"
                .into(),
        ));
    };
    let dir = super::run_dir();
    std::fs::create_dir_all(&dir).map_err(super::io_err(&dir))?;
    let mut s = spawn(bin, vec![], pid, &dir, "holder-pasta")?;
    let daemon = s.wait_ready()?;
    s.done = true;
    let _ = std::fs::remove_file(&s.pid_file);
    Ok(Helper::of(daemon))
}

/// pasta and slirp4netns make the container's interface through /dev/net/tun, which minimal
/// systems leave to root (0600): a sentence naming the fix.
pub(super) fn tun_usable(tool: &str) -> Result<(), NetError> {
    rustix::fs::access(
        "/dev/net/tun",
        rustix::fs::Access::READ_OK | rustix::fs::Access::WRITE_OK,
    )
    .map_err(|_| {
        NetError::Rootless(format!(
            "containers without root reach the network through {tool}, which needs /dev/net/tun \
             open to you (mode 0666, as desktop distributions ship it; as root: chmod 0666 \
             /dev/net/tun); or run them with --network none or host"
        ))
    })
}

/// pasta on its way: started, not yet ready.
pub struct Starting {
    child: std::process::Child,
    bin: PathBuf,
    pid_file: PathBuf,
    log: PathBuf,
    dir: PathBuf,
    maps: Vec<Mapping>,
    /// Set once recorded: from then on [`detach`] ends it.
    done: bool,
}

impl Drop for Starting {
    /// Abandoned before it was recorded (the start failed elsewhere): end it.
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(pid) = std::fs::read_to_string(&self.pid_file)
            .ok()
            .and_then(|s| s.trim().parse::<i32>().ok())
        {
            Helper::of(pid).end();
        }
        let _ = std::fs::remove_file(&self.pid_file);
    }
}

/// Starts pasta for the container `m` whose init (in its own user and network namespaces)
/// is `pid`; [`Starting::finish`] waits until the namespace is configured and the published
/// ports listen (the rootfs is opened meanwhile).
pub fn start(m: &Member<'_>, pid: i32) -> Result<Starting, NetError> {
    let _s = info_span!("pasta_start", pid).entered();
    let Some(bin) = binary() else {
        return Err(NetError::Rootless(
            "containers without root reach the network through pasta, which is not \
             installed (Debian package passt); or run them with --network none or host"
                .into(),
        ));
    };
    tun_usable("pasta")?;
    let maps = ports::resolve(&m.net.ports, &[])?;
    spawn(bin, maps, pid, m.dir, "pasta")
}

/// Starts `bin` for the namespaces of `pid` forwarding `maps`, its PID file and log as
/// `NAME.pid` and `NAME.log` in `dir`.
fn spawn(
    bin: PathBuf,
    maps: Vec<Mapping>,
    pid: i32,
    dir: &Path,
    name: &str,
) -> Result<Starting, NetError> {
    let pid_file = dir.join(format!("{name}.pid"));
    let _ = std::fs::remove_file(&pid_file);
    let log = dir.join(format!("{name}.log"));
    let err = std::fs::File::create(&log).map_err(super::io_err(&log))?;
    let child = Command::new(&bin)
        .args(arguments(&maps, pid, &pid_file))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(err)
        .spawn()
        .map_err(|e| cmd_err(&bin, e.to_string()))?;
    Ok(Starting {
        child,
        bin,
        pid_file,
        log,
        dir: dir.to_path_buf(),
        maps,
        done: false,
    })
}

impl Starting {
    /// Waits for pasta to be ready and records it; on failure nothing of it is left.
    pub fn finish(mut self) -> Result<Attached, NetError> {
        let _s = info_span!("pasta_ready").entered();
        let daemon = self.wait_ready()?;
        let rp = self.dir.join(PASTA_RECORD);
        Helper::of(daemon).save(&rp).map_err(super::io_err(&rp))?;
        self.done = true;
        let _ = std::fs::remove_file(&self.pid_file);
        let attached = Attached {
            network: DEFAULT_NETWORK.into(),
            bridge: PASTA.into(),
            ip: String::new(),
            prefix: 0,
            gateway: String::new(),
            veth: String::new(),
            ports: std::mem::take(&mut self.maps),
        };
        let rec = self.dir.join(NET_RECORD);
        if let Err(e) = std::fs::write(
            &rec,
            serde_json::to_vec_pretty(&attached).expect("serializable"),
        ) {
            detach(&self.dir);
            return Err(super::io_err(&rec)(e));
        }
        info!(pasta = daemon, ports = attached.ports.len(), "attached");
        Ok(attached)
    }

    /// Waits until pasta has forked into the background (ready); the daemon's PID.
    fn wait_ready(&mut self) -> Result<i32, NetError> {
        let bin = &self.bin;
        // pasta forks into the background once it is ready; its first process then exits.
        let deadline = Instant::now() + READY_WITHIN;
        let status = loop {
            match self.child.try_wait() {
                Ok(Some(s)) => break s,
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(1))
                }
                Ok(None) | Err(_) => {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    return Err(cmd_err(bin, "did not finish setting up in time".into()));
                }
            }
        };
        if !status.success() {
            let mut text = String::new();
            let _ = std::fs::File::open(&self.log).and_then(|mut f| f.read_to_string(&mut text));
            // pasta also complains that it has no syslog to write to: not the reason.
            let why: Vec<&str> = text
                .split("Failed to send")
                .flat_map(|part| part.split_once("syslog").map_or(part, |(_, r)| r).lines())
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .collect();
            return Err(cmd_err(bin, format!("{status}: {}", why.join("; "))));
        }
        std::fs::read_to_string(&self.pid_file)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .ok_or_else(|| cmd_err(bin, "wrote no PID file".into()))
    }
}

fn cmd_err(bin: &Path, msg: String) -> NetError {
    NetError::Cmd {
        cmd: bin.display().to_string(),
        msg,
    }
}

/// Ends the container's pasta (if it still runs and is still the one recorded).
pub fn detach(dir: &Path) {
    Helper::end_recorded(&dir.join(PASTA_RECORD));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(ip: &str, host: u16, cont: u16, proto: &str) -> Mapping {
        Mapping {
            host_ip: ip.into(),
            host_port: host,
            container_port: cont,
            proto: proto.into(),
        }
    }

    #[test]
    fn nothing_is_forwarded_but_what_is_published() {
        let a = arguments(&[], 42, Path::new("/d/pasta.pid"));
        let s = a.join(" ");
        assert!(
            s.contains("--no-map-gw -T none -U none -t none -u none"),
            "{s}"
        );
        assert!(
            s.ends_with("--userns /proc/42/ns/user --netns /proc/42/ns/net"),
            "{s}"
        );
        let a = arguments(
            &[
                map("", 8080, 80, "tcp"),
                map("127.0.0.1", 5353, 53, "udp"),
                map("", 8443, 443, "tcp"),
            ],
            7,
            Path::new("/p"),
        );
        let s = a.join(" ");
        assert!(
            s.contains("-t 8080:80 -t 8443:443 -u 127.0.0.1/5353:53"),
            "{s}"
        );
    }
}

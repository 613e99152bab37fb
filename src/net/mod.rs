//! Container networking: bridges, a veth pair per container, addresses, published ports.
//!
//! Everything is done by running `ip`, `nsenter` and `iptables` (iproute2, util-linux and
//! iptables are on every host that runs containers; the netlink crates are async/tokio, and
//! a shim is synchronous and must stay small), through the seam in `cmd` (a test replaces the
//! processes with a recording double). Every command's failure becomes a [`NetError::Cmd`]
//! with the command line and its stderr.
//!
//! - Networks: `bridge` (the default, device `strata0`, 10.213.0.0/24), `host`, `none`, and
//!   user networks (`<root>/networks/<name>.json`, each its own bridge `strataN`); bridges and
//!   the base rules are `bridge`'s, the recorded choice at `create` is `plan`'s.
//! - Leases: host-wide under [`RUN_DIR`] (a bridge is a host-wide thing: two state roots share
//!   `strata0`), one file per address, written under one host-wide lock; a lease whose
//!   container's shim no longer holds its shim lock is stale and is reclaimed, with its rules.
//! - Ports: iptables DNAT in strata's own nat chain `STRATA` (jumped to from PREROUTING and
//!   OUTPUT for local destinations); `localhost:PORT` works by `route_localnet` on the bridge
//!   plus masquerading of local sources (no userland proxy process per port); a rule in
//!   `STRATA-INPUT` drops new packets from a bridge to 127.0.0.0/8 (CVE-2020-8558). Every
//!   container rule carries the comment `strata:<id>`, so removing them never touches
//!   anybody else's rule.
//! - Names: on a user network, each running member's `/etc/hosts` (a bind-mounted file of its
//!   state directory) is rewritten in place as peers start and stop.
//! - Without root (`pasta`, `slirp`, `rootless`, `proxy`): the default network is a pasta
//!   (or slirp4netns) per container; user networks live in the user's own network namespace (the same bridges,
//!   veths and rules, every command run inside it), reached from outside through pasta, their
//!   published ports through a proxy in the shim; state under the user's runtime directory
//!   ([`run_dir`]).

mod bridge;
pub mod cmd;
mod helper;
mod hosts;
pub mod pasta;
mod plan;
#[cfg(test)]
mod planning_tests;
pub mod ports;
mod proxy;
pub mod rootless;
pub mod slirp;

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, Write};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tracing::{info, info_span, warn};

use bridge::{delete_tagged, ensure_bridge, remove_bridge};
#[cfg(test)]
use bridge::{ensure_base, net_rules};
pub(crate) use cmd::{ok, run};
pub use hosts::hosts_file;
pub use plan::plan;
pub use ports::PortSpec;

/// Host-wide network state (leases, lock); tmpfs, so a reboot frees every lease.
pub const RUN_DIR: &str = "/run/strata/net";

/// Where this user's network state lives: [`RUN_DIR`] for root; without root, `net` in the
/// user's runtime directory (its networks live in its own network namespace, see
/// [`rootless`]).
pub fn run_dir() -> PathBuf {
    match crate::paths::Mode::current() {
        crate::paths::Mode::Root => PathBuf::from(RUN_DIR),
        crate::paths::Mode::Rootless => crate::paths::runtime_dir().join("net"),
    }
}

fn rootless_mode() -> bool {
    crate::paths::Mode::current() == crate::paths::Mode::Rootless
}

/// Sets a sysctl of the network namespace the links live in (the user's own without root).
fn set_sysctl(path: &str, value: &str) -> Result<(), NetError> {
    if rootless_mode() {
        run("sh", &["-c", &format!("echo {value} > {path}")])?;
        return Ok(());
    }
    std::fs::write(path, value).map_err(io_err(Path::new(path)))
}
/// The default network's name, bridge and subnet.
pub const DEFAULT_NETWORK: &str = "bridge";
pub const DEFAULT_BRIDGE: &str = "strata0";
pub const DEFAULT_SUBNET: &str = "10.213.0.0/24";
/// The networks that are not user networks: root's default bridge, the two user-mode
/// networks of containers without root (`bridge` picks one of them there), host and none.
pub const BUILT_IN: [&str; 5] = [DEFAULT_NETWORK, "pasta", SLIRP_MODE, "host", "none"];
/// `--network slirp4netns`.
pub const SLIRP_MODE: &str = "slirp4netns";

/// The comment prefix of every per-container iptables rule.
const RULE_TAG: &str = "strata:";
/// The container's network record in its state directory.
pub const NET_RECORD: &str = "net.json";
/// The lock file in a member's directory that its process (the container's shim) holds for
/// as long as it lives: a lease whose lock nobody holds is stale.
pub const MEMBER_LOCK: &str = "shim.lock";

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("{cmd}: {msg}")]
    Cmd { cmd: String, msg: String },
    #[error("invalid {what} {value:?}: {why}")]
    Invalid {
        what: &'static str,
        value: String,
        why: String,
    },
    #[error("no such network: {0}")]
    NoSuchNetwork(String),
    #[error("network {0} already exists")]
    Exists(String),
    #[error("network {name} is in use by container(s) {containers}")]
    InUse { name: String, containers: String },
    #[error("cannot publish {0}: the host port is already in use")]
    PortInUse(String),
    #[error("no free address left in network {0}")]
    Exhausted(String),
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{0}")]
    Rootless(String),
}

fn io_err(p: &Path) -> impl FnOnce(io::Error) -> NetError + '_ {
    move |source| NetError::Io {
        path: p.to_path_buf(),
        source,
    }
}

fn invalid(what: &'static str, value: &str, why: impl Into<String>) -> NetError {
    NetError::Invalid {
        what,
        value: value.into(),
        why: why.into(),
    }
}

/// What the user asked for (`--network`, `-p`, `-P`, `--network-alias`).
#[derive(Debug, Clone, Default)]
pub struct NetOptions {
    pub network: Option<String>,
    pub publish: Vec<String>,
    pub publish_all: bool,
    pub aliases: Vec<String>,
}

/// A container's network configuration, recorded at create.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct ContainerNet {
    /// `bridge`, `host`, `none` or a user network's name; empty (older records) = `none`.
    #[serde(default)]
    pub mode: String,
    #[serde(default)]
    pub ports: Vec<PortSpec>,
    #[serde(default)]
    pub aliases: Vec<String>,
}

impl ContainerNet {
    /// Whether the container gets its own network namespace.
    pub fn own_namespace(&self) -> bool {
        self.mode != "host"
    }
    /// Whether the container is attached to a bridge.
    pub fn bridged(&self) -> bool {
        !matches!(self.mode.as_str(), "" | "none" | "host")
    }
    /// Whether the container is on a user network (not a built-in one).
    pub fn user_network(&self) -> bool {
        self.bridged() && !BUILT_IN.contains(&self.mode.as_str())
    }
}

/// A network definition.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Network {
    pub name: String,
    pub bridge: String,
    pub subnet: String,
    pub gateway: String,
    #[serde(default)]
    pub created: String,
}

impl Network {
    fn default_bridge() -> Self {
        Network {
            name: DEFAULT_NETWORK.into(),
            bridge: DEFAULT_BRIDGE.into(),
            subnet: DEFAULT_SUBNET.into(),
            gateway: "10.213.0.1".into(),
            created: String::new(),
        }
    }
    fn prefix(&self) -> Result<(Ipv4Addr, u8), NetError> {
        parse_cidr(&self.subnet)
    }
}

/// `a.b.c.d/n` → network address and prefix length.
pub fn parse_cidr(s: &str) -> Result<(Ipv4Addr, u8), NetError> {
    let (a, n) = s
        .split_once('/')
        .ok_or_else(|| invalid("subnet", s, "use a.b.c.d/len"))?;
    let a: Ipv4Addr = a.parse().map_err(|_| invalid("subnet", s, "bad address"))?;
    let n: u8 = n.parse().map_err(|_| invalid("subnet", s, "bad length"))?;
    if !(8..=29).contains(&n) {
        return Err(invalid("subnet", s, "the prefix length must be 8 to 29"));
    }
    let mask = u32::MAX << (32 - n);
    Ok((Ipv4Addr::from(u32::from(a) & mask), n))
}

fn overlaps(a: (Ipv4Addr, u8), b: (Ipv4Addr, u8)) -> bool {
    let n = a.1.min(b.1);
    let mask = if n == 0 { 0 } else { u32::MAX << (32 - n) };
    u32::from(a.0) & mask == u32::from(b.0) & mask
}

fn link_exists(name: &str) -> bool {
    if rootless_mode() {
        return rootless::namespaces().is_some() && ok("ip", &["link", "show", "dev", name]);
    }
    Path::new("/sys/class/net").join(name).exists()
}

/// Holds the host-wide network lock.
pub struct NetLock {
    _f: File,
}

pub fn lock() -> Result<NetLock, NetError> {
    let dir = run_dir();
    let dir = dir.as_path();
    std::fs::create_dir_all(dir.join("leases")).map_err(io_err(dir))?;
    let p = dir.join("lock");
    Ok(NetLock {
        _f: crate::sys::lock_file(&p).map_err(io_err(&p))?,
    })
}

// ---------------------------------------------------------------------------------------
// Networks

/// The user networks of a state root.
pub struct Networks {
    dir: PathBuf,
}

fn valid_name(n: &str) -> bool {
    let mut c = n.chars();
    c.next().is_some_and(|f| f.is_ascii_alphanumeric())
        && c.all(|ch| ch.is_ascii_alphanumeric() || "_.-".contains(ch))
        && n.len() <= 64
}

impl Networks {
    pub fn open(root: &Path) -> Result<Self, NetError> {
        let dir = root.join("networks");
        std::fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        Ok(Networks { dir })
    }

    /// Every network: the built-in ones first, then user networks by name.
    pub fn list(&self) -> Result<Vec<Network>, NetError> {
        let mut out = vec![Network::default_bridge()];
        let mut user = BTreeMap::new();
        for e in std::fs::read_dir(&self.dir).map_err(io_err(&self.dir))? {
            let e = e.map_err(io_err(&self.dir))?;
            let p = e.path();
            if p.extension().is_some_and(|x| x == "json")
                && let Ok(text) = std::fs::read(&p)
                && let Ok(n) = serde_json::from_slice::<Network>(&text)
            {
                user.insert(n.name.clone(), n);
            }
        }
        out.extend(user.into_values());
        Ok(out)
    }

    pub fn get(&self, name: &str) -> Result<Network, NetError> {
        if name == DEFAULT_NETWORK {
            return Ok(Network::default_bridge());
        }
        if !valid_name(name) {
            return Err(NetError::NoSuchNetwork(name.into()));
        }
        let p = self.dir.join(format!("{name}.json"));
        match std::fs::read(&p) {
            Ok(t) => serde_json::from_slice(&t).map_err(|e| NetError::Io {
                path: p.clone(),
                source: io::Error::other(e),
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                Err(NetError::NoSuchNetwork(name.into()))
            }
            Err(e) => Err(io_err(&p)(e)),
        }
    }

    /// `network create`: a new bridge with its subnet (the first free 10.213.N.0/24 unless
    /// given).
    pub fn create(&self, name: &str, subnet: Option<&str>) -> Result<Network, NetError> {
        let _s = info_span!("network_create", name).entered();
        if !valid_name(name) || BUILT_IN.contains(&name) || name == "default" {
            return Err(invalid(
                "network name",
                name,
                "use [a-zA-Z0-9][a-zA-Z0-9_.-]* (not bridge, pasta, slirp4netns, host, none)",
            ));
        }
        let _l = lock()?;
        if self.get(name).is_ok() {
            return Err(NetError::Exists(name.into()));
        }
        let mut taken = host_prefixes()?;
        // Networks defined but not up (without root their bridges come with their first
        // container) keep their subnets too.
        for n in self.list()? {
            taken.extend(n.prefix());
        }
        let subnet = match subnet {
            Some(s) => {
                let p = parse_cidr(s)?;
                if let Some(t) = taken.iter().find(|t| overlaps(**t, p)) {
                    return Err(invalid(
                        "subnet",
                        s,
                        format!("overlaps {}/{} in use on this host", t.0, t.1),
                    ));
                }
                p
            }
            None => (1..=255u8)
                .map(|n| (Ipv4Addr::new(10, 213, n, 0), 24u8))
                .find(|p| !taken.iter().any(|t| overlaps(*t, *p)))
                .ok_or_else(|| NetError::Exhausted("10.213.0.0/16".into()))?,
        };
        let bridge = (1..1000)
            .map(|i| format!("strata{i}"))
            .find(|b| {
                !link_exists(b)
                    && !self
                        .list()
                        .map(|l| l.iter().any(|n| &n.bridge == b))
                        .unwrap_or(true)
            })
            .ok_or_else(|| invalid("network", name, "no free bridge name"))?;
        let gateway = Ipv4Addr::from(u32::from(subnet.0) + 1);
        let n = Network {
            name: name.into(),
            bridge,
            subnet: format!("{}/{}", subnet.0, subnet.1),
            gateway: gateway.to_string(),
            created: crate::time::now(),
        };
        if !rootless_mode() {
            ensure_bridge(&n)?;
        }
        let p = self.dir.join(format!("{name}.json"));
        let body = serde_json::to_vec_pretty(&n).expect("serializable");
        std::fs::write(&p, body).map_err(io_err(&p))?;
        info!(bridge = n.bridge, subnet = n.subnet, "network created");
        Ok(n)
    }

    /// `network rm` (the caller checks that no container uses it).
    pub fn remove(&self, name: &str) -> Result<(), NetError> {
        if BUILT_IN.contains(&name) {
            return Err(invalid(
                "network",
                name,
                "a built-in network cannot be removed",
            ));
        }
        let n = self.get(name)?;
        let _l = lock()?;
        // Without root the bridge lives only while the user's network namespace does.
        if !rootless_mode() || rootless::namespaces().is_some() {
            remove_bridge(&n)?;
        }
        let p = self.dir.join(format!("{name}.json"));
        std::fs::remove_file(&p).map_err(io_err(&p))
    }
}

/// IPv4 prefixes routed on this host (other than strata's own bridges' are also here once up).
fn host_prefixes() -> Result<Vec<(Ipv4Addr, u8)>, NetError> {
    let out = run("ip", &["-4", "route", "show", "table", "all"])?;
    let mut v = Vec::new();
    for line in out.lines() {
        let first = line.split_whitespace().next().unwrap_or("");
        let first = if matches!(first, "local" | "broadcast" | "unicast") {
            line.split_whitespace().nth(1).unwrap_or("")
        } else {
            first
        };
        if first == "default" {
            continue;
        }
        let cidr = if first.contains('/') {
            first.to_string()
        } else {
            format!("{first}/32")
        };
        if let Some((a, n)) = cidr.split_once('/')
            && let (Ok(a), Ok(n)) = (a.parse::<Ipv4Addr>(), n.parse::<u8>())
            && n >= 8
        {
            let mask = if n == 0 { 0 } else { u32::MAX << (32 - n) };
            v.push((Ipv4Addr::from(u32::from(a) & mask), n));
        }
    }
    Ok(v)
}

// ---------------------------------------------------------------------------------------
// Leases

/// One address in use, host-wide.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Lease {
    pub ip: String,
    pub bridge: String,
    pub network: String,
    pub id: String,
    pub name: String,
    pub aliases: Vec<String>,
    /// The container's state directory (its shim lock says whether the lease is live).
    pub dir: PathBuf,
    pub veth: String,
    pub ports: Vec<ports::Mapping>,
}

impl Lease {
    fn live(&self) -> bool {
        crate::sys::lock_held(&self.dir.join(MEMBER_LOCK))
    }
}

fn lease_path(ip: &str) -> PathBuf {
    run_dir().join("leases").join(ip)
}

/// Every lease (call with the lock held).
fn leases() -> Vec<Lease> {
    let dir = run_dir().join("leases");
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(&dir) {
        for e in rd.flatten() {
            if let Ok(t) = std::fs::read(e.path())
                && let Ok(l) = serde_json::from_slice::<Lease>(&t)
            {
                out.push(l);
            }
        }
    }
    out
}

/// Frees a lease: its rules, its veth (gone with the namespace anyway), the address.
fn release(l: &Lease) {
    let _s = info_span!("release", ip = l.ip, id = short(&l.id)).entered();
    if let Err(e) = delete_tagged(&format!("{RULE_TAG}{}", short(&l.id))) {
        warn!(error = %e, "removing the container's iptables rules failed");
    }
    if link_exists(&l.veth)
        && let Err(e) = run("ip", &["link", "del", &l.veth])
    {
        warn!(error = %e, "removing the veth failed");
    }
    let _ = std::fs::remove_file(lease_path(&l.ip));
    info!("released");
}

/// Releases leases whose container is gone (call with the lock held); the live ones.
fn reclaim() -> Vec<Lease> {
    let mut live = Vec::new();
    for l in leases() {
        if l.live() {
            live.push(l);
        } else {
            warn!(ip = l.ip, id = short(&l.id), "reclaiming a stale lease");
            release(&l);
        }
    }
    live
}

fn short(id: &str) -> &str {
    &id[..id.len().min(12)]
}

// ---------------------------------------------------------------------------------------
// Attach / detach

/// What `attach` set up; recorded as the container's `net.json`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Attached {
    pub network: String,
    pub bridge: String,
    pub ip: String,
    pub prefix: u8,
    pub gateway: String,
    pub veth: String,
    pub ports: Vec<ports::Mapping>,
}

/// Who is attaching.
pub struct Member<'a> {
    pub id: &'a str,
    pub name: &'a str,
    pub hostname: &'a str,
    pub dir: &'a Path,
    pub net: &'a ContainerNet,
}

/// Connecting a container to its network, begun by [`start_attach`].
pub enum Attaching {
    /// Nothing to do (`none`, `host`).
    Nothing,
    /// A bridge: wired by [`Attaching::finish`].
    Bridge { root: PathBuf, pid: i32 },
    /// pasta (containers without root), already starting.
    Pasta(pasta::Starting),
    /// slirp4netns (containers without root), already starting.
    Slirp(slirp::Starting),
}

/// Begins connecting the network namespace of `pid` (the container's init, which waits):
/// pasta starts at once, so that it gets ready while the shim opens the rootfs.
pub fn start_attach(root: &Path, m: &Member<'_>, pid: i32) -> Result<Attaching, NetError> {
    if !m.net.bridged() {
        return Ok(Attaching::Nothing);
    }
    if rootless_mode() && !m.net.user_network() {
        // `bridge` is pasta where installed, else slirp4netns (`plan` checked one is).
        let slirp = m.net.mode == SLIRP_MODE || (m.net.mode != "pasta" && !pasta::available());
        return if slirp {
            slirp::start(m, pid).map(Attaching::Slirp)
        } else {
            pasta::start(m, pid).map(Attaching::Pasta)
        };
    }
    Ok(Attaching::Bridge {
        root: root.to_path_buf(),
        pid,
    })
}

impl Attaching {
    /// Completes what [`start_attach`] began; on error nothing of it is left.
    pub fn finish(self, m: &Member<'_>) -> Result<Option<Attached>, NetError> {
        match self {
            Attaching::Nothing => Ok(None),
            Attaching::Bridge { root, pid } => attach(&root, m, pid),
            Attaching::Pasta(p) => p.finish().map(Some),
            Attaching::Slirp(s) => {
                let (attached, exit) = s.finish()?;
                // Held for the rest of the shim's life on purpose: the kernel closes it when
                // the shim exits (however it dies), which is what ends slirp4netns.
                std::mem::forget(exit);
                Ok(Some(attached))
            }
        }
    }
}

/// Connects the network namespace of `pid` (the container's init, stopped before it goes
/// on) to its network: a veth pair, an address, a default route, the published ports,
/// `/etc/hosts`. On error nothing of it is left.
fn attach(root: &Path, m: &Member<'_>, pid: i32) -> Result<Option<Attached>, NetError> {
    if !m.net.bridged() {
        return Ok(None);
    }
    let _s = info_span!("net_attach", network = m.net.mode, pid).entered();
    let n = Networks::open(root)?.get(&m.net.mode)?;
    let _l = lock()?;
    ensure_bridge(&n)?;
    let live = reclaim();
    // A lease of this container left by a dead shim was reclaimed above; a live one means a
    // second shim, which the shim lock excludes.
    let (net_addr, len) = n.prefix()?;
    let gw: Ipv4Addr = n
        .gateway
        .parse()
        .map_err(|_| invalid("gateway", &n.gateway, "bad address"))?;
    let size = 1u32 << (32 - len);
    let ip = (1..size - 1)
        .map(|i| Ipv4Addr::from(u32::from(net_addr) + i))
        .find(|a| *a != gw && !lease_path(&a.to_string()).exists())
        .ok_or_else(|| NetError::Exhausted(n.name.clone()))?;
    let mappings = ports::resolve(&m.net.ports, &live)?;
    let lease = Lease {
        ip: ip.to_string(),
        bridge: n.bridge.clone(),
        network: n.name.clone(),
        id: m.id.into(),
        name: m.name.into(),
        aliases: m.net.aliases.clone(),
        dir: m.dir.to_path_buf(),
        veth: format!("vs{}", &m.id[..m.id.len().min(10)]),
        ports: mappings.clone(),
    };
    let lp = lease_path(&lease.ip);
    std::fs::write(&lp, serde_json::to_vec(&lease).expect("serializable")).map_err(io_err(&lp))?;
    let attached = Attached {
        network: n.name.clone(),
        bridge: n.bridge.clone(),
        ip: lease.ip.clone(),
        prefix: len,
        gateway: n.gateway.clone(),
        veth: lease.veth.clone(),
        ports: mappings,
    };
    match wire(&attached, m, pid) {
        Ok(()) => {}
        Err(e) => {
            release(&lease);
            return Err(e);
        }
    }
    let rec = m.dir.join(NET_RECORD);
    let _ = std::fs::write(
        &rec,
        serde_json::to_vec_pretty(&attached).expect("serializable"),
    );
    let mut peers = live;
    peers.push(lease);
    sync_hosts(&n.bridge, &n.name, &peers);
    info!(ip = attached.ip, ports = attached.ports.len(), "attached");
    Ok(Some(attached))
}

fn wire(a: &Attached, m: &Member<'_>, pid: i32) -> Result<(), NetError> {
    let peer = format!("vp{}", &m.id[..m.id.len().min(10)]);
    let pid_s = pid.to_string();
    if link_exists(&a.veth) {
        run("ip", &["link", "del", &a.veth])?;
    }
    run(
        "ip",
        &[
            "link", "add", &a.veth, "type", "veth", "peer", "name", &peer,
        ],
    )?;
    run("ip", &["link", "set", &a.veth, "master", &a.bridge])?;
    let _ = run(
        "ip",
        &[
            "link",
            "set",
            &a.veth,
            "type",
            "bridge_slave",
            "hairpin",
            "on",
        ],
    );
    run("ip", &["link", "set", &a.veth, "up"])?;
    run("ip", &["link", "set", &peer, "netns", &pid_s])?;
    let inside = |args: &[&str]| -> Result<String, NetError> {
        let mut v = vec!["-t", pid_s.as_str(), "-n", "ip"];
        v.extend_from_slice(args);
        run("nsenter", &v)
    };
    inside(&["link", "set", &peer, "name", "eth0"])?;
    // The address decides the MAC (as Docker does): a reused address keeps the MAC that the
    // host's and the peers' neighbour caches still hold, so it is reachable at once.
    let ip: Ipv4Addr =
        a.ip.parse()
            .map_err(|_| invalid("address", &a.ip, "not an IPv4 address"))?;
    inside(&["link", "set", "eth0", "address", &mac_for(ip)])?;
    inside(&[
        "addr",
        "add",
        &format!("{}/{}", a.ip, a.prefix),
        "dev",
        "eth0",
    ])?;
    inside(&["link", "set", "eth0", "up"])?;
    inside(&["route", "add", "default", "via", &a.gateway])?;
    if rootless_mode() {
        // The host's ports are not the user namespace's to DNAT: strata's proxy, in the shim.
        let ip: Ipv4Addr =
            a.ip.parse()
                .map_err(|_| invalid("address", &a.ip, "not an IPv4 address"))?;
        if let Some((_, netns)) = rootless::namespaces() {
            proxy::serve(&a.ports, ip, &netns)?;
        }
        return Ok(());
    }
    ports::add_rules(&a.ip, &a.ports, &format!("{RULE_TAG}{}", short(m.id)))?;
    Ok(())
}

/// The MAC of the container interface with address `ip`: locally administered, unicast,
/// `02:42` followed by the address's four bytes.
pub fn mac_for(ip: Ipv4Addr) -> String {
    let [a, b, c, d] = ip.octets();
    format!("02:42:{a:02x}:{b:02x}:{c:02x}:{d:02x}")
}

/// Undoes [`attach`] (the shim, when the container is gone; or the reconciler, after a
/// killed shim). Safe to call twice.
pub fn detach(id: &str, dir: &Path) {
    detach_record(id, dir);
    // Without root: the last container of the user's networks ends their namespace.
    if rootless_mode()
        && run_dir().join("users").join(id).exists()
        && let Ok(_l) = lock()
    {
        rootless::leave(id);
    }
}

fn detach_record(id: &str, dir: &Path) {
    let rec = dir.join(NET_RECORD);
    let Ok(text) = std::fs::read(&rec) else {
        return;
    };
    let _s = info_span!("net_detach", id = short(id)).entered();
    let Ok(a) = serde_json::from_slice::<Attached>(&text) else {
        let _ = std::fs::remove_file(&rec);
        return;
    };
    if a.bridge == pasta::PASTA {
        pasta::detach(dir);
        let _ = std::fs::remove_file(&rec);
        return;
    }
    if a.bridge == slirp::SLIRP {
        slirp::detach(dir);
        let _ = std::fs::remove_file(&rec);
        return;
    }
    let _l = match lock() {
        Ok(l) => l,
        Err(e) => {
            warn!(error = %e, "network lock");
            return;
        }
    };
    let lp = lease_path(&a.ip);
    let lease = std::fs::read(&lp)
        .ok()
        .and_then(|t| serde_json::from_slice::<Lease>(&t).ok());
    match lease {
        Some(l) if l.id == id => release(&l),
        _ => {
            // Not ours any more (reclaimed and reused): only our own tagged rules.
            let _ = delete_tagged(&format!("{RULE_TAG}{}", short(id)));
        }
    }
    let _ = std::fs::remove_file(&rec);
    let peers: Vec<Lease> = leases().into_iter().filter(|l| l.id != id).collect();
    sync_hosts(&a.bridge, &a.network, &peers);
}

/// The published ports of a running container (its `net.json`).
pub fn attached(dir: &Path) -> Option<Attached> {
    let t = std::fs::read(dir.join(NET_RECORD)).ok()?;
    serde_json::from_slice(&t).ok()
}

/// Rewrites, in place, `/etc/hosts` of every running member of `n`: itself, and on a user
/// network every peer by name and alias.
fn sync_hosts(bridge: &str, network: &str, peers: &[Lease]) {
    let members: Vec<&Lease> = peers.iter().filter(|l| l.bridge == bridge).collect();
    for me in &members {
        let hostname = std::fs::read_to_string(me.dir.join("hostname"))
            .map(|s| s.trim().to_string())
            .unwrap_or_default();
        let mut body = hosts_file(&hostname)
            .lines()
            .filter(|l| !l.starts_with("127.0.1.1"))
            .map(|l| format!("{l}\n"))
            .collect::<String>();
        body.push_str(&format!("{}\t{hostname}\n", me.ip));
        if network != DEFAULT_NETWORK {
            for p in &members {
                let mut names = vec![p.name.clone()];
                names.extend(p.aliases.iter().cloned());
                body.push_str(&format!("{}\t{}\n", p.ip, names.join(" ")));
            }
        }
        let path = me.dir.join("hosts");
        // In place: the file is bind-mounted into the container by inode.
        let r = File::options()
            .write(true)
            .truncate(true)
            .open(&path)
            .and_then(|mut f| f.write_all(body.as_bytes()));
        if let Err(e) = r {
            warn!(path = %path.display(), error = %e, "updating /etc/hosts failed");
        }
    }
}

/// Names of the containers (of any root) attached to `n` now.
pub fn users(n: &Network) -> Vec<String> {
    let Ok(_l) = lock() else { return vec![] };
    reclaim()
        .into_iter()
        .filter(|l| l.bridge == n.bridge)
        .map(|l| l.name)
        .collect()
}

/// Cleans every stale lease and its rules (any strata command may call it).
pub fn reconcile() {
    if run_dir().exists()
        && let Ok(_l) = lock()
    {
        reclaim();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mac_follows_the_address() {
        assert_eq!(mac_for(Ipv4Addr::new(10, 213, 0, 2)), "02:42:0a:d5:00:02");
        assert_ne!(
            mac_for(Ipv4Addr::new(10, 213, 0, 2)),
            mac_for(Ipv4Addr::new(10, 213, 0, 3))
        );
    }
}

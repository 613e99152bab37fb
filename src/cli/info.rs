//! `strata info`: where strata keeps its state and what this user can do with it (as
//! `docker info`). Reports only: creates no state root and no runtime directory.

use std::path::Path;

use serde::Serialize;

use crate::fs::access::{ENABLE_URING, FUSE_CONF, FUSE_DEVICE, FuseAccess};
use crate::paths;

#[derive(Serialize)]
struct Info {
    version: &'static str,
    mode: &'static str,
    uid: u32,
    state_root: String,
    /// `--root`/`STRATA_ROOT` (false: the mode's default).
    state_root_given: bool,
    state_root_exists: bool,
    /// Why this user cannot use the state root (`null` when it can).
    state_root_problem: Option<String>,
    runtime_dir: String,
    fuse: FuseAccess,
    /// Why this user cannot mount (`null` when it can).
    fuse_problem: Option<String>,
    /// How container ids map to this user's (root: `host ids`).
    id_mapping: String,
    /// The default network of this user's containers.
    network: String,
}

pub fn show(root: &Path, given: bool, json: bool) -> anyhow::Result<i32> {
    let fuse = FuseAccess::probe();
    let info = Info {
        version: env!("CARGO_PKG_VERSION"),
        mode: paths::Mode::current().as_str(),
        uid: paths::euid(),
        state_root: root.display().to_string(),
        state_root_given: given,
        state_root_exists: root.is_dir(),
        state_root_problem: paths::check_state_root(root).err().map(|e| e.to_string()),
        runtime_dir: paths::runtime_dir().display().to_string(),
        fuse_problem: fuse.check_mountable().err().map(|e| e.to_string()),
        fuse,
        id_mapping: id_mapping(),
        network: network(),
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&info)?);
        return Ok(0);
    }
    let yes_no = |b: bool| if b { "yes" } else { "no" };
    println!("Version:       {}", info.version);
    println!("Mode:          {} (uid {})", info.mode, info.uid);
    println!(
        "State root:    {} ({}{})",
        info.state_root,
        if given {
            "--root/STRATA_ROOT"
        } else {
            "default"
        },
        if info.state_root_exists {
            ""
        } else {
            "; not created yet"
        }
    );
    if let Some(p) = &info.state_root_problem {
        println!("               not usable: {p}");
    }
    println!("Runtime dir:   {}", info.runtime_dir);
    let f = &info.fuse;
    let mode = f.device_mode.as_deref().unwrap_or("?");
    let device = match (f.device, f.device_usable) {
        (false, _) => "missing".to_string(),
        (true, true) => format!("usable (mode {mode})"),
        (true, false) => format!("not usable (mode {mode})"),
    };
    println!("FUSE device:   {FUSE_DEVICE}: {device}");
    println!(
        "fusermount3:   {}",
        f.fusermount3
            .as_ref()
            .map_or("not installed".into(), |p| p.display().to_string())
    );
    println!(
        "allow_other:   {}",
        if info.mode == "root" {
            "yes (root)".to_string()
        } else {
            format!(
                "{} (user_allow_other in {FUSE_CONF}: {})",
                yes_no(f.user_allow_other),
                yes_no(f.user_allow_other)
            )
        }
    );
    println!(
        "Passthrough:   {}",
        if f.passthrough {
            "yes"
        } else {
            "no (reads go through strata; FUSE passthrough needs CAP_SYS_ADMIN in the initial user namespace)"
        }
    );
    println!(
        "io_uring:      {}",
        match f.io_uring {
            Some(true) => "yes (mounts take requests through per-CPU io_uring queues)".to_string(),
            Some(false) => format!(
                "off (mounts use /dev/fuse; as root `echo Y > {ENABLE_URING}` roughly halves what their metadata operations cost)"
            ),
            None => "no (the kernel has no FUSE over io_uring; Linux 6.14+)".to_string(),
        }
    );
    if let Some(p) = &info.fuse_problem {
        println!("Mounts:        not possible: {p}");
    } else {
        println!("Mounts:        possible");
    }
    println!("Container ids: {}", info.id_mapping);
    println!("Network:       {}", info.network);
    Ok(0)
}

/// What `run` maps: nothing as root, else root to the user and the subordinate ranges.
fn id_mapping() -> String {
    use crate::runtime::userns::IdMaps;
    if paths::Mode::current() == paths::Mode::Root {
        return "the host's (root)".into();
    }
    let m = IdMaps::of_current_user();
    let sub: u64 = m.uids.iter().skip(1).map(|r| u64::from(r.count)).sum();
    if m.maps_subordinate() {
        format!(
            "root is uid {}, 1..={sub} your subordinate uids",
            paths::euid()
        )
    } else if m.subordinate() {
        "only your uid, as root (newuidmap/newgidmap missing: Debian package uidmap)".into()
    } else {
        "only your uid, as root (no range in /etc/subuid and /etc/subgid)".into()
    }
}

/// The default network of this user's containers.
fn network() -> String {
    if paths::Mode::current() == paths::Mode::Root {
        return "bridge strata0 (iptables)".into();
    }
    let tun = rustix::fs::access(
        "/dev/net/tun",
        rustix::fs::Access::READ_OK | rustix::fs::Access::WRITE_OK,
    )
    .is_ok();
    let (pasta, slirp) = (
        crate::net::pasta::available(),
        crate::net::slirp::available(),
    );
    match (tun, pasta, slirp) {
        (true, true, _) => "pasta".into(),
        (true, false, true) => "slirp4netns (pasta is not installed)".into(),
        (_, false, false) => {
            "neither pasta (Debian package passt) nor slirp4netns installed: only --network none/host"
                .into()
        }
        (false, _, _) => {
            "/dev/net/tun is not open to you, which pasta and slirp4netns need: only --network none/host"
                .into()
        }
    }
}

//! User networks without root: one network namespace per user (podman 5's "rootless netns")
//! holds the bridges, veths and iptables rules of the user's networks, exactly as root's
//! live in the host's. It belongs to a user namespace of its own, which the containers on
//! those networks share (a veth can only join two namespaces of one owner), and it reaches
//! the outside through pasta.
//!
//! Owns that namespace's holder (a `sleep infinity` in it, started on demand), its pasta, the
//! record of both under the user's runtime directory, and the list of containers that use it;
//! the holder and pasta end when the last such container goes. Every command net runs goes
//! into that namespace (see [`command_prefix`]). Must never touch the host's links or rules:
//! an ordinary user cannot, and everything here runs as that user.

use std::ffi::CString;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tracing::{info, info_span};

use super::helper::Helper;
use super::{MEMBER_LOCK, NetError, io_err};
use crate::sys::container::{self as csys, Fork};

/// The holder's record in [`super::run_dir`].
const HOLDER: &str = "holder.json";
/// The containers that use the namespace, one file per container ID holding its directory.
const USERS: &str = "users";

/// The process holding the namespace and the pasta connecting it.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Holder {
    holder: Helper,
    pasta: Helper,
}

fn holder_record() -> Option<Holder> {
    let t = std::fs::read(super::run_dir().join(HOLDER)).ok()?;
    let h: Holder = serde_json::from_slice(&t).ok()?;
    h.holder.runs().then_some(h)
}

/// The user namespace and network namespace of the running holder, if any.
pub fn namespaces() -> Option<(PathBuf, PathBuf)> {
    let h = holder_record()?;
    Some((
        PathBuf::from(format!("/proc/{}/ns/user", h.holder.pid)),
        PathBuf::from(format!("/proc/{}/ns/net", h.holder.pid)),
    ))
}

/// What net's commands are prefixed with so that they act in the user's network namespace
/// (empty as root, or while no holder runs). A caller already in the holder's user
/// namespace (a shim of a container on a user network) only enters the network namespace.
pub fn command_prefix() -> Vec<String> {
    if crate::paths::Mode::current() == crate::paths::Mode::Root {
        return vec![];
    }
    let Some((user, net)) = namespaces() else {
        return vec![];
    };
    let mut v = vec!["nsenter".to_string()];
    if !same_namespace(&user, Path::new("/proc/self/ns/user")) {
        v.push(format!("--user={}", user.display()));
        v.push("--preserve-credentials".into());
    }
    v.push(format!("--net={}", net.display()));
    v.push("--".into());
    v
}

fn same_namespace(a: &Path, b: &Path) -> bool {
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(x), Ok(y)) => {
            use std::os::unix::fs::MetadataExt;
            x.ino() == y.ino() && x.dev() == y.dev()
        }
        _ => false,
    }
}

/// Writes the id maps of a new user namespace's first process (the runtime's, which knows
/// the user's subordinate ids).
pub type MapIds<'a> = &'a dyn Fn(i32) -> Result<(), String>;

/// Makes sure the user's network namespace runs and records container `id` (directory
/// `dir`) as one of its users; returns the path of its user namespace, which the container
/// must be created in. Call single-threaded (it forks).
pub fn enter(id: &str, dir: &Path, map_ids: MapIds<'_>) -> Result<PathBuf, NetError> {
    let _l = super::lock()?;
    let _s = info_span!("rootless_netns", id = super::short(id)).entered();
    let users = super::run_dir().join(USERS);
    std::fs::create_dir_all(&users).map_err(io_err(&users))?;
    let up = users.join(id);
    std::fs::write(&up, dir.as_os_str().as_encoded_bytes()).map_err(io_err(&up))?;
    let h = match holder_record() {
        Some(h) => h,
        None => match start_holder(map_ids) {
            Ok(h) => h,
            Err(e) => {
                let _ = std::fs::remove_file(&up);
                return Err(e);
            }
        },
    };
    Ok(PathBuf::from(format!("/proc/{}/ns/user", h.holder.pid)))
}

/// Container `id` no longer uses the namespace; the last one out ends it. Call with the net
/// lock held.
pub(super) fn leave(id: &str) {
    let users = super::run_dir().join(USERS);
    let _ = std::fs::remove_file(users.join(id));
    if live_users().is_empty() {
        stop_holder();
    }
}

/// The containers recorded as users whose shim still runs (stale entries are dropped).
fn live_users() -> Vec<String> {
    let users = super::run_dir().join(USERS);
    let Ok(rd) = std::fs::read_dir(&users) else {
        return vec![];
    };
    let mut live = Vec::new();
    for e in rd.flatten() {
        let dir = std::fs::read(e.path())
            .map(|b| PathBuf::from(String::from_utf8_lossy(&b).into_owned()))
            .unwrap_or_default();
        if crate::sys::lock_held(&dir.join(MEMBER_LOCK)) {
            live.push(e.file_name().to_string_lossy().into_owned());
        } else {
            let _ = std::fs::remove_file(e.path());
        }
    }
    live
}

fn start_holder(map_ids: MapIds<'_>) -> Result<Holder, NetError> {
    let fail = |msg: String| NetError::Rootless(format!("the user's network namespace: {msg}"));
    // The `sleep` that holds the namespace: a fresh process image with no descriptor of ours.
    let sleep =
        crate::paths::system_program("sleep").ok_or_else(|| fail("no sleep binary".into()))?;
    let (go_r, go_w) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)
        .map_err(|e| fail(format!("pipe: {e}")))?;
    use rustix::thread::UnshareFlags as U;
    let pid = match csys::fork_into(U::NEWUSER | U::NEWNET) {
        Ok(Fork::Child) => {
            drop(go_w);
            // Wait for the id maps, then hold the namespace until killed.
            let mut b = [0u8; 1];
            if !matches!(rustix::io::read(&go_r, &mut b), Ok(1)) {
                csys::exit_now(1);
            }
            let _ = rustix::process::setsid();
            let _ = csys::interface_up("lo");
            let _ = csys::cloexec_from(0);
            let null = rustix::fs::open(
                "/dev/null",
                rustix::fs::OFlags::RDWR,
                rustix::fs::Mode::empty(),
            );
            if let Ok(n) = &null {
                let _ = rustix::stdio::dup2_stdin(n);
                let _ = rustix::stdio::dup2_stdout(n);
                let _ = rustix::stdio::dup2_stderr(n);
            }
            let (Ok(path), Ok(a0), Ok(a1)) = (
                CString::new(sleep.as_os_str().as_encoded_bytes()),
                CString::new("sleep"),
                CString::new("infinity"),
            ) else {
                csys::exit_now(1)
            };
            let _ = csys::execve(&path, &[a0, a1], &[]);
            csys::exit_now(1)
        }
        Ok(Fork::Parent(p)) => p,
        Err(e) => return Err(fail(format!("creating it: {e}"))),
    };
    drop(go_r);
    let kill = |pid: i32| {
        if let Some(p) = rustix::process::Pid::from_raw(pid) {
            let _ = rustix::process::kill_process(p, rustix::process::Signal::KILL);
            let _ = crate::sys::wait_exit(pid);
        }
    };
    if let Err(e) = map_ids(pid) {
        kill(pid);
        return Err(fail(e));
    }
    if rustix::io::write(&go_w, b"g").is_err() {
        kill(pid);
        return Err(fail("its holder died".into()));
    }
    drop(go_w);
    // pasta connects it to the outside (no port of the host forwarded: published ports of
    // user networks go through strata's own proxy).
    let pasta = match super::pasta::connect_holder(pid) {
        Ok(p) => p,
        Err(e) => {
            kill(pid);
            return Err(e);
        }
    };
    let h = Holder {
        holder: Helper::of(pid),
        pasta,
    };
    let p = super::run_dir().join(HOLDER);
    if let Err(e) = std::fs::write(&p, serde_json::to_vec(&h).expect("serializable")) {
        stop(&h);
        return Err(io_err(&p)(e));
    }
    info!(
        holder = pid,
        pasta = h.pasta.pid,
        "user network namespace started"
    );
    Ok(h)
}

fn stop(h: &Holder) {
    h.pasta.end();
    h.holder.end();
}

fn stop_holder() {
    let p = super::run_dir().join(HOLDER);
    if let Some(h) = std::fs::read(&p)
        .ok()
        .and_then(|t| serde_json::from_slice::<Holder>(&t).ok())
    {
        stop(&h);
        info!(holder = h.holder.pid, "user network namespace ended");
    }
    let _ = std::fs::remove_file(&p);
}

/// Joins the user namespace at `path` (this process, for good): the shim of a container on a
/// user network, before it clones the container's init.
pub fn join(path: &Path) -> Result<(), NetError> {
    let f = std::fs::File::open(path).map_err(io_err(path))?;
    rustix::thread::move_into_link_name_space(
        f.as_fd(),
        Some(rustix::thread::LinkNameSpaceType::User),
    )
    .map_err(|e| {
        NetError::Rootless(format!(
            "joining the user's network namespace: {}",
            std::io::Error::from(e)
        ))
    })
}

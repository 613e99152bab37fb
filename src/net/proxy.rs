//! Published TCP ports of containers on user networks without root: a userspace proxy in the
//! container's shim (Docker's userland proxy, rootlesskit's port driver). It listens on the
//! host's port and, for each connection, connects from inside the user's network namespace
//! to the container's address and copies both ways.
//!
//! Owns its threads only: they end with the shim (when the container goes, which also frees
//! the ports). Must never connect anywhere but the container's address and port.

use std::fs::File;
use std::io;
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::path::Path;
use std::sync::mpsc;
use std::time::Duration;

use tracing::{info, warn};

use super::NetError;
use super::ports::Mapping;

/// How long a connection to the container may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

type Request = (SocketAddr, mpsc::Sender<io::Result<TcpStream>>);

/// Starts proxying every TCP mapping of `maps` to `target` (the container's address), whose
/// network namespace is reached through `netns`. Returns once every host port listens.
pub fn serve(maps: &[Mapping], target: Ipv4Addr, netns: &Path) -> Result<(), NetError> {
    if maps.is_empty() {
        return Ok(());
    }
    if let Some(m) = maps.iter().find(|m| m.proto != "tcp") {
        return Err(NetError::Rootless(format!(
            "{}/{}: only TCP ports can be published on user networks without root for now",
            m.host_port, m.proto
        )));
    }
    let connector = connector(netns)?;
    for m in maps {
        let ip = if m.host_ip.is_empty() {
            "0.0.0.0"
        } else {
            m.host_ip.as_str()
        };
        let listener = TcpListener::bind((ip, m.host_port))
            .map_err(|e| NetError::PortInUse(format!("{ip}:{}/tcp ({e})", m.host_port)))?;
        let to = SocketAddr::from((target, m.container_port));
        let connector = connector.clone();
        std::thread::Builder::new()
            .name(format!("proxy-{}", m.host_port))
            .spawn(move || accept_loop(listener, to, connector))
            .map_err(|e| NetError::Rootless(format!("starting the port proxy: {e}")))?;
        info!(port = m.host_port, %to, "proxying");
    }
    Ok(())
}

/// A thread inside the user's network namespace that makes the connections to containers.
fn connector(netns: &Path) -> Result<mpsc::Sender<Request>, NetError> {
    let ns = File::open(netns).map_err(super::io_err(netns))?;
    let (tx, rx) = mpsc::channel::<Request>();
    let (ready_tx, ready_rx) = mpsc::channel();
    std::thread::Builder::new()
        .name("proxy-connector".into())
        .spawn(move || {
            // Only this thread changes its network namespace.
            let joined = rustix::thread::move_into_link_name_space(
                ns.as_fd(),
                Some(rustix::thread::LinkNameSpaceType::Network),
            );
            let _ = ready_tx.send(joined.map_err(io::Error::from));
            for (addr, reply) in rx {
                let _ = reply.send(TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT));
            }
        })
        .map_err(|e| NetError::Rootless(format!("starting the port proxy: {e}")))?;
    match ready_rx.recv() {
        Ok(Ok(())) => Ok(tx),
        Ok(Err(e)) => Err(NetError::Rootless(format!(
            "the port proxy cannot enter the user's network namespace: {e}"
        ))),
        Err(_) => Err(NetError::Rootless("the port proxy died".into())),
    }
}

fn accept_loop(listener: TcpListener, to: SocketAddr, connector: mpsc::Sender<Request>) {
    for conn in listener.incoming() {
        let client = match conn {
            Ok(c) => c,
            Err(e) => {
                warn!(error = %e, "proxy accept");
                continue;
            }
        };
        let (tx, rx) = mpsc::channel();
        if connector.send((to, tx)).is_err() {
            return;
        }
        let server = match rx.recv() {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                warn!(%to, error = %e, "proxy connect");
                continue;
            }
            Err(_) => return,
        };
        let _ = std::thread::Builder::new()
            .name("proxy-conn".into())
            .spawn(move || splice(client, server));
    }
}

/// Copies both ways until each side has said all; then closes.
fn splice(client: TcpStream, server: TcpStream) {
    let (Ok(c2), Ok(s2)) = (client.try_clone(), server.try_clone()) else {
        return;
    };
    let up = std::thread::spawn(move || {
        let (mut from, mut to) = (c2, s2);
        let _ = io::copy(&mut from, &mut to);
        let _ = to.shutdown(Shutdown::Write);
    });
    let (mut from, mut to) = (server, client);
    let _ = io::copy(&mut from, &mut to);
    let _ = to.shutdown(Shutdown::Write);
    let _ = up.join();
}

//! Published ports of containers on user networks without root: a userspace proxy in the
//! container's shim (Docker's userland proxy, rootlesskit's port driver). For TCP it listens
//! on the host's port and, for each connection, connects from inside the user's network
//! namespace to the container's address and copies both ways; for UDP each client address
//! gets a socket of its own inside that namespace, dropped after a minute of silence.
//!
//! Owns its threads only: they end with the shim (when the container goes, which also frees
//! the ports). Must never connect anywhere but the container's address and port.

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsFd;
use std::path::Path;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tracing::{info, warn};

use super::NetError;
use super::ports::Mapping;

/// How long a connection to the container may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a UDP client may stay silent before its socket inside is dropped.
const UDP_IDLE: Duration = Duration::from_secs(60);

/// A socket the connector makes inside the namespace.
enum Made {
    Tcp(TcpStream),
    Udp(UdpSocket),
}

type Request = (SocketAddr, bool, mpsc::Sender<io::Result<Made>>);

/// Starts proxying every TCP mapping of `maps` to `target` (the container's address), whose
/// network namespace is reached through `netns`. Returns once every host port listens.
pub fn serve(maps: &[Mapping], target: Ipv4Addr, netns: &Path) -> Result<(), NetError> {
    if maps.is_empty() {
        return Ok(());
    }
    let connector = connector(netns)?;
    for m in maps {
        let ip = if m.host_ip.is_empty() {
            "0.0.0.0"
        } else {
            m.host_ip.as_str()
        };
        let in_use =
            |e: io::Error| NetError::PortInUse(format!("{ip}:{}/{} ({e})", m.host_port, m.proto));
        let to = SocketAddr::from((target, m.container_port));
        let connector = connector.clone();
        let spawned = if m.proto == "udp" {
            let sock = UdpSocket::bind((ip, m.host_port)).map_err(in_use)?;
            std::thread::Builder::new()
                .name(format!("proxy-udp-{}", m.host_port))
                .spawn(move || udp_loop(sock, to, connector))
        } else {
            let listener = TcpListener::bind((ip, m.host_port)).map_err(in_use)?;
            std::thread::Builder::new()
                .name(format!("proxy-{}", m.host_port))
                .spawn(move || accept_loop(listener, to, connector))
        };
        spawned.map_err(|e| NetError::Rootless(format!("starting the port proxy: {e}")))?;
        info!(port = m.host_port, proto = m.proto, %to, "proxying");
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
            for (addr, udp, reply) in rx {
                let made = if udp {
                    UdpSocket::bind(("0.0.0.0", 0))
                        .and_then(|s| s.connect(addr).map(|()| Made::Udp(s)))
                } else {
                    TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT).map(Made::Tcp)
                };
                let _ = reply.send(made);
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
        let server = match make(&connector, to, false) {
            Some(Ok(Made::Tcp(s))) => s,
            Some(Ok(Made::Udp(_))) => continue,
            Some(Err(e)) => {
                warn!(%to, error = %e, "proxy connect");
                continue;
            }
            None => return,
        };
        let _ = std::thread::Builder::new()
            .name("proxy-conn".into())
            .spawn(move || splice(client, server));
    }
}

/// Asks the connector for a socket to `to`; `None` once it is gone.
fn make(connector: &mpsc::Sender<Request>, to: SocketAddr, udp: bool) -> Option<io::Result<Made>> {
    let (tx, rx) = mpsc::channel();
    connector.send((to, udp, tx)).ok()?;
    rx.recv().ok()
}

/// Relays datagrams: each client address gets its own socket inside, whose replies go back
/// to that client; a socket silent for [`UDP_IDLE`] is dropped.
fn udp_loop(host: UdpSocket, to: SocketAddr, connector: mpsc::Sender<Request>) {
    let host = Arc::new(host);
    let clients: Arc<Mutex<HashMap<SocketAddr, Arc<UdpSocket>>>> = Arc::default();
    let mut buf = vec![0u8; 65536];
    loop {
        let Ok((n, client)) = host.recv_from(&mut buf) else {
            continue;
        };
        let known = clients
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&client)
            .cloned();
        let inside = match known {
            Some(s) => s,
            None => {
                let s = match make(&connector, to, true) {
                    Some(Ok(Made::Udp(s))) => Arc::new(s),
                    Some(Err(e)) => {
                        warn!(%to, error = %e, "proxy udp socket");
                        continue;
                    }
                    Some(Ok(Made::Tcp(_))) => continue,
                    None => return,
                };
                let _ = s.set_read_timeout(Some(UDP_IDLE));
                clients
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(client, s.clone());
                let (back, host, clients, s2) = (client, host.clone(), clients.clone(), s.clone());
                let _ = std::thread::Builder::new()
                    .name("proxy-udp-reply".into())
                    .spawn(move || {
                        let mut buf = vec![0u8; 65536];
                        while let Ok(n) = s2.recv(&mut buf) {
                            let _ = host.send_to(&buf[..n], back);
                        }
                        clients
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .remove(&back);
                    });
                s
            }
        };
        let _ = inside.send(&buf[..n]);
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

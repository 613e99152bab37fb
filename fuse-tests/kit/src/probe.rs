//! Probing what containers serve, from the host: HTTP/1.0 GETs, bounded retries, and a UDP
//! socket inside a container's network namespace.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

/// `GET path` over HTTP/1.0 to `addr`, bounded; the body, or None.
pub fn http_get(addr: &str, path: &str) -> Option<String> {
    let a: SocketAddr = addr.parse().ok()?;
    let mut s = TcpStream::connect_timeout(&a, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(3))).ok()?;
    s.set_write_timeout(Some(Duration::from_secs(3))).ok()?;
    s.write_all(format!("GET {path} HTTP/1.0\r\n\r\n").as_bytes())
        .ok()?;
    let mut buf = Vec::new();
    s.take(1 << 20).read_to_end(&mut buf).ok()?;
    let text = String::from_utf8_lossy(&buf).into_owned();
    if !text.starts_with("HTTP/1.") || !text.contains(" 200 ") {
        return None;
    }
    text.split_once("\r\n\r\n").map(|(_, b)| b.to_string())
}

/// Retries `f` (bounded: 50 tries, 10 s) until it gives Some.
pub fn eventually<T>(what: &str, f: impl Fn() -> Option<T>) -> T {
    let end = Instant::now() + Duration::from_secs(10);
    for _ in 0..50 {
        if let Some(v) = f() {
            return v;
        }
        if Instant::now() > end {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    panic!("timed out waiting for {what}");
}

/// A UDP socket bound to `port` inside the network namespace of `pid`.
pub fn udp_socket_in(pid: i64, port: u16) -> UdpSocket {
    let ns = std::fs::File::open(format!("/proc/{pid}/ns/net")).expect("open netns");
    std::thread::spawn(move || {
        // Only this thread changes namespace; the socket keeps it.
        use std::os::fd::AsFd;
        rustix::thread::move_into_link_name_space(
            ns.as_fd(),
            Some(rustix::thread::LinkNameSpaceType::Network),
        )
        .expect("setns");
        UdpSocket::bind(("0.0.0.0", port)).expect("bind in the container")
    })
    .join()
    .unwrap()
}

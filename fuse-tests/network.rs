//! Container networking with real namespaces, bridges and iptables (root): published ports
//! on loopback and on the bridge's host address, UDP, unpublished ports, hairpin, restart,
//! user networks (isolation, names and aliases), `network rm` refusal, and leaks after stop,
//! rm and a killed shim.
//!
//! Hygiene: traffic goes only to 127.0.0.1 and to addresses of the bridges strata creates;
//! every wait is bounded; each test root removes its containers and networks on drop, even
//! when the test fails. Host ports are distinct per test (tests run in parallel).

use std::net::UdpSocket;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;
use strata_testkit::*;

const IMAGE: &str = "strata-sample:latest";
const DEADLINE: Duration = Duration::from_secs(30);
/// The host's address on the default bridge strata0.
const GATEWAY: &str = "10.213.0.1";

/// Runs strata with a deadline (the CLI is killed by PID when it passes).
fn st(root: &Path, args: &[&str]) -> Out {
    strata_io(root, args, None, DEADLINE)
}

/// strata's per-container rules of `id` in iptables.
fn rules_of(id: &str) -> Vec<String> {
    let out = Command::new("iptables-save")
        .output()
        .expect("iptables-save");
    let tag = format!("strata:{}", &id[..12]);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains(&tag))
        .map(String::from)
        .collect()
}

fn veth_of(id: &str) -> bool {
    Path::new("/sys/class/net")
        .join(format!("vs{}", &id[..10]))
        .exists()
}

fn lease_of(id: &str) -> bool {
    std::fs::read_dir("/run/strata/net/leases")
        .map(|rd| {
            rd.flatten().any(|e| {
                std::fs::read_to_string(e.path())
                    .map(|t| t.contains(id))
                    .unwrap_or(false)
            })
        })
        .unwrap_or(false)
}

fn assert_no_leak(id: &str) {
    assert!(rules_of(id).is_empty(), "rules left: {:?}", rules_of(id));
    assert!(!veth_of(id), "veth of {id} left");
    assert!(!lease_of(id), "lease of {id} left");
}

#[test]
fn published_tcp_and_udp_ports_loopback_bridge_address_hairpin_restart() {
    let r = ContainerRoot::new();
    r.ok(&[
        "run",
        "-d",
        "--name",
        "web",
        "-p",
        "18280:80",
        "-p",
        "18281:9000/udp",
        "-p",
        "81",
        IMAGE,
        "sh",
        "-c",
        "httpd -p 80 -h /etc; httpd -p 81 -h /etc; httpd -p 82 -h /etc; sleep 1000",
    ]);
    let id = r.id("web");
    let hostname = &id[..12];
    // Published: from localhost, from the host's bridge address.
    let body = eventually("web on 127.0.0.1:18280", || {
        http_get("127.0.0.1:18280", "/hostname")
    });
    assert_eq!(body.trim(), hostname);
    let body =
        http_get(&format!("{GATEWAY}:18280"), "/hostname").expect("web on the bridge address");
    assert_eq!(body.trim(), hostname);
    // `-p 81`: a random host port, listed by `port`.
    let ports = r.ok(&["port", "web"]);
    assert!(ports.contains("80/tcp -> 0.0.0.0:18280"), "{ports}");
    assert!(ports.contains("9000/udp -> 0.0.0.0:18281"), "{ports}");
    let random = r.ok(&["port", "web", "81"]);
    let random = random.trim().rsplit(':').next().unwrap().to_string();
    let body = http_get(&format!("127.0.0.1:{random}"), "/hostname").expect("random port");
    assert_eq!(body.trim(), hostname);
    // Unpublished: port 82 only on the container's own address.
    let ip = r.ip("web");
    assert!(ip.starts_with("10.213.0."), "{ip}");
    let hosts = r.ok(&["exec", "web", "cat", "/etc/hosts"]);
    assert!(hosts.contains(&format!("{ip}\t{hostname}\n")), "{hosts}");
    assert!(http_get(&format!("{ip}:82"), "/hostname").is_some());
    assert!(http_get("127.0.0.1:82", "/hostname").is_none());
    assert!(http_get(&format!("{GATEWAY}:82"), "/hostname").is_none());
    // UDP through the published port, to a socket the test opens in the container's
    // network namespace (busybox nc has no UDP).
    let pid = r.inspect("web")["State"]["Pid"].as_i64().unwrap();
    let server = udp_socket_in(pid, 9000);
    server
        .set_read_timeout(Some(Duration::from_secs(3)))
        .unwrap();
    let u = UdpSocket::bind("127.0.0.1:0").unwrap();
    u.send_to(b"ping-udp", "127.0.0.1:18281").unwrap();
    let mut buf = [0u8; 64];
    let (n, _) = server.recv_from(&mut buf).expect("the datagram");
    assert_eq!(&buf[..n], b"ping-udp");
    drop(server);
    // Hairpin: another container through the host's published port.
    let o = r.run(&[
        "run",
        "--rm",
        IMAGE,
        "wget",
        "-qO-",
        &format!("http://{GATEWAY}:18280/hostname"),
    ]);
    assert_eq!(o.out.trim(), hostname, "{o:?}");
    // The container reaches the outside through the gateway (masquerade path).
    let o = r.run(&["exec", "web", "ip", "route"]);
    assert!(o.out.contains(&format!("default via {GATEWAY}")), "{o:?}");
    // Restart keeps the mapping.
    r.ok(&["restart", "-t", "1", "web"]);
    let body = eventually("web after restart", || {
        http_get("127.0.0.1:18280", "/hostname")
    });
    assert_eq!(body.trim(), hostname);
    // Stop: nothing left; start again; rm: nothing left.
    r.ok(&["stop", "-t", "1", "web"]);
    assert_no_leak(&id);
    assert!(http_get("127.0.0.1:18280", "/hostname").is_none());
    r.ok(&["start", "web"]);
    eventually("web after start", || {
        http_get("127.0.0.1:18280", "/hostname")
    });
    r.ok(&["rm", "-f", "web"]);
    assert_no_leak(&id);
}

#[test]
fn a_host_port_in_use_is_a_clear_error_and_leaves_nothing() {
    let r = ContainerRoot::new();
    let _busy = std::net::TcpListener::bind("0.0.0.0:18290").expect("bind 18290");
    let o = r.run(&[
        "run", "-d", "--name", "clash", "-p", "18290:80", IMAGE, "sleep", "100",
    ]);
    assert_ne!(o.code, 0);
    assert!(o.err.contains("18290") && o.err.contains("in use"), "{o:?}");
    let id = r.id("clash");
    assert_no_leak(&id);
    // Another container's mapping is in use too.
    r.ok(&[
        "run", "-d", "--name", "first", "-p", "18291:80", IMAGE, "sleep", "100",
    ]);
    let o = r.run(&[
        "run", "-d", "--name", "second", "-p", "18291:80", IMAGE, "sleep", "100",
    ]);
    assert_ne!(o.code, 0);
    assert!(o.err.contains("18291"), "{o:?}");
    assert_no_leak(&r.id("second"));
    assert_eq!(rules_of(&r.id("first")).len(), 1);
    let ps = r.ok(&["ps"]);
    assert!(ps.contains("0.0.0.0:18291->80/tcp"), "{ps}");
    // -P: the image exposes 80/tcp; a free host port serves it.
    r.ok(&[
        "run", "-d", "--name", "all", "-P", IMAGE, "httpd", "-f", "-p", "80", "-h", "/etc",
    ]);
    let p = r.ok(&["port", "all", "80/tcp"]);
    let port = p.trim().rsplit(':').next().unwrap().to_string();
    let body = eventually("-P port", || {
        http_get(&format!("127.0.0.1:{port}"), "/hostname")
    });
    assert_eq!(body.trim(), &r.id("all")[..12]);
}

#[test]
fn host_and_none_modes() {
    let r = ContainerRoot::new();
    let o = r.run(&[
        "run",
        "--rm",
        "--network",
        "none",
        IMAGE,
        "cat",
        "/proc/net/dev",
    ]);
    assert!(o.out.contains("lo:") && !o.out.contains("eth0"), "{o:?}");
    let o = r.run(&[
        "run",
        "--rm",
        "--network",
        "host",
        "-p",
        "1:1",
        IMAGE,
        "cat",
        "/proc/net/dev",
    ]);
    assert!(o.err.contains("discarded"), "{o:?}");
    let host = std::fs::read_to_string("/proc/net/dev").unwrap();
    let first_host_if = host
        .lines()
        .nth(2)
        .unwrap()
        .split(':')
        .next()
        .unwrap()
        .trim()
        .to_string();
    assert!(o.out.contains(&format!("{first_host_if}:")), "{o:?}");
}

#[test]
fn user_networks_resolve_names_and_aliases_and_are_isolated() {
    let r = ContainerRoot::new();
    let suffix = std::process::id();
    let (na, nb) = (format!("tna{suffix}"), format!("tnb{suffix}"));
    r.ok(&["network", "create", &na]);
    r.ok(&["network", "create", &nb]);
    let ls = r.ok(&["network", "ls"]);
    assert!(ls.contains(&na) && ls.contains(&nb), "{ls}");
    let serve = "httpd -f -p 5000 -h /etc";
    r.ok(&[
        "run",
        "-d",
        "--name",
        "alpha",
        "--network",
        &na,
        IMAGE,
        "sh",
        "-c",
        serve,
    ]);
    r.ok(&[
        "run",
        "-d",
        "--name",
        "beta",
        "--network",
        &na,
        "--network-alias",
        "bee",
        IMAGE,
        "sh",
        "-c",
        serve,
    ]);
    r.ok(&[
        "run",
        "-d",
        "--name",
        "gamma",
        "--network",
        &nb,
        IMAGE,
        "sh",
        "-c",
        serve,
    ]);
    let (ida, idb) = (r.id("alpha"), r.id("beta"));
    // Both ways: the first member learns of the second as it starts (hosts kept in sync).
    let o = eventually("alpha → bee", || {
        let o = r.run(&["exec", "alpha", "wget", "-qO-", "http://bee:5000/hostname"]);
        (o.code == 0).then_some(o.out)
    });
    assert_eq!(o.trim(), &idb[..12]);
    let o = r.run(&["exec", "beta", "wget", "-qO-", "http://alpha:5000/hostname"]);
    assert_eq!(o.out.trim(), &ida[..12], "{o:?}");
    // Another network: neither by name nor by address.
    let ip_a = r.ip("alpha");
    let o = r.run(&["exec", "gamma", "nc", "-w", "2", &ip_a, "5000"]);
    assert_ne!(o.code, 0, "{o:?}");
    let o = r.run(&["exec", "gamma", "cat", "/etc/hosts"]);
    assert!(!o.out.contains("alpha"), "{o:?}");
    // The default bridge cannot reach it either.
    let o = r.run(&["run", "--rm", IMAGE, "nc", "-w", "2", &ip_a, "5000"]);
    assert_ne!(o.code, 0, "{o:?}");
    // In use: refused; peers leave the hosts file as they stop.
    let o = r.run(&["network", "rm", &na]);
    assert_ne!(o.code, 0);
    assert!(o.err.contains("in use"), "{o:?}");
    let insp: Value = serde_json::from_str(&r.ok(&["network", "inspect", &na])).unwrap();
    assert_eq!(insp[0]["Containers"].as_object().unwrap().len(), 2);
    r.ok(&["stop", "-t", "1", "beta"]);
    let o = r.run(&["exec", "alpha", "cat", "/etc/hosts"]);
    assert!(!o.out.contains("bee"), "{o:?}");
    r.ok(&["rm", "-f", "alpha", "beta", "gamma"]);
    r.ok(&["network", "rm", &na, &nb]);
    assert_no_leak(&ida);
    assert_no_leak(&idb);
}

#[test]
fn a_killed_shim_and_many_cycles_leave_no_rule_veth_or_lease() {
    let r = ContainerRoot::new();
    r.ok(&[
        "run", "-d", "--name", "victim", "-p", "18295:80", IMAGE, "httpd", "-f", "-p", "80", "-h",
        "/etc",
    ]);
    let id = r.id("victim");
    let shim = r.inspect("victim")["ShimPid"].as_i64().unwrap();
    assert!(!rules_of(&id).is_empty());
    Command::new("kill")
        .arg("-9")
        .arg(shim.to_string())
        .status()
        .unwrap();
    let end = Instant::now() + Duration::from_secs(10);
    while Path::new(&format!("/proc/{shim}")).exists() && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(20));
    }
    // The next command reconciles.
    let ps = r.ok(&["ps", "-a"]);
    assert!(ps.contains("Exited"), "{ps}");
    assert_no_leak(&id);
    r.ok(&["start", "victim"]);
    eventually("victim after restart", || {
        http_get("127.0.0.1:18295", "/hostname")
    });
    r.ok(&["rm", "-f", "victim"]);
    assert_no_leak(&id);
    // Run/rm cycles with published ports, some concurrently.
    let mut ids = Vec::new();
    for round in 0..4 {
        let handles: Vec<_> = (0..3)
            .map(|i| {
                let root = r.path().to_path_buf();
                std::thread::spawn(move || {
                    let port = format!("{}:80", 18300 + round * 3 + i);
                    st(
                        &root,
                        &[
                            "run", "-d", "-p", &port, "-p", "90/udp", IMAGE, "sleep", "100",
                        ],
                    )
                })
            })
            .collect();
        for h in handles {
            let o = h.join().unwrap();
            assert_eq!(o.code, 0, "{o:?}");
            ids.push(o.out.trim().to_string());
        }
        // No two running containers share an address.
        let mut ips: Vec<String> = ids.iter().rev().take(3).map(|i| r.ip(i)).collect();
        ips.sort();
        ips.dedup();
        assert_eq!(ips.len(), 3);
        for id in ids.iter().rev().take(3) {
            r.ok(&["rm", "-f", id]);
        }
    }
    for id in &ids {
        assert_no_leak(id);
    }
}

//! Containers of an ordinary user (issue 10, part 3 and the default network of part 4): a
//! user namespace mapping root to the user and ids 1… to its subordinate range, the FUSE
//! rootfs mounted inside it, Docker's lifecycle, `exec`, volumes, published ports through
//! pasta, and the sandbox (no host devices, no host loopback, seccomp) — run as the
//! unprivileged user `strata-rootless` with a fresh HOME per test (see the kit's `rootless`).
//!
//! Hygiene: traffic only to 127.0.0.1; host ports distinct per test; each session removes
//! the user's containers on drop, even when the test failed.

use std::net::TcpListener;

use strata_testkit::rootless::UserSession;
use strata_testkit::*;

const IMAGE: &str = "strata-sample:latest";

/// A session with the sample image loaded into the user's default state root.
fn loaded() -> UserSession {
    let u = UserSession::new();
    let tar = u.give(&sample_image().join("sample.oci.tar"), "sample.oci.tar");
    u.strata_ok(&["load", tar.to_str().unwrap()]);
    u
}

/// The user's first subordinate uid range (`start`, `count`), as the kit set it up.
fn subuid_range() -> (u64, u64) {
    let text = std::fs::read_to_string("/etc/subuid").unwrap();
    let line = text
        .lines()
        .find(|l| l.starts_with(&format!("{}:", rootless::USER)))
        .expect("the test user's subuid line");
    let f: Vec<&str> = line.split(':').collect();
    (f[1].parse().unwrap(), f[2].parse().unwrap())
}

/// A JSON record `file` in the state directory of container `id`.
fn record(u: &UserSession, id: &str, file: &str) -> serde_json::Value {
    let path = u.state_root().join("containers").join(id).join(file);
    let text = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_slice(&text).unwrap()
}

/// Whether process `pid` (host) still runs (a zombie waiting to be reaped does not).
fn alive(pid: i64) -> bool {
    let Ok(pid) = i32::try_from(pid) else {
        return false;
    };
    strata::sys::process_start_time(pid).is_some_and(|s| strata::sys::process_runs(pid, s))
}

#[test]
fn root_inside_is_the_user_outside_and_image_owners_stay_distinct() {
    let u = loaded();
    let out = u.strata_ok(&[
        "run",
        "--rm",
        "--network",
        "none",
        IMAGE,
        "sh",
        "-c",
        "id -u; cat /proc/self/uid_map; stat -c %u:%g /home/user /etc/passwd",
    ]);
    let lines: Vec<Vec<&str>> = out
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(lines[0], ["0"], "{out}");
    let (start, count) = subuid_range();
    assert_eq!(lines[1], ["0", &u.user.uid.to_string(), "1"], "{out}");
    assert_eq!(
        lines[2],
        ["1", &start.to_string(), &count.to_string()],
        "{out}"
    );
    // The image's own owners, not the user's: user (1000) and root.
    assert_eq!(lines[3], ["1000:1000"], "{out}");
    assert_eq!(lines[4], ["0:0"], "{out}");
    // A process of another uid inside writes files of that uid, in the user's layer.
    let out = u.strata_ok(&[
        "run",
        "--rm",
        "--network",
        "none",
        "-u",
        "1000",
        IMAGE,
        "sh",
        "-c",
        "id -u; touch /tmp/mine && stat -c %u /tmp/mine",
    ]);
    assert_eq!(out.split_whitespace().collect::<Vec<_>>(), ["1000", "1000"]);
}

#[test]
fn lifecycle_keeps_the_layer_until_rm_and_exec_joins_the_namespaces() {
    let u = loaded();
    let id = u.strata_ok(&[
        "run",
        "-d",
        "--name",
        "keep",
        "--network",
        "none",
        IMAGE,
        "sh",
        "-c",
        "echo kept > /data.txt; while :; do sleep 1; done",
    ]);
    let id = id.trim();
    let ex = u.strata(&["exec", "keep", "sh", "-c", "cat /data.txt; exit 7"]);
    assert_eq!((ex.code, ex.out.trim()), (7, "kept"), "{ex:?}");
    let ex = u.strata(&["exec", "keep", "no-such-program"]);
    assert_eq!(ex.code, 127, "{ex:?}");
    // exec runs in the container's pid namespace: its pid 1 is the command.
    let ps = u.strata_ok(&["exec", "keep", "cat", "/proc/1/cmdline"]);
    assert!(ps.starts_with("sh\0-c\0echo kept"), "{ps:?}");
    let init_pid = {
        let v: serde_json::Value =
            serde_json::from_str(&u.strata_ok(&["inspect", "keep"])).unwrap();
        v[0]["State"]["Pid"].as_i64().unwrap()
    };
    assert!(alive(init_pid));
    u.strata_ok(&["stop", "-t", "1", "keep"]);
    assert!(!alive(init_pid), "the container's init outlived stop");
    u.strata_ok(&["start", "keep"]);
    let ex = u.strata(&["exec", "keep", "cat", "/data.txt"]);
    assert_eq!((ex.code, ex.out.trim()), (0, "kept"), "{ex:?}");
    u.strata_ok(&["rm", "-f", "keep"]);
    assert!(!u.state_root().join("containers").join(id).exists());
    assert_eq!(u.strata_ok(&["ps", "-a", "-q"]), "");
    assert!(u.mounts().is_empty(), "{:?}", u.mounts());
}

#[test]
fn published_ports_and_volumes_work_through_pasta_and_go_with_the_container() {
    let u = loaded();
    let site = u.mkdir("site");
    std::fs::write(site.join("index.html"), "hello from a rootless container\n").unwrap();
    let port = "18391";
    let id = u.strata_ok(&[
        "run",
        "-d",
        "--name",
        "web",
        "-p",
        &format!("{port}:80"),
        "-v",
        &format!("{}:/www", site.display()),
        IMAGE,
        "httpd",
        "-f",
        "-p",
        "80",
        "-h",
        "/www",
    ]);
    let body = eventually("web on 127.0.0.1", || {
        http_get(&format!("127.0.0.1:{port}"), "/")
    });
    assert_eq!(body, "hello from a rootless container\n");
    assert_eq!(
        u.strata_ok(&["port", "web"]).trim(),
        format!("80/tcp -> 0.0.0.0:{port}")
    );
    // Changes through the volume are the user's files on the host.
    u.strata_ok(&["exec", "web", "sh", "-c", "echo written > /www/new.txt"]);
    let meta = std::fs::metadata(site.join("new.txt")).unwrap();
    assert_eq!(
        std::os::unix::fs::MetadataExt::uid(&meta),
        u.user.uid,
        "root inside writes as the user outside"
    );
    let pasta_pid = record(&u, id.trim(), "pasta.json")["pid"].as_i64().unwrap();
    assert!(alive(pasta_pid));
    u.strata_ok(&["rm", "-f", "web"]);
    assert!(!alive(pasta_pid), "pasta outlived its container");
    // The host port is free again.
    TcpListener::bind(format!("0.0.0.0:{port}")).expect("the published port is released");
    assert!(
        site.join("new.txt").exists(),
        "the volume outlives the container"
    );
}

#[test]
fn the_sandbox_holds_without_root() {
    let u = loaded();
    // A service on the host's loopback that the container must not reach.
    let secret = TcpListener::bind("127.0.0.1:18392").unwrap();
    secret.set_nonblocking(true).unwrap();
    let out = u.strata(&[
        "run",
        "--rm",
        IMAGE,
        "sh",
        "-c",
        "grep -E '^(Seccomp|NoNewPrivs):' /proc/self/status; \
         if nc -w 2 127.0.0.1 18392 </dev/null; then echo REACHED-HOST-LOOPBACK; fi; \
         if mknod /tmp/disk b 8 0 2>/dev/null && head -c1 /tmp/disk >/dev/null 2>&1; then echo OPENED-DISK; fi; \
         if echo x > /proc/sys/kernel/hostname 2>/dev/null; then echo WROTE-PROC-SYS; fi; \
         if cat /proc/kcore >/dev/null 2>&1; then echo READ-KCORE; fi; echo done",
    ]);
    assert_eq!(out.code, 0, "{out:?}");
    let text = out.out;
    assert!(text.contains("Seccomp:\t2"), "{text}");
    assert!(text.contains("NoNewPrivs:\t1"), "{text}");
    for hole in [
        "REACHED-HOST-LOOPBACK",
        "OPENED-DISK",
        "WROTE-PROC-SYS",
        "READ-KCORE",
    ] {
        assert!(!text.contains(hole), "{hole}: {text}");
    }
    assert!(text.contains("done"), "{text}");
    assert!(
        secret.accept().is_err(),
        "nothing connected to the host's loopback"
    );
}

#[test]
fn host_and_none_networks_and_limits_without_delegation() {
    let u = loaded();
    let host_ifaces = std::fs::read_dir("/sys/class/net").unwrap().count();
    let out = u.strata_ok(&[
        "run",
        "--rm",
        "--network",
        "host",
        IMAGE,
        "sh",
        "-c",
        "ls /sys/class/net | wc -l",
    ]);
    assert_eq!(out.trim(), host_ifaces.to_string());
    let out = u.strata_ok(&[
        "run",
        "--rm",
        "--network",
        "none",
        IMAGE,
        "ls",
        "/sys/class/net",
    ]);
    assert_eq!(out.trim(), "lo");
    // Limits need a delegated cgroup v2 subtree, which this host does not give the user.
    let o = u.strata(&["run", "--rm", "--memory", "64m", IMAGE, "true"]);
    assert_eq!(o.code, 125, "{o:?}");
    assert!(o.err.contains("--memory"), "{o:?}");
    // Privileged host ports are root's.
    let o = u.strata(&["run", "--rm", "-p", "80:80", IMAGE, "true"]);
    assert_eq!(o.code, 125, "{o:?}");
    assert!(o.err.contains("ip_unprivileged_port_start"), "{o:?}");
}

#[test]
fn without_subordinate_ids_only_the_user_is_mapped_and_that_is_said_once() {
    let u = UserSession::new_as(rootless::RootlessUser::without_subids());
    let tar = u.give(&sample_image().join("sample.oci.tar"), "sample.oci.tar");
    u.strata_ok(&["load", tar.to_str().unwrap()]);
    let run = |args: &[&str]| {
        let mut v = vec!["run", "--rm", "--network", "none", IMAGE];
        v.extend_from_slice(args);
        u.strata(&v)
    };
    let first = run(&[
        "sh",
        "-c",
        "id -u; cat /proc/self/uid_map; stat -c %u /home/user",
    ]);
    assert_eq!(first.code, 0, "{first:?}");
    let words: Vec<&str> = first.out.split_whitespace().collect();
    assert_eq!(
        words,
        ["0", "0", &u.user.uid.to_string(), "1", "65534"],
        "{first:?}"
    );
    assert!(
        first.err.contains("map only your own user") && first.err.contains("/etc/subuid"),
        "{first:?}"
    );
    let again = run(&["true"]);
    assert_eq!(again.code, 0, "{again:?}");
    assert!(!again.err.contains("map only"), "said twice: {again:?}");
    // Another user inside cannot be switched to: a sentence that says why.
    let o = u.strata(&[
        "run",
        "--rm",
        "--network",
        "none",
        "-u",
        "1000",
        IMAGE,
        "true",
    ]);
    assert_eq!(o.code, 125, "{o:?}");
    assert!(o.err.contains("not mapped"), "{o:?}");
}

#[test]
fn user_networks_resolve_names_are_isolated_publish_ports_and_leave_nothing() {
    let u = loaded();
    let site = u.mkdir("site");
    std::fs::write(site.join("index.html"), "on a user network\n").unwrap();
    u.strata_ok(&["network", "create", "backend"]);
    u.strata_ok(&["network", "create", "other"]);
    let port = "18393";
    u.strata_ok(&[
        "run",
        "-d",
        "--name",
        "db",
        "--network",
        "backend",
        "--network-alias",
        "database",
        "-p",
        &format!("{port}:80"),
        "-v",
        &format!("{}:/www", site.display()),
        IMAGE,
        "httpd",
        "-f",
        "-p",
        "80",
        "-h",
        "/www",
    ]);
    // By name and alias on the same network.
    let out = u.strata_ok(&[
        "run",
        "--rm",
        "--network",
        "backend",
        IMAGE,
        "sh",
        "-c",
        "wget -q -O- http://db/ && wget -q -O- http://database/ && ping -c1 -W2 db >/dev/null && echo pinged",
    ]);
    assert_eq!(out, "on a user network\non a user network\npinged\n");
    // Another network reaches neither the name nor the address.
    let ip = {
        let v: serde_json::Value = serde_json::from_str(&u.strata_ok(&["inspect", "db"])).unwrap();
        v[0]["NetworkSettings"]["IPAddress"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    };
    assert!(ip.starts_with("10."), "{ip}");
    let out = u.strata_ok(&[
        "run",
        "--rm",
        "--network",
        "other",
        IMAGE,
        "sh",
        "-c",
        &format!(
            "if ping -c1 -W1 {ip} >/dev/null 2>&1; then echo REACHED; fi; \
             if wget -q -T 2 -O- http://db/ 2>/dev/null; then echo RESOLVED; fi; echo done"
        ),
    ]);
    assert_eq!(out, "done\n");
    // The published TCP port answers on the host's loopback (strata's proxy).
    let body = eventually("db on 127.0.0.1", || {
        http_get(&format!("127.0.0.1:{port}"), "/")
    });
    assert_eq!(body, "on a user network\n");
    // UDP through the proxy: a datagram to the host's port reaches the container's, and the
    // reply comes back to the sender.
    u.strata_ok(&[
        "run",
        "-d",
        "--name",
        "dns",
        "--network",
        "backend",
        "-p",
        "18394:5353/udp",
        IMAGE,
        "sleep",
        "300",
    ]);
    let pid = {
        let v: serde_json::Value = serde_json::from_str(&u.strata_ok(&["inspect", "dns"])).unwrap();
        v[0]["State"]["Pid"].as_i64().unwrap()
    };
    let inside = udp_socket_in(pid, 5353);
    inside
        .set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .unwrap();
    let client = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    client
        .set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .unwrap();
    let (got, from) = eventually("a datagram through the proxy", || {
        client.send_to(b"ping", "127.0.0.1:18394").ok()?;
        let mut buf = [0u8; 64];
        let (n, from) = inside.recv_from(&mut buf).ok()?;
        Some((buf[..n].to_vec(), from))
    });
    assert_eq!(got, b"ping");
    let mut buf = [0u8; 64];
    inside.send_to(b"pong", from).unwrap();
    let (n, _) = client.recv_from(&mut buf).expect("the reply");
    assert_eq!(&buf[..n], b"pong");
    u.strata_ok(&["rm", "-f", "dns"]);
    // The user's network namespace lives while a container uses it, and goes with the last.
    let holder: serde_json::Value = serde_json::from_slice(
        &std::fs::read(u.path("run/strata/net/holder.json")).expect("the holder's record"),
    )
    .unwrap();
    let holder_pid = holder["holder"]["pid"].as_i64().unwrap();
    let pasta_pid = holder["pasta"]["pid"].as_i64().unwrap();
    assert!(alive(holder_pid) && alive(pasta_pid));
    u.strata_ok(&["rm", "-f", "db"]);
    assert!(!u.path("run/strata/net/holder.json").exists());
    for _ in 0..100 {
        if !alive(holder_pid) && !alive(pasta_pid) {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert!(
        !alive(holder_pid),
        "the namespace's holder outlived the last container"
    );
    assert!(!alive(pasta_pid), "its pasta outlived the last container");
    TcpListener::bind(format!("0.0.0.0:{port}")).expect("the published port is released");
    u.strata_ok(&["network", "rm", "backend", "other"]);
    let ls = u.strata_ok(&["network", "ls"]);
    assert!(!ls.contains("backend") && !ls.contains("other"), "{ls}");
}

#[test]
fn slirp4netns_is_the_other_user_mode_network() {
    let u = loaded();
    let site = u.mkdir("site");
    std::fs::write(site.join("index.html"), "through slirp4netns\n").unwrap();
    let port = "18395";
    let id = u.strata_ok(&[
        "run",
        "-d",
        "--name",
        "web",
        "--network",
        "slirp4netns",
        "-p",
        &format!("{port}:80"),
        "-v",
        &format!("{}:/www", site.display()),
        IMAGE,
        "httpd",
        "-f",
        "-p",
        "80",
        "-h",
        "/www",
    ]);
    let addr = u.strata_ok(&["exec", "web", "ip", "-4", "-o", "addr", "show", "tap0"]);
    assert!(addr.contains("10.0.2.100/24"), "{addr}");
    let body = eventually("web through slirp4netns", || {
        http_get(&format!("127.0.0.1:{port}"), "/")
    });
    assert_eq!(body, "through slirp4netns\n");
    let slirp = record(&u, id.trim(), "slirp4netns.json")["pid"]
        .as_i64()
        .unwrap();
    assert!(alive(slirp));
    u.strata_ok(&["rm", "-f", "web"]);
    assert!(!alive(slirp), "slirp4netns outlived its container");
    TcpListener::bind(format!("0.0.0.0:{port}")).expect("the published port is released");
    // As root these are not networks: root's containers use bridges.
    let root = tempfile::tempdir().unwrap();
    strata_ok(
        root.path(),
        &[
            "load",
            sample_image().join("sample.oci.tar").to_str().unwrap(),
        ],
    );
    let o = strata_io(
        root.path(),
        &["create", "--network", "slirp4netns", IMAGE],
        None,
        DEADLINE,
    );
    assert_eq!(o.code, 125, "{o:?}");
    assert!(o.err.contains("without root"), "{o:?}");
}

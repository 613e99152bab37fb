//! The sandbox, attacked from inside real containers (root): device nodes made to reach the
//! host's disks, packets crafted for the host's 127.0.0.1, syscalls the seccomp profile
//! refuses; and the faults around it: a full state disk, a shim that dies without a word,
//! a reused address.
//!
//! The attacker is `fuse-tests/sandbox/attack.c`, built here with `cc -static` and
//! bind-mounted into the container (the sample image has only busybox). Every loop device,
//! mount, container and network a test makes is removed by a guard, even when it fails.

use std::net::{TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use sha2::{Digest as _, Sha256};
use strata_testkit::*;

const IMAGE: &str = "strata-sample:latest";

/// The attacker binary, built once per source version into the target dir; returns the
/// directory that holds it (bind-mount it at /atk).
fn attacker() -> PathBuf {
    let src = repo().join("fuse-tests/sandbox/attack.c");
    let text = std::fs::read(&src).expect("read attack.c");
    let stamp = hex::encode(&Sha256::digest(&text)[..8]);
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("attack-{stamp}"));
    let lock = strata::sys::lock_file(&dir.with_extension("lock")).expect("lock");
    let bin = dir.join("attack");
    if !bin.exists() {
        std::fs::create_dir_all(&dir).unwrap();
        let tmp = dir.join("attack.tmp");
        let st = Command::new("cc")
            .args(["-static", "-O1", "-o"])
            .arg(&tmp)
            .arg(&src)
            .status()
            .expect("run cc (gcc and libc6-dev are needed)");
        assert!(st.success(), "building attack.c failed");
        std::fs::rename(&tmp, &bin).unwrap();
    }
    drop(lock);
    dir
}

fn atk_volume() -> String {
    format!("{}:/atk:ro", attacker().display())
}

/// A loop device over a 1 MiB file that starts with `ORIG`; detached on drop.
struct LoopDev {
    dev: String,
    _file: tempfile::NamedTempFile,
}

impl LoopDev {
    fn new() -> Self {
        let file = tempfile::NamedTempFile::new().unwrap();
        let mut data = vec![0u8; 1 << 20];
        data[..4].copy_from_slice(b"ORIG");
        std::fs::write(file.path(), &data).unwrap();
        let out = Command::new("losetup")
            .args(["-f", "--show"])
            .arg(file.path())
            .output()
            .expect("losetup");
        assert!(out.status.success(), "losetup: {out:?}");
        let dev = String::from_utf8_lossy(&out.stdout).trim().to_string();
        LoopDev { dev, _file: file }
    }
    fn major_minor(&self) -> (u32, u32) {
        use std::os::unix::fs::MetadataExt;
        let rdev = std::fs::metadata(&self.dev).unwrap().rdev();
        (rustix::fs::major(rdev), rustix::fs::minor(rdev))
    }
    fn head(&self) -> Vec<u8> {
        use std::io::Read;
        let mut b = [0u8; 4];
        std::fs::File::open(&self.dev)
            .unwrap()
            .read_exact(&mut b)
            .unwrap();
        b.to_vec()
    }
}

impl Drop for LoopDev {
    fn drop(&mut self) {
        let _ = Command::new("losetup").args(["-d", &self.dev]).status();
    }
}

#[test]
fn device_nodes_made_in_a_container_never_open_the_hosts_disks() {
    let r = ContainerRoot::new();
    let disk = LoopDev::new();
    let (maj, min) = disk.major_minor();
    let vol = tempfile::tempdir().unwrap();
    // Every writable place: /dev, the rootfs (/ and /tmp), a --tmpfs, /dev/shm, a volume.
    let script = format!(
        "for d in /dev /tmp / /t /dev/shm /vol; do \
           mknod $d/x b {maj} {min} || echo \"$d mknod-failed\"; \
           if dd if=$d/x of=/dev/null bs=512 count=1 2>/dev/null; then echo \"$d READ\"; fi; \
           if echo MARK | dd of=$d/x bs=512 conv=notrunc,sync 2>/dev/null; then echo \"$d WROTE\"; fi; \
           rm -f $d/x; \
         done; echo done"
    );
    let vol_arg = format!("{}:/vol", vol.path().display());
    let o = r.run(&[
        "run",
        "--rm",
        "--network",
        "none",
        "--tmpfs",
        "/t",
        "-v",
        &vol_arg,
        IMAGE,
        "sh",
        "-c",
        &script,
    ]);
    assert_eq!(o.code, 0, "{o:?}");
    assert!(o.out.contains("done"), "{o:?}");
    assert!(
        !o.out.contains("mknod-failed"),
        "mknod itself is allowed: {o:?}"
    );
    assert!(
        !o.out.contains("READ"),
        "a device node opened for reading: {o:?}"
    );
    assert!(
        !o.out.contains("WROTE"),
        "a device node opened for writing: {o:?}"
    );
    assert_eq!(disk.head(), b"ORIG", "the host's disk was written");
    // The standard nodes still work.
    let o = r.run(&[
        "run",
        "--rm",
        "--network",
        "none",
        IMAGE,
        "sh",
        "-c",
        "echo x > /dev/null && head -c 3 /dev/zero | wc -c && head -c 2 /dev/urandom | wc -c",
    ]);
    assert_eq!(o.code, 0, "{o:?}");
    assert_eq!(
        o.out.split_whitespace().collect::<Vec<_>>(),
        ["3", "2"],
        "{o:?}"
    );
    // A tmpfs with usable device nodes is refused before anything is made.
    let o = r.run(&["run", "--rm", "--tmpfs", "/t:dev", IMAGE, "true"]);
    assert_eq!(o.code, 125, "{o:?}");
    assert!(o.err.contains("dev"), "{o:?}");
}

#[test]
fn the_cgroup_v1_device_rule_allows_only_the_standard_nodes() {
    let v1 = std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .find(|l| l.contains(" - cgroup ") && l.split(',').any(|o| o.starts_with("devices")))
        .and_then(|l| l.split(' ').nth(4).map(PathBuf::from));
    let Some(mount) = v1 else {
        eprintln!("SKIPPED: this host has no cgroup v1 devices hierarchy (nodev mounts apply)");
        return;
    };
    let r = ContainerRoot::new();
    let id = r
        .ok(&["run", "-d", "--network", "none", IMAGE, "sleep", "60"])
        .trim()
        .to_string();
    let list = std::fs::read_to_string(mount.join("strata").join(&id).join("devices.list"))
        .expect("the container's devices cgroup");
    let rules: Vec<&str> = list.lines().collect();
    assert!(rules.contains(&"c 1:3 rwm"), "{rules:?}");
    assert!(rules.contains(&"c 136:* rwm"), "{rules:?}");
    assert!(!rules.contains(&"a *:* rwm"), "{rules:?}");
    assert!(
        !rules
            .iter()
            .any(|r| r.starts_with("b ") && r.ends_with("rw")),
        "{rules:?}"
    );
    r.ok(&["rm", "-f", &id]);
    assert!(
        !mount.join("strata").join(&id).exists(),
        "the cgroup outlived the container"
    );
}

/// `attack syscall NAME` for each name, in a container with `extra` flags.
fn syscalls(r: &ContainerRoot, extra: &[&str], names: &[&str]) -> String {
    let vol = atk_volume();
    let script = names
        .iter()
        .map(|n| format!("/atk/attack syscall {n}"))
        .collect::<Vec<_>>()
        .join("; ");
    let script = format!("grep '^Seccomp:' /proc/self/status; {script}");
    let mut args = vec!["run", "--rm", "--network", "none", "-v", &vol];
    args.extend_from_slice(extra);
    args.extend_from_slice(&[IMAGE, "sh", "-c", &script]);
    let o = r.run(&args);
    assert_eq!(o.code, 0, "{o:?}");
    o.out
}

#[test]
fn the_default_seccomp_profile_refuses_escapes_and_can_be_replaced() {
    let r = ContainerRoot::new();
    let refused = [
        "unshare-user",
        "unshare-mount",
        "clone-newuser",
        "keyctl",
        "add_key",
        "bpf",
        "perf_event_open",
        "mount",
    ];
    let mut names = refused.to_vec();
    names.push("getpid");
    let out = syscalls(&r, &[], &names);
    assert!(out.contains("Seccomp:\t2"), "{out}");
    for n in refused {
        assert!(
            out.contains(&format!("{n} errno 1\n")),
            "{n} not refused: {out}"
        );
    }
    assert!(out.contains("getpid ok"), "{out}");
    // The attack as a user types it: a user namespace to get a mount namespace with all
    // capabilities, then a mount.
    let o = r.run(&[
        "run",
        "--rm",
        "--network",
        "none",
        IMAGE,
        "sh",
        "-c",
        "unshare -U -r -m sh -c 'mount -t tmpfs x /mnt && echo MOUNTED'; echo rc=$?",
    ]);
    assert!(!o.out.contains("MOUNTED"), "{o:?}");
    assert!(o.err.contains("Operation not permitted"), "{o:?}");

    // Unconfined: no filter at all.
    let out = syscalls(
        &r,
        &["--security-opt", "seccomp=unconfined"],
        &["unshare-user", "keyctl"],
    );
    assert!(out.contains("Seccomp:\t0"), "{out}");
    assert!(out.contains("unshare-user ok"), "{out}");

    // A profile of one's own, in Docker's format.
    let dir = tempfile::tempdir().unwrap();
    let profile = dir.path().join("p.json");
    std::fs::write(
        &profile,
        r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[
            {"names":["mkdir","mkdirat"],"action":"SCMP_ACT_ERRNO","errnoRet":13}]}"#,
    )
    .unwrap();
    let opt = format!("seccomp={}", profile.display());
    let o = r.run(&[
        "run",
        "--rm",
        "--network",
        "none",
        "--security-opt",
        &opt,
        IMAGE,
        "sh",
        "-c",
        "mkdir /newdir; echo rc=$?; touch /newfile && echo touched",
    ]);
    assert!(o.out.contains("rc=1"), "{o:?}");
    assert!(o.err.contains("Permission denied"), "{o:?}");
    assert!(o.out.contains("touched"), "{o:?}");
    // Bad profiles and unknown options are refused, naming what is wrong.
    std::fs::write(&profile, r#"{"defaultAction":"SCMP_ACT_NOPE"}"#).unwrap();
    let o = r.run(&["run", "--rm", "--security-opt", &opt, IMAGE, "true"]);
    assert_eq!(o.code, 125, "{o:?}");
    assert!(o.err.contains("SCMP_ACT_NOPE"), "{o:?}");
    let o = r.run(&["run", "--rm", "--security-opt", "apparmor=x", IMAGE, "true"]);
    assert_eq!(o.code, 125, "{o:?}");
    assert!(o.err.contains("apparmor=x"), "{o:?}");

    // exec gets the container's filter too.
    let vol = atk_volume();
    let id = r
        .ok(&[
            "run",
            "-d",
            "--network",
            "none",
            "-v",
            &vol,
            IMAGE,
            "sleep",
            "60",
        ])
        .trim()
        .to_string();
    let o = r.run(&["exec", &id, "/atk/attack", "syscall", "unshare-user"]);
    assert_eq!(o.out, "unshare-user errno 1\n", "{o:?}");
    r.ok(&["rm", "-f", &id]);
}

/// A UDP socket on a free port of 127.0.0.1, and the port.
fn bound_udp() -> (UdpSocket, u16) {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    let port = s.local_addr().unwrap().port();
    (s, port)
}

#[test]
fn the_hosts_loopback_services_are_unreachable_from_a_container() {
    let r = ContainerRoot::new();
    let (udp, uport) = bound_udp();
    udp.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let tcp = TcpListener::bind("127.0.0.1:0").unwrap();
    let tport = tcp.local_addr().unwrap().port();
    let vol = atk_volume();
    // The gateway's MAC from the container's own ARP table; then frames to it for
    // 127.0.0.1, as the CVE-2020-8558 exploit sends them.
    let script = format!(
        "GW=$(ip route | awk '/default/{{print $3}}'); ping -c1 -W1 $GW >/dev/null; \
         MAC=$(awk -v gw=$GW '$1==gw{{print $4}}' /proc/net/arp); echo mac=$MAC; \
         /atk/attack local udp eth0 $MAC {uport}; /atk/attack local tcp eth0 $MAC {tport}"
    );
    let o = r.run(&["run", "--rm", "-v", &vol, IMAGE, "sh", "-c", &script]);
    assert_eq!(o.code, 0, "{o:?}");
    assert!(o.out.contains("mac=") && !o.out.contains("mac=\n"), "{o:?}");
    assert!(o.out.contains("SENT"), "{o:?}");
    assert!(
        o.out.contains("NOREPLY"),
        "127.0.0.1:{tport} answered a container: {o:?}"
    );
    let end = Instant::now() + Duration::from_secs(1);
    let mut buf = [0u8; 64];
    while Instant::now() < end {
        if let Ok((n, from)) = udp.recv_from(&mut buf) {
            panic!(
                "127.0.0.1:{uport} received {:?} from {from}",
                String::from_utf8_lossy(&buf[..n])
            );
        }
    }
}

/// A small ext4 file system on a loop device, mounted on a temporary directory; unmounted
/// and detached on drop.
struct SmallDisk {
    mnt: tempfile::TempDir,
    _img: tempfile::NamedTempFile,
}

impl SmallDisk {
    fn new(mib: u64) -> Self {
        let img = tempfile::NamedTempFile::new().unwrap();
        img.as_file().set_len(mib << 20).unwrap();
        let st = Command::new("mkfs.ext4")
            .args(["-q", "-F", "-m", "0"])
            .arg(img.path())
            .status()
            .expect("mkfs.ext4 (e2fsprogs)");
        assert!(st.success());
        let mnt = tempfile::tempdir().unwrap();
        let st = Command::new("mount")
            .args(["-o", "loop"])
            .arg(img.path())
            .arg(mnt.path())
            .status()
            .unwrap();
        assert!(st.success(), "mount -o loop");
        SmallDisk { mnt, _img: img }
    }
    fn path(&self) -> &Path {
        self.mnt.path()
    }
    /// Fills the disk: one big file, then small ones until even a 4 KiB file is refused.
    /// Returns the directory that holds them.
    fn fill(&self) -> PathBuf {
        let d = self.path().join("fill");
        std::fs::create_dir_all(&d).unwrap();
        let _ = Command::new("dd")
            .args(["if=/dev/zero", "bs=1M"])
            .arg(format!("of={}", d.join("big").display()))
            .stderr(std::process::Stdio::null())
            .status();
        for i in 0..100_000 {
            if std::fs::write(d.join(i.to_string()), [0u8; 4096]).is_err() {
                break;
            }
        }
        d
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        // Lazily, so a failed test's leftovers cannot keep it busy.
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.mnt.path())
            .status();
    }
}

fn entries(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

#[test]
fn a_full_state_disk_never_kills_a_container_and_leaves_nothing_half_made() {
    let disk = SmallDisk::new(96);
    let rootdir = tempfile::tempdir_in(disk.path()).unwrap();
    let r = ContainerRoot::in_dir(rootdir);
    let root = r.path().to_path_buf();
    // Debug logging: every FUSE operation writes to shim.log, which shares the full disk.
    let o = strata_io_env(
        &root,
        &[
            "run",
            "-d",
            "--name",
            "filler",
            "--network",
            "none",
            IMAGE,
            "sh",
            "-c",
            "dd if=/dev/zero of=/big bs=1M 2>&1 | head -1; echo dd-done; sleep 600",
        ],
        None,
        DEADLINE,
        &[("RUST_LOG", "strata=debug")],
    );
    assert_eq!(o.code, 0, "{o:?}");
    let end = Instant::now() + Duration::from_secs(60);
    loop {
        let logs = r.run(&["logs", "filler"]).out;
        if logs.contains("dd-done") {
            break;
        }
        assert!(Instant::now() < end, "dd never finished: {logs}");
        std::thread::sleep(Duration::from_millis(250));
    }
    // Still running after the disk filled under its logging.
    std::thread::sleep(Duration::from_millis(500));
    let st = r.inspect("filler");
    assert_eq!(st["State"]["Running"], true, "{st}");
    // It saw ENOSPC from its own write.
    let logs = r.ok(&["logs", "filler"]);
    assert!(logs.contains("No space left on device"), "{logs}");
    // Reading commands work on the full disk.
    r.ok(&["ps", "-a"]);
    // A new container on the full disk fails whole: no directory left behind.
    let filler = disk.fill();
    let before = entries(&root.join("containers"));
    let o = r.run(&["run", "-d", "--network", "none", IMAGE, "true"]);
    assert_ne!(o.code, 0, "{o:?}");
    assert_eq!(entries(&root.join("containers")), before, "{o:?}");
    assert_eq!(r.inspect("filler")["State"]["Running"], true);
    // Once space is freed, stop works; on a full disk again, diff of the stopped
    // container only reads.
    std::fs::remove_dir_all(&filler).unwrap();
    r.ok(&["stop", "-t", "1", "filler"]);
    let filler = disk.fill();
    let d = r.run(&["diff", "filler"]);
    assert_eq!(d.code, 0, "{d:?}");
    assert!(d.out.contains("A /big"), "{d:?}");
    std::fs::remove_dir_all(&filler).unwrap();
    r.ok(&["rm", "filler"]);
    assert_eq!(
        r.ok(&["run", "--rm", "--network", "none", IMAGE, "echo", "again"]),
        "again\n"
    );
    // Removing the last image leaves no layer lock behind.
    r.ok(&["rmi", IMAGE]);
    assert_eq!(entries(&root.join("layers/.locks")), Vec::<String>::new());
}

#[test]
fn start_returns_the_shims_failure_and_says_why() {
    let r = ContainerRoot::new();
    r.ok(&["create", "--name", "bad", IMAGE, "/nonexistent"]);
    // A shim that dies without a word: it is held at the host-wide network lock (taken
    // here) before it can report, and killed there.
    let netlock = strata::sys::lock_file(Path::new("/run/strata/net/lock")).expect("net lock");
    let mut cli = Command::new(strata_bin())
        .arg("--root")
        .arg(r.path())
        .args(["start", "bad"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let cli_pid = cli.id() as i32;
    let shim = wait_for(Duration::from_secs(10), || child_of(cli_pid));
    let t = Instant::now();
    let _ = Command::new("kill")
        .args(["-9", &shim.to_string()])
        .status();
    drop(netlock);
    let code = wait_for(Duration::from_secs(20), || cli.try_wait().ok().flatten());
    let out = cli.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        t.elapsed() < Duration::from_secs(10),
        "start took {:?}",
        t.elapsed()
    );
    assert_eq!(code.code(), Some(125), "{err}");
    assert!(err.starts_with("strata: "), "{err}");
    assert!(err.contains("shim"), "{err}");
    // The command's own failure: the same words and code as `run`.
    let o = r.run(&["start", "bad"]);
    assert_eq!(o.code, 127, "{o:?}");
    assert_eq!(
        o.err.trim(),
        r#"strata: exec: "/nonexistent": no such file or directory"#
    );
    let o = r.run(&["run", "--rm", IMAGE, "/nonexistent"]);
    assert_eq!(o.code, 127, "{o:?}");
    assert_eq!(
        o.err.trim(),
        r#"strata: exec: "/nonexistent": no such file or directory"#
    );
}

/// Polls `f` every 10 ms until it gives Some, at most `limit`.
fn wait_for<T>(limit: Duration, f: impl FnMut() -> Option<T>) -> T {
    let mut f = f;
    let end = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < end, "timed out after {limit:?}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A child process of `parent`, if it has one.
fn child_of(parent: i32) -> Option<i32> {
    let rd = std::fs::read_dir("/proc").ok()?;
    rd.flatten().find_map(|e| {
        let pid: i32 = e.file_name().to_str()?.parse().ok()?;
        let stat = std::fs::read_to_string(e.path().join("stat")).ok()?;
        let ppid: i32 = stat[stat.rfind(')')? + 1..]
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()?;
        (ppid == parent).then_some(pid)
    })
}

/// The host's neighbour entry for `ip` (its MAC), if any.
fn neighbour(ip: &str) -> Option<String> {
    let out = Command::new("ip")
        .args(["neigh", "show", ip])
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut it = text.split_whitespace();
    it.find(|w| *w == "lladdr")?;
    it.next().map(String::from)
}

/// Whether a TCP connection to `ip:8080` (the container's httpd, which may take a moment
/// to listen) is accepted within 3 s; a stale neighbour entry costs far more (20–50 s).
fn answers(ip: &str) -> bool {
    let addr: std::net::SocketAddr = format!("{ip}:8080").parse().unwrap();
    let end = Instant::now() + Duration::from_secs(3);
    while Instant::now() < end {
        if std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(500)).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}

#[test]
fn a_reused_address_answers_at_once_with_the_same_mac() {
    let r = ContainerRoot::new();
    let net = format!("sbx{}", std::process::id() % 100_000);
    r.ok(&["network", "create", "--subnet", "10.213.201.0/24", &net]);
    struct NetGuard<'a>(&'a ContainerRoot, String);
    impl Drop for NetGuard<'_> {
        fn drop(&mut self) {
            let _ = self.0.run(&["rm", "-f", "first", "second"]);
            let _ = self.0.run(&["network", "rm", &self.1]);
        }
    }
    let _g = NetGuard(&r, net.clone());
    let start = |name: &str| {
        r.ok(&[
            "run",
            "-d",
            "--name",
            name,
            "--network",
            &net,
            IMAGE,
            "httpd",
            "-f",
            "-p",
            "8080",
        ]);
        let v = r.inspect(name);
        v["NetworkSettings"]["IPAddress"]
            .as_str()
            .unwrap_or_else(|| panic!("no address: {v}"))
            .to_string()
    };
    let ip = start("first");
    assert!(answers(&ip), "{ip} unreachable");
    let mac = neighbour(&ip).expect("a neighbour entry");
    let octets: Vec<u8> = ip.split('.').map(|o| o.parse().unwrap()).collect();
    assert_eq!(
        mac,
        format!(
            "02:42:{:02x}:{:02x}:{:02x}:{:02x}",
            octets[0], octets[1], octets[2], octets[3]
        )
    );
    r.ok(&["rm", "-f", "first"]);
    let ip2 = start("second");
    assert_eq!(ip2, ip, "the address was not reused");
    // Reachable on the first try, although the neighbour cache still has the entry.
    assert!(answers(&ip2), "{ip2} unreachable right after reuse");
    r.ok(&["restart", "-t", "1", "second"]);
    assert!(answers(&ip2), "{ip2} unreachable right after restart");
    r.ok(&["rm", "-f", "second"]);
}

//! Real containers of the sample image through the `strata` binary (root): lifecycle,
//! exit codes, isolation, volumes, the symlink escape, crashes, concurrency and leaks.
//!
//! Every command runs with a deadline; every test root is cleaned up by a guard (`rm -f -v`
//! of every container, then `kill -9` of any shim it recorded) even when the test fails.
//! A container's processes become zombies of PID 1 once their shim is gone; on hosts whose
//! PID 1 does not reap orphans (some VMs' init), a zombie counts as gone.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use strata_testkit::*;

const IMAGE: &str = "strata-sample:latest";
const DEADLINE: Duration = Duration::from_secs(30);

fn st(root: &Path, args: &[&str]) -> Out {
    strata_io(root, args, None, DEADLINE)
}

fn st_ok(root: &Path, args: &[&str]) -> String {
    let o = st(root, args);
    assert_eq!(o.code, 0, "strata {args:?}: {o:?}");
    o.out
}

/// Whether `pid` is a live (non-zombie) process.
fn alive(pid: i32) -> bool {
    if pid <= 0 {
        return false;
    }
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => {
            let state = s
                .rfind(')')
                .and_then(|i| s[i + 1..].split_whitespace().next())
                .unwrap_or("");
            state != "Z" && state != "X"
        }
        Err(_) => false,
    }
}

fn wait_for(what: &str, timeout: Duration, cond: impl Fn() -> bool) {
    let end = Instant::now() + timeout;
    while !cond() {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn run_rm_returns_the_commands_exit_code() {
    let r = ContainerRoot::new();
    let o = r.run(&["run", "--rm", IMAGE, "echo", "hi"]);
    assert_eq!((o.code, o.out.as_str()), (0, "hi\n"), "{o:?}");
    let o = r.run(&[
        "run",
        "--rm",
        IMAGE,
        "sh",
        "-c",
        "echo out; echo err >&2; exit 3",
    ]);
    assert_eq!(
        (o.code, o.out.as_str(), o.err.as_str()),
        (3, "out\n", "err\n")
    );
    let o = r.run(&["run", "--rm", IMAGE, "no-such-command"]);
    assert_eq!(o.code, 127, "{o:?}");
    assert!(o.err.contains("executable file not found"), "{o:?}");
    let o = r.run(&["run", "--rm", IMAGE, "/no/such/path"]);
    assert_eq!(o.code, 127, "{o:?}");
    let o = r.run(&["run", "--rm", IMAGE, "/etc/passwd"]);
    assert_eq!(o.code, 126, "{o:?}");
    assert!(o.err.contains("permission denied"), "{o:?}");
    let o = r.run(&["run", "--rm", "--entrypoint", "", IMAGE]);
    assert_eq!(o.code, 125, "no command: {o:?}");
    let o = r.run(&["run", "--rm", "no-such-image:1", "true"]);
    assert_eq!(o.code, 125, "{o:?}");
    // --rm removed every one of them, records and all.
    assert!(r.ids().is_empty());
    let left: Vec<_> = std::fs::read_dir(r.path().join("containers"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .filter(|n| n != ".names")
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}

/// `--storage-opt io=passthrough`: the rootfs opens big files through FUSE passthrough. What
/// shows it from inside: a big lower file (the image's 16 MiB `srv/files/sparse-16M`) read
/// through its lower file cannot be appended to until that reader closes (ETXTBSY), where
/// the default rootfs lets it.
#[test]
fn storage_opt_io_passthrough_rootfs() {
    let r = ContainerRoot::new();
    let script = "exec 3</srv/files/sparse-16M; \
                  if echo x >> /srv/files/sparse-16M; then echo appended; fi; exec 3<&-; \
                  echo y >> /srv/files/sparse-16M && echo appended-after; \
                  dd if=/dev/zero of=/big bs=1M count=8 2>/dev/null; wc -c < /big; \
                  tail -c 2 /srv/files/sparse-16M";
    let pt = r.run(&[
        "run",
        "--rm",
        "--storage-opt",
        "io=passthrough",
        IMAGE,
        "sh",
        "-c",
        script,
    ]);
    assert_eq!(
        (pt.code, pt.out.as_str()),
        (0, "appended-after\n8388608\ny\n"),
        "{pt:?}"
    );
    assert!(pt.err.contains("Text file busy"), "{pt:?}");
    let default = r.run(&["run", "--rm", IMAGE, "sh", "-c", script]);
    assert_eq!(
        (default.code, default.out.as_str()),
        (0, "appended\nappended-after\n8388608\ny\n"),
        "{default:?}"
    );
    // Kept with the container: inspect says so, and a restart mounts the same way.
    let id = st_ok(
        r.path(),
        &["create", "--storage-opt", "io=passthrough", IMAGE, "true"],
    );
    let inspect = st_ok(r.path(), &["inspect", id.trim()]);
    assert!(inspect.contains(r#""io": "passthrough""#), "{inspect}");
    st_ok(r.path(), &["rm", id.trim()]);
    let bad = r.run(&["run", "--rm", "--storage-opt", "size=10G", IMAGE, "true"]);
    assert_eq!(bad.code, 125, "{bad:?}");
    assert!(bad.err.contains("io=passthrough"), "{bad:?}");
}

#[test]
fn environment_workdir_user_and_hostname() {
    let r = ContainerRoot::new();
    let env_file = r.path().join("env.list");
    std::fs::write(&env_file, "# comment\nFROM_FILE=1\nK=from-file\n").unwrap();
    let out = r.ok(&[
        "run",
        "--rm",
        "--env-file",
        env_file.to_str().unwrap(),
        "-e",
        "K=V",
        "-e",
        "SPACED=a b",
        "-w",
        "/srv/files",
        "--hostname",
        "web",
        "--network",
        "none",
        IMAGE,
        "sh",
        "-c",
        "echo $K $FROM_FILE $SPACED; pwd; hostname; cat /etc/hostname; echo $HOME $PATH; grep web /etc/hosts",
    ]);
    assert_eq!(
        out,
        "V 1 a b\n/srv/files\nweb\nweb\n/root /usr/sbin:/usr/bin:/sbin:/bin\n127.0.1.1\tweb\n"
    );
    // A missing working directory is created, as Docker does.
    assert_eq!(
        r.ok(&["run", "--rm", "-w", "/new/dir", IMAGE, "pwd"]),
        "/new/dir\n"
    );
    // Users by name (from the container's /etc/passwd) and by number.
    assert_eq!(
        r.ok(&[
            "run",
            "--rm",
            "-u",
            "user",
            IMAGE,
            "sh",
            "-c",
            "id; echo $HOME"
        ]),
        "uid=1000(user) gid=1000(user)\n/home/user\n"
    );
    assert_eq!(
        r.ok(&["run", "--rm", "-u", "1000:6", IMAGE, "id"]),
        "uid=1000(user) gid=6(disk)\n"
    );
    assert_eq!(
        r.ok(&["run", "--rm", "-u", "4242", IMAGE, "id", "-u"]),
        "4242\n"
    );
    let o = r.run(&["run", "--rm", "-u", "ghost", IMAGE, "id"]);
    assert_eq!(o.code, 125, "{o:?}");
    assert!(o.err.contains("unable to find user ghost"), "{o:?}");
    // A non-root user has no capabilities and cannot write root's files.
    let o = r.run(&[
        "run",
        "--rm",
        "-u",
        "user",
        IMAGE,
        "sh",
        "-c",
        "grep CapEff /proc/self/status; touch /root/x",
    ]);
    assert_eq!(o.code, 1, "{o:?}");
    assert!(o.out.contains("CapEff:\t0000000000000000"), "{o:?}");
    // The default hostname is the short ID.
    let id = r.ok(&["create", IMAGE, "hostname"]);
    let id = id.trim();
    let o = r.run(&["start", "-a", id]);
    assert_eq!((o.code, o.out.trim()), (0, &id[..12]), "{o:?}");
}

#[test]
fn the_command_is_pid_1_in_its_own_namespaces() {
    let r = ContainerRoot::new();
    let out = r.ok(&[
        "run",
        "--rm",
        "--network",
        "none",
        IMAGE,
        "sh",
        "-c",
        "echo $$; ps -o pid | wc -l; cat /proc/net/dev | tail -n +3 | cut -d: -f1 | tr -d ' '; \
         grep -E 'CapEff|CapBnd|NoNewPrivs' /proc/self/status; cat /proc/1/cmdline | tr '\\0' ' '",
    ]);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "1", "{out}");
    // ps's header, sh, ps, wc: nothing of the host is visible.
    assert!(lines[1].trim().parse::<u32>().unwrap() <= 5, "{out}");
    assert_eq!(lines[2], "lo", "only loopback: {out}");
    assert_eq!(lines[3], "CapEff:\t00000000a80425fb", "{out}");
    assert_eq!(lines[4], "CapBnd:\t00000000a80425fb", "{out}");
    assert_eq!(lines[5], "NoNewPrivs:\t1", "{out}");
    assert!(lines[6].starts_with("sh -c"), "{out}");

    // Hardening: read-only /proc/sys and /sys, masked files, no host processes to signal.
    let o = r.run(&[
        "run",
        "--rm",
        IMAGE,
        "sh",
        "-c",
        "echo 1 > /proc/sys/vm/drop_caches && echo wrote-proc-sys; \
         touch /sys/x 2>/dev/null && echo wrote-sys; \
         [ -e /proc/keys ] && wc -c < /proc/keys; \
         mount | grep -c ' /proc/sys '; kill -0 2 2>/dev/null && echo sees-pid-2; echo done",
    ]);
    assert_eq!(o.code, 0, "{o:?}");
    assert!(!o.out.contains("wrote"), "{o:?}");
    assert!(!o.out.contains("sees-pid-2"), "{o:?}");
    assert!(o.out.ends_with("done\n"), "{o:?}");
    let o = r.run(&["run", "--rm", IMAGE, "sh", "-c", "wc -c < /proc/keys"]);
    assert_eq!(o.out.trim(), "0", "/proc/keys is masked: {o:?}");
}

#[test]
fn lifecycle_run_ps_logs_exec_stop_start_restart_rm() {
    let r = ContainerRoot::new();
    let id = r.ok(&[
        "run",
        "-d",
        "--name",
        "web",
        "-e",
        "K=V",
        IMAGE,
        "sh",
        "-c",
        "echo started; echo first >> /data.txt; while true; do sleep 0.1; done",
    ]);
    let id = id.trim().to_string();
    assert_eq!(id.len(), 64);
    let ps = r.ok(&["ps"]);
    assert!(
        ps.contains(&id[..12]) && ps.contains("web") && ps.contains("Up "),
        "{ps}"
    );
    wait_for("the first log line", Duration::from_secs(5), || {
        r.ok(&["logs", "web"]) == "started\n"
    });
    assert!(
        r.host_mounts().is_empty(),
        "a container mount shows on the host"
    );
    let (pid, shim) = r.pids("web");
    assert!(alive(pid) && alive(shim));
    // exec: environment, exit code, its own pid in the container's pid namespace.
    let o = r.run(&[
        "exec",
        "web",
        "sh",
        "-c",
        "echo $K $$ $(cat /data.txt); exit 7",
    ]);
    assert_eq!(o.code, 7, "{o:?}");
    let f: Vec<&str> = o.out.split_whitespace().collect();
    assert_eq!(f[0], "V");
    assert_ne!(f[1], "1");
    assert_eq!(f[2], "first");
    assert_eq!(
        r.ok(&[
            "exec",
            "-e",
            "X=1",
            "-w",
            "/tmp",
            "-u",
            "user",
            "web",
            "sh",
            "-c",
            "echo $X $(pwd) $(id -u)"
        ]),
        "1 /tmp 1000\n"
    );
    assert_eq!(r.run(&["exec", "web", "nope"]).code, 127);
    // A running container is not removed without -f.
    let o = r.run(&["rm", "web"]);
    assert_eq!(o.code, 125, "{o:?}");
    assert!(o.err.contains("is running"), "{o:?}");
    // sh as PID 1 ignores SIGTERM: stop falls back to SIGKILL after -t.
    let t = Instant::now();
    r.ok(&["stop", "-t", "1", "web"]);
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    let v = r.inspect("web");
    assert_eq!(v["State"]["Status"], "exited");
    assert_eq!(v["State"]["ExitCode"], 137);
    assert!(!alive(pid) && !alive(shim), "a process survived stop");
    assert!(r.host_mounts().is_empty());
    assert!(
        r.ok(&["ps"]).lines().count() == 1,
        "ps shows only running ones"
    );
    assert!(r.ok(&["ps", "-a"]).contains("Exited (137)"));
    assert_eq!(r.run(&["exec", "web", "true"]).code, 125);
    // start resumes with the same writable layer.
    r.ok(&["start", "web"]);
    wait_for("the second run", Duration::from_secs(5), || {
        r.ok(&["exec", "web", "cat", "/data.txt"]) == "first\nfirst\n"
    });
    assert_eq!(r.ok(&["logs", "web"]), "started\nstarted\n");
    assert_eq!(r.ok(&["logs", "--tail", "1", "web"]), "started\n");
    let (pid2, _) = r.pids("web");
    assert_ne!(pid2, pid);
    r.ok(&["restart", "-t", "0", "web"]);
    let (pid3, shim3) = r.pids("web");
    assert!(pid3 != pid2 && alive(pid3));
    assert_eq!(
        r.ok(&["exec", "web", "cat", "/data.txt"]).lines().count(),
        3
    );
    // Names are unique; a prefix of the ID works as a reference.
    let o = r.run(&["create", "--name", "web", IMAGE, "true"]);
    assert_eq!(o.code, 125, "{o:?}");
    assert!(o.err.contains("already in use"), "{o:?}");
    r.ok(&["rm", "-f", &id[..8]]);
    assert!(!alive(pid3) && !alive(shim3));
    assert!(r.ids().is_empty());
    assert!(!r.path().join("containers").join(&id).exists());
    assert_eq!(r.run(&["logs", "web"]).code, 125);
    // The name is free again.
    r.ok(&["create", "--name", "web", IMAGE, "true"]);
    // The image of a container cannot be deleted under it.
    let o = r.run(&["rmi", IMAGE]);
    assert_eq!(o.code, 125, "{o:?}");
    assert!(o.err.contains("in use by container web"), "{o:?}");
}

#[test]
fn stop_signal_kill_wait_and_create_start_attach() {
    let r = ContainerRoot::new();
    // A process that handles SIGTERM stops cleanly, with its own exit code.
    r.ok(&[
        "run",
        "-d",
        "--name",
        "polite",
        IMAGE,
        "sh",
        "-c",
        "trap 'echo got TERM; exit 0' TERM; echo ready; while true; do sleep 0.1; done",
    ]);
    wait_for("ready", Duration::from_secs(5), || {
        r.ok(&["logs", "polite"]).contains("ready")
    });
    let t = Instant::now();
    r.ok(&["stop", "polite"]);
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "stop waited for the timeout"
    );
    assert_eq!(r.inspect("polite")["State"]["ExitCode"], 0);
    assert_eq!(r.ok(&["logs", "polite"]), "ready\ngot TERM\n");
    // --stop-signal.
    r.ok(&[
        "run",
        "-d",
        "--name",
        "usr1",
        "--stop-signal",
        "USR1",
        IMAGE,
        "sh",
        "-c",
        "trap 'exit 42' USR1; while true; do sleep 0.1; done",
    ]);
    std::thread::sleep(Duration::from_millis(300));
    r.ok(&["stop", "usr1"]);
    assert_eq!(r.inspect("usr1")["State"]["ExitCode"], 42);
    // kill + wait: 137.
    r.ok(&["run", "-d", "--name", "victim", IMAGE, "sleep", "30"]);
    r.ok(&["kill", "victim"]);
    assert_eq!(r.ok(&["wait", "victim"]), "137\n");
    assert_eq!(r.run(&["kill", "victim"]).code, 125, "not running");
    // create, then start -a: attached output and exit code; logs -f ends with the container.
    let id = r.ok(&[
        "create",
        "--name",
        "later",
        IMAGE,
        "sh",
        "-c",
        "echo hello; exit 5",
    ]);
    assert_eq!(r.inspect("later")["State"]["Status"], "created");
    let o = r.run(&["start", "-a", id.trim()]);
    assert_eq!((o.code, o.out.as_str()), (5, "hello\n"));
    assert_eq!(r.ok(&["logs", "-f", "later"]), "hello\n");
    // stdin with -i.
    let o = strata_io(
        r.path(),
        &["run", "--rm", "-i", IMAGE, "sh", "-c", "tr a-z A-Z"],
        Some(b"shout\n"),
        DEADLINE,
    );
    assert_eq!((o.code, o.out.as_str()), (0, "SHOUT\n"), "{o:?}");
}

#[test]
fn volumes_are_live_both_ways_shared_and_outlive_containers() {
    let r = ContainerRoot::new();
    let host = r.path().join("host-www");
    let host_s = host.to_str().unwrap();
    // A missing host directory is created.
    r.ok(&["volume", "create", "shared"]);
    r.ok(&[
        "run",
        "-d",
        "--name",
        "va",
        "-v",
        &format!("{host_s}:/www"),
        "-v",
        "shared:/shared",
        "-v",
        "/anon",
        IMAGE,
        "sleep",
        "30",
    ]);
    assert!(host.is_dir());
    r.ok(&[
        "run",
        "-d",
        "--name",
        "vb",
        "-v",
        "shared:/s:ro",
        "-v",
        &format!("{host_s}:/ro:ro"),
        IMAGE,
        "sleep",
        "30",
    ]);
    // Host → container, at once.
    std::fs::write(host.join("from-host"), "h\n").unwrap();
    assert_eq!(r.ok(&["exec", "va", "cat", "/www/from-host"]), "h\n");
    assert_eq!(r.ok(&["exec", "vb", "cat", "/ro/from-host"]), "h\n");
    // Container → host.
    r.ok(&["exec", "va", "sh", "-c", "echo c > /www/from-ctr"]);
    assert_eq!(
        std::fs::read_to_string(host.join("from-ctr")).unwrap(),
        "c\n"
    );
    // Two containers share a named volume.
    r.ok(&["exec", "va", "sh", "-c", "echo one > /shared/x"]);
    assert_eq!(r.ok(&["exec", "vb", "cat", "/s/x"]), "one\n");
    // :ro is refused with EROFS.
    let o = r.run(&["exec", "vb", "sh", "-c", "echo no > /s/y"]);
    assert_ne!(o.code, 0);
    assert!(o.err.contains("Read-only file system"), "{o:?}");
    let o = r.run(&["exec", "vb", "touch", "/ro/z"]);
    assert!(o.code != 0 && o.err.contains("Read-only"), "{o:?}");
    assert!(!host.join("z").exists());
    // No FUSE in the data path: the volume is the host's file system.
    let o = r.ok(&[
        "exec",
        "va",
        "sh",
        "-c",
        "mount | grep -E ' /www | /shared '",
    ]);
    assert!(!o.contains("fuse"), "{o}");
    // volume rm refuses while containers use it, even stopped ones.
    let o = r.run(&["volume", "rm", "shared"]);
    assert_eq!(o.code, 125, "{o:?}");
    assert!(o.err.contains("in use"), "{o:?}");
    let anon = r.inspect("va")["Mounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["Destination"] == "/anon")
        .unwrap()["Name"]
        .as_str()
        .unwrap()
        .to_string();
    r.ok(&["stop", "-t", "0", "va", "vb"]);
    assert_eq!(r.run(&["volume", "rm", "shared"]).code, 125);
    // rm keeps named volumes and bind sources; -v removes the anonymous one.
    r.ok(&["rm", "-v", "va"]);
    r.ok(&["rm", "vb"]);
    let vols = r.ok(&["volume", "ls", "-q"]);
    assert!(vols.contains("shared") && !vols.contains(&anon), "{vols}");
    assert_eq!(
        std::fs::read_to_string(r.path().join("volumes/shared/_data/x")).unwrap(),
        "one\n"
    );
    assert!(host.join("from-ctr").exists());
    // A new container sees the volume's content.
    assert_eq!(
        r.ok(&["run", "--rm", "-v", "shared:/v", IMAGE, "cat", "/v/x"]),
        "one\n"
    );
    r.ok(&["volume", "rm", "shared"]);
    assert!(r.ok(&["volume", "ls", "-q"]).trim().is_empty());
    assert!(!r.path().join("volumes/shared").exists());
    // Bad volume specs are strata errors.
    assert_eq!(
        r.run(&["run", "--rm", "-v", "x:relative", IMAGE, "true"])
            .code,
        125
    );
    assert_eq!(
        r.run(&["run", "--rm", "-v", "/a:/d", "-v", "/b:/d", IMAGE, "true"])
            .code,
        125
    );
}

/// Builds a one-layer image whose rootfs has `/data -> /etc` and `/esc -> <host dir>`.
fn import_hostile_image(r: &ContainerRoot, host_dir: &Path) -> String {
    let src = sample_image().join("rootfs.tar");
    let tar_path = r.path().join("hostile.tar");
    let mut b = tar::Builder::new(std::fs::File::create(&tar_path).unwrap());
    let mut a = tar::Archive::new(std::fs::File::open(&src).unwrap());
    for e in a.entries().unwrap() {
        let mut e = e.unwrap();
        let path = e.path().unwrap().into_owned();
        let p = path.to_string_lossy().trim_start_matches("./").to_string();
        let top = p.split('/').next().unwrap_or("");
        if !["bin", "etc", "dev", "proc", "sys", "tmp", "root", ""].contains(&top) {
            continue;
        }
        let mut h = e.header().clone();
        let kind = h.entry_type();
        if kind.is_symlink() {
            let target = e.link_name().unwrap().unwrap().into_owned();
            b.append_link(&mut h, &p, target).unwrap();
        } else if kind.is_file() || kind.is_dir() {
            if p.is_empty() {
                continue;
            }
            b.append_data(&mut h, &p, &mut e).unwrap();
        }
    }
    for (name, target) in [
        ("data", PathBuf::from("/etc")),
        ("esc", host_dir.to_path_buf()),
    ] {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_size(0);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1_767_225_600);
        h.set_mode(0o777);
        b.append_link(&mut h, name, target).unwrap();
    }
    b.into_inner().unwrap().flush().unwrap();
    r.ok(&["import", tar_path.to_str().unwrap(), "hostile:1"]);
    "hostile:1".into()
}

#[test]
fn a_symlink_in_the_image_cannot_redirect_a_volume_onto_the_host() {
    let r = ContainerRoot::new();
    let outside = r.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    let image = import_hostile_image(&r, &outside);
    let vol = r.path().join("vol");
    std::fs::create_dir(&vol).unwrap();
    std::fs::write(vol.join("marker"), "from the volume\n").unwrap();
    let host_etc_before = std::fs::read_dir("/etc").unwrap().count();
    // /data -> /etc resolves inside the rootfs: the volume covers the container's /etc.
    let o = r.run(&[
        "run",
        "--rm",
        "-v",
        &format!("{}:/data", vol.display()),
        &image,
        "sh",
        "-c",
        "cat /etc/marker; readlink /data",
    ]);
    assert_eq!(
        (o.code, o.out.as_str()),
        (0, "from the volume\n/etc\n"),
        "{o:?}"
    );
    assert!(!Path::new("/etc/marker").exists());
    assert_eq!(std::fs::read_dir("/etc").unwrap().count(), host_etc_before);
    assert!(r.host_mounts().is_empty());
    // /esc -> <a host directory>: that path does not exist in the rootfs, so strata refuses,
    // and nothing is created or mounted in the host directory.
    let o = r.run(&[
        "run",
        "--rm",
        "-v",
        &format!("{}:/esc/sub", vol.display()),
        &image,
        "true",
    ]);
    assert_eq!(o.code, 125, "{o:?}");
    assert!(o.err.contains("dangling symbolic link"), "{o:?}");
    assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 0);
    // Also for a file target (tmpfs on a path below the link).
    let o = r.run(&["run", "--rm", "--tmpfs", "/esc/t", &image, "true"]);
    assert_eq!(o.code, 125, "{o:?}");
    assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 0);
}

#[test]
fn a_killed_shim_is_reconciled_and_the_container_starts_again() {
    let r = ContainerRoot::new();
    r.ok(&[
        "run",
        "-d",
        "--name",
        "crashy",
        IMAGE,
        "sh",
        "-c",
        "echo kept >> /state; sync /state; echo synced; sleep 30",
    ]);
    // Only fsync'ed data must survive a crash: wait for it.
    wait_for("the fsync", Duration::from_secs(5), || {
        r.ok(&["logs", "crashy"]) == "synced\n"
    });
    let (pid, shim) = r.pids("crashy");
    assert!(alive(pid) && alive(shim));
    // kill -9 of the shim this test started (through strata).
    Command::new("kill")
        .arg("-9")
        .arg(shim.to_string())
        .status()
        .unwrap();
    wait_for("the shim to die", Duration::from_secs(5), || !alive(shim));
    wait_for(
        "the container to die with it",
        Duration::from_secs(5),
        || !alive(pid),
    );
    let v = r.inspect("crashy");
    assert_eq!(v["State"]["Status"], "exited");
    assert_eq!(v["State"]["ExitCode"], 137);
    assert!(v["State"]["Error"].as_str().unwrap().contains("shim"));
    assert!(r.host_mounts().is_empty());
    r.ok(&["start", "crashy"]);
    wait_for("the second run", Duration::from_secs(5), || {
        r.ok(&["exec", "crashy", "cat", "/state"]) == "kept\nkept\n"
    });
    r.ok(&["rm", "-f", "crashy"]);
    assert!(r.ids().is_empty());
}

#[test]
fn read_only_rootfs_tmpfs_and_resource_limits() {
    let r = ContainerRoot::new();
    let o = r.run(&[
        "run",
        "--rm",
        "--read-only",
        "--tmpfs",
        "/scratch",
        IMAGE,
        "sh",
        "-c",
        "touch /x 2>&1; echo w > /scratch/f && cat /scratch/f; echo hi > /dev/null && echo dev-ok",
    ]);
    assert_eq!(o.code, 0, "{o:?}");
    assert_eq!(
        o.out, "touch: /x: Read-only file system\nw\ndev-ok\n",
        "{o:?}"
    );
    // Limits land in the container's cgroups (v2 or v1, whichever has the controller).
    r.ok(&[
        "run",
        "-d",
        "--name",
        "limited",
        "--memory",
        "64m",
        "--cpus",
        "0.5",
        "--pids-limit",
        "20",
        IMAGE,
        "sleep",
        "30",
    ]);
    let v = r.inspect("limited");
    let dirs: Vec<PathBuf> = v["Cgroups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| PathBuf::from(d.as_str().unwrap()))
        .collect();
    assert!(!dirs.is_empty());
    let read = |names: &[&str]| -> String {
        for d in &dirs {
            for n in names {
                if let Ok(s) = std::fs::read_to_string(d.join(n)) {
                    return s.trim().to_string();
                }
            }
        }
        panic!("none of {names:?} in {dirs:?}");
    };
    assert_eq!(
        read(&["memory.max", "memory.limit_in_bytes"]),
        (64u64 << 20).to_string()
    );
    let cpu = read(&["cpu.max", "cpu.cfs_quota_us"]);
    assert!(cpu == "50000 100000" || cpu == "50000", "{cpu}");
    assert_eq!(read(&["pids.max"]), "20");
    // The container's init is in them.
    let (pid, _) = r.pids("limited");
    let procs = read(&["cgroup.procs"]);
    assert!(procs.lines().any(|l| l == pid.to_string()), "{procs}");
    // And so is an exec.
    let o = r.ok(&["exec", "limited", "cat", "/proc/self/cgroup"]);
    assert!(o.contains("/strata/"), "{o}");
    // The pids limit holds.
    let o = r.run(&[
        "exec",
        "limited",
        "sh",
        "-c",
        "for i in $(seq 40); do sleep 5 & done; echo all-started",
    ]);
    assert_ne!(o.code, 0, "{o:?}");
    assert!(
        !o.out.contains("all-started") && o.err.contains("can't fork"),
        "{o:?}"
    );
    r.ok(&["rm", "-f", "limited"]);
    for d in &dirs {
        assert!(!d.exists(), "cgroup {} left behind", d.display());
    }
}

#[test]
fn twenty_containers_started_and_removed_concurrently_leak_nothing() {
    let r = ContainerRoot::new();
    let fds_before = std::fs::read_dir("/proc/self/fd").unwrap().count();
    let root = r.path().to_path_buf();
    let handles: Vec<_> = (0..20)
        .map(|i| {
            let root = root.clone();
            std::thread::spawn(move || {
                st_ok(
                    &root,
                    &[
                        "run",
                        "-d",
                        "--name",
                        &format!("c{i}"),
                        "-v",
                        "/anon",
                        IMAGE,
                        "sh",
                        "-c",
                        &format!("echo {i} > /me; sleep 30"),
                    ],
                )
            })
        })
        .collect();
    for h in handles {
        h.join().expect("run -d");
    }
    let ps = r.ok(&["ps", "-q"]);
    assert_eq!(ps.lines().count(), 20, "{ps}");
    let mut pids = Vec::new();
    for i in 0..20 {
        let name = format!("c{i}");
        pids.push(r.pids(&name));
        assert_eq!(r.ok(&["exec", &name, "cat", "/me"]), format!("{i}\n"));
    }
    assert!(r.host_mounts().is_empty());
    let handles: Vec<_> = (0..20)
        .map(|i| {
            let root = root.clone();
            std::thread::spawn(move || st_ok(&root, &["rm", "-f", "-v", &format!("c{i}")]))
        })
        .collect();
    for h in handles {
        h.join().expect("rm -f");
    }
    assert!(r.ids().is_empty());
    for (pid, shim) in pids {
        assert!(!alive(pid), "container init {pid} survived");
        assert!(!alive(shim), "shim {shim} survived");
    }
    assert!(r.host_mounts().is_empty());
    assert!(
        r.ok(&["volume", "ls", "-q"]).trim().is_empty(),
        "anonymous volumes left"
    );
    let left: Vec<_> = std::fs::read_dir(root.join("containers"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .filter(|n| n != ".names")
        .collect();
    assert!(left.is_empty(), "{left:?}");
    assert_eq!(
        std::fs::read_dir(root.join("containers/.names"))
            .unwrap()
            .count(),
        0
    );
    // No descriptor of this process leaked either (other tests may run: allow slack).
    let fds_after = std::fs::read_dir("/proc/self/fd").unwrap().count();
    assert!(fds_after <= fds_before + 16, "{fds_before} -> {fds_after}");
}

#[test]
fn terminals_come_from_the_containers_own_devpts() {
    let r = ContainerRoot::new();
    // -t without a terminal on our side: the container still gets one (24×80 by default).
    let o = r.run(&[
        "run",
        "--rm",
        "-t",
        IMAGE,
        "sh",
        "-c",
        "tty; stty size; exit 4",
    ]);
    assert_eq!(
        (o.code, o.out.as_str()),
        (4, "/dev/pts/0\r\n24 80\r\n"),
        "{o:?}"
    );
    r.ok(&["run", "-d", "--name", "term", IMAGE, "sleep", "30"]);
    let o = r.run(&["exec", "-t", "term", "sh", "-c", "tty; exit 5"]);
    assert_eq!((o.code, o.out.as_str()), (5, "/dev/pts/0\r\n"), "{o:?}");
    // -d --rm: the shim removes the container when it stops.
    r.ok(&["run", "-d", "--rm", "--name", "gone", IMAGE, "sleep", "30"]);
    r.ok(&["stop", "-t", "0", "gone"]);
    assert_eq!(r.run(&["inspect", "gone"]).code, 125);
    // -it through a real terminal (script(1) gives us one): keystrokes in, size follows.
    if Command::new("script").arg("--version").output().is_ok() {
        let cmd = format!(
            "stty cols 100 rows 30; {} --root {} run --rm -it {IMAGE} sh",
            strata_bin().display(),
            r.path().display()
        );
        let mut child = Command::new("script")
            .args(["-qec", &cmd, "/dev/null"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(b"stty size; echo typed-$((6*7)); exit 9\n")
            .unwrap();
        let end = Instant::now() + DEADLINE;
        let status = loop {
            if let Some(s) = child.try_wait().unwrap() {
                break s;
            }
            if Instant::now() > end {
                let _ = child.kill();
                panic!("run -it did not finish");
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        let mut out = String::new();
        child
            .stdout
            .take()
            .unwrap()
            .read_to_string(&mut out)
            .unwrap();
        assert_eq!(status.code(), Some(9), "{out}");
        assert!(
            out.contains("30 100\r\n") && out.contains("typed-42\r\n"),
            "{out}"
        );
    }
}

#[test]
fn concurrent_creates_of_one_name_have_one_winner() {
    let r = ContainerRoot::new();
    let root = r.path().to_path_buf();
    let handles: Vec<_> = (0..8)
        .map(|_| {
            let root = root.clone();
            std::thread::spawn(move || st(&root, &["create", "--name", "only", IMAGE, "true"]).code)
        })
        .collect();
    let codes: Vec<i32> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    assert_eq!(codes.iter().filter(|c| **c == 0).count(), 1, "{codes:?}");
    assert!(codes.iter().all(|c| *c == 0 || *c == 125), "{codes:?}");
    assert_eq!(r.ids().len(), 1);
    // The losers left nothing behind.
    let dirs = std::fs::read_dir(root.join("containers"))
        .unwrap()
        .flatten()
        .filter(|e| e.file_name() != ".names")
        .count();
    assert_eq!(dirs, 1);
}

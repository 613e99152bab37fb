//! Bridges and the iptables rules around them: strata's base chains (`STRATA`,
//! `STRATA-POSTROUTING`, `STRATA-FORWARD`, `STRATA-INPUT`) and their jumps, each network's
//! bridge with its address and rules, and deleting rules by their comment tag. Every command
//! goes through `cmd` (so, without root, into the user's network namespace). Never touches a
//! rule it did not tag.

use tracing::{info, info_span};

use super::{NetError, Network, link_exists, ok, rootless_mode, run, set_sysctl};

pub(super) fn ipt(table: &str, args: &[&str]) -> Result<(), NetError> {
    let mut a = vec!["-w", "5", "-t", table];
    a.extend_from_slice(args);
    run("iptables", &a).map(|_| ())
}

/// `-C` then `-A`/`-I`: adds a rule once.
pub(super) fn ipt_ensure(table: &str, op: &[&str], rule: &[&str]) -> Result<(), NetError> {
    let chain = op[op.len() - 1];
    let chain = if op[0] == "-I" { op[1] } else { chain };
    let mut check = vec!["-w", "5", "-t", table, "-C", chain];
    check.extend_from_slice(rule);
    if ok("iptables", &check) {
        return Ok(());
    }
    let mut a = op.to_vec();
    a.extend_from_slice(rule);
    ipt(table, &a)
}

pub(super) fn ensure_chain(table: &str, chain: &str) -> Result<(), NetError> {
    if ok("iptables", &["-w", "5", "-t", table, "-n", "-L", chain]) {
        return Ok(());
    }
    ipt(table, &["-N", chain])
}

/// strata's base chains and jumps (idempotent).
pub(super) fn ensure_base() -> Result<(), NetError> {
    ensure_chain("nat", "STRATA")?;
    ensure_chain("nat", "STRATA-POSTROUTING")?;
    ensure_chain("filter", "STRATA-FORWARD")?;
    ensure_chain("filter", "STRATA-INPUT")?;
    let local = ["-m", "addrtype", "--dst-type", "LOCAL", "-j", "STRATA"];
    ipt_ensure("nat", &["-A", "PREROUTING"], &local)?;
    ipt_ensure("nat", &["-A", "OUTPUT"], &local)?;
    ipt_ensure("nat", &["-A", "POSTROUTING"], &["-j", "STRATA-POSTROUTING"])?;
    ipt_ensure("filter", &["-I", "FORWARD", "1"], &["-j", "STRATA-FORWARD"])?;
    ipt_ensure("filter", &["-I", "INPUT", "1"], &["-j", "STRATA-INPUT"])?;
    // `route_localnet` (which `localhost:PORT` needs for the replies that come back from
    // the bridge to 127.0.0.1) would also let a container send new packets to the host's
    // 127.0.0.1 services (CVE-2020-8558): drop what arrives from a bridge for 127.0.0.0/8
    // unless it belongs to a connection the host opened, as Kubernetes does.
    ipt_ensure(
        "filter",
        &["-A", "STRATA-INPUT"],
        &[
            "-i",
            "strata+",
            "-d",
            "127.0.0.0/8",
            "-m",
            "conntrack",
            "!",
            "--ctstate",
            "RELATED,ESTABLISHED,DNAT",
            "-j",
            "DROP",
        ],
    )?;
    let fwd: [&[&str]; 4] = [
        &[
            "-o",
            "strata+",
            "-m",
            "conntrack",
            "--ctstate",
            "RELATED,ESTABLISHED",
            "-j",
            "ACCEPT",
        ],
        &[
            "-o",
            "strata+",
            "-m",
            "conntrack",
            "--ctstate",
            "DNAT",
            "-j",
            "ACCEPT",
        ],
        &["-i", "strata+", "-o", "strata+", "-j", "DROP"],
        &["-i", "strata+", "-j", "ACCEPT"],
    ];
    for r in fwd {
        ipt_ensure("filter", &["-A", "STRATA-FORWARD"], r)?;
    }
    Ok(())
}

pub(super) fn net_rules(n: &Network) -> Vec<(&'static str, Vec<String>)> {
    let tag = format!("strata-net:{}", n.bridge);
    let s = |v: &[&str]| -> Vec<String> {
        let mut v: Vec<String> = v.iter().map(|x| x.to_string()).collect();
        v.extend(["-m", "comment", "--comment", &tag].map(String::from));
        v
    };
    let (sub, br) = (n.subnet.as_str(), n.bridge.as_str());
    vec![
        // Outbound: masquerade behind the host's address.
        ("nat", s(&["-s", sub, "!", "-o", br, "-j", "MASQUERADE"])),
        // localhost:PORT and host → container through a published port.
        (
            "nat",
            s(&[
                "-o",
                br,
                "-m",
                "addrtype",
                "--src-type",
                "LOCAL",
                "-j",
                "MASQUERADE",
            ]),
        ),
        // Hairpin: a container reaching a published port of its own network.
        (
            "nat",
            s(&[
                "-s",
                sub,
                "-o",
                br,
                "-m",
                "conntrack",
                "--ctstate",
                "DNAT",
                "-j",
                "MASQUERADE",
            ]),
        ),
        // Members of one network (bridged traffic, if br_netfilter is loaded).
        ("filter", s(&["-i", br, "-o", br, "-j", "ACCEPT"])),
    ]
}

/// The bridge of `n` with its gateway address, up, and its rules.
pub(super) fn ensure_bridge(n: &Network) -> Result<(), NetError> {
    let _s = info_span!("bridge", name = n.bridge).entered();
    ensure_base()?;
    let (_, len) = n.prefix()?;
    if !link_exists(&n.bridge) {
        run("ip", &["link", "add", &n.bridge, "type", "bridge"])?;
        info!("bridge created");
    }
    let addr = format!("{}/{len}", n.gateway);
    let have = run("ip", &["-4", "-o", "addr", "show", "dev", &n.bridge])?;
    if !have.contains(&format!(" {addr} ")) {
        run("ip", &["addr", "add", &addr, "dev", &n.bridge])?;
    }
    run("ip", &["link", "set", &n.bridge, "up"])?;
    set_sysctl(
        &format!("/proc/sys/net/ipv4/conf/{}/route_localnet", n.bridge),
        "1",
    )?;
    let p = "/proc/sys/net/ipv4/ip_forward";
    if rootless_mode()
        || std::fs::read_to_string(p)
            .map(|s| s.trim() != "1")
            .unwrap_or(true)
    {
        set_sysctl(p, "1")?;
    }
    for (table, rule) in net_rules(n) {
        let r: Vec<&str> = rule.iter().map(String::as_str).collect();
        if table == "nat" {
            ipt_ensure(table, &["-A", "STRATA-POSTROUTING"], &r)?;
        } else {
            ipt_ensure(table, &["-I", "STRATA-FORWARD", "1"], &r)?;
        }
    }
    Ok(())
}

pub(super) fn remove_bridge(n: &Network) -> Result<(), NetError> {
    for (table, rule) in net_rules(n) {
        let chain = if table == "nat" {
            "STRATA-POSTROUTING"
        } else {
            "STRATA-FORWARD"
        };
        let mut a = vec!["-w", "5", "-t", table, "-D", chain];
        a.extend(rule.iter().map(String::as_str));
        // Bounded: a rule added twice by hand is removed too, but never loop forever.
        for _ in 0..16 {
            if !ok("iptables", &a) {
                break;
            }
        }
    }
    if link_exists(&n.bridge) {
        run("ip", &["link", "del", &n.bridge])?;
    }
    Ok(())
}

/// Deletes every rule in strata's chains whose comment is exactly `tag`.
pub(super) fn delete_tagged(tag: &str) -> Result<usize, NetError> {
    let mut n = 0;
    for table in ["nat", "filter"] {
        let Ok(save) = run("iptables-save", &["-t", table]) else {
            continue;
        };
        for line in save.lines() {
            let Some(rest) = line.strip_prefix("-A ") else {
                continue;
            };
            if !rest.starts_with("STRATA") {
                continue;
            }
            let args: Vec<&str> = rest.split_whitespace().collect();
            let Some(i) = args.iter().position(|a| *a == "--comment") else {
                continue;
            };
            if args.get(i + 1).map(|c| c.trim_matches('"')) != Some(tag) {
                continue;
            }
            let mut a = vec!["-w", "5", "-t", table, "-D"];
            a.extend(args.iter().map(|s| s.trim_matches('"')));
            run("iptables", &a)?;
            n += 1;
        }
    }
    Ok(n)
}

//! What net plans, checked through the command seam (`cmd`) with a recording double: no root,
//! no host changes. The real commands are covered by `fuse-tests/network.rs`.

use std::cell::RefCell;
use std::rc::Rc;

use super::cmd::{Runner, with_runner};
use super::*;

/// Records every command line (`run: …` or `ok: …`) and answers from a script: `run` gets the
/// output of the first entry whose prefix starts its command line (else empty output), `ok`
/// gets `checks_pass`.
#[derive(Default)]
struct Recorder {
    log: RefCell<Vec<String>>,
    outputs: Vec<(&'static str, &'static str)>,
    checks_pass: bool,
}

impl Runner for Recorder {
    fn run(&self, prog: &str, args: &[&str]) -> Result<String, NetError> {
        let line = format!("{prog} {}", args.join(" "));
        self.log.borrow_mut().push(format!("run: {line}"));
        let out = self
            .outputs
            .iter()
            .find(|(prefix, _)| line.starts_with(prefix))
            .map_or("", |(_, out)| out);
        Ok(out.to_string())
    }

    fn ok(&self, prog: &str, args: &[&str]) -> bool {
        self.log
            .borrow_mut()
            .push(format!("ok: {prog} {}", args.join(" ")));
        self.checks_pass
    }
}

/// Runs `f` against `r`; the command lines it ran.
fn recorded(r: Recorder, f: impl FnOnce()) -> Vec<String> {
    let r = Rc::new(r);
    with_runner(r.clone(), f);
    r.log.take()
}

const NAT: &str = "*nat
:STRATA - [0:0]
-A PREROUTING -m addrtype --dst-type LOCAL -j STRATA
-A STRATA -p tcp -m tcp --dport 8080 -m comment --comment \"strata:abc\" -j DNAT --to-destination 10.213.0.2:80
-A STRATA -p tcp -m tcp --dport 8081 -m comment --comment \"strata:abcd\" -j DNAT --to-destination 10.213.0.3:80
-A POSTROUTING -m comment --comment \"strata:abc\" -j MASQUERADE
COMMIT
";
const FILTER: &str = "*filter
-A STRATA-FORWARD -i strata0 -m comment --comment strata:abc -j ACCEPT
COMMIT
";

#[test]
fn a_containers_rules_are_deleted_by_exact_tag_and_only_in_stratas_chains() {
    let mut n = 0;
    let log = recorded(
        Recorder {
            outputs: vec![
                ("iptables-save -t nat", NAT),
                ("iptables-save -t filter", FILTER),
            ],
            ..Default::default()
        },
        || n = delete_tagged("strata:abc").unwrap(),
    );
    assert_eq!(n, 2);
    assert_eq!(
        log,
        [
            "run: iptables-save -t nat",
            "run: iptables -w 5 -t nat -D STRATA -p tcp -m tcp --dport 8080 -m comment \
             --comment strata:abc -j DNAT --to-destination 10.213.0.2:80",
            "run: iptables-save -t filter",
            "run: iptables -w 5 -t filter -D STRATA-FORWARD -i strata0 -m comment --comment \
             strata:abc -j ACCEPT",
        ]
    );
}

#[test]
fn base_chains_and_jumps_are_added_once() {
    // Nothing there yet: every check fails, and each failed check creates exactly its chain
    // or rule.
    let fresh = recorded(Recorder::default(), || ensure_base().unwrap());
    let checks = fresh.iter().filter(|l| l.starts_with("ok: ")).count();
    let made: Vec<&String> = fresh.iter().filter(|l| l.starts_with("run: ")).collect();
    assert_eq!(made.len(), checks, "{fresh:#?}");
    for want in [
        "run: iptables -w 5 -t nat -N STRATA",
        "run: iptables -w 5 -t nat -N STRATA-POSTROUTING",
        "run: iptables -w 5 -t filter -N STRATA-FORWARD",
        "run: iptables -w 5 -t filter -N STRATA-INPUT",
        "run: iptables -w 5 -t nat -A PREROUTING -m addrtype --dst-type LOCAL -j STRATA",
        "run: iptables -w 5 -t nat -A OUTPUT -m addrtype --dst-type LOCAL -j STRATA",
        "run: iptables -w 5 -t nat -A POSTROUTING -j STRATA-POSTROUTING",
        "run: iptables -w 5 -t filter -I FORWARD 1 -j STRATA-FORWARD",
        "run: iptables -w 5 -t filter -I INPUT 1 -j STRATA-INPUT",
        // CVE-2020-8558: nothing new from a bridge to the host's 127.0.0.0/8.
        "run: iptables -w 5 -t filter -A STRATA-INPUT -i strata+ -d 127.0.0.0/8 -m conntrack \
         ! --ctstate RELATED,ESTABLISHED,DNAT -j DROP",
    ] {
        assert!(made.iter().any(|l| *l == want), "{want} missing: {made:#?}");
    }
    // 4 chains, 5 jumps, 4 forward rules, 1 input rule.
    assert_eq!(made.len(), 4 + 5 + 4 + 1, "{made:#?}");
    // A chain is created before any rule that jumps to it.
    let at = |want: &str| made.iter().position(|l| *l == want).unwrap();
    assert!(
        at("run: iptables -w 5 -t nat -N STRATA")
            < at("run: iptables -w 5 -t nat -A PREROUTING -m addrtype --dst-type LOCAL -j STRATA")
    );
    assert!(
        at("run: iptables -w 5 -t filter -N STRATA-INPUT")
            < at("run: iptables -w 5 -t filter -I INPUT 1 -j STRATA-INPUT")
    );
    // All there: the same checks, and no change.
    let again = recorded(
        Recorder {
            checks_pass: true,
            ..Default::default()
        },
        || ensure_base().unwrap(),
    );
    assert!(again.iter().all(|l| l.starts_with("ok: ")), "{again:#?}");
    assert_eq!(again.len(), checks);
}

#[test]
fn removing_a_networks_rules_is_a_bounded_loop() {
    let n = Network {
        name: "t".into(),
        bridge: "strata-no-such".into(),
        subnet: "10.213.9.0/24".into(),
        gateway: "10.213.9.1".into(),
        created: String::new(),
    };
    // A delete that always "succeeds" (rules added by hand many times) still ends.
    let log = recorded(
        Recorder {
            checks_pass: true,
            ..Default::default()
        },
        || remove_bridge(&n).unwrap(),
    );
    assert_eq!(log.len(), net_rules(&n).len() * 16, "{log:#?}");
    assert!(log[0].starts_with("ok: iptables -w 5 -t nat -D STRATA-POSTROUTING -s 10.213.9.0/24"));
    // The bridge does not exist: no `ip link del`.
    assert!(log.iter().all(|l| !l.contains("link del")));
}

#[test]
fn published_ports_become_one_tagged_dnat_rule_each() {
    let maps = [
        ports::Mapping {
            host_ip: "127.0.0.1".into(),
            host_port: 8080,
            container_port: 80,
            proto: "tcp".into(),
        },
        ports::Mapping {
            host_ip: String::new(),
            host_port: 5300,
            container_port: 53,
            proto: "udp".into(),
        },
    ];
    let log = recorded(Recorder::default(), || {
        ports::add_rules("10.213.0.5", &maps, "strata:abc").unwrap()
    });
    assert_eq!(
        log,
        [
            "run: iptables -w 5 -t nat -A STRATA -d 127.0.0.1 -p tcp --dport 8080 -m comment \
             --comment strata:abc -j DNAT --to-destination 10.213.0.5:80",
            "run: iptables -w 5 -t nat -A STRATA -p udp --dport 5300 -m comment --comment \
             strata:abc -j DNAT --to-destination 10.213.0.5:53",
        ]
    );
}

#[test]
fn a_failing_command_is_an_error_naming_it() {
    struct Fails;
    impl Runner for Fails {
        fn run(&self, prog: &str, args: &[&str]) -> Result<String, NetError> {
            Err(NetError::Cmd {
                cmd: format!("{prog} {}", args.join(" ")),
                msg: "Permission denied (you must be root)".into(),
            })
        }
        fn ok(&self, _: &str, _: &[&str]) -> bool {
            false
        }
    }
    let e = with_runner(Rc::new(Fails), ensure_base)
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with("iptables -w 5 -t ") && e.ends_with(": Permission denied (you must be root)"),
        "{e}"
    );
}

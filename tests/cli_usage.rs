//! The command line as a user meets it, through the real binary and without privileges: one
//! error format for every verb, read-only commands on a state root that does not exist yet,
//! help texts, shell completions and man pages.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

fn strata_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_strata"))
}

/// Runs strata with `--root root`: (exit code, stdout, stderr).
fn strata(root: &Path, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(strata_bin())
        .arg("--root")
        .arg(root)
        .args(args)
        .env("RUST_LOG", "strata=warn")
        .env_remove("STRATA_ROOT")
        .output()
        .expect("run strata");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The subcommand names a `--help` text lists under "Commands:" (without `help`).
fn commands_in_help(help: &str) -> Vec<String> {
    help.lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|c| *c != "help")
        .map(str::to_string)
        .collect()
}

/// Every visible command path (`["mount"]`, `["volume", "ls"]`, …) from the help texts.
fn every_command(root: &Path) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    let mut todo: Vec<Vec<String>> = vec![vec![]];
    while let Some(path) = todo.pop() {
        let mut args: Vec<&str> = path.iter().map(String::as_str).collect();
        args.push("--help");
        let (code, help, err) = strata(root, &args);
        assert_eq!(code, 0, "strata {args:?}: {err}");
        let subs = commands_in_help(&help);
        if subs.is_empty() {
            out.push(path);
        } else {
            for s in subs {
                let mut p = path.clone();
                p.push(s);
                todo.push(p);
            }
        }
    }
    out.sort();
    out
}

/// Checks one failed run: exit 125, stderr's first line `strata: …`, no other error format.
fn assert_strata_error(args: &[&str], (code, out, err): (i32, String, String)) {
    assert_eq!(code, 125, "strata {args:?}: exit {code}\n{out}{err}");
    assert!(
        err.starts_with("strata: "),
        "strata {args:?}: stderr is not `strata: …`: {err:?}"
    );
    assert!(
        !err.contains("Error:") && !err.contains("error:"),
        "strata {args:?}: a second error format: {err:?}"
    );
}

#[test]
fn every_subcommand_reports_a_bad_argument_as_strata_error_125() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    let out = tmp.path().join("out.tar").display().to_string();
    let missing = tmp.path().join("missing").display().to_string();
    let tmp_dir = tmp.path().display().to_string();
    // A bad argument per command (what a user mistypes: a name that does not exist, a path
    // that is not there, an invalid name); commands without arguments get only the bad flag.
    let bad: BTreeMap<&str, Vec<&str>> = [
        ("load", vec![missing.as_str()]),
        ("import", vec![missing.as_str()]),
        ("tag", vec!["nosuch", "x:1"]),
        ("rmi", vec!["nosuch"]),
        ("inspect", vec!["nosuch"]),
        ("mount", vec!["nosuch", missing.as_str()]),
        ("umount", vec![missing.as_str()]),
        ("diff", vec!["nosuch"]),
        ("commit", vec!["nosuch"]),
        ("export", vec!["nosuch", "-o", out.as_str()]),
        ("save", vec!["nosuch", "-o", out.as_str()]),
        ("image layers", vec!["nosuch"]),
        ("image diff", vec!["nosuch", "nosuch2"]),
        ("image check", vec!["nosuch"]),
        ("run", vec!["--network", "none", "nosuch"]),
        ("create", vec!["--network", "none", "nosuch"]),
        ("start", vec!["nosuch"]),
        ("stop", vec!["nosuch"]),
        ("restart", vec!["nosuch"]),
        ("rm", vec!["nosuch"]),
        ("logs", vec!["nosuch"]),
        ("exec", vec!["nosuch", "true"]),
        ("kill", vec!["nosuch"]),
        ("wait", vec!["nosuch"]),
        ("volume create", vec!["bad/name"]),
        ("volume inspect", vec!["nosuch"]),
        ("volume rm", vec!["nosuch"]),
        ("network create", vec!["bad name!"]),
        ("network inspect", vec!["nosuch"]),
        ("network rm", vec!["nosuch"]),
        ("port", vec!["nosuch"]),
        ("completion", vec!["nosuch-shell"]),
        // An address that exists and is not a socket (refused before anything is made).
        ("snapshotter", vec!["--address", tmp_dir.as_str()]),
    ]
    .into_iter()
    .collect();
    let no_args = ["images", "ps", "volume ls", "network ls", "info"];

    let commands = every_command(&root);
    assert!(commands.len() > 30, "{commands:?}");
    for cmd in &commands {
        let name = cmd.join(" ");
        let path: Vec<&str> = cmd.iter().map(String::as_str).collect();
        // A flag no command has.
        let mut args = path.clone();
        args.push("--no-such-flag");
        assert_strata_error(&args, strata(&root, &args));
        // A bad value.
        match bad.get(name.as_str()) {
            Some(values) => {
                let mut args = path.clone();
                args.extend(values);
                assert_strata_error(&args, strata(&root, &args));
            }
            None => assert!(
                no_args.contains(&name.as_str()),
                "no bad-argument case for `strata {name}`: add one"
            ),
        }
    }
    // A missing or unknown subcommand, and no subcommand at all.
    for args in [
        &["nosuch"][..],
        &["volume"][..],
        &["network", "nosuch"][..],
        &[][..],
    ] {
        let run = strata(&root, args);
        assert!(
            !run.2.contains("__"),
            "{args:?}: internal commands shown: {}",
            run.2
        );
        assert_strata_error(args, run);
    }
    // Several names, some bad: each failure on its own line, one format.
    let (code, _, err) = strata(&root, &["rmi", "nosuch1", "nosuch2"]);
    assert_eq!(code, 125);
    assert!(err.lines().all(|l| l.starts_with("strata: ")), "{err:?}");
}

#[test]
fn help_and_version_are_no_errors() {
    let tmp = tempfile::tempdir().unwrap();
    for args in [
        &["--help"][..],
        &["--version"][..],
        &["mount", "--help"][..],
    ] {
        let (code, out, err) = strata(tmp.path(), args);
        assert_eq!(code, 0, "{args:?}: {err}");
        assert!(!out.is_empty() && err.is_empty(), "{args:?}: {err}");
    }
    // `mount` offers --rw: its help must not call it read-only only.
    let (_, help, _) = strata(tmp.path(), &["mount", "--help"]);
    let about = help.lines().next().unwrap_or_default();
    assert!(about.contains("--rw"), "{about}");
    let (_, help, _) = strata(tmp.path(), &["rmi", "--help"]);
    assert!(help.contains("in use"), "{help}");
}

#[test]
fn read_only_commands_on_a_missing_root_answer_empty_and_create_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("not-yet");
    for args in [
        &["images"][..],
        &["images", "-q"],
        &["ps"],
        &["ps", "-a", "-q"],
        &["volume", "ls", "-q"],
        &["network", "ls", "-q"],
    ] {
        let (code, out, err) = strata(&root, args);
        assert_eq!(code, 0, "{args:?}: {err}");
        assert!(
            out.lines().all(|l| l.contains("ID")
                || l.contains("NAME")
                || ["bridge", "host", "none"].contains(&l)),
            "{args:?}: {out}"
        );
        assert!(!root.exists(), "strata {args:?} created the state root");
    }
    let (code, out, _) = strata(&root, &["images", "--json"]);
    assert_eq!((code, out.trim()), (0, "[]"));
    let (code, out, _) = strata(&root, &["volume", "ls", "--json"]);
    assert_eq!((code, out.trim()), (0, "[]"));
    for args in [
        &["inspect", "x"][..],
        &["logs", "x"],
        &["image", "layers", "x"],
    ] {
        let (code, _, err) = strata(&root, args);
        assert_eq!(code, 125, "{args:?}");
        assert!(err.starts_with("strata: no such"), "{args:?}: {err}");
        assert!(!root.exists(), "strata {args:?} created the state root");
    }
}

#[test]
fn completions_and_man_pages_come_from_the_command_definitions() {
    let tmp = tempfile::tempdir().unwrap();
    let (code, bash, err) = strata(tmp.path(), &["completion", "bash"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        bash.contains("complete -F") && bash.contains("strata"),
        "{bash}"
    );
    for verb in ["mount", "rmi", "volume", "--rw", "--layer"] {
        assert!(bash.contains(verb), "bash completion lacks {verb}");
    }
    let (code, zsh, _) = strata(tmp.path(), &["completion", "zsh"]);
    assert_eq!(code, 0);
    assert!(zsh.starts_with("#compdef strata"), "{zsh}");
    let (code, fish, _) = strata(tmp.path(), &["completion", "fish"]);
    assert_eq!(code, 0);
    assert!(fish.contains("complete -c strata"), "{fish}");

    let man = tmp.path().join("man");
    let (code, _, err) = strata(tmp.path(), &["__man", man.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    let page = std::fs::read_to_string(man.join("strata.1")).unwrap();
    assert!(page.contains(".TH strata 1"), "{page}");
    let mount = std::fs::read_to_string(man.join("strata-mount.1")).unwrap();
    assert!(mount.contains("\\-\\-rw"), "{mount}");
    assert!(man.join("strata-volume-ls.1").is_file());
    // The internal commands stay out of the pages.
    assert!(!man.join("strata-__man.1").exists());
    assert!(!page.contains("__shim"));
}

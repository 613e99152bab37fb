//! The container's seccomp filter: Docker's profile format (`--security-opt
//! seccomp=profile.json`), strata's default profile (the same policy as Docker's default:
//! an allow-list, everything else `EPERM`), resolving a profile for one container (its
//! capabilities, this machine's architecture and kernel) into the OCI `linux.seccomp`
//! object of its `config.json`, and loading that object as a BPF filter (libseccomp) just
//! before `execve`.
//!
//! Resolution happens at `create`, so `config.json` says exactly what the container gets;
//! the init and `exec` only compile and load it. This module never decides anything about
//! capabilities: it reads the set the spec already has.

mod default;

use std::collections::BTreeSet;
use std::path::Path;
use std::str::FromStr;

use libseccomp::{
    ScmpAction, ScmpArch, ScmpArgCompare, ScmpCompareOp, ScmpFilterContext, ScmpSyscall,
};
use serde::{Deserialize, Serialize};

use super::RuntimeError;

pub use default::default_profile;

/// A seccomp profile in Docker's format (`docker run --security-opt seccomp=FILE`).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct Profile {
    pub default_action: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_errno_ret: Option<u32>,
    /// Plain list of architectures (older profiles).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub architectures: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub arch_map: Vec<ArchMap>,
    #[serde(default)]
    pub syscalls: Vec<ProfileRule>,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct ArchMap {
    pub architecture: String,
    #[serde(default)]
    pub sub_architectures: Option<Vec<String>>,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct ProfileRule {
    #[serde(default)]
    pub names: Vec<String>,
    /// Older profiles name one syscall per rule.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub action: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub errno_ret: Option<u32>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<Arg>,
    #[serde(default)]
    pub includes: Filter,
    #[serde(default)]
    pub excludes: Filter,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
}

/// When a rule applies: capabilities the container has, the machine's architecture (Go's
/// names: amd64, arm64, …), the kernel's version.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct Filter {
    #[serde(default)]
    pub caps: Vec<String>,
    #[serde(default)]
    pub arches: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_kernel: Option<String>,
}

/// An argument condition, as in Docker's profiles and the OCI spec.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Arg {
    pub index: u32,
    pub value: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub value_two: u64,
    pub op: String,
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

/// The OCI runtime spec's `linux.seccomp`: a profile resolved for one container.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Seccomp {
    pub default_action: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_errno_ret: Option<u32>,
    #[serde(default)]
    pub architectures: Vec<String>,
    #[serde(default)]
    pub syscalls: Vec<SyscallRule>,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SyscallRule {
    pub names: Vec<String>,
    pub action: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub errno_ret: Option<u32>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<Arg>,
}

/// What `--security-opt seccomp=…` asked for.
#[derive(Debug, Clone, PartialEq)]
pub enum Choice {
    Default,
    Unconfined,
    File(std::path::PathBuf),
}

impl Choice {
    /// `--security-opt` values; `None` when the option is not about seccomp.
    pub fn parse(opt: &str) -> Option<Choice> {
        let v = opt
            .strip_prefix("seccomp=")
            .or_else(|| opt.strip_prefix("seccomp:"))?;
        Some(match v {
            "unconfined" => Choice::Unconfined,
            "" | "default" | "builtin" => Choice::Default,
            path => Choice::File(path.into()),
        })
    }

    /// The profile this choice names (`None`: unconfined).
    pub fn profile(&self) -> Result<Option<Profile>, RuntimeError> {
        match self {
            Choice::Unconfined => Ok(None),
            Choice::Default => Ok(Some(default_profile())),
            Choice::File(p) => load_profile(p).map(Some),
        }
    }
}

fn bad(why: impl Into<String>) -> RuntimeError {
    RuntimeError::InvalidArg {
        what: "seccomp profile",
        value: String::new(),
        why: why.into(),
    }
}

/// Reads and checks a profile file in Docker's format.
pub fn load_profile(path: &Path) -> Result<Profile, RuntimeError> {
    let text = std::fs::read(path).map_err(|e| RuntimeError::InvalidArg {
        what: "seccomp profile",
        value: path.display().to_string(),
        why: e.to_string(),
    })?;
    let p: Profile = serde_json::from_slice(&text).map_err(|e| RuntimeError::InvalidArg {
        what: "seccomp profile",
        value: path.display().to_string(),
        why: format!("not a Docker seccomp profile: {e}"),
    })?;
    check(&p).map_err(|e| match e {
        RuntimeError::InvalidArg { what, why, .. } => RuntimeError::InvalidArg {
            what,
            value: path.display().to_string(),
            why,
        },
        other => other,
    })?;
    Ok(p)
}

/// Every action, operator and architecture of `p` is one libseccomp knows.
fn check(p: &Profile) -> Result<(), RuntimeError> {
    action(&p.default_action, p.default_errno_ret)?;
    for a in p
        .architectures
        .iter()
        .chain(p.arch_map.iter().map(|m| &m.architecture))
    {
        ScmpArch::from_str(a).map_err(|_| bad(format!("unknown architecture {a:?}")))?;
    }
    for r in &p.syscalls {
        action(&r.action, r.errno_ret)?;
        for a in &r.args {
            compare(a)?;
        }
        if r.names.is_empty() && r.name.is_none() {
            return Err(bad("a rule names no syscall"));
        }
    }
    Ok(())
}

fn action(name: &str, errno: Option<u32>) -> Result<ScmpAction, RuntimeError> {
    Ok(match name {
        "SCMP_ACT_ALLOW" => ScmpAction::Allow,
        "SCMP_ACT_ERRNO" => ScmpAction::Errno(errno.unwrap_or(libc::EPERM as u32) as i32),
        "SCMP_ACT_KILL" | "SCMP_ACT_KILL_THREAD" => ScmpAction::KillThread,
        "SCMP_ACT_KILL_PROCESS" => ScmpAction::KillProcess,
        "SCMP_ACT_TRAP" => ScmpAction::Trap,
        "SCMP_ACT_LOG" => ScmpAction::Log,
        "SCMP_ACT_TRACE" => ScmpAction::Trace(errno.unwrap_or(0) as u16),
        other => return Err(bad(format!("unsupported action {other:?}"))),
    })
}

fn compare(a: &Arg) -> Result<ScmpArgCompare, RuntimeError> {
    if a.index > 5 {
        return Err(bad(format!("argument index {} (0 to 5)", a.index)));
    }
    let op = match a.op.as_str() {
        "SCMP_CMP_MASKED_EQ" => ScmpCompareOp::MaskedEqual(a.value),
        other => ScmpCompareOp::from_str(other)
            .map_err(|_| bad(format!("unknown comparison {other:?}")))?,
    };
    let datum = if a.op == "SCMP_CMP_MASKED_EQ" {
        a.value_two
    } else {
        a.value
    };
    Ok(ScmpArgCompare::new(a.index, op, datum))
}

/// This machine's architecture in the profile's two spellings: libseccomp's token
/// (`SCMP_ARCH_X86_64`) and Go's (`amd64`), which `includes.arches` uses.
fn machine() -> (&'static str, &'static str) {
    match std::env::consts::ARCH {
        "x86_64" => ("SCMP_ARCH_X86_64", "amd64"),
        "aarch64" => ("SCMP_ARCH_AARCH64", "arm64"),
        "x86" => ("SCMP_ARCH_X86", "386"),
        "arm" => ("SCMP_ARCH_ARM", "arm"),
        "riscv64" => ("SCMP_ARCH_RISCV64", "riscv64"),
        "s390x" => ("SCMP_ARCH_S390X", "s390x"),
        "powerpc64" => ("SCMP_ARCH_PPC64LE", "ppc64le"),
        other => ("SCMP_ARCH_NATIVE", other),
    }
}

/// `major.minor` of the running kernel.
fn kernel_version() -> (u32, u32) {
    let uname = rustix::system::uname();
    let rel = uname.release().to_string_lossy().into_owned();
    version(&rel)
}

fn version(s: &str) -> (u32, u32) {
    let mut it = s.split(|c: char| !c.is_ascii_digit());
    let major = it.next().and_then(|x| x.parse().ok()).unwrap_or(0);
    let minor = it.next().and_then(|x| x.parse().ok()).unwrap_or(0);
    (major, minor)
}

/// Resolves `profile` for a container whose bounding set is `caps`: Docker's rules for
/// `includes`/`excludes` (all capabilities listed must be held; the machine's architecture;
/// the kernel's minimum version) and its `archMap`.
pub fn resolve(profile: &Profile, caps: &[String]) -> Seccomp {
    let (scmp_arch, go_arch) = machine();
    resolve_for(profile, caps, scmp_arch, go_arch, kernel_version())
}

fn resolve_for(
    profile: &Profile,
    caps: &[String],
    scmp_arch: &str,
    go_arch: &str,
    kernel: (u32, u32),
) -> Seccomp {
    let has = |c: &String| caps.iter().any(|x| x == c);
    let applies = |inc: &Filter, exc: &Filter| -> bool {
        if !inc.caps.is_empty() && !inc.caps.iter().all(has) {
            return false;
        }
        if !inc.arches.is_empty() && !inc.arches.iter().any(|a| a == go_arch) {
            return false;
        }
        if let Some(min) = &inc.min_kernel
            && kernel < version(min)
        {
            return false;
        }
        if !exc.caps.is_empty() && exc.caps.iter().any(has) {
            return false;
        }
        if !exc.arches.is_empty() && exc.arches.iter().any(|a| a == go_arch) {
            return false;
        }
        true
    };
    let mut architectures: Vec<String> = profile.architectures.clone();
    if let Some(m) = profile
        .arch_map
        .iter()
        .find(|m| m.architecture == scmp_arch)
    {
        architectures.push(m.architecture.clone());
        architectures.extend(m.sub_architectures.iter().flatten().cloned());
    }
    let mut seen = BTreeSet::new();
    architectures.retain(|a| seen.insert(a.clone()));
    let syscalls = profile
        .syscalls
        .iter()
        .filter(|r| applies(&r.includes, &r.excludes))
        .map(|r| SyscallRule {
            names: if r.names.is_empty() {
                r.name.iter().cloned().collect()
            } else {
                r.names.clone()
            },
            action: r.action.clone(),
            errno_ret: r.errno_ret,
            args: r.args.clone(),
        })
        .collect();
    Seccomp {
        default_action: profile.default_action.clone(),
        default_errno_ret: profile.default_errno_ret,
        architectures,
        syscalls,
    }
}

/// Compiles `s` and loads it into the calling thread (the container's process, just before
/// `execve`). Syscalls this machine does not know are skipped, as runc does. Needs
/// `no_new_privs` or CAP_SYS_ADMIN (libseccomp sets `no_new_privs` itself).
pub fn load(s: &Seccomp) -> Result<(), String> {
    let default = action(&s.default_action, s.default_errno_ret).map_err(|e| e.to_string())?;
    let mut ctx = ScmpFilterContext::new(default).map_err(|e| format!("seccomp: {e}"))?;
    for a in &s.architectures {
        let arch = ScmpArch::from_str(a).map_err(|e| format!("seccomp: {a}: {e}"))?;
        ctx.add_arch(arch)
            .map_err(|e| format!("seccomp: adding {a}: {e}"))?;
    }
    for r in &s.syscalls {
        let act = action(&r.action, r.errno_ret).map_err(|e| e.to_string())?;
        if act == default {
            continue;
        }
        let conds = r
            .args
            .iter()
            .map(compare)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| e.to_string())?;
        for name in &r.names {
            let Ok(sc) = ScmpSyscall::from_name(name) else {
                continue;
            };
            let res = if conds.is_empty() {
                ctx.add_rule(act, sc)
            } else {
                ctx.add_rule_conditional(act, sc, &conds)
            };
            res.map_err(|e| format!("seccomp: rule for {name}: {e}"))?;
        }
    }
    ctx.load()
        .map_err(|e| format!("loading the seccomp filter: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caps(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    fn allowed<'a>(s: &'a Seccomp, name: &str) -> Vec<&'a SyscallRule> {
        s.syscalls
            .iter()
            .filter(|r| r.names.iter().any(|n| n == name) && r.action == "SCMP_ACT_ALLOW")
            .collect()
    }

    #[test]
    fn default_profile_follows_capabilities() {
        let p = default_profile();
        let plain = resolve_for(
            &p,
            &caps(&["CAP_CHOWN"]),
            "SCMP_ARCH_X86_64",
            "amd64",
            (6, 18),
        );
        assert_eq!(plain.default_action, "SCMP_ACT_ERRNO");
        assert_eq!(
            plain.architectures,
            ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"]
        );
        for never in [
            "unshare",
            "mount",
            "keyctl",
            "bpf",
            "perf_event_open",
            "setns",
        ] {
            assert!(allowed(&plain, never).is_empty(), "{never} allowed");
        }
        for always in ["read", "execve", "openat", "arch_prctl", "ptrace"] {
            assert!(!allowed(&plain, always).is_empty(), "{always} refused");
        }
        // clone only without namespace flags; clone3 answers ENOSYS so libc falls back.
        let clone = allowed(&plain, "clone");
        assert_eq!(clone.len(), 1);
        assert_eq!(clone[0].args[0].op, "SCMP_CMP_MASKED_EQ");
        assert!(
            plain
                .syscalls
                .iter()
                .any(|r| r.names == ["clone3"] && r.errno_ret == Some(libc::ENOSYS as u32))
        );
        let admin = resolve_for(
            &p,
            &caps(&["CAP_SYS_ADMIN"]),
            "SCMP_ARCH_X86_64",
            "amd64",
            (6, 18),
        );
        assert!(!allowed(&admin, "unshare").is_empty());
        assert!(!allowed(&admin, "mount").is_empty());
        assert!(allowed(&admin, "clone").iter().any(|r| r.args.is_empty()));
        let arm = resolve_for(&p, &[], "SCMP_ARCH_AARCH64", "arm64", (6, 18));
        assert_eq!(arm.architectures, ["SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"]);
        assert!(allowed(&arm, "arch_prctl").is_empty());
        let old = resolve_for(&p, &[], "SCMP_ARCH_X86_64", "amd64", (4, 4));
        assert!(allowed(&old, "ptrace").is_empty());
    }

    #[test]
    fn profiles_are_checked() {
        assert_eq!(
            Choice::parse("seccomp=unconfined"),
            Some(Choice::Unconfined)
        );
        assert_eq!(
            Choice::parse("seccomp=/x.json"),
            Some(Choice::File("/x.json".into()))
        );
        assert_eq!(Choice::parse("no-new-privileges"), None);
        let mut p = default_profile();
        p.syscalls[0].action = "SCMP_ACT_BOGUS".into();
        assert!(check(&p).is_err());
        let mut p = default_profile();
        p.syscalls[0].args.push(Arg {
            index: 9,
            value: 0,
            value_two: 0,
            op: "SCMP_CMP_EQ".into(),
        });
        assert!(check(&p).is_err());
        assert!(check(&default_profile()).is_ok());
        // The default round-trips through Docker's JSON form.
        let text = serde_json::to_string(&default_profile()).unwrap();
        let back: Profile = serde_json::from_str(&text).unwrap();
        assert_eq!(back, default_profile());
    }

    #[test]
    fn versions_parse() {
        assert_eq!(version("6.18.0-rc1"), (6, 18));
        assert_eq!(version("4.8"), (4, 8));
        assert_eq!(version("junk"), (0, 0));
    }
}

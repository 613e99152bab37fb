//! A container's `config.json`, shaped like the OCI runtime spec (process, root, hostname,
//! mounts, linux namespaces, devices, resources, masked and read-only paths), and how `run` /
//! `create` build it from an image's config and the command-line options.
//!
//! The shim executes exactly this file, so a runc-style `create/start` on a bundle is a thin
//! layer over it later.
//!
//! One file a concept, all re-exported here so callers say `runtime::spec::X`:
//! - `oci`: the serialized types (`Spec`, `Process`, `Mount`, `Linux`, `Resources`, …);
//! - `caps`: capability names, numbers and Docker's default set;
//! - `options`: what `run`/`create` were asked (`CreateOptions`) and the parsing of single
//!   option values (`--memory`, signals, `-u`, `--security-opt`);
//! - `env`: env files and the merging of `KEY=VALUE` lists;
//! - `volumes`: `-v` and `--tmpfs` arguments, the image's declared volumes;
//! - `resolv`: the container's `/etc/resolv.conf`;
//! - `build`: the spec of a new container from the image config and the options.
//!
//! Never does: touch the filesystem, mount, or start anything; it only describes.

mod build;
mod caps;
mod env;
mod oci;
mod options;
mod resolv;
mod volumes;

pub use build::{BuildInput, DEFAULT_PATH, MASKED_PATHS, READONLY_PATHS, build, command_line};
pub use caps::{ALL_CAPS, DEFAULT_CAPS, cap_mask};
pub use env::{merge_env, parse_env_file};
pub use oci::{
    Capabilities, CpuLimit, Device, Linux, MemoryLimit, Mount, Namespace, OCI_VERSION, PidsLimit,
    Process, Resources, Root, Spec, User,
};
pub use options::{
    CreateOptions, parse_bytes, parse_signal, rootfs_passthrough, split_user, user_field,
};
pub use resolv::resolv_conf;
pub use volumes::{VolumeArg, VolumeMount, image_volumes, parse_tmpfs, parse_volume};

use super::RuntimeError;

fn invalid(what: &'static str, value: &str, why: impl Into<String>) -> RuntimeError {
    RuntimeError::InvalidArg {
        what,
        value: value.to_string(),
        why: why.into(),
    }
}

/// Cleans an absolute path lexically: no `.`, no `..`, no double or trailing slashes.
pub fn clean_path(p: &str) -> String {
    let mut out: Vec<&str> = Vec::new();
    for c in p.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            c => out.push(c),
        }
    }
    format!("/{}", out.join("/"))
}

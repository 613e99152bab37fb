//! What a container's network will be, decided at `create` from `--network`, `-p`, `-P`
//! and `--network-alias` (and, without root, what is possible there): the recorded
//! [`ContainerNet`]. Reads the networks and the kernel's port limit; changes nothing.

use std::path::Path;

use super::{
    ContainerNet, DEFAULT_NETWORK, NetError, NetOptions, Networks, invalid, pasta, ports,
    valid_name,
};

/// Builds the recorded configuration from the options and the image's exposed ports.
pub fn plan(
    root: &Path,
    opts: &NetOptions,
    exposed: &[String],
) -> Result<(ContainerNet, Vec<String>), NetError> {
    let mode = opts
        .network
        .clone()
        .unwrap_or_else(|| DEFAULT_NETWORK.into());
    let mode = if mode == "default" {
        DEFAULT_NETWORK.into()
    } else {
        mode
    };
    let mut warnings = Vec::new();
    let rootless = crate::paths::Mode::current() == crate::paths::Mode::Rootless;
    let user_network = !matches!(mode.as_str(), "host" | "none" | DEFAULT_NETWORK);
    if user_network {
        Networks::open(root)?.get(&mode)?;
    }
    if rootless && !matches!(mode.as_str(), "host" | "none") && !pasta::available() {
        return Err(NetError::Rootless(
            "containers without root reach the network through pasta, which is not installed \
             (Debian package passt); install it, or use --network none or --network host"
                .into(),
        ));
    }
    let mut ports = Vec::new();
    for p in &opts.publish {
        ports.extend(ports::parse(p)?);
    }
    if opts.publish_all {
        for e in exposed {
            ports.extend(ports::parse(e)?);
        }
    }
    for a in &opts.aliases {
        if !valid_name(a) {
            return Err(invalid(
                "network alias",
                a,
                "use [a-zA-Z0-9][a-zA-Z0-9_.-]*",
            ));
        }
    }
    if rootless && !matches!(mode.as_str(), "host" | "none") {
        let first = unprivileged_port_start();
        if let Some(p) = ports
            .iter()
            .find(|p| p.host_port != 0 && p.host_port < first)
        {
            return Err(invalid(
                "published port",
                &p.host_port.to_string(),
                format!(
                    "without root only host ports from {first} up can be published \
                     (net.ipv4.ip_unprivileged_port_start)"
                ),
            ));
        }
    }
    if !ports.is_empty() && !matches!(mode.as_str(), "host" | "none") {
        // fine
    } else if !ports.is_empty() {
        warnings.push(format!(
            "published ports are discarded when using {mode} network mode"
        ));
        ports.clear();
    }
    Ok((
        ContainerNet {
            mode,
            ports,
            aliases: opts.aliases.clone(),
        },
        warnings,
    ))
}

/// The first port an ordinary user may bind (`net.ipv4.ip_unprivileged_port_start`).
fn unprivileged_port_start() -> u16 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_unprivileged_port_start")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(1024)
}

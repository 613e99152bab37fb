//! `network create/ls/inspect/rm`, `port`, and the network flags of `run`/`create`.

use std::path::Path;

use anyhow::Context;
use clap::{Args, Subcommand};
use serde_json::{Value, json};

use crate::net::{self, NetOptions, Networks};
use crate::runtime::{Container, Runtime, Status};

#[derive(Args, Debug, Clone, Default)]
pub struct NetArgs {
    /// Network: `bridge` (default), `host`, `none`, or a network made by `network create`.
    #[arg(long = "network", alias = "net", value_name = "NETWORK")]
    pub network: Option<String>,
    /// Publish a container port: `[ip:][hostPort[-end]:]containerPort[-end][/tcp|/udp]`.
    #[arg(short = 'p', long = "publish", value_name = "PORT")]
    pub publish: Vec<String>,
    /// Publish every port the image exposes, on free host ports.
    #[arg(short = 'P', long = "publish-all")]
    pub publish_all: bool,
    /// Another name of the container on its user network.
    #[arg(long = "network-alias", value_name = "ALIAS")]
    pub aliases: Vec<String>,
}

impl NetArgs {
    pub fn options(&self) -> NetOptions {
        if (self.network.as_deref() == Some("host") || self.network.as_deref() == Some("none"))
            && (!self.publish.is_empty() || self.publish_all)
        {
            eprintln!(
                "WARNING: Published ports are discarded when using {} network mode",
                self.network.as_deref().unwrap_or_default()
            );
        }
        NetOptions {
            network: self.network.clone(),
            publish: self.publish.clone(),
            publish_all: self.publish_all,
            aliases: self.aliases.clone(),
        }
    }
}

#[derive(Subcommand, Debug)]
pub enum NetworkCommand {
    /// Create a network (its own bridge and subnet).
    Create {
        /// The network's name.
        name: String,
        /// The subnet, e.g. 10.213.7.0/24 (default: the first free 10.213.N.0/24).
        #[arg(long)]
        subnet: Option<String>,
    },
    /// List networks.
    #[command(alias = "list")]
    Ls {
        /// JSON output.
        #[arg(long)]
        json: bool,
        /// Only names.
        #[arg(short, long)]
        quiet: bool,
    },
    /// Show networks as JSON.
    Inspect {
        /// Network names.
        #[arg(required = true, value_name = "NETWORK")]
        names: Vec<String>,
    },
    /// Remove networks (refused while a container uses one).
    #[command(alias = "remove")]
    Rm {
        /// Network names.
        #[arg(required = true, value_name = "NETWORK")]
        names: Vec<String>,
    },
}

/// Containers of this root configured for network `name` (running or not).
fn configured_users(rt: &Runtime, name: &str) -> anyhow::Result<Vec<Container>> {
    Ok(rt
        .list()?
        .into_iter()
        .filter(|c| c.meta.net.mode == name)
        .collect())
}

fn network_json(rt: &Runtime, n: &net::Network) -> anyhow::Result<Value> {
    let users = configured_users(rt, &n.name)?;
    let containers: serde_json::Map<String, Value> = users
        .iter()
        .map(|c| {
            let a = net::attached(&c.dir);
            (
                c.id.clone(),
                json!({
                    "Name": c.meta.name,
                    "Running": c.state.status == Status::Running,
                    "IPv4Address": a.map(|a| format!("{}/{}", a.ip, a.prefix)).unwrap_or_default(),
                }),
            )
        })
        .collect();
    Ok(json!({
        "Name": n.name,
        "Driver": "bridge",
        "Bridge": n.bridge,
        "Created": n.created,
        "IPAM": {"Config": [{"Subnet": n.subnet, "Gateway": n.gateway}]},
        "Containers": containers,
    }))
}

pub fn dispatch(root: &Path, cmd: NetworkCommand) -> anyhow::Result<i32> {
    let nets = Networks::open(root)?;
    let rt = Runtime::open(root)?;
    match cmd {
        NetworkCommand::Create { name, subnet } => {
            let n = nets.create(&name, subnet.as_deref())?;
            println!("{}", n.name);
        }
        NetworkCommand::Ls { json, quiet } => {
            let list = nets.list()?;
            if json {
                let v: Vec<Value> = list
                    .iter()
                    .map(|n| network_json(&rt, n))
                    .collect::<anyhow::Result<_>>()?;
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else if quiet {
                for n in &list {
                    println!("{}", n.name);
                }
                println!("host\nnone");
            } else {
                println!("{:<20} {:<10} {:<18} BRIDGE", "NAME", "DRIVER", "SUBNET");
                for n in &list {
                    println!(
                        "{:<20} {:<10} {:<18} {}",
                        n.name, "bridge", n.subnet, n.bridge
                    );
                }
                println!("{:<20} {:<10} {:<18} -", "host", "host", "-");
                println!("{:<20} {:<10} {:<18} -", "none", "null", "-");
            }
        }
        NetworkCommand::Inspect { names } => {
            let mut out = Vec::new();
            for n in &names {
                out.push(network_json(&rt, &nets.get(n)?)?);
            }
            println!("{}", serde_json::to_string_pretty(&out)?);
        }
        NetworkCommand::Rm { names } => {
            for name in &names {
                let n = nets.get(name)?;
                let mut users: Vec<String> = configured_users(&rt, name)?
                    .into_iter()
                    .map(|c| c.meta.name)
                    .collect();
                for u in net::users(&n) {
                    if !users.contains(&u) {
                        users.push(u);
                    }
                }
                if !users.is_empty() {
                    return Err(net::NetError::InUse {
                        name: name.clone(),
                        containers: users.join(", "),
                    }
                    .into());
                }
                nets.remove(name)?;
                println!("{name}");
            }
        }
    }
    Ok(0)
}

/// `port NAME [PORT]`: the container's mappings in effect, as `docker port`.
pub fn port(root: &Path, container: &str, which: Option<&str>) -> anyhow::Result<i32> {
    let rt = Runtime::open(root)?;
    let c = rt.get(container)?;
    let Some(a) = (c.state.status == Status::Running)
        .then(|| net::attached(&c.dir))
        .flatten()
    else {
        return Ok(0);
    };
    let want = which.map(|w| {
        let (p, proto) = w.split_once('/').unwrap_or((w, "tcp"));
        (p.to_string(), proto.to_string())
    });
    let mut shown = false;
    for m in &a.ports {
        match &want {
            Some((p, proto)) if *p != m.container_port.to_string() || *proto != m.proto => {}
            Some(_) => {
                println!(
                    "{}:{}",
                    if m.host_ip.is_empty() {
                        "0.0.0.0"
                    } else {
                        &m.host_ip
                    },
                    m.host_port
                );
                shown = true;
            }
            None => {
                println!("{m}");
                shown = true;
            }
        }
    }
    if let (Some(w), false) = (which, shown) {
        return Err(anyhow::anyhow!(
            "no public port '{w}' published for {container}"
        ))
        .context("strata port");
    }
    Ok(0)
}

/// The PORTS column of `ps`: `0.0.0.0:8080->80/tcp, …` while running.
pub fn ports_text(c: &Container) -> String {
    if c.state.status != Status::Running {
        return String::new();
    }
    net::attached(&c.dir)
        .map(|a| {
            a.ports
                .iter()
                .map(|m| {
                    let ip = if m.host_ip.is_empty() {
                        "0.0.0.0"
                    } else {
                        &m.host_ip
                    };
                    format!("{ip}:{}->{}/{}", m.host_port, m.container_port, m.proto)
                })
                .collect::<Vec<_>>()
                .join(", ")
        })
        .unwrap_or_default()
}

/// `NetworkSettings` of `inspect`.
pub fn settings_json(c: &Container) -> Value {
    let a = (c.state.status == Status::Running)
        .then(|| net::attached(&c.dir))
        .flatten()
        .unwrap_or_default();
    let mut ports = serde_json::Map::new();
    for m in &a.ports {
        let k = format!("{}/{}", m.container_port, m.proto);
        let e = ports.entry(k).or_insert_with(|| json!([]));
        if let Value::Array(v) = e {
            v.push(json!({"HostIp": if m.host_ip.is_empty() { "0.0.0.0" } else { &m.host_ip }, "HostPort": m.host_port.to_string()}));
        }
    }
    json!({
        "NetworkMode": c.meta.net.mode,
        "IPAddress": a.ip,
        "IPPrefixLen": a.prefix,
        "Gateway": a.gateway,
        "Bridge": a.bridge,
        "Ports": ports,
        "Aliases": c.meta.net.aliases,
    })
}

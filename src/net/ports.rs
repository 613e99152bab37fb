//! Published ports: `-p [ip:][hostPort[-end]:]containerPort[-end][/tcp|/udp]`, `-P`, host
//! port checks, and the DNAT rules.

use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, UdpSocket};

use serde::{Deserialize, Serialize};

use super::{Lease, NetError, invalid, run};

/// One requested mapping; `host_port` 0 = a free port chosen at each start.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PortSpec {
    #[serde(default)]
    pub host_ip: String,
    pub host_port: u16,
    pub container_port: u16,
    pub proto: String,
}

/// One mapping in effect.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Mapping {
    #[serde(default)]
    pub host_ip: String,
    pub host_port: u16,
    pub container_port: u16,
    pub proto: String,
}

impl std::fmt::Display for Mapping {
    /// `80/tcp -> 0.0.0.0:8080`, as `docker port`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ip = if self.host_ip.is_empty() {
            "0.0.0.0"
        } else {
            &self.host_ip
        };
        write!(
            f,
            "{}/{} -> {ip}:{}",
            self.container_port, self.proto, self.host_port
        )
    }
}

fn range(s: &str, whole: &str) -> Result<(u16, u16), NetError> {
    let bad = || {
        invalid(
            "port",
            whole,
            "use [ip:][hostPort:]containerPort[/tcp|/udp]",
        )
    };
    let (a, b) = s.split_once('-').unwrap_or((s, s));
    let a: u16 = a.parse().map_err(|_| bad())?;
    let b: u16 = b.parse().map_err(|_| bad())?;
    if a == 0 || b < a {
        return Err(bad());
    }
    Ok((a, b))
}

/// Parses one `-p` value (or an image's `80/tcp`).
pub fn parse(s: &str) -> Result<Vec<PortSpec>, NetError> {
    let (rest, proto) = match s.rsplit_once('/') {
        Some((r, p)) => (r, p.to_ascii_lowercase()),
        None => (s, "tcp".to_string()),
    };
    if proto != "tcp" && proto != "udp" {
        return Err(invalid("port", s, "the protocol must be tcp or udp"));
    }
    let parts: Vec<&str> = rest.rsplitn(3, ':').collect();
    let (ip, host, cont) = match parts.as_slice() {
        [c] => ("", "", *c),
        [c, h] => ("", *h, *c),
        [c, h, ip] => (*ip, *h, *c),
        _ => return Err(invalid("port", s, "too many colons")),
    };
    if !ip.is_empty() && ip.parse::<Ipv4Addr>().is_err() {
        return Err(invalid("port", s, "the host address must be IPv4"));
    }
    let ip = if ip == "0.0.0.0" { "" } else { ip };
    let (c0, c1) = range(cont, s)?;
    let n = c1 - c0;
    let hosts: Vec<u16> = if host.is_empty() {
        vec![0; n as usize + 1]
    } else {
        let (h0, h1) = range(host, s)?;
        if h1 - h0 != n {
            return Err(invalid(
                "port",
                s,
                "the host and container ranges differ in length",
            ));
        }
        (h0..=h1).collect()
    };
    Ok((c0..=c1)
        .zip(hosts)
        .map(|(c, h)| PortSpec {
            host_ip: ip.to_string(),
            host_port: h,
            container_port: c,
            proto: proto.clone(),
        })
        .collect())
}

/// Binds the host port for a moment: `Err` if something listens there; the port (0 → a
/// free one chosen by the kernel).
fn probe(ip: &str, port: u16, proto: &str) -> std::io::Result<u16> {
    let ip: Ipv4Addr = if ip.is_empty() {
        Ipv4Addr::UNSPECIFIED
    } else {
        ip.parse().map_err(std::io::Error::other)?
    };
    let a = SocketAddrV4::new(ip, port);
    if proto == "udp" {
        Ok(UdpSocket::bind(a)?.local_addr()?.port())
    } else {
        Ok(TcpListener::bind(a)?.local_addr()?.port())
    }
}

fn clash(a: &Mapping, ip: &str, port: u16, proto: &str) -> bool {
    a.proto == proto
        && a.host_port == port
        && (a.host_ip.is_empty() || ip.is_empty() || a.host_ip == ip)
}

/// The mappings for this start: random ports chosen, every host port checked against what
/// listens on the host and what other containers publish (call with the lock held).
pub fn resolve(specs: &[PortSpec], live: &[Lease]) -> Result<Vec<Mapping>, NetError> {
    let mut out: Vec<Mapping> = Vec::new();
    for s in specs {
        let taken = |ip: &str, port: u16, out: &[Mapping]| {
            live.iter()
                .flat_map(|l| l.ports.iter())
                .chain(out.iter())
                .any(|m| clash(m, ip, port, &s.proto))
        };
        let port = if s.host_port == 0 {
            let mut chosen = None;
            for _ in 0..50 {
                let p = probe(&s.host_ip, 0, &s.proto).map_err(|e| NetError::Cmd {
                    cmd: "choosing a free host port".into(),
                    msg: e.to_string(),
                })?;
                if !taken(&s.host_ip, p, &out) {
                    chosen = Some(p);
                    break;
                }
            }
            chosen
                .ok_or_else(|| NetError::PortInUse(format!("{}/{}", s.container_port, s.proto)))?
        } else {
            let what = format!(
                "{}:{}/{}",
                if s.host_ip.is_empty() {
                    "0.0.0.0"
                } else {
                    &s.host_ip
                },
                s.host_port,
                s.proto
            );
            if taken(&s.host_ip, s.host_port, &out) {
                return Err(NetError::PortInUse(format!(
                    "{what} (published by another container)"
                )));
            }
            probe(&s.host_ip, s.host_port, &s.proto)
                .map_err(|e| NetError::PortInUse(format!("{what} ({e})")))?
        };
        out.push(Mapping {
            host_ip: s.host_ip.clone(),
            host_port: port,
            container_port: s.container_port,
            proto: s.proto.clone(),
        });
    }
    Ok(out)
}

/// One DNAT rule per mapping in the nat chain `STRATA`, tagged.
pub fn add_rules(ip: &str, maps: &[Mapping], tag: &str) -> Result<(), NetError> {
    for m in maps {
        let dport = m.host_port.to_string();
        let to = format!("{ip}:{}", m.container_port);
        let mut a = vec!["-w", "5", "-t", "nat", "-A", "STRATA"];
        if !m.host_ip.is_empty() {
            a.extend(["-d", m.host_ip.as_str()]);
        }
        a.extend([
            "-p",
            m.proto.as_str(),
            "--dport",
            dport.as_str(),
            "-m",
            "comment",
            "--comment",
            tag,
            "-j",
            "DNAT",
            "--to-destination",
            to.as_str(),
        ]);
        run("iptables", &a)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_docker_forms() {
        let p = parse("8080:80").unwrap();
        assert_eq!(
            (p[0].host_port, p[0].container_port, p[0].proto.as_str()),
            (8080, 80, "tcp")
        );
        let p = parse("127.0.0.1:5000-5001:6000-6001/udp").unwrap();
        assert_eq!(p.len(), 2);
        assert_eq!(
            (p[1].host_ip.as_str(), p[1].host_port, p[1].container_port),
            ("127.0.0.1", 5001, 6001)
        );
        let p = parse("80").unwrap();
        assert_eq!(p[0].host_port, 0);
        assert!(parse("1-3:80").is_err());
        assert!(parse("80/sctp").is_err());
        assert!(parse("x:80").is_err());
    }
}

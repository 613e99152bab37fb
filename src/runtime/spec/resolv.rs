//! The container's `/etc/resolv.conf`, derived from the host's.
//!
//! Never does: read or write files; `/etc/hosts` is net's (`net::hosts`).

/// `/etc/resolv.conf` from the host's, without loopback name servers (unreachable from the
/// container's own network namespace), as Docker does.
pub fn resolv_conf(host: &str) -> String {
    let mut out = String::new();
    let mut servers = 0;
    for line in host.lines() {
        let t = line.trim();
        if let Some(ns) = t.strip_prefix("nameserver") {
            let ns = ns.trim();
            if ns.starts_with("127.") || ns == "::1" {
                continue;
            }
            servers += 1;
        }
        out.push_str(line);
        out.push('\n');
    }
    if servers == 0 {
        out.push_str("nameserver 8.8.8.8\nnameserver 8.8.4.4\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolv_conf_drops_loopback() {
        let out = resolv_conf("search x\nnameserver 127.0.0.53\n");
        assert!(out.contains("search x") && !out.contains("127.0.0.53"));
        assert!(out.contains("8.8.8.8"));
        let out = resolv_conf("nameserver 10.0.0.1\n");
        assert_eq!(out, "nameserver 10.0.0.1\n");
    }
}

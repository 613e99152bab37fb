//! A container's `/etc/hosts`: the fixed loopback and IPv6 lines and its own hostname.
//! Writing the file, and the peers' lines on a user network, is `sync_hosts`'s (in `net`).

/// The generated files of a container: `/etc/hosts`.
pub fn hosts_file(hostname: &str) -> String {
    format!(
        "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n\
         fe00::0\tip6-localnet\nff00::0\tip6-mcastprefix\nff02::1\tip6-allnodes\n\
         ff02::2\tip6-allrouters\n127.0.1.1\t{hostname}\n"
    )
}

//! Image references (`name[:tag]`), validated with Docker's grammar and kept in Docker's
//! familiar form (`busybox:latest`, not `docker.io/library/busybox:latest`).

use std::fmt;

use super::ImageError;

/// A validated, normalized `name:tag`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Reference {
    /// Familiar name: `busybox`, `localhost/x`, `registry.example:5000/team/app`.
    pub name: String,
    pub tag: String,
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.name, self.tag)
    }
}

const MAX_NAME: usize = 255;
const MAX_TAG: usize = 128;

impl Reference {
    /// Parses `name[:tag]` (tag defaults to `latest`) and normalizes the name: the Docker Hub
    /// host (`docker.io`, `index.docker.io`) and its `library/` prefix are dropped.
    pub fn parse(s: &str) -> Result<Self, ImageError> {
        let bad = |why: &str| ImageError::BadReference {
            reference: s.to_string(),
            why: why.to_string(),
        };
        if s.is_empty() {
            return Err(bad("empty reference"));
        }
        if s.contains('@') {
            return Err(bad(
                "digest references (name@sha256:...) are not supported; use the image id",
            ));
        }
        // A ':' after the last '/' starts the tag; one before it is a registry port.
        let (name, tag) = match s.rfind(':') {
            Some(i) if !s[i + 1..].contains('/') => (&s[..i], Some(&s[i + 1..])),
            _ => (s, None),
        };
        if let Some(tag) = tag
            && !valid_tag(tag)
        {
            return Err(bad(
                "a tag is 1 to 128 characters of [A-Za-z0-9_.-], not starting with '.' or '-'",
            ));
        }
        if name.is_empty() {
            return Err(bad("empty name"));
        }
        if name.len() > MAX_NAME {
            return Err(bad("repository name longer than 255 characters"));
        }
        let (domain, path) = split_domain(name);
        if let Some(d) = domain
            && !valid_domain(d)
        {
            return Err(bad("invalid registry host"));
        }
        if path.is_empty() {
            return Err(bad("empty repository path"));
        }
        for comp in path.split('/') {
            if !valid_component(comp) {
                return Err(bad(if comp.bytes().any(|b| b.is_ascii_uppercase()) {
                    "repository name must be lowercase"
                } else {
                    "a name component is lowercase letters and digits, separated by '.', '_', '__' or '-'"
                }));
            }
        }
        if domain.is_none()
            && tag.is_none()
            && path.len() == 64
            && path.bytes().all(|b| b.is_ascii_hexdigit())
        {
            return Err(bad(
                "cannot specify 64-byte hexadecimal strings (that is an image id)",
            ));
        }
        let name = match domain {
            None | Some("docker.io") | Some("index.docker.io") => {
                let p = path.strip_prefix("library/").unwrap_or(path);
                if p.contains('/') || p.is_empty() {
                    path.to_string()
                } else {
                    p.to_string()
                }
            }
            Some(d) => format!("{d}/{path}"),
        };
        Ok(Reference {
            name,
            tag: tag.unwrap_or("latest").to_string(),
        })
    }

    /// Whether the name starts with a registry host (`localhost/x`, `quay.io/x`).
    pub fn has_domain(&self) -> bool {
        split_domain(&self.name).0.is_some()
    }

    /// The tag an OCI index annotation carries, if it names an image. A full reference
    /// (`localhost/x:y`, `x:y`, `docker.io/library/x:latest`) is one; a bare tag (`latest`)
    /// names no repository and gives no tag.
    pub(crate) fn from_annotation(s: &str) -> Option<Self> {
        if s.contains('/') || s.contains(':') {
            Reference::parse(s).ok()
        } else {
            None
        }
    }
}

/// Docker's rule: the first component is a registry host if it has a '.' or a ':', is
/// `localhost`, or has an uppercase letter.
fn split_domain(name: &str) -> (Option<&str>, &str) {
    match name.split_once('/') {
        Some((first, rest))
            if first.contains(['.', ':'])
                || first == "localhost"
                || first.bytes().any(|b| b.is_ascii_uppercase()) =>
        {
            (Some(first), rest)
        }
        _ => (None, name),
    }
}

/// `host[:port]`, host = labels of `[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?` joined by '.'.
fn valid_domain(d: &str) -> bool {
    let (host, port) = match d.rsplit_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (d, None),
    };
    if let Some(p) = port
        && (p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()))
    {
        return false;
    }
    !host.is_empty()
        && host.split('.').all(|label| {
            let b = label.as_bytes();
            !b.is_empty()
                && b.iter().all(|&c| c.is_ascii_alphanumeric() || c == b'-')
                && b[0] != b'-'
                && b[b.len() - 1] != b'-'
        })
}

/// `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`
fn valid_component(c: &str) -> bool {
    let b = c.as_bytes();
    let alnum = |x: u8| x.is_ascii_lowercase() || x.is_ascii_digit();
    let mut i = 0;
    loop {
        let start = i;
        while i < b.len() && alnum(b[i]) {
            i += 1;
        }
        if i == start {
            return false;
        }
        if i == b.len() {
            return true;
        }
        match b[i] {
            b'.' => i += 1,
            b'_' => {
                i += 1;
                if i < b.len() && b[i] == b'_' {
                    i += 1;
                }
            }
            b'-' => {
                while i < b.len() && b[i] == b'-' {
                    i += 1;
                }
            }
            _ => return false,
        }
    }
}

/// `[\w][\w.-]{0,127}`
fn valid_tag(t: &str) -> bool {
    let word = |c: u8| c.is_ascii_alphanumeric() || c == b'_';
    let b = t.as_bytes();
    !b.is_empty()
        && b.len() <= MAX_TAG
        && word(b[0])
        && b.iter().all(|&c| word(c) || c == b'.' || c == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(s: &str) -> String {
        Reference::parse(s)
            .map(|r| r.to_string())
            .unwrap_or_else(|e| format!("ERR {e}"))
    }

    #[test]
    fn normalizes_like_docker() {
        assert_eq!(norm("busybox"), "busybox:latest");
        assert_eq!(norm("busybox:1.36"), "busybox:1.36");
        assert_eq!(norm("library/busybox"), "busybox:latest");
        assert_eq!(norm("docker.io/library/busybox:x"), "busybox:x");
        assert_eq!(norm("index.docker.io/foo/bar"), "foo/bar:latest");
        assert_eq!(norm("localhost/x:y"), "localhost/x:y");
        assert_eq!(norm("localhost:5000/a/b"), "localhost:5000/a/b:latest");
        assert_eq!(norm("Registry.Example/a"), "Registry.Example/a:latest");
        assert_eq!(
            norm("a.b-c/d__e---f/g_h.i:V1.0-rc_1"),
            "a.b-c/d__e---f/g_h.i:V1.0-rc_1"
        );
        // `localhost:5000` alone is the name `localhost` with tag `5000`, as in Docker.
        assert_eq!(norm("localhost:5000"), "localhost:5000");
    }

    #[test]
    fn rejects_what_docker_rejects() {
        for bad in [
            "",
            "Busybox",
            "busy box",
            "a//b",
            "/a",
            "a/",
            "a:",
            "a:.x",
            "a:-x",
            "a___b",
            "a.b__c/d",
            "a.-b",
            "-a",
            "a-",
            "a@sha256:00",
            "ex-.com/a",
            "host:port/a",
            &format!("a:{}", "t".repeat(129)),
            &"a".repeat(256),
            &"ab".repeat(32),
        ] {
            assert!(Reference::parse(bad).is_err(), "{bad:?} accepted");
        }
        assert!(norm("Busybox").contains("must be lowercase"));
        assert!(Reference::parse(&format!("a:{}", "t".repeat(128))).is_ok());
    }

    #[test]
    fn annotations() {
        assert_eq!(Reference::from_annotation("latest"), None);
        assert_eq!(
            Reference::from_annotation("localhost/x:y").map(|r| r.to_string()),
            Some("localhost/x:y".into())
        );
        assert_eq!(
            Reference::from_annotation("x:y").map(|r| r.to_string()),
            Some("x:y".into())
        );
    }
}

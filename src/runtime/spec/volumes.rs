//! Volume arguments: `-v` (bind, named, anonymous) and `--tmpfs` parsing, the image's declared
//! `Volumes`, and `VolumeMount`, a volume as `create` resolved it (kept in the container's
//! record).
//!
//! Never does: create volume directories (`runtime::volumes` does) or mount anything.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{clean_path, invalid};
use crate::image::ImageConfig;
use crate::runtime::RuntimeError;

/// One `-v` volume of a container, as `create` resolved it.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct VolumeMount {
    /// `bind` (a host path) or `volume` (named or anonymous, under the state root).
    #[serde(rename = "type")]
    pub kind: String,
    /// The volume's name (volumes only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Anonymous volumes are deleted by `rm -v` and `--rm`.
    #[serde(default)]
    pub anonymous: bool,
    /// The host directory that is bind-mounted.
    pub source: PathBuf,
    pub destination: String,
    pub read_only: bool,
}

/// A parsed `-v` argument before volumes are created.
#[derive(Debug, Clone, PartialEq)]
pub enum VolumeArg {
    Bind {
        host: PathBuf,
        dest: String,
        read_only: bool,
    },
    Named {
        name: String,
        dest: String,
        read_only: bool,
    },
    Anonymous {
        dest: String,
    },
}

impl VolumeArg {
    pub fn dest(&self) -> &str {
        match self {
            VolumeArg::Bind { dest, .. }
            | VolumeArg::Named { dest, .. }
            | VolumeArg::Anonymous { dest } => dest,
        }
    }
}

/// Parses `-v /host:/ctr[:ro|rw]`, `-v name:/ctr[:ro|rw]` or `-v /ctr`. Relative host paths
/// (`./x`, `../x`) are made absolute against `cwd`, as the Docker CLI does.
pub fn parse_volume(arg: &str, cwd: &Path) -> Result<VolumeArg, RuntimeError> {
    let parts: Vec<&str> = arg.split(':').collect();
    let bad = |why: &str| invalid("volume", arg, why);
    let dest_ok = |d: &str| -> Result<String, RuntimeError> {
        if !d.starts_with('/') {
            return Err(bad("the container path must be absolute"));
        }
        let clean = clean_path(d);
        if clean == "/" {
            return Err(bad("cannot mount a volume over the container's root"));
        }
        Ok(clean)
    };
    let (src, dest, mode) = match parts.as_slice() {
        [d] => return Ok(VolumeArg::Anonymous { dest: dest_ok(d)? }),
        [s, d] => (*s, *d, ""),
        [s, d, m] => (*s, *d, *m),
        _ => return Err(bad("expected SOURCE:DEST[:ro|rw] or DEST")),
    };
    let mut read_only = false;
    for opt in mode.split(',').filter(|o| !o.is_empty()) {
        match opt {
            "ro" => read_only = true,
            "rw" => read_only = false,
            "z" | "Z" | "rprivate" | "private" => {}
            o => return Err(bad(&format!("unknown option {o:?} (use ro or rw)"))),
        }
    }
    let dest = dest_ok(dest)?;
    if src.is_empty() {
        return Err(bad("empty source"));
    }
    if src.starts_with('/') || src.starts_with("./") || src.starts_with("../") || src == "." {
        let host = if src.starts_with('/') {
            PathBuf::from(src)
        } else {
            cwd.join(src)
        };
        return Ok(VolumeArg::Bind {
            host: PathBuf::from(clean_path(&host.to_string_lossy())),
            dest,
            read_only,
        });
    }
    if !crate::runtime::names::valid_name(src) {
        return Err(bad(
            "a volume name must match [a-zA-Z0-9][a-zA-Z0-9_.-]+ (use an absolute path for a host directory)",
        ));
    }
    Ok(VolumeArg::Named {
        name: src.to_string(),
        dest,
        read_only,
    })
}

/// `--tmpfs /path[:options]`: the path and the mount options (Docker's defaults
/// `noexec,nosuid,nodev` unless given; `nodev` always).
pub fn parse_tmpfs(arg: &str) -> Result<(String, Vec<String>), RuntimeError> {
    let (path, opts) = match arg.split_once(':') {
        Some((p, o)) => (p, o),
        None => (arg, ""),
    };
    if !path.starts_with('/') || clean_path(path) == "/" {
        return Err(invalid("tmpfs", arg, "the path must be absolute and not /"));
    }
    let mut options: Vec<String> = vec!["nosuid".into(), "nodev".into(), "noexec".into()];
    for o in opts.split(',').filter(|o| !o.is_empty()) {
        match o {
            "exec" => options.retain(|x| x != "noexec"),
            "suid" => options.retain(|x| x != "nosuid"),
            // A tmpfs with usable device nodes would let a container (it has CAP_MKNOD)
            // open the host's disks.
            "dev" => {
                return Err(invalid(
                    "tmpfs",
                    arg,
                    "option dev is not allowed: device nodes open only in the container's /dev",
                ));
            }
            o if o.starts_with("size=") || o.starts_with("mode=") || o == "ro" || o == "rw" => {
                options.push(o.to_string())
            }
            o if ["noexec", "nosuid", "nodev"].contains(&o) => {}
            o => {
                return Err(invalid(
                    "tmpfs",
                    arg,
                    format!("unsupported option {o:?} (size=, mode=, ro, rw, exec, suid)"),
                ));
            }
        }
    }
    Ok((clean_path(path), options))
}

/// The image's declared `Volumes` that no `-v` covers: each becomes an anonymous volume.
pub fn image_volumes(image: &ImageConfig, taken: &[String]) -> Vec<String> {
    let declared: BTreeMap<String, ()> = image
        .config
        .volumes
        .keys()
        .filter(|k| k.starts_with('/'))
        .map(|k| (clean_path(k), ()))
        .collect();
    declared
        .into_keys()
        .filter(|d| d != "/" && !taken.contains(d))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn volumes_parse() {
        let cwd = Path::new("/work");
        assert_eq!(
            parse_volume("/srv/www:/www:ro", cwd).unwrap(),
            VolumeArg::Bind {
                host: "/srv/www".into(),
                dest: "/www".into(),
                read_only: true
            }
        );
        assert_eq!(
            parse_volume("./d:/x/", cwd).unwrap(),
            VolumeArg::Bind {
                host: "/work/d".into(),
                dest: "/x".into(),
                read_only: false
            }
        );
        assert_eq!(
            parse_volume("data:/var/lib/app", cwd).unwrap(),
            VolumeArg::Named {
                name: "data".into(),
                dest: "/var/lib/app".into(),
                read_only: false
            }
        );
        assert_eq!(
            parse_volume("/cache", cwd).unwrap(),
            VolumeArg::Anonymous {
                dest: "/cache".into()
            }
        );
        assert!(parse_volume("data:relative", cwd).is_err());
        assert!(parse_volume("/a:/", cwd).is_err());
        assert!(parse_volume("/a:/b:rx", cwd).is_err());
        assert!(parse_volume("bad/name:/b", cwd).is_err());
        assert_eq!(parse_volume("/a:/b/../c", cwd).unwrap().dest(), "/c");
    }

    #[test]
    fn tmpfs_parse() {
        let (p, o) = parse_tmpfs("/run:size=1m,exec").unwrap();
        assert_eq!(p, "/run");
        assert!(o.contains(&"size=1m".to_string()) && !o.contains(&"noexec".to_string()));
        assert!(parse_tmpfs("run").is_err());
    }
}

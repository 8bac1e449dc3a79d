//! Image references (`docker.io/library/python:3.11-slim@sha256:...`) and registry host names.
//!
//! Parsing follows Docker's rules: the first path component is a registry host when it contains
//! a `.` or a `:` or is `localhost`; otherwise the reference is on Docker Hub, where a single
//! name component lives under `library/`. Docker Hub is always spelled `docker.io` here (also when
//! written `index.docker.io` or `registry-1.docker.io`); its API is served by
//! `registry-1.docker.io` ([`api_host`]).

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use imgbuild_store::Digest;

use crate::error::{RegistryError, Result};

/// Docker Hub's canonical name.
pub const DOCKER_HUB: &str = "docker.io";
/// The host that serves Docker Hub's registry API.
pub const DOCKER_HUB_API: &str = "registry-1.docker.io";
/// The key Docker Hub credentials are stored under in `~/.docker/config.json`.
pub const DOCKER_HUB_CONFIG_KEY: &str = "https://index.docker.io/v1/";

/// A parsed image reference: registry, repository, and a tag and/or a digest.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
pub struct Reference {
    /// `docker.io` or `host[:port]`.
    pub registry: String,
    /// `library/python`, `org/name`, `x`.
    pub repository: String,
    pub tag: Option<String>,
    pub digest: Option<Digest>,
}

impl Reference {
    /// A reference to a repository (no tag, no digest).
    pub fn repository(registry: &str, repository: &str) -> Result<Reference> {
        let input = format!("{registry}/{repository}");
        let registry = normalize_registry(registry);
        validate_registry(&input, &registry)?;
        validate_repository(&input, repository)?;
        Ok(Reference {
            registry,
            repository: repository.to_owned(),
            tag: None,
            digest: None,
        })
    }

    /// The same repository, pinned to `digest` (tag dropped).
    pub fn with_digest(&self, digest: Digest) -> Reference {
        Reference {
            registry: self.registry.clone(),
            repository: self.repository.clone(),
            tag: None,
            digest: Some(digest),
        }
    }

    /// `registry/repository` without tag or digest.
    pub fn name(&self) -> String {
        format!("{}/{}", self.registry, self.repository)
    }

    /// What to ask the registry for: the digest if pinned, else the tag, else `latest`.
    pub fn reference_for_api(&self) -> String {
        match (&self.digest, &self.tag) {
            (Some(d), _) => d.to_string(),
            (None, Some(t)) => t.clone(),
            (None, None) => "latest".to_owned(),
        }
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Reference({self})")
    }
}

impl FromStr for Reference {
    type Err = RegistryError;

    fn from_str(input: &str) -> Result<Reference> {
        let bad = |reason: &str| RegistryError::InvalidReference {
            input: input.to_owned(),
            reason: reason.to_owned(),
        };
        if input.is_empty() {
            return Err(bad("empty"));
        }
        let (rest, digest) = match input.split_once('@') {
            Some((r, d)) => (
                r,
                Some(d.parse::<Digest>().map_err(|_| {
                    bad("the digest must be `sha256:` and 64 lowercase hex digits")
                })?),
            ),
            None => (input, None),
        };
        // The tag is after the last ':' of the last path component (a ':' before the first
        // '/' is a port).
        let last_slash = rest.rfind('/');
        let (name, tag) = match rest.rfind(':') {
            Some(colon) if last_slash.is_none_or(|s| colon > s) => {
                (&rest[..colon], Some(&rest[colon + 1..]))
            }
            _ => (rest, None),
        };
        if let Some(tag) = tag {
            validate_tag(input, tag)?;
        }
        let (registry, repository) = match name.split_once('/') {
            Some((first, remainder))
                if first.contains('.') || first.contains(':') || first == "localhost" =>
            {
                (normalize_registry(first), remainder.to_owned())
            }
            _ => (DOCKER_HUB.to_owned(), name.to_owned()),
        };
        let repository = if registry == DOCKER_HUB && !repository.contains('/') {
            format!("library/{repository}")
        } else {
            repository
        };
        validate_registry(input, &registry)?;
        validate_repository(input, &repository)?;
        Ok(Reference {
            registry,
            repository,
            tag: tag.map(str::to_owned),
            digest,
        })
    }
}

/// Canonical spelling of a registry name: Docker Hub aliases become `docker.io`, a scheme or
/// trailing path (as in config.json keys like `https://index.docker.io/v1/`) is removed, and
/// the host is lower-cased.
pub fn normalize_registry(name: &str) -> String {
    let s = name.trim();
    let s = s
        .strip_prefix("https://")
        .or_else(|| s.strip_prefix("http://"))
        .unwrap_or(s);
    let s = s.split('/').next().unwrap_or(s).to_ascii_lowercase();
    match s.as_str() {
        "index.docker.io" | "registry-1.docker.io" | "registry.hub.docker.com" | "docker.io" => {
            DOCKER_HUB.to_owned()
        }
        _ => s,
    }
}

/// The host (with port) serving the registry API for a registry name.
pub fn api_host(registry: &str) -> &str {
    if registry == DOCKER_HUB {
        DOCKER_HUB_API
    } else {
        registry
    }
}

/// Whether a registry name designates a loopback address (`localhost`, 127.0.0.0/8, `::1`),
/// where plain HTTP is acceptable.
pub fn is_loopback(registry: &str) -> bool {
    let host = host_without_port(registry);
    if host.eq_ignore_ascii_case("localhost") {
        return true;
    }
    host.trim_start_matches('[')
        .trim_end_matches(']')
        .parse::<IpAddr>()
        .map(|ip| ip.is_loopback())
        .unwrap_or(false)
}

fn host_without_port(registry: &str) -> &str {
    if let Some(rest) = registry.strip_prefix('[') {
        // [::1]:5000
        return rest.split(']').next().unwrap_or(rest);
    }
    match registry.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') && p.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => registry,
    }
}

/// `host[:port]`: a host of dot-separated labels (letters, digits, inner `-`) or a
/// bracketed IPv6 address, and a port of digits if a `:` is there (`http:` from
/// `http://x/y` is no registry).
fn validate_registry(input: &str, registry: &str) -> Result<()> {
    let (host, port) = match registry.strip_prefix('[') {
        Some(rest) => match rest.split_once(']') {
            Some((ip, after)) if ip.parse::<std::net::Ipv6Addr>().is_ok() => {
                match after.strip_prefix(':') {
                    Some(p) => (Some(registry), Some(p)),
                    None if after.is_empty() => (Some(registry), None),
                    None => (None, None),
                }
            }
            _ => (None, None),
        },
        None => match registry.split_once(':') {
            Some((h, p)) => (Some(h), Some(p)),
            None => (Some(registry), None),
        },
    };
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    let host_ok = host.is_some_and(|h| h.starts_with('[') || h.split('.').all(label_ok));
    let port_ok =
        port.is_none_or(|p| !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()));
    if host_ok && port_ok {
        Ok(())
    } else {
        Err(RegistryError::InvalidReference {
            input: input.to_owned(),
            reason: format!("`{registry}` is not a valid registry host (`host[:port]`)"),
        })
    }
}

/// Whether `comp` is one component of a repository name, by the distribution spec's
/// grammar: `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`: lowercase letters and digits,
/// separated by one `.`, one or two `_`, or a run of `-`; never at either end.
pub fn is_path_component(comp: &str) -> bool {
    let b = comp.as_bytes();
    let alnum = |c: u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    let mut i = 0;
    loop {
        let start = i;
        while i < b.len() && alnum(b[i]) {
            i += 1;
        }
        if i == start {
            return false; // empty, or a separator first or twice
        }
        if i == b.len() {
            return true;
        }
        let sep_start = i;
        while i < b.len() && !alnum(b[i]) {
            i += 1;
        }
        let sep = &comp[sep_start..i];
        if !(sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|c| c == b'-')) {
            return false;
        }
    }
}

/// Repository names: components (see [`is_path_component`]) separated by `/`, at
/// most 255 characters.
fn validate_repository(input: &str, repository: &str) -> Result<()> {
    let bad = |reason: String| RegistryError::InvalidReference {
        input: input.to_owned(),
        reason,
    };
    if repository.is_empty() || repository.len() > 255 {
        return Err(bad(
            "the repository name is empty or longer than 255 characters".into(),
        ));
    }
    for comp in repository.split('/') {
        if !is_path_component(comp) {
            return Err(bad(format!(
                "repository component `{comp}` must be lowercase letters and digits, separated by `.`, `_`, `__` or `-`"
            )));
        }
    }
    Ok(())
}

fn validate_tag(input: &str, tag: &str) -> Result<()> {
    let b = tag.as_bytes();
    let ok = !b.is_empty()
        && b.len() <= 128
        && (b[0].is_ascii_alphanumeric() || b[0] == b'_')
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || b"_.-".contains(c));
    if ok {
        Ok(())
    } else {
        Err(RegistryError::InvalidReference {
            input: input.to_owned(),
            reason: format!(
                "`{tag}` is not a valid tag (letters, digits, `_`, `.`, `-`; at most 128)"
            ),
        })
    }
}

/// Validates a tag given on its own (for push input).
pub fn check_tag(tag: &str) -> Result<()> {
    validate_tag(tag, tag)
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn docker_hub_forms() {
        let r: Reference = "python".parse().unwrap();
        assert_eq!(r.registry, "docker.io");
        assert_eq!(r.repository, "library/python");
        assert_eq!(r.tag, None);
        assert_eq!(r.reference_for_api(), "latest");
        let r: Reference = format!("docker.io/library/python:3.11-slim@{D}")
            .parse()
            .unwrap();
        assert_eq!(r.repository, "library/python");
        assert_eq!(r.tag.as_deref(), Some("3.11-slim"));
        assert_eq!(r.digest.as_ref().unwrap().to_string(), D);
        assert_eq!(r.reference_for_api(), D);
        assert_eq!(
            r.to_string(),
            format!("docker.io/library/python:3.11-slim@{D}")
        );
        let r: Reference = "myorg/app:1".parse().unwrap();
        assert_eq!(
            (r.registry.as_str(), r.repository.as_str()),
            ("docker.io", "myorg/app")
        );
        let r: Reference = "index.docker.io/myorg/app".parse().unwrap();
        assert_eq!(r.registry, "docker.io");
        assert_eq!(api_host(&r.registry), "registry-1.docker.io");
        let r: Reference = "docker.io/debian".parse().unwrap();
        assert_eq!(r.repository, "library/debian");
    }

    #[test]
    fn hosts_with_ports() {
        let r: Reference = "localhost:5000/x".parse().unwrap();
        assert_eq!(
            (r.registry.as_str(), r.repository.as_str(), r.tag.as_deref()),
            ("localhost:5000", "x", None)
        );
        let r: Reference = "127.0.0.1:5000/a/b:v1".parse().unwrap();
        assert_eq!(
            (r.registry.as_str(), r.repository.as_str(), r.tag.as_deref()),
            ("127.0.0.1:5000", "a/b", Some("v1"))
        );
        assert!(is_loopback(&r.registry));
        assert!(is_loopback("localhost"));
        assert!(is_loopback("127.3.4.5:80"));
        assert!(is_loopback("[::1]:5000"));
        assert!(!is_loopback("ghcr.io"));
        assert!(!is_loopback("10.0.0.1:5000"));
        let r: Reference =
            "ghcr.io/o/n@sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
                .parse()
                .unwrap();
        assert_eq!(r.registry, "ghcr.io");
        assert!(r.tag.is_none() && r.digest.is_some());
    }

    #[test]
    fn rejects_bad_references() {
        for bad in [
            "",
            "Python",
            "x@sha256:abc",
            "x:bad tag",
            "docker.io/-x",
            "a//b",
            "x:",
            "HTTP://x/../y",
            "http://x/y",
            "host:/x",
            "host:5x/x",
            "-host.io/x",
            "x.io/a..b",
            "x.io/a_-b",
            "x.io/a___b",
            "x.io/a.",
        ] {
            assert!(bad.parse::<Reference>().is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn path_components_follow_the_distribution_grammar() {
        for good in [
            "a",
            "a1",
            "a.b",
            "a_b",
            "a__b",
            "a-b",
            "a---b",
            "a.b-c_d__e",
        ] {
            assert!(is_path_component(good), "{good} refused");
        }
        for bad in [
            "", "-rf", ".hidden", "a.", "a..b", "a___b", "a-_b", "A", "a/b", "a b", "a\0",
        ] {
            assert!(!is_path_component(bad), "{bad} accepted");
        }
        for good in [
            "x.io:5000/a/b",
            "[::1]:5000/x",
            "my-host.lan/x",
            "localhost/x",
        ] {
            assert!(good.parse::<Reference>().is_ok(), "{good} refused");
        }
    }

    #[test]
    fn registry_normalisation() {
        assert_eq!(
            normalize_registry("https://index.docker.io/v1/"),
            "docker.io"
        );
        assert_eq!(
            normalize_registry("http://127.0.0.1:5000"),
            "127.0.0.1:5000"
        );
        assert_eq!(normalize_registry("Quay.IO"), "quay.io");
    }
}

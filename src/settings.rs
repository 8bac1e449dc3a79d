//! Project-wide settings: the optional `imgbuild.toml` at the project root.
//!
//! ```toml
//! [debian]
//! mirror = "http://deb.debian.org/debian"                   # bookworm, bookworm-updates, pool/
//! security_mirror = "http://deb.debian.org/debian-security" # bookworm-security
//! ```
//! A snapshot mirror works the same way, e.g.
//! `https://snapshot.debian.org/archive/debian/20250101T000000Z` and
//! `https://snapshot.debian.org/archive/debian-security/20250101T000000Z`.
//! `IMGBUILD_DEBIAN_MIRROR` and `IMGBUILD_DEBIAN_SECURITY_MIRROR` override the file.
//!
//! `check_valid_until = false` (default `true`) accepts a signed Release whose
//! `Valid-Until` has passed, as apt's `check-valid-until=no` does; it is never
//! needed for snapshot.debian.org (or any mirror URL with a `YYYYMMDDTHHMMSSZ`
//! path component), which is not checked.
//!
//! ```toml
//! [registry]
//! insecure = ["registry.lan:5000"]   # plain HTTP for push, base pulls and lock
//! ```
//! `retry_timeout = SECONDS` (or `IMGBUILD_RETRY_TIMEOUT`, which wins) is how long a
//! failing registry request keeps being retried (default 300).
//! `IMGBUILD_INSECURE_REGISTRIES` (comma-separated) adds to the list;
//! `IMGBUILD_CERTS_D` replaces the Docker-style CA directories (`/etc/docker/certs.d`,
//! `/etc/containers/certs.d`) with one directory.

use std::path::Path;

use anyhow::{Context, Result};
use serde::Deserialize;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    #[serde(default)]
    pub debian: DebianSettings,
    #[serde(default)]
    pub registry: RegistrySettings,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistrySettings {
    /// Registries (`host[:port]`) reached over plain HTTP although not on loopback.
    #[serde(default)]
    pub insecure: Vec<String>,
    /// Seconds a failing registry request keeps being retried (`IMGBUILD_RETRY_TIMEOUT`
    /// overrides it); default [`imgbuild_registry::DEFAULT_RETRY_TIMEOUT`].
    pub retry_timeout: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DebianSettings {
    pub mirror: Option<String>,
    pub security_mirror: Option<String>,
    pub check_valid_until: Option<bool>,
}

impl Settings {
    pub fn load(root: &Path) -> Result<Settings> {
        let p = root.join("imgbuild.toml");
        let s: Settings = match crate::project::read_project_file(&p) {
            Ok(text) => toml::from_str(&text).map_err(|e| {
                let line = e
                    .span()
                    .map(|s| {
                        let at = crate::recipe::syntax_error_offset(&text, s.start, e.message());
                        text[..at].matches('\n').count() + 1
                    })
                    .unwrap_or(0);
                anyhow::anyhow!("imgbuild.toml:{line}: {}", e.message().trim())
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Settings::default(),
            Err(e) => return Err(e).with_context(|| format!("failed to read `{}`", p.display())),
        };
        let mut s = s;
        if let Some(v) = std::env::var("IMGBUILD_RETRY_TIMEOUT")
            .ok()
            .filter(|v| !v.trim().is_empty())
        {
            s.registry.retry_timeout = Some(v.trim().parse().with_context(|| {
                format!("IMGBUILD_RETRY_TIMEOUT=`{v}` is not a whole number of seconds")
            })?);
        }
        Ok(s)
    }

    pub fn mirror(&self) -> imgbuild_debian::Mirror {
        let mut m = imgbuild_debian::Mirror::default();
        if let Some(x) = std::env::var("IMGBUILD_DEBIAN_MIRROR")
            .ok()
            .filter(|x| !x.is_empty())
            .or(self.debian.mirror.clone())
        {
            m.archive = x;
        }
        if let Some(x) = std::env::var("IMGBUILD_DEBIAN_SECURITY_MIRROR")
            .ok()
            .filter(|x| !x.is_empty())
            .or(self.debian.security_mirror.clone())
        {
            m.security = x;
        }
        if let Some(check) = self.debian.check_valid_until {
            m.check_valid_until = check;
        }
        m
    }

    /// Registry client options for push, base pulls and lock: the insecure registries of
    /// `imgbuild.toml`, `IMGBUILD_INSECURE_REGISTRIES` and `extra_insecure` (the command
    /// line); `IMGBUILD_CERTS_D` in place of the default CA directories.
    pub fn registry_options(
        &self,
        extra_insecure: &[String],
        parallelism: usize,
    ) -> imgbuild_registry::ClientOptions {
        let from_env = std::env::var("IMGBUILD_INSECURE_REGISTRIES").unwrap_or_default();
        let mut options = imgbuild_registry::ClientOptions {
            parallelism,
            insecure: self
                .registry
                .insecure
                .iter()
                .map(String::as_str)
                .chain(from_env.split(','))
                .chain(extra_insecure.iter().map(String::as_str))
                .map(str::trim)
                .filter(|r| !r.is_empty())
                .map(str::to_owned)
                .collect(),
            ..Default::default()
        };
        if let Some(dir) = std::env::var_os("IMGBUILD_CERTS_D").filter(|d| !d.is_empty()) {
            options.certs_dirs = vec![dir.into()];
        }
        if let Some(secs) = self.registry.retry_timeout {
            options.retry.timeout = std::time::Duration::from_secs(secs);
        }
        options
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_timeout_from_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let default = Settings::load(dir.path()).unwrap().registry_options(&[], 1);
        assert_eq!(
            default.retry.timeout,
            imgbuild_registry::DEFAULT_RETRY_TIMEOUT
        );
        std::fs::write(
            dir.path().join("imgbuild.toml"),
            "[registry]\nretry_timeout = 7\n",
        )
        .unwrap();
        let set = Settings::load(dir.path()).unwrap().registry_options(&[], 1);
        assert_eq!(set.retry.timeout, std::time::Duration::from_secs(7));
    }

    #[test]
    fn valid_until_check_can_be_turned_off() {
        let dir = tempfile::tempdir().unwrap();
        assert!(
            Settings::load(dir.path())
                .unwrap()
                .mirror()
                .check_valid_until
        );
        std::fs::write(
            dir.path().join("imgbuild.toml"),
            "[debian]\ncheck_valid_until = false\n",
        )
        .unwrap();
        assert!(
            !Settings::load(dir.path())
                .unwrap()
                .mirror()
                .check_valid_until
        );
        std::fs::write(
            dir.path().join("imgbuild.toml"),
            "[debian]\ncheck_valid_until = \"no\"\n",
        )
        .unwrap();
        let e = Settings::load(dir.path()).unwrap_err().to_string();
        assert!(e.starts_with("imgbuild.toml:2:"), "{e}");
    }
}

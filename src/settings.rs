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
//! `suite = "trixie"` (default `bookworm`) is the Debian release of the project's layers
//! (a codename imgbuild has archive keys for: bookworm, trixie).
//!
//! ```toml
//! [[debian.repositories]]
//! name = "pgdg"                                   # `pgdg:postgresql-17` pins a package to it
//! url = "https://apt.example.org/pub/repos/apt"
//! suite = "trixie-pgdg"                           # dists/trixie-pgdg
//! components = ["main"]
//! key = "keys/pgdg.asc"                           # relative to the project root; trusted for this repository only
//! ```
//! Every repository is read besides the archive for the layers of the release its
//! `suite` names (`trixie-pgdg`: trixie's; one naming no release: every release's, see
//! `source::debian::repository_release`); packages resolve to the highest version
//! across all of them. Errors name imgbuild.toml and the line.
//!
//! `check_valid_until = false` (default `true`) accepts a signed Release whose
//! `Valid-Until` has passed, as apt's `check-valid-until=no` does; it is never
//! needed for snapshot.debian.org (or any mirror URL with a `YYYYMMDDTHHMMSSZ`
//! path component), which is not checked.
//!
//! ```toml
//! [build]
//! platforms = ["linux/amd64", "linux/arm64"]   # default: the build machine's
//! ```
//! Every image is built for each platform (a recipe's `platforms` narrows it) and
//! becomes an OCI image index over one manifest per platform (see `crate::platform`).
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

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::Deserialize;
use toml::Spanned;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    #[serde(default)]
    pub debian: DebianSettings,
    #[serde(default)]
    pub registry: RegistrySettings,
    #[serde(default)]
    pub build: BuildSettings,
    /// The project root (key paths are relative to it).
    #[serde(skip)]
    root: PathBuf,
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

/// `[build]`: what every image is built for.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BuildSettings {
    /// `platforms = ["linux/amd64", "linux/arm64"]` (default: the build machine's);
    /// checked by [`Settings::load`].
    pub platforms: Option<Vec<Spanned<String>>>,
}

impl BuildSettings {
    /// Every platform is one imgbuild builds for, named once. `Err((offset, message))`.
    fn check(&self) -> Result<(), (usize, String)> {
        let mut seen = vec![];
        for p in self.platforms.iter().flatten() {
            let parsed = crate::platform::Platform::parse(p.get_ref())
                .map_err(|e| (p.span().start, format!("`[build] platforms`: {e}")))?;
            if seen.contains(&parsed) {
                return Err((
                    p.span().start,
                    format!("`[build] platforms` names {parsed} twice"),
                ));
            }
            seen.push(parsed);
        }
        if self.platforms.as_ref().is_some_and(|p| p.is_empty()) {
            return Err((
                0,
                "`[build] platforms` is empty: name at least one platform (e.g. \"linux/amd64\"), or remove it to build for this machine's".into(),
            ));
        }
        Ok(())
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DebianSettings {
    pub mirror: Option<String>,
    pub security_mirror: Option<String>,
    pub check_valid_until: Option<bool>,
    /// The Debian release (codename); checked by [`Settings::load`].
    pub suite: Option<Spanned<String>>,
    #[serde(default)]
    pub repositories: Vec<RepositorySettings>,
}

/// One `[[debian.repositories]]` table (see the module doc).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RepositorySettings {
    pub name: Spanned<String>,
    pub url: Spanned<String>,
    pub suite: Spanned<String>,
    pub components: Spanned<Vec<String>>,
    pub key: Spanned<String>,
}

impl DebianSettings {
    /// Checks what serde cannot: the suite is one imgbuild has keys for, repository names
    /// are unique and not `debian`, URLs are http(s), key files exist under the project
    /// root. `Err((offset, message))`, the offset in imgbuild.toml.
    fn check(&self, root: &Path) -> Result<(), (usize, String)> {
        if let Some(s) = &self.suite {
            imgbuild_debian::Suite::parse(s.get_ref())
                .map_err(|e| (s.span().start, e.to_string()))?;
        }
        let mut seen: Vec<&str> = vec![];
        for r in &self.repositories {
            let name = r.name.get_ref().as_str();
            let at = r.name.span().start;
            let name_ok = !name.is_empty()
                && name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_.".contains(&b));
            if !name_ok {
                return Err((
                    at,
                    format!(
                        "repository name `{name}`: use lowercase letters, digits, `-`, `_`, `.`"
                    ),
                ));
            }
            if name == imgbuild_debian::DEBIAN {
                return Err((
                    at,
                    "repository name `debian` is reserved for the Debian archive; choose another"
                        .into(),
                ));
            }
            if seen.contains(&name) {
                return Err((at, format!("repository `{name}` is declared twice")));
            }
            seen.push(name);
            let url = r.url.get_ref();
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return Err((
                    r.url.span().start,
                    format!("repository `{name}`: url `{url}` must start with http:// or https://"),
                ));
            }
            let suite = r.suite.get_ref();
            if suite.is_empty() || suite.contains("..") || suite.starts_with('/') {
                return Err((
                    r.suite.span().start,
                    format!(
                        "repository `{name}`: suite `{suite}` must name a directory under dists/"
                    ),
                ));
            }
            if r.components.get_ref().is_empty()
                || r.components
                    .get_ref()
                    .iter()
                    .any(|c| c.is_empty() || c.contains(".."))
            {
                return Err((
                    r.components.span().start,
                    format!(
                        "repository `{name}`: components must list at least one component, e.g. [\"main\"]"
                    ),
                ));
            }
            let key = r.key.get_ref();
            let at = r.key.span().start;
            if Path::new(key).is_absolute() || key.split('/').any(|c| c == "..") {
                return Err((
                    at,
                    format!(
                        "repository `{name}`: key `{key}` must be a path inside the project root, relative to it"
                    ),
                ));
            }
            if !root.join(key).is_file() {
                return Err((
                    at,
                    format!(
                        "repository `{name}`: key file `{key}` does not exist under the project root; put the \
                         repository's public key there (armored .asc or binary .gpg)"
                    ),
                ));
            }
        }
        Ok(())
    }
}

impl Settings {
    pub fn load(root: &Path) -> Result<Settings> {
        let p = root.join("imgbuild.toml");
        let mut s: Settings = match crate::project::read_project_file(&p) {
            Ok(text) => {
                let line = |start: usize| text[..start.min(text.len())].matches('\n').count() + 1;
                let s: Settings = toml::from_str(&text).map_err(|e| {
                    let line = e
                        .span()
                        .map(|s| {
                            let at =
                                crate::recipe::syntax_error_offset(&text, s.start, e.message());
                            text[..at].matches('\n').count() + 1
                        })
                        .unwrap_or(0);
                    anyhow::anyhow!("imgbuild.toml:{line}: {}", e.message().trim())
                })?;
                s.debian
                    .check(root)
                    .map_err(|(at, msg)| anyhow::anyhow!("imgbuild.toml:{}: {msg}", line(at)))?;
                s.build
                    .check()
                    .map_err(|(at, msg)| anyhow::anyhow!("imgbuild.toml:{}: {msg}", line(at)))?;
                s
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Settings::default(),
            Err(e) => return Err(e).with_context(|| format!("failed to read `{}`", p.display())),
        };
        s.root = root.to_owned();
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

    /// The project's platforms (`[build] platforms`, checked by [`Settings::load`]), and
    /// whether the file names them; by default the build machine's.
    pub fn platforms(&self) -> Result<(Vec<crate::platform::Platform>, bool)> {
        match &self.build.platforms {
            None => Ok((vec![crate::platform::Platform::native()], false)),
            Some(list) => Ok((
                list.iter()
                    .map(|p| crate::platform::Platform::parse(p.get_ref()))
                    .collect::<Result<_>>()?,
                true,
            )),
        }
    }

    /// The project's Debian release (`[debian] suite`, default bookworm).
    pub fn suite(&self) -> imgbuild_debian::Suite {
        self.debian
            .suite
            .as_ref()
            .and_then(|s| imgbuild_debian::Suite::parse(s.get_ref()).ok())
            .unwrap_or_default()
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
        m.repositories = self
            .debian
            .repositories
            .iter()
            .map(|r| imgbuild_debian::Repository {
                name: r.name.get_ref().clone(),
                url: r.url.get_ref().clone(),
                suite: r.suite.get_ref().clone(),
                components: r.components.get_ref().clone(),
                key: self.root.join(r.key.get_ref()),
            })
            .collect();
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

    #[test]
    fn suite_and_repositories() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let write = |text: &str| std::fs::write(root.join("imgbuild.toml"), text).unwrap();
        assert_eq!(
            Settings::load(root).unwrap().suite(),
            imgbuild_debian::Suite::Bookworm
        );
        std::fs::create_dir(root.join("keys")).unwrap();
        std::fs::write(root.join("keys/pgdg.asc"), "key").unwrap();
        let repo = "[[debian.repositories]]\nname = \"pgdg\"\nurl = \"https://apt.example.org/pub/repos/apt\"\n\
                    suite = \"trixie-pgdg\"\ncomponents = [\"main\"]\nkey = \"keys/pgdg.asc\"\n";
        write(&format!("[debian]\nsuite = \"trixie\"\n\n{repo}"));
        let s = Settings::load(root).unwrap();
        assert_eq!(s.suite(), imgbuild_debian::Suite::Trixie);
        let m = s.mirror();
        assert_eq!(
            m.repositories,
            [imgbuild_debian::Repository {
                name: "pgdg".into(),
                url: "https://apt.example.org/pub/repos/apt".into(),
                suite: "trixie-pgdg".into(),
                components: vec!["main".into()],
                key: root.join("keys/pgdg.asc"),
            }]
        );
        let err = |text: &str| {
            write(text);
            Settings::load(root).unwrap_err().to_string()
        };
        let e = err("[debian]\nmirror = \"http://x\"\nsuite = \"forky\"\n");
        assert!(
            e.starts_with("imgbuild.toml:3:") && e.contains("`forky`") && e.contains("README"),
            "{e}"
        );
        let e = err(&repo.replace("keys/pgdg.asc", "keys/missing.asc"));
        assert!(
            e.starts_with("imgbuild.toml:6:")
                && e.contains("keys/missing.asc")
                && e.contains("does not exist"),
            "{e}"
        );
        let e = err(&repo.replace("keys/pgdg.asc", "/etc/passwd"));
        assert!(
            e.starts_with("imgbuild.toml:6:") && e.contains("inside the project root"),
            "{e}"
        );
        let e = err(&repo.replace("\"pgdg\"", "\"debian\""));
        assert!(
            e.starts_with("imgbuild.toml:2:") && e.contains("reserved"),
            "{e}"
        );
        let e = err(&format!("{repo}\n{repo}"));
        assert!(
            e.starts_with("imgbuild.toml:9:") && e.contains("twice"),
            "{e}"
        );
        let e = err(&repo.replace("https://apt", "ftp://apt"));
        assert!(
            e.starts_with("imgbuild.toml:3:") && e.contains("http"),
            "{e}"
        );
        let e = err(&repo.replace("[\"main\"]", "[]"));
        assert!(
            e.starts_with("imgbuild.toml:5:") && e.contains("components"),
            "{e}"
        );
        let e = err(&repo.replace("suite = \"trixie-pgdg\"\n", ""));
        assert!(
            e.starts_with("imgbuild.toml:1:") && e.contains("suite"),
            "{e}"
        );
        let e = err(&format!("{repo}signed_by = \"x\"\n"));
        assert!(
            e.starts_with("imgbuild.toml:7:") && e.contains("signed_by"),
            "{e}"
        );
    }
}

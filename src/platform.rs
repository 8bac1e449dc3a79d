//! The platforms an image is built for (`linux/amd64`, `linux/arm64`): parsed from
//! `imgbuild.toml` (`[build] platforms`), a recipe's `platforms` and `--platform`,
//! and narrowed from one to the next ([`Selection`]).
//!
//! A platform is an OCI platform whose architecture is one imgbuild has Debian
//! packages, loaders and triplets for ([`imgbuild_debian::Arch`]); everything that
//! follows from the architecture lives there. A project that names no platforms
//! builds for the build machine's, exactly as before platforms could be chosen (one
//! manifest per image, no image index).

use std::fmt;

use anyhow::{Result, bail};
use imgbuild_debian::Arch;
use serde_json::{Value, json};

/// One OCI platform imgbuild builds for (always `linux`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Platform {
    pub arch: Arch,
}

/// The platform names imgbuild knows, for messages.
pub const KNOWN: &str = "linux/amd64, linux/arm64";

impl Platform {
    /// The build machine's platform (amd64 on a machine imgbuild has no packages for).
    pub fn native() -> Platform {
        Platform {
            arch: Arch::native().unwrap_or_default(),
        }
    }

    /// `linux/amd64`, `linux/arm64` or `linux/arm64/v8`; anything else is an error
    /// naming the platforms imgbuild builds for.
    pub fn parse(name: &str) -> Result<Platform> {
        match Arch::from_oci_platform(name.trim()) {
            Ok(arch) => Ok(Platform { arch }),
            Err(_) => bail!("unknown platform `{name}`: imgbuild builds for {KNOWN}"),
        }
    }

    /// The OCI `architecture` (`arm64`).
    pub fn architecture(self) -> &'static str {
        self.arch.oci_architecture()
    }

    /// The OCI `variant` (`v8` for arm64, what Docker records for arm64 images).
    pub fn variant(self) -> Option<&'static str> {
        self.arch.oci_variant()
    }

    /// The `platform` object of an image index entry.
    pub fn index_json(self) -> Value {
        let mut v = json!({"os": "linux", "architecture": self.architecture()});
        if let Some(var) = self.variant() {
            v["variant"] = json!(var);
        }
        v
    }

    /// The registry client's platform (which manifest of a base image's index to pull).
    pub fn registry(self) -> imgbuild_registry::Platform {
        imgbuild_registry::Platform {
            os: "linux".into(),
            architecture: self.architecture().into(),
            variant: None,
        }
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "linux/{}", self.architecture())
    }
}

/// Parses `--platform` values: each may be a comma-separated list.
pub fn parse_cli(values: &[String]) -> Result<Vec<Platform>> {
    let mut out = vec![];
    for v in values {
        for p in v.split(',').filter(|p| !p.trim().is_empty()) {
            let p = Platform::parse(p).map_err(|e| anyhow::anyhow!("--platform: {e}"))?;
            if !out.contains(&p) {
                out.push(p);
            }
        }
    }
    Ok(out)
}

/// What a command builds for: the project's platforms, narrowed by `--platform`.
#[derive(Clone, Debug)]
pub struct Selection {
    /// The project's platforms, in the order `imgbuild.toml` lists them (the build
    /// machine's when it names none).
    pub project: Vec<Platform>,
    /// Whether `imgbuild.toml` names platforms: images are then image indexes (even
    /// of one platform); otherwise one manifest each, as before platforms existed.
    pub explicit: bool,
    /// `--platform`: only these (each must be one of the project's).
    pub only: Option<Vec<Platform>>,
}

impl Selection {
    /// The project's platforms and `--platform` (checked against them).
    pub fn new(settings: &crate::settings::Settings, cli: &[String]) -> Result<Selection> {
        let (project, explicit) = settings.platforms()?;
        let only = if cli.is_empty() {
            None
        } else {
            let only = parse_cli(cli)?;
            for p in &only {
                if !project.contains(p) {
                    bail!(
                        "--platform {p}: not one of the project's platforms ({}); add it to `[build] platforms` in imgbuild.toml",
                        list(&project)
                    );
                }
            }
            Some(only)
        };
        Ok(Selection {
            project,
            explicit,
            only,
        })
    }

    /// The platforms one recipe is built for in this command: its own `platforms`
    /// (checked against the project's, with the recipe's file and line) or the
    /// project's, narrowed by `--platform`.
    pub fn for_recipe(&self, r: &crate::recipe::Recipe) -> Result<Vec<Platform>> {
        let mut own = self.project.clone();
        if let Some(rp) = &r.platforms {
            for (p, pos) in &rp.value {
                if !self.project.contains(p) {
                    return Err(r
                        .error_at(
                            pos,
                            format!(
                                "platform `{p}` is not one of the project's platforms ({}); add it to `[build] platforms` in imgbuild.toml",
                                list(&self.project)
                            ),
                        )
                        .into());
                }
            }
            own.retain(|p| rp.value.iter().any(|(q, _)| q == p));
        }
        if let Some(only) = &self.only {
            own.retain(|p| only.contains(p));
        }
        Ok(own)
    }

    /// Every platform a recipe may be built for (ignoring `--platform`): the lock
    /// keeps its Debian pins for each.
    pub fn all_for_recipe(&self, r: &crate::recipe::Recipe) -> Vec<Platform> {
        let mut own = self.project.clone();
        if let Some(rp) = &r.platforms {
            own.retain(|p| rp.value.iter().any(|(q, _)| q == p));
        }
        own
    }

    /// Whether an image is an image index over its platforms' manifests.
    pub fn indexed(&self) -> bool {
        self.explicit
    }
}

/// `linux/amd64, linux/arm64`.
pub fn list(platforms: &[Platform]) -> String {
    platforms
        .iter()
        .map(|p| p.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn platforms_parse() {
        assert_eq!(Platform::parse("linux/arm64").unwrap().arch, Arch::Arm64);
        assert_eq!(Platform::parse("linux/arm64/v8").unwrap().arch, Arch::Arm64);
        assert_eq!(
            Platform::parse("linux/amd64").unwrap().to_string(),
            "linux/amd64"
        );
        let e = Platform::parse("linux/s390x").unwrap_err().to_string();
        assert!(
            e.contains("`linux/s390x`") && e.contains("linux/arm64"),
            "{e}"
        );
        assert_eq!(
            parse_cli(&["linux/amd64,linux/arm64".into(), "linux/amd64".into()]).unwrap(),
            vec![
                Platform { arch: Arch::Amd64 },
                Platform { arch: Arch::Arm64 }
            ]
        );
        assert_eq!(
            Platform { arch: Arch::Arm64 }.index_json(),
            json!({"os": "linux", "architecture": "arm64", "variant": "v8"})
        );
    }
}

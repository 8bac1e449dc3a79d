//! What an index is for: the Debian release ([`Suite`]: bookworm, trixie) and the
//! architecture ([`Arch`]: amd64, arm64), with everything that follows from each: the
//! suites read (`trixie`, `trixie-updates`, `trixie-security`) and the archive keys that
//! vouch for them, the OCI platform names, the multiarch triplet and the dynamic loader.
//!
//! Adding a release means adding a variant here and its keys in [`crate::signature`]
//! (see the README, "How a Debian release's keys are added").

use std::fmt;

use crate::error::{Error, Result};
use crate::index::Base;

/// A Debian release imgbuild has archive keys for.
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    serde::Serialize,
    serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Suite {
    /// Debian 12 (oldstable since August 2025); the default, as before suites could be
    /// chosen (old locks and recipes).
    #[default]
    Bookworm,
    /// Debian 13 (stable since August 2025).
    Trixie,
}

impl Suite {
    /// Every release, oldest first.
    pub const ALL: [Suite; 2] = [Suite::Bookworm, Suite::Trixie];

    /// The codename (`trixie`), as `dists/` names it.
    pub fn codename(self) -> &'static str {
        match self {
            Suite::Bookworm => "bookworm",
            Suite::Trixie => "trixie",
        }
    }

    /// The release's Debian version (`13`).
    pub fn version(self) -> &'static str {
        match self {
            Suite::Bookworm => "12",
            Suite::Trixie => "13",
        }
    }

    /// A codename from `imgbuild.toml` or a recipe. Only codenames: `stable` and
    /// friends move from one release to the next, which would change a lock silently.
    pub fn parse(name: &str) -> Result<Suite> {
        Suite::ALL
            .into_iter()
            .find(|s| s.codename() == name)
            .ok_or_else(|| Error::UnknownSuite {
                suite: name.to_owned(),
            })
    }

    /// The suites read for this release, in order, with the mirror base of each: the
    /// release, its `-updates` and its `-security`.
    pub fn suites(self) -> [(String, Base); 3] {
        let c = self.codename();
        [
            (c.to_owned(), Base::Debian),
            (format!("{c}-updates"), Base::Debian),
            (format!("{c}-security"), Base::DebianSecurity),
        ]
    }
}

impl fmt::Display for Suite {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.codename())
    }
}

/// A Debian architecture imgbuild builds for.
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    serde::Serialize,
    serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Arch {
    #[default]
    Amd64,
    Arm64,
}

impl Arch {
    pub const ALL: [Arch; 2] = [Arch::Amd64, Arch::Arm64];

    /// Debian's name (`arm64`), as `binary-arm64/` and `Architecture:` spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            Arch::Amd64 => "amd64",
            Arch::Arm64 => "arm64",
        }
    }

    /// A Debian architecture name.
    pub fn parse(name: &str) -> Result<Arch> {
        Arch::ALL
            .into_iter()
            .find(|a| a.as_str() == name)
            .ok_or_else(|| Error::UnknownArch {
                arch: name.to_owned(),
            })
    }

    /// From an OCI platform: `linux/amd64`, `linux/arm64` or `linux/arm64/v8` (the only
    /// arm64 variant Debian's arm64 runs on).
    pub fn from_oci_platform(platform: &str) -> Result<Arch> {
        match platform {
            "linux/amd64" => Ok(Arch::Amd64),
            "linux/arm64" | "linux/arm64/v8" => Ok(Arch::Arm64),
            other => Err(Error::UnknownArch {
                arch: other.to_owned(),
            }),
        }
    }

    /// The OCI platform's `architecture` (same words as Debian's for these two).
    pub fn oci_architecture(self) -> &'static str {
        self.as_str()
    }

    /// The OCI platform's `variant`: `v8` for arm64 (what Docker and the registries
    /// record for arm64 images), none for amd64.
    pub fn oci_variant(self) -> Option<&'static str> {
        match self {
            Arch::Amd64 => None,
            Arch::Arm64 => Some("v8"),
        }
    }

    /// The multiarch triplet: library directories are `/usr/lib/<triplet>`.
    pub fn triplet(self) -> &'static str {
        match self {
            Arch::Amd64 => "x86_64-linux-gnu",
            Arch::Arm64 => "aarch64-linux-gnu",
        }
    }

    /// The ELF `e_machine` of the architecture's binaries (EM_X86_64, EM_AARCH64).
    pub fn elf_machine(self) -> u16 {
        match self {
            Arch::Amd64 => 62,
            Arch::Arm64 => 183,
        }
    }

    /// The dynamic loader the architecture's binaries name (PT_INTERP), as an image
    /// path. amd64's lives in `/lib64` (a symlink to `usr/lib64` on merged /usr).
    pub fn dynamic_loader(self) -> &'static str {
        match self {
            Arch::Amd64 => "/lib64/ld-linux-x86-64.so.2",
            Arch::Arm64 => "/lib/ld-linux-aarch64.so.1",
        }
    }

    /// Whether the merged-/usr layout of this architecture has `/lib64 -> usr/lib64`
    /// (base-files' `rtlddir`: only where the loader lives in `/lib64`).
    pub fn has_lib64(self) -> bool {
        matches!(self, Arch::Amd64)
    }

    /// The architecture of the machine this runs on, if it is one of ours.
    pub fn native() -> Option<Arch> {
        match std::env::consts::ARCH {
            "x86_64" => Some(Arch::Amd64),
            "aarch64" => Some(Arch::Arm64),
            _ => None,
        }
    }
}

impl fmt::Display for Arch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suites_and_arches_parse() {
        assert_eq!(Suite::parse("trixie").unwrap(), Suite::Trixie);
        assert_eq!(
            Suite::Trixie.suites().map(|(s, _)| s),
            ["trixie", "trixie-updates", "trixie-security"]
        );
        let e = Suite::parse("forky").unwrap_err().to_string();
        assert!(e.contains("`forky`") && e.contains("keys"), "{e}");
        assert!(Suite::parse("stable").is_err());
        assert_eq!(
            Arch::from_oci_platform("linux/arm64/v8").unwrap(),
            Arch::Arm64
        );
        assert_eq!(Arch::from_oci_platform("linux/arm64").unwrap(), Arch::Arm64);
        assert_eq!(Arch::from_oci_platform("linux/amd64").unwrap(), Arch::Amd64);
        let e = Arch::from_oci_platform("linux/riscv64")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("linux/riscv64") && e.contains("linux/arm64"),
            "{e}"
        );
        assert_eq!(Arch::Arm64.triplet(), "aarch64-linux-gnu");
        assert_eq!(
            serde_json::to_string(&(Suite::Trixie, Arch::Arm64)).unwrap(),
            r#"["trixie","arm64"]"#
        );
    }
}

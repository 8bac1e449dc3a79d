//! Debian bookworm packages as the operating-system part of an image, built natively the
//! way distroless does: no apt, dpkg, debootstrap or container at build time.
//!
//! The pipeline, one module each:
//! - [`signature`]: the embedded Debian archive keys and `InRelease` verification;
//! - [`index`]: the signed package index of bookworm, bookworm-updates and
//!   bookworm-security (main, amd64), cached in the store;
//! - [`resolve()`](resolve::resolve): an apt-like dependency resolver with `exclude` pruning,
//!   producing [`LockedPackage`]s;
//! - [`fetch`]: verified, parallel, cached `.deb` downloads from a lock;
//! - [`deb`]: streamed unpacking of a `.deb` into an [`imgbuild_layer::Tree`] (merged /usr,
//!   metadata for scanners, maintainer-script report);
//! - [`system`]: what base-files/base-passwd/libc-bin postinsts would have done
//!   (accounts, `/etc/passwd` & co., base directories and symlinks).
//!
//! [`version`] and [`control`] hold the Debian syntax (version ordering, deb822, relations).

pub mod control;
pub mod deb;
pub mod error;
pub mod fetch;
pub mod index;
pub mod resolve;
pub mod signature;
pub mod system;
pub mod version;

pub use deb::{PackageReport, ScriptNote, Unpacker, remove_paths};
pub use error::{Error, Result};
pub use fetch::fetch_debs;
pub use index::{Base, Index};
pub use resolve::{LockedPackage, Resolution, resolve};

/// Where packages come from. Defaults to the official archive; a snapshot mirror works too
/// (`https://snapshot.debian.org/archive/debian/20250101T000000Z` with
/// `https://snapshot.debian.org/archive/debian-security/20250101T000000Z`).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Mirror {
    /// Base URL serving `dists/bookworm`, `dists/bookworm-updates` and `pool/`.
    pub archive: String,
    /// Base URL serving `dists/bookworm-security` and its `pool/`.
    pub security: String,
}

impl Default for Mirror {
    fn default() -> Mirror {
        Mirror {
            archive: "http://deb.debian.org/debian".into(),
            security: "http://deb.debian.org/debian-security".into(),
        }
    }
}

impl Mirror {
    /// The base URL for packages of one origin, without a trailing slash.
    pub fn base_url(&self, base: Base) -> &str {
        match base {
            Base::Debian => self.archive.trim_end_matches('/'),
            Base::DebianSecurity => self.security.trim_end_matches('/'),
        }
    }
}

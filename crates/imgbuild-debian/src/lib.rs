//! Debian packages (bookworm or trixie, amd64 or arm64, plus third-party apt repositories)
//! as the operating-system part of an image, built natively the way distroless does: no
//! apt, dpkg, debootstrap, container or emulator at build time.
//!
//! The pipeline, one module each:
//! - [`platform`]: the release ([`Suite`]) and architecture ([`Arch`]) an index is for;
//! - [`signature`]: the embedded Debian archive keys, which of them vouch for which suite,
//!   repositories' own keys, and `InRelease` verification;
//! - [`index`]: the signed package index of a release's three suites (main) and of the
//!   configured repositories for one architecture, cached in the store ([`Indexes`]: one
//!   per (suite, arch) per command);
//! - [`resolve()`](resolve::resolve): an apt-like dependency resolver with `exclude` pruning,
//!   producing [`LockedPackage`]s;
//! - [`fetch`]: verified, parallel, cached `.deb` downloads from a lock, retried when the
//!   network fails, each `.deb` downloaded once even when several layers need it at once;
//! - [`deb`]: streamed unpacking of a `.deb` into an [`imgbuild_layer::Tree`] (merged /usr,
//!   metadata for scanners, maintainer-script report);
//! - [`system`]: what base-files/base-passwd/libc-bin postinsts would have done
//!   (base accounts, base directories and symlinks);
//! - [`accounts`]: the one reader and writer of `/etc/passwd`, `/etc/group` & co.
//!
//! [`soname::packages_for_soname`] names the package that ships a missing library.
//!
//! [`version`] and [`control`] hold the Debian syntax (version ordering, deb822, relations),
//! [`date`] the dates of Release files.

pub mod accounts;
pub mod control;
pub mod date;
pub mod deb;
pub mod error;
pub mod fetch;
pub mod index;
pub mod platform;
pub mod resolve;
pub mod signature;
pub mod soname;
pub mod system;
pub mod version;

pub use deb::{PackageReport, ScriptNote, Unpacker, remove_paths};
pub use error::{Error, Result};
pub use fetch::{Fetcher, InFlight, fetch_debs};
pub use index::{Base, DEBIAN, Index, Indexes};
pub use platform::{Arch, Suite};
pub use resolve::{LockedPackage, Resolution, resolve};
pub use signature::Keyring;

/// Where packages come from. Defaults to the official archive; a snapshot mirror works too
/// (`https://snapshot.debian.org/archive/debian/20250101T000000Z` with
/// `https://snapshot.debian.org/archive/debian-security/20250101T000000Z`).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Mirror {
    /// Base URL serving `dists/<release>`, `dists/<release>-updates` and `pool/`.
    pub archive: String,
    /// Base URL serving `dists/<release>-security` and its `pool/`.
    pub security: String,
    /// Refuse a signed Release whose `Valid-Until` has passed, as apt does (an old, validly
    /// signed index replayed by a man in the middle, or a stale mirror). Never applied to
    /// snapshot mirrors ([`Mirror::is_snapshot`]), whose files are old on purpose.
    #[serde(default = "yes")]
    pub check_valid_until: bool,
    /// Third-party apt repositories read besides the archive, in order.
    #[serde(default)]
    pub repositories: Vec<Repository>,
}

fn yes() -> bool {
    true
}

/// A third-party apt repository (`[[debian.repositories]]` in imgbuild.toml): its
/// `dists/<suite>/InRelease` must be signed by `key`, which is trusted for this
/// repository only (apt's `signed-by`).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Repository {
    /// Names the repository in `name:package` pins and in the lock. Never `debian`.
    pub name: String,
    /// Base URL serving `dists/` and the `Filename`s of its `Packages`.
    pub url: String,
    /// The directory under `dists/` (`trixie-pgdg`); its signed Release must name it as
    /// `Codename` or `Suite`.
    pub suite: String,
    pub components: Vec<String>,
    /// The key file (armored or binary OpenPGP public keys), an absolute path.
    pub key: std::path::PathBuf,
}

/// Whether a URL is a snapshot of an archive: the host is snapshot.debian.org, or a path
/// component is a snapshot timestamp (`.../20250101T000000Z`, as self-hosted snapshot
/// copies name them too).
pub fn is_snapshot_url(url: &str) -> bool {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
    let host = host.rsplit('@').next().unwrap_or(host);
    let host = host.split(':').next().unwrap_or(host).to_ascii_lowercase();
    let stamp = |c: &str| {
        let b = c.as_bytes();
        b.len() == 16
            && b[8] == b'T'
            && b[15] == b'Z'
            && b[..8].iter().chain(&b[9..15]).all(u8::is_ascii_digit)
    };
    host == "snapshot.debian.org"
        || host.ends_with(".snapshot.debian.org")
        || path.split('/').any(stamp)
}

impl Default for Mirror {
    fn default() -> Mirror {
        Mirror {
            archive: "http://deb.debian.org/debian".into(),
            security: "http://deb.debian.org/debian-security".into(),
            check_valid_until: true,
            repositories: vec![],
        }
    }
}

/// How long after a suite's Release `Date` the suggested snapshot is taken: snapshot.debian.org
/// serves a timestamp as its last import at or before it, and the import that picked up a
/// Release comes some hours after its `Date`; a file superseded later stays in the archive
/// for at least a day and a half, so half a day after the `Date` still has every file of it.
pub const SNAPSHOT_DELAY_SECS: i64 = 12 * 3600;

impl Mirror {
    /// The base URL for packages of one origin, without a trailing slash.
    pub fn base_url(&self, base: Base) -> &str {
        match base {
            Base::Debian => self.archive.trim_end_matches('/'),
            Base::DebianSecurity => self.security.trim_end_matches('/'),
        }
    }

    /// Whether the base URL of this origin is a snapshot of the archive: the host is
    /// snapshot.debian.org, or a path component is a snapshot timestamp
    /// (`.../20250101T000000Z`, as self-hosted snapshot copies name them too).
    pub fn is_snapshot(&self, base: Base) -> bool {
        is_snapshot_url(self.base_url(base))
    }

    /// The repository a locked package comes from, by name.
    pub fn repository(&self, name: &str) -> Option<&Repository> {
        self.repositories.iter().find(|r| r.name == name)
    }

    /// snapshot.debian.org mirrors that serve the archive as it was when an index with these
    /// suite dates (suite -> RFC 3339, as the lockfile keeps them) was read: the moment is
    /// [`SNAPSHOT_DELAY_SECS`] after the newest `Date` of the suites each base serves
    /// (`*-security` on the security mirror), whatever the release.
    /// `None` unless a date is known for both bases.
    pub fn snapshot_for(dates: &std::collections::BTreeMap<String, String>) -> Option<Mirror> {
        let newest = |base: Base| {
            dates
                .iter()
                .filter(|(s, _)| Base::of_suite(s) == base)
                .filter_map(|(_, d)| date::parse_rfc3339(d).ok())
                .max()
        };
        let at = |secs: i64| date::to_snapshot(secs + SNAPSHOT_DELAY_SECS);
        Some(Mirror {
            archive: format!(
                "https://snapshot.debian.org/archive/debian/{}",
                at(newest(Base::Debian)?)
            ),
            security: format!(
                "https://snapshot.debian.org/archive/debian-security/{}",
                at(newest(Base::DebianSecurity)?)
            ),
            check_valid_until: true,
            repositories: vec![],
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_mirrors_are_recognised() {
        let m = |url: &str| Mirror {
            archive: url.into(),
            ..Mirror::default()
        };
        for yes in [
            "https://snapshot.debian.org/archive/debian/20250101T000000Z",
            "http://SNAPSHOT.debian.org/archive/debian/20250101T000000Z/",
            "http://127.0.0.1:8080/archive/debian/20261120T000000Z",
            "http://user@mirror.example:81/snap/20261120T000000Z/",
        ] {
            assert!(m(yes).is_snapshot(Base::Debian), "{yes}");
        }
        for no in [
            "http://deb.debian.org/debian",
            "http://snapshot.debian.org.evil.example/debian",
            "http://mirror.example/debian/2026112T000000Z",
            "http://20261120T000000Z.example/debian",
        ] {
            assert!(!m(no).is_snapshot(Base::Debian), "{no}");
        }
        assert!(!m("https://snapshot.debian.org/x").is_snapshot(Base::DebianSecurity));
    }

    #[test]
    fn snapshot_for_the_lock_dates() {
        let dates: std::collections::BTreeMap<String, String> = [
            ("bookworm", "2026-07-11T10:16:37Z"),
            ("bookworm-updates", "2026-11-28T02:15:35Z"),
            ("bookworm-security", "2026-11-28T02:53:00Z"),
        ]
        .into_iter()
        .map(|(a, b)| (a.to_owned(), b.to_owned()))
        .collect();
        let m = Mirror::snapshot_for(&dates).unwrap();
        assert_eq!(
            m.archive,
            "https://snapshot.debian.org/archive/debian/20261128T141535Z"
        );
        assert_eq!(
            m.security,
            "https://snapshot.debian.org/archive/debian-security/20261128T145300Z"
        );
        assert!(m.is_snapshot(Base::Debian) && m.is_snapshot(Base::DebianSecurity));
        let mut partial = dates.clone();
        partial.remove("bookworm-security");
        assert_eq!(Mirror::snapshot_for(&partial), None);
        assert_eq!(Mirror::snapshot_for(&Default::default()), None);
        // any release: trixie's dates name the same kind of snapshot
        let trixie: std::collections::BTreeMap<String, String> = [
            ("trixie", "2026-11-21T09:15:44Z"),
            ("trixie-updates", "2026-12-04T02:09:32Z"),
            ("trixie-security", "2026-12-04T03:54:29Z"),
        ]
        .into_iter()
        .map(|(a, b)| (a.to_owned(), b.to_owned()))
        .collect();
        let m = Mirror::snapshot_for(&trixie).unwrap();
        assert_eq!(
            m.archive,
            "https://snapshot.debian.org/archive/debian/20261204T140932Z"
        );
        assert_eq!(
            m.security,
            "https://snapshot.debian.org/archive/debian-security/20261204T155429Z"
        );
    }
}

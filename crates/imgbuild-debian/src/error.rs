//! The crate's error type: one enum callers can match, every variant naming the file,
//! URL, package or path involved and, where there is one, what to do about it.

use std::path::PathBuf;

use imgbuild_store::{Digest, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("fetching {url}: {source}")]
    Http {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error(
        "fetching {url}: the server answered HTTP {status}; check the mirror setting or try again later"
    )]
    HttpStatus { url: String, status: u16 },
    #[error("{last} (gave up after {attempts} attempts)")]
    GaveUp { attempts: u32, last: Box<Error> },
    #[error(
        "the mirror no longer serves {name} {version} ({url} answered 404): run `imgbuild lock` again to move to \
         the current version, or keep the lock and build from a snapshot of the archive {}",
        snapshot_hint(.snapshot)
    )]
    DebGone {
        name: String,
        version: String,
        url: String,
        /// Snapshot mirrors of the day the lock was made, when the lock knows that day.
        snapshot: Option<Box<crate::Mirror>>,
    },
    #[error(
        "repository `{repository}` no longer serves {name} {version} ({url} answered 404): run `imgbuild lock` \
         again to move to the version it serves now"
    )]
    RepositoryDebGone {
        name: String,
        version: String,
        repository: String,
        url: String,
    },
    #[error(
        "{url}: the signed Release of {suite} expired on {valid_until} (its Valid-Until): the mirror serves an \
         outdated index, or someone replays an old one; nothing was used. Try again later or use another mirror. \
         For a snapshot of the archive use a snapshot.debian.org URL (never checked), or set \
         `check_valid_until = false` under [debian] in imgbuild.toml"
    )]
    Expired {
        suite: String,
        url: String,
        valid_until: String,
    },
    #[error(
        "{url}: the signature does not verify: {why}; the file was not used (try again; if it persists, the mirror or a proxy serves a damaged or altered file: set another `mirror`/`security_mirror` in imgbuild.toml)"
    )]
    BadSignature { url: String, why: String },
    #[error("{url}: {why}")]
    BadRelease { url: String, why: String },
    #[error(
        "{what} does not match its signed checksum (expected {expected}, got {actual}); nothing was stored"
    )]
    ChecksumMismatch {
        what: String,
        expected: Digest,
        actual: Digest,
    },
    #[error("{what} has {actual} bytes, but its signed size is {expected}; nothing was stored")]
    SizeMismatch {
        what: String,
        expected: u64,
        actual: u64,
    },
    #[error("{file}: {why}")]
    Parse { file: String, why: String },
    #[error("package `{name}` is not in {searched}; check the spelling")]
    UnknownPackage {
        name: String,
        /// What was searched: `trixie, trixie-updates, trixie-security (main, arm64)`.
        searched: String,
    },
    #[error(
        "imgbuild has no archive keys for the Debian suite `{suite}`, so it cannot verify its index; supported: \
         bookworm, trixie (codenames, not `stable`). To add a release, see \"How a Debian release's keys are \
         added\" in README.md"
    )]
    UnknownSuite { suite: String },
    #[error(
        "unsupported architecture `{arch}`: imgbuild builds Debian images for linux/amd64 and linux/arm64 \
         (Debian amd64, arm64; `linux/arm64/v8` is accepted too)"
    )]
    UnknownArch { arch: String },
    #[error(
        "{what}: no repository `{name}`; known: {known} (the Debian archive is `debian`, others come from \
             [[debian.repositories]] in imgbuild.toml)"
    )]
    UnknownRepository {
        what: String,
        name: String,
        known: String,
    },
    #[error("repository `{name}`: key file `{path}`: {why}")]
    BadKey {
        name: String,
        path: PathBuf,
        why: String,
    },
    #[error("`{name}` is a virtual package provided by {providers}; name one of them instead")]
    VirtualRoot { name: String, providers: String },
    #[error("cannot satisfy `{dep}` needed by {package} {version}: {why}")]
    Unsatisfiable {
        package: String,
        version: String,
        dep: String,
        why: String,
    },
    #[error(
        "conflicting requirements for `{name}`: {first} selects {name} {}, but {second} needs {name} {}; \
         one package can be installed in one version only: change or drop the pin",
        .versions.0,
        .versions.1
    )]
    Conflict {
        name: String,
        first: String,
        second: String,
        /// The version the first requirement selected, and the one the second needs.
        versions: Box<(String, String)>,
    },
    #[error("`{name}` is both requested and excluded; remove it from one of the two lists")]
    ExcludedRoot { name: String },
    #[error("package {package}: {why}")]
    BadDeb { package: String, why: String },
    #[error("package {package}: entry `{path}`: {why}")]
    Unpack {
        package: String,
        path: String,
        why: String,
    },
    #[error(
        "package {package} ships `{path}` and package {other_package} ships `{other_path}`: on a merged-/usr system \
         both are the same file `/{canonical}`; exclude one of the packages"
    )]
    AliasConflict {
        package: String,
        path: String,
        other_package: String,
        other_path: String,
        canonical: String,
    },
    #[error("{0}")]
    Accounts(String),
    #[error("{op} `{path}`: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Tree(#[from] imgbuild_layer::TreeError),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

fn snapshot_hint(snapshot: &Option<Box<crate::Mirror>>) -> String {
    match snapshot {
        Some(m) => format!(
            "as it was when the lock was made: set `mirror = \"{}\"` and `security_mirror = \"{}\"` under [debian] \
             in imgbuild.toml (or IMGBUILD_DEBIAN_MIRROR and IMGBUILD_DEBIAN_SECURITY_MIRROR for one build)",
            m.archive, m.security
        ),
        None => "of the day the lock was made (this lock does not record it): set \
                 `mirror = \"https://snapshot.debian.org/archive/debian/YYYYMMDDTHHMMSSZ\"` and \
                 `security_mirror = \"https://snapshot.debian.org/archive/debian-security/YYYYMMDDTHHMMSSZ\"` \
                 under [debian] in imgbuild.toml"
            .to_owned(),
    }
}

impl Error {
    /// Adds the snapshot mirrors to suggest to a [`Error::DebGone`] (other errors unchanged).
    pub fn with_snapshot(self, m: Option<crate::Mirror>) -> Error {
        match self {
            Error::DebGone {
                name,
                version,
                url,
                snapshot: None,
            } => Error::DebGone {
                name,
                version,
                url,
                snapshot: m.map(Box::new),
            },
            other => other,
        }
    }
}

/// Turns the store's digest/size mismatch into ours (same facts, Debian wording).
pub(crate) fn from_store(e: StoreError) -> Error {
    match e {
        StoreError::DigestMismatch {
            what,
            expected,
            actual,
        } => Error::ChecksumMismatch {
            what,
            expected,
            actual,
        },
        StoreError::SizeMismatch {
            what,
            expected,
            actual,
        } => Error::SizeMismatch {
            what,
            expected,
            actual,
        },
        other => Error::Store(other),
    }
}

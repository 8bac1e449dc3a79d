//! Requirements that have no suitable wheel, built from their source distribution.
//!
//! This crate only chooses and verifies the sdist (its sha256 is pinned in the
//! requirements file like a wheel's) and hands it to a [`WheelBuilder`]; how a wheel
//! is built (PEP 517 `build_wheel` in a sandbox rooted at a builder image) is the
//! caller's, which owns the sandbox. Without a builder, a requirement with no suitable
//! wheel stays [`crate::Error::NoSuitableWheel`].

use imgbuild_store::Digest;

use crate::index::IndexFile;
use crate::requirements::{GitPin, Requirement};
use crate::target::WheelName;

/// A verified sdist in the store, chosen for a requirement with no suitable wheel.
#[derive(Clone, Debug)]
pub struct Sdist {
    /// PEP 503 name.
    pub key: String,
    /// Name as written in the requirements file.
    pub name: String,
    pub version: String,
    /// Line of the requirement.
    pub line: usize,
    /// `psycopg2-2.9.10.tar.gz`
    pub filename: String,
    /// sha256 of the file = its blob digest in the store.
    pub digest: Digest,
}

/// Builds a wheel out of an sdist in the store.
pub trait WheelBuilder: Sync {
    /// The built wheel, stored as a blob: (its file name, its sha256). The name's tags
    /// must suit the target (the caller of [`crate::fetch::fetch_wheels_building`]
    /// checks it).
    fn build_wheel(&self, sdist: &Sdist) -> Result<(String, Digest), String>;

    /// The source tree of a git requirement's commit, archived deterministically as
    /// an sdist-like `.tar.gz` blob: (its file name, its sha256).
    fn fetch_git(&self, r: &Requirement, pin: &GitPin) -> Result<(String, Digest), String>;
}

/// Whether `filename` is an sdist (not a wheel): `.tar.gz` or `.zip`.
pub fn is_sdist(filename: &str) -> bool {
    WheelName::parse(filename).is_none()
        && (filename.ends_with(".tar.gz") || filename.ends_with(".zip"))
}

/// The sdist among `files` (already those of the pinned version whose hash is pinned, or
/// unknown), if any: `.tar.gz` preferred over `.zip`, then by name.
pub fn choose_sdist<'a>(files: &[&'a IndexFile]) -> Option<&'a IndexFile> {
    files
        .iter()
        .copied()
        .filter(|f| is_sdist(&f.filename))
        .min_by_key(|f| (!f.filename.ends_with(".tar.gz"), f.filename.clone()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sdists_are_told_from_wheels() {
        assert!(is_sdist("psycopg2-2.9.10.tar.gz"));
        assert!(is_sdist("pkg-1.0.zip"));
        assert!(!is_sdist("six-1.16.0-py2.py3-none-any.whl"));
        assert!(!is_sdist("pkg-1.0.tar.bz2"));
    }
}

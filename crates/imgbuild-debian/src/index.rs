//! The package index: every binary package of bookworm, bookworm-updates and
//! bookworm-security (main, amd64), reached through a verified chain
//! `InRelease` (signature) → `Packages` (SHA256 listed in the signed Release) → entries.
//!
//! The decompressed `Packages` files are kept in the store under the SHA256 the signed
//! Release gives for them, so resolving again while `InRelease` is unchanged downloads
//! only the three small `InRelease` files.
//!
//! Freshness: a signed Release whose `Valid-Until` has passed is refused (as apt does), so
//! an old, validly signed bookworm-security index cannot be replayed to hide security
//! updates; snapshot mirrors and `Mirror::check_valid_until = false` skip that check.

use std::collections::BTreeMap;
use std::io::{self, BufRead, BufReader};

use imgbuild_store::{Digest, Store};

use crate::control::{self, Atom, Relations};
use crate::error::{Error, Result, from_store};
use crate::signature::Keyring;
use crate::{Mirror, date, fetch, version};

/// Which mirror base a package comes from (the lock records it so that a fetch by lock
/// needs no index).
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum Base {
    /// `Mirror::archive`: bookworm and bookworm-updates.
    Debian,
    /// `Mirror::security`: bookworm-security.
    DebianSecurity,
}

impl Base {
    pub fn as_str(self) -> &'static str {
        match self {
            Base::Debian => "debian",
            Base::DebianSecurity => "debian-security",
        }
    }
}

/// The suites read, in order, with the mirror base each lives on.
pub const SUITES: [(&str, Base); 3] = [
    ("bookworm", Base::Debian),
    ("bookworm-updates", Base::Debian),
    ("bookworm-security", Base::DebianSecurity),
];

const COMPONENT_PACKAGES: &str = "main/binary-amd64/Packages";

/// One version of one binary package, with what the resolver and fetcher need.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PackageEntry {
    pub name: String,
    pub version: String,
    pub architecture: String,
    pub filename: String,
    pub size: u64,
    pub sha256: Digest,
    pub base: Base,
    pub suite: String,
    pub depends: Relations,
    pub pre_depends: Relations,
    /// Provided names; a constraint, when present, is `= version`.
    pub provides: Vec<Atom>,
    pub priority: String,
    pub essential: bool,
}

/// What was read for one suite (for reports and the lockfile's provenance).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SuiteInfo {
    pub suite: String,
    pub url: String,
    pub date: String,
    pub packages_sha256: Digest,
    pub signed_by: String,
}

/// All packages of the suites, indexed by name and by provided (virtual) name.
#[derive(Clone, Debug, Default)]
pub struct Index {
    /// Versions of each package, newest first.
    packages: BTreeMap<String, Vec<PackageEntry>>,
    /// virtual name -> (provider name, provider version, provided version)
    provides: BTreeMap<String, Vec<(String, String, Option<String>)>>,
    pub suites: Vec<SuiteInfo>,
}

const FIELDS: &[&str] = &[
    "Package",
    "Version",
    "Architecture",
    "Filename",
    "Size",
    "SHA256",
    "Depends",
    "Pre-Depends",
    "Provides",
    "Priority",
    "Essential",
];

impl Index {
    pub fn new() -> Index {
        Index::default()
    }

    /// Adds the entries of one (decompressed) `Packages` file. `what` names it in errors.
    pub fn add_packages<R: BufRead>(
        &mut self,
        r: R,
        base: Base,
        suite: &str,
        what: &str,
    ) -> Result<()> {
        let keep = |k: &str| FIELDS.iter().any(|f| f.eq_ignore_ascii_case(k));
        let mut count = 0usize;
        control::for_each_paragraph(r, &keep, |p| {
            count += 1;
            let need = |f: &str| {
                p.get(f)
                    .map(str::to_owned)
                    .ok_or_else(|| format!("entry {count}: missing `{f}`"))
            };
            let name = need("Package")?;
            let ctx = |e: String| format!("package {name}: {e}");
            let rel = |f: &str| {
                control::parse_relations(p.get(f).unwrap_or(""))
                    .map_err(|e| ctx(format!("{f}: {e}")))
            };
            let provides: Vec<Atom> = rel("Provides")?.into_iter().flatten().collect();
            let entry = PackageEntry {
                version: need("Version")?,
                architecture: need("Architecture")?,
                filename: need("Filename")?,
                size: need("Size")?
                    .parse()
                    .map_err(|_| ctx("invalid Size".into()))?,
                sha256: Digest::from_hex(&need("SHA256")?).map_err(|e| ctx(e.to_string()))?,
                base,
                suite: suite.to_owned(),
                depends: rel("Depends")?,
                pre_depends: rel("Pre-Depends")?,
                provides,
                priority: p.get("Priority").unwrap_or("optional").to_owned(),
                essential: p.get("Essential") == Some("yes"),
                name,
            };
            self.insert(entry);
            Ok(())
        })
        .map_err(|why| Error::Parse {
            file: what.to_owned(),
            why,
        })
    }

    fn insert(&mut self, e: PackageEntry) {
        let versions = self.packages.entry(e.name.clone()).or_default();
        // the same version in two suites is the same .deb: keep the first seen
        if versions
            .iter()
            .any(|v| version::compare(&v.version, &e.version).is_eq())
        {
            return;
        }
        for p in &e.provides {
            self.provides.entry(p.name.clone()).or_default().push((
                e.name.clone(),
                e.version.clone(),
                p.constraint.as_ref().map(|c| c.version.clone()),
            ));
        }
        let at = versions
            .iter()
            .position(|v| version::compare(&v.version, &e.version).is_lt())
            .unwrap_or(versions.len());
        versions.insert(at, e);
    }

    /// All versions of a package, newest first.
    pub fn versions(&self, name: &str) -> &[PackageEntry] {
        self.packages.get(name).map(Vec::as_slice).unwrap_or(&[])
    }

    /// The candidate (newest version across the suites), as apt picks it with default pins.
    pub fn candidate(&self, name: &str) -> Option<&PackageEntry> {
        self.versions(name).first()
    }

    /// Candidates that provide `name`, with the provided version if any. Sorted by name.
    pub fn providers(&self, name: &str) -> Vec<(&PackageEntry, Option<&str>)> {
        let mut out: Vec<(&PackageEntry, Option<&str>)> = self
            .provides
            .get(name)
            .into_iter()
            .flatten()
            .filter_map(|(pkg, ver, provided)| {
                let cand = self.candidate(pkg)?;
                (cand.version == *ver).then_some((cand, provided.as_deref()))
            })
            .collect();
        out.sort_by(|a, b| a.0.name.cmp(&b.0.name));
        out.dedup_by(|a, b| a.0.name == b.0.name);
        out
    }

    /// Number of distinct package names.
    pub fn len(&self) -> usize {
        self.packages.len()
    }
    pub fn is_empty(&self) -> bool {
        self.packages.is_empty()
    }

    /// Downloads and verifies the three suites' indexes (see the module doc) against the
    /// Debian archive keys.
    pub fn fetch(
        mirror: &Mirror,
        store: &Store,
        http: &reqwest::blocking::Client,
    ) -> Result<Index> {
        Index::fetch_suites(mirror, store, http, &SUITES, Keyring::debian())
    }

    /// [`Index::fetch`] for a chosen list of suites and keys (tests, a private archive).
    pub fn fetch_suites(
        mirror: &Mirror,
        store: &Store,
        http: &reqwest::blocking::Client,
        suites: &[(&str, Base)],
        keyring: &Keyring,
    ) -> Result<Index> {
        let mut index = Index::new();
        for &(suite, base) in suites {
            let root = format!("{}/dists/{suite}", mirror.base_url(base));
            let url = format!("{root}/InRelease");
            let armored = fetch::download(http, &url, |body| {
                let mut text = String::new();
                io::Read::read_to_string(body, &mut text).map_err(|e| Error::Io {
                    op: "failed to read",
                    path: url.clone().into(),
                    source: e,
                })?;
                Ok(text)
            })?;
            let verified =
                keyring
                    .verify_inrelease(&armored)
                    .map_err(|why| Error::BadSignature {
                        url: url.clone(),
                        why,
                    })?;
            let release =
                ReleaseInfo::parse(&verified.text, suite).map_err(|why| Error::BadRelease {
                    url: url.clone(),
                    why,
                })?;
            if mirror.check_valid_until && !mirror.is_snapshot(base) {
                release
                    .check_valid_until(date::now())
                    .map_err(|e| match e {
                        Ok(valid_until) => Error::Expired {
                            suite: suite.to_owned(),
                            url: url.clone(),
                            valid_until,
                        },
                        Err(why) => Error::BadRelease {
                            url: url.clone(),
                            why,
                        },
                    })?;
            }
            let (digest, size) =
                release
                    .sha256(COMPONENT_PACKAGES)
                    .ok_or_else(|| Error::BadRelease {
                        url: url.clone(),
                        why: format!("the signed Release lists no SHA256 for {COMPONENT_PACKAGES}"),
                    })?;
            if !(store.has_blob(&digest) && store.verify(&digest)?) {
                download_packages(http, store, &root, &release, &digest, size)?;
            }
            let what = format!("{root}/{COMPONENT_PACKAGES} ({digest})");
            let reader = BufReader::with_capacity(1 << 20, store.open_verified(&digest)?);
            index.add_packages(reader, base, suite, &what)?;
            index.suites.push(SuiteInfo {
                suite: suite.to_owned(),
                url,
                date: release.date.clone(),
                packages_sha256: digest,
                signed_by: verified.signed_by,
            });
        }
        Ok(index)
    }

    /// Each suite's Release `Date` as RFC 3339 (`2026-11-28T02:53:00Z`), by suite name:
    /// what the lockfile records so that a snapshot of the same day can be named later.
    pub fn dates(&self) -> BTreeMap<String, String> {
        self.suites
            .iter()
            .filter_map(|s| {
                let t = date::parse_release_date(&s.date).ok()?;
                Some((s.suite.clone(), date::to_rfc3339(t)))
            })
            .collect()
    }
}

/// Fetches `Packages.xz` (by hash when the archive supports it), decompresses it while
/// streaming into the store, and commits it only if it matches the signed SHA256 and size.
fn download_packages(
    http: &reqwest::blocking::Client,
    store: &Store,
    root: &str,
    release: &ReleaseInfo,
    digest: &Digest,
    size: u64,
) -> Result<()> {
    let xz_path = format!("{COMPONENT_PACKAGES}.xz");
    let (xz_digest, _) = release.sha256(&xz_path).ok_or_else(|| Error::BadRelease {
        url: format!("{root}/InRelease"),
        why: format!("the signed Release lists no SHA256 for {xz_path}"),
    })?;
    let mut urls = vec![];
    if release.by_hash {
        urls.push(format!(
            "{root}/main/binary-amd64/by-hash/SHA256/{}",
            xz_digest.hex()
        ));
    }
    urls.push(format!("{root}/{xz_path}"));
    let mut last = None;
    for url in urls {
        let res = fetch::download(http, &url, |body| {
            let mut w = store.writer()?;
            let mut dec = liblzma::read::XzDecoder::new_multi_decoder(BufReader::new(body));
            io::copy(&mut dec, &mut w).map_err(|e| Error::Io {
                op: "failed to download and decompress",
                path: url.clone().into(),
                source: e,
            })?;
            w.commit_expecting(digest, Some(size), &format!("{url} (decompressed)"))
                .map_err(from_store)?;
            Ok(())
        });
        match res {
            Err(e @ Error::HttpStatus { status: 404, .. }) => last = Some(e),
            other => return other,
        }
    }
    Err(last.expect("at least one url"))
}

/// The fields of a signed Release file this crate uses.
#[derive(Debug)]
struct ReleaseInfo {
    date: String,
    valid_until: Option<String>,
    by_hash: bool,
    sha256: BTreeMap<String, (Digest, u64)>,
}

impl ReleaseInfo {
    fn parse(text: &str, suite: &str) -> Result<ReleaseInfo, String> {
        let paras = control::parse_paragraphs(text)?;
        let p = paras.first().ok_or("empty Release")?;
        // A validly signed Release of another suite (say, an old bookworm served as
        // bookworm-security) must not be accepted: check the codename it signs.
        match p.get("Codename") {
            Some(c) if c == suite => {}
            other => {
                return Err(format!(
                    "signed Release is for codename {other:?}, expected `{suite}`"
                ));
            }
        }
        let mut sha256 = BTreeMap::new();
        for line in p.get("SHA256").unwrap_or("").lines() {
            let f: Vec<&str> = line.split_whitespace().collect();
            if let [h, s, path] = f[..] {
                let d = Digest::from_hex(h).map_err(|e| e.to_string())?;
                let s: u64 = s
                    .parse()
                    .map_err(|_| format!("invalid size in SHA256 line `{line}`"))?;
                sha256.insert(path.to_owned(), (d, s));
            }
        }
        Ok(ReleaseInfo {
            date: p.get("Date").unwrap_or("").to_owned(),
            valid_until: p.get("Valid-Until").map(str::to_owned),
            by_hash: p.get("Acquire-By-Hash") == Some("yes"),
            sha256,
        })
    }

    /// Whether the Release is still valid at `now` (seconds since the epoch): a Release
    /// without `Valid-Until` always is. `Err(Ok(valid_until))` when it has expired,
    /// `Err(Err(why))` when the field cannot be read.
    fn check_valid_until(&self, now: i64) -> Result<(), Result<String, String>> {
        let Some(v) = &self.valid_until else {
            return Ok(());
        };
        let until =
            date::parse_release_date(v).map_err(|why| Err(format!("Valid-Until: {why}")))?;
        if now > until {
            return Err(Ok(v.clone()));
        }
        Ok(())
    }

    fn sha256(&self, path: &str) -> Option<(Digest, u64)> {
        self.sha256.get(path).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn release_codename_is_checked() {
        let text = "Origin: Debian\nCodename: bookworm\nDate: x\nSHA256:\n e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855 0 main/binary-amd64/Packages\n";
        let r = ReleaseInfo::parse(text, "bookworm").unwrap();
        assert_eq!(r.sha256("main/binary-amd64/Packages").unwrap().1, 0);
        assert!(
            ReleaseInfo::parse(text, "bookworm-security")
                .unwrap_err()
                .contains("expected `bookworm-security`")
        );
    }

    #[test]
    fn valid_until_is_enforced() {
        let text = "Codename: bookworm-security\nDate: Fri, 20 Nov 2026 00:12:41 UTC\nValid-Until: Fri, 27 Nov 2026 00:12:41 UTC\n";
        let r = ReleaseInfo::parse(text, "bookworm-security").unwrap();
        let until = date::parse_release_date("Fri, 27 Nov 2026 00:12:41 UTC").unwrap();
        assert_eq!(r.check_valid_until(until), Ok(()));
        assert_eq!(
            r.check_valid_until(until + 1),
            Err(Ok("Fri, 27 Nov 2026 00:12:41 UTC".to_owned()))
        );
        let no_field = ReleaseInfo::parse("Codename: bookworm\n", "bookworm").unwrap();
        assert_eq!(no_field.check_valid_until(i64::MAX), Ok(()));
        let garbled =
            ReleaseInfo::parse("Codename: bookworm\nValid-Until: soon\n", "bookworm").unwrap();
        assert!(
            matches!(garbled.check_valid_until(0), Err(Err(why)) if why.contains("Valid-Until"))
        );
    }

    #[test]
    fn newest_version_first_and_duplicates_kept_once() {
        let mk = |v: &str, sha: char| {
            format!(
                "Package: a\nVersion: {v}\nArchitecture: amd64\nFilename: pool/a_{v}.deb\nSize: 1\nSHA256: {}\nProvides: va (= {v})\n\n",
                sha.to_string().repeat(64)
            )
        };
        let mut idx = Index::new();
        idx.add_packages(mk("1.0-1", 'a').as_bytes(), Base::Debian, "bookworm", "t")
            .unwrap();
        idx.add_packages(
            mk("1.0-1+deb12u1", 'b').as_bytes(),
            Base::DebianSecurity,
            "bookworm-security",
            "t",
        )
        .unwrap();
        idx.add_packages(
            mk("1.0-1", 'c').as_bytes(),
            Base::Debian,
            "bookworm-updates",
            "t",
        )
        .unwrap();
        assert_eq!(idx.versions("a").len(), 2);
        assert_eq!(idx.candidate("a").unwrap().version, "1.0-1+deb12u1");
        assert_eq!(idx.candidate("a").unwrap().base, Base::DebianSecurity);
        let p = idx.providers("va");
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].1, Some("1.0-1+deb12u1"));
        let err = idx
            .add_packages(
                "Package: b\nVersion: 1\n\n".as_bytes(),
                Base::Debian,
                "bookworm",
                "P",
            )
            .unwrap_err();
        assert!(err.to_string().contains("missing `Architecture`"), "{err}");
    }
}

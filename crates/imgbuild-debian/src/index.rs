//! The package index of one Debian release for one architecture: every binary package
//! of the release, its `-updates` and its `-security` (`main`, e.g. trixie, trixie-updates,
//! trixie-security for arm64), then of every third-party repository configured
//! (`Mirror::repositories`), each reached through a verified chain
//! `InRelease` (signature) → `Packages` (SHA256 listed in the signed Release) → entries.
//! A Debian suite is verified only with the archive keys that sign it, a repository only
//! with its own key file ([`crate::signature`]).
//!
//! The decompressed `Packages` files are kept in the store under the SHA256 the signed
//! Release gives for them, which is per (suite, architecture, component): resolving again
//! while `InRelease` is unchanged downloads only the small `InRelease` files.
//! [`crate::Indexes`] keeps the parsed indexes of one command, one per (suite, arch).
//!
//! Freshness: a signed Release whose `Valid-Until` has passed is refused (as apt does), so
//! an old, validly signed `-security` index cannot be replayed to hide security
//! updates; snapshot mirrors and `Mirror::check_valid_until = false` skip that check.

use std::collections::BTreeMap;
use std::io::{self, BufRead, BufReader};
use std::sync::{Arc, Mutex};

use imgbuild_store::{Digest, Store};

use crate::control::{self, Atom, Relations};
use crate::error::{Error, Result, from_store};
use crate::platform::{Arch, Suite};
use crate::signature::Keyring;
use crate::{Mirror, date, fetch, is_snapshot_url, version};

/// Which mirror base of the Debian archive a package comes from (the lock records it so
/// that a fetch by lock needs no index). Packages of a third-party repository are
/// fetched from the repository's URL; their `base` is `Debian` and means nothing.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum Base {
    /// `Mirror::archive`: the release and its `-updates` (`trixie`, `trixie-updates`).
    Debian,
    /// `Mirror::security`: the release's `-security`.
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

/// The name of the Debian archive among repositories (`debian:libc6` pins a package to
/// it; reserved, no third-party repository may use it).
pub const DEBIAN: &str = "debian";

impl Base {
    /// The base serving a Debian suite: `*-security` lives on the security mirror.
    pub fn of_suite(suite: &str) -> Base {
        if suite.ends_with("-security") {
            Base::DebianSecurity
        } else {
            Base::Debian
        }
    }
}

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
    /// [`DEBIAN`], or the name of the third-party repository.
    pub repository: String,
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
    /// [`DEBIAN`], or the name of the third-party repository.
    #[serde(default = "debian")]
    pub repository: String,
    #[serde(default = "main")]
    pub component: String,
}

fn debian() -> String {
    DEBIAN.to_owned()
}
fn main() -> String {
    "main".to_owned()
}

/// All packages of the suites, indexed by name and by provided (virtual) name.
#[derive(Clone, Debug, Default)]
pub struct Index {
    /// The architecture of the `Packages` files read (`Architecture: all` ones too).
    pub arch: Arch,
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
    /// An empty amd64 index.
    pub fn new() -> Index {
        Index::default()
    }

    /// An empty index for another architecture.
    pub fn for_arch(arch: Arch) -> Index {
        Index {
            arch,
            ..Index::default()
        }
    }

    /// Adds the entries of one (decompressed) `Packages` file of the Debian archive.
    /// `what` names it in errors.
    pub fn add_packages<R: BufRead>(
        &mut self,
        r: R,
        base: Base,
        suite: &str,
        what: &str,
    ) -> Result<()> {
        self.add_packages_from(r, DEBIAN, base, suite, what)
    }

    /// [`Index::add_packages`] for a `Packages` file of a named repository.
    pub fn add_packages_from<R: BufRead>(
        &mut self,
        r: R,
        repository: &str,
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
                repository: repository.to_owned(),
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
        // the same version in two suites of one repository is the same .deb: keep the
        // first seen. Another repository's is kept (after the first: the Debian archive
        // wins a tie, as the first source of apt's list does), so `repo:name` finds it.
        if versions.iter().any(|v| {
            v.repository == e.repository && version::compare(&v.version, &e.version).is_eq()
        }) {
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

    /// The candidate (newest version across the suites and repositories), as apt picks
    /// it with default pins.
    pub fn candidate(&self, name: &str) -> Option<&PackageEntry> {
        self.versions(name).first()
    }

    /// The newest version of a package in one repository ([`DEBIAN`] or a name).
    pub fn candidate_in(&self, name: &str, repository: &str) -> Option<&PackageEntry> {
        self.versions(name)
            .iter()
            .find(|e| e.repository == repository)
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

    /// Bookworm's indexes for amd64 (what imgbuild read before suites and architectures
    /// could be chosen): [`Index::fetch_for`] with the defaults.
    pub fn fetch(
        mirror: &Mirror,
        store: &Store,
        http: &reqwest::blocking::Client,
    ) -> Result<Index> {
        Index::fetch_for(mirror, Suite::default(), Arch::default(), store, http)
    }

    /// Downloads and verifies the index of a release for one architecture (see the
    /// module doc): its three suites, each verified with the keys that sign it
    /// ([`Keyring::for_suite`]), then every repository of `mirror.repositories`, each
    /// verified with its own key file only.
    pub fn fetch_for(
        mirror: &Mirror,
        suite: Suite,
        arch: Arch,
        store: &Store,
        http: &reqwest::blocking::Client,
    ) -> Result<Index> {
        let suites: Vec<(String, Base, &Keyring)> = suite
            .suites()
            .into_iter()
            .map(|(name, base)| (name, base, Keyring::for_suite(suite, base)))
            .collect();
        Index::fetch_with(mirror, &suites, arch, store, http)
    }

    /// [`Index::fetch`] for a chosen list of Debian suites and the keys that vouch for
    /// them, amd64, plus the mirror's repositories (tests, a private archive).
    pub fn fetch_suites(
        mirror: &Mirror,
        store: &Store,
        http: &reqwest::blocking::Client,
        suites: &[(&str, Base)],
        keyring: &Keyring,
    ) -> Result<Index> {
        let suites: Vec<(String, Base, &Keyring)> = suites
            .iter()
            .map(|(name, base)| (name.to_string(), *base, keyring))
            .collect();
        Index::fetch_with(mirror, &suites, Arch::Amd64, store, http)
    }

    fn fetch_with(
        mirror: &Mirror,
        suites: &[(String, Base, &Keyring)],
        arch: Arch,
        store: &Store,
        http: &reqwest::blocking::Client,
    ) -> Result<Index> {
        let mut index = Index::for_arch(arch);
        for (name, base, keyring) in suites {
            index.read_suite(
                &SuiteSource {
                    repository: DEBIAN,
                    base_url: mirror.base_url(*base),
                    suite: name,
                    base: *base,
                    components: &["main".to_owned()],
                    keyring,
                    check_valid_until: mirror.check_valid_until && !mirror.is_snapshot(*base),
                },
                store,
                http,
            )?;
        }
        for repo in &mirror.repositories {
            let keyring = Keyring::from_key_file(&repo.name, &repo.key)?;
            index.read_suite(
                &SuiteSource {
                    repository: &repo.name,
                    base_url: repo.url.trim_end_matches('/'),
                    suite: &repo.suite,
                    base: Base::Debian,
                    components: &repo.components,
                    keyring: &keyring,
                    check_valid_until: mirror.check_valid_until && !is_snapshot_url(&repo.url),
                },
                store,
                http,
            )?;
        }
        Ok(index)
    }

    /// Reads one suite: `InRelease` verified with the source's keys only, its freshness,
    /// then each component's `Packages` for this index's architecture.
    fn read_suite(
        &mut self,
        src: &SuiteSource<'_>,
        store: &Store,
        http: &reqwest::blocking::Client,
    ) -> Result<()> {
        let suite = src.suite;
        let root = format!("{}/dists/{suite}", src.base_url);
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
            src.keyring
                .verify_inrelease(&armored)
                .map_err(|why| Error::BadSignature {
                    url: url.clone(),
                    why,
                })?;
        // the Debian archive names a suite by its codename; a third-party repository
        // often only by `Suite` (apt accepts either)
        let release =
            ReleaseInfo::parse(&verified.text, suite, src.repository != DEBIAN).map_err(|why| {
                Error::BadRelease {
                    url: url.clone(),
                    why,
                }
            })?;
        if src.check_valid_until {
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
        let arch = self.arch.as_str();
        for component in src.components {
            let dir = format!("{component}/binary-{arch}");
            let packages = format!("{dir}/Packages");
            let (digest, size) = release.sha256(&packages).ok_or_else(|| Error::BadRelease {
                url: url.clone(),
                why: format!(
                    "the signed Release lists no SHA256 for {packages}: {suite} does not publish component \
                     `{component}` for {arch}{}",
                    match &release.architectures {
                        Some(a) => format!(" (its architectures: {a})"),
                        None => String::new(),
                    }
                ),
            })?;
            if !(store.has_blob(&digest) && store.verify(&digest)?) {
                download_packages(http, store, &root, &dir, &release, &digest, size)?;
            }
            let what = format!("{root}/{packages} ({digest})");
            let reader = BufReader::with_capacity(1 << 20, store.open_verified(&digest)?);
            self.add_packages_from(reader, src.repository, src.base, suite, &what)?;
            self.suites.push(SuiteInfo {
                suite: suite.to_owned(),
                url: url.clone(),
                date: release.date.clone(),
                packages_sha256: digest,
                signed_by: verified.signed_by.clone(),
                repository: src.repository.to_owned(),
                component: component.clone(),
            });
        }
        Ok(())
    }

    /// Each Debian suite's Release `Date` as RFC 3339 (`2026-11-28T02:53:00Z`), by suite
    /// name: what the lockfile records so that a snapshot of the same day can be named
    /// later (third-party repositories have no snapshot service, so they are left out).
    pub fn dates(&self) -> BTreeMap<String, String> {
        self.suites
            .iter()
            .filter(|s| s.repository == DEBIAN)
            .filter_map(|s| {
                let t = date::parse_release_date(&s.date).ok()?;
                Some((s.suite.clone(), date::to_rfc3339(t)))
            })
            .collect()
    }

    /// What this index searched, for messages: `trixie, trixie-updates, trixie-security,
    /// pgdg (trixie-pgdg) (arm64)`.
    pub fn describe(&self) -> String {
        let mut names: Vec<String> = vec![];
        for s in &self.suites {
            let n = if s.repository == DEBIAN {
                format!("{} ({})", s.suite, s.component)
            } else {
                format!("{} ({} {})", s.repository, s.suite, s.component)
            };
            if !names.contains(&n) {
                names.push(n);
            }
        }
        if names.is_empty() {
            names.push("an empty index".into());
        }
        format!("{}, for {}", names.join(", "), self.arch)
    }

    /// Names of the repositories this index read (`debian` first).
    pub fn repositories(&self) -> Vec<&str> {
        let mut out: Vec<&str> = vec![DEBIAN];
        for s in &self.suites {
            if !out.contains(&s.repository.as_str()) {
                out.push(&s.repository);
            }
        }
        out
    }
}

/// The indexes one command reads, each fetched once per (suite, arch) and shared by the
/// layers that need it (a failure is not kept: the next caller tries again).
#[derive(Debug, Default)]
pub struct Indexes {
    cells: Mutex<BTreeMap<(Suite, Arch), Arc<IndexCell>>>,
}

/// One (suite, arch): empty until fetched; locked while it is being fetched.
type IndexCell = Mutex<Option<Arc<Index>>>;

impl Indexes {
    pub fn new() -> Indexes {
        Indexes::default()
    }

    /// The index of `suite` for `arch` ([`Index::fetch_for`]), fetched on first use;
    /// callers asking for the same one meanwhile wait for it.
    pub fn get(
        &self,
        mirror: &Mirror,
        suite: Suite,
        arch: Arch,
        store: &Store,
        http: &reqwest::blocking::Client,
    ) -> Result<Arc<Index>> {
        let cell = self
            .cells
            .lock()
            .expect("indexes")
            .entry((suite, arch))
            .or_default()
            .clone();
        let mut slot = cell.lock().expect("index");
        if let Some(i) = &*slot {
            return Ok(i.clone());
        }
        let index = Arc::new(Index::fetch_for(mirror, suite, arch, store, http)?);
        *slot = Some(index.clone());
        Ok(index)
    }

    /// The indexes read so far (for the store inputs a build records), by (suite, arch).
    pub fn fetched(&self) -> Vec<Arc<Index>> {
        let cells: Vec<_> = self
            .cells
            .lock()
            .expect("indexes")
            .values()
            .cloned()
            .collect();
        cells
            .iter()
            .filter_map(|c| c.try_lock().ok().and_then(|s| s.clone()))
            .collect()
    }
}

/// One suite to read and what vouches for it.
struct SuiteSource<'a> {
    repository: &'a str,
    base_url: &'a str,
    suite: &'a str,
    base: Base,
    components: &'a [String],
    keyring: &'a Keyring,
    check_valid_until: bool,
}

/// Fetches `Packages` (as `.xz`, `.gz` or plain, whichever the signed Release lists, in
/// that order of preference; by hash when the archive supports it), decompresses it
/// while streaming into the store, and commits it only if it matches the signed SHA256
/// and size.
fn download_packages(
    http: &reqwest::blocking::Client,
    store: &Store,
    root: &str,
    dir: &str,
    release: &ReleaseInfo,
    digest: &Digest,
    size: u64,
) -> Result<()> {
    let (file, compressed) = ["Packages.xz", "Packages.gz", "Packages"]
        .into_iter()
        .find_map(|f| release.sha256(&format!("{dir}/{f}")).map(|d| (f, d.0)))
        .expect("the plain Packages is listed");
    let mut urls = vec![];
    if release.by_hash {
        urls.push(format!("{root}/{dir}/by-hash/SHA256/{}", compressed.hex()));
    }
    urls.push(format!("{root}/{dir}/{file}"));
    let mut last = None;
    for url in urls {
        let res = fetch::download(http, &url, |body| {
            let mut w = store.writer()?;
            let body = BufReader::new(body);
            let mut dec: Box<dyn io::Read + '_> = match file {
                "Packages.xz" => Box::new(liblzma::read::XzDecoder::new_multi_decoder(body)),
                "Packages.gz" => Box::new(flate2::read::MultiGzDecoder::new(body)),
                _ => Box::new(body),
            };
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
    architectures: Option<String>,
    by_hash: bool,
    sha256: BTreeMap<String, (Digest, u64)>,
}

impl ReleaseInfo {
    /// `or_suite`: a Release whose `Suite` (rather than `Codename`) names the suite is
    /// accepted too (third-party repositories).
    fn parse(text: &str, suite: &str, or_suite: bool) -> Result<ReleaseInfo, String> {
        let paras = control::parse_paragraphs(text)?;
        let p = paras.first().ok_or("empty Release")?;
        // A validly signed Release of another suite (say, an old bookworm served as
        // bookworm-security) must not be accepted: check the codename it signs.
        match p.get("Codename") {
            Some(c) if c == suite => {}
            _ if or_suite && p.get("Suite") == Some(suite) => {}
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
            architectures: p.get("Architectures").map(str::to_owned),
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
        let r = ReleaseInfo::parse(text, "bookworm", false).unwrap();
        assert_eq!(r.sha256("main/binary-amd64/Packages").unwrap().1, 0);
        assert!(
            ReleaseInfo::parse(text, "bookworm-security", false)
                .unwrap_err()
                .contains("expected `bookworm-security`")
        );
    }

    #[test]
    fn valid_until_is_enforced() {
        let text = "Codename: bookworm-security\nDate: Fri, 20 Nov 2026 00:12:41 UTC\nValid-Until: Fri, 27 Nov 2026 00:12:41 UTC\n";
        let r = ReleaseInfo::parse(text, "bookworm-security", false).unwrap();
        let until = date::parse_release_date("Fri, 27 Nov 2026 00:12:41 UTC").unwrap();
        assert_eq!(r.check_valid_until(until), Ok(()));
        assert_eq!(
            r.check_valid_until(until + 1),
            Err(Ok("Fri, 27 Nov 2026 00:12:41 UTC".to_owned()))
        );
        let no_field = ReleaseInfo::parse("Codename: bookworm\n", "bookworm", false).unwrap();
        assert_eq!(no_field.check_valid_until(i64::MAX), Ok(()));
        let garbled =
            ReleaseInfo::parse("Codename: bookworm\nValid-Until: soon\n", "bookworm", false)
                .unwrap();
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

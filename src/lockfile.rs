//! `imgbuild.lock`: every resolved input pinned, committed with the recipes.
//!
//! For each registry base image given by tag: the digest it resolved to.
//! For each Debian layer (recipe + layer number): the request it was resolved for
//! (a digest of its `packages` and `exclude`), the Debian release (`suite`) and
//! architecture (`arch`) it was resolved for (omitted when bookworm and amd64, which
//! is what locks written before releases could be chosen mean, so that they load as
//! they were and a bookworm project's lock is unchanged), the `Date` of each suite's signed
//! Release the index was read at (`index_dates`, so that an error can name a
//! snapshot.debian.org mirror of that day once the archive has moved on; locks
//! written before it was recorded have none and still load) and each package's
//! name, version, architecture, archive path, size, sha256 and, for a package of a
//! third-party repository, the repository's name. A build whose request, release and
//! architecture match the lock needs no index download; `--locked` turns a mismatch
//! into an error naming the recipe. Python layers need no entry: their
//! requirements file is already a lock (pinned and hashed).
//!
//! The file is TOML, one package per line, sorted, so diffs are readable and
//! tools like Renovate can follow it.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context, Result};
use imgbuild_debian::{Arch, LockedPackage, Suite};
use imgbuild_store::Digest;
use serde::{Deserialize, Serialize};

pub const FILE: &str = "imgbuild.lock";

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct DebianLock {
    pub recipe: String,
    pub layer: usize,
    pub request: Digest,
    /// The Debian release the layer was resolved for (bookworm in older locks).
    #[serde(default)]
    pub suite: Suite,
    /// The architecture it was resolved for (amd64 in older locks).
    #[serde(default)]
    pub arch: Arch,
    /// Suite -> its Release `Date` (RFC 3339, UTC) when the layer was resolved.
    #[serde(default)]
    pub index_dates: BTreeMap<String, String>,
    pub packages: Vec<LockedPackage>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct BaseLock {
    pub reference: String,
    pub digest: Digest,
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    version: u32,
    #[serde(default)]
    base: Vec<BaseLock>,
    #[serde(default)]
    debian: Vec<DebianLock>,
}

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Lockfile {
    /// Registry base images given by tag: reference -> the digest it resolved to.
    pub bases: BTreeMap<String, Digest>,
    /// Keyed by (recipe, layer number, architecture): an image built for several
    /// platforms has one entry per architecture for each Debian layer.
    pub debian: BTreeMap<(String, usize, Arch), DebianLock>,
}

/// The request digest of a Debian layer: what the lock entry was resolved for.
pub fn debian_request(packages: &[String], exclude: &[String]) -> Digest {
    let mut p = packages.to_vec();
    p.sort();
    let mut e = exclude.to_vec();
    e.sort();
    Digest::of_bytes(&serde_json::to_vec(&(p, e)).expect("json"))
}

impl Lockfile {
    pub fn load(root: &Path) -> Result<Lockfile> {
        let p = root.join(FILE);
        let text = match crate::project::read_project_file(&p) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Lockfile::default()),
            Err(e) => return Err(e).with_context(|| format!("failed to read `{}`", p.display())),
        };
        let raw: Raw = toml::from_str(&text).map_err(|e| {
            let line = e
                .span()
                .map(|s| text[..s.start].matches('\n').count() + 1)
                .unwrap_or(0);
            anyhow::anyhow!(
                "{FILE}:{line}: {} (regenerate it with `imgbuild lock`)",
                e.message().trim()
            )
        })?;
        if raw.version != 1 {
            anyhow::bail!(
                "{FILE} has version {}; this imgbuild reads version 1 (regenerate it with `imgbuild lock`)",
                raw.version
            );
        }
        Ok(Lockfile {
            bases: raw
                .base
                .into_iter()
                .map(|b| (b.reference, b.digest))
                .collect(),
            debian: raw
                .debian
                .into_iter()
                .map(|d| ((d.recipe.clone(), d.layer, d.arch), d))
                .collect(),
        })
    }

    /// Writes the lock in its canonical layout (atomically).
    pub fn save(&self, root: &Path) -> Result<()> {
        let mut s = String::from(
            "# imgbuild.lock: written by `imgbuild lock` and `imgbuild build`; commit it.\n# Every Debian package of every layer, pinned by version and sha256.\nversion = 1\n",
        );
        for (r, d) in &self.bases {
            let _ = write!(
                s,
                "\n[[base]]\nreference = {}\ndigest = \"{d}\"\n",
                toml_str(r)
            );
        }
        for d in self.debian.values() {
            let _ = write!(
                s,
                "\n[[debian]]\nrecipe = {}\nlayer = {}\nrequest = \"{}\"\n",
                toml_str(&d.recipe),
                d.layer,
                d.request
            );
            if d.suite != Suite::default() {
                let _ = writeln!(s, "suite = {}", toml_str(d.suite.codename()));
            }
            if d.arch != Arch::default() {
                let _ = writeln!(s, "arch = {}", toml_str(d.arch.as_str()));
            }
            if !d.index_dates.is_empty() {
                let dates: Vec<String> = d
                    .index_dates
                    .iter()
                    .map(|(suite, date)| format!("{} = {}", toml_key(suite), toml_str(date)))
                    .collect();
                let _ = writeln!(s, "index_dates = {{ {} }}", dates.join(", "));
            }
            s.push_str("packages = [\n");
            for p in &d.packages {
                // a package of the Debian archive names no repository (as before
                // repositories existed); one of a third-party repository names it
                let repository = if p.repository == imgbuild_debian::DEBIAN {
                    String::new()
                } else {
                    format!(", repository = {}", toml_str(&p.repository))
                };
                let _ = writeln!(
                    s,
                    "  {{ name = {}, version = {}, architecture = {}, filename = {}, size = {}, sha256 = \"{}\", base = \"{}\"{repository} }},",
                    toml_str(&p.name),
                    toml_str(&p.version),
                    toml_str(&p.architecture),
                    toml_str(&p.filename),
                    p.size,
                    p.sha256,
                    p.base.as_str()
                );
            }
            s.push_str("]\n");
        }
        crate::sink::write_atomic(&root.join(FILE), s.as_bytes())
    }
}

fn toml_str(s: &str) -> String {
    serde_json::to_string(s).expect("json string")
}

/// A bare key when TOML allows one (`bookworm-security`), else a quoted one.
fn toml_key(s: &str) -> String {
    if !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        s.to_owned()
    } else {
        toml_str(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The start of the committed lock as it was before `index_dates` existed.
    const OLD: &str = r#"# imgbuild.lock
version = 1

[[debian]]
recipe = "nginx"
layer = 1
request = "sha256:c5eb84f1707f5400ef258c3703ca1adc3beb8d45570188d5f3bf79f83c41e94c"
packages = [
  { name = "netbase", version = "6.4", architecture = "all", filename = "pool/main/n/netbase/netbase_6.4_all.deb", size = 12800, sha256 = "sha256:29b23c48c0fe6f878e56c5ddc9f65d1c05d729360f3690a593a8c795031cd867", base = "debian" },
]
"#;

    #[test]
    fn old_locks_load_and_dates_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(FILE), OLD).unwrap();
        let mut lock = Lockfile::load(dir.path()).unwrap();
        let entry = lock
            .debian
            .get_mut(&("nginx".into(), 1, Arch::Amd64))
            .unwrap();
        assert!(entry.index_dates.is_empty());
        assert_eq!(entry.packages[0].name, "netbase");
        // an old lock saved again keeps its layout: no dates line appears
        lock.save(dir.path()).unwrap();
        let resaved = std::fs::read_to_string(dir.path().join(FILE)).unwrap();
        assert!(!resaved.contains("index_dates"), "{resaved}");
        assert_eq!(Lockfile::load(dir.path()).unwrap(), lock);

        let entry = lock
            .debian
            .get_mut(&("nginx".into(), 1, Arch::Amd64))
            .unwrap();
        entry.index_dates = BTreeMap::from([
            ("bookworm".to_owned(), "2026-07-11T10:16:37Z".to_owned()),
            (
                "bookworm-security".to_owned(),
                "2026-11-28T02:53:00Z".to_owned(),
            ),
            (
                "bookworm-updates".to_owned(),
                "2026-11-28T02:15:35Z".to_owned(),
            ),
        ]);
        lock.save(dir.path()).unwrap();
        let text = std::fs::read_to_string(dir.path().join(FILE)).unwrap();
        // one readable line per layer, between the request and the packages
        assert!(
            text.contains(
                "request = \"sha256:c5eb84f1707f5400ef258c3703ca1adc3beb8d45570188d5f3bf79f83c41e94c\"\n\
                 index_dates = { bookworm = \"2026-07-11T10:16:37Z\", bookworm-security = \"2026-11-28T02:53:00Z\", \
                 bookworm-updates = \"2026-11-28T02:15:35Z\" }\npackages = [\n"
            ),
            "{text}"
        );
        assert_eq!(Lockfile::load(dir.path()).unwrap(), lock);
        assert_eq!(toml_key("a b"), "\"a b\"");
    }

    #[test]
    fn old_locks_are_bookworm_amd64_and_suite_arch_repository_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(FILE), OLD).unwrap();
        let mut lock = Lockfile::load(dir.path()).unwrap();
        let entry = lock
            .debian
            .get_mut(&("nginx".into(), 1, Arch::Amd64))
            .unwrap();
        assert_eq!((entry.suite, entry.arch), (Suite::Bookworm, Arch::Amd64));
        // bookworm/amd64 and Debian packages are written as before: the old lock's bytes
        lock.save(dir.path()).unwrap();
        let resaved = std::fs::read_to_string(dir.path().join(FILE)).unwrap();
        assert!(
            resaved.ends_with(OLD.split_once("version = 1\n").unwrap().1),
            "{resaved}"
        );

        // (an entry is keyed by its architecture)
        let mut entry = lock
            .debian
            .remove(&("nginx".into(), 1, Arch::Amd64))
            .unwrap();
        entry.suite = Suite::Trixie;
        entry.arch = Arch::Arm64;
        entry.packages[0].repository = "pgdg".into();
        lock.debian.insert(("nginx".into(), 1, Arch::Arm64), entry);
        lock.save(dir.path()).unwrap();
        let text = std::fs::read_to_string(dir.path().join(FILE)).unwrap();
        assert!(
            text.contains("e94c\"\nsuite = \"trixie\"\narch = \"arm64\"\npackages = [\n"),
            "{text}"
        );
        assert!(
            text.contains("base = \"debian\", repository = \"pgdg\" },\n"),
            "{text}"
        );
        assert_eq!(Lockfile::load(dir.path()).unwrap(), lock);
    }
}

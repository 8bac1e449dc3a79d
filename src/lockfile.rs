//! `imgbuild.lock`: every resolved input pinned, committed with the recipes.
//!
//! For each registry base image given by tag: the digest it resolved to.
//! For each Debian layer (recipe + layer number): the request it was resolved for
//! (a digest of its `packages` and `exclude`) and each package's name, version,
//! architecture, archive path, size and sha256. A build whose request matches the
//! lock needs no index download; `--locked` turns a mismatch into an error naming
//! the recipe. Python layers need no entry: their requirements file is already a
//! lock (pinned and hashed).
//!
//! The file is TOML, one package per line, sorted, so diffs are readable and
//! tools like Renovate can follow it.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context, Result};
use imgbuild_debian::LockedPackage;
use imgbuild_store::Digest;
use serde::{Deserialize, Serialize};

pub const FILE: &str = "imgbuild.lock";

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct DebianLock {
    pub recipe: String,
    pub layer: usize,
    pub request: Digest,
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
    pub debian: BTreeMap<(String, usize), DebianLock>,
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
        let text = match std::fs::read_to_string(&p) {
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
                .map(|d| ((d.recipe.clone(), d.layer), d))
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
                "\n[[debian]]\nrecipe = {}\nlayer = {}\nrequest = \"{}\"\npackages = [\n",
                toml_str(&d.recipe),
                d.layer,
                d.request
            );
            for p in &d.packages {
                let _ = writeln!(
                    s,
                    "  {{ name = {}, version = {}, architecture = {}, filename = {}, size = {}, sha256 = \"{}\", base = \"{}\" }},",
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

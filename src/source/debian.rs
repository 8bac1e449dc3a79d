//! The `debian` layer source: packages resolved (or taken from `imgbuild.lock`),
//! fetched and verified by `imgbuild-debian`, unpacked into the layer, then the
//! base fix-up and `remove_paths`.
//!
//! The fingerprint is the locked packages' sha256s plus the options, so a build with
//! a complete lock and a warm cache reads no index, downloads nothing and
//! decompresses nothing. A built layer records as its inputs (kept by `gc`) the
//! `.deb`s, the uncompressed `data.tar` spools its files point into and, when this
//! command read the index, the `Packages` files.
//!
//! Its recipe key: `debian = { suite, packages, exclude, remove_paths, base, bytecode }`.
//! `suite` (a release codename) overrides the project's `[debian] suite` (default
//! bookworm) for one layer; the release and the architecture are inputs of the layer
//! (`debian release bookworm -> trixie`), and the lock records both.
//!
//! Each (release, architecture) has its own index, read once per command
//! ([`Indexes`]); a third-party repository is read only for the release its `suite`
//! belongs to (`trixie-pgdg` for trixie, see [`repository_release`]), and for every
//! release when its suite names none (`stable`, `any`).
//!
//! All Debian layers of one command share one [`InFlight`] registry: layers built at
//! the same time that need the same `.deb` download it once.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result, anyhow, bail};
use imgbuild_debian::{
    Arch, Fetcher, InFlight, Index, Indexes, LockedPackage, Mirror, Suite, Unpacker, resolve,
};
use imgbuild_layer::Tree;
use imgbuild_store::{Digest, Store};

use serde::Deserialize;

use super::{Contribution, Input, LayerCx, LayerSource, LockCx, SourceKind, SourcePlan};
use crate::lockfile::{DebianLock, Lockfile, debian_request};
use crate::progress::Progress;
use crate::recipe::{Pos, Recipe, RecipeCx, RecipeError};

/// What every Debian layer of one command shares.
pub struct DebianInputs {
    pub mirror: Mirror,
    /// The project's release (`[debian] suite`); a layer's `suite` overrides it.
    pub suite: Suite,
    pub lock: Mutex<Lockfile>,
    /// `--locked`: a recipe that no longer matches the lock is an error.
    pub locked: bool,
    /// `imgbuild lock`: resolve everything afresh.
    pub relock: bool,
    indexes: Indexes,
    /// `.deb` downloads in progress, shared by the layers of this command.
    in_flight: InFlight,
    http: std::sync::Arc<super::Http>,
    store: Store,
    jobs: usize,
    progress: Progress,
}

impl DebianInputs {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        mirror: Mirror,
        suite: Suite,
        lock: Lockfile,
        locked: bool,
        relock: bool,
        http: std::sync::Arc<super::Http>,
        store: Store,
        jobs: usize,
        progress: Progress,
    ) -> Self {
        DebianInputs {
            mirror,
            suite,
            lock: Mutex::new(lock),
            locked,
            relock,
            indexes: Indexes::new(),
            in_flight: InFlight::new(),
            http,
            store,
            jobs,
            progress,
        }
    }

    /// Whether `suite`'s index for `arch` has `name` at exactly `version`.
    pub fn has_version(&self, suite: Suite, arch: Arch, name: &str, version: &str) -> Result<bool> {
        let index = self.index(suite, arch)?;
        Ok(index.versions(name).iter().any(|e| e.version == version))
    }

    /// Resolves `roots` (`name` or `name=version`) in `suite`'s index for `arch`, fetches
    /// (verified, cached) and unpacks them into `tree`; returns the packages. Outside
    /// any lock: `native_python` uses it for the build machine's build of a foreign
    /// image's interpreter, pinned to the image's own package versions.
    pub fn unpack_into(
        &self,
        suite: Suite,
        arch: Arch,
        roots: &[String],
        tree: &mut Tree,
    ) -> Result<Vec<LockedPackage>> {
        let index = self.index(suite, arch)?;
        let packages = resolve(&index, roots, &[])?.packages;
        let progress = &self.progress;
        let fetcher = Fetcher {
            mirror: &self.mirror,
            store: &self.store,
            http: self.http.client()?,
            in_flight: &self.in_flight,
            jobs: self.jobs.max(4),
        };
        fetcher
            .fetch(&packages, &|msg: &str| progress.status(msg.to_owned()))
            .context("fetching .deb files")?;
        Unpacker::for_arch(arch).unpack_all(
            &self.store,
            &packages,
            tree,
            self.jobs,
            &|p: &LockedPackage| progress.status(format!("unpacking {} {}", p.name, p.version)),
        )?;
        Ok(packages)
    }

    /// The index of one release for one architecture: the release's suites and the
    /// repositories that belong to it ([`repository_release`]).
    fn index(&self, suite: Suite, arch: Arch) -> Result<Arc<Index>> {
        self.progress.status(format!(
            "debian: fetching and verifying the {suite} {arch} package index (InRelease, Packages)"
        ));
        let mut mirror = self.mirror.clone();
        mirror
            .repositories
            .retain(|r| repository_release(&r.suite).is_none_or(|s| s == suite));
        self.indexes
            .get(&mirror, suite, arch, &self.store, self.http.client()?)
            .map_err(|e| {
                // the index error names a URL; say which repository of imgbuild.toml it
                // is (and the key that was to vouch for it)
                let msg = e.to_string();
                match mirror.repositories.iter().find(|r| {
                    msg.contains(&format!(
                        "{}/dists/{}/",
                        r.url.trim_end_matches('/'),
                        r.suite
                    ))
                }) {
                    Some(r) => anyhow!(
                        "repository `{}` of imgbuild.toml (key {}): {msg}",
                        r.name,
                        r.key.display()
                    ),
                    None => anyhow!(e),
                }
            })
    }

    /// The release of a layer: its own `suite`, else the project's.
    pub fn suite_of(&self, spec: &DebianSpec) -> Suite {
        spec.suite.unwrap_or(self.suite)
    }

    /// The packages of a layer for one architecture, with the Release dates of the
    /// index they were resolved from (empty for a lock written before dates were
    /// recorded): from the lock when it matches (same request, release and
    /// architecture), else resolved (and the lock updated). Each architecture has its
    /// own lock entry: arm64's packages come from the arm64 index.
    pub fn packages_for(
        &self,
        recipe: &Recipe,
        layer: usize,
        spec: &DebianSpec,
        arch: Arch,
    ) -> Result<(Vec<LockedPackage>, BTreeMap<String, String>)> {
        let request = debian_request(&spec.packages, &spec.exclude);
        let suite = self.suite_of(spec);
        let key = (recipe.name.clone(), layer + 1, arch);
        let mismatch = match self.lock.lock().expect("lock").debian.get(&key) {
            _ if self.relock => None,
            None => Some(format!("is not in {}", crate::lockfile::FILE)),
            Some(l) if l.request != request => Some(format!(
                "no longer matches {} (packages or exclude changed)",
                crate::lockfile::FILE
            )),
            Some(l) if l.suite != suite => Some(format!(
                "was locked for {} {}, the recipe asks for {suite} {arch}",
                l.suite, l.arch
            )),
            Some(l) => return Ok((l.packages.clone(), l.index_dates.clone())),
        };
        if self.locked {
            bail!(
                "{}: layer {}{} {}; run `imgbuild lock` and commit the lockfile, or build without --locked",
                recipe.file.display(),
                layer + 1,
                // amd64, the one architecture before platforms, keeps its message
                if arch == Arch::default() {
                    String::new()
                } else {
                    format!(" ({arch})")
                },
                mismatch.unwrap_or_default()
            );
        }
        let index = self.index(suite, arch)?;
        let res = resolve(&index, &spec.packages, &spec.exclude).with_context(|| {
            format!(
                "{}:{}: resolving {} ({suite}, {arch})",
                recipe.file.display(),
                spec.pos.line,
                spec.packages.join(" ")
            )
        })?;
        if !res.excluded_unused.is_empty() {
            self.progress.warn(format!(
                "{}: excluded package(s) not in the closure (typo?): {}",
                recipe.file.display(),
                res.excluded_unused.join(", ")
            ));
        }
        self.progress.line(format!(
            "[{}] layer {}: resolved {} package(s) for {}{}{}",
            recipe.name,
            layer + 1,
            res.packages.len(),
            spec.packages.join(" "),
            // amd64, the one architecture before platforms, keeps its line
            if arch == Arch::default() {
                String::new()
            } else {
                format!(" ({arch})")
            },
            if res.excluded_dropped.is_empty() {
                String::new()
            } else {
                format!(" (dropped by exclude: {})", res.excluded_dropped.join(" "))
            }
        ));
        let dates = index.dates();
        self.lock.lock().expect("lock").debian.insert(
            key.clone(),
            DebianLock {
                recipe: key.0,
                layer: key.1,
                request,
                suite,
                arch,
                index_dates: dates.clone(),
                packages: res.packages.clone(),
            },
        );
        Ok((res.packages, dates))
    }

    /// Drops lock entries of recipes/layers/architectures that are no longer built.
    pub fn prune_lock(&self, live: &BTreeMap<(String, usize, Arch), ()>) {
        self.lock
            .lock()
            .expect("lock")
            .debian
            .retain(|k, _| live.contains_key(k));
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDebian {
    /// The release of this layer (default: the project's `[debian] suite`).
    pub suite: Option<toml::Spanned<String>>,
    pub packages: Vec<String>,
    #[serde(default)]
    pub exclude: Vec<String>,
    #[serde(default)]
    pub remove_paths: Vec<String>,
    /// The base fix-up (accounts, nsswitch, /tmp, /run, merged-/usr); on by default.
    pub base: Option<bool>,
    /// Byte-compile the shipped CPython standard library with the layer's own
    /// interpreter; by default when the layer ships both.
    pub bytecode: Option<bool>,
}

crate::single_key_table!(RawDebianTable, "debian", RawDebian);

#[derive(Clone, Debug)]
pub struct DebianSpec {
    /// The layer's own release (`None`: the project's).
    pub suite: Option<Suite>,
    pub packages: Vec<String>,
    pub exclude: Vec<String>,
    pub remove_paths: Vec<String>,
    pub base: bool,
    /// Byte-compile the shipped standard library (`None`: when it can be).
    pub bytecode: Option<bool>,
    pub pos: Pos,
}

#[derive(Debug)]
pub struct DebianSource {
    pub spec: DebianSpec,
}

impl SourceKind for DebianSource {
    type Raw = RawDebianTable;

    fn parse(
        cx: &RecipeCx,
        raw: &RawDebianTable,
        _layer: &Pos,
    ) -> Result<Option<Self>, RecipeError> {
        let Some(d) = &raw.0 else {
            return Ok(None);
        };
        let rd = d.get_ref();
        if rd.packages.is_empty() {
            return Err(cx.err(d, "`debian.packages` is empty: name at least one package"));
        }
        let suite = match &rd.suite {
            Some(s) => Some(
                Suite::parse(s.get_ref()).map_err(|e| cx.err(s, format!("`debian.suite`: {e}")))?,
            ),
            None => None,
        };
        Ok(Some(DebianSource {
            spec: DebianSpec {
                suite,
                packages: rd.packages.clone(),
                exclude: rd.exclude.clone(),
                remove_paths: rd.remove_paths.clone(),
                base: rd.base.unwrap_or(true),
                bytecode: rd.bytecode,
                pos: cx.pos(d),
            },
        }))
    }
}

impl LayerSource for DebianSource {
    fn kind(&self) -> &'static str {
        "debian"
    }

    fn describe(&self) -> Option<String> {
        Some(format!("debian: {}", self.spec.packages.join(" ")))
    }

    fn lock(&self, cx: &LockCx) -> Result<()> {
        cx.session
            .debian
            .packages_for(cx.recipe, cx.index, &self.spec, cx.platform.arch)?;
        Ok(())
    }

    fn plan<'s>(&'s self, cx: &mut LayerCx<'_, 's>) -> Result<Box<dyn SourcePlan + 's>> {
        let spec = &self.spec;
        let inputs = &cx.session.debian;
        let arch = cx.arch();
        let (packages, index_dates) = inputs.packages_for(cx.recipe, cx.index, spec, arch)?;
        let suite = inputs.suite_of(spec);
        let stdlib_bytecode =
            super::stdlib_pyc::wanted(spec.bytecode, packages.iter().map(|p| &p.name))
                .map_err(|e| anyhow!("{}: {e}", cx.at(&spec.pos)))?;
        // Packages write anywhere: the whole lower view matters.
        cx.depends_on_whole_lower_view();
        if spec.base {
            cx.write_accounts = true;
        }
        // first, so that a change of release reads `debian release bookworm -> trixie`
        // before the package versions it brings
        cx.input(Input::shown("debian release", format!("{suite} {arch}")));
        for p in &packages {
            cx.input(Input::versioned(
                p.name.clone(),
                p.version.clone(),
                format!("{} {}", p.architecture, p.sha256),
            ));
        }
        // v2: notes (sh, overwrites) and inputs (spools) of the layer record changed
        cx.input(Input::shown(
            "debian options",
            serde_json::json!({
                "format": "debian-v2",
                "remove_paths": spec.remove_paths,
                "base": spec.base,
                "stdlib_bytecode": (!stdlib_bytecode.is_empty()).then(|| stdlib_bytecode
                    .iter()
                    .map(|v| format!("image-python{v}"))
                    .collect::<Vec<_>>()
                    .join(" ")),
            })
            .to_string(),
        ));
        Ok(Box::new(DebianPlan {
            inputs,
            spec,
            packages,
            index_dates,
            suite,
            arch,
            label: cx.label(),
            stdlib_bytecode,
        }))
    }
}

struct DebianPlan<'a> {
    inputs: &'a DebianInputs,
    spec: &'a DebianSpec,
    packages: Vec<LockedPackage>,
    /// Release dates of the index the packages come from (suite -> RFC 3339).
    index_dates: BTreeMap<String, String>,
    suite: Suite,
    arch: Arch,
    label: String,
    /// The CPython versions (`3.13`) whose standard library the layer's own
    /// interpreter byte-compiles.
    stdlib_bytecode: Vec<String>,
}

impl SourcePlan for DebianPlan<'_> {
    fn build(self: Box<Self>, tree: &mut Tree) -> Result<Contribution> {
        let inputs = self.inputs;
        let progress = inputs.progress.clone();
        let label = self.label.clone();
        let fetcher = Fetcher {
            mirror: &inputs.mirror,
            store: &inputs.store,
            http: inputs.http.client()?,
            in_flight: &inputs.in_flight,
            jobs: inputs.jobs.max(4),
        };
        fetcher
            .fetch(&self.packages, &|msg: &str| {
                progress.status(format!("{label}: {msg}"))
            })
            .map_err(|e| e.with_snapshot(Mirror::snapshot_for(&self.index_dates)))
            .context(
                "fetching .deb files (set the mirror in imgbuild.toml, [debian] mirror = ...)",
            )?;
        let reports = Unpacker::for_arch(self.arch).unpack_all(
            &inputs.store,
            &self.packages,
            tree,
            inputs.jobs,
            &|p: &LockedPackage| {
                progress.status(format!("{label}: unpacking {} {}", p.name, p.version))
            },
        )?;
        let mut blobs: Vec<Digest> = self.packages.iter().map(|p| p.sha256.clone()).collect();
        // the spools the layer's files point into: kept by gc, so a rebuild does not
        // decompress again
        blobs.extend(reports.iter().filter_map(|r| r.spool.clone()));
        // the index, when this command read it: kept by gc for the next `imgbuild lock`
        for index in inputs.indexes.fetched() {
            blobs.extend(index.suites.iter().map(|s| s.packages_sha256.clone()));
        }
        if self.spec.base {
            imgbuild_debian::system::base_fixup_for(tree, self.suite, self.arch)?;
        }
        imgbuild_debian::remove_paths(tree, &self.spec.remove_paths)?;
        let mut notes = imgbuild_debian::deb::notes(&reports, tree);
        for version in &self.stdlib_bytecode {
            progress.status(format!(
                "{label}: byte-compiling the Python {version} standard library"
            ));
            notes.extend(super::stdlib_pyc::compile(
                inputs,
                &inputs.store,
                tree,
                inputs.jobs,
                self.arch,
                version,
            )?);
        }
        let contents = crate::supply::contents::LayerContents {
            debian: self
                .packages
                .iter()
                .map(|p| crate::supply::contents::DebianPackage {
                    name: p.name.clone(),
                    version: p.version.clone(),
                    architecture: p.architecture.clone(),
                    source: crate::supply::contents::source_package(&p.filename, &p.name),
                    sha256: p.sha256.clone(),
                    filename: p.filename.clone(),
                    repository: p.repository.clone(),
                    archive: p.base.as_str().to_owned(),
                    release: self.suite.version().to_owned(),
                    licenses: vec![],
                })
                .collect(),
            ..Default::default()
        };
        Ok(Contribution {
            blobs,
            notes,
            contents,
        })
    }
}

/// The Debian release a repository's `suite` belongs to: its first `-`/`/`-separated
/// word when that is a release imgbuild knows (`trixie-pgdg`, `bookworm/updates`),
/// else `None` (`stable`, `jammy`, `any`: read for every release).
pub fn repository_release(repository_suite: &str) -> Option<Suite> {
    let first = repository_suite.split(['-', '/']).next().unwrap_or("");
    Suite::parse(first).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_repository_belongs_to_the_release_its_suite_names() {
        assert_eq!(repository_release("trixie-pgdg"), Some(Suite::Trixie));
        assert_eq!(repository_release("bookworm"), Some(Suite::Bookworm));
        assert_eq!(
            repository_release("bookworm/updates"),
            Some(Suite::Bookworm)
        );
        assert_eq!(repository_release("stable"), None);
        assert_eq!(repository_release("trixiepgdg"), None);
        assert_eq!(repository_release("jammy-pgdg"), None);
    }
}

//! The `debian` layer source: packages resolved (or taken from `imgbuild.lock`),
//! fetched and verified by `imgbuild-debian`, unpacked into the layer, then the
//! base fix-up and `remove_paths`.
//!
//! The fingerprint is the locked packages' sha256s plus the options, so a build with
//! a complete lock and a warm cache reads no index, downloads nothing and
//! decompresses nothing.

use std::collections::BTreeMap;
use std::sync::{Mutex, OnceLock};

use anyhow::{Context, Result, anyhow, bail};
use imgbuild_debian::{Index, LockedPackage, Mirror, Unpacker, fetch_debs, resolve};
use imgbuild_layer::Tree;
use imgbuild_store::{Digest, Store};

use super::ExtraSource;
use crate::lockfile::{DebianLock, Lockfile, debian_request};
use crate::progress::Progress;
use crate::recipe::{DebianSpec, Recipe};

/// What every Debian layer of one command shares.
pub struct DebianInputs {
    pub mirror: Mirror,
    pub lock: Mutex<Lockfile>,
    /// `--locked`: a recipe that no longer matches the lock is an error.
    pub locked: bool,
    /// `imgbuild lock`: resolve everything afresh.
    pub relock: bool,
    index: OnceLock<Result<Index, String>>,
    http: std::sync::Arc<super::Http>,
    store: Store,
    jobs: usize,
    progress: Progress,
}

impl DebianInputs {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        mirror: Mirror,
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
            lock: Mutex::new(lock),
            locked,
            relock,
            index: OnceLock::new(),
            http,
            store,
            jobs,
            progress,
        }
    }

    fn index(&self) -> Result<&Index> {
        self.index
            .get_or_init(|| {
                self.progress.status(
                    "debian: fetching and verifying the package index (InRelease, Packages)",
                );
                Index::fetch(
                    &self.mirror,
                    &self.store,
                    self.http.client().map_err(|e| format!("{e:#}"))?,
                )
                .map_err(|e| format!("{e}"))
            })
            .as_ref()
            .map_err(|e| anyhow!("{e}"))
    }

    /// The packages of a layer: from the lock when it matches, else resolved (and
    /// the lock updated).
    pub fn packages_for(
        &self,
        recipe: &Recipe,
        layer: usize,
        spec: &DebianSpec,
    ) -> Result<Vec<LockedPackage>> {
        let request = debian_request(&spec.packages, &spec.exclude);
        let key = (recipe.name.clone(), layer + 1);
        if !self.relock
            && let Some(l) = self.lock.lock().expect("lock").debian.get(&key)
            && l.request == request
        {
            return Ok(l.packages.clone());
        }
        if self.locked {
            bail!(
                "{}: layer {} is not in {} or no longer matches it (packages or exclude changed); run `imgbuild lock` and commit the lockfile, or build without --locked",
                recipe.file.display(),
                layer + 1,
                crate::lockfile::FILE
            );
        }
        let index = self.index()?;
        let res = resolve(index, &spec.packages, &spec.exclude).with_context(|| {
            format!(
                "{}:{}: resolving {}",
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
            "[{}] layer {}: resolved {} package(s) for {}{}",
            recipe.name,
            layer + 1,
            res.packages.len(),
            spec.packages.join(" "),
            if res.excluded_dropped.is_empty() {
                String::new()
            } else {
                format!(" (dropped by exclude: {})", res.excluded_dropped.join(" "))
            }
        ));
        self.lock.lock().expect("lock").debian.insert(
            key.clone(),
            DebianLock {
                recipe: key.0,
                layer: key.1,
                request,
                packages: res.packages.clone(),
            },
        );
        Ok(res.packages)
    }

    /// Drops lock entries of recipes/layers that no longer exist.
    pub fn prune_lock(&self, live: &BTreeMap<(String, usize), ()>) {
        self.lock
            .lock()
            .expect("lock")
            .debian
            .retain(|k, _| live.contains_key(k));
    }
}

pub struct DebianSource<'a> {
    inputs: &'a DebianInputs,
    spec: DebianSpec,
    packages: Vec<LockedPackage>,
    label: String,
    /// Set when the layer's own python3.11 byte-compiles its standard library
    /// (`None` keeps the fingerprint of layers without Python as it was).
    stdlib_bytecode: Option<&'static str>,
}

impl<'a> DebianSource<'a> {
    pub fn new(
        inputs: &'a DebianInputs,
        recipe: &Recipe,
        layer: usize,
        spec: &DebianSpec,
    ) -> Result<Self> {
        let packages = inputs.packages_for(recipe, layer, spec)?;
        let stdlib_bytecode =
            super::stdlib_pyc::wanted(spec.bytecode, packages.iter().map(|p| &p.name))
                .map_err(|e| {
                    anyhow!(
                        "{}:{}:{}: {e}",
                        recipe.file.display(),
                        spec.pos.line,
                        spec.pos.column
                    )
                })?
                .then_some("image-python3.11");
        Ok(DebianSource {
            inputs,
            spec: spec.clone(),
            packages,
            label: format!("[{}] layer {}", recipe.name, layer + 1),
            stdlib_bytecode,
        })
    }
}

impl ExtraSource for DebianSource<'_> {
    fn fingerprint(&self) -> String {
        let pkgs: Vec<(&str, &str, String)> = self
            .packages
            .iter()
            .map(|p| (p.name.as_str(), p.version.as_str(), p.sha256.to_string()))
            .collect();
        serde_json::json!([
            "debian-v1",
            pkgs,
            self.spec.remove_paths,
            self.spec.base,
            self.stdlib_bytecode
        ])
        .to_string()
    }

    fn build(&mut self, tree: &mut Tree) -> Result<(Vec<Digest>, Vec<String>)> {
        let inputs = self.inputs;
        let progress = inputs.progress.clone();
        let label = self.label.clone();
        fetch_debs(
            &inputs.mirror,
            &self.packages,
            &inputs.store,
            inputs.http.client()?,
            inputs.jobs.max(4),
            &|msg: &str| progress.status(format!("{label}: {msg}")),
        )
        .context("fetching .deb files (set the mirror in imgbuild.toml, [debian] mirror = ...)")?;
        let mut unpacker = Unpacker::new();
        let mut notes = vec![];
        let mut inputs_used = vec![];
        for p in &self.packages {
            progress.status(format!("{label}: unpacking {} {}", p.name, p.version));
            let report = unpacker.unpack(&inputs.store, p, tree)?;
            inputs_used.push(p.sha256.clone());
            for s in &report.maintainer_scripts {
                let hints = if s.hints.is_empty() {
                    String::new()
                } else {
                    format!(": {}", s.hints.join("; "))
                };
                notes.push(format!("not run: {} {}{hints}", p.name, s.script));
            }
        }
        if self.spec.base {
            imgbuild_debian::system::base_fixup(tree)?;
        }
        imgbuild_debian::remove_paths(tree, &self.spec.remove_paths)?;
        if self.stdlib_bytecode.is_some() {
            progress.status(format!(
                "{label}: byte-compiling the Python standard library"
            ));
            notes.extend(super::stdlib_pyc::compile(
                &inputs.store,
                tree,
                inputs.jobs,
            )?);
        }
        Ok((inputs_used, notes))
    }
}

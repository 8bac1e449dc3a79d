//! The plan of a build: for every image, in build order, each layer's kinds,
//! fingerprint and cache state (`cached`, or `build` with the reason), and the
//! changes the build would make to `imgbuild.lock`.
//!
//! Made by [`crate::ops::build::plan`] from the recipes, the lock and the store
//! (plus the Debian index or a registry only to resolve what the lock does not pin),
//! without building anything: no tar, no compression, no blob download. `imgbuild
//! plan` prints it, `--expect-cached` fails on it, `imgbuild lock` writes its lock.
//! A layer above one that must be built has no fingerprint yet (its inputs include
//! the bytes below it): it is `build` with the reason `lower layer N changed`.

use imgbuild_store::Digest;
use serde::Serialize;

use crate::lockfile::Lockfile;

#[derive(Debug, Serialize)]
pub struct Plan {
    pub images: Vec<ImagePlan>,
    /// What the build would change in `imgbuild.lock`, one line per change.
    pub lock_changes: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct ImagePlan {
    pub name: String,
    /// The recipe file, relative to the project.
    pub recipe: String,
    /// The platform, for an image built for several (`[build] platforms`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub platform: Option<String>,
    /// The recipe's own layers (a base recipe's layers are in its own plan).
    pub layers: Vec<LayerPlan>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LayerState {
    Cached,
    Build,
}

#[derive(Debug, Serialize)]
pub struct LayerPlan {
    /// 1-based, in the recipe.
    pub layer: usize,
    /// The kinds of its sources, in build order.
    pub kinds: Vec<&'static str>,
    pub description: String,
    /// `None` while a layer below must be built first.
    pub fingerprint: Option<Digest>,
    /// What the fingerprint covers, by name (with versions and settings shown);
    /// empty while a layer below must be built first.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub inputs: Vec<String>,
    pub state: LayerState,
    /// The cached layer's blob.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub digest: Option<Digest>,
    /// Why it is built (empty when cached).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub reason: Vec<String>,
}

impl Plan {
    /// `recipes/x.toml layer N (description): reason` for every layer to build.
    pub fn pending(&self) -> Vec<String> {
        self.images
            .iter()
            .flat_map(|i| {
                i.layers
                    .iter()
                    .filter(|l| l.state == LayerState::Build)
                    .map(move |l| {
                        format!(
                            "{}{} layer {} ({}): {}",
                            i.recipe,
                            i.platform
                                .as_ref()
                                .map(|p| format!(" [{p}]"))
                                .unwrap_or_default(),
                            l.layer,
                            l.description,
                            l.reason.join("; ")
                        )
                    })
            })
            .collect()
    }

    /// The plan as text, one line per layer.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for i in &self.images {
            match &i.platform {
                Some(p) => out.push_str(&format!("{} {p} ({})\n", i.name, i.recipe)),
                None => out.push_str(&format!("{} ({})\n", i.name, i.recipe)),
            }
            for l in &i.layers {
                let state = match l.state {
                    LayerState::Cached => "cached".to_owned(),
                    LayerState::Build => format!("build: {}", l.reason.join("; ")),
                };
                out.push_str(&format!(
                    "  layer {} {:<16} {}\n      {state}\n",
                    l.layer,
                    format!("[{}]", l.kinds.join("+")),
                    l.description,
                ));
            }
        }
        for c in &self.lock_changes {
            out.push_str(&format!("lock: {c}\n"));
        }
        let pending = self.pending().len();
        let total: usize = self.images.iter().map(|i| i.layers.len()).sum();
        out.push_str(&format!(
            "{} image(s), {total} layer(s): {pending} to build, {} cached\n",
            self.images.len(),
            total - pending
        ));
        out
    }
}

/// `recipe NAME layer N`, with the architecture when it is not amd64 (the one
/// architecture of locks written before platforms could be chosen).
fn layer_at(key: &(String, usize, imgbuild_debian::Arch)) -> String {
    if key.2 == imgbuild_debian::Arch::default() {
        format!("recipe {} layer {}", key.0, key.1)
    } else {
        format!("recipe {} layer {} ({})", key.0, key.1, key.2)
    }
}

/// The differences between two locks, one line each: a package's version, a
/// package added or removed, a base image's digest, a layer's entry added or dropped.
pub fn lock_changes(before: &Lockfile, after: &Lockfile) -> Vec<String> {
    let mut out = vec![];
    for (key, a) in &after.debian {
        let at = layer_at(key);
        match before.debian.get(key) {
            None => out.push(format!("{at}: {} package(s) pinned", a.packages.len())),
            Some(b) if b.packages == a.packages => {
                if b != a {
                    out.push(format!("{at}: request or index dates updated"));
                }
            }
            Some(b) => {
                let old: std::collections::BTreeMap<&str, &str> = b
                    .packages
                    .iter()
                    .map(|p| (p.name.as_str(), p.version.as_str()))
                    .collect();
                let new: std::collections::BTreeMap<&str, &str> = a
                    .packages
                    .iter()
                    .map(|p| (p.name.as_str(), p.version.as_str()))
                    .collect();
                for (n, v) in &new {
                    match old.get(n) {
                        None => out.push(format!("{at}: {n} {v} added")),
                        Some(o) if o != v => out.push(format!("{at}: {n} {o} -> {v}")),
                        _ => {}
                    }
                }
                for (n, v) in &old {
                    if !new.contains_key(n) {
                        out.push(format!("{at}: {n} {v} removed"));
                    }
                }
            }
        }
    }
    for key in before.debian.keys() {
        if !after.debian.contains_key(key) {
            out.push(format!(
                "{}: entry dropped (no such Debian layer)",
                layer_at(key)
            ));
        }
    }
    for (r, d) in &after.bases {
        match before.bases.get(r) {
            Some(o) if o == d => {}
            Some(o) => out.push(format!("base {r}: {o} -> {d}")),
            None => out.push(format!("base {r}: pinned to {d}")),
        }
    }
    for r in before.bases.keys() {
        if !after.bases.contains_key(r) {
            out.push(format!("base {r}: pin dropped"));
        }
    }
    out
}

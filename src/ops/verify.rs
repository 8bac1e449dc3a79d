//! `imgbuild verify NAME|REF@sha256:...`: does this checkout reproduce the image?
//!
//! The image is rebuilt from the current recipes and lock (`--locked`: a recipe
//! that no longer matches the lock is an error, not a new resolution) into a scratch
//! output directory, with the project's store (its cache entries are trusted only
//! after their blobs verify, as in any build) or, with `--fresh`, a new empty store
//! that is removed afterwards. A pushed image (`REF@sha256:...`, or a tag, resolved)
//! is pulled first, every blob verified against its digest.
//!
//! Then the two are compared: manifest digest, config (the fields that differ),
//! layer by layer; for a layer whose digest differs, both tars are streamed and each
//! entry compared (added, removed, type, content, mode, owner, link target, mtime),
//! and, where both layers were built here, the fingerprint inputs that differ say
//! why (a package version, an input file). Only the metadata and a content hash of
//! each entry are held, never a layer. Exit 0 only when the digests match.

use std::collections::BTreeMap;
use std::io::Read;

use anyhow::{Context, Result, bail};
use imgbuild_registry::{Client, Credentials, Reference};
use imgbuild_store::{Descriptor, Digest, Store};
use serde::Serialize;
use sha2::Digest as _;

use crate::cache::{ImageRecord, LayerRecord};
use crate::project::Project;
use crate::settings::Settings;

pub struct VerifyOptions {
    pub image: String,
    pub recipe: Option<String>,
    pub fresh: bool,
    pub insecure: Vec<String>,
}

/// One entry that differs between the two tars of a layer.
#[derive(Debug, Serialize)]
pub struct FileDiff {
    pub path: String,
    /// `added`, `removed`, `type`, `content`, `mode`, `owner`, `link target`, `mtime`.
    pub change: String,
    /// `expected -> rebuilt`, when there is something to show.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct LayerDiff {
    /// 1-based.
    pub layer: usize,
    pub expected: Option<Digest>,
    pub rebuilt: Option<Digest>,
    pub description: Option<String>,
    pub files: Vec<FileDiff>,
    /// Inputs of the two builds that differ (only when both were built here).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub why: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct VerifyReport {
    pub image: String,
    pub recipe: String,
    pub expected: Digest,
    pub rebuilt: Digest,
    pub matches: bool,
    /// Top-level config fields that differ (`config.Env`, `created`, `rootfs`...).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub config: Vec<String>,
    pub layers: Vec<LayerDiff>,
}

impl VerifyReport {
    pub fn render(&self) -> String {
        let mut s = String::new();
        if self.matches {
            s.push_str(&format!(
                "{}: reproduced ({}) from recipe `{}`\n",
                self.image, self.rebuilt, self.recipe
            ));
            return s;
        }
        s.push_str(&format!(
            "{}: DIFFERS: expected {}, rebuilt {} from recipe `{}`\n",
            self.image, self.expected, self.rebuilt, self.recipe
        ));
        if !self.config.is_empty() {
            s.push_str(&format!("  config differs: {}\n", self.config.join(", ")));
        }
        for l in &self.layers {
            s.push_str(&format!(
                "  layer {} ({}): expected {}, rebuilt {}\n",
                l.layer,
                l.description.as_deref().unwrap_or("?"),
                l.expected
                    .as_ref()
                    .map(|d| d.to_string())
                    .unwrap_or("none".into()),
                l.rebuilt
                    .as_ref()
                    .map(|d| d.to_string())
                    .unwrap_or("none".into()),
            ));
            for f in &l.files {
                s.push_str(&format!(
                    "    {} {}{}\n",
                    f.change,
                    f.path,
                    f.detail
                        .as_ref()
                        .map(|d| format!(" ({d})"))
                        .unwrap_or_default()
                ));
            }
            for w in &l.why {
                s.push_str(&format!("    because: {w}\n"));
            }
        }
        s
    }
}

/// The image to check: manifest bytes in `store`, and where its layers' records are.
struct Given {
    digest: Digest,
    manifest: Vec<u8>,
    /// Layer fingerprints, when it is a build of this project.
    fingerprints: Vec<Option<Digest>>,
}

pub fn verify(project: &Project, opts: &VerifyOptions) -> Result<VerifyReport> {
    // the scratch store (with --fresh) lives as long as the command
    let fresh_dir = if opts.fresh {
        Some(tempfile::tempdir().context("creating a scratch store")?)
    } else {
        None
    };
    let out_dir = tempfile::tempdir().context("creating a scratch output directory")?;
    let store_path = match &fresh_dir {
        Some(d) => d.path().to_path_buf(),
        None => project.store.root().to_path_buf(),
    };
    let scratch = Project::open(
        &project.root,
        Some(store_path),
        Some(out_dir.path().to_path_buf()),
        Some(project.jobs),
        project.progress.clone(),
    )?;

    // What is to be checked.
    let is_ref = opts.image.contains('/');
    let (recipe, given) = if is_ref {
        let r: Reference = opts
            .image
            .parse()
            .with_context(|| format!("`{}` is not an image reference", opts.image))?;
        let settings = Settings::load(&project.root)?;
        let client = Client::new(
            settings.registry_options(&opts.insecure, project.jobs.clamp(2, 8)),
            Credentials::from_process_env(),
        )?;
        project.progress.status(format!("pulling {}", opts.image));
        let pulled = client
            .pull(&scratch.store, &r)
            .with_context(|| format!("pulling `{}`", opts.image))?;
        project.progress.clear();
        let recipe = opts.recipe.clone().unwrap_or_else(|| {
            r.repository
                .rsplit('/')
                .next()
                .unwrap_or(&r.repository)
                .to_owned()
        });
        let n = pulled.layers.len();
        (
            recipe,
            Given {
                digest: Digest::of_bytes(&pulled.manifest),
                manifest: pulled.manifest,
                fingerprints: vec![None; n],
            },
        )
    } else {
        let Some(rec) = ImageRecord::load(&project.store, &project.key, &opts.image)? else {
            bail!(
                "`{}` has not been built in this project; give a pushed image as REPO@sha256:...",
                opts.image
            );
        };
        let manifest = project
            .store
            .read_bytes(&rec.manifest_digest)
            .context("the built manifest is not in the store; build it again")?;
        if opts.fresh {
            // the scratch store needs the image's blobs to compare them
            for d in std::iter::once(&rec.config_digest)
                .chain(rec.layers.iter().map(|l| &l.descriptor.digest))
            {
                copy_blob_between(&project.store, &scratch.store, d)?;
            }
            scratch.store.put_bytes(&manifest)?;
        }
        (
            opts.recipe.clone().unwrap_or(rec.name.clone()),
            Given {
                digest: rec.manifest_digest.clone(),
                manifest,
                fingerprints: rec.layers.iter().map(|l| l.fingerprint.clone()).collect(),
            },
        )
    };

    // Rebuild. In the project's store the build replaces the records of the images'
    // last builds (what `push`, `inspect` and `verify NAME` read): they are put back.
    let saved = if opts.fresh {
        vec![]
    } else {
        last_build_records(project, &recipe)?
    };
    let rebuilt_records = crate::ops::build::build(
        &scratch,
        &crate::ops::build::BuildOptions {
            names: Some(vec![recipe.clone()]),
            locked: true,
            expect_cached: false,
            check_reproducible: false,
            sbom_format: crate::supply::SbomFormat::Spdx,
            // every platform of the project; the build machine's is compared (a
            // pulled index resolves to it too)
            platforms: vec![],
        },
    )
    .with_context(|| format!("rebuilding `{recipe}` from this checkout"));
    for (bucket, key, bytes) in &saved {
        match bytes {
            Some(b) => project.store.write_record(*bucket, key, b)?,
            None => project.store.remove_entry(*bucket, key)?,
        }
    }
    let rebuilt = rebuilt_records?
        .into_iter()
        .find(|r| r.name == recipe)
        .context("internal error: the recipe was not rebuilt")?;

    let mut report = VerifyReport {
        image: opts.image.clone(),
        recipe,
        expected: given.digest.clone(),
        rebuilt: rebuilt.manifest_digest.clone(),
        matches: given.digest == rebuilt.manifest_digest,
        config: vec![],
        layers: vec![],
    };
    if report.matches {
        return Ok(report);
    }
    let store = &scratch.store;
    let m: serde_json::Value =
        serde_json::from_slice(&given.manifest).context("the image's manifest is not JSON")?;
    let given_config: Descriptor = serde_json::from_value(m["config"].clone())
        .context("the image's manifest has no config descriptor")?;
    let given_layers: Vec<Descriptor> = serde_json::from_value(m["layers"].clone())
        .context("the image's manifest has no layers")?;
    if given_config.digest != rebuilt.config_digest {
        let a: serde_json::Value =
            serde_json::from_slice(&store.read_bytes(&given_config.digest)?)?;
        let b: serde_json::Value =
            serde_json::from_slice(&store.read_bytes(&rebuilt.config_digest)?)?;
        report.config = json_diff("", &a, &b);
    }
    let n = given_layers.len().max(rebuilt.layers.len());
    for i in 0..n {
        let g = given_layers.get(i);
        let r = rebuilt.layers.get(i);
        if let (Some(g), Some(r)) = (g, r)
            && g.digest == r.descriptor.digest
        {
            continue;
        }
        let mut diff = LayerDiff {
            layer: i + 1,
            expected: g.map(|d| d.digest.clone()),
            rebuilt: r.map(|l| l.descriptor.digest.clone()),
            description: r.map(|l| l.description.clone()),
            files: vec![],
            why: vec![],
        };
        if let (Some(g), Some(r)) = (g, r) {
            let a = entries(store, g).with_context(|| format!("reading layer {}", i + 1))?;
            let b = entries(store, &r.descriptor)
                .with_context(|| format!("reading rebuilt layer {}", i + 1))?;
            diff.files = compare(&a, &b);
            if let (Some(Some(fg)), Some(fr)) = (given.fingerprints.get(i), &r.fingerprint)
                && fg != fr
                && let (Some(old), Some(new)) = (
                    LayerRecord::read_unverified(&project.store, fg),
                    LayerRecord::read_unverified(store, fr),
                )
            {
                diff.why =
                    crate::source::explain(Some(&old.fingerprint_inputs), &new.fingerprint_inputs);
            }
        }
        report.layers.push(diff);
    }
    Ok(report)
}

/// The store records a build of `recipe` (and what it is built from) replaces: the
/// image records and SBOM pointers of the project's last builds, as they are now.
#[allow(clippy::type_complexity)]
fn last_build_records(
    project: &Project,
    recipe: &str,
) -> Result<Vec<(imgbuild_store::Bucket, String, Option<Vec<u8>>)>> {
    use imgbuild_store::Bucket;
    let set = crate::recipe::RecipeSet::load(&project.root)?;
    let mut out = vec![];
    for r in set.closure(Some(&[recipe.to_owned()]))? {
        for (bucket, key) in [
            (Bucket::Images, ImageRecord::key(&project.key, &r.name)),
            (
                Bucket::Attestations,
                crate::supply::Attestations::key(&project.key, &r.name),
            ),
        ] {
            let bytes = project.store.read_record(bucket, &key)?;
            out.push((bucket, key, bytes));
        }
    }
    Ok(out)
}

fn copy_blob_between(from: &Store, to: &Store, d: &Digest) -> Result<()> {
    if to.has_blob(d) {
        return Ok(());
    }
    let mut r = from.open_verified(d)?;
    let mut w = to.writer()?;
    std::io::copy(&mut r, &mut w)?;
    w.commit_expecting(d, None, "copying a blob into the scratch store")?;
    Ok(())
}

/// The paths of two JSON values whose values differ (objects descended into).
fn json_diff(prefix: &str, a: &serde_json::Value, b: &serde_json::Value) -> Vec<String> {
    use serde_json::Value;
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let mut keys: Vec<&String> = x.keys().chain(y.keys()).collect();
            keys.sort();
            keys.dedup();
            keys.into_iter()
                .flat_map(|k| {
                    let p = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    json_diff(
                        &p,
                        x.get(k).unwrap_or(&Value::Null),
                        y.get(k).unwrap_or(&Value::Null),
                    )
                })
                .collect()
        }
        _ if a == b => vec![],
        _ => vec![prefix.to_owned()],
    }
}

/// What the comparison looks at of one tar entry.
#[derive(Debug, PartialEq, Eq)]
struct Entry {
    kind: char,
    mode: u32,
    owner: (u64, u64),
    mtime: u64,
    link: Option<String>,
    /// sha256 of the content (regular files).
    content: Option<String>,
    size: u64,
}

/// Every entry of a layer blob, streamed (gzip, zstd or plain tar, by media type).
fn entries(store: &Store, d: &Descriptor) -> Result<BTreeMap<String, Entry>> {
    let blob = store.open_verified(&d.digest)?;
    let reader: Box<dyn Read> = if d.media_type.ends_with("zstd") {
        Box::new(zstd::Decoder::new(blob)?)
    } else if d.media_type.ends_with("gzip") {
        Box::new(flate2::read::GzDecoder::new(blob))
    } else {
        Box::new(blob)
    };
    let mut archive = tar::Archive::new(reader);
    let mut out = BTreeMap::new();
    for e in archive.entries()? {
        let mut e = e?;
        let path = e
            .path()?
            .to_string_lossy()
            .trim_start_matches("./")
            .to_owned();
        let h = e.header();
        let kind = match h.entry_type() {
            tar::EntryType::Regular | tar::EntryType::Continuous => 'f',
            tar::EntryType::Directory => 'd',
            tar::EntryType::Symlink => 'l',
            tar::EntryType::Link => 'h',
            tar::EntryType::Char => 'c',
            tar::EntryType::Block => 'b',
            tar::EntryType::Fifo => 'p',
            _ => '?',
        };
        let mode = h.mode().unwrap_or(0) & 0o7777;
        let owner = (h.uid().unwrap_or(0), h.gid().unwrap_or(0));
        let mtime = h.mtime().unwrap_or(0);
        let size = h.size().unwrap_or(0);
        let link = e.link_name()?.map(|l| l.to_string_lossy().into_owned());
        let content = if kind == 'f' {
            let mut hasher = sha2::Sha256::new();
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                let n = e.read(&mut buf)?;
                if n == 0 {
                    break;
                }
                hasher.update(&buf[..n]);
            }
            Some(hex::encode(hasher.finalize()))
        } else {
            None
        };
        out.insert(
            path,
            Entry {
                kind,
                mode,
                owner,
                mtime,
                link,
                content,
                size,
            },
        );
    }
    Ok(out)
}

fn compare(a: &BTreeMap<String, Entry>, b: &BTreeMap<String, Entry>) -> Vec<FileDiff> {
    let mut out = vec![];
    let diff = |path: &str, change: &str, detail: Option<String>| FileDiff {
        path: format!("/{path}"),
        change: change.to_owned(),
        detail,
    };
    for (p, x) in a {
        let Some(y) = b.get(p) else {
            out.push(diff(
                p,
                "removed",
                Some("only in the expected image".into()),
            ));
            continue;
        };
        if x.kind != y.kind {
            out.push(diff(p, "type", Some(format!("{} -> {}", x.kind, y.kind))));
            continue;
        }
        if x.content != y.content {
            out.push(diff(
                p,
                "content",
                Some(format!("{} bytes -> {} bytes", x.size, y.size)),
            ));
        }
        if x.mode != y.mode {
            out.push(diff(
                p,
                "mode",
                Some(format!("{:04o} -> {:04o}", x.mode, y.mode)),
            ));
        }
        if x.owner != y.owner {
            out.push(diff(
                p,
                "owner",
                Some(format!(
                    "{}:{} -> {}:{}",
                    x.owner.0, x.owner.1, y.owner.0, y.owner.1
                )),
            ));
        }
        if x.link != y.link {
            out.push(diff(
                p,
                "link target",
                Some(format!(
                    "{} -> {}",
                    x.link.as_deref().unwrap_or("-"),
                    y.link.as_deref().unwrap_or("-")
                )),
            ));
        }
        if x.mtime != y.mtime {
            out.push(diff(
                p,
                "mtime",
                Some(format!("{} -> {}", x.mtime, y.mtime)),
            ));
        }
    }
    for p in b.keys() {
        if !a.contains_key(p) {
            out.push(diff(p, "added", Some("only in the rebuilt image".into())));
        }
    }
    out
}

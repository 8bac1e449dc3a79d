//! `imgbuild all` / `imgbuild build NAME...` / `imgbuild plan`: recipes to images in
//! the store and in `out/`, or to a [`Plan`] of what that would take.
//!
//! For each image, bases first, every layer is planned by [`crate::source::plan_layer`]
//! (its sources state their inputs, which hash into its fingerprint). A fingerprint
//! found in the cache with an intact blob is reused as is; anything else is built and
//! written by the one layer writer, and its record keeps its inputs, so that the next
//! rebuild can say why ([`crate::source::explain`]). A recipe `from` another gets that
//! image's layers byte for byte. Then the config and manifest are written as canonical
//! JSON, and the sinks write `out/NAME.tar` and `out/oci/`.
//!
//! Planning runs the same code and stops at each image's first layer that is not
//! cached: the layers above it depend on its bytes, which only building gives. It
//! writes nothing but the lock's changes in memory (reported, written by `lock`).
//!
//! Independent images build in parallel (up to `--jobs`); the layers of one image
//! build in order, because each may depend on what is below it.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Instant;

use anyhow::{Context, Result, anyhow, bail};
use imgbuild_layer::{WriteOptions, write_layer};
use imgbuild_store::Digest;

use crate::cache::{ImageRecord, LayerRecord, LayerReport};
use crate::lower::LowerView;
use crate::oci::{self, Descriptor, HistoryEntry, MEDIA_CONFIG, MEDIA_LAYER_GZIP};
use crate::plan::{ImagePlan, LayerPlan, LayerState, Plan};
use crate::progress::{human, short};
use crate::project::Project;
use crate::recipe::{ConfigSpec, From, Recipe, RecipeSet};
use crate::sink::{self, ImageOut};
use crate::source::{self, Session, walk::StatCache};
use imgbuild_debian::system::Accounts;

pub struct BuildOptions {
    /// `None`: every recipe.
    pub names: Option<Vec<String>>,
    /// Fail instead of resolving when a recipe does not match `imgbuild.lock`.
    pub locked: bool,
    /// Fail, naming each layer and why, if anything would be built.
    pub expect_cached: bool,
}

/// What an image hands to images built `from` it.
#[derive(Clone)]
struct Built {
    record: ImageRecord,
    view: LowerView,
    accounts: Option<Accounts>,
    config: ConfigSpec,
    history: Vec<HistoryEntry>,
}

/// Whether layers are built, or only planned.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Build,
    Plan,
}

/// What one image came to: built (or, planning, entirely cached), and its plan.
struct ImageOutcome {
    built: Option<Built>,
    plan: ImagePlan,
}

/// Plans the requested images (every recipe when `names` is `None`) without
/// building: `relock` resolves every Debian layer afresh, as `imgbuild lock` does.
/// Returns the plan and the lock as it would be after.
pub fn plan(
    project: &Project,
    names: Option<&[String]>,
    locked: bool,
    relock: bool,
) -> Result<(Plan, crate::lockfile::Lockfile)> {
    let set = RecipeSet::load(&project.root)?;
    let order = set.closure(names)?;
    let _lock = project.lock_shared()?;
    let stat = StatCache::load(&project.store, &project.key, project.jobs);
    let session = Session::new(project, locked, relock)?;
    let lock_before = session.debian.lock.lock().expect("lock").clone();
    if relock {
        // registry bases given by tag are resolved afresh too
        session.debian.lock.lock().expect("lock").bases.clear();
    }
    let mut done: BTreeMap<String, Option<Built>> = BTreeMap::new();
    let mut images = vec![];
    for r in &order {
        let base = match &r.from.value {
            From::Recipe(p) => match done.get(p) {
                Some(Some(b)) => Some(b),
                _ => {
                    // the base is built first: every layer of this one waits for it
                    let plan = waiting_plan(r, &format!("base image `{p}` changes"), 0);
                    // its Debian layers still resolve, for the lock
                    for i in 0..r.layers.len() {
                        source::lock_layer(&session, r, i)?;
                    }
                    done.insert(r.name.clone(), None);
                    images.push(plan);
                    continue;
                }
            },
            _ => None,
        };
        let out = build_image(project, &session, r, base, &stat, 1, Mode::Plan)?;
        done.insert(r.name.clone(), out.built);
        images.push(out.plan);
    }
    project.progress.clear();
    if names.is_none() {
        session.debian.prune_lock(&live_debian_layers(&set));
    }
    let lock_after = session.debian.lock.lock().expect("lock").clone();
    let plan = Plan {
        lock_changes: crate::plan::lock_changes(&lock_before, &lock_after),
        images,
    };
    Ok((plan, lock_after))
}

/// The kinds of a layer's sources that have something in it.
fn kinds_of(layer: &crate::recipe::LayerSpec) -> Vec<&'static str> {
    layer
        .sources
        .iter()
        .filter(|s| s.describe().is_some())
        .map(|s| s.kind())
        .collect()
}

/// A plan for an image none of whose layers can be fingerprinted yet.
fn waiting_plan(r: &Recipe, why: &str, from: usize) -> ImagePlan {
    ImagePlan {
        name: r.name.clone(),
        recipe: r.file.display().to_string(),
        layers: r.layers[from..]
            .iter()
            .enumerate()
            .map(|(i, l)| LayerPlan {
                layer: from + i + 1,
                kinds: kinds_of(l),
                description: l.describe(),
                fingerprint: None,
                inputs: vec![],
                state: LayerState::Build,
                digest: None,
                reason: vec![why.to_owned()],
            })
            .collect(),
    }
}

/// Builds the requested images; returns their records in build order.
pub fn build(project: &Project, opts: &BuildOptions) -> Result<Vec<ImageRecord>> {
    if opts.expect_cached {
        let (plan, _) = plan(project, opts.names.as_deref(), opts.locked, false)?;
        let pending = plan.pending();
        if !pending.is_empty() {
            bail!(
                "--expect-cached: {} layer(s) would be built:\n  {}",
                pending.len(),
                pending.join("\n  ")
            );
        }
    }
    let set = RecipeSet::load(&project.root)?;
    let order = set.closure(opts.names.as_deref())?;
    let _lock = project.lock_shared()?;
    // Temp files of processes that no longer run, or older than a day, were left
    // by killed builds.
    let _ = project
        .store
        .clean_tmp(std::time::Duration::from_secs(86400));
    let stat = StatCache::load(&project.store, &project.key, project.jobs);
    let session = Session::new(project, opts.locked, false)?;
    let lock_before = session.debian.lock.lock().expect("lock").clone();
    let started = Instant::now();

    // Waves: an image builds once its base has; images within a wave are independent.
    let mut done: BTreeMap<String, Built> = BTreeMap::new();
    let mut remaining: Vec<&Recipe> = order.clone();
    while !remaining.is_empty() {
        let (ready, later): (Vec<&Recipe>, Vec<&Recipe>) =
            remaining.into_iter().partition(|r| match &r.from.value {
                From::Recipe(p) => done.contains_key(p),
                _ => true,
            });
        remaining = later;
        if ready.is_empty() {
            return Err(anyhow!(
                "internal error: no buildable recipe left (dependency cycle?)"
            ));
        }
        let queue = Mutex::new(ready.iter().rev().copied().collect::<Vec<_>>());
        let results: Mutex<Vec<(String, Result<Built>)>> = Mutex::new(vec![]);
        let workers = project.jobs.min(ready.len()).max(1);
        // Images built side by side share the --jobs budget for compression: jobs
        // threads (and about 4 x jobs 1 MiB blocks in flight) in all, not jobs per image.
        let threads = (project.jobs / workers).max(1);
        std::thread::scope(|s| {
            for _ in 0..workers {
                s.spawn(|| {
                    loop {
                        let Some(r) = queue.lock().expect("queue").pop() else {
                            break;
                        };
                        let base = match &r.from.value {
                            From::Recipe(p) => done.get(p),
                            _ => None,
                        };
                        let res = build_image(project, &session, r, base, &stat, threads, Mode::Build)
                            .and_then(|o| o.built.context("internal error: image not built"));
                        results.lock().expect("results").push((r.name.clone(), res));
                    }
                });
            }
        });
        let results = results.into_inner().expect("results");
        let mut first_err = None;
        for (name, res) in results {
            match res {
                Ok(b) => {
                    done.insert(name, b);
                }
                Err(e) => {
                    first_err.get_or_insert(e.context(format!("building image `{name}`")));
                }
            }
        }
        if let Some(e) = first_err {
            project.progress.clear();
            let _ = stat.save(&project.store, &project.key, false);
            return Err(e);
        }
    }
    project.progress.clear();
    stat.save(&project.store, &project.key, opts.names.is_none())?;
    if opts.names.is_none() {
        session.debian.prune_lock(&live_debian_layers(&set));
    }
    let lock_after = session.debian.lock.lock().expect("lock").clone();
    if lock_after != lock_before {
        lock_after.save(&project.root)?;
        project
            .progress
            .line(format!("updated {}", crate::lockfile::FILE));
    }

    let records: Vec<ImageRecord> = order.iter().map(|r| done[&r.name].record.clone()).collect();
    let outs: Vec<ImageOut> = records.iter().map(image_out).collect();
    {
        let _out = sink::lock_out(&project.out)?;
        sink::remove_stale_temps(&project.out);
        sink::layout::write(&project.out.join("oci"), &project.store, &outs)?;
    }
    for rec in &records {
        rec.save(&project.store, &project.key)?;
    }
    // a layer appears in every image built from its image: count each once
    let mut state: BTreeMap<&Digest, bool> = BTreeMap::new();
    for l in records.iter().flat_map(|r| &r.layers) {
        *state.entry(&l.digest).or_insert(true) &= l.cached;
    }
    let built = state.values().filter(|c| !**c).count();
    project.progress.line(format!(
        "built {} image(s) in {:.2}s ({built} layer(s) built, {} cached) -> {}",
        records.len(),
        started.elapsed().as_secs_f64(),
        state.len() - built,
        project.out.display()
    ));
    Ok(records)
}

pub fn image_out(rec: &ImageRecord) -> ImageOut {
    let repo = rec
        .repository
        .clone()
        .unwrap_or_else(|| format!("imgbuild/{}", rec.name));
    let tags = if rec.tags.is_empty() {
        vec!["latest".to_owned()]
    } else {
        rec.tags.clone()
    };
    ImageOut {
        name: rec.name.clone(),
        reference: rec.reference.clone(),
        repo_tags: tags.iter().map(|t| format!("{repo}:{t}")).collect(),
        manifest: rec.manifest_digest.clone(),
        manifest_size: rec.manifest_size,
        config: rec.config_digest.clone(),
        layers: rec.layers.iter().map(|l| l.digest.clone()).collect(),
    }
}

/// The name engines give a loaded image: `REPOSITORY:FIRST_TAG`, where the
/// repository is the recipe's `repository` or `imgbuild/NAME`, and the tag
/// defaults to `latest`.
pub fn reference_for(r: &Recipe) -> String {
    let repo = r
        .repository
        .clone()
        .unwrap_or_else(|| format!("imgbuild/{}", r.name));
    format!(
        "{repo}:{}",
        r.tags.first().map(String::as_str).unwrap_or("latest")
    )
}

/// (recipe, layer number) of every Debian layer, to drop stale lock entries.
pub fn live_debian_layers(set: &RecipeSet) -> BTreeMap<(String, usize), ()> {
    let mut live = BTreeMap::new();
    for r in set.recipes.values() {
        for (i, l) in r.layers.iter().enumerate() {
            if l.sources.iter().any(|s| s.kind() == "debian") {
                live.insert((r.name.clone(), i + 1), ());
            }
        }
    }
    live
}

/// Why a layer that missed the cache is built, against the last build of the same
/// layer of the same recipe. `rebuilt_below`: the first of this image's layers
/// below it that was built in this run, if any.
fn reason_for(
    project: &Project,
    previous: Option<&ImageRecord>,
    index: usize,
    fingerprint: &Digest,
    inputs: &[source::Input],
    rebuilt_below: Option<usize>,
) -> Vec<String> {
    let Some(prev) = previous.and_then(|p| p.layers.get(p.base_layers + index)) else {
        return vec!["new layer".into()];
    };
    let Some(prev_fp) = &prev.fingerprint else {
        return vec!["new layer".into()];
    };
    if prev_fp == fingerprint {
        return vec!["its cached blob is missing or corrupt".into()];
    }
    let Some(old) = LayerRecord::read_unverified(&project.store, prev_fp) else {
        return vec!["the record of its last build is gone (gc?)".into()];
    };
    let reasons = source::explain(Some(&old.fingerprint_inputs), inputs);
    // what changed below is named by the layer that changed
    if let Some(n) = rebuilt_below
        && reasons.iter().all(|r| r.starts_with("lower layers"))
    {
        return vec![format!("lower layer {n} changed")];
    }
    reasons
}

fn build_image(
    project: &Project,
    session: &Session,
    r: &Recipe,
    base: Option<&Built>,
    stat: &StatCache,
    threads: usize,
    mode: Mode,
) -> Result<ImageOutcome> {
    let mut plan = ImagePlan {
        name: r.name.clone(),
        recipe: r.file.display().to_string(),
        layers: vec![],
    };
    let registry_base = match &r.from.value {
        From::Registry(reference) => {
            match source::base::load(session, r, reference, mode == Mode::Build)? {
                Some(b) => Some(b),
                None => {
                    for i in 0..r.layers.len() {
                        source::lock_layer(session, r, i)?;
                    }
                    plan.layers = waiting_plan(
                        r,
                        &format!("base image {reference} is not in the store yet (pulled first)"),
                        0,
                    )
                    .layers;
                    return Ok(ImageOutcome { built: None, plan });
                }
            }
        }
        _ => None,
    };
    let base_image = registry_base.as_ref().map(|b| b.reference.clone());
    let registry_base = registry_base.map(|b| Built {
        record: ImageRecord {
            name: String::new(),
            manifest_digest: b.blobs[0].clone(),
            manifest_size: 0,
            config_digest: b.blobs[1].clone(),
            config_size: 0,
            tarball: String::new(),
            reference: b.reference.clone(),
            repository: None,
            tags: vec![],
            base: None,
            base_image: None,
            base_layers: 0,
            layers: b.layers,
            inputs: b.blobs,
        },
        view: b.view,
        accounts: b.accounts,
        config: b.config,
        history: b.history,
    });
    let base = base.or(registry_base.as_ref());
    let write = WriteOptions {
        mtime: project.epoch,
        threads,
    };
    let contract = write.contract();
    let previous = ImageRecord::load(&project.store, &project.key, &r.name)?;
    let mut layers: Vec<LayerReport> = base.map(|b| b.record.layers.clone()).unwrap_or_default();
    let base_layers = layers.len();
    let mut view = base.map(|b| b.view.clone()).unwrap_or_default();
    let mut accounts = base.and_then(|b| b.accounts.clone());
    let mut history: Vec<HistoryEntry> = base.map(|b| b.history.clone()).unwrap_or_default();
    let mut inputs: Vec<Digest> = base.map(|b| b.record.inputs.clone()).unwrap_or_default();
    let mut rebuilt_below: Option<usize> = None;
    let n = r.layers.len();
    for (i, spec) in r.layers.iter().enumerate() {
        let label = format!("[{}] layer {}/{n}", r.name, i + 1);
        project
            .progress
            .status(format!("{label}: checking inputs ({})", spec.describe()));
        let planned = source::plan_layer(
            session, stat, r, i, &view, &layers, &accounts, &contract,
        )?;
        let fingerprint = planned.fingerprint.clone();
        let next_accounts = planned.accounts_after.clone();
        let cached_record = LayerRecord::lookup(&project.store, &fingerprint)?;
        let reason = match &cached_record {
            Some(_) => vec![],
            None => reason_for(
                project,
                previous.as_ref(),
                i,
                &fingerprint,
                &planned.inputs,
                rebuilt_below,
            ),
        };
        plan.layers.push(LayerPlan {
            layer: i + 1,
            kinds: kinds_of(spec),
            description: planned.description.clone(),
            fingerprint: Some(fingerprint.clone()),
            inputs: planned
                .inputs
                .iter()
                .map(|i| match &i.shown {
                    Some(s) => format!("{} {s}", i.what),
                    None => i.what.clone(),
                })
                .collect(),
            state: if cached_record.is_some() {
                LayerState::Cached
            } else {
                LayerState::Build
            },
            digest: cached_record.as_ref().map(|c| c.digest.clone()),
            reason: reason.clone(),
        });
        let (record, cached) = match cached_record {
            Some(rec) => (rec, true),
            None if mode == Mode::Plan => {
                // what is above depends on the bytes of this layer
                for (j, l) in r.layers.iter().enumerate().skip(i + 1) {
                    source::lock_layer(session, r, j)?;
                    plan.layers.push(LayerPlan {
                        layer: j + 1,
                        kinds: kinds_of(l),
                        description: l.describe(),
                        fingerprint: None,
                        inputs: vec![],
                        state: LayerState::Build,
                        digest: None,
                        reason: vec![format!("lower layer {} changed", i + 1)],
                    });
                }
                return Ok(ImageOutcome { built: None, plan });
            }
            None => {
                let t = Instant::now();
                project
                    .progress
                    .status(format!("{label}: building ({})", spec.describe()));
                let description = planned.description.clone();
                let fingerprint_inputs = planned.inputs.clone();
                let built = planned
                    .build_tree(&view)
                    .with_context(|| format!("{}: layer {}", r.file.display(), i + 1))?;
                project
                    .progress
                    .status(format!("{label}: writing {} entries", built.tree.len()));
                let blob = write_layer(&built.tree, &write, &project.store)
                    .with_context(|| format!("{}: layer {}", r.file.display(), i + 1))?;
                let rec = LayerRecord {
                    digest: blob.digest,
                    diff_id: blob.diff_id,
                    size: blob.size,
                    tar_size: blob.tar_size,
                    description,
                    view: source::view_of(&built.tree),
                    inputs: built.blobs,
                    notes: built.notes,
                    fingerprint_inputs,
                };
                rec.save(&project.store, &fingerprint)?;
                project.progress.detail(format!(
                    "{label}: wrote {} entries, {} -> {} in {:.2}s",
                    built.tree.len(),
                    human(blob.tar_size),
                    human(rec.size),
                    t.elapsed().as_secs_f64()
                ));
                rebuilt_below.get_or_insert(i + 1);
                (rec, false)
            }
        };
        if mode == Mode::Build {
            project.progress.line(format!(
                "{label} {} {} {:>9}  {}{}",
                if cached { "cached" } else { "built " },
                short(&record.digest),
                human(record.size),
                record.description,
                if reason.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", reason.join("; "))
                }
            ));
        }
        view.apply(&record.view);
        accounts = next_accounts;
        history.push(HistoryEntry {
            created_by: format!(
                "imgbuild {}: layer {} ({})",
                r.file.display(),
                i + 1,
                record.description
            ),
            empty_layer: false,
        });
        inputs.extend(record.inputs.iter().cloned());
        layers.push(LayerReport {
            digest: record.digest,
            diff_id: record.diff_id,
            size: record.size,
            cached,
            description: record.description,
            notes: record.notes,
            media_type: None,
            fingerprint: Some(fingerprint),
            reason,
        });
    }
    let config_spec = oci::merge_config(base.map(|b| &b.config), &r.config);
    let diff_ids: Vec<Digest> = layers.iter().map(|l| l.diff_id.clone()).collect();
    let config = oci::image_config(&config_spec, &diff_ids, &history, project.epoch);
    let layer_desc: Vec<Descriptor> = layers
        .iter()
        .map(|l| Descriptor {
            media_type: if l.media_type.is_some() {
                crate::oci::MEDIA_LAYER_ZSTD
            } else {
                MEDIA_LAYER_GZIP
            },
            digest: l.digest.clone(),
            size: l.size,
        })
        .collect();
    let config_digest = Digest::of_bytes(&config);
    let manifest = oci::image_manifest(
        &Descriptor {
            media_type: MEDIA_CONFIG,
            digest: config_digest.clone(),
            size: config.len() as u64,
        },
        &layer_desc,
    );
    let manifest_digest = Digest::of_bytes(&manifest);
    if mode == Mode::Build {
        project.store.put_bytes(&config)?;
        project.store.put_bytes(&manifest)?;
    }
    inputs.sort();
    inputs.dedup();
    let tarball = project.out.join(format!("{}.tar", r.name));
    let record = ImageRecord {
        name: r.name.clone(),
        manifest_digest,
        manifest_size: manifest.len() as u64,
        config_digest,
        config_size: config.len() as u64,
        tarball: tarball.display().to_string(),
        reference: reference_for(r),
        repository: r.repository.clone(),
        tags: r.tags.clone(),
        base: match &r.from.value {
            From::Recipe(p) => Some(p.clone()),
            _ => None,
        },
        base_image,
        base_layers,
        layers,
        inputs,
    };
    if mode == Mode::Build {
        project
            .progress
            .status(format!("[{}] writing {}", r.name, tarball.display()));
        let wrote =
            sink::tarball::write(&tarball, &project.store, &image_out(&record), project.epoch)?;
        project.progress.line(format!(
            "[{}] image {} -> {}{}",
            r.name,
            short(&record.manifest_digest),
            tarball.display(),
            if wrote { "" } else { " (unchanged)" }
        ));
    }
    Ok(ImageOutcome {
        built: Some(Built {
            record,
            view,
            accounts,
            config: config_spec,
            history,
        }),
        plan,
    })
}

/// The JSON document of a build (and of `load` and `push` alone): the images built,
/// what `--load` and `--push` did.
#[derive(serde::Serialize, Default)]
pub struct BuildReport {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub images: Option<Vec<ImageReport>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub load: Option<Vec<crate::ops::load::LoadOutcome>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub push: Option<imgbuild_registry::PushReport>,
}

#[derive(serde::Serialize)]
pub struct ImageReport {
    pub name: String,
    pub reference: String,
    pub manifest_digest: Digest,
    pub config_digest: Digest,
    pub tarball: String,
    pub layers: Vec<LayerReportJson>,
}

#[derive(serde::Serialize)]
pub struct LayerReportJson {
    pub digest: Digest,
    pub diff_id: Digest,
    pub size: u64,
    pub cached: bool,
    /// Why it was built (absent when cached).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub reason: Vec<String>,
}

impl BuildReport {
    pub fn new(records: &[ImageRecord]) -> BuildReport {
        BuildReport {
            images: Some(
                records
                    .iter()
                    .map(|r| ImageReport {
                        name: r.name.clone(),
                        reference: r.reference.clone(),
                        manifest_digest: r.manifest_digest.clone(),
                        config_digest: r.config_digest.clone(),
                        tarball: r.tarball.clone(),
                        layers: r
                            .layers
                            .iter()
                            .map(|l| LayerReportJson {
                                digest: l.digest.clone(),
                                diff_id: l.diff_id.clone(),
                                size: l.size,
                                cached: l.cached,
                                reason: l.reason.clone(),
                            })
                            .collect(),
                    })
                    .collect(),
            ),
            ..Default::default()
        }
    }
}

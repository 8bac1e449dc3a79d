//! The image builder: every image's layers planned by [`crate::source::plan_layer`]
//! (its sources state their inputs, which hash into its fingerprint) and, building,
//! each layer whose fingerprint is not cached built and written by the one layer
//! writer. A layer's record keeps its inputs, so that the next rebuild can say why
//! ([`crate::source::explain`]). A recipe `from` another gets that image's layers byte
//! for byte; the config and manifest are canonical JSON.
//!
//! Planning ([`plan`]) runs the same code and stops at each image's first layer that
//! is not cached: the layers above it depend on its bytes, which only building gives
//! (they are `build` with the reason `lower layer N changed`, and may turn out cached
//! when built). It writes nothing: the lock's changes are kept in memory (reported;
//! `imgbuild lock` writes them).

use std::collections::BTreeMap;
use std::time::Instant;

use anyhow::{Context, Result};
use imgbuild_layer::{WriteOptions, write_layer};
use imgbuild_store::Digest;

use crate::cache::{ImageRecord, LayerRecord, LayerReport};
use crate::lower::LowerView;
use crate::naming::{image_out, reference_for};
use crate::oci::{self, Descriptor, HistoryEntry, MEDIA_CONFIG};
use crate::plan::{ImagePlan, LayerPlan, LayerState, Plan};
use crate::platform::{Platform, Selection};
use crate::progress::{human, short};
use crate::project::Project;
use crate::recipe::{ConfigSpec, From, Recipe, RecipeSet};
use crate::sink::{self};
use crate::source::{self, Session, walk::StatCache};
use imgbuild_debian::system::Accounts;

/// What an image hands to images built `from` it.
#[derive(Clone)]
pub(crate) struct Built {
    pub record: ImageRecord,
    view: LowerView,
    accounts: Option<Accounts>,
    config: ConfigSpec,
    history: Vec<HistoryEntry>,
}

/// Whether layers are built, or only planned.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    Build,
    Plan,
}

/// What one image came to: built (or, planning, entirely cached), and its plan.
pub(crate) struct ImageOutcome {
    pub built: Option<Built>,
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
    platforms: &Selection,
) -> Result<(Plan, crate::lockfile::Lockfile)> {
    let set = RecipeSet::load(&project.root)?;
    let order = set.closure(names)?;
    // every (recipe, platform), each platform in the project's order
    let mut work: Vec<(&Recipe, Platform)> = vec![];
    for p in &platforms.project {
        for r in &order {
            if platforms.for_recipe(r)?.contains(p) {
                work.push((r, *p));
            }
        }
    }
    let _lock = project.lock_shared()?;
    let stat = StatCache::load(&project.store, &project.key, project.jobs);
    let session = Session::new(project, locked, relock)?;
    let lock_before = session.debian.lock.lock().expect("lock").clone();
    if relock {
        // registry bases given by tag are resolved afresh too
        session.debian.lock.lock().expect("lock").bases.clear();
    }
    let mut done: BTreeMap<(String, Platform), Option<Built>> = BTreeMap::new();
    let mut images = vec![];
    for (r, platform) in work {
        let platform_shown = platforms.indexed().then(|| platform.to_string());
        // an image another image's layers read must be built first
        let pending_dep = r
            .dependencies()
            .into_iter()
            .map(|(d, _)| d)
            .find(|d| !matches!(done.get(&(d.clone(), platform)), Some(Some(_))));
        let base = match (&r.from.value, pending_dep) {
            (From::Recipe(p), None) => done.get(&(p.clone(), platform)).and_then(Option::as_ref),
            (_, None) => None,
            (from, Some(dep)) => {
                {
                    // every layer of this one waits for it
                    let why = if *from == From::Recipe(dep.clone()) {
                        format!("base image `{dep}` changes")
                    } else {
                        format!("image `{dep}` changes")
                    };
                    let mut plan = waiting_plan(r, &why, 0);
                    plan.platform = platform_shown;
                    // its Debian layers still resolve, for the lock
                    for i in 0..r.layers.len() {
                        source::lock_layer(&session, r, i, platform)?;
                    }
                    done.insert((r.name.clone(), platform), None);
                    images.push(plan);
                    continue;
                }
            }
        };
        let out = build_image(
            project,
            &session,
            r,
            base,
            &stat,
            1,
            Mode::Plan,
            platform,
            platforms.indexed(),
        )?;
        done.insert((r.name.clone(), platform), out.built);
        let mut plan = out.plan;
        plan.platform = platform_shown;
        images.push(plan);
    }
    project.progress.clear();
    if names.is_none() && platforms.only.is_none() {
        session
            .debian
            .prune_lock(&live_debian_layers(&set, platforms));
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

/// A layer that cannot be fingerprinted before what it depends on is built.
fn waiting_layer(layer: usize, spec: &crate::recipe::LayerSpec, why: String) -> LayerPlan {
    LayerPlan {
        layer,
        kinds: kinds_of(spec),
        description: spec.describe(),
        fingerprint: None,
        inputs: vec![],
        state: LayerState::Build,
        digest: None,
        reason: vec![why],
    }
}

/// A plan for an image none of whose layers can be fingerprinted yet.
fn waiting_plan(r: &Recipe, why: &str, from: usize) -> ImagePlan {
    ImagePlan {
        name: r.name.clone(),
        recipe: r.file.display().to_string(),
        platform: None,
        layers: r.layers[from..]
            .iter()
            .enumerate()
            .map(|(i, l)| waiting_layer(from + i + 1, l, why.to_owned()))
            .collect(),
    }
}

/// (recipe, layer number, architecture) of every Debian layer of every platform
/// its recipe is built for (whatever `--platform` says), to drop stale lock entries.
pub fn live_debian_layers(
    set: &RecipeSet,
    platforms: &Selection,
) -> BTreeMap<(String, usize, imgbuild_debian::Arch), ()> {
    let mut live = BTreeMap::new();
    for r in set.recipes.values() {
        for p in platforms.all_for_recipe(r) {
            for (i, l) in r.layers.iter().enumerate() {
                if l.sources.iter().any(|s| s.kind() == "debian") {
                    live.insert((r.name.clone(), i + 1, p.arch), ());
                }
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

/// Builds (or plans) one image for one platform. `indexed`: the image becomes an
/// image index over its platforms' manifests (assembled by the caller, which
/// writes the tarball then); else its tarball is written here.
#[allow(clippy::too_many_arguments)]
pub(crate) fn build_image(
    project: &Project,
    session: &Session,
    r: &Recipe,
    base: Option<&Built>,
    stat: &StatCache,
    threads: usize,
    mode: Mode,
    platform: Platform,
    indexed: bool,
) -> Result<ImageOutcome> {
    let mut plan = ImagePlan {
        name: r.name.clone(),
        recipe: r.file.display().to_string(),
        platform: None,
        layers: vec![],
    };
    let registry_base = match &r.from.value {
        From::Registry(reference) => {
            match source::base::load(session, r, reference, mode == Mode::Build, platform)? {
                Some(b) => Some(b),
                None => {
                    for i in 0..r.layers.len() {
                        source::lock_layer(session, r, i, platform)?;
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
            platform: None,
            index: None,
            platforms: vec![],
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
    let previous = ImageRecord::load(&project.store, &project.key, &r.name)?
        .and_then(|p| p.for_platform(platform).cloned());
    let mut layers: Vec<LayerReport> = base.map(|b| b.record.layers.clone()).unwrap_or_default();
    let base_layers = layers.len();
    let mut view = base.map(|b| b.view.clone()).unwrap_or_default();
    let mut accounts = base.and_then(|b| b.accounts.clone());
    let mut history: Vec<HistoryEntry> = base.map(|b| b.history.clone()).unwrap_or_default();
    let mut inputs: Vec<Digest> = base.map(|b| b.record.inputs.clone()).unwrap_or_default();
    let mut rebuilt_below: Option<usize> = None;
    let n = r.layers.len();
    // `[app]`, or `[app linux/arm64]` for an image built for several platforms
    let tag = if indexed {
        format!("{} {platform}", r.name)
    } else {
        r.name.clone()
    };
    for (i, spec) in r.layers.iter().enumerate() {
        let label = format!("[{tag}] layer {}/{n}", i + 1);
        project
            .progress
            .status(format!("{label}: checking inputs ({})", spec.describe()));
        let remote = session.remote_cache.as_deref();
        // The images a layer reads must have their bytes here, also when they came from
        // the registry cache: files copied out of an image are read while planning (their
        // metadata is an input), a build step's builder image only when the step runs.
        let ensure_images = |sources: &mut dyn Iterator<Item = &Box<dyn source::LayerSource>>| {
            if let Some(rc) = remote {
                for (dep, _) in sources.flat_map(|s| s.depends_on()) {
                    let image = session
                        .images
                        .lock()
                        .expect("images")
                        .get(&(dep, platform))
                        .cloned();
                    if let Some(image) = image {
                        rc.ensure_local(&project.store, &image.layers)?;
                    }
                }
            }
            anyhow::Ok(())
        };
        ensure_images(&mut spec.sources.iter().filter(|s| s.kind() == "files"))?;
        let planned = source::plan_layer(
            session, stat, r, i, &view, &layers, &accounts, &contract, platform,
        )?;
        let fingerprint = planned.fingerprint.clone();
        let next_accounts = planned.accounts_after.clone();
        let mut cached_record = LayerRecord::lookup(&project.store, &fingerprint)?;
        // `--cache-verify`: a registry hit picked to be built again and compared.
        let mut verify_against: Option<LayerRecord> = None;
        if cached_record.is_none()
            && let Some(rc) = remote
        {
            // out/ needs the bytes of every layer: a hit is downloaded (and verified) now
            let bytes = mode == Mode::Build && rc.want_bytes;
            match rc.find(&project.store, &fingerprint, bytes) {
                Some(hit) if mode == Mode::Build && rc.verify_this(&fingerprint) => {
                    verify_against = Some(hit)
                }
                hit => cached_record = hit,
            }
        }
        let reason = match &cached_record {
            Some(_) => vec![],
            None if verify_against.is_some() => {
                vec!["--cache-verify: built again to compare with the registry cache".into()]
            }
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
            digest: cached_record.as_ref().map(|c| c.descriptor.digest.clone()),
            reason: reason.clone(),
        });
        let (record, cached) = match cached_record {
            Some(rec) => (rec, true),
            None if mode == Mode::Plan => {
                // what is above depends on the bytes of this layer
                for (j, l) in r.layers.iter().enumerate().skip(i + 1) {
                    source::lock_layer(session, r, j, platform)?;
                    plan.layers.push(waiting_layer(
                        j + 1,
                        l,
                        format!("lower layer {} changed", i + 1),
                    ));
                }
                return Ok(ImageOutcome { built: None, plan });
            }
            None => {
                let t = Instant::now();
                project
                    .progress
                    .status(format!("{label}: building ({})", spec.describe()));
                if let Some(rc) = remote
                    && spec.sources.iter().any(|s| s.reads_lower_layers())
                {
                    rc.ensure_local(&project.store, &layers)?;
                }
                ensure_images(&mut spec.sources.iter())?;
                let description = planned.description.clone();
                let fingerprint_inputs = planned.inputs.clone();
                let built = planned
                    .build_tree(&view)
                    .with_context(|| format!("{}: layer {}", r.file.display(), i + 1))?;
                project
                    .progress
                    .status(format!("{label}: writing {} entries", built.tree.len()));
                // What the SBOM says of the layer (licenses, file checksums) is read
                // from the tree beside the writer, off the compression's critical path.
                let mut contents = built.contents;
                let tree = &built.tree;
                let (blob, completed) = std::thread::scope(|s| {
                    let sbom = s.spawn(|| contents.complete(tree, &project.root));
                    let blob = write_layer(tree, &write, &project.store);
                    (
                        blob,
                        sbom.join().expect("the SBOM contents thread panicked"),
                    )
                });
                let blob =
                    blob.with_context(|| format!("{}: layer {}", r.file.display(), i + 1))?;
                completed.with_context(|| format!("{}: layer {}", r.file.display(), i + 1))?;
                let rec = LayerRecord {
                    descriptor: blob.descriptor,
                    diff_id: blob.diff_id,
                    tar_size: blob.tar_size,
                    description,
                    view: source::view_of(&built.tree),
                    inputs: built.blobs,
                    notes: built.notes,
                    fingerprint_inputs,
                    in_caches: vec![],
                    contents: Some(contents),
                };
                rec.save(&project.store, &fingerprint)?;
                project.progress.detail(format!(
                    "{label}: wrote {} entries, {} -> {} in {:.2}s",
                    built.tree.len(),
                    human(blob.tar_size),
                    human(rec.descriptor.size),
                    t.elapsed().as_secs_f64()
                ));
                if let Some(entry) = &verify_against {
                    if entry.descriptor.digest != rec.descriptor.digest {
                        let what =
                            format!("{} layer {} ({})", r.file.display(), i + 1, rec.description);
                        let rc = remote.expect("verify needs the cache");
                        return Err(rc.mismatch(
                            &project.store,
                            &what,
                            &fingerprint,
                            entry,
                            &rec.descriptor.digest,
                        ));
                    }
                    remote.expect("verify needs the cache").verified();
                } else {
                    rebuilt_below.get_or_insert(i + 1);
                }
                let cached = verify_against.is_some();
                (rec, cached)
            }
        };
        if let Some(rc) = remote
            && mode == Mode::Build
            && project.store.has_blob(&record.descriptor.digest)
        {
            rc.record_local(&fingerprint, &record);
        }
        if mode == Mode::Build {
            project.progress.line(format!(
                "{label} {} {} {:>9}  {}{}",
                if cached { "cached" } else { "built " },
                short(&record.descriptor.digest),
                human(record.descriptor.size),
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
            descriptor: record.descriptor,
            diff_id: record.diff_id,
            cached,
            description: record.description,
            notes: record.notes,
            fingerprint: Some(fingerprint),
            reason,
        });
    }
    let config_spec = oci::merge_config(base.map(|b| &b.config), &r.config);
    let diff_ids: Vec<Digest> = layers.iter().map(|l| l.diff_id.clone()).collect();
    let config = oci::image_config(&config_spec, &diff_ids, &history, project.epoch, platform);
    let layer_desc: Vec<Descriptor> = layers.iter().map(|l| l.descriptor.clone()).collect();
    let config_digest = Digest::of_bytes(&config);
    let manifest = oci::image_manifest(
        &Descriptor::new(MEDIA_CONFIG, config_digest.clone(), config.len() as u64),
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
        // (--no-out: none written)
        tarball: if project.write_out {
            tarball.display().to_string()
        } else {
            String::new()
        },
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
        platform: indexed.then(|| platform.to_string()),
        index: None,
        platforms: vec![],
    };
    if mode == Mode::Build && !indexed && project.write_out {
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
    session
        .images
        .lock()
        .expect("images")
        .insert((r.name.clone(), platform), record.clone());
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

//! `imgbuild all` / `imgbuild build NAME...`: recipes to images in the store and
//! in `out/`.
//!
//! For each image, bases first: every layer is fingerprinted ([`crate::source`]);
//! a fingerprint found in the cache with an intact blob is reused as is, anything
//! else is built and written by the one layer writer. A recipe `from` another gets
//! that image's layers byte for byte. Then the config and manifest are written as
//! canonical JSON, and the sinks write `out/NAME.tar` and `out/oci/`.
//!
//! Independent images build in parallel (up to `--jobs`); the layers of one image
//! build in order, because each may depend on what is below it.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Instant;

use anyhow::{Context, Result, anyhow};
use imgbuild_layer::{WriteOptions, write_layer};
use imgbuild_store::Digest;

use crate::cache::{ImageRecord, LayerRecord, LayerReport};
use crate::lower::LowerView;
use crate::oci::{self, Descriptor, HistoryEntry, MEDIA_CONFIG, MEDIA_LAYER_GZIP};
use crate::progress::{human, short};
use crate::project::Project;
use crate::recipe::{ConfigSpec, From, Recipe, RecipeSet};
use crate::sink::{self, ImageOut};
use crate::source::{self, Session, files::StatCache};
use imgbuild_debian::system::Accounts;

pub struct BuildOptions {
    /// `None`: every recipe.
    pub names: Option<Vec<String>>,
    /// Fail instead of resolving when a recipe does not match `imgbuild.lock`.
    pub locked: bool,
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

/// Builds the requested images; returns their records in build order.
pub fn build(project: &Project, opts: &BuildOptions) -> Result<Vec<ImageRecord>> {
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
                        let res = build_image(project, &session, r, base, &stat, threads);
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
    // a base's layer built in this run appears in every image built from it: count it once
    let built = records
        .iter()
        .flat_map(|r| &r.layers)
        .filter(|l| !l.cached)
        .map(|l| &l.digest)
        .collect::<std::collections::BTreeSet<_>>()
        .len();
    project.progress.line(format!(
        "built {} image(s) in {:.2}s ({built} layer(s) built, the rest cached) -> {}",
        records.len(),
        started.elapsed().as_secs_f64(),
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
            if l.debian.is_some() {
                live.insert((r.name.clone(), i + 1), ());
            }
        }
    }
    live
}

fn build_image(
    project: &Project,
    session: &Session,
    r: &Recipe,
    base: Option<&Built>,
    stat: &StatCache,
    threads: usize,
) -> Result<Built> {
    let registry_base = match &r.from.value {
        From::Registry(reference) => Some(source::base::load(session, r, reference)?),
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
    let mut layers: Vec<LayerReport> = base.map(|b| b.record.layers.clone()).unwrap_or_default();
    let mut view = base.map(|b| b.view.clone()).unwrap_or_default();
    let mut accounts = base.and_then(|b| b.accounts.clone());
    let mut history: Vec<HistoryEntry> = base.map(|b| b.history.clone()).unwrap_or_default();
    let mut inputs: Vec<Digest> = base.map(|b| b.record.inputs.clone()).unwrap_or_default();
    let n = r.layers.len();
    for (i, spec) in r.layers.iter().enumerate() {
        let label = format!("[{}] layer {}/{n}", r.name, i + 1);
        project
            .progress
            .status(format!("{label}: checking inputs ({})", spec.describe()));
        let extra = session.extra_sources(r, i, spec, &layers)?;
        let prepared = source::prepare(r, i, spec, &view, &accounts, &contract, stat, extra)?;
        let fingerprint = prepared.fingerprint.clone();
        let next_accounts = prepared.accounts_after.clone();
        let (record, cached) = match LayerRecord::lookup(&project.store, &fingerprint)? {
            Some(rec) => (rec, true),
            None => {
                let t = Instant::now();
                project
                    .progress
                    .status(format!("{label}: building ({})", spec.describe()));
                let description = prepared.description.clone();
                let built = prepared
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
                    inputs: built.inputs,
                    notes: built.notes,
                };
                rec.save(&project.store, &fingerprint)?;
                project.progress.detail(format!(
                    "{label}: wrote {} entries, {} -> {} in {:.2}s",
                    built.tree.len(),
                    human(blob.tar_size),
                    human(rec.size),
                    t.elapsed().as_secs_f64()
                ));
                (rec, false)
            }
        };
        project.progress.line(format!(
            "{label} {} {} {:>9}  {}",
            if cached { "cached" } else { "built " },
            short(&record.digest),
            human(record.size),
            record.description
        ));
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
        });
    }
    let config_spec = oci::merge_config(base.map(|b| &b.config), &r.config);
    let diff_ids: Vec<Digest> = layers.iter().map(|l| l.diff_id.clone()).collect();
    let config = oci::image_config(&config_spec, &diff_ids, &history, project.epoch);
    let config_digest = project.store.put_bytes(&config)?;
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
    let manifest = oci::image_manifest(
        &Descriptor {
            media_type: MEDIA_CONFIG,
            digest: config_digest.clone(),
            size: config.len() as u64,
        },
        &layer_desc,
    );
    let manifest_digest = project.store.put_bytes(&manifest)?;
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
        layers,
        inputs,
    };
    project
        .progress
        .status(format!("[{}] writing {}", r.name, tarball.display()));
    let wrote = sink::tarball::write(&tarball, &project.store, &image_out(&record), project.epoch)?;
    project.progress.line(format!(
        "[{}] image {} -> {}{}",
        r.name,
        short(&record.manifest_digest),
        tarball.display(),
        if wrote { "" } else { " (unchanged)" }
    ));
    Ok(Built {
        record,
        view,
        accounts,
        config: config_spec,
        history,
    })
}

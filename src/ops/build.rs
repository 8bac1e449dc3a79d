//! `imgbuild all` / `imgbuild build NAME...`: recipes to images in the store and
//! in `out/`, through [`crate::builder`]; `--expect-cached` checks its plan first.
//!
//! Independent images build in parallel (up to `--jobs`); the layers of one image
//! build in order, because each may depend on what is below it. Then the sinks write
//! `out/NAME.tar` (per image, as it is built) and `out/oci/`.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Instant;

use anyhow::{Context, Result, anyhow, bail};
use imgbuild_store::Digest;

use crate::builder::{Built, Mode, build_image, live_debian_layers, plan};
use crate::cache::ImageRecord;
use crate::naming::image_out;
use crate::platform::{Platform, Selection};
use crate::project::Project;
use crate::recipe::{From, Recipe, RecipeSet};
use crate::settings::Settings;
use crate::sink::{self, ImageOut};
use crate::source::{Session, walk::StatCache};

/// One image of one platform: (recipe name, platform).
type ImageKey = (String, Platform);

pub struct BuildOptions {
    /// `None`: every recipe.
    pub names: Option<Vec<String>>,
    /// Fail instead of resolving when a recipe does not match `imgbuild.lock`.
    pub locked: bool,
    /// Fail, naming each layer and why, if anything would be built.
    pub expect_cached: bool,
    /// Run each build step twice and compare its outputs.
    pub check_reproducible: bool,
    /// The SBOM format written beside each image (and attached on push).
    pub sbom_format: crate::supply::SbomFormat,
    /// `--platform`: build only these of the project's platforms (empty: all).
    pub platforms: Vec<String>,
}

/// Builds the requested images; returns their records in build order.
pub fn build(project: &Project, opts: &BuildOptions) -> Result<Vec<ImageRecord>> {
    let platforms = Selection::new(&Settings::load(&project.root)?, &opts.platforms)?;
    if opts.expect_cached {
        let (plan, _) = plan(
            project,
            opts.names.as_deref(),
            opts.locked,
            false,
            &platforms,
        )?;
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
    // every (recipe, platform) to build; a recipe's platforms are checked first
    let mut work: Vec<(&Recipe, Platform)> = vec![];
    let mut recipe_platforms: BTreeMap<String, Vec<Platform>> = BTreeMap::new();
    for r in &order {
        let ps = platforms.for_recipe(r)?;
        if ps.is_empty() {
            bail!(
                "{}: `{}` is built for none of the platforms asked for ({}); its `platforms` names {}",
                r.file.display(),
                r.name,
                crate::platform::list(platforms.only.as_deref().unwrap_or(&platforms.project)),
                crate::platform::list(&platforms.all_for_recipe(r))
            );
        }
        for p in &ps {
            work.push((r, *p));
        }
        recipe_platforms.insert(r.name.clone(), ps);
    }
    // an image built `from` another is built for its platforms only if that one is
    for r in &order {
        for (dep, pos) in r.dependencies() {
            let Some(dep_ps) = recipe_platforms.get(&dep) else {
                continue;
            };
            if let Some(p) = recipe_platforms[&r.name]
                .iter()
                .find(|p| !dep_ps.contains(p))
            {
                return Err(r
                    .error_at(
                        &pos,
                        format!(
                            "`{}` is built for {p} but `{dep}` is not (its `platforms`): build `{dep}` for {p} too, or narrow `platforms` of `{}`",
                            r.name, r.name
                        ),
                    )
                    .into());
            }
        }
    }
    let indexed = platforms.indexed();
    let _lock = project.lock_shared()?;
    // Temp files of processes that no longer run, or older than a day, were left
    // by killed builds.
    let _ = project
        .store
        .clean_tmp(std::time::Duration::from_secs(86400));
    let stat = StatCache::load(&project.store, &project.key, project.jobs);
    let mut session = Session::new(project, opts.locked, false)?;
    session.check_reproducible = opts.check_reproducible;
    let lock_before = session.debian.lock.lock().expect("lock").clone();
    let started = Instant::now();

    // Waves: an image builds once its base and every image its layers read have;
    // images within a wave are independent.
    // (Each platform's images are independent of the other platforms'.)
    let mut done: BTreeMap<(String, Platform), Built> = BTreeMap::new();
    let mut remaining: Vec<(&Recipe, Platform)> = work;
    while !remaining.is_empty() {
        let (ready, later): (Vec<_>, Vec<_>) = remaining.into_iter().partition(|(r, p)| {
            r.dependencies()
                .iter()
                .all(|(d, _)| done.contains_key(&(d.clone(), *p)))
        });
        remaining = later;
        if ready.is_empty() {
            return Err(anyhow!(
                "internal error: no buildable recipe left (dependency cycle?)"
            ));
        }
        let queue = Mutex::new(ready.iter().rev().copied().collect::<Vec<_>>());
        let results: Mutex<Vec<(ImageKey, Result<Built>)>> = Mutex::new(vec![]);
        let workers = project.jobs.min(ready.len()).max(1);
        // Images built side by side share the --jobs budget for compression: jobs
        // threads (and about 4 x jobs 1 MiB blocks in flight) in all, not jobs per image.
        let threads = (project.jobs / workers).max(1);
        std::thread::scope(|s| {
            for _ in 0..workers {
                s.spawn(|| {
                    loop {
                        let Some((r, platform)) = queue.lock().expect("queue").pop() else {
                            break;
                        };
                        let base = match &r.from.value {
                            From::Recipe(p) => done.get(&(p.clone(), platform)),
                            _ => None,
                        };
                        let res = build_image(
                            project,
                            &session,
                            r,
                            base,
                            &stat,
                            threads,
                            Mode::Build,
                            platform,
                            indexed,
                        )
                        .and_then(|o| o.built.context("internal error: image not built"));
                        results
                            .lock()
                            .expect("results")
                            .push(((r.name.clone(), platform), res));
                    }
                });
            }
        });
        let results = results.into_inner().expect("results");
        let mut first_err = None;
        for ((name, platform), res) in results {
            match res {
                Ok(b) => {
                    done.insert((name, platform), b);
                }
                Err(e) => {
                    first_err.get_or_insert(e.context(if indexed {
                        format!("building image `{name}` for {platform}")
                    } else {
                        format!("building image `{name}`")
                    }));
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
    if opts.names.is_none() && platforms.only.is_none() {
        session
            .debian
            .prune_lock(&live_debian_layers(&set, &platforms));
    }
    let lock_after = session.debian.lock.lock().expect("lock").clone();
    if lock_after != lock_before {
        lock_after.save(&project.root)?;
        project
            .progress
            .line(format!("updated {}", crate::lockfile::FILE));
    }

    let records: Vec<ImageRecord> = if indexed {
        let mut records = vec![];
        for r in &order {
            let per: Vec<ImageRecord> = recipe_platforms[&r.name]
                .iter()
                .map(|p| done[&(r.name.clone(), *p)].record.clone())
                .collect();
            let rec = index_record(project, per)?;
            // (--no-out: no tarball)
            if project.write_out {
                project
                    .progress
                    .status(format!("[{}] writing {}", r.name, rec.tarball));
                let wrote = sink::tarball::write(
                    std::path::Path::new(&rec.tarball),
                    &project.store,
                    &image_out(&rec),
                    project.epoch,
                )?;
                project.progress.line(format!(
                    "[{}] image index {} ({}) -> {}{}",
                    r.name,
                    crate::progress::short(&rec.index.as_ref().expect("an index").digest),
                    rec.platforms
                        .iter()
                        .filter_map(|p| p.platform.clone())
                        .collect::<Vec<_>>()
                        .join(", "),
                    rec.tarball,
                    if wrote { "" } else { " (unchanged)" }
                ));
            }
            records.push(rec);
        }
        records
    } else {
        order
            .iter()
            .map(|r| done[&(r.name.clone(), platforms.project[0])].record.clone())
            .collect()
    };
    let outs: Vec<ImageOut> = records.iter().map(image_out).collect();
    if project.write_out {
        let _out = sink::lock_out(&project.out)?;
        sink::remove_stale_temps(&project.out);
        sink::layout::write(&project.out.join("oci"), &project.store, &outs)?;
        // SBOM and provenance per image record: from the store when made before
        let attesting = std::time::Instant::now();
        write_attestations(project, &records, opts.sbom_format)?;
        project.progress.detail(format!(
            "SBOM and provenance of {} image(s) in {:.3}s",
            records.len(),
            attesting.elapsed().as_secs_f64()
        ));
    }
    for rec in &records {
        rec.save(&project.store, &project.key)?;
    }
    // a layer appears in every image built from its image: count each once
    let mut state: BTreeMap<&Digest, bool> = BTreeMap::new();
    for l in records
        .iter()
        .flat_map(|r| r.manifests())
        .flat_map(|r| &r.layers)
    {
        *state.entry(&l.descriptor.digest).or_insert(true) &= l.cached;
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

/// The SBOM and provenance of each image: made (or found in the store), written to
/// `out/` and attached to the image in `out/oci/` (the caller holds the out lock).
fn write_attestations(
    project: &Project,
    records: &[ImageRecord],
    format: crate::supply::SbomFormat,
) -> Result<()> {
    let git = crate::supply::provenance::GitState::read(&project.root);
    for rec in records {
        let att = crate::supply::attest(project, rec, format, &git)
            .with_context(|| format!("the SBOM and provenance of `{}`", rec.name))?;
        crate::supply::write_out(&project.store, &project.out, &rec.name, format, &att)?;
        let arts = crate::supply::referrers::artifacts(&project.store, &att)?;
        crate::supply::referrers::add_to_layout(
            &project.out.join("oci"),
            &project.store,
            &rec.name,
            &arts,
            &rec.manifest_digest,
        )?;
    }
    Ok(())
}

/// The record of an image index over one image's platform records (in the
/// project's platform order): the index is written to the store, and the top-level
/// fields are those of the build machine's platform, or the first one built (what
/// `docker load` of `out/NAME.tar` gets).
fn index_record(project: &Project, per: Vec<ImageRecord>) -> Result<ImageRecord> {
    let entries = per
        .iter()
        .map(|r| {
            let platform = Platform::parse(r.platform.as_deref().expect("a platform record"))?;
            Ok(crate::oci::platform_entry(
                &crate::oci::Descriptor::new(
                    crate::oci::MEDIA_MANIFEST,
                    r.manifest_digest.clone(),
                    r.manifest_size,
                ),
                platform,
            ))
        })
        .collect::<Result<Vec<_>>>()?;
    let index = crate::oci::image_index(entries);
    project.store.put_bytes(&index)?;
    let native = Platform::native().to_string();
    let top = per
        .iter()
        .find(|r| r.platform.as_deref() == Some(&native))
        .unwrap_or(&per[0]);
    let mut rec = top.clone();
    rec.index = Some(crate::oci::Descriptor::new(
        crate::oci::MEDIA_INDEX,
        Digest::of_bytes(&index),
        index.len() as u64,
    ));
    rec.platforms = per;
    Ok(rec)
}

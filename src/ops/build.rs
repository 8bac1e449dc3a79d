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
use crate::project::Project;
use crate::recipe::{From, Recipe, RecipeSet};
use crate::sink::{self, ImageOut};
use crate::source::{Session, walk::StatCache};

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
    let mut session = Session::new(project, opts.locked, false)?;
    session.check_reproducible = opts.check_reproducible;
    let lock_before = session.debian.lock.lock().expect("lock").clone();
    let started = Instant::now();

    // Waves: an image builds once its base and every image its layers read have;
    // images within a wave are independent.
    let mut done: BTreeMap<String, Built> = BTreeMap::new();
    let mut remaining: Vec<&Recipe> = order.clone();
    while !remaining.is_empty() {
        let (ready, later): (Vec<&Recipe>, Vec<&Recipe>) = remaining
            .into_iter()
            .partition(|r| r.dependencies().iter().all(|(d, _)| done.contains_key(d)));
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
                        let res =
                            build_image(project, &session, r, base, &stat, threads, Mode::Build)
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
        // SBOM and provenance per image record: from the store when made before
        write_attestations(project, &records, opts.sbom_format)?;
    }
    for rec in &records {
        rec.save(&project.store, &project.key)?;
    }
    // a layer appears in every image built from its image: count each once
    let mut state: BTreeMap<&Digest, bool> = BTreeMap::new();
    for l in records.iter().flat_map(|r| &r.layers) {
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

//! `imgbuild load [NAME...]` and `imgbuild all --load`: puts built images into the
//! local Docker or Podman engine. An image is skipped when every one of its tags
//! already names this build in the engine (image ID = the config digest, or the
//! manifest digest with Docker's containerd image store), so an unchanged stack
//! loads in no time; when only some tags do, the missing ones are added with
//! `tag`; otherwise `load -i out/NAME.tar` puts it in, and every tag the engine
//! did not give it (Podman takes only the first, from the OCI index) is added.
//!
//! `--platform linux/arm64` loads that platform's image of an image built for several
//! (through a tarball of that platform alone, `out/NAME.linux-arm64.tar`); the engine
//! runs it with `docker run --platform linux/arm64` (under emulation on amd64).

use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::cache::ImageRecord;
use crate::engine::{Engine, engine_image_id, engine_name, is_this_build, pick};
use crate::naming::image_out;
use crate::platform::Platform;
use crate::project::Project;
use crate::recipe::RecipeSet;

/// One platform's image of a built image, with a tarball that holds it alone: the
/// build's `out/NAME.tar` when that is the platform's (what `docker load` reads),
/// else `out/NAME.PLATFORM.tar` (`out/app.linux-arm64.tar`), written now from the
/// store (and left unchanged when it already holds this image).
fn platform_image(project: &Project, rec: &ImageRecord, p: Platform) -> Result<ImageRecord> {
    let Some(own) = rec.for_platform(p) else {
        let built: Vec<String> = rec
            .manifests()
            .iter()
            .map(|m| {
                m.platform
                    .clone()
                    .unwrap_or_else(|| Platform::native().to_string())
            })
            .collect();
        bail!(
            "`{}` was not built for {p} (its last build: {}); build it with `imgbuild build {} --platform {p}` (the platform must be in `[build] platforms`)",
            rec.name,
            built.join(", "),
            rec.name
        );
    };
    if own.manifest_digest == rec.manifest_digest {
        let mut top = rec.clone();
        top.platforms.clear();
        top.index = None;
        return Ok(top);
    }
    let mut own = own.clone();
    own.tarball = project
        .out
        .join(format!(
            "{}.{}.tar",
            own.name,
            p.to_string().replace('/', "-")
        ))
        .display()
        .to_string();
    let _out = crate::sink::lock_out(&project.out)?;
    crate::sink::tarball::write(
        std::path::Path::new(&own.tarball),
        &project.store,
        &image_out(&own),
        project.epoch,
    )?;
    Ok(own)
}

/// The names among `references` that do not name this build in the engine.
fn missing_names(bin: &str, rec: &ImageRecord, references: &[String]) -> Vec<String> {
    references
        .iter()
        .filter(|r| !engine_image_id(bin, r).is_some_and(|id| is_this_build(rec, &id)))
        .cloned()
        .collect()
}

/// Gives this build every name in `references` it lacks, with `tag` from a name it has.
fn tag_missing(bin: &str, rec: &ImageRecord, references: &[String]) -> Result<()> {
    let missing = missing_names(bin, rec, references);
    if missing.is_empty() {
        return Ok(());
    }
    let Some(have) = references.iter().find(|r| !missing.contains(r)) else {
        bail!(
            "after `{bin} load -i {}`, no name of `{}` ({}) is that image in {bin}",
            rec.tarball,
            rec.name,
            references.join(", ")
        );
    };
    for m in &missing {
        let o = Command::new(bin)
            .args(["tag", have, m])
            .output()
            .with_context(|| format!("failed to run `{bin} tag`"))?;
        if !o.status.success() {
            bail!(
                "`{bin} tag {have} {m}` failed: {}",
                String::from_utf8_lossy(&o.stderr).trim()
            );
        }
    }
    Ok(())
}

/// What `load` did with one image.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LoadAction {
    /// Every tag already named this build: nothing done.
    Skipped,
    /// Some tags named this build: the others were added with `tag`.
    Tagged,
    /// `load -i out/NAME.tar` (then `tag` for the names the engine did not give it).
    Loaded,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct LoadOutcome {
    pub name: String,
    pub engine: &'static str,
    /// Every name of the image in the engine (one per tag).
    pub references: Vec<String>,
    pub action: LoadAction,
}

/// Loads the images (every recipe's when `names` is `None`); `platform`: that
/// platform's image of each (an image built for several platforms), else the one
/// `out/NAME.tar` gives `docker load`.
pub fn load(
    project: &Project,
    names: Option<&[String]>,
    engine: Engine,
    platform: Option<Platform>,
) -> Result<Vec<LoadOutcome>> {
    let bin = pick(engine)?;
    let set = RecipeSet::load(&project.root)?;
    let mut outcomes = vec![];
    for r in set.closure(names)? {
        let Some(rec) = ImageRecord::load(&project.store, &project.key, &r.name)? else {
            bail!(
                "`{}` has not been built in this project; run `imgbuild build {}` first",
                r.name,
                r.name
            );
        };
        let rec = match platform {
            None => rec,
            Some(p) => platform_image(project, &rec, p)?,
        };
        let out = image_out(&rec);
        let references: Vec<String> = out.repo_tags.iter().map(|t| engine_name(bin, t)).collect();
        let short = &rec.config_digest.hex()[..12];
        // Every tag is checked: an image whose other tags were removed (or moved to
        // another image) is not complete.
        let missing = missing_names(bin, &rec, &references);
        let action = if missing.is_empty() {
            project.progress.line(format!(
                "[{}] {bin} already has {} ({short}), skipped",
                rec.name,
                references.join(", ")
            ));
            LoadAction::Skipped
        } else if missing.len() < references.len() && tag_missing(bin, &rec, &references).is_ok() {
            // Cheaper than a load: name the image the engine already has.
            project.progress.line(format!(
                "[{}] {bin} has {short}; tagged it {}",
                rec.name,
                missing.join(", ")
            ));
            LoadAction::Tagged
        } else {
            project
                .progress
                .status(format!("[{}] {bin} load {}", rec.name, rec.tarball));
            let o = Command::new(bin)
                .args(["load", "-q", "-i", &rec.tarball])
                .output()
                .with_context(|| format!("failed to run `{bin} load`"))?;
            project.progress.clear();
            if !o.status.success() {
                bail!(
                    "`{bin} load -i {}` failed: {}",
                    rec.tarball,
                    String::from_utf8_lossy(&o.stderr).trim()
                );
            }
            // Podman reads the archive's OCI index, which names the first tag only.
            tag_missing(bin, &rec, &references)?;
            project.progress.line(format!(
                "[{}] loaded into {bin} as {}",
                rec.name,
                references.join(", ")
            ));
            LoadAction::Loaded
        };
        outcomes.push(LoadOutcome {
            name: rec.name.clone(),
            engine: bin,
            references,
            action,
        });
    }
    Ok(outcomes)
}

//! `imgbuild load [NAME...]` and `imgbuild all --load`: puts built images into the
//! local Docker or Podman engine, skipping each image the engine already has with
//! the same image ID (the config digest), so an unchanged stack loads in no time.

use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};

use crate::cache::ImageRecord;
use crate::ops::build::image_out;
use crate::project::Project;
use crate::recipe::RecipeSet;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Engine {
    Auto,
    Docker,
    Podman,
}

fn works(bin: &str) -> bool {
    Command::new(bin)
        .arg("info")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

fn pick(engine: Engine) -> Result<&'static str> {
    Ok(match engine {
        Engine::Docker => "docker",
        Engine::Podman => "podman",
        Engine::Auto if works("docker") => "docker",
        Engine::Auto if works("podman") => "podman",
        Engine::Auto => bail!(
            "no container engine answers (`docker info` and `podman info` failed); start one or pass --engine"
        ),
    })
}

/// The image ID the engine has for `reference`, if any.
fn engine_image_id(bin: &str, reference: &str) -> Option<String> {
    let out = Command::new(bin)
        .args(["image", "inspect", "--format", "{{.Id}}", reference])
        .stderr(Stdio::null())
        .output()
        .ok()?;
    out.status.success().then(|| {
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .trim_start_matches("sha256:")
            .to_owned()
    })
}

pub fn load(project: &Project, names: Option<&[String]>, engine: Engine) -> Result<()> {
    let bin = pick(engine)?;
    let set = RecipeSet::load(&project.root)?;
    for r in set.closure(names)? {
        let Some(rec) = ImageRecord::load(&project.store, &project.key, &r.name)? else {
            bail!(
                "`{}` has not been built in this project; run `imgbuild build {}` first",
                r.name,
                r.name
            );
        };
        let out = image_out(&rec);
        // podman keeps unqualified names under localhost/
        let lookup = if bin == "podman"
            && !out
                .reference
                .split('/')
                .next()
                .is_some_and(|h| h.contains(['.', ':']))
        {
            format!("localhost/{}", out.reference)
        } else {
            out.reference.clone()
        };
        if engine_image_id(bin, &lookup).as_deref() == Some(rec.config_digest.hex()) {
            project.progress.line(format!(
                "[{}] {bin} already has {} ({}), skipped",
                rec.name,
                out.reference,
                &rec.config_digest.hex()[..12]
            ));
            continue;
        }
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
        project.progress.line(format!(
            "[{}] loaded into {bin} as {}",
            rec.name,
            out.repo_tags.join(", ")
        ));
    }
    Ok(())
}

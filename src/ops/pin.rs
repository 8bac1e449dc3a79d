//! `imgbuild pin [NAME...]`: pins the stack's images by digest in its env file.
//!
//! `deploy/compose.yaml` takes each image from a variable whose default is the
//! name imgbuild gives it: `image: ${IMGBUILD_APP_IMAGE:-imgbuild/app:latest}`.
//! `pin` writes `IMGBUILD_<NAME>_IMAGE=...` (the recipe name upper-cased, `-` and
//! `.` as `_`) for the last build of each named image (default: every recipe):
//!
//! - by default `REPOSITORY@sha256:<manifest digest>`, with the repository `push`
//!   sends the image to (the recipe's `repository`, default `imgbuild/NAME`, or
//!   `PREFIX/NAME` with `--registry PREFIX`; [`crate::naming::target_repository`]). Pushed
//!   manifests are the local bytes, so this is what the registry serves; Compose
//!   pulls it by digest.
//! - with `--local`, `sha256:<image ID>` of the image the local engine holds,
//!   checked to be this build (`imgbuild load` puts it there). A loaded image has
//!   no repository digest: `docker load` records none, so `REPO@sha256:...` names
//!   nothing locally, while `docker run`, `docker-compose up` (1.29) and `podman
//!   run` all accept an image ID. Such a pin cannot be pulled (`docker-compose
//!   pull` fails on it): it is for the machine the images were loaded on.
//!
//! The env file must exist (`imgbuild setup` writes it). Lines of other variables,
//! comments and blank lines are kept byte for byte; an existing line of a pinned
//! variable is replaced in place, a new one is appended. The file is rewritten
//! atomically (temp file, fsync, rename, directory fsync) with mode 0600 and its
//! owner kept; a symlinked env file is updated where it points.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use imgbuild_registry::Reference;

use crate::cache::ImageRecord;
use crate::engine::{Engine, engine_image_id, engine_name, is_this_build, pick};
use crate::naming::{image_out, target_repository};
use crate::ops::setup::write_private_file;
use crate::project::Project;
use crate::recipe::RecipeSet;

/// Heads the block of pins `pin` appends to an env file.
const PINS_HEADER: &str =
    "# image pins, written by `imgbuild pin` (compose: image: ${IMGBUILD_<NAME>_IMAGE:-...})";

pub struct PinOptions {
    /// Recipes to pin; `None` = every recipe.
    pub names: Option<Vec<String>>,
    pub env_file: PathBuf,
    /// Pin `PREFIX/NAME@digest`, as `push --registry PREFIX` sends it.
    pub registry_prefix: Option<String>,
    /// Pin the image ID the local engine holds.
    pub local: bool,
    pub engine: Engine,
}

/// `imgbuild pin --json`.
#[derive(Debug, serde::Serialize)]
pub struct PinReport {
    pub env_file: std::path::PathBuf,
    pub pins: Vec<Pin>,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct Pin {
    pub name: String,
    pub variable: String,
    pub reference: String,
}

/// The compose variable that names recipe `name`'s image.
pub fn variable_for(name: &str) -> String {
    let upper: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect();
    format!("IMGBUILD_{upper}_IMAGE")
}

pub fn pin(project: &Project, opts: &PinOptions) -> Result<Vec<Pin>> {
    let set = RecipeSet::load(&project.root)?;
    let names: Vec<String> = match &opts.names {
        None => set.recipes.keys().cloned().collect(),
        Some(ns) => {
            for n in ns {
                if !set.recipes.contains_key(n) {
                    bail!(
                        "no recipe named `{n}` (recipes: {})",
                        set.recipes.keys().cloned().collect::<Vec<_>>().join(", ")
                    );
                }
            }
            ns.clone()
        }
    };
    if names.is_empty() {
        bail!(
            "no recipes in {}: nothing to pin",
            project.root.join("recipes").display()
        );
    }
    // Two names that map to one variable (`a-b`, `a.b`) would pin each other.
    let mut by_variable: BTreeMap<String, &str> = BTreeMap::new();
    for n in set.recipes.keys() {
        if let Some(other) = by_variable.insert(variable_for(n), n)
            && (names.contains(n) || names.iter().any(|x| x == other))
        {
            bail!(
                "recipes `{other}` and `{n}` would both be pinned as {}: rename one of them",
                variable_for(n)
            );
        }
    }
    let target = resolve_env_file(&opts.env_file)?;
    let engine = if opts.local {
        Some(pick(opts.engine)?)
    } else {
        None
    };
    let mut pins = vec![];
    for name in &names {
        let Some(rec) = ImageRecord::load(&project.store, &project.key, name)? else {
            bail!("`{name}` has not been built in this project; run `imgbuild build {name}` first");
        };
        let reference = match engine {
            Some(bin) => local_pin(bin, &rec)?,
            None => {
                let repo = target_repository(&rec, opts.registry_prefix.as_deref());
                repo.parse::<Reference>()
                    .with_context(|| format!("image `{name}`: invalid repository `{repo}`"))?;
                // an image built for several platforms is pinned by its index: each
                // host pulls its own platform
                let digest = rec
                    .index
                    .as_ref()
                    .map_or(&rec.manifest_digest, |i| &i.digest);
                format!("{repo}@{digest}")
            }
        };
        pins.push(Pin {
            name: name.clone(),
            variable: variable_for(name),
            reference,
        });
    }
    write_pins(&target, &pins)?;
    for p in &pins {
        project
            .progress
            .line(format!("[{}] {}={}", p.name, p.variable, p.reference));
    }
    project.progress.line(format!(
        "pinned {} image(s) in {}{}",
        pins.len(),
        opts.env_file.display(),
        if opts.local {
            " (local image IDs: for this machine's engine; they cannot be pulled)"
        } else {
            " (the registry must hold these manifests: `imgbuild push` them)"
        }
    ));
    Ok(pins)
}

/// `sha256:<ID>` of the image the engine holds under the image's names, if it is
/// this build.
fn local_pin(bin: &str, rec: &ImageRecord) -> Result<String> {
    let out = image_out(rec);
    let mut seen = vec![];
    for tag in &out.repo_tags {
        let name = engine_name(bin, tag);
        match engine_image_id(bin, &name) {
            Some(id) if is_this_build(rec, &id) => return Ok(format!("sha256:{id}")),
            Some(id) => seen.push(format!("{name} is sha256:{}", &id[..12.min(id.len())])),
            None => seen.push(format!("no {name}")),
        }
    }
    bail!(
        "image `{}`: {bin} does not hold this build (sha256:{}; {}): run `imgbuild load {}` first",
        rec.name,
        &rec.config_digest.hex()[..12],
        seen.join(", "),
        rec.name
    )
}

/// The key of an env file line (`KEY=...`, `export KEY=...`), if it assigns one.
fn line_key(line: &[u8]) -> Option<&[u8]> {
    let s = line.trim_ascii_start();
    let s = s
        .strip_prefix(b"export")
        .filter(|r| r.first().is_some_and(|c| *c == b' ' || *c == b'\t'))
        .map(<[u8]>::trim_ascii_start)
        .unwrap_or(s);
    let end = s
        .iter()
        .position(|c| !(c.is_ascii_alphanumeric() || *c == b'_'))
        .unwrap_or(s.len());
    let (key, rest) = s.split_at(end);
    (!key.is_empty() && rest.trim_ascii_start().starts_with(b"=")).then_some(key)
}

/// `text` with every line of a pinned variable replaced and the others kept
/// byte for byte; pins without a line are appended under [`PINS_HEADER`].
fn update_env_text(text: &[u8], pins: &[Pin]) -> Vec<u8> {
    let wanted: BTreeMap<&[u8], &Pin> = pins.iter().map(|p| (p.variable.as_bytes(), p)).collect();
    let mut written: Vec<&[u8]> = vec![];
    let mut out = Vec::with_capacity(text.len() + 100 * pins.len());
    for line in text.split_inclusive(|c| *c == b'\n') {
        match line_key(line).and_then(|k| wanted.get(k)) {
            Some(p) => {
                out.extend_from_slice(format!("{}={}", p.variable, p.reference).as_bytes());
                if line.ends_with(b"\n") {
                    out.extend_from_slice(if line.ends_with(b"\r\n") {
                        b"\r\n"
                    } else {
                        b"\n"
                    });
                }
                written.push(p.variable.as_bytes());
            }
            None => out.extend_from_slice(line),
        }
    }
    let new: Vec<&Pin> = pins
        .iter()
        .filter(|p| !written.contains(&p.variable.as_bytes()))
        .collect();
    if !new.is_empty() {
        if !out.is_empty() && !out.ends_with(b"\n") {
            out.push(b'\n');
        }
        let has_header = text
            .split(|c| *c == b'\n')
            .any(|l| l.trim_ascii_end() == PINS_HEADER.as_bytes());
        if !has_header {
            if !out.is_empty() && !out.ends_with(b"\n\n") {
                out.push(b'\n');
            }
            out.extend_from_slice(PINS_HEADER.as_bytes());
            out.push(b'\n');
        }
        for p in new {
            out.extend_from_slice(format!("{}={}\n", p.variable, p.reference).as_bytes());
        }
    }
    out
}

/// The file to update: the env file itself, or where it points if a symlink.
fn resolve_env_file(env_file: &Path) -> Result<PathBuf> {
    let target = std::fs::canonicalize(env_file).with_context(|| {
        format!(
            "the env file `{}` does not exist: run `imgbuild setup` first (it writes the secrets; pin adds to it), or pass --env-file",
            env_file.display()
        )
    })?;
    if !target.is_file() {
        bail!("`{}` is not a regular file", env_file.display());
    }
    Ok(target)
}

fn write_pins(target: &Path, pins: &[Pin]) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(target)
        .with_context(|| format!("failed to read `{}`", target.display()))?;
    let text =
        std::fs::read(target).with_context(|| format!("failed to read `{}`", target.display()))?;
    let updated = update_env_text(&text, pins);
    write_private_file(target, &updated, true)?;
    // Keep the owner (e.g. a user's file updated by root); only root may change it.
    if let Err(e) = std::os::unix::fs::lchown(target, Some(meta.uid()), Some(meta.gid()))
        && e.kind() != std::io::ErrorKind::PermissionDenied
    {
        return Err(e)
            .with_context(|| format!("failed to keep the owner of `{}`", target.display()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(var: &str, r: &str) -> Pin {
        Pin {
            name: String::new(),
            variable: var.to_owned(),
            reference: r.to_owned(),
        }
    }

    #[test]
    fn variables_are_shell_names() {
        assert_eq!(variable_for("app"), "IMGBUILD_APP_IMAGE");
        assert_eq!(
            variable_for("postgres-plpython"),
            "IMGBUILD_POSTGRES_PLPYTHON_IMAGE"
        );
        assert_eq!(variable_for("a.b_c"), "IMGBUILD_A_B_C_IMAGE");
    }

    #[test]
    fn other_lines_are_kept_and_pins_replaced_or_appended() {
        let text = b"# c\nA=1 # x\n\n  export IMGBUILD_APP_IMAGE = old\nB='q'\r\nIMGBUILD_APP_IMAGEX=keep\nlast=no-newline";
        let out = update_env_text(
            text,
            &[
                p("IMGBUILD_APP_IMAGE", "r/app@sha256:1"),
                p("IMGBUILD_DB_IMAGE", "sha256:2"),
            ],
        );
        assert_eq!(
            String::from_utf8(out.clone()).unwrap(),
            format!(
                "# c\nA=1 # x\n\nIMGBUILD_APP_IMAGE=r/app@sha256:1\nB='q'\r\nIMGBUILD_APP_IMAGEX=keep\nlast=no-newline\n\n{PINS_HEADER}\nIMGBUILD_DB_IMAGE=sha256:2\n"
            )
        );
        // pinning again replaces in place: no second header, nothing else moves
        let again = update_env_text(
            &out,
            &[
                p("IMGBUILD_DB_IMAGE", "sha256:3"),
                p("IMGBUILD_X_IMAGE", "x@sha256:4"),
            ],
        );
        let again = String::from_utf8(again).unwrap();
        assert_eq!(again.matches(PINS_HEADER).count(), 1);
        assert!(
            again.ends_with(&format!(
                "{PINS_HEADER}\nIMGBUILD_DB_IMAGE=sha256:3\nIMGBUILD_X_IMAGE=x@sha256:4\n"
            )),
            "{again}"
        );
        assert!(again.starts_with("# c\nA=1 # x\n\nIMGBUILD_APP_IMAGE=r/app@sha256:1\n"));
        assert_eq!(
            update_env_text(b"", &[p("V", "x")]),
            format!("{PINS_HEADER}\nV=x\n").into_bytes()
        );
    }
}

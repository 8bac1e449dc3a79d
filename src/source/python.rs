//! The `python` layer source (`python = { requirements, venv, interpreter, bytecode, build }`):
//! a venv built by `imgbuild-python` from a pinned,
//! hashed requirements file, for the image's interpreter (CPython 3.11.2 on
//! bookworm), never the build host's. With `build`, requirements without a wheel are
//! built from their sdist ([`super::python_build`]).
//!
//! The fingerprint reads only the requirements file (no network, no wheels, no
//! Python process). With bytecode on, the `.pyc` files are written by the image's
//! own interpreter, copied out of the layers below this one (and of what this
//! layer's Debian packages wrote) and run through the image's loader
//! (`imgbuild_python::interpreter`), so the fingerprint also names those layers
//! (their diff_ids; this layer's packages are in its fingerprint already): they
//! decide the interpreter, the build host does not.

use anyhow::{Context, Result, bail};
use imgbuild_layer::Tree;
use imgbuild_python::{
    ImageFiles, ImageInterpreter, Requirements, VenvSpec, WheelBuilder, fetch_wheels,
    fetch_wheels_building, fingerprint, install, parse_requirements,
};
use imgbuild_store::{Digest, Store};

use serde::Deserialize;
use toml::Spanned;

use super::python_build::{self, PythonBuildSpec, SdistBuilder};
use super::{Contribution, Input, LayerCx, LayerSource, SourceKind, SourcePlan};
use crate::progress::Progress;
use crate::recipe::{Pos, RecipeCx, RecipeError};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPython {
    pub requirements: Spanned<String>,
    #[serde(default = "default_venv")]
    pub venv: String,
    #[serde(default = "default_interpreter")]
    pub interpreter: String,
    /// Precompile `.pyc` (unchecked-hash) with the image's own interpreter.
    pub bytecode: Option<bool>,
    /// Build requirements without a wheel from their sdist ([`python_build`]).
    pub build: Option<Spanned<python_build::RawPythonBuild>>,
}

fn default_venv() -> String {
    "/opt/venv".into()
}
fn default_interpreter() -> String {
    "/usr/bin/python3.11".into()
}

crate::single_key_table!(RawPythonTable, "python", RawPython);

#[derive(Clone, Debug)]
pub struct PythonSpec {
    pub requirements: std::path::PathBuf,
    pub requirements_rel: std::path::PathBuf,
    pub venv: String,
    pub interpreter: String,
    pub bytecode: bool,
    pub build: Option<python_build::PythonBuildSpec>,
    pub pos: Pos,
}

#[derive(Debug)]
pub struct PythonSource {
    pub spec: PythonSpec,
}

impl SourceKind for PythonSource {
    type Raw = RawPythonTable;

    fn parse(
        cx: &RecipeCx,
        raw: &RawPythonTable,
        _layer: &Pos,
    ) -> Result<Option<Self>, RecipeError> {
        let Some(p) = &raw.0 else {
            return Ok(None);
        };
        let rp = p.get_ref();
        let (rel, abs) = cx.project_path(&rp.requirements, "requirements")?;
        Ok(Some(PythonSource {
            spec: PythonSpec {
                requirements: abs,
                requirements_rel: rel,
                venv: rp.venv.clone(),
                interpreter: rp.interpreter.clone(),
                bytecode: rp.bytecode.unwrap_or(true),
                build: rp
                    .build
                    .as_ref()
                    .map(|b| PythonBuildSpec::parse(cx, b.get_ref()))
                    .transpose()?,
                pos: cx.pos(p),
            },
        }))
    }
}

impl LayerSource for PythonSource {
    fn kind(&self) -> &'static str {
        "python"
    }

    fn describe(&self) -> Option<String> {
        Some(format!("python: {}", self.spec.requirements_rel.display()))
    }

    fn depends_on(&self) -> Vec<(String, Pos)> {
        self.spec
            .build
            .iter()
            .map(|b| (b.image.clone(), b.image_pos.clone()))
            .collect()
    }

    fn plan<'s>(&'s self, cx: &mut LayerCx<'_, 's>) -> Result<Box<dyn SourcePlan + 's>> {
        let p = &self.spec;
        let mut spec = VenvSpec::bookworm(&p.requirements, &p.venv);
        spec.interpreter = p.interpreter.clone();
        spec.bytecode = p.bytecode;
        let at = cx.at(&p.pos);
        spec.validate().with_context(|| at.clone())?;
        let reqs = parse_requirements(&p.requirements).with_context(|| at.clone())?;
        let lower: Vec<(Digest, Digest)> = cx
            .lower_layers
            .iter()
            .map(|l| (l.descriptor.digest.clone(), l.diff_id.clone()))
            .collect();
        // A venv writes anywhere under its root: the whole lower view matters.
        cx.depends_on_whole_lower_view();
        for r in &reqs.requirements {
            cx.input(Input::versioned(
                format!("requirement {}", r.key),
                r.version.clone(),
                r.hashes
                    .iter()
                    .map(|h| h.to_string())
                    .collect::<Vec<_>>()
                    .join(" "),
            ));
        }
        cx.input(Input::hash(
            format!(
                "{} (venv, interpreter, target, options)",
                p.requirements_rel.display()
            ),
            fingerprint(&spec, &reqs),
        ));
        // the interpreter that writes the .pyc files is the one of the layers below
        if spec.bytecode {
            let diff_ids: Vec<&Digest> = lower.iter().map(|(_, d)| d).collect();
            cx.input(Input::hash(
                "lower layers (the interpreter that writes .pyc files)",
                Input::digest_of(&diff_ids),
            ));
        }
        // sdists built in a builder: its image and the build requirements decide the wheels
        let build = match &p.build {
            Some(b) => {
                let Some(builder) = cx.image(&b.image) else {
                    bail!(
                        "{}: builder image `{}` has not been built (it should be built before this recipe)",
                        cx.at(&b.image_pos),
                        b.image
                    );
                };
                let breqs = parse_requirements(&b.requirements).with_context(|| at.clone())?;
                let bspec = python_build::build_requirements_spec(&spec, b);
                cx.input(Input::shown(
                    format!("sdist builder image {}", b.image),
                    builder.manifest_digest.to_string(),
                ));
                cx.input(Input::hash(
                    format!("{} (build requirements)", b.requirements_rel.display()),
                    fingerprint(&bspec, &breqs),
                ));
                cx.input(Input::shown(
                    "sdist build timeout_secs",
                    b.timeout_secs.to_string(),
                ));
                cx.input(Input::shown(
                    "sdist build SOURCE_DATE_EPOCH",
                    super::sandbox::epoch().to_string(),
                ));
                Some((b.clone(), builder, breqs))
            }
            None => None,
        };
        Ok(Box::new(PythonPlan {
            build,
            check_reproducible: cx.session.check_reproducible,
            spec,
            reqs,
            lower,
            store: cx.session.store.clone(),
            http: cx.session.http.clone(),
            jobs: cx.session.jobs,
            progress: cx.session.progress.clone(),
            label: cx.label(),
            at,
        }))
    }
}

struct PythonPlan {
    /// `build = {...}`: its spec, the builder image, the build requirements.
    build: Option<(PythonBuildSpec, crate::cache::ImageRecord, Requirements)>,
    check_reproducible: bool,
    spec: VenvSpec,
    reqs: Requirements,
    /// The image's layers below this one: (blob digest, diff_id).
    lower: Vec<(Digest, Digest)>,
    store: Store,
    http: std::sync::Arc<super::Http>,
    jobs: usize,
    progress: Progress,
    label: String,
    /// `recipes/x.toml:LINE:COL`, for messages.
    at: String,
}

impl SourcePlan for PythonPlan {
    fn build(self: Box<Self>, tree: &mut Tree) -> Result<Contribution> {
        // the image's interpreter first: a missing one fails before any download
        let interpreter = if self.spec.bytecode {
            self.progress.status(format!(
                "{}: copying the image's {} out of the layers below",
                self.label, self.spec.interpreter
            ));
            let digests: Vec<Digest> = self.lower.iter().map(|(d, _)| d.clone()).collect();
            let mut image = ImageFiles::from_layers(&self.store, &digests)
                .with_context(|| format!("{}: reading the layers below", self.at))?;
            // what this layer's other sources wrote (Debian packages) counts too
            image.overlay(tree);
            Some(
                ImageInterpreter::materialise(
                    &image,
                    &self.spec.interpreter,
                    &self.spec.target,
                    &self.store,
                )
                .with_context(|| format!("{}: python layer", self.at))?,
            )
        } else {
            None
        };
        self.progress.status(format!(
            "{}: fetching {} wheel(s)",
            self.label,
            self.reqs.requirements.len()
        ));
        let sdist_builder = match &self.build {
            Some((b, builder, breqs)) => {
                let backends = fetch_wheels(
                    &python_build::build_requirements_spec(&self.spec, b),
                    breqs,
                    &self.store,
                    self.http.client()?,
                    self.jobs,
                )
                .with_context(|| format!("{}: build requirements", self.at))?;
                Some(SdistBuilder::new_for(
                    self.at.clone(),
                    b,
                    builder.clone(),
                    self.store.clone(),
                    self.progress.clone(),
                    &self.spec,
                    breqs,
                    backends,
                    self.check_reproducible,
                ))
            }
            None => None,
        };
        let wheels = fetch_wheels_building(
            &self.spec,
            &self.reqs,
            &self.store,
            self.http.client()?,
            self.jobs,
            sdist_builder.as_ref().map(|b| b as &dyn WheelBuilder),
        )
        .with_context(|| format!("{}: python layer", self.at))?;
        self.progress.status(format!(
            "{}: installing {} wheel(s) into {}{}",
            self.label,
            wheels.len(),
            self.spec.venv,
            if interpreter.is_some() {
                " and byte-compiling them"
            } else {
                ""
            }
        ));
        let report = install(
            &self.spec,
            &self.reqs,
            &wheels,
            &self.store,
            interpreter.as_ref(),
            self.jobs,
            tree,
        )
        .with_context(|| format!("{}: python layer", self.at))?;
        for w in &report.warnings {
            self.progress.warn(format!("{}: {w}", self.label));
        }
        let mut notes = vec![format!(
            "{} package(s), {} file(s), {} .pyc, scripts: {}",
            report.packages.len(),
            report.files,
            report.pyc_files,
            report.scripts.join(" ")
        )];
        if let Some(i) = &interpreter {
            notes.push(format!(".pyc files written by {}", i.describe()));
        }
        let mut blobs: Vec<Digest> = wheels.iter().map(|w| w.digest.clone()).collect();
        if let Some(b) = &sdist_builder {
            let used = b.used.lock().expect("used sdists");
            notes.push(format!(
                "{} wheel(s) built from their sdist in `{}`",
                used.len(),
                b.image
            ));
            blobs.extend(used.iter().cloned());
            blobs.extend(b.backends.iter().map(|w| w.digest.clone()));
        }
        Ok(Contribution { blobs, notes })
    }
}

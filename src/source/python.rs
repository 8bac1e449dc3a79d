//! The `python` layer source (`python = { requirements, venv, interpreter, bytecode }`):
//! a venv built by `imgbuild-python` from a pinned,
//! hashed requirements file, for the image's interpreter (CPython 3.11.2 on
//! bookworm), never the build host's.
//!
//! The fingerprint reads only the requirements file (no network, no wheels, no
//! Python process). With bytecode on, the `.pyc` files are written by the image's
//! own interpreter, copied out of the layers below this one (and of what this
//! layer's Debian packages wrote) and run through the image's loader
//! (`imgbuild_python::interpreter`), so the fingerprint also names those layers
//! (their diff_ids; this layer's packages are in its fingerprint already): they
//! decide the interpreter, the build host does not.

use anyhow::{Context, Result};
use imgbuild_layer::Tree;
use imgbuild_python::{
    ImageFiles, ImageInterpreter, Requirements, VenvSpec, fetch_wheels, fingerprint, install,
    parse_requirements,
};
use imgbuild_store::{Digest, Store};

use serde::Deserialize;
use toml::Spanned;

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

    fn plan<'s>(&'s self, cx: &mut LayerCx<'_, 's>) -> Result<Box<dyn SourcePlan + 's>> {
        let p = &self.spec;
        let mut spec = VenvSpec::bookworm(&p.requirements, &p.venv);
        spec.interpreter = p.interpreter.clone();
        spec.bytecode = p.bytecode;
        // wheels for the image's architecture (x86_64, aarch64): the machine word of
        // its multiarch triplet; part of the target, so of the fingerprint
        spec.target.arch = cx
            .arch()
            .triplet()
            .split('-')
            .next()
            .unwrap_or("x86_64")
            .into();
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
        Ok(Box::new(PythonPlan {
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
        let wheels = fetch_wheels(
            &self.spec,
            &self.reqs,
            &self.store,
            self.http.client()?,
            self.jobs,
        )?;
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
        let contents = crate::supply::contents::LayerContents {
            python: wheels
                .iter()
                .map(|w| crate::supply::contents::PythonDist {
                    name: w.name.clone(),
                    version: w.version.clone(),
                    wheel: w.filename.clone(),
                    sha256: w.digest.clone(),
                    license: None,
                })
                .collect(),
            ..Default::default()
        };
        Ok(Contribution {
            blobs: wheels.iter().map(|w| w.digest.clone()).collect(),
            notes,
            contents,
        })
    }
}

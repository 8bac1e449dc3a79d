//! The `python` layer source: a venv built by `imgbuild-python` from a pinned,
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

use super::ExtraSource;
use crate::cache::LayerReport;
use crate::progress::Progress;
use crate::recipe::{PythonSpec, Recipe};

pub struct PythonSource {
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

impl PythonSource {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        recipe: &Recipe,
        layer: usize,
        p: &PythonSpec,
        lower: &[LayerReport],
        store: &Store,
        http: &std::sync::Arc<super::Http>,
        jobs: usize,
        progress: &Progress,
    ) -> Result<Self> {
        let mut spec = VenvSpec::bookworm(&p.requirements, &p.venv);
        spec.interpreter = p.interpreter.clone();
        spec.bytecode = p.bytecode;
        let at = format!("{}:{}:{}", recipe.file.display(), p.pos.line, p.pos.column);
        spec.validate().with_context(|| at.clone())?;
        let reqs = parse_requirements(&p.requirements).with_context(|| at.clone())?;
        Ok(PythonSource {
            spec,
            reqs,
            lower: lower
                .iter()
                .map(|l| (l.digest.clone(), l.diff_id.clone()))
                .collect(),
            store: store.clone(),
            http: http.clone(),
            jobs,
            progress: progress.clone(),
            label: format!("[{}] layer {}", recipe.name, layer + 1),
            at,
        })
    }
}

impl ExtraSource for PythonSource {
    fn fingerprint(&self) -> String {
        // the interpreter that writes the .pyc files is the one of the layers below
        let interpreter_from: Vec<&Digest> = if self.spec.bytecode {
            self.lower.iter().map(|(_, diff_id)| diff_id).collect()
        } else {
            vec![]
        };
        serde_json::json!([
            "python-v2",
            fingerprint(&self.spec, &self.reqs),
            interpreter_from
        ])
        .to_string()
    }

    fn build(&mut self, tree: &mut Tree) -> Result<(Vec<Digest>, Vec<String>)> {
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
        Ok((wheels.iter().map(|w| w.digest.clone()).collect(), notes))
    }
}

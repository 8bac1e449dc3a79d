//! The `python` layer source: a venv built by `imgbuild-python` from a pinned,
//! hashed requirements file, for the image's interpreter (CPython 3.11.2 on
//! bookworm), never the build host's.
//!
//! The fingerprint reads only the requirements file (no network, no wheels); with
//! bytecode on, it also names the host interpreter that compiles the `.pyc` files,
//! since another patch release may write other bytes.

use anyhow::{Context, Result};
use imgbuild_layer::Tree;
use imgbuild_python::{
    Requirements, VenvSpec, fetch_wheels, fingerprint, install, parse_requirements,
};
use imgbuild_store::{Digest, Store};

use super::ExtraSource;
use crate::progress::Progress;
use crate::recipe::{PythonSpec, Recipe};

pub struct PythonSource {
    spec: VenvSpec,
    reqs: Requirements,
    host_python: Option<String>,
    store: Store,
    http: std::sync::Arc<super::Http>,
    jobs: usize,
    progress: Progress,
    label: String,
}

impl PythonSource {
    pub fn new(
        recipe: &Recipe,
        layer: usize,
        p: &PythonSpec,
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
        let host_python = if p.bytecode {
            host_python_version()
        } else {
            None
        };
        Ok(PythonSource {
            spec,
            reqs,
            host_python,
            store: store.clone(),
            http: http.clone(),
            jobs,
            progress: progress.clone(),
            label: format!("[{}] layer {}", recipe.name, layer + 1),
        })
    }
}

/// `Python 3.11.x` of the host's same-minor interpreter, if any.
fn host_python_version() -> Option<String> {
    let out = std::process::Command::new("python3.11")
        .arg("--version")
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

impl ExtraSource for PythonSource {
    fn fingerprint(&self) -> String {
        serde_json::json!([
            "python-v1",
            fingerprint(&self.spec, &self.reqs),
            self.host_python
        ])
        .to_string()
    }

    fn build(&mut self, tree: &mut Tree) -> Result<(Vec<Digest>, Vec<String>)> {
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
            self.jobs.max(4),
        )?;
        self.progress.status(format!(
            "{}: installing {} wheel(s) into {}",
            self.label,
            wheels.len(),
            self.spec.venv
        ));
        let report = install(&self.spec, &self.reqs, &wheels, &self.store, tree)?;
        for w in &report.warnings {
            self.progress.warn(format!("{}: {w}", self.label));
        }
        let notes = vec![format!(
            "{} package(s), {} file(s), {} .pyc, scripts: {}",
            report.packages.len(),
            report.files,
            report.pyc_files,
            report.scripts.join(" ")
        )];
        Ok((wheels.iter().map(|w| w.digest.clone()).collect(), notes))
    }
}

//! The `python` layer source (`python = { requirements, venv, interpreter, bytecode, build }`):
//! a venv built by `imgbuild-python` from a pinned, hashed requirements file, for the
//! image's interpreter, never the build host's. With `build`, requirements without a
//! wheel are built from their sdist ([`super::python_build`]).
//!
//! The target (CPython version, ABI, glibc version, architecture) is read from the
//! image at build time (`imgbuild_python::image_target`): the layers below this one
//! and what this layer's Debian packages wrote. `interpreter` names any CPython 3 the
//! image has; without it, the image's own (`/usr/local/bin/python3`, then
//! `/usr/bin/python3`, then its only `python3.Y`).
//!
//! The fingerprint reads only the requirements file (no network, no wheels, no
//! Python process, no layer blob): what decides the target and the interpreter that
//! writes the `.pyc` files is the image below, so the fingerprint names those layers
//! (their diff_ids; this layer's packages are in its fingerprint already), with
//! bytecode on or off. Reading the target itself at plan time would cost a pass over
//! every layer below on every build, cached or not; the layers decide it, so naming
//! them is the same contract at no cost (a change below that leaves the target alone
//! rebuilds the venv, which a change below does with bytecode on anyway).

use anyhow::{Context, Result, bail};
use imgbuild_layer::Tree;
use imgbuild_python::{
    ImageFiles, Requirements, VenvSpec, WheelBuilder, fetch_wheels, fetch_wheels_building, install,
    parse_requirements, read_target, request_fingerprint, validate_paths,
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
    /// The image's interpreter (absolute in-image path); default: the one it has.
    pub interpreter: Option<String>,
    /// Precompile `.pyc` (unchecked-hash) with the image's own interpreter.
    pub bytecode: Option<bool>,
    /// Build requirements without a wheel from their sdist ([`python_build`]).
    pub build: Option<Spanned<python_build::RawPythonBuild>>,
}

fn default_venv() -> String {
    "/opt/venv".into()
}

crate::single_key_table!(RawPythonTable, "python", RawPython);

#[derive(Clone, Debug)]
pub struct PythonSpec {
    pub requirements: std::path::PathBuf,
    pub requirements_rel: std::path::PathBuf,
    pub venv: String,
    /// `None`: the image's own (see the module docs).
    pub interpreter: Option<String>,
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

    fn reads_lower_layers(&self) -> bool {
        self.spec.bytecode
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
        // the platform being built: the image's interpreter must be of its architecture
        let platform_arch = cx.arch();
        let at = cx.at(&p.pos);
        validate_paths(&p.venv, p.interpreter.as_deref()).with_context(|| at.clone())?;
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
                "{} (venv, interpreter, options)",
                p.requirements_rel.display()
            ),
            request_fingerprint(&p.venv, p.interpreter.as_deref(), p.bytecode, &reqs),
        ));
        // the layers below decide the target (interpreter version, C library,
        // architecture) and the interpreter that writes the .pyc files
        let diff_ids: Vec<&Digest> = lower.iter().map(|(_, d)| d).collect();
        cx.input(Input::hash(
            "lower layers (the Python target and the interpreter that writes .pyc files)",
            Input::digest_of(&diff_ids),
        ));
        // sdists built in a builder: its image and the build requirements decide the
        // wheels (with the target, which the layers below decide)
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
                cx.input(Input::shown(
                    format!("sdist builder image {}", b.image),
                    builder.manifest_digest.to_string(),
                ));
                cx.input(Input::hash(
                    format!("{} (build requirements)", b.requirements_rel.display()),
                    request_fingerprint(python_build::BUILD_VENV, None, false, &breqs),
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
            platform_arch,
            debian: &cx.session.debian,
            source: p.clone(),
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

struct PythonPlan<'s> {
    /// The architecture of the platform being built.
    platform_arch: imgbuild_debian::Arch,
    /// For the build machine's build of a foreign image's interpreter.
    debian: &'s super::debian::DebianInputs,
    source: PythonSpec,
    /// `build = {...}`: its spec, the builder image, the build requirements.
    build: Option<(PythonBuildSpec, crate::cache::ImageRecord, Requirements)>,
    check_reproducible: bool,
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

impl SourcePlan for PythonPlan<'_> {
    fn build(self: Box<Self>, tree: &mut Tree) -> Result<Contribution> {
        // the target first, from the image: a missing interpreter fails before any download
        self.progress.status(format!(
            "{}: reading the Python target from the layers below",
            self.label
        ));
        let digests: Vec<Digest> = self.lower.iter().map(|(d, _)| d.clone()).collect();
        let mut image = ImageFiles::from_layers(&self.store, &digests)
            .with_context(|| format!("{}: reading the layers below", self.at))?;
        // what this layer's other sources wrote (Debian packages) counts too
        image.overlay(tree);
        let found = read_target(&image, self.source.interpreter.as_deref())
            .with_context(|| format!("{}: python layer", self.at))?;
        let want = super::stdlib_pyc::arch_machine(self.platform_arch);
        if found.target.arch != want {
            anyhow::bail!(
                "{}: python layer: the image's {} is for {}, but this image is built for {} ({want})",
                self.at,
                found.interpreter,
                found.target.arch,
                self.platform_arch
            );
        }
        let spec = VenvSpec::for_image(
            &self.source.requirements,
            &self.source.venv,
            self.source.bytecode,
            &found,
        );
        spec.validate()
            .with_context(|| format!("{}: python layer", self.at))?;
        let interpreter = if spec.bytecode {
            self.progress.status(format!(
                "{}: copying the image's {} out of the layers below",
                self.label, spec.interpreter
            ));
            Some(
                super::native_python::pyc_writer(self.debian, &image, &found, &self.store)
                    .with_context(|| format!("{}: python layer", self.at))?,
            )
        } else {
            None
        };
        drop(image);
        self.progress.status(format!(
            "{}: fetching {} wheel(s)",
            self.label,
            self.reqs.requirements.len()
        ));
        let sdist_builder = match &self.build {
            Some((b, builder, breqs)) => {
                let backends = fetch_wheels(
                    &python_build::build_requirements_spec(&spec, b),
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
                    &spec,
                    breqs,
                    backends,
                    self.check_reproducible,
                ))
            }
            None => None,
        };
        let wheels = fetch_wheels_building(
            &spec,
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
            spec.venv,
            if interpreter.is_some() {
                " and byte-compiling them"
            } else {
                ""
            }
        ));
        let report = install(
            &spec,
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
        let mut notes = vec![
            format!(
                "target: {} ({}; version from {}, glibc from {})",
                spec.target, spec.interpreter, found.version_from, found.libc_from
            ),
            format!(
                "{} package(s), {} file(s), {} .pyc, scripts: {}",
                report.packages.len(),
                report.files,
                report.pyc_files,
                report.scripts.join(" ")
            ),
        ];
        if let Some(i) = &interpreter {
            notes.push(format!(".pyc files written by {}", i.describe()));
        }
        let built_from = sdist_builder
            .as_ref()
            .map(|b| b.built_from.lock().expect("built from").clone())
            .unwrap_or_default();
        let contents = crate::supply::contents::LayerContents {
            python: wheels
                .iter()
                .map(|w| crate::supply::contents::PythonDist {
                    name: w.name.clone(),
                    version: w.version.clone(),
                    wheel: w.filename.clone(),
                    sha256: w.digest.clone(),
                    license: None,
                    built_from: built_from.get(&w.key).cloned(),
                })
                .collect(),
            ..Default::default()
        };
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
        Ok(Contribution {
            blobs,
            notes,
            contents,
        })
    }
}

//! Python requirements built from their sdist: the `build` key of the python layer.
//!
//! ```toml
//! [[layers]]
//! python = { requirements = "layers/venv/requirements.txt",
//!            build = { image = "py-builder", requirements = "layers/venv/build-requirements.txt" } }
//! ```
//!
//! A requirement with no wheel for the target is built from its sdist (pinned and
//! hashed in the requirements file like a wheel) by PEP 517 `build_wheel`, run by the
//! builder image's interpreter (the layer's `interpreter` path) in the same sandbox as
//! build steps ([`super::sandbox`]): rooted at the builder recipe's filesystem, no
//! network, `SOURCE_DATE_EPOCH`, the sdist read-only at `/sdist`, a writable `/build`
//! (the sdist is unpacked there, and built in place) and `/out` (the wheel). The build
//! requirements (PEP 517 backends: setuptools, wheel, ...; pinned with hashes, wheels
//! only) are not installed: each wheel, unpacked once in the store, is mounted
//! read-only at `/pep517/<n>` and put on `PYTHONPATH`, as pip's
//! `--no-build-isolation` would see them installed. The frontend is the few lines of
//! [`FRONTEND`]: no pip, no `build` package, nothing fetched in the sandbox.
//!
//! The built wheel is stored as a blob and recorded ([`Bucket::PythonBuilt`]) under
//! (sdist sha256, builder image manifest digest, build requirements, target,
//! interpreter, `SOURCE_DATE_EPOCH`): an unchanged sdist is built once per store. It is
//! then installed like any other wheel; the linkage check of the layer
//! ([`super::linkage`]) sees its extension modules like any other ELF file.
//! `--check-reproducible` builds it twice and names the wheel entries that differ.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use anyhow::{Context, Result, bail};
use imgbuild_python::{Requirements, SelectedWheel, VenvSpec, WheelBuilder};
use imgbuild_store::{Bucket, Digest, Store};
use serde::Deserialize;
use sha2::Digest as _;
use toml::Spanned;

use super::sandbox::{Sandbox, TempDir, builder_path, builder_root, emulation, epoch};
use crate::cache::ImageRecord;
use crate::progress::Progress;
use crate::recipe::{Pos, RecipeCx, RecipeError};

/// A build of one sdist runs at most this long unless `timeout_secs` says otherwise.
const DEFAULT_TIMEOUT_SECS: u64 = 1800;

/// The PEP 517 frontend, run by the builder's interpreter: unpacks the sdist into
/// `/build`, reads `[build-system]` of its `pyproject.toml` (default: setuptools'
/// legacy backend, as pip does for a project without one), and calls the backend's
/// `build_wheel` with `/out`. The backend's own `get_requires_for_build_wheel` is not
/// asked: what it needs must be in the build requirements file.
pub const FRONTEND: &str = r#"
import importlib, os, sys, tarfile, tomllib, zipfile
sdist = sys.argv[1]
if sdist.endswith(".zip"):
    zipfile.ZipFile(sdist).extractall("/build")
else:
    with tarfile.open(sdist) as t:
        if hasattr(tarfile, "data_filter"):
            t.extractall("/build", filter="data")
        else:
            t.extractall("/build")
top = sorted(os.listdir("/build"))
src = os.path.join("/build", top[0]) if len(top) == 1 and os.path.isdir(os.path.join("/build", top[0])) else "/build"
os.chdir(src)
backend, paths = "setuptools.build_meta:__legacy__", []
if os.path.exists("pyproject.toml"):
    with open("pyproject.toml", "rb") as f:
        bs = tomllib.load(f).get("build-system", {})
    backend, paths = bs.get("build-backend", backend), bs.get("backend-path", [])
sys.path[:0] = [os.path.abspath(p) for p in paths]
module, _, attr = backend.partition(":")
hooks = importlib.import_module(module)
for a in filter(None, attr.split(".")):
    hooks = getattr(hooks, a)
print("imgbuild: build_wheel of", backend, "in", src, flush=True)
print("imgbuild: built", hooks.build_wheel("/out"), flush=True)
"#;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPythonBuild {
    /// A recipe whose filesystem is the sandbox's root.
    pub image: Spanned<String>,
    /// Pinned, hashed build requirements (PEP 517 backends), wheels only.
    pub requirements: Spanned<String>,
    pub timeout_secs: Option<Spanned<u64>>,
}

#[derive(Clone, Debug)]
pub struct PythonBuildSpec {
    pub image: String,
    pub image_pos: Pos,
    pub requirements: PathBuf,
    pub requirements_rel: PathBuf,
    pub timeout_secs: u64,
}

impl PythonBuildSpec {
    pub fn parse(cx: &RecipeCx, raw: &RawPythonBuild) -> Result<PythonBuildSpec, RecipeError> {
        let (rel, abs) = cx.project_path(&raw.requirements, "requirements")?;
        let timeout_secs = match &raw.timeout_secs {
            Some(t) if *t.get_ref() == 0 => {
                return Err(cx.err(t, "timeout_secs must be at least 1"));
            }
            Some(t) => *t.get_ref(),
            None => DEFAULT_TIMEOUT_SECS,
        };
        Ok(PythonBuildSpec {
            image: raw.image.get_ref().clone(),
            image_pos: cx.pos(&raw.image),
            requirements: abs,
            requirements_rel: rel,
            timeout_secs,
        })
    }
}

/// The build requirements' spec: the layer's target and interpreter, nothing compiled.
/// Where the build requirements are installed in the sandbox.
pub const BUILD_VENV: &str = "/pep517";

pub fn build_requirements_spec(layer: &VenvSpec, b: &PythonBuildSpec) -> VenvSpec {
    VenvSpec {
        requirements: b.requirements.clone(),
        venv: BUILD_VENV.into(),
        interpreter: layer.interpreter.clone(),
        bytecode: false,
        target: layer.target.clone(),
    }
}

/// Builds wheels from sdists in the sandbox; made once per python layer build.
pub struct SdistBuilder {
    pub label: String,
    pub image: String,
    pub builder: ImageRecord,
    pub store: Store,
    pub progress: Progress,
    /// [`imgbuild_python::fingerprint`] of the build requirements.
    pub build_requirements: String,
    /// The build requirements' wheels, unpacked in the store.
    pub backends: Vec<SelectedWheel>,
    pub interpreter: String,
    pub target: String,
    pub timeout_secs: u64,
    pub check_reproducible: bool,
    /// The sdists built (or found built): the layer keeps their blobs.
    pub used: Mutex<Vec<Digest>>,
    /// PEP 503 name -> the sdist (or git archive) its wheel was built from: (file
    /// name, sha256), for the SBOM.
    pub built_from: Mutex<std::collections::BTreeMap<String, (String, Digest)>>,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Built {
    filename: String,
    digest: Digest,
}

impl SdistBuilder {
    #[allow(clippy::too_many_arguments)]
    pub fn new_for(
        label: String,
        spec: &PythonBuildSpec,
        builder: ImageRecord,
        store: Store,
        progress: Progress,
        layer: &VenvSpec,
        build_reqs: &Requirements,
        backends: Vec<SelectedWheel>,
        check_reproducible: bool,
    ) -> SdistBuilder {
        let bspec = build_requirements_spec(layer, spec);
        SdistBuilder {
            label,
            image: spec.image.clone(),
            builder,
            store,
            progress,
            build_requirements: imgbuild_python::fingerprint(&bspec, build_reqs),
            backends,
            interpreter: layer.interpreter.clone(),
            target: format!("{:?}", layer.target),
            timeout_secs: spec.timeout_secs,
            check_reproducible,
            used: Mutex::new(vec![]),
            built_from: Mutex::new(Default::default()),
        }
    }

    fn key(&self, sdist: &Digest) -> String {
        let text = format!(
            "{}\nsdist {sdist}\nbuilder {}\nbuild requirements {}\ntarget {}\ninterpreter {}\nSOURCE_DATE_EPOCH {}\n",
            Bucket::PythonBuilt.name(),
            self.builder.manifest_digest,
            self.build_requirements,
            self.target,
            self.interpreter,
            epoch()
        );
        hex::encode(sha2::Sha256::digest(text.as_bytes()))
    }

    fn build(&self, sdist: &imgbuild_python::Sdist) -> Result<(String, Digest)> {
        let key = self.key(&sdist.digest);
        if let Some(b) = self
            .store
            .read_record(Bucket::PythonBuilt, &key)?
            .and_then(|b| serde_json::from_slice::<Built>(&b).ok())
            .filter(|b| self.store.has_blob(&b.digest))
        {
            return Ok((b.filename, b.digest));
        }
        let emulated = emulation(&self.store, &self.builder, &self.image)
            .with_context(|| self.label.clone())?;
        match &emulated {
            Some(q) => self.progress.line(format!(
                "{}: building {} from its sdist in builder `{}`, under emulation ({q}): \
                 the builder is of another architecture (slow)",
                self.label, sdist.filename, self.image
            )),
            None => self.progress.status(format!(
                "{}: building {} from its sdist in builder `{}`",
                self.label, sdist.filename, self.image
            )),
        }
        let root = builder_root(&self.store, &self.builder)
            .with_context(|| format!("unpacking builder image `{}`", self.image))?;
        let tmp = TempDir(self.store.temp_dir()?);
        let sdist_dir = tmp.0.join("sdist");
        std::fs::create_dir(&sdist_dir)?;
        let sdist_file = sdist_dir.join(&sdist.filename);
        let blob = self.store.blob_path(&sdist.digest);
        if std::fs::hard_link(&blob, &sdist_file).is_err() {
            std::fs::copy(&blob, &sdist_file)
                .with_context(|| format!("failed to copy {}", blob.display()))?;
        }
        let first = self.run(&root, &tmp.0, "1", &sdist.filename)?;
        let (filename, path) = first;
        if self.check_reproducible {
            let (again_name, again) = self.run(&root, &tmp.0, "2", &sdist.filename)?;
            let differ = wheel_differences(&path, &again)?;
            if again_name != filename || !differ.is_empty() {
                bail!(
                    "--check-reproducible: two builds of {} differ ({filename} / {again_name}): {} entr(ies):\n  {}",
                    sdist.filename,
                    differ.len(),
                    differ.join("\n  ")
                );
            }
        }
        let mut w = self.store.writer()?;
        std::io::copy(
            &mut std::fs::File::open(&path)
                .with_context(|| format!("failed to open {}", path.display()))?,
            &mut w,
        )?;
        let (digest, _) = w.commit()?;
        let record = serde_json::to_vec(&Built {
            filename: filename.clone(),
            digest: digest.clone(),
        })?;
        self.store
            .write_record(Bucket::PythonBuilt, &key, &record)?;
        Ok((filename, digest))
    }

    /// One run of the frontend in a fresh `/build` and `/out` under `tmp`: the wheel
    /// it wrote (name, host path).
    fn run(&self, root: &Path, tmp: &Path, n: &str, sdist: &str) -> Result<(String, PathBuf)> {
        let build = tmp.join(format!("build{n}"));
        let out = tmp.join(format!("out{n}"));
        std::fs::create_dir(&build)?;
        std::fs::create_dir(&out)?;
        let mut inputs = vec![(tmp.join("sdist"), "/sdist".to_owned())];
        let mut python_path = vec![];
        for (i, w) in self.backends.iter().enumerate() {
            let at = format!("/pep517/{i}");
            inputs.push((w.unpacked.files_dir.clone(), at.clone()));
            python_path.push(at);
        }
        let mut env = BTreeMap::new();
        env.insert("PYTHONPATH".to_owned(), python_path.join(":"));
        // no .pyc files of the backends' sources (read-only anyway), no random hash seed
        env.insert("PYTHONDONTWRITEBYTECODE".to_owned(), "1".to_owned());
        env.insert("PYTHONHASHSEED".to_owned(), "0".to_owned());
        let label = format!("{}: building {sdist} in `{}`", self.label, self.image);
        Sandbox {
            label: &label,
            root,
            path: builder_path(&self.store, &self.builder),
            env,
            inputs,
            outputs: vec![(build, "/build".into()), (out.clone(), "/out".into())],
            workdir: "/build".into(),
            command: vec![
                self.interpreter.clone(),
                "-c".into(),
                FRONTEND.into(),
                format!("/sdist/{sdist}"),
            ],
            timeout_secs: self.timeout_secs,
        }
        .run(&tmp.join(format!("log{n}")))?;
        let mut wheels = vec![];
        for e in std::fs::read_dir(&out)? {
            let name = e?.file_name().to_string_lossy().into_owned();
            if name.ends_with(".whl") {
                wheels.push(name);
            }
        }
        match wheels.as_slice() {
            [one] => Ok((one.clone(), out.join(one))),
            _ => bail!(
                "{label}: build_wheel wrote {} wheel(s) into /out ({}), not one",
                wheels.len(),
                wheels.join(", ")
            ),
        }
    }
}

impl WheelBuilder for SdistBuilder {
    fn fetch_git(
        &self,
        r: &imgbuild_python::Requirement,
        pin: &imgbuild_python::GitPin,
    ) -> Result<(String, Digest), String> {
        self.progress.status(format!(
            "{}: {} from {} at {}",
            self.label,
            r.name,
            imgbuild_python::error::redact_url(&pin.url),
            pin.commit
        ));
        let a = super::git::archive(&self.store, &pin.url, &pin.commit, &r.key)
            .map_err(|e| format!("{e:#}"))?;
        self.used
            .lock()
            .expect("used sdists")
            .push(a.digest.clone());
        self.progress.status(format!(
            "{}: {} {} is tree {}",
            self.label, r.name, pin.commit, a.tree
        ));
        Ok((a.filename, a.digest))
    }

    fn build_wheel(&self, sdist: &imgbuild_python::Sdist) -> Result<(String, Digest), String> {
        let r = self.build(sdist).map_err(|e| format!("{e:#}"));
        if r.is_ok() {
            self.used
                .lock()
                .expect("used sdists")
                .push(sdist.digest.clone());
            self.built_from.lock().expect("built from").insert(
                sdist.key.clone(),
                (sdist.filename.clone(), sdist.digest.clone()),
            );
        }
        r
    }
}

/// The entries of two wheels (zip files) whose names, bytes or attributes differ.
fn wheel_differences(a: &Path, b: &Path) -> Result<Vec<String>> {
    fn entries(p: &Path) -> Result<BTreeMap<String, String>> {
        let mut z = zip::ZipArchive::new(std::fs::File::open(p)?)
            .with_context(|| format!("{} is not a zip file", p.display()))?;
        let mut out = BTreeMap::new();
        for i in 0..z.len() {
            let mut f = z.by_index(i)?;
            let mut bytes = vec![];
            f.read_to_end(&mut bytes)?;
            let v = format!(
                "{} {:?} {:?}",
                hex::encode(sha2::Sha256::digest(&bytes)),
                f.unix_mode(),
                f.last_modified()
            );
            out.insert(f.name()?.into_owned(), v);
        }
        Ok(out)
    }
    let (ea, eb) = (entries(a)?, entries(b)?);
    let names: std::collections::BTreeSet<&String> = ea.keys().chain(eb.keys()).collect();
    let mut differ: Vec<String> = names
        .into_iter()
        .filter(|n| ea.get(*n) != eb.get(*n))
        .cloned()
        .collect();
    if differ.is_empty() && std::fs::read(a)? != std::fs::read(b)? {
        differ.push("(the zip file's own bytes: entry order or headers)".into());
    }
    Ok(differ)
}

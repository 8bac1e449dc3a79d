//! The typed errors of this crate. Every variant names the file, line, package, wheel or
//! URL involved (URLs with their credentials removed) and, where it helps, what to do.

use std::path::PathBuf;

use imgbuild_layer::TreeError;
use imgbuild_store::{Digest, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{op} `{path}`: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Tree(#[from] TreeError),
    #[error("{}:{line}: {msg}", file.display())]
    Requirements {
        file: PathBuf,
        line: usize,
        msg: String,
    },
    #[error("invalid venv spec: {0}")]
    Spec(String),
    #[error("pip configuration `{}`: {msg}", path.display())]
    PipConfig { path: PathBuf, msg: String },
    #[error("package index {url}: {msg}")]
    Index { url: String, msg: String },
    #[error("HTTP request to {url} failed: {msg}")]
    Http { url: String, msg: String },
    #[error(
        "{package} {version} (requirements line {line}): none of the files for this version on the index matches the \
         --hash values of the requirement; files on the index: [{}]. Regenerate the hashes \
         (pip-compile/uv pip compile --generate-hashes) or check that the index serves the expected files",
        files.join(", ")
    )]
    NoHashMatch {
        package: String,
        version: String,
        line: usize,
        files: Vec<String>,
    },
    #[error(
        "{package} {version}: no wheel is compatible with {target}{}; files of this version that match the hashes: [{}]. \
         pin a version that ships a compatible wheel, build one and serve it from your index, or build it from its \
         sdist: add `build = {{ image = \"<builder recipe>\", requirements = \"<build-requirements.txt>\" }}` to the \
         python layer",
        requires_python.as_deref().map(|r| format!(" (or its Requires-Python `{r}` excludes the target)")).unwrap_or_default(),
        files.join(", ")
    )]
    NoSuitableWheel {
        package: String,
        version: String,
        target: String,
        files: Vec<String>,
        requires_python: Option<String>,
    },
    #[error(
        "{package} {version} (requirements line {line}): building a wheel from its sdist {sdist} failed: {msg}"
    )]
    SdistBuild {
        package: String,
        version: String,
        line: usize,
        sdist: String,
        msg: String,
    },
    #[error(
        "{what}: downloaded content is {actual}, but {expected_from} says {expected}; nothing was stored"
    )]
    HashMismatch {
        what: String,
        expected: String,
        expected_from: &'static str,
        actual: Digest,
    },
    #[error("wheel {wheel}: {msg}")]
    BadWheel { wheel: String, msg: String },
    #[error("wheel {wheel}: entry `{entry}` refused: {why}")]
    UnsafeWheelEntry {
        wheel: String,
        entry: String,
        why: &'static str,
    },
    #[error("{package} {version} requires Python `{requires}`, which excludes the target {target}")]
    RequiresPython {
        package: String,
        version: String,
        requires: String,
        target: String,
    },
    #[error("dependency closure of {} is incomplete:\n  {}\nAdd the missing packages to the requirements and recompile them with hashes.", file.display(), problems.join("\n  "))]
    Closure {
        file: PathBuf,
        problems: Vec<String>,
    },
    #[error("byte-compilation with {interpreter} failed: {msg}")]
    Bytecode { interpreter: String, msg: String },
    #[error(
        "cannot byte-compile with the image's interpreter `{path}`: {msg}. The .pyc files are written by the \
         image's own interpreter (never the build host's), run on this machine through the image's loader; \
         set `bytecode = false` to build without them"
    )]
    Interpreter { path: String, msg: String },
    #[error("the venv's target is read from the image's interpreter `{path}`: {msg}")]
    Target { path: String, msg: String },
    #[error("lower layer: {0}")]
    Image(#[from] imgbuild_layer::image::ImageError),
    #[error(
        "wheel {wheel}: `{path}` would replace the venv's own `{path}`; refused (the venv skeleton: pyvenv.cfg, bin/python*, lib64)"
    )]
    ReservedPath { wheel: String, path: String },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

pub(crate) fn io_err(
    op: &'static str,
    path: impl Into<PathBuf>,
) -> impl FnOnce(std::io::Error) -> Error {
    let path = path.into();
    move |source| Error::Io { op, path, source }
}

/// A URL with any `user:password@` removed, for messages.
pub fn redact_url(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(mut u) => {
            if !u.username().is_empty() || u.password().is_some() {
                let _ = u.set_username("");
                let _ = u.set_password(None);
            }
            u.to_string()
        }
        Err(_) => match (url.find("://"), url.find('@')) {
            (Some(s), Some(a)) if a > s => format!("{}{}", &url[..s + 3], &url[a + 1..]),
            _ => url.to_owned(),
        },
    }
}

//! The raw TOML schema of a recipe, exactly as written by users.
//!
//! Serde types only: unknown keys are rejected here (`deny_unknown_fields`), and
//! values that need a source position for later errors are `Spanned`. Meaning is
//! given by [`super::model`], which turns these into a validated, immutable model.

use std::collections::BTreeMap;

use serde::Deserialize;
use toml::Spanned;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRecipe {
    pub from: Option<Spanned<String>>,
    /// Where `imgbuild push` sends the image, e.g. `docker.io/ORG/NAME`.
    pub repository: Option<Spanned<String>>,
    pub tags: Option<Vec<Spanned<String>>>,
    #[serde(default)]
    pub config: RawConfig,
    #[serde(default)]
    pub layers: Vec<Spanned<RawLayer>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    pub entrypoint: Option<Vec<Spanned<String>>>,
    pub cmd: Option<Vec<Spanned<String>>>,
    pub env: Option<BTreeMap<Spanned<String>, Spanned<String>>>,
    pub workdir: Option<Spanned<String>>,
    pub user: Option<Spanned<String>>,
    pub ports: Option<Vec<Spanned<String>>>,
    pub volumes: Option<Vec<Spanned<String>>>,
    pub labels: Option<BTreeMap<Spanned<String>, Spanned<String>>>,
    pub stop_signal: Option<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLayer {
    #[serde(default)]
    pub files: Vec<Spanned<RawFile>>,
    #[serde(default)]
    pub dirs: Vec<Spanned<RawDir>>,
    #[serde(default)]
    pub symlinks: Vec<Spanned<RawSymlink>>,
    #[serde(default)]
    pub users: Vec<Spanned<RawUser>>,
    #[serde(default)]
    pub groups: Vec<Spanned<RawGroup>>,
    pub debian: Option<Spanned<RawDebian>>,
    pub python: Option<Spanned<RawPython>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFile {
    pub src: Option<Spanned<String>>,
    pub dest: Spanned<String>,
    pub content: Option<String>,
    pub mode: Option<Spanned<String>>,
    pub owner: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDir {
    pub path: Spanned<String>,
    pub mode: Option<Spanned<String>>,
    pub owner: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSymlink {
    pub path: Spanned<String>,
    pub target: String,
    pub owner: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUser {
    pub name: String,
    pub uid: u32,
    pub gid: Option<u32>,
    #[serde(default)]
    pub gecos: String,
    pub home: Option<String>,
    pub shell: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawGroup {
    pub name: String,
    pub gid: u32,
    #[serde(default)]
    pub members: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDebian {
    pub packages: Vec<String>,
    #[serde(default)]
    pub exclude: Vec<String>,
    #[serde(default)]
    pub remove_paths: Vec<String>,
    /// The base fix-up (accounts, nsswitch, /tmp, /run, merged-/usr); on by default.
    pub base: Option<bool>,
    /// Byte-compile the shipped CPython standard library with the layer's own
    /// interpreter; by default when the layer ships both.
    pub bytecode: Option<bool>,
}

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

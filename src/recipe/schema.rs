//! The raw TOML schema of a recipe, exactly as written by users.
//!
//! Serde types only: unknown keys are rejected here (`deny_unknown_fields`), and
//! values that need a source position for later errors are `Spanned`. Meaning is
//! given by [`super::model`], which turns these into a validated, immutable model.
//! A layer's tables belong to the layer sources ([`crate::source::RawLayer`]).

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
    pub layers: Vec<Spanned<crate::source::RawLayer>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    pub entrypoint: Option<Vec<String>>,
    pub cmd: Option<Vec<String>>,
    pub env: Option<BTreeMap<String, String>>,
    pub workdir: Option<String>,
    pub user: Option<String>,
    pub ports: Option<Vec<Spanned<String>>>,
    pub volumes: Option<Vec<String>>,
    pub labels: Option<BTreeMap<String, String>>,
    pub stop_signal: Option<String>,
}

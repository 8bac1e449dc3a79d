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
    /// The project's platforms this image is built for (default: all of them).
    pub platforms: Option<Spanned<Vec<Spanned<String>>>>,
    #[serde(default)]
    pub config: RawConfig,
    #[serde(default)]
    pub layers: Vec<Spanned<crate::source::RawLayer>>,
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

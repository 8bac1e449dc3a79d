//! Base images from a registry: `from = "REGISTRY/REPO@sha256:..."`, or a tag whose
//! digest is recorded in `imgbuild.lock`.
//!
//! The image is pulled once into the store (an index resolved to linux/amd64, every
//! blob verified while it streams in) and found there afterwards without network.
//! Its layers come first in the new image, byte for byte; its config is the config
//! the recipe's own `[config]` merges over.

use anyhow::{Context, Result, bail};
use imgbuild_registry::{Client, ClientOptions, Credentials, Reference};
use imgbuild_store::{Digest, Store};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::cache::LayerReport;
use crate::oci::HistoryEntry;
use crate::recipe::{ConfigSpec, Recipe};
use crate::source::Session;

const BASE_BUCKET: &str = "bases-v1";

#[derive(Serialize, Deserialize)]
struct BaseRecord {
    manifest: Digest,
}

/// A base image, ready to build on.
pub struct BaseImage {
    pub reference: String,
    pub layers: Vec<LayerReport>,
    pub config: ConfigSpec,
    pub history: Vec<HistoryEntry>,
    /// The blobs (manifest, config, layers), kept by gc.
    pub blobs: Vec<Digest>,
}

pub fn load(session: &Session, recipe: &Recipe, raw: &str) -> Result<BaseImage> {
    let at = format!(
        "{}:{}:{}",
        recipe.file.display(),
        recipe.from.pos.line,
        recipe.from.pos.column
    );
    let reference: Reference = raw
        .parse()
        .with_context(|| format!("{at}: `from = \"{raw}\"` is not an image reference"))?;
    let store = &session.store;
    let client = || {
        Client::new(
            ClientOptions {
                parallelism: session.jobs.clamp(2, 8),
                ..Default::default()
            },
            Credentials::from_process_env(),
        )
    };
    // (bound first: a guard in the match scrutinee would live through the arms)
    let locked_digest = session
        .debian
        .lock
        .lock()
        .expect("lock")
        .bases
        .get(raw)
        .cloned();
    let pinned = match &reference.digest {
        Some(d) => d.clone(),
        None => match locked_digest {
            Some(d) => d,
            None if session.debian.locked => bail!(
                "{at}: `from = \"{raw}\"` has no digest and none is recorded in {}; run `imgbuild lock` (or pin it: `{raw}@sha256:...`)",
                crate::lockfile::FILE
            ),
            None => {
                let d = client()?
                    .resolve(&reference)
                    .with_context(|| format!("{at}: resolving {raw}"))?;
                session
                    .progress
                    .line(format!("[{}] base {raw} resolved to {d}", recipe.name));
                session
                    .debian
                    .lock
                    .lock()
                    .expect("lock")
                    .bases
                    .insert(raw.to_owned(), d.clone());
                d
            }
        },
    };
    let manifest_digest = match cached(store, &pinned)? {
        Some(m) => m,
        None => {
            session
                .progress
                .status(format!("[{}] pulling {raw}", recipe.name));
            let pulled = client()?
                .pull(store, &reference.with_digest(pinned.clone()))
                .with_context(|| format!("{at}: pulling {raw}"))?;
            store.write_record(
                BASE_BUCKET,
                pinned.hex(),
                &serde_json::to_vec(&BaseRecord {
                    manifest: pulled.manifest_digest.clone(),
                })?,
            )?;
            session.progress.line(format!(
                "[{}] pulled {raw} ({} downloaded, {} blob(s) already here)",
                recipe.name,
                crate::progress::human(pulled.bytes_downloaded),
                pulled.blobs_present
            ));
            pulled.manifest_digest
        }
    };
    let manifest: Value = serde_json::from_slice(&store.read_bytes(&manifest_digest)?)?;
    let config_digest: Digest = manifest["config"]["digest"]
        .as_str()
        .unwrap_or_default()
        .parse()?;
    let config: Value = serde_json::from_slice(&store.read_bytes(&config_digest)?)?;
    let diff_ids: Vec<Digest> = config["rootfs"]["diff_ids"]
        .as_array()
        .context("base image config has no rootfs.diff_ids")?
        .iter()
        .map(|d| d.as_str().unwrap_or_default().parse())
        .collect::<Result<_, _>>()?;
    let mlayers = manifest["layers"]
        .as_array()
        .context("base image manifest has no layers")?;
    if mlayers.len() != diff_ids.len() {
        bail!(
            "{at}: base image {raw} has {} layers but {} diff_ids",
            mlayers.len(),
            diff_ids.len()
        );
    }
    let mut layers = vec![];
    let mut blobs = vec![manifest_digest.clone(), config_digest];
    for (l, diff_id) in mlayers.iter().zip(diff_ids) {
        let digest: Digest = l["digest"].as_str().unwrap_or_default().parse()?;
        let media_type = l["mediaType"].as_str().unwrap_or_default();
        let media_type = if media_type.contains("zstd") {
            Some(crate::oci::MEDIA_LAYER_ZSTD.to_owned())
        } else if media_type.ends_with("tar+gzip") || media_type.ends_with("tar.gzip") {
            None
        } else {
            bail!(
                "{at}: base image layer {digest} has media type `{media_type}`, which imgbuild cannot build on"
            )
        };
        blobs.push(digest.clone());
        layers.push(LayerReport {
            digest,
            diff_id,
            size: l["size"].as_u64().unwrap_or(0),
            cached: true,
            description: format!("from {raw}"),
            notes: vec![],
            media_type,
        });
    }
    let history = config["history"]
        .as_array()
        .map(|h| {
            h.iter()
                .map(|e| HistoryEntry {
                    created_by: e["created_by"].as_str().unwrap_or("").to_owned(),
                    empty_layer: e["empty_layer"].as_bool().unwrap_or(false),
                })
                .collect()
        })
        .unwrap_or_default();
    Ok(BaseImage {
        reference: reference.with_digest(pinned).to_string(),
        layers,
        config: config_spec(&config["config"]),
        history,
        blobs,
    })
}

/// The manifest digest of a base pulled before, if all its blobs are intact.
fn cached(store: &Store, pinned: &Digest) -> Result<Option<Digest>> {
    let Some(bytes) = store.read_record(BASE_BUCKET, pinned.hex())? else {
        return Ok(None);
    };
    let Ok(rec) = serde_json::from_slice::<BaseRecord>(&bytes) else {
        return Ok(None);
    };
    if !store.has_blob(&rec.manifest) {
        return Ok(None);
    }
    let Ok(m) = serde_json::from_slice::<Value>(&store.read_bytes(&rec.manifest)?) else {
        return Ok(None);
    };
    let mut all = vec![m["config"]["digest"].clone()];
    all.extend(
        m["layers"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .map(|l| l["digest"].clone()),
    );
    for d in all {
        let Ok(d) = d.as_str().unwrap_or_default().parse::<Digest>() else {
            return Ok(None);
        };
        if !store.verify(&d)? {
            return Ok(None);
        }
    }
    Ok(Some(rec.manifest))
}

/// The runtime config of an image config JSON, as a recipe would have written it.
fn config_spec(c: &Value) -> ConfigSpec {
    let strings = |v: &Value| {
        v.as_array().map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(str::to_owned))
                .collect::<Vec<_>>()
        })
    };
    let keys = |v: &Value| {
        v.as_object()
            .map(|o| o.keys().cloned().collect::<Vec<_>>())
            .unwrap_or_default()
    };
    let map = |v: &Value| {
        v.as_object()
            .map(|o| {
                o.iter()
                    .filter_map(|(k, v)| v.as_str().map(|s| (k.clone(), s.to_owned())))
                    .collect()
            })
            .unwrap_or_default()
    };
    let text = |v: &Value| v.as_str().filter(|s| !s.is_empty()).map(str::to_owned);
    ConfigSpec {
        entrypoint: strings(&c["Entrypoint"]),
        cmd: strings(&c["Cmd"]),
        env: strings(&c["Env"])
            .unwrap_or_default()
            .into_iter()
            .filter_map(|kv| {
                kv.split_once('=')
                    .map(|(k, v)| (k.to_owned(), v.to_owned()))
            })
            .collect(),
        workdir: text(&c["WorkingDir"]),
        user: text(&c["User"]),
        ports: keys(&c["ExposedPorts"]),
        volumes: keys(&c["Volumes"]),
        labels: map(&c["Labels"]),
        stop_signal: text(&c["StopSignal"]),
    }
}

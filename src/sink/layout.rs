//! The multi-image OCI layout in `out/oci/`: every image's blobs, shared, and an
//! `index.json` naming each image by its recipe name
//! (`org.opencontainers.image.ref.name`), so `skopeo copy oci:out/oci:NAME` and
//! `umoci unpack --image out/oci:NAME` find it. Images built earlier and not in this
//! run stay in the index. An image built for several platforms (`[build] platforms`)
//! is named the same way, its entry pointing to its image index (one manifest per
//! platform, each with its `platform`): `skopeo copy --override-arch arm64
//! oci:out/oci:NAME ...` picks one.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result};
use imgbuild_store::Store;
use serde_json::Value;

use super::{ImageOut, copy_blob, write_atomic};
use crate::oci;

pub const REF_NAME: &str = "org.opencontainers.image.ref.name";

/// Adds `images` to the layout (the caller holds [`super::lock_out`]).
pub fn write(dir: &Path, store: &Store, images: &[ImageOut]) -> Result<()> {
    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs)
        .with_context(|| format!("failed to create `{}`", blobs.display()))?;
    super::remove_stale_temps(dir);
    super::remove_stale_temps(&blobs);
    for img in images {
        for d in img.blobs() {
            copy_blob(store, d, &blobs.join(d.hex()))?;
        }
    }
    write_atomic(
        &dir.join("oci-layout"),
        br#"{"imageLayoutVersion":"1.0.0"}"#,
    )?;
    // Keep entries of images not rebuilt in this run; replace those that were.
    let mut entries: BTreeMap<String, Value> = BTreeMap::new();
    if let Ok(bytes) = std::fs::read(dir.join("index.json"))
        && let Ok(v) = serde_json::from_slice::<Value>(&bytes)
    {
        for m in v["manifests"].as_array().cloned().unwrap_or_default() {
            if let Some(name) = m["annotations"][REF_NAME].as_str() {
                let digest = m["digest"].as_str().unwrap_or_default();
                if blobs.join(digest.trim_start_matches("sha256:")).is_file() {
                    entries.insert(name.to_owned(), m.clone());
                }
            }
        }
    }
    for img in images {
        let desc = img.top();
        let ann = BTreeMap::from([
            (REF_NAME.to_owned(), img.name.clone()),
            ("io.containerd.image.name".to_owned(), img.reference.clone()),
        ]);
        entries.insert(img.name.clone(), oci::index_entry(&desc, &ann));
    }
    let index = oci::image_index(entries.values().cloned().collect());
    write_atomic(&dir.join("index.json"), &index)?;
    prune(&blobs, entries.values())
}

/// Removes blobs that no manifest of the index refers to (left by earlier builds);
/// an entry naming an image index keeps the index and every manifest in it.
pub fn prune<'a>(blobs: &Path, entries: impl Iterator<Item = &'a Value>) -> Result<()> {
    let mut live = std::collections::BTreeSet::new();
    let mut todo: Vec<Value> = entries.cloned().collect();
    while let Some(e) = todo.pop() {
        let Some(m) = e["digest"]
            .as_str()
            .map(|d| d.trim_start_matches("sha256:").to_owned())
        else {
            continue;
        };
        let Ok(bytes) = std::fs::read(blobs.join(&m)) else {
            continue;
        };
        let Ok(v) = serde_json::from_slice::<Value>(&bytes) else {
            continue;
        };
        if !live.insert(m) {
            continue;
        }
        todo.extend(v["manifests"].as_array().into_iter().flatten().cloned());
        for d in std::iter::once(&v["config"]).chain(v["layers"].as_array().into_iter().flatten()) {
            if let Some(d) = d["digest"].as_str() {
                live.insert(d.trim_start_matches("sha256:").to_owned());
            }
        }
    }
    let listing = std::fs::read_dir(blobs)
        .with_context(|| format!("failed to list `{}`", blobs.display()))?;
    for e in listing.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !live.contains(&name) && !name.starts_with('.') {
            let _ = std::fs::remove_file(e.path());
        }
    }
    Ok(())
}

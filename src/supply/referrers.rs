//! The SBOM and provenance as OCI 1.1 referrers of their image: one artifact manifest
//! per document (`artifactType` = the document's media type, the empty config, the
//! document as its one layer, `subject` = the image manifest).
//!
//! Where they go: into `out/oci/` beside the image (index entries named
//! `NAME.sbom` and `NAME.provenance`), and on push into the image's repository. A
//! registry with the referrers API indexes them itself; for one without it
//! (distribution 2.8, Docker Hub) the spec's tag schema is kept: the tag
//! `sha256-<hex of the image digest>` names an image index listing every referrer
//! (entries already there are kept, so `cosign` attachments and ours coexist).

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result};
use imgbuild_registry::{Client, PushImage, Reference};
use imgbuild_store::{Descriptor, Digest, Store};
use serde_json::{Value, json};

use super::Attestations;
use crate::oci::{MEDIA_INDEX, MEDIA_MANIFEST, canonical};

pub const MEDIA_EMPTY: &str = "application/vnd.oci.empty.v1+json";

/// One artifact manifest, its bytes in the store.
#[derive(Clone, Debug)]
pub struct Artifact {
    /// `sbom` or `provenance` (the layout's ref name suffix).
    pub role: &'static str,
    pub artifact_type: String,
    pub manifest: Descriptor,
    pub document: Descriptor,
}

fn descriptor_json(d: &Descriptor) -> Value {
    json!({ "mediaType": d.media_type, "digest": d.digest.to_string(), "size": d.size })
}

/// The artifact manifests of an image's documents (stored, with the empty config).
pub fn artifacts(store: &Store, att: &Attestations) -> Result<Vec<Artifact>> {
    let empty = store.put_bytes(b"{}")?;
    let config = Descriptor::new(MEDIA_EMPTY, empty, 2);
    let mut out = vec![];
    for (role, doc) in [("sbom", &att.sbom), ("provenance", &att.provenance)] {
        let bytes = canonical(&json!({
            "schemaVersion": 2,
            "mediaType": MEDIA_MANIFEST,
            "artifactType": doc.media_type,
            "config": descriptor_json(&config),
            "layers": [descriptor_json(doc)],
            "subject": descriptor_json(&att.subject),
        }));
        let digest = store.put_bytes(&bytes)?;
        out.push(Artifact {
            role,
            artifact_type: doc.media_type.clone(),
            manifest: Descriptor::new(MEDIA_MANIFEST, digest, bytes.len() as u64),
            document: doc.clone(),
        });
    }
    Ok(out)
}

/// Adds the artifacts of `name` to the OCI layout at `dir` (written by
/// [`crate::sink::layout::write`] just before; the caller holds the out lock).
pub fn add_to_layout(
    dir: &Path,
    store: &Store,
    name: &str,
    arts: &[Artifact],
    subject: &Digest,
) -> Result<()> {
    let blobs = dir.join("blobs/sha256");
    let index_path = dir.join("index.json");
    let index: Value = serde_json::from_slice(
        &std::fs::read(&index_path)
            .with_context(|| format!("failed to read `{}`", index_path.display()))?,
    )
    .with_context(|| format!("`{}` is not JSON", index_path.display()))?;
    let mut entries: BTreeMap<String, Value> = BTreeMap::new();
    for m in index["manifests"].as_array().cloned().unwrap_or_default() {
        let key = m["annotations"][crate::sink::layout::REF_NAME]
            .as_str()
            .map(str::to_owned)
            .unwrap_or_else(|| m["digest"].as_str().unwrap_or_default().to_owned());
        entries.insert(key, m);
    }
    for a in arts {
        for d in [&a.manifest.digest, &a.document.digest] {
            crate::sink::copy_blob(store, d, &blobs.join(d.hex()))?;
        }
        let empty = Digest::of_bytes(b"{}");
        crate::sink::copy_blob(store, &empty, &blobs.join(empty.hex()))?;
        let ref_name = format!("{name}.{}", a.role);
        let mut e = descriptor_json(&a.manifest);
        e["artifactType"] = json!(a.artifact_type);
        e["annotations"] = json!({
            crate::sink::layout::REF_NAME: ref_name,
            "org.opencontainers.image.ref.subject": subject.to_string(),
        });
        entries.insert(ref_name, e);
    }
    let entries: Vec<Value> = entries.into_values().collect();
    let bytes = canonical(&json!({
        "schemaVersion": 2,
        "mediaType": MEDIA_INDEX,
        "manifests": entries,
    }));
    crate::sink::write_atomic(&index_path, &bytes)?;
    // the documents of the image's earlier builds were kept until now
    crate::sink::layout::prune(&blobs, entries.iter())
}

/// What attaching did on one registry.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Attached {
    pub repository: String,
    pub subject: Digest,
    /// The artifact manifests' digests.
    pub referrers: Vec<Digest>,
    /// The fallback tag written (`None`: the registry has the referrers API).
    pub fallback_tag: Option<String>,
}

/// The referrers tag schema's tag for a subject: `sha256-<hex>`.
pub fn fallback_tag(subject: &Digest) -> String {
    format!("sha256-{}", subject.hex())
}

/// Pushes the artifacts to `target`'s repository (the image is there already) and,
/// when the registry has no referrers API, updates the `sha256-<hex>` tag index.
pub fn push(
    client: &Client,
    store: &Store,
    target: &Reference,
    subject: &Digest,
    arts: &[Artifact],
) -> Result<Attached> {
    let images: Vec<PushImage> = arts
        .iter()
        .map(|a| {
            let mut img = PushImage::from_store(store, target.clone(), &a.manifest.digest)?;
            img.tags = vec![];
            Ok(img)
        })
        .collect::<Result<_, imgbuild_registry::RegistryError>>()?;
    client
        .push(store, &images)
        .with_context(|| format!("pushing the SBOM and provenance of {subject}"))?;
    let mut attached = Attached {
        repository: target.name(),
        subject: subject.clone(),
        referrers: arts.iter().map(|a| a.manifest.digest.clone()).collect(),
        fallback_tag: None,
    };
    if client.referrers(target, subject)?.is_some() {
        return Ok(attached);
    }
    let tag = fallback_tag(subject);
    let mut tagged = target.clone();
    tagged.tag = Some(tag.clone());
    tagged.digest = None;
    let mut entries: Vec<Value> = match client.manifest_if_present(&tagged)? {
        Some(m) => serde_json::from_slice::<Value>(&m.bytes)
            .ok()
            .and_then(|v| v["manifests"].as_array().cloned())
            .unwrap_or_default(),
        None => vec![],
    };
    let mut changed = false;
    for a in arts {
        let d = a.manifest.digest.to_string();
        if entries.iter().any(|e| e["digest"] == json!(d)) {
            continue;
        }
        let mut e = descriptor_json(&a.manifest);
        e["artifactType"] = json!(a.artifact_type);
        entries.push(e);
        changed = true;
    }
    if changed {
        let index = canonical(&json!({
            "schemaVersion": 2,
            "mediaType": MEDIA_INDEX,
            "manifests": entries,
        }));
        client
            .put_raw_manifest(target, &tag, &index, MEDIA_INDEX)
            .with_context(|| format!("writing the referrers tag {tag} of {}", target.name()))?;
    }
    attached.fallback_tag = Some(tag);
    Ok(attached)
}

//! The CycloneDX 1.6 JSON SBOM of an image (`--sbom-format cyclonedx`): the same
//! facts as the SPDX document ([`super::sbom_spdx`]), in CycloneDX's shape.
//!
//! `metadata.component` is the image (type `container`); each layer is a component
//! of type `file` (its blob digest), and what it holds is nested in it: Debian
//! packages and Python distributions (type `library`, purl, the `.deb`'s or wheel's
//! SHA-256, licenses), and the files of a files / build-step layer (type `file`).
//! Nesting is CycloneDX's "contains"; `dependencies` says the image depends on its
//! layers. Deterministic: the serial number is a UUID made from the manifest digest,
//! the timestamp is the build's epoch.

use serde_json::{Value, json};

use super::contents::pep503;
use super::sbom_spdx::spdx_license;
use super::{ImageFacts, deb_purl, image_purl, pypi_purl};
use crate::oci::{canonical, rfc3339};

fn licenses(names: &[String]) -> Option<Value> {
    if names.is_empty() {
        return None;
    }
    let all: Option<Vec<String>> = names.iter().map(|n| spdx_license(n)).collect();
    Some(match all {
        // one SPDX expression when every name has an identifier
        Some(exprs) if exprs.len() == 1 && !exprs[0].contains(' ') => {
            json!([{ "license": { "id": exprs[0] } }])
        }
        Some(exprs) => json!([{
            "expression": exprs
                .iter()
                .map(|e| if e.contains(' ') { format!("({e})") } else { e.clone() })
                .collect::<Vec<_>>()
                .join(" AND ")
        }]),
        // else each name as the package declares it
        None => json!(
            names
                .iter()
                .map(|n| json!({ "license": { "name": n } }))
                .collect::<Vec<_>>()
        ),
    })
}

/// A version-4-shaped UUID from the first 16 bytes of a digest.
fn uuid_of(hex: &str) -> String {
    let mut b: Vec<u8> = (0..16)
        .map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap_or(0))
        .collect();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = hex::encode(b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// The CycloneDX 1.6 JSON document (canonical bytes).
pub fn document(f: &ImageFacts) -> Vec<u8> {
    let rec = f.record;
    let mut layers = vec![];
    let mut layer_refs = vec![];
    for (i, layer) in f.layers.iter().enumerate() {
        let n = i + 1;
        let layer_ref = format!("layer-{n}");
        let c = &layer.contents;
        let mut inner = vec![];
        for p in &c.debian {
            let mut v = json!({
                "type": "library",
                "bom-ref": format!("layer-{n}-deb-{}", p.name),
                "name": p.name,
                "version": p.version,
                "purl": deb_purl(p),
                "hashes": [{ "alg": "SHA-256", "content": p.sha256.hex() }],
                "supplier": { "name": if p.repository == "debian" { "Debian".to_owned() } else { p.repository.clone() } },
                "properties": [
                    { "name": "imgbuild:debian:source", "value": p.source },
                    { "name": "imgbuild:debian:architecture", "value": p.architecture },
                    { "name": "imgbuild:debian:filename", "value": p.filename },
                ],
            });
            if let Some(l) = licenses(&p.licenses) {
                v["licenses"] = l;
            }
            inner.push(v);
        }
        for d in &c.python {
            let mut v = json!({
                "type": "library",
                "bom-ref": format!("layer-{n}-pypi-{}", pep503(&d.name)),
                "name": d.name,
                "version": d.version,
                "purl": pypi_purl(d),
                "hashes": [{ "alg": "SHA-256", "content": d.sha256.hex() }],
                "properties": [{ "name": "imgbuild:python:wheel", "value": d.wheel }],
            });
            if let Some(l) = licenses(d.license.as_slice()) {
                v["licenses"] = l;
            }
            if let Some((file, sha256)) = &d.built_from {
                v["properties"]
                    .as_array_mut()
                    .expect("properties")
                    .push(json!({ "name": "imgbuild:python:built-from", "value": format!("{file} sha256:{}", sha256.hex()) }));
            }
            inner.push(v);
        }
        for x in &c.files {
            let mut v = json!({
                "type": "file",
                "bom-ref": format!("layer-{n}-file-/{}", x.path),
                "name": format!("/{}", x.path),
                "hashes": [
                    { "alg": "SHA-1", "content": x.sha1 },
                    { "alg": "SHA-256", "content": x.sha256 },
                ],
            });
            if let Some(src) = &x.source {
                v["properties"] = json!([{ "name": "imgbuild:source", "value": src }]);
            }
            inner.push(v);
        }
        let mut v = json!({
            "type": "file",
            "bom-ref": layer_ref,
            "name": format!("layer {n}: {}", layer.report.description),
            "version": layer.report.descriptor.digest.to_string(),
            "hashes": [{ "alg": "SHA-256", "content": layer.report.descriptor.digest.hex() }],
            "properties": [
                { "name": "imgbuild:layer:diff_id", "value": layer.report.diff_id.to_string() },
                { "name": "imgbuild:layer:media_type", "value": layer.report.descriptor.media_type },
            ],
        });
        if !inner.is_empty() {
            v["components"] = json!(inner);
        }
        layers.push(v);
        layer_refs.push(layer_ref);
    }
    let doc = json!({
        "bomFormat": "CycloneDX",
        "specVersion": "1.6",
        "serialNumber": format!("urn:uuid:{}", uuid_of(rec.manifest_digest.hex())),
        "version": 1,
        "metadata": {
            "timestamp": rfc3339(f.epoch),
            "tools": { "components": [{
                "type": "application",
                "name": "imgbuild",
                "version": env!("CARGO_PKG_VERSION"),
            }]},
            "component": {
                "type": "container",
                "bom-ref": "image",
                "name": rec.name,
                "version": rec.manifest_digest.to_string(),
                "purl": image_purl(rec),
                "hashes": [{ "alg": "SHA-256", "content": rec.manifest_digest.hex() }],
            },
        },
        "components": layers,
        "dependencies": [{ "ref": "image", "dependsOn": layer_refs }],
    });
    canonical(&doc)
}

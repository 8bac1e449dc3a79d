//! OCI image config, manifest and index documents, written as canonical JSON.
//!
//! Canonical here means: object keys sorted (serde_json's `Map` is a BTreeMap; the
//! `preserve_order` feature must stay off, which [`canonical`] double-checks by
//! re-sorting), no insignificant whitespace, and `created` taken from the build's
//! epoch rather than the clock. Same inputs, same bytes, same digests.

use std::collections::BTreeMap;

use imgbuild_store::Digest;
use serde_json::{Value, json};

use crate::recipe::ConfigSpec;

pub use imgbuild_store::Descriptor;
pub use imgbuild_store::media::{
    CONFIG as MEDIA_CONFIG, INDEX as MEDIA_INDEX, LAYER_GZIP as MEDIA_LAYER_GZIP,
    LAYER_ZSTD as MEDIA_LAYER_ZSTD, MANIFEST as MEDIA_MANIFEST,
};

/// The default PATH Docker gives images that set none; set explicitly so every
/// engine sees the same environment.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Serialises a JSON value canonically (sorted keys, compact).
pub fn canonical(v: &Value) -> Vec<u8> {
    fn sort(v: &Value) -> Value {
        match v {
            Value::Object(m) => {
                let sorted: BTreeMap<&String, Value> =
                    m.iter().map(|(k, v)| (k, sort(v))).collect();
                Value::Object(sorted.into_iter().map(|(k, v)| (k.clone(), v)).collect())
            }
            Value::Array(a) => Value::Array(a.iter().map(sort).collect()),
            other => other.clone(),
        }
    }
    serde_json::to_vec(&sort(v)).expect("JSON values always serialise")
}

/// RFC 3339 UTC time for a Unix epoch second.
pub fn rfc3339(epoch: u64) -> String {
    let days = (epoch / 86400) as i64;
    let secs = epoch % 86400;
    // civil-from-days (Howard Hinnant's algorithm)
    let z = days + 719468;
    let era = z.div_euclid(146097);
    let doe = z - era * 146097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}

/// The effective config of an image: its base's config with the recipe's on top.
/// Docker semantics: a new entrypoint clears an inherited cmd; env and labels merge.
pub fn merge_config(base: Option<&ConfigSpec>, own: &ConfigSpec) -> ConfigSpec {
    let mut c = base.cloned().unwrap_or_default();
    if own.entrypoint.is_some() {
        c.entrypoint = own.entrypoint.clone();
        c.cmd = None;
    }
    if own.cmd.is_some() {
        c.cmd = own.cmd.clone();
    }
    c.env.extend(own.env.clone());
    c.labels.extend(own.labels.clone());
    for (dst, src) in [
        (&mut c.workdir, &own.workdir),
        (&mut c.user, &own.user),
        (&mut c.stop_signal, &own.stop_signal),
    ] {
        if src.is_some() {
            *dst = src.clone();
        }
    }
    for p in &own.ports {
        if !c.ports.contains(p) {
            c.ports.push(p.clone());
        }
    }
    for v in &own.volumes {
        if !c.volumes.contains(v) {
            c.volumes.push(v.clone());
        }
    }
    c
}

#[derive(Clone, Debug)]
pub struct HistoryEntry {
    pub created_by: String,
    /// An entry for a config-only step of a base image (no layer).
    pub empty_layer: bool,
}

/// The image config JSON.
pub fn image_config(
    cfg: &ConfigSpec,
    diff_ids: &[Digest],
    history: &[HistoryEntry],
    epoch: u64,
    platform: crate::platform::Platform,
) -> Vec<u8> {
    let created = rfc3339(epoch);
    let mut env: BTreeMap<String, String> = cfg.env.clone();
    env.entry("PATH".into())
        .or_insert_with(|| DEFAULT_PATH.into());
    let mut c = serde_json::Map::new();
    c.insert(
        "Env".into(),
        json!(
            env.iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
        ),
    );
    if let Some(e) = &cfg.entrypoint {
        c.insert("Entrypoint".into(), json!(e));
    }
    if let Some(e) = &cfg.cmd {
        c.insert("Cmd".into(), json!(e));
    }
    if let Some(w) = &cfg.workdir {
        c.insert("WorkingDir".into(), json!(w));
    }
    if let Some(u) = &cfg.user {
        c.insert("User".into(), json!(u));
    }
    if !cfg.ports.is_empty() {
        c.insert(
            "ExposedPorts".into(),
            Value::Object(cfg.ports.iter().map(|p| (p.clone(), json!({}))).collect()),
        );
    }
    if !cfg.volumes.is_empty() {
        c.insert(
            "Volumes".into(),
            Value::Object(cfg.volumes.iter().map(|p| (p.clone(), json!({}))).collect()),
        );
    }
    if !cfg.labels.is_empty() {
        c.insert("Labels".into(), json!(cfg.labels));
    }
    if let Some(s) = &cfg.stop_signal {
        c.insert("StopSignal".into(), json!(s));
    }
    let mut v = json!({
        "architecture": platform.architecture(),
        "os": "linux",
        "created": created,
        "config": Value::Object(c),
        "rootfs": { "type": "layers", "diff_ids": diff_ids.iter().map(|d| d.to_string()).collect::<Vec<_>>() },
        "history": history.iter().map(|h| {
            let mut e = json!({"created": created, "created_by": h.created_by});
            if h.empty_layer {
                e["empty_layer"] = json!(true);
            }
            e
        }).collect::<Vec<_>>(),
    });
    if let Some(variant) = platform.variant() {
        v["variant"] = json!(variant);
    }
    canonical(&v)
}

fn descriptor_json(d: &Descriptor) -> Value {
    json!({"mediaType": d.media_type, "digest": d.digest.to_string(), "size": d.size})
}

/// The image manifest JSON.
pub fn image_manifest(config: &Descriptor, layers: &[Descriptor]) -> Vec<u8> {
    canonical(&json!({
        "schemaVersion": 2,
        "mediaType": MEDIA_MANIFEST,
        "config": descriptor_json(config),
        "layers": layers.iter().map(descriptor_json).collect::<Vec<_>>(),
    }))
}

/// An index entry naming a manifest.
pub fn index_entry(manifest: &Descriptor, annotations: &BTreeMap<String, String>) -> Value {
    let mut v = descriptor_json(manifest);
    if !annotations.is_empty() {
        v["annotations"] = json!(annotations);
    }
    v
}

/// An image index entry naming one platform's manifest.
pub fn platform_entry(manifest: &Descriptor, platform: crate::platform::Platform) -> Value {
    let mut v = descriptor_json(manifest);
    v["platform"] = platform.index_json();
    v
}

pub fn image_index(entries: Vec<Value>) -> Vec<u8> {
    canonical(&json!({ "schemaVersion": 2, "mediaType": MEDIA_INDEX, "manifests": entries }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_dates() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1700000000), "2023-11-14T22:13:20Z");
        assert_eq!(rfc3339(951782400), "2000-02-29T00:00:00Z");
    }

    #[test]
    fn canonical_sorts_keys() {
        let v = json!({"b": 1, "a": {"d": 2, "c": [ {"z": 1, "y": 2} ]}});
        assert_eq!(
            String::from_utf8(canonical(&v)).unwrap(),
            r#"{"a":{"c":[{"y":2,"z":1}],"d":2},"b":1}"#
        );
    }
}

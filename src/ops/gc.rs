//! `imgbuild gc`: removes from the store what no recent build references.
//!
//! Roots are the image records of builds newer than `--keep-days` (any project that
//! uses this store): their manifests, configs, layers and the inputs those layers
//! were made from (.debs, wheels, spools). Layer-cache records whose blob is
//! removed go too, as do old temp files. gc holds the store lock exclusively, so it
//! waits for running builds and they wait for it.

use std::collections::BTreeSet;
use std::time::{Duration, SystemTime};

use anyhow::Result;
use imgbuild_store::{Bucket, Digest};

use crate::cache::{ImageRecord, LayerRecord};
use crate::progress::human;
use crate::project::Project;

pub fn gc(project: &Project, keep_days: u64, dry_run: bool) -> Result<()> {
    let _lock = project.lock_exclusive()?;
    let store = &project.store;
    // Saturating: `--keep-days 99999999999` means "keep everything", not a panic.
    let cutoff = keep_days
        .checked_mul(86400)
        .and_then(|secs| SystemTime::now().checked_sub(Duration::from_secs(secs)))
        .unwrap_or(SystemTime::UNIX_EPOCH);
    let mut keep: BTreeSet<Digest> = BTreeSet::new();
    let mut dropped_records = 0;
    for key in store.list_entries(Bucket::Images)? {
        let path = store.record_path(Bucket::Images, &key);
        let recent = std::fs::metadata(&path)
            .and_then(|m| m.modified())
            .map(|t| t >= cutoff)
            .unwrap_or(false);
        let rec = store
            .read_record(Bucket::Images, &key)?
            .and_then(|b| serde_json::from_slice::<ImageRecord>(&b).ok());
        match rec {
            Some(rec) if recent => {
                keep.insert(rec.manifest_digest.clone());
                keep.insert(rec.config_digest.clone());
                keep.extend(rec.layers.iter().map(|l| l.digest.clone()));
                keep.extend(rec.inputs.iter().cloned());
            }
            _ => {
                dropped_records += 1;
                if !dry_run {
                    store.remove_entry(Bucket::Images, &key)?;
                }
            }
        }
    }
    // Layer records of kept layers keep their inputs too.
    let mut layer_records = vec![];
    for key in store.list_entries(Bucket::Layers)? {
        if let Some(rec) = store
            .read_record(Bucket::Layers, &key)?
            .and_then(|b| serde_json::from_slice::<LayerRecord>(&b).ok())
        {
            if keep.contains(&rec.digest) {
                keep.extend(rec.inputs.iter().cloned());
            }
            layer_records.push((key, Some(rec)));
        } else {
            layer_records.push((key, None));
        }
    }
    let (mut blobs, mut bytes) = (0u64, 0u64);
    for d in store.list_blobs()? {
        if !keep.contains(&d) {
            bytes += store.blob_size(&d).unwrap_or(0);
            blobs += 1;
            if !dry_run {
                store.remove_blob(&d)?;
            }
        }
    }
    let mut layer_dropped = 0;
    for (key, rec) in layer_records {
        if rec.is_none_or(|r| !keep.contains(&r.digest)) {
            layer_dropped += 1;
            if !dry_run {
                store.remove_entry(Bucket::Layers, &key)?;
            }
        }
    }
    let tmp = if dry_run {
        0
    } else {
        store.clean_tmp(Duration::from_secs(3600))?
    };
    project.progress.line(format!(
        "{}{blobs} blob(s), {} freed; {layer_dropped} layer cache record(s) and {dropped_records} image record(s) older than {keep_days} day(s) dropped; {tmp} stale temp file(s) removed",
        if dry_run { "would remove " } else { "removed " },
        human(bytes)
    ));
    Ok(())
}

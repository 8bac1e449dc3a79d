//! `imgbuild gc`: removes from the store what no build of the last `--keep-days`
//! used, walking every [`Bucket`] of the store's layout and its blobs.
//!
//! An entry's last use is its mtime: records are written when made, and the code that
//! reads an entry without rewriting it moves its mtime forward (an image record on
//! every build of the image, a layer record on every cache hit, a `.pyc` entry on
//! every hit). Roots are what was used within `--keep-days`; the rest is kept only
//! while something kept needs it:
//!
//! | bucket | kept when |
//! |---|---|
//! | images | used within keep-days (any project sharing this store) |
//! | layers | used within keep-days, or a layer of a kept image; and its blob is there |
//! | blobs | named by a kept image (manifest, config, layers, inputs: .debs, spools, wheels, `Packages`, base blobs) or a kept layer record (its blob and inputs) |
//! | bases, base-contents | the base manifest they name is a kept blob |
//! | statcache | its project has a kept image, or it was written within keep-days |
//! | debian-unpack | its spool blob is kept (without it the record is never used) |
//! | pywheel-select | the wheel it chose is a kept blob |
//! | wheels (unpacked) | the wheel it was unpacked from is a kept blob |
//! | pyc | used within keep-days (only its key names it) |
//! | attestations | the image manifest its SBOM and provenance describe is a kept blob (and so are they) |
//!
//! Directories of buckets this version does not know (older format versions) go
//! whole, and so do temp files of processes that are gone. So a build of V0 then V1
//! of an image keeps V0's layers for `--keep-days`: switching back finds them cached.
//!
//! gc holds the store lock exclusively, so it waits for running builds and they wait
//! for it. `--dry-run` removes nothing and reports the same per-bucket counts.

use std::collections::BTreeSet;
use std::time::{Duration, SystemTime};

use anyhow::Result;
use imgbuild_store::{Bucket, Digest, Store};
use serde::Serialize;

use crate::cache::{ImageRecord, LayerRecord};
use crate::progress::human;
use crate::project::Project;
use crate::source::base::BaseRecord;

/// What gc removed (or, with `--dry-run`, would remove) and kept, per bucket.
#[derive(Debug, Serialize)]
pub struct GcReport {
    pub dry_run: bool,
    pub keep_days: u64,
    /// `blobs`, then every bucket, then `stale` (directories of unknown buckets).
    pub buckets: Vec<BucketReport>,
    /// Temp files of processes that are gone (not counted with `--dry-run`).
    pub temp_files_removed: usize,
}

#[derive(Debug, Default, Serialize)]
pub struct BucketReport {
    pub bucket: String,
    pub kept: u64,
    pub kept_bytes: u64,
    pub removed: u64,
    pub removed_bytes: u64,
}

pub fn gc(project: &Project, keep_days: u64, dry_run: bool, json: bool) -> Result<()> {
    let _lock = project.lock_exclusive()?;
    // Saturating: `--keep-days 99999999999` means "keep everything", not a panic.
    let cutoff = keep_days
        .checked_mul(86400)
        .and_then(|secs| SystemTime::now().checked_sub(Duration::from_secs(secs)))
        .unwrap_or(SystemTime::UNIX_EPOCH);
    let plan = plan(&project.store, cutoff)?;
    let mut report = GcReport {
        dry_run,
        keep_days,
        buckets: vec![],
        temp_files_removed: 0,
    };
    for (name, entries) in &plan {
        let mut b = BucketReport {
            bucket: name.clone(),
            ..Default::default()
        };
        for e in entries {
            if e.keep {
                b.kept += 1;
                b.kept_bytes += e.bytes;
            } else {
                b.removed += 1;
                b.removed_bytes += e.bytes;
            }
        }
        report.buckets.push(b);
    }
    if !dry_run {
        // Blobs last: a crash half-way leaves records whose blobs are there (a record
        // without its blob is only a cache miss, but the other way round is waste).
        for (_, entries) in plan.iter().rev() {
            for e in entries.iter().filter(|e| !e.keep) {
                (e.remove)(&project.store)?;
            }
        }
        report.temp_files_removed = project.store.clean_tmp(Duration::from_secs(3600))?;
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_report(project, &report);
    }
    Ok(())
}

fn print_report(project: &Project, r: &GcReport) {
    let verb = if r.dry_run { "would remove" } else { "removed" };
    for b in &r.buckets {
        if b.kept + b.removed == 0 {
            continue;
        }
        project.progress.line(format!(
            "{:<18} {verb} {} ({}), kept {} ({})",
            b.bucket,
            b.removed,
            human(b.removed_bytes),
            b.kept,
            human(b.kept_bytes)
        ));
    }
    let (n, bytes) = r
        .buckets
        .iter()
        .fold((0, 0), |(n, s), b| (n + b.removed, s + b.removed_bytes));
    project.progress.line(format!(
        "{verb} {n} entr{} ({}) not used by any build of the last {} day(s){}",
        if n == 1 { "y" } else { "ies" },
        human(bytes),
        r.keep_days,
        if r.dry_run {
            String::new()
        } else {
            format!("; {} stale temp file(s) removed", r.temp_files_removed)
        }
    ));
}

/// Removes one entry (run only when not a dry run).
type Remove = Box<dyn Fn(&Store) -> imgbuild_store::Result<()>>;

/// One entry of the store and the decision about it.
struct Entry {
    keep: bool,
    bytes: u64,
    remove: Remove,
}

impl Entry {
    fn of(store: &Store, bucket: Bucket, key: &str, keep: bool) -> Entry {
        let key = key.to_owned();
        Entry {
            keep,
            bytes: store.entry_bytes(bucket, &key),
            remove: Box::new(move |s| s.remove_entry(bucket, &key)),
        }
    }
}

/// Decides about every entry of the store (removing nothing), in report order.
fn plan(store: &Store, cutoff: SystemTime) -> Result<Vec<(String, Vec<Entry>)>> {
    let recent = |bucket: Bucket, key: &str| {
        store
            .entry_last_used(bucket, key)
            .is_some_and(|t| t >= cutoff)
    };
    let read = |bucket: Bucket, key: &str| -> Result<Option<Vec<u8>>> {
        Ok(store.read_record(bucket, key)?)
    };
    let mut keep: BTreeSet<Digest> = BTreeSet::new();

    // Roots: images used within keep-days ...
    let mut images = vec![];
    let mut projects: BTreeSet<String> = BTreeSet::new();
    let mut image_layers: BTreeSet<Digest> = BTreeSet::new();
    for key in store.list_entries(Bucket::Images)? {
        let rec = read(Bucket::Images, &key)?
            .and_then(|b| serde_json::from_slice::<ImageRecord>(&b).ok());
        let kept = match rec {
            Some(rec) if recent(Bucket::Images, &key) => {
                // an image index: the index and every platform's manifest
                if let Some(index) = &rec.index {
                    keep.insert(index.digest.clone());
                }
                for m in std::iter::once(&rec).chain(rec.platforms.iter()) {
                    keep.insert(m.manifest_digest.clone());
                    keep.insert(m.config_digest.clone());
                    keep.extend(m.layers.iter().map(|l| l.descriptor.digest.clone()));
                    image_layers.extend(m.layers.iter().map(|l| l.descriptor.digest.clone()));
                    keep.extend(m.inputs.iter().cloned());
                }
                // the key is `<project key>-<image name>`; project keys have no `-`
                if let Some((project, _)) = key.split_once('-') {
                    projects.insert(project.to_owned());
                }
                true
            }
            _ => false,
        };
        images.push(Entry::of(store, Bucket::Images, &key, kept));
    }
    // ... and layers used within keep-days (or of a kept image), with their blobs.
    let mut layers = vec![];
    for key in store.list_entries(Bucket::Layers)? {
        let rec = read(Bucket::Layers, &key)?
            .and_then(|b| serde_json::from_slice::<LayerRecord>(&b).ok());
        let kept = match rec {
            Some(rec)
                if (recent(Bucket::Layers, &key)
                    || image_layers.contains(&rec.descriptor.digest))
                    && store.has_blob(&rec.descriptor.digest) =>
            {
                keep.insert(rec.descriptor.digest.clone());
                keep.extend(rec.inputs.iter().cloned());
                true
            }
            _ => false,
        };
        layers.push(Entry::of(store, Bucket::Layers, &key, kept));
    }

    // SBOM and provenance documents: kept while the image they describe is.
    let mut attestations = BTreeSet::new();
    for key in store.list_entries(Bucket::Attestations)? {
        if let Some(a) = read(Bucket::Attestations, &key)?
            .and_then(|b| serde_json::from_slice::<crate::supply::Attestations>(&b).ok())
            && keep.contains(&a.subject.digest)
        {
            keep.insert(a.sbom.digest);
            keep.insert(a.provenance.digest);
            attestations.insert(key);
        }
    }

    // Everything else is kept by what the roots keep.
    let digest_of_key = |key: &str| Digest::from_hex(key).ok();
    let mut out = vec![];
    let mut blobs = vec![];
    for d in store.list_blobs()? {
        let bytes = store.blob_size(&d).unwrap_or(0);
        let kept = keep.contains(&d);
        blobs.push(Entry {
            keep: kept,
            bytes,
            remove: Box::new(move |s| s.remove_blob(&d)),
        });
    }
    out.push(("blobs".to_owned(), blobs));
    for bucket in Bucket::ALL {
        let entries = match bucket {
            Bucket::Images => std::mem::take(&mut images),
            Bucket::Layers => std::mem::take(&mut layers),
            _ => {
                let mut v = vec![];
                for key in store.list_entries(bucket)? {
                    let kept = match bucket {
                        Bucket::Images | Bucket::Layers => unreachable!("decided above"),
                        Bucket::Bases => read(bucket, &key)?
                            .and_then(|b| serde_json::from_slice::<BaseRecord>(&b).ok())
                            .is_some_and(|r| keep.contains(&r.manifest)),
                        Bucket::BaseContents | Bucket::PythonWheels => {
                            digest_of_key(&key).is_some_and(|d| keep.contains(&d))
                        }
                        Bucket::StatCache => projects.contains(&key) || recent(bucket, &key),
                        Bucket::DebianUnpack => read(bucket, &key)?
                            .and_then(|b| imgbuild_debian::deb::unpack_record_spool(&b))
                            .is_some_and(|d| keep.contains(&d)),
                        // records of the same {filename, digest} shape
                        Bucket::PythonSelect | Bucket::PythonBuilt | Bucket::GitArchives => {
                            read(bucket, &key)?
                                .and_then(|b| imgbuild_python::fetch::selection_wheel(&b))
                                .is_some_and(|d| keep.contains(&d))
                        }
                        Bucket::PythonBytecode | Bucket::Tarballs => recent(bucket, &key),
                        Bucket::Attestations => attestations.contains(&key),
                        // a builder image's root: kept while the builder image is
                        Bucket::BuildRoots => {
                            recent(bucket, &key)
                                || digest_of_key(&key).is_some_and(|d| keep.contains(&d))
                        }
                    };
                    v.push(Entry::of(store, bucket, &key, kept));
                }
                v
            }
        };
        out.push((bucket.name().to_owned(), entries));
    }
    let stale = store
        .stale_buckets()?
        .into_iter()
        .map(|p| Entry {
            keep: false,
            bytes: imgbuild_store::disk_bytes(&p),
            remove: Box::new(move |_| imgbuild_store::remove_path(&p)),
        })
        .collect();
    out.push(("stale".to_owned(), stale));
    Ok(out)
}

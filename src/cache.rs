//! The layer cache: fingerprint -> finished layer, and the per-project record of
//! the last build of each image (read by `inspect`, `push`, and `gc`).
//!
//! A fingerprint names everything a layer's bytes depend on (the contract of
//! cargo's `Source::fingerprint`: same fingerprint if and only if same output). A
//! record is only trusted while its blob is present and verifies; a record whose
//! blob is gone or corrupt is a miss, and the layer is rebuilt.

use imgbuild_store::{Bucket, Digest, Store};
use serde::{Deserialize, Serialize};

use crate::lower::LowerView;

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LayerRecord {
    /// The layer blob, as the manifest names it.
    #[serde(flatten)]
    pub descriptor: imgbuild_store::Descriptor,
    pub diff_id: Digest,
    pub tar_size: u64,
    pub description: String,
    /// Directories and symlinks this layer writes (for the layers above it).
    pub view: LowerView,
    /// Store blobs this layer was made from (.debs, wheels, spools), kept by `gc`.
    #[serde(default)]
    pub inputs: Vec<Digest>,
    /// Source-specific notes for `inspect` (e.g. maintainer scripts that did not run).
    #[serde(default)]
    pub notes: Vec<String>,
    /// What the fingerprint was made of, to explain the next cache miss.
    #[serde(default)]
    pub fingerprint_inputs: Vec<crate::source::Input>,
    /// Registry cache repositories known to hold this layer's entry (it came from
    /// there, or this store wrote it): a warm build asks them nothing.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub in_caches: Vec<String>,
    /// What the layer holds, as its SBOM names it (packages, distributions, files);
    /// `None` in a record written before imgbuild recorded it: such a record is a
    /// miss, so that no SBOM silently lacks a layer's packages.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub contents: Option<crate::supply::contents::LayerContents>,
}

impl LayerRecord {
    /// The record of a fingerprint as written, without checking its blob: what an
    /// earlier build of a layer was made of, to say why it is built again.
    pub fn read_unverified(store: &Store, fingerprint: &Digest) -> Option<LayerRecord> {
        let bytes = store
            .read_record(Bucket::Layers, fingerprint.hex())
            .ok()??;
        serde_json::from_slice(&bytes).ok()
    }

    /// The cached layer for a fingerprint, if its blob is present and intact.
    pub fn lookup(store: &Store, fingerprint: &Digest) -> anyhow::Result<Option<LayerRecord>> {
        let Some(bytes) = store.read_record(Bucket::Layers, fingerprint.hex())? else {
            return Ok(None);
        };
        let Ok(rec) = serde_json::from_slice::<LayerRecord>(&bytes) else {
            return Ok(None); // a record from an incompatible version: rebuild
        };
        if rec.contents.is_none() {
            return Ok(None); // made before contents were recorded: rebuild (same bytes)
        }
        // The blob was complete and verified when the record was written; it is
        // hashed again only if its inode changed since (a write, or a new hard
        // link from out/oci). After a full check passes, the record's time moves
        // forward, so the next build does not hash it again.
        let record = store.record_path(Bucket::Layers, fingerprint.hex());
        let written = std::fs::metadata(&record)
            .and_then(|m| m.modified())
            .unwrap_or(std::time::UNIX_EPOCH);
        // Taken before the check: a write to the blob during or after it has a later
        // ctime and is hashed again next time.
        let checked_at = std::time::SystemTime::now();
        if !store.verify_unless_unchanged_since(&rec.descriptor.digest, written)? {
            return Ok(None);
        }
        if store.blob_size(&rec.descriptor.digest)? != rec.descriptor.size {
            return Ok(None);
        }
        let _ = std::fs::File::options()
            .write(true)
            .open(&record)
            .and_then(|f| f.set_modified(checked_at));
        Ok(Some(rec))
    }

    pub fn save(&self, store: &Store, fingerprint: &Digest) -> anyhow::Result<()> {
        store.write_record(
            Bucket::Layers,
            fingerprint.hex(),
            &serde_json::to_vec(self)?,
        )?;
        Ok(())
    }
}

/// One layer as reported by a build (`--json`, `inspect`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LayerReport {
    /// The layer blob, as the manifest names it (gzip; a base image's may be zstd).
    #[serde(flatten)]
    pub descriptor: imgbuild_store::Descriptor,
    pub diff_id: Digest,
    pub cached: bool,
    pub description: String,
    #[serde(default)]
    pub notes: Vec<String>,
    /// The layer's fingerprint (`None` for a registry base image's layers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fingerprint: Option<Digest>,
    /// Why it was built (empty when cached).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reason: Vec<String>,
}

/// The result of building one image, kept per project for `inspect`, `push`, `gc`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ImageRecord {
    pub name: String,
    pub manifest_digest: Digest,
    pub manifest_size: u64,
    pub config_digest: Digest,
    pub config_size: u64,
    pub tarball: String,
    pub reference: String,
    pub repository: Option<String>,
    pub tags: Vec<String>,
    /// The recipe this image is built `from` (a recipe name), for push ordering/mounts.
    pub base: Option<String>,
    /// The registry image this image is built `from` (pinned reference), for mounts.
    #[serde(default)]
    pub base_image: Option<String>,
    /// How many of `layers` come from the base image (the recipe's own follow).
    #[serde(default)]
    pub base_layers: usize,
    pub layers: Vec<LayerReport>,
    #[serde(default)]
    pub inputs: Vec<Digest>,
    /// The platform of this manifest (`linux/arm64`), on the records of an image
    /// built as an image index; absent for a single-platform project's images.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<String>,
    /// The image index over every platform's manifest, when the project names its
    /// platforms (`[build] platforms`); the fields above are then those of the
    /// build machine's platform (or the first one built).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub index: Option<imgbuild_store::Descriptor>,
    /// Every platform's record, in the order of the index (an image index only).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub platforms: Vec<ImageRecord>,
}

impl ImageRecord {
    /// This image's record for one platform: the platform's own record of an image
    /// index, else this one when it is of that platform (a single-platform image is
    /// the build machine's).
    pub fn for_platform(&self, platform: crate::platform::Platform) -> Option<&ImageRecord> {
        let name = platform.to_string();
        if self.platforms.is_empty() {
            let mine = self
                .platform
                .clone()
                .unwrap_or_else(|| crate::platform::Platform::native().to_string());
            return (mine == name).then_some(self);
        }
        self.platforms
            .iter()
            .find(|r| r.platform.as_deref() == Some(&name))
    }

    /// Every manifest's record: each platform's of an image index, else this one.
    pub fn manifests(&self) -> Vec<&ImageRecord> {
        if self.platforms.is_empty() {
            vec![self]
        } else {
            self.platforms.iter().collect()
        }
    }

    pub fn key(project_key: &str, name: &str) -> String {
        format!("{project_key}-{name}")
    }
    pub fn load(
        store: &Store,
        project_key: &str,
        name: &str,
    ) -> anyhow::Result<Option<ImageRecord>> {
        match store.read_record(Bucket::Images, &Self::key(project_key, name))? {
            None => Ok(None),
            Some(b) => Ok(serde_json::from_slice(&b).ok()),
        }
    }
    /// Saves the record; an unchanged one is only touched (its age is what `gc`
    /// reads), which spares an fsync on every no-op build.
    pub fn save(&self, store: &Store, project_key: &str) -> anyhow::Result<()> {
        let key = Self::key(project_key, &self.name);
        let bytes = serde_json::to_vec(self)?;
        if store.read_record(Bucket::Images, &key)?.as_deref() == Some(&bytes[..]) {
            let p = store.record_path(Bucket::Images, &key);
            if std::fs::File::options()
                .write(true)
                .open(&p)
                .and_then(|f| f.set_modified(std::time::SystemTime::now()))
                .is_ok()
            {
                return Ok(());
            }
        }
        store.write_record(Bucket::Images, &key, &bytes)?;
        Ok(())
    }
}

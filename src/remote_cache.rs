//! The layer cache shared through a registry repository (`--cache REGISTRY/REPO`,
//! `[cache] repository`): what one runner built, every runner finds.
//!
//! A layer's fingerprint is known before it is built (it names every input, see
//! [`crate::source::plan_layer`]), so the cache is a map fingerprint -> layer kept as
//! one small OCI artifact per fingerprint in the cache repository, tagged
//! `fp-<fingerprint hex>`. Format version 1:
//!
//! ```json
//! {"annotations":{"org.imgbuild.layer-cache.entry":"<entry JSON>"},
//!  "artifactType":"application/vnd.imgbuild.layer-cache.v1+json",
//!  "config":{"digest":"sha256:44136fa3...","mediaType":"application/vnd.oci.empty.v1+json","size":2},
//!  "layers":[<the layer blob's descriptor>],
//!  "mediaType":"application/vnd.oci.image.manifest.v1+json","schemaVersion":2}
//! ```
//! The entry JSON (canonical: sorted keys, compact) is `{"format":
//! "imgbuild-layer-cache-v1","fingerprint","diff_id","tar_size","description","view",
//! "notes"}`: what the layers above need about this one (its directories and symlinks)
//! besides its descriptor. The layer blob itself is the manifest's one layer, so the
//! registry keeps it (and checks it exists) as long as the entry does; the config is
//! the OCI empty descriptor (`{}`). A lookup is one manifest `GET` of the tag; nothing
//! else. A format change bumps the version in the artifact type, the entry's `format`
//! and the annotation: older imgbuilds see a miss, never a wrong entry.
//!
//! Where a hit's bytes go: nowhere, unless something local needs them. They are
//! downloaded (verified by digest and size while streaming, then by `diff_id`
//! decompressing) when `out/` is written (tarballs, `out/oci`, so `--load` too), when a
//! layer above it that reads lower bytes is built (Python `.pyc` by the image's
//! interpreter, the linkage check), and when an image is read by another (files copied
//! out of it, a build step's builder image). `--no-out` skips `out/`; `--push` to the
//! cache's registry finds the blobs there or mounts them from the cache repository.
//!
//! Writes: at the end of a run, every layer this run built or found in its local store
//! that the cache lacks is written (the blob mounted from a repository the run pushed
//! to on the same registry, else uploaded). A registry that refuses a write turns the
//! cache read-only for the run with one warning; one that does not answer turns it off
//! for the run (local builds) with one warning. Neither fails the build.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use imgbuild_registry::{Client, Credentials, PushImage, Reference, RegistryError};
use imgbuild_store::{Digest, HashingWriter, Store};
use serde::{Deserialize, Serialize};

use crate::cache::{LayerRecord, LayerReport};
use crate::lower::LowerView;
use crate::progress::Progress;

/// The artifact type of a cache entry (format version 1).
pub const ARTIFACT_TYPE: &str = "application/vnd.imgbuild.layer-cache.v1+json";
/// The annotation holding the entry JSON.
pub const ENTRY_ANNOTATION: &str = "org.imgbuild.layer-cache.entry";
/// The entry's `format`.
pub const ENTRY_FORMAT: &str = "imgbuild-layer-cache-v1";
const EMPTY_MEDIA_TYPE: &str = "application/vnd.oci.empty.v1+json";
const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// The largest entry annotation written with the layer's SBOM contents (a file list
/// with checksums grows with the layer): registries refuse manifests over 4 MiB
/// (distribution, Docker Hub).
const MAX_ENTRY_ANNOTATION: usize = 1 << 20;

/// The OCI empty config (`{}`).
const EMPTY_CONFIG: &[u8] = b"{}";
/// How long a cache request keeps being retried: the cache is an optimisation, and a
/// registry that does not answer within this is skipped for the run (a local build
/// costs less than the default five minutes of retries).
const CACHE_RETRY: Duration = Duration::from_secs(5);

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum CacheMode {
    /// Look layers up, never write entries.
    Read,
    /// Write entries, never look up.
    Write,
    /// Both (the default; degrades to read when the registry refuses writes).
    #[default]
    Readwrite,
}

/// One cache entry, as the annotation holds it.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Entry {
    format: String,
    fingerprint: Digest,
    diff_id: Digest,
    tar_size: u64,
    description: String,
    view: LowerView,
    #[serde(default)]
    notes: Vec<String>,
    /// What the layer holds, for SBOMs (absent: the entry is a miss, as a local record
    /// without contents is).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    contents: Option<crate::supply::contents::LayerContents>,
}

/// What the cache did in one run (the report's `cache`).
#[derive(Clone, Debug, Default, Serialize)]
pub struct CacheReport {
    pub repository: String,
    pub mode: CacheMode,
    /// Fingerprints looked up (after the local store missed).
    pub lookups: u64,
    pub hits: u64,
    /// Hits whose blob was downloaded (something local needed the bytes).
    pub downloads: u64,
    /// Hits rebuilt by `--cache-verify` and found identical.
    pub verified: u64,
    /// Entries refused (blob failed verification): the layer was built instead.
    pub rejected: u64,
    /// Entries written.
    pub written: u64,
    pub warnings: Vec<String>,
}

/// Settings of the cache for one run.
pub struct CacheOptions {
    pub repository: String,
    pub mode: CacheMode,
    /// `--cache-verify N`: rebuild this percentage of hits and compare.
    pub verify_percent: u8,
    /// `out/` is written: hits are downloaded when found.
    pub want_bytes: bool,
    pub registry: imgbuild_registry::ClientOptions,
}

/// The registry cache of one run; shared by the threads that build images.
pub struct RemoteCache {
    target: Reference,
    client: Client,
    mode: CacheMode,
    verify_percent: u8,
    /// Hits are downloaded as found (`out/` is written).
    pub want_bytes: bool,
    seed: u64,
    /// The registry did not answer: no more requests this run.
    off: AtomicBool,
    /// The registry refused a write: read-only for the rest of the run.
    read_only: AtomicBool,
    /// Hits, by fingerprint (their blobs may be absent locally).
    hits: Mutex<BTreeMap<Digest, LayerRecord>>,
    /// Fingerprints the cache did not have (a plan before the build asks once).
    misses: Mutex<std::collections::BTreeSet<Digest>>,
    /// Layers this run has locally (built, or found in the store), to write.
    local: Mutex<BTreeMap<Digest, LayerRecord>>,
    report: Mutex<CacheReport>,
    progress: Progress,
}

impl RemoteCache {
    pub fn new(opts: CacheOptions, progress: Progress) -> Result<RemoteCache> {
        let target: Reference = opts.repository.parse().with_context(|| {
            format!(
                "cache repository `{}` is not a valid REGISTRY/REPOSITORY",
                opts.repository
            )
        })?;
        if target.tag.is_some() || target.digest.is_some() {
            bail!(
                "cache repository `{}`: name a repository, without a tag or digest",
                opts.repository
            );
        }
        let mut registry = opts.registry;
        registry.retry.timeout = registry.retry.timeout.min(CACHE_RETRY);
        let client = Client::new(registry, Credentials::from_process_env())?;
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0)
            ^ u64::from(std::process::id());
        Ok(RemoteCache {
            report: Mutex::new(CacheReport {
                repository: target.name(),
                mode: opts.mode,
                ..Default::default()
            }),
            target,
            client,
            mode: opts.mode,
            verify_percent: opts.verify_percent.min(100),
            want_bytes: opts.want_bytes,
            seed,
            off: AtomicBool::new(false),
            read_only: AtomicBool::new(false),
            hits: Default::default(),
            misses: Default::default(),
            local: Default::default(),
            progress,
        })
    }

    /// The cache of a command: `--cache` or `[cache] repository` (none: `None`), with
    /// `--cache-mode` or `[cache] mode`.
    pub fn open(
        project: &crate::project::Project,
        repository: Option<&str>,
        mode: Option<CacheMode>,
        verify_percent: u8,
    ) -> Result<Option<std::sync::Arc<RemoteCache>>> {
        let settings = crate::settings::Settings::load(&project.root)?;
        let Some(repository) = repository
            .map(str::to_owned)
            .or(settings.cache.repository.clone())
        else {
            if verify_percent > 0 {
                bail!("--cache-verify needs a registry cache (--cache or [cache] repository)");
            }
            return Ok(None);
        };
        let registry = imgbuild_registry::ClientOptions {
            counts: project.registry_counts.clone(),
            ..settings.registry_options(&[], project.jobs.clamp(4, 8))
        };
        Ok(Some(std::sync::Arc::new(RemoteCache::new(
            CacheOptions {
                repository,
                mode: mode.or(settings.cache.mode).unwrap_or_default(),
                verify_percent,
                want_bytes: project.write_out,
                registry,
            },
            project.progress.clone(),
        )?)))
    }

    pub fn registry(&self) -> &str {
        &self.target.registry
    }

    pub fn repository(&self) -> &str {
        &self.target.repository
    }

    fn tag(fingerprint: &Digest) -> String {
        format!("fp-{}", fingerprint.hex())
    }

    fn warn(&self, msg: String) {
        self.progress.warn(&msg);
        self.report.lock().expect("report").warnings.push(msg);
    }

    /// Whether `--cache-verify` picks this hit (each hit independently, with the
    /// percentage as probability; 100 picks all).
    pub fn verify_this(&self, fingerprint: &Digest) -> bool {
        if self.verify_percent == 0 {
            return false;
        }
        let h = Digest::of_bytes(format!("{}{}", self.seed, fingerprint).as_bytes());
        let n = u64::from_str_radix(&h.hex()[..8], 16).unwrap_or(0);
        n % 100 < u64::from(self.verify_percent)
    }

    /// The entry of a fingerprint, if the cache repository has one: one manifest `GET`.
    /// A registry that fails is turned off for the run, with a warning.
    pub fn lookup(&self, fingerprint: &Digest) -> Option<LayerRecord> {
        if self.mode == CacheMode::Write || self.off.load(Ordering::Relaxed) {
            return None;
        }
        if let Some(hit) = self.hits.lock().expect("hits").get(fingerprint) {
            return Some(hit.clone());
        }
        if self.misses.lock().expect("misses").contains(fingerprint) {
            return None;
        }
        self.report.lock().expect("report").lookups += 1;
        let reference = Reference {
            tag: Some(Self::tag(fingerprint)),
            ..self.target.clone()
        };
        let fetched = match self.client.fetch_manifest(&reference) {
            Ok(f) => f,
            Err(
                RegistryError::ManifestUnknown { .. } | RegistryError::RepositoryUnknown { .. },
            ) => {
                self.misses
                    .lock()
                    .expect("misses")
                    .insert(fingerprint.clone());
                return None;
            }
            Err(e) => {
                if !self.off.swap(true, Ordering::Relaxed) {
                    self.warn(format!(
                        "registry cache {}: {e}; building without it for this run",
                        self.target.name()
                    ));
                }
                return None;
            }
        };
        match parse_entry(&fetched.bytes, fingerprint) {
            Ok(rec) => {
                self.report.lock().expect("report").hits += 1;
                self.hits
                    .lock()
                    .expect("hits")
                    .insert(fingerprint.clone(), rec.clone());
                Some(rec)
            }
            Err(e) => {
                self.warn(format!(
                    "registry cache {}: entry {} ignored: {e:#}",
                    self.target.name(),
                    Self::tag(fingerprint)
                ));
                None
            }
        }
    }

    /// Downloads a hit's blob into the store, verified (digest and size while
    /// streaming, then the `diff_id` of its uncompressed tar), and records it in the
    /// local cache, so the next run finds it there.
    pub fn fetch(&self, store: &Store, fingerprint: &Digest, rec: &LayerRecord) -> Result<()> {
        let d = &rec.descriptor;
        let had = store.has_blob(&d.digest);
        self.client
            .download_blob(
                store,
                &self.target.registry,
                &self.target.repository,
                &d.digest,
                d.size,
            )
            .with_context(|| {
                format!(
                    "registry cache {}: downloading the blob of entry {}",
                    self.target.name(),
                    Self::tag(fingerprint)
                )
            })?;
        let diff_id = diff_id_of(store, &d.digest)?;
        if diff_id != rec.diff_id {
            bail!(
                "registry cache {}: entry {} names blob {} with diff_id {}, but that blob's tar has diff_id {diff_id}",
                self.target.name(),
                Self::tag(fingerprint),
                d.digest,
                rec.diff_id
            );
        }
        if !had {
            self.report.lock().expect("report").downloads += 1;
        }
        let mut rec = rec.clone();
        rec.in_caches = vec![self.target.name()];
        rec.save(store, fingerprint)?;
        Ok(())
    }

    /// Looks a fingerprint up and, if `out/` is written, downloads the hit. A hit whose
    /// blob fails verification is refused with a warning (the layer is then built).
    pub fn find(&self, store: &Store, fingerprint: &Digest, bytes: bool) -> Option<LayerRecord> {
        let rec = self.lookup(fingerprint)?;
        if bytes && let Err(e) = self.fetch(store, fingerprint, &rec) {
            self.report.lock().expect("report").rejected += 1;
            self.warn(format!("{e:#}; building the layer instead"));
            return None;
        }
        Some(rec)
    }

    /// Makes the blobs of these layers local (downloading the cache hits among them):
    /// something is about to read their bytes.
    pub fn ensure_local(&self, store: &Store, layers: &[LayerReport]) -> Result<()> {
        for l in layers {
            if store.has_blob(&l.descriptor.digest) {
                continue;
            }
            let Some(fp) = &l.fingerprint else { continue };
            let hit = self.hits.lock().expect("hits").get(fp).cloned();
            if let Some(rec) = hit {
                self.fetch(store, fp, &rec)?;
            }
        }
        Ok(())
    }

    /// [`RemoteCache::ensure_local`] for blobs named by digest.
    pub fn ensure_blobs(&self, store: &Store, blobs: &[Digest]) -> Result<()> {
        let wanted: Vec<(Digest, LayerRecord)> = self
            .hits
            .lock()
            .expect("hits")
            .iter()
            .filter(|(_, r)| {
                blobs.contains(&r.descriptor.digest) && !store.has_blob(&r.descriptor.digest)
            })
            .map(|(f, r)| (f.clone(), r.clone()))
            .collect();
        for (fp, rec) in wanted {
            self.fetch(store, &fp, &rec)?;
        }
        Ok(())
    }

    /// A layer this run has in its store (built, or found locally): written at the end
    /// unless the cache has it.
    pub fn record_local(&self, fingerprint: &Digest, rec: &LayerRecord) {
        if rec.in_caches.contains(&self.target.name())
            || self.hits.lock().expect("hits").contains_key(fingerprint)
        {
            return;
        }
        self.local
            .lock()
            .expect("local")
            .insert(fingerprint.clone(), rec.clone());
    }

    /// A `--cache-verify` rebuild came out identical.
    pub fn verified(&self) {
        self.report.lock().expect("report").verified += 1;
    }

    /// `--cache-verify`: the rebuilt layer differs from the entry. The error names the
    /// layer and the files that differ (the entry's blob is downloaded, verified, to
    /// compare).
    pub fn mismatch(
        &self,
        store: &Store,
        what: &str,
        fingerprint: &Digest,
        entry: &LayerRecord,
        rebuilt: &Digest,
    ) -> anyhow::Error {
        let head = format!(
            "--cache-verify: {what}: the registry cache {} entry {} has blob {} (diff_id {}), but building the layer gives {rebuilt}",
            self.target.name(),
            Self::tag(fingerprint),
            entry.descriptor.digest,
            entry.diff_id
        );
        if let Err(e) = self.client.download_blob(
            store,
            &self.target.registry,
            &self.target.repository,
            &entry.descriptor.digest,
            entry.descriptor.size,
        ) {
            return anyhow::anyhow!("{head}; the entry's blob cannot be fetched: {e}");
        }
        match (
            tar_listing(store, &entry.descriptor.digest),
            tar_listing(store, rebuilt),
        ) {
            (Ok(a), Ok(b)) => {
                let mut differ: Vec<String> = vec![];
                for (p, x) in &a {
                    match b.get(p) {
                        None => differ.push(format!("{p} (only in the cache entry)")),
                        Some(y) if y != x => differ.push(format!("{p} ({x} -> {y})")),
                        _ => {}
                    }
                }
                for p in b.keys() {
                    if !a.contains_key(p) {
                        differ.push(format!("{p} (only in the rebuilt layer)"));
                    }
                }
                let more = differ.len().saturating_sub(20);
                differ.truncate(20);
                if more > 0 {
                    differ.push(format!("and {more} more"));
                }
                if differ.is_empty() {
                    differ.push("(same files; the tar encoding differs)".into());
                }
                anyhow::anyhow!(
                    "{head}; files that differ: {}. Someone with push access to the cache repository may have changed it, or the layer is not reproducible; delete the tag or run with --cache-mode write",
                    differ.join(", ")
                )
            }
            (Err(e), _) | (_, Err(e)) => anyhow::anyhow!("{head}; comparing them failed: {e:#}"),
        }
    }

    /// Writes an entry for every layer this run has locally that the cache lacks. The
    /// blobs are mounted from `pushed` (repositories this run pushed to, on any registry:
    /// those of the cache's registry are used) when they are there, else uploaded.
    /// Failures are warnings: a refused write makes the cache read-only for the run.
    pub fn write_entries(&self, store: &Store, pushed: &[String]) {
        if self.mode == CacheMode::Read
            || self.off.load(Ordering::Relaxed)
            || self.read_only.load(Ordering::Relaxed)
        {
            return;
        }
        let local = std::mem::take(&mut *self.local.lock().expect("local"));
        if local.is_empty() {
            return;
        }
        let mut mount_from: Vec<String> = pushed
            .iter()
            .filter_map(|r| r.split('@').next()?.parse::<Reference>().ok())
            .filter(|r| {
                r.registry == self.target.registry && r.repository != self.target.repository
            })
            .map(|r| r.repository)
            .collect();
        mount_from.sort();
        mount_from.dedup();
        let result = (|| -> Result<usize> {
            let config = store.put_bytes(EMPTY_CONFIG)?;
            let mut images = vec![];
            for (fp, rec) in &local {
                let manifest = entry_manifest(fp, rec, &config)?;
                let digest = store.put_bytes(&manifest)?;
                let mut img = PushImage::from_store(store, self.target.clone(), &digest)?;
                img.media_type = Some(OCI_MANIFEST.into());
                img.tags = vec![Self::tag(fp)];
                img.mount_from = mount_from.clone();
                images.push(img);
            }
            let report = self.client.push(store, &images)?;
            // the store remembers that the cache has them: the next build asks nothing
            for (fp, rec) in &local {
                let mut rec = rec.clone();
                rec.in_caches.push(self.target.name());
                rec.save(store, fp)?;
            }
            Ok(report.images.iter().filter(|i| !i.manifest_existed).count())
        })();
        match result {
            Ok(n) => self.report.lock().expect("report").written += n as u64,
            Err(e) => {
                let refused = e.chain().any(|c| {
                    matches!(
                        c.downcast_ref::<RegistryError>(),
                        Some(RegistryError::Denied { .. } | RegistryError::AuthFailed { .. })
                    )
                }) || {
                    let m = format!("{e:#}");
                    m.contains("denied")
                        || m.contains("DENIED")
                        || m.contains("403")
                        || m.contains("401")
                        || m.contains("unauthorized")
                };
                self.read_only.store(true, Ordering::Relaxed);
                if refused {
                    self.warn(format!(
                        "registry cache {} refused the write ({e:#}); using it read-only (the credentials may not push there; --cache-mode read says so)",
                        self.target.name()
                    ));
                } else {
                    self.warn(format!(
                        "registry cache {}: writing entries failed ({e:#}); the next run builds them again",
                        self.target.name()
                    ));
                }
            }
        }
    }

    /// What the cache did this run.
    pub fn report(&self) -> CacheReport {
        self.report.lock().expect("report").clone()
    }
}

/// The manifest of one entry (canonical JSON: serde_json sorts object keys).
fn entry_manifest(fingerprint: &Digest, rec: &LayerRecord, config: &Digest) -> Result<Vec<u8>> {
    let mut entry = Entry {
        format: ENTRY_FORMAT.into(),
        fingerprint: fingerprint.clone(),
        diff_id: rec.diff_id.clone(),
        tar_size: rec.tar_size,
        description: rec.description.clone(),
        view: rec.view.clone(),
        notes: rec.notes.clone(),
        contents: rec.contents.clone(),
    };
    let mut text = serde_json::to_value(&entry)?.to_string();
    if text.len() > MAX_ENTRY_ANNOTATION {
        // a layer of very many files: without its SBOM contents the entry is a miss on
        // the next runner (rebuilt, same bytes), never a manifest the registry refuses
        entry.contents = None;
        text = serde_json::to_value(&entry)?.to_string();
    }
    let entry = text;
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": ARTIFACT_TYPE,
        "config": {"mediaType": EMPTY_MEDIA_TYPE, "digest": config.to_string(), "size": EMPTY_CONFIG.len()},
        "layers": [serde_json::to_value(&rec.descriptor)?],
        "annotations": {ENTRY_ANNOTATION: entry},
    });
    Ok(serde_json::to_vec(&manifest)?)
}

/// The layer record an entry manifest describes, checked against the fingerprint
/// looked up.
fn parse_entry(manifest: &[u8], fingerprint: &Digest) -> Result<LayerRecord> {
    #[derive(Deserialize)]
    struct Manifest {
        #[serde(rename = "artifactType")]
        artifact_type: Option<String>,
        layers: Vec<imgbuild_store::Descriptor>,
        #[serde(default)]
        annotations: BTreeMap<String, String>,
    }
    let m: Manifest = serde_json::from_slice(manifest).context("not an entry manifest")?;
    if m.artifact_type.as_deref() != Some(ARTIFACT_TYPE) {
        bail!(
            "artifact type {:?}, not {ARTIFACT_TYPE} (another format version?)",
            m.artifact_type
        );
    }
    let [descriptor] =
        <[_; 1]>::try_from(m.layers).map_err(|_| anyhow::anyhow!("not one layer"))?;
    let entry: Entry = serde_json::from_str(
        m.annotations
            .get(ENTRY_ANNOTATION)
            .context("no entry annotation")?,
    )
    .context("the entry annotation is not an entry")?;
    if entry.format != ENTRY_FORMAT {
        bail!("entry format {}, not {ENTRY_FORMAT}", entry.format);
    }
    if entry.fingerprint != *fingerprint {
        bail!(
            "its fingerprint is {}, not the one looked up",
            entry.fingerprint
        );
    }
    Ok(LayerRecord {
        descriptor,
        diff_id: entry.diff_id,
        tar_size: entry.tar_size,
        description: entry.description,
        view: entry.view,
        inputs: vec![],
        notes: entry.notes,
        fingerprint_inputs: vec![],
        in_caches: vec![],
        contents: entry.contents,
    })
}

/// The sha256 of a gzip layer blob's uncompressed tar (its `diff_id`).
fn diff_id_of(store: &Store, blob: &Digest) -> Result<Digest> {
    let reader = store.open_verified(blob)?;
    let mut gz = flate2::read::MultiGzDecoder::new(std::io::BufReader::new(reader));
    let mut w = HashingWriter::new(std::io::sink());
    std::io::copy(&mut gz, &mut w).with_context(|| format!("decompressing blob {blob}"))?;
    let (_, d, _) = w.finish();
    Ok(d)
}

/// Every entry of a gzip layer blob: path -> type, mode, owner, size, content hash or
/// link target (to name what differs).
fn tar_listing(store: &Store, blob: &Digest) -> Result<BTreeMap<String, String>> {
    let reader = store.open_verified(blob)?;
    let gz = flate2::read::MultiGzDecoder::new(std::io::BufReader::new(reader));
    let mut archive = tar::Archive::new(gz);
    let mut out = BTreeMap::new();
    for e in archive
        .entries()
        .with_context(|| format!("reading blob {blob}"))?
    {
        let mut e = e.with_context(|| format!("reading blob {blob}"))?;
        let path = format!("/{}", e.path()?.display());
        let h = e.header().clone();
        let link = e
            .link_name()?
            .map(|l| format!(" -> {}", l.display()))
            .unwrap_or_default();
        let mut w = HashingWriter::new(std::io::sink());
        std::io::copy(&mut e, &mut w)?;
        let (_, content, size) = w.finish();
        out.insert(
            path,
            format!(
                "{:?} {:o} {}:{} {} bytes sha256:{}{link}",
                h.entry_type(),
                h.mode().unwrap_or(0),
                h.uid().unwrap_or(0),
                h.gid().unwrap_or(0),
                size,
                &content.hex()[..12]
            ),
        );
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> LayerRecord {
        LayerRecord {
            descriptor: imgbuild_store::Descriptor::new(
                imgbuild_store::media::LAYER_GZIP,
                Digest::of_bytes(b"blob"),
                4,
            ),
            diff_id: Digest::of_bytes(b"tar"),
            tar_size: 1024,
            description: "files: /app".into(),
            view: LowerView::default(),
            inputs: vec![Digest::of_bytes(b"a .deb")],
            notes: vec!["a note".into()],
            fingerprint_inputs: vec![],
            in_caches: vec![],
            contents: None,
        }
    }

    #[test]
    fn contents_too_large_for_a_manifest_are_left_out_of_the_entry() {
        use crate::supply::contents::{LayerContents, LayerFile};
        let fp = Digest::of_bytes(b"fingerprint");
        let config = Digest::of_bytes(EMPTY_CONFIG);
        let file = |i: usize| LayerFile {
            path: format!("srv/site/{i:06}.html"),
            sha256: "a".repeat(64),
            sha1: "b".repeat(40),
            source: None,
        };
        // a few files: the contents travel with the entry
        let mut rec = record();
        rec.contents = Some(LayerContents {
            files: (0..3).map(file).collect(),
            ..Default::default()
        });
        let back = parse_entry(&entry_manifest(&fp, &rec, &config).unwrap(), &fp).unwrap();
        assert_eq!(back.contents, rec.contents);
        // very many: left out (a miss next time), the manifest stays small
        rec.contents = Some(LayerContents {
            files: (0..20_000).map(file).collect(),
            ..Default::default()
        });
        let m = entry_manifest(&fp, &rec, &config).unwrap();
        assert!(m.len() < MAX_ENTRY_ANNOTATION + 4096, "{}", m.len());
        assert_eq!(parse_entry(&m, &fp).unwrap().contents, None);
    }

    #[test]
    fn an_entry_reads_back_as_its_layer_and_only_under_its_fingerprint() {
        let fp = Digest::of_bytes(b"fingerprint");
        let config = Digest::of_bytes(EMPTY_CONFIG);
        let m = entry_manifest(&fp, &record(), &config).unwrap();
        // canonical and stable: the same entry is the same manifest
        assert_eq!(m, entry_manifest(&fp, &record(), &config).unwrap());
        let v: serde_json::Value = serde_json::from_slice(&m).unwrap();
        assert_eq!(v["artifactType"], ARTIFACT_TYPE);
        assert_eq!(v["config"]["mediaType"], EMPTY_MEDIA_TYPE);
        let back = parse_entry(&m, &fp).unwrap();
        assert_eq!(back.descriptor, record().descriptor);
        assert_eq!(back.diff_id, record().diff_id);
        assert_eq!(back.notes, record().notes);
        // local store references are not shared
        assert!(back.inputs.is_empty());
        let other = Digest::of_bytes(b"other");
        assert!(parse_entry(&m, &other).is_err());
        let mut v2 = v.clone();
        v2["artifactType"] = "application/vnd.imgbuild.layer-cache.v2+json".into();
        assert!(parse_entry(&serde_json::to_vec(&v2).unwrap(), &fp).is_err());
    }
}

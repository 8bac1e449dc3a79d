//! Pushing a set of images as one release.
//!
//! Order of work, so that a half-failed push never moves a tag and no blob goes up twice:
//! 1. every image's manifest is looked up with a `HEAD` by digest and by each of its tags (in
//!    parallel): an image whose manifest is already in its repository needs no blob (the
//!    registry checked them when the manifest was put), and a tag that already names the
//!    manifest is not written again, so pushing an unchanged release only reads;
//! 2. for the other images every (repository, blob) pair is checked with a `HEAD`;
//! 3. each blob that some repository lacks is handled by one job (jobs run in parallel, at
//!    most [`crate::ClientOptions::parallelism`]): if a repository of the same registry
//!    already has it (seen by the `HEAD`s, holding a manifest that uses it, or named in
//!    [`PushImage::mount_from`], e.g. the base image's repository) it is mounted from there;
//!    otherwise it is uploaded once, to the first repository in name order, and mounted into
//!    the others (with a fallback to an upload when the registry declines the mount);
//! 4. every missing manifest is pushed by digest, byte for byte as given (so the digest in
//!    the registry is the local one);
//! 5. only when all manifests are in, the tags are moved (`PUT` of the manifest by tag).
//!
//! An image built for several platforms goes up as its platforms' manifests (pushed as
//! above, without tags) and then its image index ([`Client::push_indexes`]: every index
//! by digest, then every tag).
//!
//! The report says, per image, which blobs were uploaded, mounted or already there, with byte
//! totals; it serialises to JSON for `--json`.

use std::collections::{BTreeMap, BTreeSet};

use imgbuild_store::{Digest, Store};
use oci_spec::image::{Descriptor, ImageManifest};
use reqwest::StatusCode;
use reqwest::header::{ACCEPT, CONTENT_TYPE};

use crate::auth::repo_scope;
use crate::error::{RegistryError, Result};
use crate::reference::{Reference, check_tag};
use crate::upload::{Mount, blob_exists, cancel_upload, mount, upload_blob};
use crate::{Client, parallel_map};

/// The OCI image index media type.
const INDEX_MEDIA_TYPE: &str = "application/vnd.oci.image.index.v1+json";

/// An image index of a release (an image built for several platforms): its
/// manifests are pushed as [`PushImage`]s without tags, then the index.
#[derive(Clone, Debug)]
pub struct PushIndex {
    /// Registry and repository (the same as its manifests').
    pub target: Reference,
    /// The index exactly as stored locally; pushed byte for byte.
    pub index: Vec<u8>,
    /// Tags to point at the index once every index of the release is pushed.
    pub tags: Vec<String>,
}

/// What a push did with one image index.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct IndexReport {
    /// `registry/repository@sha256:...` of the index.
    pub reference: String,
    pub digest: Digest,
    pub tags: Vec<String>,
}

/// One image of a release.
#[derive(Clone, Debug)]
pub struct PushImage {
    /// Registry and repository to push to (a tag here is added to `tags`; a digest must be
    /// the manifest's).
    pub target: Reference,
    /// The manifest exactly as stored locally; pushed byte for byte.
    pub manifest: Vec<u8>,
    /// Media type to send; `None`: the manifest's `mediaType`, else the OCI manifest type.
    pub media_type: Option<String>,
    pub config: Descriptor,
    pub layers: Vec<Descriptor>,
    /// Tags to point at this manifest once every image of the release is pushed.
    pub tags: Vec<String>,
    /// Repositories of the same registry that may already hold some of the blobs (the base
    /// image's repository): blobs are mounted from them instead of uploaded.
    pub mount_from: Vec<String>,
}

/// How often a manifest PUT answered `MANIFEST_BLOB_UNKNOWN` is tried again (after
/// 0.25, 0.5 and 1 s): long enough for a concurrent push of the same blob to commit.
const BLOB_UNKNOWN_RETRIES: u32 = 3;

impl PushImage {
    /// An image whose manifest bytes are in the store under `manifest_digest`; the config and
    /// layer descriptors are read from the manifest.
    pub fn from_store(
        store: &Store,
        target: Reference,
        manifest_digest: &Digest,
    ) -> Result<PushImage> {
        let manifest = store.read_bytes(manifest_digest)?;
        let parsed =
            ImageManifest::from_reader(&manifest[..]).map_err(|e| RegistryError::InvalidInput {
                repository: target.name(),
                message: format!("manifest {manifest_digest} is not an image manifest: {e}"),
            })?;
        Ok(PushImage {
            tags: target.tag.iter().cloned().collect(),
            target,
            media_type: None,
            config: parsed.config().clone(),
            layers: parsed.layers().clone(),
            manifest,
            mount_from: vec![],
        })
    }

    pub fn digest(&self) -> Digest {
        Digest::of_bytes(&self.manifest)
    }

    fn media_type(&self) -> String {
        if let Some(m) = &self.media_type {
            return m.clone();
        }
        serde_json::from_slice::<serde_json::Value>(&self.manifest)
            .ok()
            .and_then(|v| {
                v.get("mediaType")
                    .and_then(|m| m.as_str())
                    .map(str::to_owned)
            })
            .unwrap_or_else(|| "application/vnd.oci.image.manifest.v1+json".to_owned())
    }

    /// Config then layers, each digest once, as (digest, size).
    fn blobs(&self) -> Result<Vec<(Digest, u64)>> {
        let mut seen = BTreeSet::new();
        let mut out = vec![];
        for d in std::iter::once(&self.config).chain(self.layers.iter()) {
            let digest = store_digest(d).map_err(|message| RegistryError::InvalidInput {
                repository: self.target.name(),
                message,
            })?;
            if seen.insert(digest.clone()) {
                out.push((digest, d.size()));
            }
        }
        Ok(out)
    }

    fn all_tags(&self) -> Vec<String> {
        let mut tags: Vec<String> = self
            .tags
            .iter()
            .chain(self.target.tag.iter())
            .cloned()
            .collect();
        tags.sort();
        tags.dedup();
        tags
    }

    /// Checks that the descriptors given are the manifest's own.
    fn validate(&self) -> Result<()> {
        let bad = |message: String| RegistryError::InvalidInput {
            repository: self.target.name(),
            message,
        };
        let parsed = ImageManifest::from_reader(&self.manifest[..])
            .map_err(|e| bad(format!("the manifest is not an image manifest: {e}")))?;
        let same =
            |a: &Descriptor, b: &Descriptor| a.digest() == b.digest() && a.size() == b.size();
        if !same(parsed.config(), &self.config) {
            return Err(bad(
                "the config descriptor differs from the manifest's".into()
            ));
        }
        if parsed.layers().len() != self.layers.len()
            || !parsed
                .layers()
                .iter()
                .zip(&self.layers)
                .all(|(a, b)| same(a, b))
        {
            return Err(bad(
                "the layer descriptors differ from the manifest's".into()
            ));
        }
        if let Some(d) = &self.target.digest
            && *d != self.digest()
        {
            return Err(bad(format!(
                "the target names digest {d} but the manifest's is {}",
                self.digest()
            )));
        }
        for t in self.all_tags() {
            check_tag(&t)?;
        }
        Ok(())
    }
}

fn store_digest(d: &Descriptor) -> std::result::Result<Digest, String> {
    d.digest()
        .to_string()
        .parse::<Digest>()
        .map_err(|_| format!("descriptor digest {} is not a sha256 digest", d.digest()))
}

/// What happened to one blob of one image.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum BlobOutcome {
    /// Sent from the store.
    Uploaded,
    /// Mounted from another repository of the same registry.
    Mounted { from: String },
    /// The repository already had it.
    Present,
    /// Another image of this release in the same repository brought it.
    Shared,
}

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct BlobReport {
    pub digest: Digest,
    pub size: u64,
    #[serde(flatten)]
    pub outcome: BlobOutcome,
}

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct ImageReport {
    /// `registry/repository@sha256:...`
    pub reference: String,
    pub digest: Digest,
    pub tags: Vec<String>,
    /// The registry already had the manifest (nothing was sent for it).
    pub manifest_existed: bool,
    pub bytes_uploaded: u64,
    pub bytes_mounted: u64,
    pub bytes_skipped: u64,
    /// Config first, then layers.
    pub blobs: Vec<BlobReport>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct PushReport {
    pub images: Vec<ImageReport>,
    /// The image indexes pushed after the images (images built for several platforms).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub indexes: Vec<IndexReport>,
    pub bytes_uploaded: u64,
    pub bytes_mounted: u64,
    pub bytes_skipped: u64,
}

/// (registry, repository)
type Repo = (String, String);

/// One blob to bring into several repositories of one registry.
struct BlobJob {
    registry: String,
    digest: Digest,
    size: u64,
    /// Repositories that lack it, in name order.
    targets: Vec<String>,
    /// Repositories that have it (seen), then hints (may have it), in order of preference.
    sources: Vec<String>,
}

impl Client {
    /// Pushes `images` as one release (see the module doc for the order of work). Nothing is
    /// tagged unless every manifest was pushed.
    pub fn push(&self, store: &Store, images: &[PushImage]) -> Result<PushReport> {
        for img in images {
            img.validate()?;
        }
        // Every (repository, blob) pair, and the hints per (registry, blob).
        let mut pairs: BTreeMap<(Repo, Digest), u64> = BTreeMap::new();
        let mut hints: BTreeMap<(String, Digest), Vec<String>> = BTreeMap::new();
        for img in images {
            let repo = (img.target.registry.clone(), img.target.repository.clone());
            for (digest, size) in img.blobs()? {
                pairs.insert((repo.clone(), digest.clone()), size);
                let h = hints.entry((repo.0.clone(), digest)).or_default();
                for m in &img.mount_from {
                    if m != &repo.1 && !h.contains(m) {
                        h.push(m.clone());
                    }
                }
            }
        }
        let parallelism = self.options.parallelism;

        // 1. What the registry already has: each manifest by digest, and each tag.
        let lookups: Vec<(usize, Option<String>)> = images
            .iter()
            .enumerate()
            .flat_map(|(i, img)| {
                std::iter::once((i, None))
                    .chain(img.all_tags().into_iter().map(move |t| (i, Some(t))))
            })
            .collect();
        let found = parallel_map(&lookups, parallelism, |(i, tag)| {
            self.manifest_at(&images[*i], tag.as_deref())
        })?;
        let mut manifest_existed = vec![false; images.len()];
        let mut tags_to_move: Vec<(&PushImage, String)> = vec![];
        for ((i, tag), at) in lookups.iter().zip(found) {
            let there = at.as_ref() == Some(&images[*i].digest());
            match tag {
                None => manifest_existed[*i] = there,
                Some(t) if !there => tags_to_move.push((&images[*i], t.clone())),
                Some(_) => {}
            }
        }

        // 2. Every (repository, blob) pair of the images whose manifest is missing, and the
        // hints per (registry, blob); a repository holding a manifest holds its blobs.
        let mut pairs: BTreeMap<(Repo, Digest), u64> = BTreeMap::new();
        let mut hints: BTreeMap<(String, Digest), Vec<String>> = BTreeMap::new();
        let mut known: BTreeSet<(Repo, Digest)> = BTreeSet::new();
        for (img, existed) in images.iter().zip(&manifest_existed) {
            let repo = (img.target.registry.clone(), img.target.repository.clone());
            for (digest, size) in img.blobs()? {
                if *existed {
                    known.insert((repo.clone(), digest));
                    continue;
                }
                pairs.insert((repo.clone(), digest.clone()), size);
                let h = hints.entry((repo.0.clone(), digest)).or_default();
                for m in &img.mount_from {
                    if m != &repo.1 && !h.contains(m) {
                        h.push(m.clone());
                    }
                }
            }
        }
        let keys: Vec<(Repo, Digest)> = pairs
            .keys()
            .filter(|k| !known.contains(*k))
            .cloned()
            .collect();
        let present = parallel_map(&keys, parallelism, |((registry, repository), digest)| {
            blob_exists(&*self.session(registry)?, repository, digest)
        })?;
        let mut present: BTreeMap<(Repo, Digest), bool> = keys.into_iter().zip(present).collect();
        for k in &known {
            present.insert(k.clone(), true);
        }

        // 3. Plan one job per (registry, blob) that some repository lacks.
        let mut jobs: BTreeMap<(String, Digest), BlobJob> = BTreeMap::new();
        for (((registry, repository), digest), size) in &pairs {
            let job = jobs
                .entry((registry.clone(), digest.clone()))
                .or_insert_with(|| BlobJob {
                    registry: registry.clone(),
                    digest: digest.clone(),
                    size: *size,
                    targets: vec![],
                    sources: vec![],
                });
            if present[&((registry.clone(), repository.clone()), digest.clone())] {
                job.sources.push(repository.clone());
            } else {
                job.targets.push(repository.clone());
            }
        }
        let mut jobs: Vec<BlobJob> = jobs
            .into_values()
            .filter(|j| !j.targets.is_empty())
            .map(|mut j| {
                let holders = known
                    .iter()
                    .filter(|((r, _), d)| *r == j.registry && *d == j.digest)
                    .map(|((_, repo), _)| repo);
                for h in holders.chain(
                    hints
                        .get(&(j.registry.clone(), j.digest.clone()))
                        .into_iter()
                        .flatten(),
                ) {
                    if !j.sources.contains(h) && !j.targets.contains(h) {
                        j.sources.push(h.clone());
                    }
                }
                j
            })
            .collect();
        // Big blobs first, so the longest transfers overlap the rest.
        jobs.sort_by(|a, b| b.size.cmp(&a.size).then_with(|| a.digest.cmp(&b.digest)));
        let outcomes = parallel_map(&jobs, parallelism, |job| self.run_blob_job(store, job))?;
        let mut outcome: BTreeMap<(Repo, Digest), BlobOutcome> = BTreeMap::new();
        for (job, per_target) in jobs.iter().zip(outcomes) {
            for (repository, o) in per_target {
                outcome.insert(((job.registry.clone(), repository), job.digest.clone()), o);
            }
        }

        // 4. Missing manifests by digest, all of them, before any tag.
        let missing: Vec<&PushImage> = images
            .iter()
            .zip(&manifest_existed)
            .filter(|(_, existed)| !**existed)
            .map(|(img, _)| img)
            .collect();
        parallel_map(&missing, parallelism, |img| self.put_manifest(img, None))?;

        // 5. Tags that do not name the manifest yet.
        parallel_map(&tags_to_move, parallelism, |(img, tag)| {
            self.put_manifest(img, Some(tag))
        })?;

        // Report: a pair's outcome goes to the first image listing it; later images of the
        // same repository count it as shared.
        let mut claimed: BTreeSet<(Repo, Digest)> = BTreeSet::new();
        let mut report = PushReport::default();
        for (img, manifest_existed) in images.iter().zip(manifest_existed) {
            let repo = (img.target.registry.clone(), img.target.repository.clone());
            let digest = img.digest();
            let mut r = ImageReport {
                reference: format!("{}@{digest}", img.target.name()),
                digest,
                tags: img.all_tags(),
                manifest_existed,
                bytes_uploaded: 0,
                bytes_mounted: 0,
                bytes_skipped: 0,
                blobs: vec![],
            };
            for (d, size) in img.blobs()? {
                let key = (repo.clone(), d.clone());
                let o = if !claimed.insert(key.clone()) {
                    BlobOutcome::Shared
                } else {
                    outcome.get(&key).cloned().unwrap_or(BlobOutcome::Present)
                };
                match o {
                    BlobOutcome::Uploaded => r.bytes_uploaded += size,
                    BlobOutcome::Mounted { .. } => r.bytes_mounted += size,
                    BlobOutcome::Present | BlobOutcome::Shared => r.bytes_skipped += size,
                }
                r.blobs.push(BlobReport {
                    digest: d,
                    size,
                    outcome: o,
                });
            }
            report.bytes_uploaded += r.bytes_uploaded;
            report.bytes_mounted += r.bytes_mounted;
            report.bytes_skipped += r.bytes_skipped;
            report.images.push(r);
        }
        Ok(report)
    }

    /// Brings one blob into every target repository: mount from a source when there is one,
    /// else upload to the first target and mount into the rest.
    fn run_blob_job(&self, store: &Store, job: &BlobJob) -> Result<Vec<(String, BlobOutcome)>> {
        let sess = self.session(&job.registry)?;
        let mut sources = job.sources.clone();
        let mut out = vec![];
        for target in &job.targets {
            let mut started = None;
            let mut done = None;
            for source in &sources {
                match mount(&sess, target, source, &job.digest)? {
                    Mount::Mounted => {
                        if let Some(old) = started.take() {
                            cancel_upload(&sess, target, old);
                        }
                        done = Some(BlobOutcome::Mounted {
                            from: source.clone(),
                        });
                        break;
                    }
                    // The registry does not have it there (or will not mount): it opened an
                    // upload session instead, which we use if no other source works.
                    Mount::Upload(url) => {
                        if let Some(old) = started.replace(url) {
                            cancel_upload(&sess, target, old);
                        }
                    }
                    Mount::Refused => {}
                }
            }
            let o = match done {
                Some(o) => o,
                None => {
                    upload_blob(
                        &sess,
                        store,
                        target,
                        &job.digest,
                        job.size,
                        self.options.chunk_size,
                        started,
                    )?;
                    BlobOutcome::Uploaded
                }
            };
            // A repository that has the blob now is the best source for the next ones.
            sources.insert(0, target.clone());
            out.push((target.clone(), o));
        }
        Ok(out)
    }

    /// The digest of the manifest the image's repository has under `tag` (or under the
    /// image's digest), `None` if it has none. A `HEAD`: nothing is downloaded.
    fn manifest_at(&self, img: &PushImage, tag: Option<&str>) -> Result<Option<Digest>> {
        let sess = self.session(&img.target.registry)?;
        let repository = &img.target.repository;
        let digest = img.digest();
        let reference = tag.map(str::to_owned).unwrap_or_else(|| digest.to_string());
        let url = sess.url(&format!("/v2/{repository}/manifests/{reference}"));
        let what = format!("HEAD of manifest {reference} in {repository}");
        let resp = sess.send(&[repo_scope(repository, true)], &what, &|c| {
            c.head(url.clone()).header(ACCEPT, img.media_type())
        })?;
        match resp.status() {
            s if s.is_success() => Ok(
                match resp
                    .headers()
                    .get("docker-content-digest")
                    .and_then(|v| v.to_str().ok())
                {
                    Some(d) => d.parse().ok(),
                    // Without the header, a hit by digest is that digest; a tag stays unknown.
                    None => tag.is_none().then_some(digest),
                },
            ),
            StatusCode::NOT_FOUND => Ok(None),
            _ => Err(sess.error_from(&what, repository, resp)),
        }
    }

    /// `PUT` of the manifest by digest or by tag.
    fn put_manifest(&self, img: &PushImage, tag: Option<&str>) -> Result<()> {
        self.put_manifest_bytes(&img.target, &img.media_type(), &img.manifest, tag)
    }

    /// Pushes image indexes (see [`PushIndex`]) whose manifests [`Client::push`] has
    /// already put in their repositories: every index by digest, then, only when all
    /// are in, every tag (a tag never names an index whose manifests are missing).
    pub fn push_indexes(&self, indexes: &[PushIndex]) -> Result<Vec<IndexReport>> {
        let parallelism = self.options.parallelism;
        parallel_map(indexes, parallelism, |i| {
            self.put_manifest_bytes(&i.target, INDEX_MEDIA_TYPE, &i.index, None)
        })?;
        let tags: Vec<(&PushIndex, &String)> = indexes
            .iter()
            .flat_map(|i| i.tags.iter().map(move |t| (i, t)))
            .collect();
        for (_, t) in &tags {
            check_tag(t)?;
        }
        parallel_map(&tags, parallelism, |(i, t)| {
            self.put_manifest_bytes(&i.target, INDEX_MEDIA_TYPE, &i.index, Some(t))
        })?;
        Ok(indexes
            .iter()
            .map(|i| {
                let digest = Digest::of_bytes(&i.index);
                IndexReport {
                    reference: format!("{}@{digest}", i.target.name()),
                    digest,
                    tags: i.tags.clone(),
                }
            })
            .collect())
    }

    /// `PUT` of manifest bytes (an image manifest or an index) by digest or by tag.
    /// Retries a `MANIFEST_BLOB_UNKNOWN` answer [`BLOB_UNKNOWN_RETRIES`] times.
    pub(crate) fn put_manifest_bytes(
        &self,
        target: &Reference,
        media_type: &str,
        manifest: &[u8],
        tag: Option<&str>,
    ) -> Result<()> {
        let sess = self.session(&target.registry)?;
        let repository = &target.repository;
        let digest = Digest::of_bytes(manifest);
        let reference = tag.map(str::to_owned).unwrap_or_else(|| digest.to_string());
        let scopes = [repo_scope(repository, true)];
        let url = sess.url(&format!("/v2/{repository}/manifests/{reference}"));
        let media_type = media_type.to_owned();
        let body = manifest.to_vec();
        let what = match tag {
            Some(t) => format!("tagging {repository}:{t} (manifest {digest})"),
            None => format!("push of manifest {digest} to {repository}"),
        };
        // A manifest whose blobs another client is committing at that moment (two CI
        // runners pushing the same image) can be answered MANIFEST_BLOB_UNKNOWN by
        // distribution although every blob was there a moment before (seen when the
        // tag of a manifest already accepted by digest moved): a few tries, then the
        // error. A blob that is really missing costs these retries and fails the same.
        let mut attempt = 0;
        let resp = loop {
            let resp = sess.send(&scopes, &what, &|c| {
                c.put(url.clone())
                    .header(CONTENT_TYPE, media_type.clone())
                    .body(body.clone())
            })?;
            if resp.status() == StatusCode::CREATED || resp.status().is_success() {
                break resp;
            }
            // MANIFEST_BLOB_UNKNOWN, MANIFEST_INVALID...: `what` names the manifest.
            let err = sess.error_from(&what, repository, resp);
            let transient = matches!(&err, RegistryError::Http { status: 400, message, .. }
                if message.contains("MANIFEST_BLOB_UNKNOWN"));
            if !transient || attempt == BLOB_UNKNOWN_RETRIES {
                return Err(err);
            }
            std::thread::sleep(std::time::Duration::from_millis(250 << attempt));
            attempt += 1;
        };
        if let Some(d) = resp
            .headers()
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok())
            && d != digest.to_string()
        {
            return Err(RegistryError::DigestMismatch {
                registry: sess.registry.clone(),
                repository: repository.clone(),
                what: format!("manifest pushed as {reference}"),
                expected: digest.to_string(),
                actual: d.to_owned(),
            });
        }
        Ok(())
    }
}

//! Pulling an image (a base image) into the store.
//!
//! The manifest is fetched with every manifest type in `Accept` (OCI and Docker schema 2, image
//! and index/list), checked against the pinned digest (or the registry's
//! `Docker-Content-Digest`), and an index is resolved to the configured platform (linux/amd64
//! by default). Config and layers missing from the store are streamed into it in parallel,
//! through [`imgbuild_store::Store::writer`] and `commit_expecting`, so a blob whose bytes do
//! not match its digest (or size) is refused and nothing of it is stored. Manifests (and the
//! index) are stored too, so a later offline build finds them.

use imgbuild_store::{Digest, Store, StoreError};
use oci_spec::image::{Descriptor, ImageIndex, ImageManifest};
use reqwest::StatusCode;
use reqwest::header::{ACCEPT, CONTENT_TYPE};

use crate::auth::repo_scope;
use crate::error::{RegistryError, Result};
use crate::reference::Reference;
use crate::transport::{Failure, Session, read_limited, retryable_status};
use crate::{Client, parallel_map};

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
const DOCKER_SCHEMA1: &str = "application/vnd.docker.distribution.manifest.v1";

/// Manifests larger than this are refused (real ones are a few KiB).
const MAX_MANIFEST: u64 = 4 << 20;

/// An image pulled into the store.
#[derive(Clone, Debug)]
pub struct PulledImage {
    /// The reference asked for, with `digest` set to the image manifest's digest.
    pub reference: Reference,
    /// Digest of the index / manifest list the reference pointed at, if it was one.
    pub index_digest: Option<Digest>,
    pub manifest_digest: Digest,
    pub media_type: String,
    /// The manifest bytes as served (also in the store under `manifest_digest`).
    pub manifest: Vec<u8>,
    pub config: Descriptor,
    pub layers: Vec<Descriptor>,
    /// Bytes downloaded into the store (blobs already present are not fetched).
    pub bytes_downloaded: u64,
    pub blobs_present: usize,
}

/// A manifest as served: bytes, digest, media type.
#[derive(Clone, Debug)]
pub struct FetchedManifest {
    pub bytes: Vec<u8>,
    pub digest: Digest,
    pub media_type: String,
}

impl FetchedManifest {
    pub fn is_index(&self) -> bool {
        self.media_type == OCI_INDEX || self.media_type == DOCKER_LIST
    }
}

impl Client {
    /// The digest the reference designates now (for a tag: what it points at; an index stays
    /// an index). One manifest `GET`; verified against a pinned digest.
    pub fn resolve(&self, reference: &Reference) -> Result<Digest> {
        let sess = self.session(&reference.registry)?;
        Ok(fetch_manifest(
            &sess,
            &reference.repository,
            &reference.reference_for_api(),
            reference.digest.as_ref(),
        )?
        .digest)
    }

    /// Fetches the manifest a reference designates, verified (see [`Client::resolve`]).
    pub fn fetch_manifest(&self, reference: &Reference) -> Result<FetchedManifest> {
        let sess = self.session(&reference.registry)?;
        fetch_manifest(
            &sess,
            &reference.repository,
            &reference.reference_for_api(),
            reference.digest.as_ref(),
        )
    }

    /// Pulls an image into the store: manifest (resolved to the configured platform), config
    /// and layers, each verified while streaming.
    pub fn pull(&self, store: &Store, reference: &Reference) -> Result<PulledImage> {
        let sess = self.session(&reference.registry)?;
        let repository = &reference.repository;
        let top = fetch_manifest(
            &sess,
            repository,
            &reference.reference_for_api(),
            reference.digest.as_ref(),
        )?;
        let (index_digest, manifest) = if top.is_index() {
            let index = ImageIndex::from_reader(&top.bytes[..]).map_err(|e| {
                sess.protocol(
                    &format!("index {} of {repository}", top.digest),
                    &format!("not a valid image index: {e}"),
                )
            })?;
            let chosen = self.choose_platform(&sess, repository, &top.digest, &index)?;
            let child = fetch_manifest(&sess, repository, &chosen.to_string(), Some(&chosen))?;
            if child.is_index() {
                return Err(RegistryError::Unsupported {
                    registry: sess.registry.clone(),
                    repository: repository.clone(),
                    what: format!(
                        "index {} points at another index ({chosen}); nested indexes are not supported",
                        top.digest
                    ),
                });
            }
            store.put_bytes(&top.bytes)?;
            (Some(top.digest), child)
        } else {
            (None, top)
        };
        let parsed = ImageManifest::from_reader(&manifest.bytes[..]).map_err(|e| {
            sess.protocol(
                &format!("manifest {} of {repository}", manifest.digest),
                &format!("not a valid image manifest: {e}"),
            )
        })?;
        let config = parsed.config().clone();
        let layers = parsed.layers().clone();
        let mut wanted: Vec<(Digest, u64)> = vec![];
        for d in std::iter::once(&config).chain(layers.iter()) {
            let digest: Digest =
                d.digest()
                    .to_string()
                    .parse()
                    .map_err(|_| RegistryError::Unsupported {
                        registry: sess.registry.clone(),
                        repository: repository.clone(),
                        what: format!("blob digest {} is not sha256", d.digest()),
                    })?;
            if !wanted.iter().any(|(w, _)| *w == digest) {
                wanted.push((digest, d.size()));
            }
        }
        let missing: Vec<(Digest, u64)> = wanted
            .iter()
            .filter(|(d, _)| !store.has_blob(d))
            .cloned()
            .collect();
        let blobs_present = wanted.len() - missing.len();
        parallel_map(&missing, self.options.parallelism, |(digest, size)| {
            download_blob(&sess, store, repository, digest, *size)
        })?;
        store.put_bytes(&manifest.bytes)?;
        Ok(PulledImage {
            reference: Reference {
                digest: Some(manifest.digest.clone()),
                ..reference.clone()
            },
            index_digest,
            manifest_digest: manifest.digest,
            media_type: manifest.media_type,
            manifest: manifest.bytes,
            config,
            layers,
            bytes_downloaded: missing.iter().map(|(_, s)| s).sum(),
            blobs_present,
        })
    }

    /// Downloads one blob of `repository` into the store, verified against its digest and
    /// size while streaming (a blob already in the store is not fetched again).
    pub fn download_blob(
        &self,
        store: &Store,
        registry: &str,
        repository: &str,
        digest: &Digest,
        size: u64,
    ) -> Result<()> {
        if store.has_blob(digest) {
            return Ok(());
        }
        let sess = self.session(registry)?;
        download_blob(&sess, store, repository, digest, size)
    }

    fn choose_platform(
        &self,
        sess: &Session,
        repository: &str,
        index_digest: &Digest,
        index: &ImageIndex,
    ) -> Result<Digest> {
        let want = &self.options.platform;
        let found = index.manifests().iter().find(|m| {
            m.platform().as_ref().is_some_and(|p| {
                p.os().to_string() == want.os
                    && p.architecture().to_string() == want.architecture
                    && want
                        .variant
                        .as_ref()
                        .is_none_or(|v| p.variant().as_deref() == Some(v.as_str()))
            })
        });
        let Some(found) = found else {
            let available: Vec<String> = index
                .manifests()
                .iter()
                .filter_map(|m| {
                    m.platform()
                        .as_ref()
                        .map(|p| format!("{}/{}", p.os(), p.architecture()))
                })
                .collect();
            return Err(RegistryError::Unsupported {
                registry: sess.registry.clone(),
                repository: repository.to_owned(),
                what: format!(
                    "index {index_digest} has no {}/{} image (it has: {})",
                    want.os,
                    want.architecture,
                    available.join(", ")
                ),
            });
        };
        found
            .digest()
            .to_string()
            .parse()
            .map_err(|_| RegistryError::Unsupported {
                registry: sess.registry.clone(),
                repository: repository.to_owned(),
                what: format!("manifest digest {} is not sha256", found.digest()),
            })
    }
}

/// `GET /v2/<repo>/manifests/<reference>`, verified against `pinned` (or the registry's
/// `Docker-Content-Digest` when not pinned).
pub(crate) fn fetch_manifest(
    sess: &Session,
    repository: &str,
    reference: &str,
    pinned: Option<&Digest>,
) -> Result<FetchedManifest> {
    let scopes = [repo_scope(repository, false)];
    let what = format!("manifest {reference} of {repository}");
    let url = sess.url(&format!("/v2/{repository}/manifests/{reference}"));
    let accept = [OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_LIST].join(", ");
    let resp = sess.send(&scopes, &what, &|c| {
        c.get(url.clone()).header(ACCEPT, accept.clone())
    })?;
    if resp.status() == StatusCode::NOT_FOUND {
        return Err(match sess.error_from(&what, repository, resp) {
            e @ RegistryError::RepositoryUnknown { .. } => e,
            _ => RegistryError::ManifestUnknown {
                registry: sess.registry.clone(),
                repository: repository.to_owned(),
                reference: reference.to_owned(),
            },
        });
    }
    if !resp.status().is_success() {
        return Err(sess.error_from(&what, repository, resp));
    }
    let header_digest = resp
        .headers()
        .get("docker-content-digest")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let content_type = resp
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.split(';').next().unwrap_or(v).trim().to_owned());
    let bytes = read_limited(resp, MAX_MANIFEST + 1).map_err(|e| RegistryError::Transport {
        registry: sess.registry.clone(),
        what: what.clone(),
        message: e.to_string(),
    })?;
    if bytes.len() as u64 > MAX_MANIFEST {
        return Err(sess.protocol(&what, "the manifest is larger than 4 MiB; refusing it"));
    }
    let digest = Digest::of_bytes(&bytes);
    let expected = pinned.map(|d| d.to_string()).or(header_digest);
    if let Some(expected) = expected
        && expected != digest.to_string()
    {
        return Err(RegistryError::DigestMismatch {
            registry: sess.registry.clone(),
            repository: repository.to_owned(),
            what: format!("manifest {reference}"),
            expected,
            actual: digest.to_string(),
        });
    }
    let body_type = serde_json::from_slice::<serde_json::Value>(&bytes)
        .ok()
        .and_then(|v| {
            if let Some(m) = v.get("mediaType").and_then(|m| m.as_str()) {
                return Some(m.to_owned());
            }
            // OCI allows omitting mediaType: tell by shape.
            if v.get("manifests").is_some() {
                Some(OCI_INDEX.to_owned())
            } else if v.get("layers").is_some() {
                Some(OCI_MANIFEST.to_owned())
            } else {
                None
            }
        });
    let media_type = content_type
        .filter(|c| [OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_LIST].contains(&c.as_str()))
        .or(body_type)
        .ok_or_else(|| sess.protocol(&what, "cannot tell the manifest's media type"))?;
    if media_type.starts_with(DOCKER_SCHEMA1) {
        return Err(RegistryError::Unsupported {
            registry: sess.registry.clone(),
            repository: repository.to_owned(),
            what: format!("manifest {reference} is Docker schema 1, which is not supported"),
        });
    }
    if ![OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_LIST].contains(&media_type.as_str()) {
        return Err(RegistryError::Unsupported {
            registry: sess.registry.clone(),
            repository: repository.to_owned(),
            what: format!(
                "manifest {reference} has media type {media_type}, which is not an image"
            ),
        });
    }
    Ok(FetchedManifest {
        bytes,
        digest,
        media_type,
    })
}

/// Streams one blob into the store, verified; retried from the start on transient failures.
pub(crate) fn download_blob(
    sess: &Session,
    store: &Store,
    repository: &str,
    digest: &Digest,
    size: u64,
) -> Result<()> {
    let scopes = [repo_scope(repository, false)];
    let what = format!("download of blob {digest} from {repository}");
    let url = sess.url(&format!("/v2/{repository}/blobs/{digest}"));
    let mut retries = crate::transport::Retries::new(sess);
    loop {
        let failure = match sess.attempt(&scopes, &what, &|c| c.get(url.clone())) {
            Ok(resp) if resp.status().is_success() => {
                match stream_into_store(sess, store, repository, digest, size, resp) {
                    Ok(()) => return Ok(()),
                    Err(f) => f,
                }
            }
            Ok(resp) if resp.status() == StatusCode::NOT_FOUND => {
                return Err(match sess.error_from(&what, repository, resp) {
                    e @ RegistryError::RepositoryUnknown { .. } => e,
                    _ => RegistryError::BlobUnknown {
                        registry: sess.registry.clone(),
                        repository: repository.to_owned(),
                        digest: digest.clone(),
                    },
                });
            }
            Ok(resp) if retryable_status(resp.status()) => {
                sess.status_failure(&what, repository, resp)
            }
            Ok(resp) => return Err(sess.error_from(&what, repository, resp)),
            Err(f) => f,
        };
        match failure {
            Failure::Fatal(e) => return Err(e),
            Failure::Retry { error, after } => retries.retry(error, after)?,
        }
    }
}

fn stream_into_store(
    sess: &Session,
    store: &Store,
    repository: &str,
    digest: &Digest,
    size: u64,
    resp: reqwest::blocking::Response,
) -> Result<(), Failure> {
    let what = format!("blob {digest}");
    let mut w = store.writer().map_err(RegistryError::from)?;
    // One byte more than announced is enough to detect an oversized answer without storing
    // an unbounded stream.
    let mut body = std::io::Read::take(resp, size + 1);
    if let Err(e) = std::io::copy(&mut body, &mut w) {
        // The temp file is removed when `w` drops.
        return Err(Failure::Retry {
            error: RegistryError::Transport {
                registry: sess.registry.clone(),
                what: format!("download of {what} from {repository}"),
                message: crate::transport::error_chain(&e),
            },
            after: None,
        });
    }
    match w.commit_expecting(digest, Some(size), &what) {
        Ok(_) => Ok(()),
        Err(StoreError::DigestMismatch {
            expected, actual, ..
        }) => Err(Failure::Fatal(RegistryError::DigestMismatch {
            registry: sess.registry.clone(),
            repository: repository.to_owned(),
            what,
            expected: expected.to_string(),
            actual: actual.to_string(),
        })),
        Err(StoreError::SizeMismatch {
            expected, actual, ..
        }) => Err(Failure::Fatal(RegistryError::SizeMismatch {
            registry: sess.registry.clone(),
            repository: repository.to_owned(),
            what,
            expected,
            actual,
        })),
        Err(e) => Err(Failure::Fatal(e.into())),
    }
}

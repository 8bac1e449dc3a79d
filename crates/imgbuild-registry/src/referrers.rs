//! What the OCI 1.1 referrers need beyond a push of images: a manifest or index
//! pushed as raw bytes (an artifact manifest with a `subject`, the fallback tag
//! index), a manifest that may be absent, the referrers API itself, and one blob
//! fetched into the store (verified) for the documents a command reads back.
//!
//! Whether a registry indexes referrers itself is what the referrers API answers
//! (`GET /v2/<name>/referrers/<digest>`: 200 with an index, or 404 from a registry
//! without it, such as distribution 2.8); the caller keeps the
//! `sha256-<hex>` tag index (the spec's tag schema) when it does not.

use imgbuild_store::{Digest, Store};
use reqwest::StatusCode;
use reqwest::header::{ACCEPT, CONTENT_TYPE};

use crate::Client;
use crate::auth::repo_scope;
use crate::error::{RegistryError, Result};
use crate::pull::{FetchedManifest, OCI_INDEX};
use crate::reference::Reference;
use crate::transport::read_limited;

impl Client {
    /// The manifest a reference designates, or `None` when the registry has none there.
    pub fn manifest_if_present(&self, reference: &Reference) -> Result<Option<FetchedManifest>> {
        match self.fetch_manifest(reference) {
            Ok(m) => Ok(Some(m)),
            Err(RegistryError::ManifestUnknown { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// `PUT` of manifest bytes (byte for byte) at `reference` (a tag or the bytes'
    /// digest) in `target`'s repository; its blobs must be there already.
    pub fn put_raw_manifest(
        &self,
        target: &Reference,
        reference: &str,
        bytes: &[u8],
        media_type: &str,
    ) -> Result<()> {
        let digest = Digest::of_bytes(bytes).to_string();
        let tag = (reference != digest).then_some(reference);
        self.put_manifest_bytes(target, media_type, bytes, tag)
    }

    /// The referrers API's index of the manifests whose `subject` is `subject`, or
    /// `None` when the registry does not offer the API.
    pub fn referrers(&self, target: &Reference, subject: &Digest) -> Result<Option<Vec<u8>>> {
        let sess = self.session(&target.registry)?;
        let repository = &target.repository;
        let url = sess.url(&format!("/v2/{repository}/referrers/{subject}"));
        let what = format!("referrers of {subject} in {repository}");
        let resp = sess.send(&[repo_scope(repository, false)], &what, &|c| {
            c.get(url.clone()).header(ACCEPT, OCI_INDEX)
        })?;
        if resp.status() == StatusCode::NOT_FOUND || resp.status() == StatusCode::METHOD_NOT_ALLOWED
        {
            return Ok(None);
        }
        if !resp.status().is_success() {
            return Err(sess.error_from(&what, repository, resp));
        }
        let is_index = resp
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with(OCI_INDEX));
        let bytes = read_limited(resp, 4 << 20).map_err(|e| RegistryError::Transport {
            registry: sess.registry.clone(),
            what: what.clone(),
            message: e.to_string(),
        })?;
        Ok(is_index.then_some(bytes))
    }

    /// Streams one blob of `target`'s repository into the store, verified against its
    /// digest and size.
    pub fn fetch_blob(
        &self,
        store: &Store,
        target: &Reference,
        digest: &Digest,
        size: u64,
    ) -> Result<()> {
        if store.has_blob(digest) {
            return Ok(());
        }
        let sess = self.session(&target.registry)?;
        crate::pull::download_blob(&sess, store, &target.repository, digest, size)
    }
}

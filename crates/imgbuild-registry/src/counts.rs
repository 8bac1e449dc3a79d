//! Request counts per registry, for reports: what a run cost each registry.
//!
//! Docker Hub counts manifest `GET`s against its pull limits (a `HEAD` is free), and
//! CI wants to see that a run served from a cache moved no blob: so every request a
//! [`crate::Client`] sends is classified here by method and path. One
//! [`RequestCounts`] can be shared by several clients (through
//! [`crate::ClientOptions::counts`]), so one report covers a whole command.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// What one registry was asked, by kind of request.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct RegistryCounts {
    /// `GET` of a manifest (counted by Docker Hub against pull limits).
    pub manifest_gets: u64,
    /// `HEAD` of a manifest or a blob (free on Docker Hub).
    pub heads: u64,
    /// `GET` of a blob (a download).
    pub blob_gets: u64,
    /// Blob uploads completed (`PUT` that closes an upload session).
    pub blob_uploads: u64,
    /// Mount requests (`POST ...?mount=`; no bytes sent): a registry that lacks the
    /// blob in the source repository answers with an upload session instead.
    pub blob_mounts: u64,
    /// `PUT` of a manifest (by digest or by tag).
    pub manifest_puts: u64,
    /// Every request, including auth handshakes and upload sessions.
    pub requests: u64,
    /// Body bytes received for blob and manifest `GET`s.
    pub bytes_down: u64,
    /// Body bytes sent.
    pub bytes_up: u64,
}

/// Counts of every registry a set of clients talked to, keyed by registry host.
#[derive(Debug, Default)]
pub struct RequestCounts(Mutex<BTreeMap<String, RegistryCounts>>);

impl RequestCounts {
    pub fn new() -> Arc<RequestCounts> {
        Arc::new(RequestCounts::default())
    }

    /// A copy of the counts so far, by registry.
    pub fn snapshot(&self) -> BTreeMap<String, RegistryCounts> {
        self.0.lock().unwrap().clone()
    }

    /// Records one request (`path` without the query) and its answer's body size.
    pub(crate) fn record(
        &self,
        registry: &str,
        method: &reqwest::Method,
        path: &str,
        query: Option<&str>,
        bytes_up: u64,
        bytes_down: u64,
    ) {
        let mut all = self.0.lock().unwrap();
        let c = all.entry(registry.to_owned()).or_default();
        c.requests += 1;
        c.bytes_up += bytes_up;
        let manifest = path.contains("/manifests/");
        let blob = path.contains("/blobs/") && !path.contains("/blobs/uploads");
        let upload = path.contains("/blobs/uploads");
        match *method {
            reqwest::Method::HEAD => c.heads += 1,
            reqwest::Method::GET if manifest => {
                c.manifest_gets += 1;
                c.bytes_down += bytes_down;
            }
            reqwest::Method::GET if blob => {
                c.blob_gets += 1;
                c.bytes_down += bytes_down;
            }
            reqwest::Method::PUT if manifest => c.manifest_puts += 1,
            reqwest::Method::PUT if upload => c.blob_uploads += 1,
            reqwest::Method::POST if upload && query.is_some_and(|q| q.contains("mount=")) => {
                c.blob_mounts += 1
            }
            _ => {}
        }
    }
}
